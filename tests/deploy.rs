//! The deployment files under `deploy/` as an operator would run them: the
//! Kubernetes manifests, the systemd units, the crontab, the Dockerfile and
//! the README's commands. Nothing here can be started on a test machine (no
//! cluster, no Docker engine, no systemd as PID 1), so the tests read the
//! files and hold them to what the platforms need and to licensync's own
//! CLI: every command line must parse with `licensync::cli::Cli`, so a
//! renamed flag or command breaks the test instead of a production cron job.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{CommandFactory, Parser};
use licensync::cli::{Cli, Command, Output};
use serde::Deserialize;
use serde_norway::Value;

const BINARY: &str = "/usr/local/bin/licensync";
const SECRET_NAME: &str = "licensync";
const EXIT_USAGE: i64 = 2;
const EXIT_LOCKED: i64 = 75;
const EXIT_FAILED: i64 = 1;

fn deploy_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(relative)
}

fn read(relative: &str) -> String {
    let path = deploy_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------

/// One YAML document of a manifest file, named for assertion messages.
struct Manifest {
    file: String,
    doc: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> String {
        let meta = &self.doc["metadata"];
        meta["name"]
            .as_str()
            .or_else(|| meta["generateName"].as_str())
            .unwrap_or("?")
            .to_string()
    }

    fn label(&self) -> String {
        format!("{} {} in {}", self.kind(), self.name(), self.file)
    }

    /// The Job spec: a Job's own, or the template a CronJob stamps out.
    fn job_spec(&self) -> Option<&Value> {
        match self.kind() {
            "Job" => Some(&self.doc["spec"]),
            "CronJob" => Some(&self.doc["spec"]["jobTemplate"]["spec"]),
            _ => None,
        }
    }
}

fn manifest_files() -> Vec<String> {
    let dir = deploy_path("kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .map(|name| format!("kubernetes/{name}"))
        .collect();
    files.sort();
    files
}

/// Every document of every manifest (a file may hold several, `---`-separated).
fn manifests() -> Vec<Manifest> {
    let mut all = Vec::new();
    for file in manifest_files() {
        let text = read(&file);
        for (i, de) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let doc = Value::deserialize(de).unwrap_or_else(|e| panic!("{file}: document {i} is not valid YAML: {e}"));
            if doc.is_null() {
                continue;
            }
            all.push(Manifest {
                file: file.clone(),
                doc,
            });
        }
    }
    all
}

fn jobs(all: &[Manifest]) -> Vec<(&Manifest, &Value)> {
    all.iter().filter_map(|m| m.job_spec().map(|spec| (m, spec))).collect()
}

fn pod_spec(job_spec: &Value) -> &Value {
    &job_spec["template"]["spec"]
}

fn containers(job_spec: &Value) -> &[Value] {
    pod_spec(job_spec)["containers"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|seq| {
            seq.iter()
                .map(|v| {
                    v.as_str()
                        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The action Kubernetes takes for a container exit code: the first rule
/// whose `onExitCodes` matches decides (rules are evaluated in order); `None`
/// means no rule matches and the failure counts against `backoffLimit`.
fn pod_failure_action(job_spec: &Value, container: &str, exit_code: i64) -> Option<String> {
    let rules = job_spec["podFailurePolicy"]["rules"].as_sequence()?;
    rules.iter().find_map(|rule| {
        let on = rule.get("onExitCodes")?;
        if let Some(name) = on["containerName"].as_str()
            && name != container
        {
            return None;
        }
        let listed = on["values"]
            .as_sequence()?
            .iter()
            .any(|v| v.as_i64() == Some(exit_code));
        let matches = match on["operator"].as_str()? {
            "In" => listed,
            "NotIn" => !listed,
            other => panic!("unknown podFailurePolicy operator {other}"),
        };
        matches.then(|| rule["action"].as_str().unwrap_or("").to_string())
    })
}

fn the_example_secret() -> Value {
    let all = manifests();
    let secret = all
        .iter()
        .find(|m| m.kind() == "Secret" && m.name() == SECRET_NAME)
        .expect("deploy/kubernetes holds an example Secret named licensync");
    assert_eq!(secret.file, "kubernetes/secret.example.yaml");
    secret.doc["stringData"].clone()
}

/// The container's argv as the image runs it: `command` replaces the
/// image's ENTRYPOINT, `args` its CMD.
fn container_argv(manifest: &Manifest, container: &Value) -> Vec<String> {
    let command = strings(&container["command"]);
    let mut argv = if command.is_empty() {
        dockerfile_json_array("ENTRYPOINT")
    } else {
        command
    };
    assert_eq!(
        argv.first().map(String::as_str),
        Some(BINARY),
        "{}: the container must run licensync",
        manifest.label()
    );
    argv.extend(strings(&container["args"]));
    argv
}

#[test]
fn every_manifest_file_parses_and_every_document_names_its_kind() {
    let all = manifests();
    for m in &all {
        assert!(m.doc["apiVersion"].as_str().is_some(), "{}: no apiVersion", m.label());
        assert!(!m.kind().is_empty(), "{}: no kind", m.file);
        assert_ne!(m.name(), "?", "{}: no metadata.name", m.label());
    }
    let kinds: BTreeSet<&str> = all.iter().map(Manifest::kind).collect();
    for kind in ["CronJob", "Job", "Secret"] {
        assert!(kinds.contains(kind), "no {kind} among the manifests: {kinds:?}");
    }
}

#[test]
fn the_cronjob_runs_every_fifteen_minutes_and_never_overlaps_itself() {
    let all = manifests();
    let cronjob = all
        .iter()
        .find(|m| m.kind() == "CronJob" && m.name() == "licensync")
        .expect("a CronJob named licensync");
    let spec = &cronjob.doc["spec"];
    let schedule = spec["schedule"].as_str().expect("a schedule");
    assert_eq!(schedule, "*/15 * * * *");
    // Kubernetes' five fields are the cron crate's six without seconds.
    cron::Schedule::from_str(&format!("0 {schedule}")).expect("a valid cron expression");
    assert_eq!(spec["concurrencyPolicy"].as_str(), Some("Forbid"));
    let deadline = spec["startingDeadlineSeconds"]
        .as_u64()
        .expect("startingDeadlineSeconds");
    assert!(deadline > 0);
}

#[test]
fn every_job_has_a_deadline_a_retry_limit_and_a_pod_that_never_restarts_in_place() {
    let all = manifests();
    let jobs = jobs(&all);
    assert!(jobs.len() >= 2, "the CronJob and the manual Job at least");
    for (m, spec) in jobs {
        assert!(
            spec["activeDeadlineSeconds"].as_u64().is_some_and(|s| s > 0),
            "{}: activeDeadlineSeconds bounds a hung run",
            m.label()
        );
        assert!(spec["backoffLimit"].as_u64().is_some(), "{}: backoffLimit", m.label());
        // podFailurePolicy is rejected by the API server with any other restartPolicy.
        assert_eq!(
            pod_spec(spec)["restartPolicy"].as_str(),
            Some("Never"),
            "{}: restartPolicy",
            m.label()
        );
    }
}

#[test]
fn a_configuration_error_fails_the_job_and_a_held_lock_is_not_counted_as_a_failure() {
    let all = manifests();
    for (m, spec) in jobs(&all) {
        let containers = containers(spec);
        assert!(!containers.is_empty(), "{}: no container", m.label());
        for container in containers {
            let name = container["name"].as_str().expect("a container name");
            assert_eq!(
                pod_failure_action(spec, name, EXIT_USAGE).as_deref(),
                Some("FailJob"),
                "{}: exit 2 (usage or configuration error) must fail the Job at once",
                m.label()
            );
            assert_eq!(
                pod_failure_action(spec, name, EXIT_LOCKED).as_deref(),
                Some("Ignore"),
                "{}: exit 75 (another run holds the lock) must not count as a failure",
                m.label()
            );
            assert_eq!(
                pod_failure_action(spec, name, EXIT_FAILED),
                None,
                "{}: exit 1 (the run failed) must be retried under backoffLimit",
                m.label()
            );
        }
    }
}

#[test]
fn pods_run_as_the_images_non_root_user_on_a_read_only_root_filesystem_with_resource_limits() {
    let image_uid = dockerfile_final_user_uid();
    let all = manifests();
    for (m, spec) in jobs(&all) {
        let pod = pod_spec(spec);
        let pod_sc = &pod["securityContext"];
        assert_eq!(
            pod_sc["runAsNonRoot"].as_bool(),
            Some(true),
            "{}: runAsNonRoot",
            m.label()
        );
        assert_eq!(
            pod_sc["runAsUser"].as_u64(),
            Some(image_uid),
            "{}: runAsUser must be the image's user",
            m.label()
        );
        let tmp_volumes: Vec<&str> = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter(|v| v.get("emptyDir").is_some())
            .filter_map(|v| v["name"].as_str())
            .collect();
        for container in containers(spec) {
            let sc = &container["securityContext"];
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{}: readOnlyRootFilesystem",
                m.label()
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{}: allowPrivilegeEscalation",
                m.label()
            );
            assert!(
                strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()),
                "{}: drop all capabilities",
                m.label()
            );
            let tmp_mounted = container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|mount| {
                    mount["mountPath"].as_str() == Some("/tmp")
                        && mount["name"].as_str().is_some_and(|name| tmp_volumes.contains(&name))
                });
            assert!(
                tmp_mounted,
                "{}: /tmp must be an emptyDir (the root filesystem is read-only)",
                m.label()
            );
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        !container["resources"][bound][resource].is_null(),
                        "{}: resources.{bound}.{resource}",
                        m.label()
                    );
                }
            }
        }
    }
}

#[test]
fn every_secret_key_a_manifest_reads_is_in_the_example_secret() {
    let string_data = the_example_secret();
    let all = manifests();
    let mut references = 0;
    for (m, spec) in jobs(&all) {
        for container in containers(spec) {
            for env in container["env"].as_sequence().into_iter().flatten() {
                let Some(secret_ref) = env.get("valueFrom").and_then(|v| v.get("secretKeyRef")) else {
                    continue;
                };
                let key = secret_ref["key"].as_str().expect("secretKeyRef.key");
                assert_eq!(secret_ref["name"].as_str(), Some(SECRET_NAME), "{}: {key}", m.label());
                assert!(
                    string_data.get(key).is_some(),
                    "{}: reads {key}, which secret.example.yaml does not define",
                    m.label()
                );
                references += 1;
            }
            for from in container["envFrom"].as_sequence().into_iter().flatten() {
                if let Some(secret_ref) = from.get("secretRef") {
                    assert_eq!(secret_ref["name"].as_str(), Some(SECRET_NAME), "{}", m.label());
                    references += 1;
                }
            }
        }
    }
    assert!(references > 0, "no manifest reads the Secret");
}

#[test]
fn the_example_secret_holds_placeholders_and_no_real_credential() {
    let string_data = the_example_secret();
    for key in ["STRIPE_API_KEY", "DATABASE_URL", "LICENSYNC_MAIL_URL"] {
        let value = string_data[key]
            .as_str()
            .unwrap_or_else(|| panic!("secret.example.yaml: stringData.{key}"));
        assert!(
            value.contains("REPLACE_ME"),
            "secret.example.yaml: {key} must be an obvious placeholder, got a value without REPLACE_ME"
        );
    }
    let key = string_data["STRIPE_API_KEY"].as_str().unwrap();
    assert!(
        key.starts_with("rk_"),
        "the example shows a restricted key (rk_), the least privilege licensync needs"
    );
}

// ---------------------------------------------------------------------------
// Command lines
// ---------------------------------------------------------------------------

fn parse(argv: &[String], source: &str) -> Cli {
    assert_eq!(
        argv.first().map(String::as_str),
        Some(BINARY),
        "{source}: runs {BINARY}"
    );
    let mut with_name = vec!["licensync".to_string()];
    with_name.extend(argv[1..].iter().cloned());
    Cli::try_parse_from(&with_name).unwrap_or_else(|e| panic!("{source}: `{}` does not parse: {e}", argv.join(" ")))
}

fn reconcile(cli: Cli, source: &str) -> licensync::cli::ReconcileArgs {
    match cli.command {
        Command::Reconcile(args) => args,
        other => panic!("{source}: expected `reconcile`, got {other:?}"),
    }
}

/// The words of licensync's own invocation inside a shell command line,
/// up to the next operator or redirection.
fn licensync_words_in_shell(command: &str, source: &str) -> Vec<String> {
    let words = shlex::split(command).unwrap_or_else(|| panic!("{source}: unbalanced quotes: {command}"));
    let start = words
        .iter()
        .position(|w| w == BINARY)
        .unwrap_or_else(|| panic!("{source}: does not run {BINARY}: {command}"));
    words[start..]
        .iter()
        .take_while(|w| {
            !matches!(w.as_str(), "&&" | "||" | ";" | "|" | "&")
                && !w
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .starts_with(['>', '<'])
        })
        .cloned()
        .collect()
}

#[test]
fn the_cronjob_runs_reconcile_with_a_json_report() {
    let all = manifests();
    let cronjob = all.iter().find(|m| m.kind() == "CronJob").unwrap();
    let spec = cronjob.job_spec().unwrap();
    let argv = container_argv(cronjob, &containers(spec)[0]);
    let args = reconcile(parse(&argv, &cronjob.label()), &cronjob.label());
    assert_eq!(args.output, Output::Json);
    assert!(!args.dry_run && !args.full && args.since.is_none());
}

#[test]
fn every_container_command_in_the_manifests_parses_with_licensync_cli() {
    let all = manifests();
    let mut parsed = 0;
    for (m, spec) in jobs(&all) {
        for container in containers(spec) {
            parse(&container_argv(m, container), &m.label());
            parsed += 1;
        }
    }
    assert!(parsed >= 2);
}

/// `# args: [...]` lines: alternatives the manifests document in comments.
fn commented_args(file: &str) -> Vec<Vec<String>> {
    read(file)
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix('#')?.trim_start();
            let list = rest.strip_prefix("args:")?.trim();
            let end = list.rfind(']')?;
            Some(
                serde_norway::from_str::<Vec<String>>(&list[..=end])
                    .unwrap_or_else(|e| panic!("{file}: `{line}` is not a YAML list: {e}")),
            )
        })
        .collect()
}

#[test]
fn the_manual_job_backfills_from_a_date_and_its_documented_alternatives_parse() {
    let all = manifests();
    let job = all
        .iter()
        .find(|m| m.file == "kubernetes/job-manual.yaml" && m.kind() == "Job")
        .expect("job-manual.yaml holds a Job");
    let argv = container_argv(job, &containers(job.job_spec().unwrap())[0]);
    let args = reconcile(parse(&argv, &job.label()), &job.label());
    assert!(args.since.is_some(), "the template shows a backfill (--since)");

    let alternatives = commented_args("kubernetes/job-manual.yaml");
    assert!(
        alternatives.len() >= 3,
        "job-manual.yaml documents a window, a full run and a dry run: {alternatives:?}"
    );
    let mut seen_full = false;
    let mut seen_until = false;
    let mut seen_dry_run = false;
    for alternative in alternatives {
        let mut argv = vec![BINARY.to_string()];
        argv.extend(alternative);
        let args = reconcile(parse(&argv, "job-manual.yaml comment"), "job-manual.yaml");
        seen_full |= args.full;
        seen_until |= args.until.is_some();
        seen_dry_run |= args.dry_run;
    }
    assert!(seen_full && seen_until && seen_dry_run);
}

#[test]
fn the_migrate_job_runs_migrate() {
    let all = manifests();
    let job = all
        .iter()
        .find(|m| m.file == "kubernetes/migrate-job.yaml")
        .expect("migrate-job.yaml");
    let argv = container_argv(job, &containers(job.job_spec().unwrap())[0]);
    let cli = parse(&argv, &job.label());
    assert!(matches!(cli.command, Command::Migrate), "{:?}", cli.command);
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

/// `Key=value` lines of a unit file, in order (keys may repeat).
fn unit_entries(file: &str) -> Vec<(String, String)> {
    read(file)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{file}: not a Key=value line: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

fn unit_values(file: &str, key: &str) -> Vec<String> {
    unit_entries(file)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn unit_value(file: &str, key: &str) -> String {
    let values = unit_values(file, key);
    assert_eq!(values.len(), 1, "{file}: exactly one {key}=, got {values:?}");
    values.into_iter().next().unwrap()
}

fn exec_start_argv(file: &str) -> Vec<String> {
    let line = unit_value(file, "ExecStart");
    let argv = shlex::split(&line).unwrap_or_else(|| panic!("{file}: ExecStart quoting: {line}"));
    // Prefixes like `-` or `+` would change what a failure means; none are expected.
    assert_eq!(argv.first().map(String::as_str), Some(BINARY), "{file}: ExecStart");
    argv
}

#[test]
fn the_systemd_service_is_one_reconcile_and_a_held_lock_is_not_a_failure() {
    let file = "systemd/licensync.service";
    assert_eq!(unit_value(file, "Type"), "oneshot");
    reconcile(parse(&exec_start_argv(file), file), file);
    assert_eq!(unit_value(file, "EnvironmentFile"), "/etc/licensync/env");
    let success: Vec<String> = unit_values(file, "SuccessExitStatus")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert!(
        success.contains(&EXIT_LOCKED.to_string()),
        "{file}: SuccessExitStatus must include 75, got {success:?}"
    );
}

#[test]
fn the_systemd_units_run_without_root() {
    for file in ["systemd/licensync.service", "systemd/licensync-daemon.service"] {
        let dynamic = unit_values(file, "DynamicUser").iter().any(|v| v == "yes");
        let user = unit_values(file, "User");
        assert!(
            dynamic || user.iter().any(|u| u != "root" && u != "0"),
            "{file}: DynamicUser=yes or a dedicated User="
        );
        assert_eq!(unit_value(file, "NoNewPrivileges"), "yes", "{file}");
        assert_eq!(unit_value(file, "ProtectSystem"), "strict", "{file}");
    }
}

#[test]
fn the_timer_runs_every_fifteen_minutes_and_catches_up_after_downtime() {
    let file = "systemd/licensync.timer";
    assert_eq!(unit_value(file, "OnCalendar"), "*:0/15");
    assert_eq!(unit_value(file, "Persistent"), "true");
    assert!(!unit_value(file, "RandomizedDelaySec").is_empty());
}

#[test]
fn the_daemon_unit_runs_the_daemon_on_a_valid_schedule() {
    let file = "systemd/licensync-daemon.service";
    let cli = parse(&exec_start_argv(file), file);
    let Command::Daemon(args) = cli.command else {
        panic!("{file}: expected `daemon`, got {:?}", cli.command);
    };
    cron::Schedule::from_str(&args.schedule).unwrap_or_else(|e| panic!("{file}: --schedule {:?}: {e}", args.schedule));
    assert!(
        unit_values(file, "RestartPreventExitStatus")
            .iter()
            .any(|v| v.split_whitespace().any(|c| c == EXIT_USAGE.to_string())),
        "{file}: a configuration error (2) must not be restarted forever"
    );
}

// ---------------------------------------------------------------------------
// crontab
// ---------------------------------------------------------------------------

struct CronEntry {
    commented: bool,
    schedule: String,
    command: String,
}

fn is_cron_field(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '*' | '/' | ',' | '-'))
}

/// Cron entries, including the commented-out alternatives (`# */15 ...`).
fn crontab_entries() -> Vec<CronEntry> {
    let mut entries = Vec::new();
    for line in read("crontab").lines() {
        let trimmed = line.trim();
        let (commented, body) = match trimmed.strip_prefix('#') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, trimmed),
        };
        let words: Vec<&str> = body.split_whitespace().collect();
        let fields = if words.first().is_some_and(|w| w.starts_with('@')) {
            1
        } else if words.len() > 5 && words[..5].iter().all(|w| is_cron_field(w)) {
            5
        } else {
            assert!(
                commented || body.is_empty() || body.contains('='),
                "crontab: neither an entry, a variable nor a comment: {line}"
            );
            continue;
        };
        let mut rest = body;
        for _ in 0..fields {
            rest = rest.trim_start();
            rest = &rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..];
        }
        entries.push(CronEntry {
            commented,
            schedule: words[..fields].join(" "),
            command: rest.trim().to_string(),
        });
    }
    entries
}

#[test]
fn the_crontab_reconciles_every_fifteen_minutes_with_the_env_file_exported() {
    let entries = crontab_entries();
    let active: Vec<&CronEntry> = entries.iter().filter(|e| !e.commented).collect();
    assert_eq!(active.len(), 1, "one active entry");
    let entry = active[0];
    assert_eq!(entry.schedule, "*/15 * * * *");
    cron::Schedule::from_str(&format!("0 {}", entry.schedule)).unwrap();
    let argv = licensync_words_in_shell(&entry.command, "crontab");
    reconcile(parse(&argv, "crontab"), "crontab");
    // `. file` alone sets shell variables that licensync never sees.
    let set_a = entry.command.find("set -a").expect("crontab: `set -a` before sourcing");
    let source = entry
        .command
        .find(". /etc/licensync/env")
        .expect("crontab: sources /etc/licensync/env");
    assert!(
        set_a < source,
        "crontab: `set -a` must come before sourcing the env file"
    );
}

#[test]
fn every_crontab_entry_parses_and_none_holds_a_percent_sign() {
    let entries = crontab_entries();
    let mut saw_daemon = false;
    for entry in &entries {
        // cron turns an unescaped % into a newline, cutting the command short.
        assert!(!entry.command.contains('%'), "crontab: % in `{}`", entry.command);
        let cli = parse(&licensync_words_in_shell(&entry.command, "crontab"), "crontab");
        if let Command::Daemon(args) = cli.command {
            cron::Schedule::from_str(&args.schedule)
                .unwrap_or_else(|e| panic!("crontab: daemon --schedule {:?}: {e}", args.schedule));
            saw_daemon = true;
        }
    }
    assert!(saw_daemon, "the crontab documents the daemon alternative");
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// Dockerfile instructions (keyword upper-cased, continuation lines joined).
fn dockerfile_instructions() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                instructions.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    instructions
}

/// The instructions grouped by stage, each starting with its FROM.
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for instruction in dockerfile_instructions() {
        if instruction.0 == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(instruction);
    }
    stages
}

fn dockerfile_json_array(keyword: &str) -> Vec<String> {
    let final_stage = dockerfile_stages().pop().unwrap();
    let (_, args) = final_stage
        .iter()
        .rev()
        .find(|(k, _)| k == keyword)
        .unwrap_or_else(|| panic!("Dockerfile: the final stage has no {keyword}"));
    // The exec form: no shell in between, so signals reach licensync.
    serde_json::from_str(args).unwrap_or_else(|e| panic!("Dockerfile: {keyword} must be a JSON array: {args}: {e}"))
}

fn dockerfile_final_user_uid() -> u64 {
    let final_stage = dockerfile_stages().pop().unwrap();
    let (_, user) = final_stage
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .expect("Dockerfile: the final stage sets USER");
    let uid = user.split(':').next().unwrap();
    // Numeric, so Kubernetes' runAsNonRoot can check it without the image's passwd.
    uid.parse()
        .unwrap_or_else(|_| panic!("Dockerfile: USER {user} must be a numeric uid"))
}

#[test]
fn the_image_builds_in_stages_and_caches_dependencies_before_the_sources() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a builder and a runtime stage");
    let base = |stage: &Vec<(String, String)>| stage[0].1.split_whitespace().next().unwrap_or("").to_string();
    assert!(
        stages.iter().any(|s| base(s) == "rust:1-bookworm"),
        "a rust:1-bookworm build stage"
    );
    assert_eq!(base(stages.last().unwrap()), "debian:bookworm-slim");

    let builder = stages
        .iter()
        .find(|s| {
            s.iter()
                .any(|(k, v)| k == "RUN" && v.contains("cargo build --release --locked --bin licensync"))
        })
        .expect("a stage runs `cargo build --release --locked --bin licensync`");
    let position = |pred: &dyn Fn(&(String, String)) -> bool| builder.iter().position(pred);
    let cook = position(&|(k, v)| k == "RUN" && v.contains("cargo chef cook"))
        .expect("the builder builds the dependencies alone first");
    let sources = position(&|(k, v)| k == "COPY" && !v.contains("--from")).expect("the builder copies the sources");
    let build = position(&|(k, v)| k == "RUN" && v.contains("cargo build")).expect("the builder builds licensync");
    assert!(
        cook < sources && sources < build,
        "dependencies, then sources, then the binary: a source edit must not rebuild the dependencies"
    );
}

#[test]
fn the_runtime_image_is_slim_and_runs_licensync_reconcile_as_a_non_root_user() {
    let stages = dockerfile_stages();
    let runtime = stages.last().unwrap();
    let installs: String = runtime
        .iter()
        .filter(|(k, v)| k == "RUN" && v.contains("apt-get install"))
        .map(|(_, v)| v.clone())
        .collect();
    let packages: BTreeSet<&str> = installs
        .split_whitespace()
        .skip_while(|w| *w != "install")
        .skip(1)
        .take_while(|w| *w != "&&")
        .filter(|w| !w.starts_with('-'))
        .collect();
    assert_eq!(
        packages,
        BTreeSet::from(["ca-certificates", "libpq5"]),
        "the runtime needs libpq and CA certificates, nothing else"
    );
    assert_ne!(dockerfile_final_user_uid(), 0, "USER must not be root");
    assert_eq!(dockerfile_json_array("ENTRYPOINT"), vec![BINARY.to_string()]);
    let mut argv = dockerfile_json_array("ENTRYPOINT");
    argv.extend(dockerfile_json_array("CMD"));
    reconcile(parse(&argv, "Dockerfile CMD"), "Dockerfile CMD");
    let log_format = runtime
        .iter()
        .any(|(k, v)| k == "ENV" && v.contains("LICENSYNC_LOG_FORMAT=json"));
    assert!(log_format, "the image logs JSON");
}

#[test]
fn the_image_bakes_in_no_secret() {
    let secret_settings = secret_setting_names();
    for (keyword, args) in dockerfile_instructions() {
        if keyword == "ENV" || keyword == "ARG" {
            for name in &secret_settings {
                assert!(
                    !args.contains(name.as_str()),
                    "Dockerfile: `{keyword} {args}` bakes {name} into the image; it belongs in the runtime environment"
                );
            }
        }
    }
    let text = read("Dockerfile");
    for prefix in ["sk_live_", "sk_test_", "rk_live_", "rk_test_"] {
        assert!(!text.contains(prefix), "Dockerfile: a Stripe key ({prefix}...)");
    }
}

/// The settings clap hides the values of: the secrets.
fn secret_setting_names() -> Vec<String> {
    let cli = Cli::command();
    let names: Vec<String> = cli
        .get_arguments()
        .filter(|a| a.is_hide_env_values_set())
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"STRIPE_API_KEY".to_string()), "{names:?}");
    names
}

// ---------------------------------------------------------------------------
// Environment variables and the README
// ---------------------------------------------------------------------------

/// Every environment variable licensync reads, from its own CLI definition.
fn known_settings() -> BTreeSet<String> {
    fn collect(cmd: &clap::Command, into: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                into.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            collect(sub, into);
        }
    }
    let mut known = BTreeSet::new();
    collect(&Cli::command(), &mut known);
    known
}

fn assert_known(name: &str, source: &str, known: &BTreeSet<String>) {
    assert!(
        known.contains(name),
        "{source}: sets {name}, which licensync does not read (renamed?); it reads {known:?}"
    );
}

#[test]
fn every_environment_variable_the_deploy_files_set_is_a_licensync_setting() {
    let known = known_settings();
    let mut checked = 0;

    let all = manifests();
    for (m, spec) in jobs(&all) {
        for container in containers(spec) {
            for env in container["env"].as_sequence().into_iter().flatten() {
                assert_known(env["name"].as_str().unwrap(), &m.label(), &known);
                checked += 1;
            }
        }
    }
    for key in the_example_secret().as_mapping().unwrap().keys() {
        assert_known(key.as_str().unwrap(), "secret.example.yaml", &known);
        checked += 1;
    }
    for file in ["systemd/licensync.service", "systemd/licensync-daemon.service"] {
        for value in unit_values(file, "Environment") {
            let (name, _) = value.split_once('=').unwrap();
            assert_known(name, file, &known);
            checked += 1;
        }
    }
    for (keyword, args) in dockerfile_instructions() {
        if keyword == "ENV" {
            for word in args.split_whitespace() {
                let (name, _) = word
                    .split_once('=')
                    .unwrap_or_else(|| panic!("Dockerfile: ENV in KEY=value form: {args}"));
                assert_known(name, "Dockerfile", &known);
                checked += 1;
            }
        }
    }
    // The env file, with its commented optional settings.
    for line in read("licensync.env.example").lines() {
        let body = line.trim().trim_start_matches('#').trim();
        if let Some((name, _)) = body.split_once('=')
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            assert_known(name, "licensync.env.example", &known);
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} settings found: is the parsing broken?");
}

#[test]
fn the_env_file_example_defines_the_required_settings_with_placeholders() {
    let settings: Vec<(String, String)> = read("licensync.env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect();
    for required in ["STRIPE_API_KEY", "DATABASE_URL", "LICENSYNC_MAIL_URL"] {
        let value = settings
            .iter()
            .find(|(k, _)| k == required)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("licensync.env.example: {required}"));
        assert!(value.contains("REPLACE_ME"), "{required} is a placeholder");
    }
    for (key, value) in &settings {
        // Unquoted spaces or shell characters read differently in sh and systemd.
        let quoted = value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'');
        assert!(
            quoted || !value.contains(|c: char| c.is_whitespace() || "<>$`\"'&;|".contains(c)),
            "licensync.env.example: quote {key}'s value in single quotes"
        );
    }
}

#[test]
fn every_licensync_command_in_the_deploy_readme_parses() {
    let text = read("README.md");
    let mut in_code = false;
    let mut parsed = 0;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let line = line.trim();
        if !in_code || !(line.starts_with("licensync ") || line.starts_with(BINARY)) {
            continue;
        }
        let words = shlex::split(line).unwrap_or_else(|| panic!("README: quoting: {line}"));
        let mut argv = vec![BINARY.to_string()];
        argv.extend(
            words[1..]
                .iter()
                .take_while(|w| !w.starts_with('#') && !w.starts_with(['>', '|']))
                .cloned(),
        );
        parse(&argv, &format!("deploy/README.md: {line}"));
        parsed += 1;
    }
    assert!(parsed >= 3, "the README shows how to run licensync");
}
