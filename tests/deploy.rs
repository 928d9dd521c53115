//! The deployment files under `deploy/` as an operator would run them: the
//! Kubernetes manifests, the systemd units, the crontab, the Dockerfile and
//! the README's commands. Nothing here can be started on a test machine (no
//! cluster, no Docker engine, no systemd as PID 1), so the tests read the
//! files and hold them to what the platforms need and to licensync's own
//! CLI: every command line must parse with `licensync::cmd::Cli`, so a
//! renamed flag or command breaks the test instead of a production cron job.
//!
//! No deploy file may hand licensync a secret (the Stripe key, the database
//! URL, the mail URL, the key API's signing key, the daemon's webhook
//! secret) other than as a file named by its `_FILE` variable: a flag is
//! visible to every user in `ps`, an environment value is inherited by every
//! child process and ends up in world-readable env files.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{CommandFactory, Parser};
use licensync::cmd::{Cli, Command, Output};
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
// Secrets
// ---------------------------------------------------------------------------

/// One of licensync's secret settings, from its own CLI definition.
#[derive(Debug, Clone)]
struct SecretSetting {
    /// The variable of the direct form, e.g. `STRIPE_API_KEY`: never set by a deploy file.
    var: String,
    /// The variable of the file form, e.g. `STRIPE_API_KEY_FILE`.
    file_var: String,
    /// The long flag without its dashes, e.g. `stripe-api-key`: also the name
    /// of the file (the Secret's key, the systemd credential).
    name: String,
}

/// The settings licensync as a whole reads whose values clap hides, each
/// with its `--...-file` form: the ones every command that calls Stripe,
/// the database or the mail server needs.
fn secrets() -> Vec<SecretSetting> {
    let secrets = secrets_of(&Cli::command());
    let vars: BTreeSet<&str> = secrets.iter().map(|s| s.var.as_str()).collect();
    assert_eq!(
        vars,
        BTreeSet::from(["STRIPE_API_KEY", "DATABASE_URL", "LICENSYNC_MAIL_URL"]),
        "the secrets licensync reads"
    );
    secrets
}

/// The secrets of single commands, whose values clap hides too: the
/// daemon's webhook secret. A new one fails here until the deploy files are
/// held to it (see [`webhook_secret_path`]).
fn command_secrets() -> Vec<SecretSetting> {
    fn collect(cmd: &clap::Command, into: &mut Vec<SecretSetting>) {
        for sub in cmd.get_subcommands() {
            into.extend(secrets_of(sub));
            collect(sub, into);
        }
    }
    let mut secrets = Vec::new();
    collect(&Cli::command(), &mut secrets);
    let vars: BTreeSet<&str> = secrets.iter().map(|s| s.var.as_str()).collect();
    assert_eq!(
        vars,
        BTreeSet::from(["LICENSYNC_WEBHOOK_SECRET"]),
        "the secrets of single commands"
    );
    secrets
}

/// Every secret setting, licensync's and its commands': none may be an
/// environment value or a flag anywhere.
fn every_secret() -> Vec<SecretSetting> {
    let mut all = secrets();
    all.extend(command_secrets());
    all
}

/// The arguments of `cmd` itself whose values clap hides, each with its
/// `--...-file` form.
fn secrets_of(cmd: &clap::Command) -> Vec<SecretSetting> {
    let args: Vec<&clap::Arg> = cmd.get_arguments().collect();
    let env_of = |arg: &clap::Arg| arg.get_env().map(|e| e.to_string_lossy().into_owned());
    args.iter()
        .filter(|a| a.is_hide_env_values_set())
        .map(|a| {
            let var = env_of(a).expect("a secret has a variable");
            let name = a.get_long().expect("a secret has a long flag").to_string();
            let file_flag = format!("{name}-file");
            let file_arg = args
                .iter()
                .find(|f| f.get_long() == Some(file_flag.as_str()))
                .unwrap_or_else(|| panic!("--{name} has no --{file_flag} form"));
            let file_var = env_of(file_arg).unwrap_or_else(|| panic!("--{file_flag} has no variable"));
            assert_eq!(file_var, format!("{var}_FILE"));
            SecretSetting { var, file_var, name }
        })
        .collect()
}

fn secret_by_var<'a>(secrets: &'a [SecretSetting], var: &str) -> &'a SecretSetting {
    secrets.iter().find(|s| s.var == var).unwrap()
}

/// The secrets a command line needs: `migrate` and the key API (`serve`,
/// which never calls Stripe nor sends mail) only the database; `serve` also
/// reads the signing key (see [`signing_key_path`]).
fn secrets_needed(cli: &Cli) -> Vec<&'static str> {
    match cli.command {
        Command::Migrate | Command::Serve(_) => vec!["DATABASE_URL"],
        _ => vec!["STRIPE_API_KEY", "DATABASE_URL", "LICENSYNC_MAIL_URL"],
    }
}

/// The name of the key API's signing key as a file: the key of the Secret
/// `licensync` and the systemd credential, as `licensync keys generate`
/// names the file it writes.
const SIGNING_KEY: &str = "signing.key";

/// The variable of the key API's token signing key, a secret that exists
/// only as a file (`serve --signing-key-file PATH`), from licensync's own CLI
/// definition. The file's name is [`SIGNING_KEY`].
fn signing_key_file_var() -> String {
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("licensync serve");
    let arg = serve
        .get_arguments()
        .find(|a| a.get_long() == Some("signing-key-file"))
        .expect("serve --signing-key-file");
    let var = arg.get_env().expect("--signing-key-file has a variable");
    var.to_string_lossy().into_owned()
}

/// The signing key file a command line reads, if any: `serve`'s, or the
/// daemon's when it also serves the key API.
fn signing_key_path(cli: &Cli) -> Option<&Path> {
    match &cli.command {
        Command::Serve(args) => Some(&args.signing_key_file),
        Command::Daemon(args) => args.signing_key_file.as_deref(),
        _ => None,
    }
}

/// The name of the daemon's webhook secret as a file: the key of the
/// Secret `licensync` and the systemd credential, named as its flag
/// (`--webhook-secret`), as the other secrets' files are.
const WEBHOOK_SECRET: &str = "webhook-secret";

/// The daemon's webhook secret (the signing secret of the Stripe endpoint),
/// from licensync's own CLI definition: a secret of `daemon` alone, which
/// the deploy files give as a file only. Its file's name is [`WEBHOOK_SECRET`].
fn webhook_secret() -> SecretSetting {
    let cli = Cli::command();
    let daemon = cli.find_subcommand("daemon").expect("licensync daemon");
    secrets_of(daemon)
        .into_iter()
        .find(|s| s.name == WEBHOOK_SECRET)
        .unwrap_or_else(|| panic!("daemon --{WEBHOOK_SECRET}, a secret with a --{WEBHOOK_SECRET}-file form"))
}

/// The webhook secret file a command line reads, if any: the daemon's,
/// whether `LICENSYNC_WEBHOOK_SECRET_FILE` or `--webhook-secret-file` names
/// it (the value itself never parses here: see [`assert_no_secret_flag`]).
fn webhook_secret_path(cli: &Cli) -> Option<&Path> {
    match &cli.command {
        Command::Daemon(args) => args.webhook_secret_file.as_deref(),
        _ => None,
    }
}

/// Fails if an argv passes a secret as a flag (`--stripe-api-key rk_...`,
/// `--stripe-api-key=rk_...`, `--webhook-secret whsec_...`): every user of
/// the machine sees it in `ps`.
fn assert_no_secret_flag(argv: &[String], source: &str) {
    for secret in every_secret() {
        let flag = format!("--{}", secret.name);
        for word in argv {
            assert!(
                word != &flag && !word.starts_with(&format!("{flag}=")),
                "{source}: `{}` passes {flag} on the command line, visible to every user in `ps`; \
                 name a file with {} (or --{}-file) instead",
                argv.join(" "),
                secret.file_var,
                secret.name
            );
        }
    }
}

/// Fails if a shell command line (or a unit/manifest line) sets a secret
/// directly: as a flag, as `VAR=value` (`-e`, `--setenv`, `Environment=`,
/// `export`, `--from-literal=`), or with `kubectl create secret --from-literal`.
fn assert_no_secret_value_in_command(command: &str, source: &str) {
    let words: Vec<String> = command
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| "`\"'()[],;".contains(c)).to_string())
        .collect();
    assert_no_secret_flag(&words, source);
    for secret in every_secret() {
        let assignment = format!("{}=", secret.var);
        for word in &words {
            let direct = word.match_indices(&assignment).any(|(i, _)| {
                word[..i]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
            });
            assert!(
                !direct,
                "{source}: `{word}` sets {} to the secret itself; set {} to a file holding it",
                secret.var, secret.file_var
            );
        }
    }
    assert!(
        !(command.contains("create secret") && command.contains("--from-literal")),
        "{source}: `kubectl create secret --from-literal` puts the secret on kubectl's command line \
         (`ps`, shell history); use --from-file"
    );
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

    /// The spec that holds a pod `template`: a Job's (see `job_spec`) or a
    /// Deployment's.
    fn workload_spec(&self) -> Option<&Value> {
        match self.kind() {
            "Deployment" => Some(&self.doc["spec"]),
            _ => self.job_spec(),
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

/// Everything that runs licensync pods: the Jobs and the key API's Deployment.
fn workloads(all: &[Manifest]) -> Vec<(&Manifest, &Value)> {
    all.iter()
        .filter_map(|m| m.workload_spec().map(|spec| (m, spec)))
        .collect()
}

/// The labels of the pods a workload spec stamps out.
fn pod_labels(spec: &Value) -> &Value {
    &spec["template"]["metadata"]["labels"]
}

/// Whether a label selector (`key: value` pairs, all of which must match)
/// selects pods with `labels`. An empty selector would select every pod of
/// the namespace: it selects none here, so that a test on it fails.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(selector) = selector.as_mapping().filter(|m| !m.is_empty()) else {
        return false;
    };
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
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

/// The container's argv as the image runs it in the pod of index 0 (an
/// Indexed Job's pods differ only in their index; other Jobs have none):
/// see [`pod_argv`].
fn container_argv(manifest: &Manifest, container: &Value) -> Vec<String> {
    pod_argv(manifest, container, &pod_env(container, 0, None))
}

/// The container's argv as the image runs it with the environment `env`:
/// `command` replaces the image's ENTRYPOINT, `args` its CMD, and the
/// kubelet expands `$(NAME)` in both (not in the image's own) from the
/// container's environment before it starts the process.
fn pod_argv(manifest: &Manifest, container: &Value, env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| env_lookup(env, name);
    let expand = |words: Vec<String>| -> Vec<String> { words.iter().map(|w| kubernetes_expand(w, &lookup)).collect() };
    let command = expand(strings(&container["command"]));
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
    argv.extend(expand(strings(&container["args"])));
    argv
}

/// The value of `name` in an environment built in order (a later
/// definition of the same name wins, as in the kubelet's map).
fn env_lookup(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// Kubernetes' `$(NAME)` expansion (container `command`, `args` and env
/// `value`s; k8s.io/kubernetes third_party/forked/golang/expansion): a
/// defined NAME is replaced by its value, an undefined one stays `$(NAME)`
/// as written, `$$` is one literal `$` (so `$$(NAME)` is never expanded),
/// and any other `$` (last character, `$x`, an unclosed `$(`) stays as it is.
fn kubernetes_expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push('$');
            rest = escaped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `valueFrom.fieldRef` of the pod annotation that holds an Indexed Job
/// pod's index (the downward API; the Job controller sets the annotation).
const COMPLETION_INDEX_FIELD: &str = "metadata.annotations['batch.kubernetes.io/job-completion-index']";

/// ConfigMap values, `(name, key) -> value`.
type ConfigMaps = BTreeMap<(String, String), String>;

/// The data of the ConfigMaps in a manifest file.
fn config_maps(all: &[Manifest], file: &str) -> ConfigMaps {
    let mut maps = ConfigMaps::new();
    for m in all.iter().filter(|m| m.file == file && m.kind() == "ConfigMap") {
        for (key, value) in m.doc["data"].as_mapping().into_iter().flatten() {
            let key = key.as_str().expect("ConfigMap data keys are strings");
            let value = value
                .as_str()
                .unwrap_or_else(|| panic!("{}: data.{key} must be a string", m.label()));
            maps.insert((m.name(), key.to_string()), value.to_string());
        }
    }
    maps
}

/// The container's environment as the kubelet builds it for the pod of
/// `index`, in order: a `value` is expanded from the variables defined
/// before it, the completion index comes from the downward API, a
/// `configMapKeyRef` from `config_maps`. With `config_maps` `None` only
/// plain values and the index are resolved (what the command line needs);
/// with `Some`, a variable that cannot be resolved fails the test, as it
/// would keep the pod from starting.
fn pod_env(container: &Value, index: u64, config_maps: Option<&ConfigMaps>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in container["env"].as_sequence().into_iter().flatten() {
        let name = entry["name"].as_str().expect("env[].name").to_string();
        let value = if let Some(value) = entry["value"].as_str() {
            let lookup = |n: &str| env_lookup(&env, n);
            Some(kubernetes_expand(value, &lookup))
        } else if entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some(COMPLETION_INDEX_FIELD) {
            Some(index.to_string())
        } else if let Some(maps) = config_maps {
            let from = &entry["valueFrom"]["configMapKeyRef"];
            let (map, key) = (from["name"].as_str(), from["key"].as_str());
            let (Some(map), Some(key)) = (map, key) else {
                panic!("env {name}: only value, the completion index and configMapKeyRef are modelled: {entry:?}");
            };
            let value = maps
                .get(&(map.to_string(), key.to_string()))
                .unwrap_or_else(|| panic!("env {name}: no key {key} in a ConfigMap {map} of the same file"));
            Some(value.clone())
        } else {
            None
        };
        if let Some(value) = value {
            env.push((name, value));
        }
    }
    env
}

/// Whether env entry `env` is only there for `$(NAME)` expansion in the
/// container's command line: a downward-API value the args refer to
/// (`JOB_COMPLETION_INDEX`), not a setting handed to licensync.
fn is_expanded_into_args(container: &Value, env: &Value) -> bool {
    let Some(name) = env["name"].as_str() else {
        return false;
    };
    let reference = format!("$({name})");
    env["valueFrom"].get("fieldRef").is_some()
        && strings(&container["command"])
            .iter()
            .chain(&strings(&container["args"]))
            .any(|word| word.contains(&reference))
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
    for kind in [
        "CronJob",
        "Job",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
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
        // An Indexed Job's pods are independent shards: its retries are
        // counted per index, and a small backoffLimit beside them would let
        // one failing index use up every index's retries again (it defaults
        // to 2147483647 with backoffLimitPerIndex).
        if spec["backoffLimitPerIndex"].as_u64().is_some() {
            assert_eq!(
                spec["completionMode"].as_str(),
                Some("Indexed"),
                "{}: backoffLimitPerIndex needs completionMode: Indexed",
                m.label()
            );
            assert!(
                spec.get("backoffLimit").is_none(),
                "{}: with backoffLimitPerIndex leave backoffLimit unset, or one failing shard uses up every shard's retries",
                m.label()
            );
        } else {
            assert!(
                spec["backoffLimit"].as_u64().is_some(),
                "{}: backoffLimit (backoffLimitPerIndex for an Indexed Job)",
                m.label()
            );
        }
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
    for (m, spec) in workloads(&all) {
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

/// `defaultMode` or an item's `mode` as Kubernetes reads it: kubectl's YAML
/// 1.1 takes a leading 0 as octal (`0440`), which YAML 1.2 parsers keep as a
/// string; JSON manifests give the decimal number.
fn file_mode(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if s.starts_with('0') => u64::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
        _ => None,
    }
}

/// The key of the `licensync` Secret that `container` reads at `path`:
/// `path` must lie in a read-only mount of a volume of that Secret, whose
/// files (the Secret's keys, or its `items`) include it, with a mode that
/// the pod's non-root user can read through `fsGroup` and others cannot.
fn secret_key_read_at(m: &Manifest, pod: &Value, container: &Value, path: &str, string_data: &Value) -> String {
    let label = m.label();
    assert!(path.starts_with('/'), "{label}: {path} must be an absolute path");
    let mounts = container["volumeMounts"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let (mount, relative) = mounts
        .iter()
        .find_map(|mount| {
            let dir = mount["mountPath"].as_str()?.trim_end_matches('/');
            let relative = path.strip_prefix(dir)?.strip_prefix('/')?;
            Some((mount, relative))
        })
        .unwrap_or_else(|| panic!("{label}: {path} is not inside any volumeMount's mountPath"));
    let volume_name = mount["name"].as_str().expect("volumeMounts[].name");
    assert_eq!(
        mount["readOnly"].as_bool(),
        Some(true),
        "{label}: the secret volume {volume_name} must be mounted readOnly"
    );
    assert!(
        mount.get("subPath").is_none(),
        "{label}: a subPath mount of a Secret never sees an update of the Secret"
    );
    let volume = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"].as_str() == Some(volume_name))
        .unwrap_or_else(|| panic!("{label}: no volume {volume_name}"));
    let secret = volume
        .get("secret")
        .unwrap_or_else(|| panic!("{label}: {path} is on volume {volume_name}, which is not a Secret volume"));
    assert_eq!(
        secret["secretName"].as_str(),
        Some(SECRET_NAME),
        "{label}: volume {volume_name} must mount the Secret {SECRET_NAME}"
    );
    let default_mode = secret.get("defaultMode").map(|v| {
        file_mode(v).unwrap_or_else(|| panic!("{label}: volume {volume_name}: defaultMode {v:?} is not a mode"))
    });
    // The files the volume holds: the listed items, or every key of the Secret.
    let (key, mode) = match secret["items"].as_sequence() {
        Some(items) => {
            let item = items
                .iter()
                .find(|item| item["path"].as_str() == Some(relative))
                .unwrap_or_else(|| panic!("{label}: volume {volume_name} has no item with path {relative}"));
            let key = item["key"].as_str().expect("items[].key").to_string();
            let mode = item.get("mode").map(|v| file_mode(v).expect("items[].mode"));
            (key, mode.or(default_mode))
        }
        None => (relative.to_string(), default_mode),
    };
    assert!(
        string_data.get(key.as_str()).is_some(),
        "{label}: reads key {key} of the Secret, which secret.example.yaml does not define"
    );
    // Without a mode Kubernetes writes 0644: readable by every user in the pod.
    let mode = mode.unwrap_or(0o644);
    assert_eq!(
        mode & 0o007,
        0,
        "{label}: {path} has mode {mode:o}; set defaultMode (e.g. 0440) so that only the owner and group read it"
    );
    // The files belong to root; fsGroup hands them to the user's group.
    let pod_sc = &pod["securityContext"];
    assert!(
        pod_sc["fsGroup"].as_u64().is_some() && pod_sc["fsGroup"] == pod_sc["runAsGroup"],
        "{label}: securityContext.fsGroup must be the runAsGroup, so that the non-root user can read {path}"
    );
    assert_ne!(
        mode & 0o040,
        0,
        "{label}: {path} has mode {mode:o}: its group (fsGroup) must be able to read it"
    );
    key
}

#[test]
fn no_container_gets_a_secret_as_an_environment_value_or_a_flag() {
    let secrets = every_secret();
    let all = manifests();
    for (m, spec) in workloads(&all) {
        for container in containers(spec) {
            let label = m.label();
            for env in container["env"].as_sequence().into_iter().flatten() {
                let name = env["name"].as_str().expect("env[].name");
                if let Some(secret) = secrets.iter().find(|s| s.var == name) {
                    panic!(
                        "{label}: env sets {name}, the secret itself; set {} to a file of the mounted Secret",
                        secret.file_var
                    );
                }
                assert!(
                    env.get("valueFrom").and_then(|v| v.get("secretKeyRef")).is_none(),
                    "{label}: env {name} takes a value from a Secret; mount the Secret as a volume instead"
                );
            }
            for from in container["envFrom"].as_sequence().into_iter().flatten() {
                assert!(
                    from.get("secretRef").is_none(),
                    "{label}: envFrom exports a Secret into the environment; mount it as a volume instead"
                );
            }
            assert_no_secret_flag(&container_argv(m, container), &label);
        }
    }
}

/// The keys of the Secret `licensync` that a container reads, each at a
/// path [`secret_key_read_at`] accepts: the files its `_FILE` variables name
/// (every secret its command needs has one), the signing key file of
/// `serve` (or of a daemon serving the key API), whether
/// `LICENSYNC_SIGNING_KEY_FILE` or `--signing-key-file` names it, and the
/// daemon's webhook secret file, likewise.
fn secret_keys_read(m: &Manifest, pod: &Value, container: &Value, string_data: &Value) -> BTreeSet<String> {
    let secrets = secrets();
    let label = m.label();
    let cli = container_cli(m, container);
    let env_value = |name: &str| {
        container["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|env| env["name"].as_str() == Some(name))
            .map(|env| {
                env["value"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{label}: {name} must be a plain value (a path)"))
            })
    };
    for var in secrets_needed(&cli) {
        let secret = secret_by_var(&secrets, var);
        assert!(
            env_value(&secret.file_var).is_some(),
            "{label}: needs {var}: set {} to its file in the mounted Secret",
            secret.file_var
        );
    }
    let mut keys_read = BTreeSet::new();
    for secret in &secrets {
        let Some(path) = env_value(&secret.file_var) else {
            continue;
        };
        let key = secret_key_read_at(m, pod, container, path, string_data);
        assert_eq!(
            key, secret.name,
            "{label}: {} points at the Secret's key {key}, not at {}",
            secret.file_var, secret.name
        );
        keys_read.insert(key);
    }
    if let Some(path) = signing_key_path(&cli) {
        let path = path.to_str().expect("a UTF-8 path");
        let key = secret_key_read_at(m, pod, container, path, string_data);
        assert_eq!(
            key,
            SIGNING_KEY,
            "{label}: the signing key file ({} or --signing-key-file) {path} is the Secret's key {key}, not {SIGNING_KEY}",
            signing_key_file_var()
        );
        keys_read.insert(key);
    }
    if let Some(path) = webhook_secret_path(&cli) {
        let path = path.to_str().expect("a UTF-8 path");
        let key = secret_key_read_at(m, pod, container, path, string_data);
        assert_eq!(
            key,
            WEBHOOK_SECRET,
            "{label}: the webhook secret file ({} or --webhook-secret-file) {path} is the Secret's key {key}, not {WEBHOOK_SECRET}",
            webhook_secret().file_var
        );
        keys_read.insert(key);
    }
    keys_read
}

/// The keys of the Secret `licensync` whose files a container can read:
/// every volume of that Secret it mounts, with the volume's `items` or,
/// without them, every key of the Secret.
fn secret_keys_mounted(pod: &Value, container: &Value, string_data: &Value) -> BTreeSet<String> {
    let mut mounted = BTreeSet::new();
    for mount in container["volumeMounts"].as_sequence().into_iter().flatten() {
        let volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {:?}", mount["name"]));
        let secret = &volume["secret"];
        if secret["secretName"].as_str() != Some(SECRET_NAME) {
            continue;
        }
        match secret["items"].as_sequence() {
            Some(items) => mounted.extend(
                items
                    .iter()
                    .map(|i| i["key"].as_str().expect("items[].key").to_string()),
            ),
            None => mounted.extend(
                string_data
                    .as_mapping()
                    .unwrap()
                    .keys()
                    .map(|k| k.as_str().unwrap().to_string()),
            ),
        }
    }
    mounted
}

#[test]
fn every_secret_a_container_needs_is_a_file_of_the_mounted_secret() {
    let string_data = the_example_secret();
    let all = manifests();
    let mut keys_read = BTreeSet::new();
    for (m, spec) in workloads(&all) {
        let pod = pod_spec(spec);
        for container in containers(spec) {
            keys_read.extend(secret_keys_read(m, pod, container, &string_data));
        }
    }
    let defined: BTreeSet<String> = string_data
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys_read, defined,
        "every key of secret.example.yaml is a file some pod reads"
    );
}

/// Least privilege: a reconcile pod has no use for the signing key nor the
/// webhook secret, the key API none for the Stripe key or the mail URL. A
/// pod that mounts the whole Secret, or lists an item it does not read,
/// fails here.
#[test]
fn every_pod_mounts_only_the_secret_files_it_reads() {
    let string_data = the_example_secret();
    let all = manifests();
    let mut serve_pods = 0;
    let mut webhook_pods = 0;
    for (m, spec) in workloads(&all) {
        let pod = pod_spec(spec);
        for container in containers(spec) {
            let read = secret_keys_read(m, pod, container, &string_data);
            if read.contains(WEBHOOK_SECRET) {
                let cli = container_cli(m, container);
                assert!(
                    matches!(cli.command, Command::Daemon(_)),
                    "{}: reads {WEBHOOK_SECRET}, which only the daemon uses: {:?}",
                    m.label(),
                    cli.command
                );
                webhook_pods += 1;
            }
            let mounted = secret_keys_mounted(pod, container, &string_data);
            assert_eq!(
                mounted,
                read,
                "{}: mounts the Secret's files {mounted:?} but reads {read:?}: list only those in the volume's items",
                m.label()
            );
            if read.contains(SIGNING_KEY) {
                serve_pods += 1;
            }
        }
    }
    assert_eq!(serve_pods, 1, "only the key API's pods can read the signing key");
    assert_eq!(webhook_pods, 1, "only the daemon's pods can read the webhook secret");
}

#[test]
fn the_example_secret_holds_one_placeholder_file_per_secret_and_no_real_credential() {
    let string_data = the_example_secret();
    let keys: BTreeSet<String> = string_data
        .as_mapping()
        .expect("secret.example.yaml: stringData")
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let mut expected: BTreeSet<String> = secrets().into_iter().map(|s| s.name).collect();
    expected.insert(SIGNING_KEY.to_string());
    expected.insert(webhook_secret().name);
    assert_eq!(
        keys, expected,
        "secret.example.yaml: one key per secret, named as the file the pods read; \
         settings that are not secret are plain env values in the manifests"
    );
    for key in &keys {
        let value = string_data[key.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("secret.example.yaml: stringData.{key}"));
        assert!(
            value.contains("REPLACE_ME"),
            "secret.example.yaml: {key} must be an obvious placeholder, got a value without REPLACE_ME"
        );
    }
    let key = string_data["stripe-api-key"].as_str().unwrap();
    assert!(
        key.starts_with("rk_"),
        "the example shows a restricted key (rk_), the least privilege licensync needs"
    );
    // The shape `keys generate` writes, but no key: a copied example must
    // not sign anything (serve refuses it at start).
    let signing = string_data[SIGNING_KEY].as_str().unwrap();
    assert!(
        signing.starts_with("k4.secret."),
        "secret.example.yaml: {SIGNING_KEY} is a k4.secret PASERK"
    );
    assert!(
        licensync_verify::Signer::from_paserk(signing).is_err(),
        "secret.example.yaml: {SIGNING_KEY} must be a placeholder, not a usable key"
    );
    assert!(
        read("kubernetes/secret.example.yaml").contains("licensync keys generate"),
        "secret.example.yaml says how to make {SIGNING_KEY}"
    );
    // The shape the daemon reads, but no secret: a copied example must not
    // accept deliveries (the daemon refuses it at start).
    let webhook = string_data[WEBHOOK_SECRET].as_str().unwrap();
    assert!(
        webhook.starts_with("whsec_"),
        "secret.example.yaml: {WEBHOOK_SECRET} is a whsec_ endpoint secret"
    );
    assert!(
        licensync::stripe::WebhookSecrets::parse(webhook).is_err(),
        "secret.example.yaml: {WEBHOOK_SECRET} must be a placeholder the daemon refuses"
    );
    assert!(
        read("kubernetes/secret.example.yaml").contains("Developers > Webhooks"),
        "secret.example.yaml says where to find {WEBHOOK_SECRET}"
    );
}

/// What a restricted key must be allowed to read: every full run lists
/// these, `/v1/refunds` with `expand[]=data.charge` and `/v1/disputes` included.
const STRIPE_READ_PERMISSIONS: [&str; 10] = [
    "Checkout Sessions",
    "Invoices",
    "Subscriptions",
    "Customers",
    "Products",
    "Prices",
    "Events",
    "Charges",
    "Refunds",
    "Disputes",
];

#[test]
fn the_restricted_key_permissions_listed_cover_everything_a_full_run_reads() {
    for file in ["README.md", "kubernetes/secret.example.yaml"] {
        // Comment markers and line breaks out, so a list may span lines.
        let text: String = read(file)
            .lines()
            .map(|l| l.trim().trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ");
        let mut lists = 0;
        for (at, _) in text.match_indices("read access to") {
            let rest = &text[at..];
            let list = &rest[..rest.find(['.', '|', '(']).unwrap_or(rest.len())];
            for permission in STRIPE_READ_PERMISSIONS {
                assert!(
                    list.contains(permission),
                    "{file}: the restricted key's permissions ({list}) miss {permission}"
                );
            }
            lists += 1;
        }
        assert!(lists > 0, "{file}: lists the restricted key's read permissions");
    }
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
    assert_no_secret_flag(argv, source);
    let mut with_name = vec!["licensync".to_string()];
    with_name.extend(argv[1..].iter().cloned());
    Cli::try_parse_from(&with_name).unwrap_or_else(|e| panic!("{source}: `{}` does not parse: {e}", argv.join(" ")))
}

/// `argv` parsed as licensync parses it in the environment `env`: clap
/// reads a setting's variable when its flag is not given. clap cannot be
/// handed an environment other than the process's, so each variable of
/// `env` that is a setting of the command the words name (or of licensync
/// as a whole) is turned into its flag, unless the flag is on the command
/// line (the flag wins), and parsed as such: a required setting given as a
/// variable (`LICENSYNC_SIGNING_KEY_FILE`) counts, and a malformed value
/// (`LICENSYNC_LISTEN=nonsense`) fails. Variables that are no setting are
/// left out here (`every_environment_variable_..._is_a_licensync_setting`
/// holds them to licensync's).
fn parse_with_env(argv: &[String], env: &[(String, String)], source: &str) -> Cli {
    let root = Cli::command();
    // The command the words name, `licenses list` as well as `serve`.
    let mut leaf = &root;
    let mut after_command = 1;
    for (i, word) in argv.iter().enumerate().skip(1) {
        if let Some(sub) = leaf.find_subcommand(word) {
            leaf = sub;
            after_command = i + 1;
        }
    }
    let given = |long: &str| {
        argv.iter()
            .any(|w| w == &format!("--{long}") || w.starts_with(&format!("--{long}=")))
    };
    let as_flag = |arg: &clap::Arg, value: &str| -> Option<String> {
        let long = arg.get_long().expect("a setting with a variable has a long flag");
        if given(long) {
            return None;
        }
        match arg.get_action() {
            // clap's reading of a boolean variable: these are false, anything else true.
            clap::ArgAction::SetTrue => (!matches!(
                value.to_ascii_lowercase().as_str(),
                "" | "n" | "no" | "f" | "false" | "off" | "0"
            ))
            .then(|| format!("--{long}")),
            _ => Some(format!("--{long}={value}")),
        }
    };
    let setting = |cmd: &clap::Command, name: &str| -> Option<clap::Arg> {
        cmd.get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name))
            .cloned()
    };
    let (mut global, mut own) = (Vec::new(), Vec::new());
    for (name, value) in env {
        if !std::ptr::eq(leaf, &root)
            && let Some(arg) = setting(leaf, name)
        {
            own.extend(as_flag(&arg, value));
        } else if let Some(arg) = setting(&root, name) {
            global.extend(as_flag(&arg, value));
        }
    }
    let mut with_env = vec![argv[0].clone()];
    with_env.extend(global);
    with_env.extend(argv[1..after_command].iter().cloned());
    with_env.extend(own);
    with_env.extend(argv[after_command..].iter().cloned());
    parse(&with_env, source)
}

/// A container's command line with the plain values of its env, as the
/// process in the pod sees them.
fn container_cli(m: &Manifest, container: &Value) -> Cli {
    let env = pod_env(container, 0, None);
    parse_with_env(&pod_argv(m, container, &env), &env, &m.label())
}

fn reconcile(cli: Cli, source: &str) -> licensync::cmd::reconcile::ReconcileArgs {
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
fn every_cronjob_runs_reconcile_with_a_json_report() {
    let all = manifests();
    let cronjobs: Vec<&Manifest> = all.iter().filter(|m| m.kind() == "CronJob").collect();
    assert!(cronjobs.len() >= 2, "cronjob.yaml and cronjob-sharded.yaml");
    for cronjob in cronjobs {
        let spec = cronjob.job_spec().unwrap();
        let argv = container_argv(cronjob, &containers(spec)[0]);
        let args = reconcile(parse(&argv, &cronjob.label()), &cronjob.label());
        assert_eq!(args.output, Output::Json, "{}", cronjob.label());
        assert!(
            !args.dry_run && !args.full && args.since.is_none(),
            "{}",
            cronjob.label()
        );
    }
}

#[test]
fn every_container_command_in_the_manifests_parses_with_licensync_cli() {
    let all = manifests();
    let mut parsed = 0;
    for (m, spec) in workloads(&all) {
        for container in containers(spec) {
            // With the settings of its env: serve's signing key is one.
            container_cli(m, container);
            parsed += 1;
        }
    }
    assert!(parsed >= 5, "the Jobs and the key API's Deployment");
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
// Several Stripe accounts sharded over the pods of an Indexed Job
// ---------------------------------------------------------------------------

const SHARDED_FILE: &str = "kubernetes/cronjob-sharded.yaml";

fn sharded_cronjob(all: &[Manifest]) -> &Manifest {
    all.iter()
        .find(|m| m.file == SHARDED_FILE && m.kind() == "CronJob")
        .expect("cronjob-sharded.yaml holds a CronJob")
}

/// The value of `--shard` in an argv (`--shard V` or `--shard=V`).
fn shard_value(words: &[String]) -> Option<String> {
    words
        .iter()
        .enumerate()
        .find_map(|(i, word)| match word.strip_prefix("--shard") {
            Some("") => words.get(i + 1).cloned(),
            Some(rest) => rest.strip_prefix('=').map(str::to_string),
            None => None,
        })
}

/// The argv without its `--shard` option: the same run, unsharded.
fn without_shard(argv: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut words = argv.iter();
    while let Some(word) = words.next() {
        if word == "--shard" {
            words.next();
        } else if !word.starts_with("--shard=") {
            out.push(word.clone());
        }
    }
    assert_eq!(out.len() + 2, argv.len(), "one `--shard I/N` in {argv:?}");
    out
}

#[test]
fn kubernetes_expands_dollar_parenthesis_references_from_the_env_and_nothing_else() {
    let lookup = |name: &str| match name {
        "JOB_COMPLETION_INDEX" => Some("2".to_string()),
        "EMPTY" => Some(String::new()),
        _ => None,
    };
    let cases = [
        ("$(JOB_COMPLETION_INDEX)/3", "2/3"),
        ("--shard=$(JOB_COMPLETION_INDEX)/3", "--shard=2/3"),
        ("$(JOB_COMPLETION_INDEX)$(JOB_COMPLETION_INDEX)", "22"),
        ("a$(EMPTY)b", "ab"),
        // Undefined: left as written (licensync would then refuse the shard).
        ("$(UNDEFINED)/3", "$(UNDEFINED)/3"),
        // `$$` escapes: the reference is passed literally, never expanded.
        ("$$(JOB_COMPLETION_INDEX)", "$(JOB_COMPLETION_INDEX)"),
        ("$$$(JOB_COMPLETION_INDEX)", "$2"),
        ("$$", "$"),
        // A `$` that starts no reference stays.
        ("$JOB_COMPLETION_INDEX", "$JOB_COMPLETION_INDEX"),
        ("${JOB_COMPLETION_INDEX}", "${JOB_COMPLETION_INDEX}"),
        ("cost $", "cost $"),
        ("$(JOB_COMPLETION_INDEX", "$(JOB_COMPLETION_INDEX"),
        ("$()", "$()"),
        ("plain", "plain"),
    ];
    for (input, expected) in cases {
        assert_eq!(kubernetes_expand(input, &lookup), expected, "{input:?}");
    }
    // An env value sees only the variables defined before it.
    let container: Value = serde_norway::from_str(
        r#"
env:
  - {name: A, value: "$(B)-$(JOB_COMPLETION_INDEX)"}
  - name: JOB_COMPLETION_INDEX
    valueFrom: {fieldRef: {fieldPath: "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
  - {name: B, value: "b"}
  - {name: C, value: "$(B)-$(JOB_COMPLETION_INDEX)"}
"#,
    )
    .unwrap();
    let env = pod_env(&container, 1, None);
    assert_eq!(env_lookup(&env, "A").as_deref(), Some("$(B)-$(JOB_COMPLETION_INDEX)"));
    assert_eq!(env_lookup(&env, "C").as_deref(), Some("b-1"));
}

#[test]
fn the_sharded_cronjob_is_an_indexed_job_whose_pod_i_reconciles_shard_i_of_n() {
    let all = manifests();
    let cronjob = sharded_cronjob(&all);
    let label = cronjob.label();
    let spec = cronjob.job_spec().unwrap();
    assert_ne!(
        cronjob.name(),
        "licensync",
        "{label}: a name of its own beside cronjob.yaml's"
    );
    assert_eq!(
        cronjob.doc["spec"]["concurrencyPolicy"].as_str(),
        Some("Forbid"),
        "{label}"
    );
    let schedule = cronjob.doc["spec"]["schedule"].as_str().expect("a schedule");
    cron::Schedule::from_str(&format!("0 {schedule}")).expect("a valid cron expression");

    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"), "{label}");
    let n = spec["completions"].as_u64().expect("completions");
    assert!(n >= 2, "{label}: completions {n}: more than one shard");
    assert_eq!(
        spec["parallelism"].as_u64(),
        Some(n),
        "{label}: parallelism must equal completions: one pod per shard, all at once"
    );
    assert!(
        spec["backoffLimitPerIndex"].as_u64().is_some(),
        "{label}: retries per shard (backoffLimitPerIndex)"
    );

    let containers = containers(spec);
    assert_eq!(containers.len(), 1, "{label}");
    let container = &containers[0];
    // Written for Kubernetes to expand, with the same N as completions.
    let written = shard_value(&strings(&container["args"])).unwrap_or_else(|| panic!("{label}: args without --shard"));
    assert_eq!(written, format!("$(JOB_COMPLETION_INDEX)/{n}"), "{label}: --shard");
    // ... and defined in the container's env, so that it is expanded.
    let index_env = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["name"].as_str() == Some("JOB_COMPLETION_INDEX"))
        .unwrap_or_else(|| panic!("{label}: env does not define JOB_COMPLETION_INDEX"));
    assert_eq!(
        index_env["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some(COMPLETION_INDEX_FIELD),
        "{label}: JOB_COMPLETION_INDEX from the downward API"
    );
    assert!(index_env.get("value").is_none(), "{label}");

    // Pod i's command line, as the kubelet expands it, is licensync's shard i of n.
    for index in 0..n {
        let argv = pod_argv(cronjob, container, &pod_env(container, index, None));
        let source = format!("{label}, pod {index}");
        let args = reconcile(parse(&argv, &source), &source);
        let expected = licensync::accounts::Shard {
            index: u32::try_from(index).unwrap(),
            count: u32::try_from(n).unwrap(),
        };
        assert_eq!(args.shard, Some(expected), "{source}: `{}`", argv.join(" "));
        assert_eq!(args.output, Output::Json, "{source}");
    }

    // The accounts: Connect ids from the ConfigMap of the same file.
    let env = pod_env(container, 0, Some(&config_maps(&all, SHARDED_FILE)));
    let accounts = env_lookup(&env, "LICENSYNC_STRIPE_ACCOUNTS")
        .unwrap_or_else(|| panic!("{label}: LICENSYNC_STRIPE_ACCOUNTS (the connected accounts)"));
    let ids: Vec<&str> = accounts.split(',').collect();
    assert!(
        ids.len() >= 2,
        "{label}: the example lists several accounts: {accounts}"
    );
    for id in ids {
        licensync::accounts::account_arg(id).unwrap_or_else(|e| panic!("{label}: LICENSYNC_STRIPE_ACCOUNTS: {e}"));
    }
}

#[test]
fn the_accounts_file_secret_example_is_an_accounts_file_licensync_resolves_with_placeholder_keys_only() {
    let file = "kubernetes/secret-accounts.example.yaml";
    let all = manifests();
    let secret = all
        .iter()
        .find(|m| m.file == file && m.kind() == "Secret")
        .expect("secret-accounts.example.yaml holds a Secret");
    assert_ne!(secret.name(), SECRET_NAME, "a Secret of its own beside `licensync`");
    let data = secret.doc["stringData"].as_mapping().expect("stringData");
    // The Secret's files, as its volume shows them.
    let dir = tempfile::tempdir().unwrap();
    let mut key_files = BTreeSet::new();
    for (key, value) in data {
        let key = key.as_str().unwrap();
        let value = value.as_str().unwrap_or_else(|| panic!("{file}: stringData.{key}"));
        std::fs::write(dir.path().join(key), value).unwrap();
        if key != "accounts.toml" {
            assert!(
                value.contains("REPLACE_ME") && value.starts_with("rk_"),
                "{file}: {key} must be a placeholder restricted key (rk_..._REPLACE_ME...)"
            );
            key_files.insert(key.to_string());
        }
    }
    let toml_text = data
        .get("accounts.toml")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{file}: stringData.accounts.toml"));
    // Every key file is one account's, named relative to the file (so inside the mount).
    let parsed: toml::Table = toml::from_str(toml_text).unwrap_or_else(|e| panic!("{file}: accounts.toml: {e}"));
    let referenced: BTreeSet<String> = parsed["account"]
        .as_array()
        .expect("[[account]] tables")
        .iter()
        .filter_map(|a| a.get("stripe_api_key_file").and_then(toml::Value::as_str))
        .map(str::to_string)
        .collect();
    assert_eq!(
        referenced, key_files,
        "{file}: stripe_api_key_file names the key files of the same Secret"
    );
    for prefix in ["sk_live_", "sk_test_", "rk_live_", "rk_test_"] {
        assert!(
            !toml_text.contains(prefix),
            "{file}: accounts.toml names key files, it holds no key ({prefix}...)"
        );
    }

    // licensync's own reading of it: keys of their own, no platform key needed.
    let settings = licensync::accounts::AccountSettings {
        connected: vec![],
        file: Some(dir.path().join("accounts.toml")),
    };
    let mail = licensync::mail::MailSettings::new(
        licensync::mail::MailUrl::None,
        licensync::mail::parse_from("Acme Licenses <licenses@acme.example>").unwrap(),
    );
    let accounts = settings
        .resolve(None, &mail)
        .unwrap_or_else(|e| panic!("{file}: licensync refuses accounts.toml: {e:#}"));
    assert_eq!(accounts.len(), key_files.len(), "{file}");
    for account in &accounts {
        assert!(
            !account.connect && account.stripe_account.is_some(),
            "{file}: {} has a key of its own and its acct_ id",
            account.name
        );
    }

    // The alternative in cronjob-sharded.yaml's comments mounts this Secret
    // and names the file where it is mounted.
    let sharded = read(SHARDED_FILE);
    let mount = format!("/run/secrets/{}", secret.name());
    for expected in [
        format!("secretName: {}", secret.name()),
        format!("mountPath: {mount}"),
        format!("value: {mount}/accounts.toml"),
        "name: LICENSYNC_ACCOUNTS_FILE".to_string(),
    ] {
        assert!(
            sharded.contains(&expected),
            "{SHARDED_FILE}: the accounts-file alternative shows `{expected}`"
        );
    }
}

/// A shop in one account, as in tests/accounts.rs: a monthly subscription
/// and a one-time checkout line, bought by `email` (two licenses).
fn open_shop(f: &fake_stripe::FakeStripe, email: &str) {
    let customer = f.create_customer(Some(email), Some(email));
    let pro = f.create_product("Pro", &[("product_id", "pro"), ("hwid_limit", "2")]);
    let monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    let tool = f.create_product("Tool", &[("product_id", "tool")]);
    let once = f.create_price(&tool, None, 2_000, &[]);
    f.create_subscription(fake_stripe::SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly, 1)],
        ..fake_stripe::SubscriptionSpec::default()
    });
    f.create_checkout_session(fake_stripe::CheckoutSpec {
        customer: Some(customer),
        lines: vec![(once, 1)],
        ..fake_stripe::CheckoutSpec::default()
    });
}

/// The Secret's `webhook-secret` in the pods these tests start.
const TEST_WEBHOOK_SECRET: &str = "whsec_test_deploy_5b1e7c";

/// What a deployment of a manifest stands on, on this machine: the
/// database, the Secret `licensync` with a test value for each of its keys
/// (a new signing key, whose id is `signing_kid`; [`TEST_WEBHOOK_SECRET`]),
/// a file outbox for the mail, and a directory per pod for its volumes.
struct Deployment {
    db: common::TestDb,
    secrets: tempfile::TempDir,
    outbox: tempfile::TempDir,
    pods: tempfile::TempDir,
    signing_kid: String,
}

impl Deployment {
    fn new(fake: &fake_stripe::FakeStripe) -> Deployment {
        Deployment::with_stripe_api_key(&fake.api_key())
    }

    /// For pods that never call Stripe (the key API): any key will do.
    fn with_stripe_api_key(stripe_api_key: &str) -> Deployment {
        let signing = licensync_verify::Signer::generate().unwrap();
        let d = Deployment {
            db: common::TestDb::new(),
            secrets: tempfile::tempdir().unwrap(),
            outbox: tempfile::tempdir().unwrap(),
            pods: tempfile::tempdir().unwrap(),
            signing_kid: signing.kid,
        };
        let keys = the_example_secret();
        for key in keys.as_mapping().unwrap().keys() {
            let key = key.as_str().unwrap();
            let value = match key {
                "stripe-api-key" => stripe_api_key.to_string(),
                "database-url" => d.db.url.clone(),
                "mail-url" => format!("file://{}", d.outbox.path().display()),
                SIGNING_KEY => signing.secret.clone(),
                WEBHOOK_SECRET => TEST_WEBHOOK_SECRET.to_string(),
                other => panic!("no test value for the Secret's key {other}"),
            };
            std::fs::write(d.secrets.path().join(key), format!("{value}\n")).unwrap();
        }
        d
    }

    /// The container's volume mounts as directories of this machine,
    /// longest mount path first: a Secret volume holds the Secret's files
    /// (only its `items`, under their paths, when it lists some), an
    /// emptyDir is the pod's own.
    fn mounts(&self, pod_spec: &Value, container: &Value, pod: &str) -> Vec<(String, PathBuf)> {
        let mut mounts = Vec::new();
        for mount in container["volumeMounts"].as_sequence().into_iter().flatten() {
            let name = mount["name"].as_str().expect("volumeMounts[].name");
            let path = mount["mountPath"].as_str().expect("volumeMounts[].mountPath");
            let volume = pod_spec["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|v| v["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("no volume {name}"));
            let dir = if volume.get("secret").is_some() {
                assert_eq!(volume["secret"]["secretName"].as_str(), Some(SECRET_NAME));
                match volume["secret"]["items"].as_sequence() {
                    None => self.secrets.path().to_path_buf(),
                    Some(items) => {
                        let dir = self.pods.path().join(pod).join(name);
                        std::fs::create_dir_all(&dir).unwrap();
                        for item in items {
                            let (key, file) = (item["key"].as_str().unwrap(), item["path"].as_str().unwrap());
                            std::fs::copy(self.secrets.path().join(key), dir.join(file))
                                .unwrap_or_else(|e| panic!("volume {name}: item {key}: {e}"));
                        }
                        dir
                    }
                }
            } else if volume.get("emptyDir").is_some() {
                let dir = self.pods.path().join(pod).join(name);
                std::fs::create_dir_all(&dir).unwrap();
                dir
            } else {
                panic!("volume {name}: only Secret and emptyDir volumes are modelled here");
            };
            mounts.push((path.trim_end_matches('/').to_string(), dir));
        }
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        mounts
    }

    /// The real licensync binary as the pod would run it: `argv` (the
    /// image's path replaced by this build's) with the pod's `env`, whose
    /// paths inside volume mounts lead to their directories here. Only
    /// STRIPE_API_BASE is added, with a `fake`: the fake Stripe instead of
    /// api.stripe.com.
    fn pod_command(
        &self,
        fake: Option<&fake_stripe::FakeStripe>,
        pod_spec: &Value,
        container: &Value,
        pod: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> std::process::Command {
        let mounts = self.mounts(pod_spec, container, pod);
        let on_host = |value: &str| -> String {
            for (path, dir) in &mounts {
                if let Some(rest) = value.strip_prefix(path.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    return format!("{}{rest}", dir.display());
                }
            }
            value.to_string()
        };
        let mut cmd = common::licensync();
        cmd.args(&argv[1..]);
        for (name, value) in env {
            cmd.env(name, on_host(value));
        }
        if let Some(fake) = fake {
            cmd.env("STRIPE_API_BASE", fake.base_url());
        }
        cmd
    }

    /// Every license without what differs between two databases (id, key,
    /// times), sorted by account and grant.
    fn portable_licenses(&self) -> Vec<serde_json::Value> {
        let out = common::licensync()
            .args(["licenses", "list", "--output", "json"])
            .env("DATABASE_URL", &self.db.url)
            .output()
            .unwrap();
        let listed: serde_json::Value = common::Ran::new(&out).ok_json();
        common::portable_licenses(listed.as_array().expect("a JSON array of licenses"))
    }

    fn emails(&self) -> usize {
        common::eml_files(self.outbox.path()).len()
    }
}

async fn run(cmd: std::process::Command) -> common::Ran {
    common::run_binary(cmd).await
}

/// The Indexed Job manifest is parsed and its command line runs through the
/// real CLI: each pod's argv and env come from cronjob-sharded.yaml, with
/// `$(JOB_COMPLETION_INDEX)` expanded as the kubelet does, the Secret's
/// files holding test values and the ConfigMap's account list naming the
/// fake's connected accounts; the N pods run at once against one database.
#[tokio::test(flavor = "multi_thread")]
async fn the_indexed_jobs_pods_run_their_shards_at_once_and_together_equal_one_unsharded_run() {
    let all = manifests();
    let cronjob = sharded_cronjob(&all);
    let spec = cronjob.job_spec().unwrap();
    let n = spec["completions"].as_u64().unwrap();
    let pod_spec = pod_spec(spec);
    let container = &containers(spec)[0];

    // A platform with connected accounts, each with a shop: at least 5, and
    // enough that no shard is empty (shards are a hash of the id).
    let platform = fake_stripe::FakeStripe::start().await;
    platform.set_now(chrono::Utc::now().timestamp());
    let in_shard = |id: &str, index: u64| {
        licensync::accounts::Shard {
            index: u32::try_from(index).unwrap(),
            count: u32::try_from(n).unwrap(),
        }
        .contains(Some(id))
    };
    let mut ids: Vec<String> = Vec::new();
    while ids.len() < 5 || (0..n).any(|i| !ids.iter().any(|id| in_shard(id, i))) {
        assert!(ids.len() < 60, "no spread of {} accounts over {n} shards", ids.len());
        let account = platform.connect_account();
        let id = account.account_id().unwrap();
        open_shop(&account, &format!("buyer@{id}.test"));
        ids.push(id);
    }

    // The ConfigMap the manifest reads LICENSYNC_STRIPE_ACCOUNTS from, listing them.
    let from = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["name"].as_str() == Some("LICENSYNC_STRIPE_ACCOUNTS"))
        .map(|e| &e["valueFrom"]["configMapKeyRef"])
        .expect("the manifest reads the accounts from LICENSYNC_STRIPE_ACCOUNTS");
    let source = (
        from["name"].as_str().expect("configMapKeyRef.name").to_string(),
        from["key"].as_str().expect("configMapKeyRef.key").to_string(),
    );
    let mut maps = config_maps(&all, SHARDED_FILE);
    assert!(maps.contains_key(&source), "{source:?} is in {SHARDED_FILE}");
    maps.insert(source, ids.join(","));

    // N pods at once, each with its own index, one database.
    let sharded = Deployment::new(&platform);
    let pods = (0..n).map(|index| {
        let env = pod_env(container, index, Some(&maps));
        let argv = pod_argv(cronjob, container, &env);
        run(sharded.pod_command(
            Some(&platform),
            pod_spec,
            container,
            &format!("pod-{index}"),
            &argv,
            &env,
        ))
    });
    let ran = futures::future::join_all(pods).await;
    let mut seen: Vec<String> = Vec::new();
    for (index, pod) in ran.iter().enumerate() {
        assert_eq!(pod.code, 0, "pod {index} of {n}:\n{}", pod.all());
        let report = pod.report();
        assert_eq!(report["shard"], format!("{index}/{n}").as_str(), "{report:#}");
        assert_eq!(report["accounts_configured"], ids.len(), "{report:#}");
        let accounts: Vec<String> = report["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                assert_eq!(a["outcome"], "succeeded", "{a:#}");
                a["stripe_account"].as_str().unwrap().to_string()
            })
            .collect();
        assert!(!accounts.is_empty(), "pod {index} has accounts of its own: {report:#}");
        seen.extend(accounts);
    }
    // Disjoint, and together every account.
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "an account in two shards: {seen:?}");
    assert_eq!(distinct, ids.iter().collect::<BTreeSet<_>>());

    // One unsharded run of the same manifest (the pod of index 0 without
    // `--shard`) into a second database gives the same licenses.
    let whole = Deployment::new(&platform);
    let env = pod_env(container, 0, Some(&maps));
    let argv = without_shard(&pod_argv(cronjob, container, &env));
    let ran = run(whole.pod_command(Some(&platform), pod_spec, container, "whole", &argv, &env)).await;
    let report = ran.report();
    assert!(report["shard"].is_null(), "{report:#}");
    assert_eq!(report["accounts"].as_array().unwrap().len(), ids.len());

    let licenses = sharded.portable_licenses();
    assert_eq!(licenses.len(), 2 * ids.len(), "two licenses per shop");
    assert_eq!(licenses, whole.portable_licenses());
    assert_eq!(sharded.emails(), licenses.len(), "one email per license, none twice");
    assert_eq!(whole.emails(), licenses.len());
}

// ---------------------------------------------------------------------------
// The key API: serve.yaml (Deployment, Service, PodDisruptionBudget)
// ---------------------------------------------------------------------------

const SERVE_FILE: &str = "kubernetes/serve.yaml";

/// The one document of `kind` in `file`.
fn document<'a>(all: &'a [Manifest], file: &str, kind: &str) -> &'a Manifest {
    let found: Vec<&Manifest> = all.iter().filter(|m| m.file == file && m.kind() == kind).collect();
    assert_eq!(found.len(), 1, "{file} holds one {kind}");
    found[0]
}

/// The one document of `kind` in serve.yaml.
fn serve_document<'a>(all: &'a [Manifest], kind: &str) -> &'a Manifest {
    document(all, SERVE_FILE, kind)
}

/// The Deployment's one container.
fn serve_container(deployment: &Manifest) -> &Value {
    let containers = containers(deployment.workload_spec().unwrap());
    assert_eq!(containers.len(), 1, "{}: one container", deployment.label());
    &containers[0]
}

fn serve_args(cli: Cli, source: &str) -> licensync::cmd::serve::ServeArgs {
    match cli.command {
        Command::Serve(args) => args,
        other => panic!("{source}: expected `serve`, got {other:?}"),
    }
}

/// The `containerPort` of the container's port named `name`.
fn named_port(container: &Value, name: &str) -> Option<u16> {
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .map(|p| {
            let port = p["containerPort"].as_u64().expect("ports[].containerPort");
            u16::try_from(port).expect("a TCP port")
        })
}

/// A probe's `httpGet` path and port, the port by name: a number would
/// silently keep probing an old port when the container's changes.
fn http_probe<'a>(container: &'a Value, probe: &str, label: &str) -> (&'a str, &'a str) {
    let get = &container[probe]["httpGet"];
    let path = get["path"]
        .as_str()
        .unwrap_or_else(|| panic!("{label}: {probe} is an httpGet probe with a path"));
    let port = get["port"]
        .as_str()
        .unwrap_or_else(|| panic!("{label}: {probe} names its port (port: http), got {:?}", get["port"]));
    assert!(
        named_port(container, port).is_some(),
        "{label}: {probe} probes port {port}, which the container does not name"
    );
    (path, port)
}

#[test]
fn the_key_api_deployment_runs_two_replicas_of_serve_listening_on_its_named_http_port() {
    let all = manifests();
    let deployment = serve_document(&all, "Deployment");
    let label = deployment.label();
    let spec = &deployment.doc["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(2), "{label}: replicas");
    assert!(
        spec["selector"].get("matchExpressions").is_none(),
        "{label}: matchLabels only (the tests read those)"
    );
    assert!(
        selects(&spec["selector"]["matchLabels"], pod_labels(spec)),
        "{label}: spec.selector must select the template's labels (the API server refuses it otherwise)"
    );
    let container = serve_container(deployment);
    let args = serve_args(container_cli(deployment, container), &label);
    assert!(
        args.listen.ip().is_unspecified(),
        "{label}: --listen {}: a pod must listen on all its addresses, or no Service reaches it",
        args.listen
    );
    assert_eq!(
        named_port(container, "http"),
        Some(args.listen.port()),
        "{label}: the container port named http must be the port serve listens on"
    );
    // The image the Jobs run: one build of licensync, one version everywhere.
    let cronjob = all
        .iter()
        .find(|m| m.kind() == "CronJob" && m.name() == "licensync")
        .expect("the CronJob");
    let cron_container = &containers(cronjob.job_spec().unwrap())[0];
    assert_eq!(container["image"], cron_container["image"], "{label}: image");
    assert_eq!(
        pod_spec(spec)["automountServiceAccountToken"].as_bool(),
        Some(false),
        "{label}: licensync never talks to the Kubernetes API"
    );
}

#[test]
fn the_key_api_is_ready_while_healthz_answers_and_alive_without_asking_the_database() {
    let all = manifests();
    let deployment = serve_document(&all, "Deployment");
    let label = deployment.label();
    let container = serve_container(deployment);
    // /healthz is 503 while the database is down. A restart cannot fix the
    // database, and serve exits 2 at start without it: liveness on /healthz
    // would turn an outage into a CrashLoopBackOff of every replica.
    assert_ready_on_healthz_alive_elsewhere(container, &label, "the database answering");
}

#[test]
fn the_key_api_service_sends_its_http_port_to_the_deployments_pods_and_to_no_other_pod() {
    let all = manifests();
    let deployment = serve_document(&all, "Deployment");
    let service = serve_document(&all, "Service");
    let label = service.label();
    let pods = pod_labels(&deployment.doc["spec"]);
    let selector = &service.doc["spec"]["selector"];
    assert!(
        selects(selector, pods),
        "{label}: selector {selector:?} must select the Deployment's pods {pods:?}"
    );
    for (m, spec) in workloads(&all).into_iter().filter(|(m, _)| m.file != SERVE_FILE) {
        assert!(
            !selects(selector, pod_labels(spec)),
            "{label}: selector {selector:?} also selects the pods of {}: requests would reach pods that are not the key API's",
            m.label()
        );
    }
    let container = serve_container(deployment);
    let ports = service.doc["spec"]["ports"].as_sequence().expect("spec.ports");
    assert!(!ports.is_empty(), "{label}: ports");
    for port in ports {
        let target = port["targetPort"].as_str().unwrap_or_else(|| {
            panic!(
                "{label}: targetPort names the container's port (http), got {:?}",
                port["targetPort"]
            )
        });
        assert_eq!(target, "http", "{label}: targetPort");
        assert!(
            named_port(container, target).is_some(),
            "{label}: no container port {target}"
        );
    }
}

#[test]
fn the_key_api_disruption_budget_keeps_one_pod_answering_and_lets_a_drain_proceed() {
    let all = manifests();
    let deployment = serve_document(&all, "Deployment");
    let budget = serve_document(&all, "PodDisruptionBudget");
    let label = budget.label();
    let spec = &budget.doc["spec"];
    assert!(
        selects(&spec["selector"]["matchLabels"], pod_labels(&deployment.doc["spec"])),
        "{label}: selects the Deployment's pods"
    );
    for (m, other) in workloads(&all).into_iter().filter(|(m, _)| m.file != SERVE_FILE) {
        assert!(
            !selects(&spec["selector"]["matchLabels"], pod_labels(other)),
            "{label}: also selects the pods of {}",
            m.label()
        );
    }
    let replicas = deployment.doc["spec"]["replicas"].as_u64().unwrap();
    let count = |field: &str| {
        spec.get(field).map(|v| {
            v.as_u64()
                .unwrap_or_else(|| panic!("{label}: {field} as a number of pods, got {v:?}"))
        })
    };
    let evictable = match (count("maxUnavailable"), count("minAvailable")) {
        (Some(max), None) => max,
        (None, Some(min)) => replicas.saturating_sub(min),
        other => panic!("{label}: one of maxUnavailable and minAvailable, got {other:?}"),
    };
    assert!(
        evictable >= 1,
        "{label}: no pod of {replicas} may ever be evicted: every node drain would hang"
    );
    assert!(
        evictable < replicas,
        "{label}: all {replicas} pods may be evicted at once"
    );
}

#[test]
fn the_key_api_trusts_x_forwarded_for_only_where_every_client_comes_through_a_proxy() {
    let all = manifests();
    let deployment = serve_document(&all, "Deployment");
    let label = deployment.label();
    let container = serve_container(deployment);
    let args = serve_args(container_cli(deployment, container), &label);
    if args.key_api.trust_forwarded_for {
        let service = serve_document(&all, "Service");
        let kind = service.doc["spec"]["type"].as_str().unwrap_or("ClusterIP");
        assert_eq!(
            kind, "ClusterIP",
            "{label} trusts X-Forwarded-For: its Service must be reachable only inside the cluster (through the ingress)"
        );
        for port in container["ports"].as_sequence().into_iter().flatten() {
            assert!(
                port.get("hostPort").is_none(),
                "{label} trusts X-Forwarded-For: a hostPort lets clients write it"
            );
        }
    }
    // The documented alternative (`# args: [...]`) parses, listens where
    // the args do, and is the other choice of --trust-forwarded-for.
    let env = pod_env(container, 0, None);
    let alternatives = commented_args(SERVE_FILE);
    assert!(
        !alternatives.is_empty(),
        "{SERVE_FILE}: documents the args for the other case, in a `# args: [...]` comment"
    );
    for alternative in alternatives {
        let mut argv = vec![BINARY.to_string()];
        argv.extend(alternative);
        let other = serve_args(parse_with_env(&argv, &env, SERVE_FILE), SERVE_FILE);
        assert_ne!(
            other.key_api.trust_forwarded_for, args.key_api.trust_forwarded_for,
            "{SERVE_FILE}: `# args:`"
        );
        assert_eq!(other.listen, args.listen, "{SERVE_FILE}: `# args:`");
    }

    let args = serve_args(unit_cli(SERVE_UNIT), SERVE_UNIT);
    if args.key_api.trust_forwarded_for {
        assert!(
            args.listen.ip().is_loopback(),
            "{SERVE_UNIT}: trusts X-Forwarded-For, so it must listen on loopback only (--listen {}), behind the proxy on the host",
            args.listen
        );
    }
    let readme = read("README.md");
    assert!(
        readme.contains("--trust-forwarded-for") && readme.contains("Ingress"),
        "deploy/README.md says when --trust-forwarded-for is needed"
    );
}

/// `GET path` over a fresh connection: the status and the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, &[], b"")
}

/// `method path` with `headers` and `body` over a fresh connection: the
/// status and the body.
fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: licensync\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The argv with `--listen` moved to `addr` (a free port of this machine
/// instead of the pod's own 8080).
fn listening_on(argv: &[String], addr: std::net::SocketAddr) -> Vec<String> {
    let mut out = Vec::new();
    let mut replaced = 0;
    let mut words = argv.iter();
    while let Some(word) = words.next() {
        if word == "--listen" {
            words.next().expect("--listen ADDR");
            out.extend(["--listen".to_string(), addr.to_string()]);
            replaced += 1;
        } else if word.starts_with("--listen=") {
            out.push(format!("--listen={addr}"));
            replaced += 1;
        } else {
            out.push(word.clone());
        }
    }
    assert_eq!(replaced, 1, "one --listen in {argv:?}");
    out
}

/// The Deployment's pod as the kubelet starts it, on this machine: the real
/// binary with the manifest's argv and env, the Secret's files (a new
/// signing key among them) where the volume's items put them, and a test
/// database. Its probes, asked on the port they name, answer 200; the key
/// it publishes is the Secret's; SIGTERM (a rollout, a drain) ends it with 0.
#[test]
fn the_key_api_pod_answers_its_probes_with_the_secrets_signing_key_and_stops_on_sigterm() {
    let all = manifests();
    let deployment = serve_document(&all, "Deployment");
    let label = deployment.label();
    let spec = deployment.workload_spec().unwrap();
    let container = serve_container(deployment);
    let env = pod_env(container, 0, None);
    let argv = pod_argv(deployment, container, &env);
    let listen = serve_args(container_cli(deployment, container), &label).listen;
    let (ready_path, port) = http_probe(container, "readinessProbe", &label);
    let (live_path, _) = http_probe(container, "livenessProbe", &label);
    assert_eq!(named_port(container, port), Some(listen.port()), "{label}");

    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let argv = listening_on(&argv, free);
    let pods = Deployment::with_stripe_api_key("rk_test_unused_by_serve");
    let mut cmd = pods.pod_command(None, pod_spec(spec), container, "serve-0", &argv, &env);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = |child: &mut std::process::Child| {
        let mut text = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
        }
        text
    };

    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{label}: serve exited {status} before it was ready:\n{}",
                stderr(&mut child)
            );
        }
        match http_get(free, ready_path) {
            Ok((200, _)) => break,
            Ok(_) | Err(_) if started.elapsed() < std::time::Duration::from_secs(60) => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => {
                child.kill().unwrap();
                panic!("{label}: readiness {ready_path}: {other:?}\n{}", stderr(&mut child));
            }
        }
    }
    let (status, _) = http_get(free, live_path).unwrap();
    assert_eq!(status, 200, "{label}: liveness {live_path}");
    let (status, body) = http_get(free, "/v1/keys").unwrap();
    assert_eq!(status, 200, "{body}");
    let keys: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        keys["keys"][0]["kid"], pods.signing_kid,
        "{label}: signs with the Secret's signing.key"
    );

    let pid = i32::try_from(child.id()).unwrap();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{label}: still running 30 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{label}: SIGTERM:\n{}", stderr(&mut child));
}

// ---------------------------------------------------------------------------
// The daemon with webhooks: daemon.yaml (Deployment, Service, Ingress)
// ---------------------------------------------------------------------------

const DAEMON_FILE: &str = "kubernetes/daemon.yaml";

/// Where Stripe posts its webhooks: the one path the daemon's Ingress
/// exposes.
const WEBHOOK_PATH: &str = "/v1/stripe/webhook";

fn daemon_args(cli: Cli, source: &str) -> licensync::cmd::daemon::DaemonArgs {
    match cli.command {
        Command::Daemon(args) => *args,
        other => panic!("{source}: expected `daemon`, got {other:?}"),
    }
}

/// The longest one Stripe request takes with every retry (each attempt up
/// to its timeout, each backoff up to its cap), as licensync's Stripe
/// client is configured: the least a run's page needs to finish after
/// SIGTERM.
fn a_stripe_request_with_every_retry() -> u64 {
    let key = licensync::stripe::ApiKey::parse("rk_test_grace").unwrap();
    let config = licensync::stripe::StripeConfig::new(key);
    let attempts = u64::from(config.max_retries) + 1;
    attempts * config.timeout.as_secs() + u64::from(config.max_retries) * config.max_backoff.as_secs()
}

/// The seconds a container's `preStop` sleeps before SIGTERM.
fn pre_stop_pause(container: &Value) -> u64 {
    let command = strings(&container["lifecycle"]["preStop"]["exec"]["command"]);
    match command.as_slice() {
        [] => 0,
        [sleep, seconds] if sleep.ends_with("/sleep") => seconds.parse().expect("sleep SECONDS"),
        other => panic!("preStop: only `sleep N` is modelled, got {other:?}"),
    }
}

#[test]
fn the_daemon_deployment_runs_one_daemon_at_a_time_listening_on_its_named_http_port() {
    let all = manifests();
    let deployment = document(&all, DAEMON_FILE, "Deployment");
    let label = deployment.label();
    let spec = &deployment.doc["spec"];
    // Two daemons on the same accounts only contend for the lock and split
    // the webhooks, during a rollout too.
    assert_eq!(spec["replicas"].as_u64(), Some(1), "{label}: replicas");
    assert_eq!(
        spec["strategy"]["type"].as_str(),
        Some("Recreate"),
        "{label}: strategy: a rollout must stop the old daemon before it starts the new one"
    );
    assert!(
        spec["selector"].get("matchExpressions").is_none(),
        "{label}: matchLabels only (the tests read those)"
    );
    assert!(
        selects(&spec["selector"]["matchLabels"], pod_labels(spec)),
        "{label}: spec.selector must select the template's labels (the API server refuses it otherwise)"
    );
    let container = serve_container(deployment);
    let cli = container_cli(deployment, container);
    assert!(
        webhook_secret_path(&cli).is_some(),
        "{label}: reads the webhook secret ({}): without it the webhook path is off",
        webhook_secret().file_var
    );
    let args = daemon_args(cli, &label);
    cron::Schedule::from_str(args.schedule.expression())
        .unwrap_or_else(|e| panic!("{label}: --schedule {:?}: {e}", args.schedule.expression()));
    let listen = args
        .listen
        .unwrap_or_else(|| panic!("{label}: --listen: the webhook path, /healthz and /metrics"));
    assert!(
        listen.ip().is_unspecified(),
        "{label}: --listen {listen}: a pod must listen on all its addresses, or no Service reaches it"
    );
    assert_eq!(
        named_port(container, "http"),
        Some(listen.port()),
        "{label}: the container port named http must be the port the daemon listens on"
    );
    // The documented alternative (a short schedule without webhooks) still
    // listens there: the probes need it.
    let env = pod_env(container, 0, None);
    let alternatives = commented_args(DAEMON_FILE);
    assert!(
        !alternatives.is_empty(),
        "{DAEMON_FILE}: documents the schedule without webhooks, in a `# args: [...]` comment"
    );
    for alternative in alternatives {
        let mut argv = vec![BINARY.to_string()];
        argv.extend(alternative);
        let other = daemon_args(parse_with_env(&argv, &env, DAEMON_FILE), DAEMON_FILE);
        cron::Schedule::from_str(other.schedule.expression())
            .unwrap_or_else(|e| panic!("{DAEMON_FILE}: `# args:` --schedule: {e}"));
        assert_eq!(other.listen, Some(listen), "{DAEMON_FILE}: `# args:` --listen");
    }

    let cronjob = all
        .iter()
        .find(|m| m.kind() == "CronJob" && m.name() == "licensync")
        .expect("the CronJob");
    let cron_container = &containers(cronjob.job_spec().unwrap())[0];
    assert_eq!(container["image"], cron_container["image"], "{label}: image");
    let pod = pod_spec(spec);
    assert_eq!(
        pod["automountServiceAccountToken"].as_bool(),
        Some(false),
        "{label}: licensync never talks to the Kubernetes API"
    );
    // SIGTERM lets the page in progress finish: the preStop pause counts
    // against the grace period too.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("{label}: terminationGracePeriodSeconds (the default 30 s cuts a page short)"));
    let needed = pre_stop_pause(container) + a_stripe_request_with_every_retry();
    assert!(
        grace >= needed,
        "{label}: terminationGracePeriodSeconds {grace}: the preStop pause and one Stripe request with its retries take up to {needed} s"
    );
}

#[test]
fn the_daemon_is_ready_while_its_runs_succeed_and_alive_without_asking_them() {
    let all = manifests();
    let deployment = document(&all, DAEMON_FILE, "Deployment");
    let label = deployment.label();
    let container = serve_container(deployment);
    // /healthz is 503 once runs fail for two periods: Stripe or the
    // database down, or a first full scan longer than that. A restart fixes
    // none of them and cuts the page in progress short.
    assert_ready_on_healthz_alive_elsewhere(container, &label, "the runs succeeding (and the key API's database)");
}

#[test]
fn the_daemon_service_sends_its_http_port_to_the_daemon_pod_and_to_no_other() {
    let all = manifests();
    let deployment = document(&all, DAEMON_FILE, "Deployment");
    let service = document(&all, DAEMON_FILE, "Service");
    let label = service.label();
    let kind = service.doc["spec"]["type"].as_str().unwrap_or("ClusterIP");
    assert_eq!(
        kind, "ClusterIP",
        "{label}: /healthz and /metrics stay inside the cluster; Stripe comes in through the Ingress"
    );
    let pods = pod_labels(&deployment.doc["spec"]);
    let selector = &service.doc["spec"]["selector"];
    assert!(
        selects(selector, pods),
        "{label}: selector {selector:?} must select the daemon's pods {pods:?}"
    );
    for (m, spec) in workloads(&all).into_iter().filter(|(m, _)| m.file != DAEMON_FILE) {
        assert!(
            !selects(selector, pod_labels(spec)),
            "{label}: selector {selector:?} also selects the pods of {}: webhooks would reach them",
            m.label()
        );
    }
    let container = serve_container(deployment);
    let ports = service.doc["spec"]["ports"].as_sequence().expect("spec.ports");
    assert!(!ports.is_empty(), "{label}: ports");
    for port in ports {
        let target = port["targetPort"].as_str().unwrap_or_else(|| {
            panic!(
                "{label}: targetPort names the container's port (http), got {:?}",
                port["targetPort"]
            )
        });
        assert_eq!(target, "http", "{label}: targetPort");
        assert!(
            named_port(container, target).is_some(),
            "{label}: no container port {target}"
        );
        assert!(
            port.get("nodePort").is_none(),
            "{label}: a nodePort exposes /healthz and /metrics outside the cluster"
        );
    }
}

/// Every Ingress that routes to the daemon's Service exposes the webhook
/// path alone, exactly, over TLS: /healthz and /metrics (and a key API the
/// daemon may serve) are never on the internet, and Stripe's live mode
/// posts to HTTPS endpoints only.
#[test]
fn the_daemon_ingress_routes_only_the_webhook_path_to_the_daemon_service_over_tls() {
    let all = manifests();
    let service = document(&all, DAEMON_FILE, "Service");
    let service_ports = service.doc["spec"]["ports"].as_sequence().expect("spec.ports");
    let ingress = document(&all, DAEMON_FILE, "Ingress");
    let mut routed = 0;
    for m in all.iter().filter(|m| m.kind() == "Ingress") {
        let label = m.label();
        let spec = &m.doc["spec"];
        let routes_here = |backend: &Value| backend["service"]["name"].as_str() == Some(&service.name());
        assert!(
            spec.get("defaultBackend").is_none_or(|b| !routes_here(b)),
            "{label}: a defaultBackend sends every path to the daemon"
        );
        let rules = spec["rules"].as_sequence().map(Vec::as_slice).unwrap_or(&[]);
        let mut routes_to_the_daemon = false;
        for rule in rules {
            for path in rule["http"]["paths"].as_sequence().into_iter().flatten() {
                let backend = &path["backend"];
                if !routes_here(backend) {
                    continue;
                }
                routes_to_the_daemon = true;
                assert_eq!(
                    path["path"].as_str(),
                    Some(WEBHOOK_PATH),
                    "{label}: routes {:?} to the daemon; only {WEBHOOK_PATH}",
                    path["path"]
                );
                assert_eq!(
                    path["pathType"].as_str(),
                    Some("Exact"),
                    "{label}: {WEBHOOK_PATH} must be matched exactly (Prefix or ImplementationSpecific may match more)"
                );
                let port = &backend["service"]["port"];
                let to_a_service_port = service_ports
                    .iter()
                    .any(|p| match (port.get("name"), port.get("number")) {
                        (Some(name), None) => p["name"] == *name,
                        (None, Some(number)) => p["port"] == *number,
                        _ => false,
                    });
                assert!(
                    to_a_service_port,
                    "{label}: backend port {port:?} is no port of {}",
                    service.label()
                );
                let host = rule["host"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{label}: a rule to the daemon names its host (the one in TLS)"));
                let covered = spec["tls"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter(|tls| tls["secretName"].as_str().is_some_and(|s| !s.is_empty()))
                    .any(|tls| strings(&tls["hosts"]).iter().any(|h| h == host));
                assert!(
                    covered,
                    "{label}: {host} must be in spec.tls, with a certificate (secretName): Stripe posts live-mode webhooks to HTTPS only"
                );
                routed += 1;
            }
        }
        if m.file == DAEMON_FILE {
            assert!(routes_to_the_daemon, "{label}: routes nothing to {}", service.label());
        }
    }
    assert!(routed >= 1, "{}: routes {WEBHOOK_PATH}", ingress.label());
}

/// The Deployment's pod as the kubelet starts it, on this machine: the real
/// binary with the manifest's argv and env, the Secret's files where the
/// volume's items put them (its webhook-secret among them), a test database
/// and the fake Stripe with a shop. Its probes, asked on the port they name,
/// answer 200; a delivery signed with the Secret's webhook secret wakes a
/// run that licenses the shop's purchases and mails them, one signed
/// otherwise is refused; SIGTERM (a rollout, a drain) ends it with 0.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_pod_answers_its_probes_and_webhooks_signed_with_the_secrets_webhook_secret() {
    let all = manifests();
    let deployment = document(&all, DAEMON_FILE, "Deployment");
    let label = deployment.label();
    let spec = deployment.workload_spec().unwrap();
    let container = serve_container(deployment);
    let env = pod_env(container, 0, None);
    let argv = pod_argv(deployment, container, &env);
    let (ready_path, _) = http_probe(container, "readinessProbe", &label);
    let (live_path, _) = http_probe(container, "livenessProbe", &label);

    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let argv = listening_on(&argv, free);
    let fake = fake_stripe::FakeStripe::start().await;
    fake.set_now(chrono::Utc::now().timestamp());
    open_shop(&fake, "buyer@daemon.test");
    let pods = Deployment::new(&fake);
    let mut cmd = pods.pod_command(Some(&fake), pod_spec(spec), container, "daemon-0", &argv, &env);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Drained as it comes: a run logs, and a full pipe would stop the daemon.
    let pipe = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::BufReader::new(pipe), &mut text);
        text
    });
    let fail = |child: &mut std::process::Child, message: String| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{label}: {message}");
    };

    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{label}: the daemon exited {status} before it was ready:\n{}",
                log.join().unwrap()
            );
        }
        match http_get(free, ready_path) {
            Ok((200, _)) => break,
            Ok(_) | Err(_) if started.elapsed() < std::time::Duration::from_secs(60) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => fail(&mut child, format!("readiness {ready_path}: {other:?}")),
        }
    }
    let (status, _) = http_get(free, live_path).unwrap();
    if status != 200 {
        fail(&mut child, format!("liveness {live_path}: {status}"));
    }

    // A delivery for the key's own account, of an event type a run reads.
    let body = br#"{"id":"evt_deploy_1","object":"event","type":"checkout.session.completed"}"#;
    let now = chrono::Utc::now().timestamp();
    let post = |secret: &str| {
        let signature = fake_stripe::sign_webhook(secret, body, now);
        let headers = [
            ("Content-Type", "application/json"),
            ("Stripe-Signature", signature.as_str()),
        ];
        http_request(free, "POST", WEBHOOK_PATH, &headers, body).unwrap()
    };
    let (status, answer) = post(TEST_WEBHOOK_SECRET);
    if status != 200 || !answer.contains(r#""woke":true"#) {
        fail(
            &mut child,
            format!("a delivery signed with the Secret's {WEBHOOK_SECRET}: {status} {answer}"),
        );
    }
    let (status, answer) = post("whsec_not_the_secrets_own");
    if status != 400 {
        fail(
            &mut child,
            format!("a delivery signed with another secret must be refused: {status} {answer}"),
        );
    }
    // The run it woke, with the Secret's Stripe key, database and mail.
    let woke = std::time::Instant::now();
    loop {
        let (_, metrics) = http_get(free, "/metrics").unwrap();
        if metrics.contains("licensync_last_run_success 1") {
            break;
        }
        if metrics.contains("licensync_last_run_success 0") || woke.elapsed() > std::time::Duration::from_secs(60) {
            fail(
                &mut child,
                format!("the run the webhook woke did not succeed:\n{metrics}"),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if pods.emails() != 2 {
        fail(
            &mut child,
            format!("the woken run mailed {} licenses, not the shop's 2", pods.emails()),
        );
    }

    let pid = i32::try_from(child.id()).unwrap();
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            fail(&mut child, "still running 60 s after SIGTERM".to_string());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{label}: SIGTERM:\n{log}");
}

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

/// A unit's `Key=value` entries, in order (keys may repeat), named for
/// assertion messages.
struct Unit {
    source: String,
    entries: Vec<(String, String)>,
}

/// A directive commented out systemd's way, `#Key=value` with no space
/// after the `#` (the comments of the units are `# ...`): an alternative
/// the unit offers, such as the daemon's webhook lines.
fn commented_directive(line: &str) -> Option<&str> {
    let body = line.trim().strip_prefix('#')?;
    let (key, _) = body.split_once('=')?;
    let is_key = key.starts_with(|c: char| c.is_ascii_uppercase()) && key.chars().all(|c| c.is_ascii_alphanumeric());
    is_key.then_some(body)
}

impl Unit {
    /// The unit as systemd reads it.
    fn read(file: &str) -> Unit {
        Unit::parse(file, file, false)
    }

    /// The unit with its commented directives uncommented in place, as its
    /// comments tell the operator to (`None` when it has none). A commented
    /// `ExecStart=` takes the place of the active one: a service that is not
    /// `Type=oneshot` has exactly one.
    fn with_commented_directives(file: &str) -> Option<Unit> {
        let text = read(file);
        text.lines().any(|l| commented_directive(l).is_some()).then(|| {
            let source = format!("{file} (its commented #Key= lines uncommented)");
            Unit::parse(file, &source, true)
        })
    }

    fn parse(file: &str, source: &str, uncomment: bool) -> Unit {
        // Each entry with whether it was commented out.
        let mut entries: Vec<(String, String, bool)> = Vec::new();
        for line in read(file).lines() {
            let (line, commented) = match commented_directive(line) {
                Some(directive) if uncomment => (directive, true),
                _ => (line.trim(), false),
            };
            if line.is_empty() || line.starts_with(['#', ';', '[']) {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{source}: not a Key=value line: {line}"));
            entries.push((k.trim().to_string(), v.trim().to_string(), commented));
        }
        let replaces_exec_start = entries.iter().any(|(k, _, commented)| *commented && k == "ExecStart");
        Unit {
            source: source.to_string(),
            entries: entries
                .into_iter()
                .filter(|(k, _, commented)| !(replaces_exec_start && !commented && k == "ExecStart"))
                .map(|(k, v, _)| (k, v))
                .collect(),
        }
    }

    fn values(&self, key: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn value(&self, key: &str) -> String {
        let values = self.values(key);
        assert_eq!(values.len(), 1, "{}: exactly one {key}=, got {values:?}", self.source);
        values.into_iter().next().unwrap()
    }

    fn exec_start_argv(&self) -> Vec<String> {
        let file = &self.source;
        let line = self.value("ExecStart");
        let argv = shlex::split(&line).unwrap_or_else(|| panic!("{file}: ExecStart quoting: {line}"));
        // Prefixes like `-` or `+` would change what a failure means; none are expected.
        assert_eq!(argv.first().map(String::as_str), Some(BINARY), "{file}: ExecStart");
        argv
    }

    /// The `Environment=` assignments (a line may hold several, quoted).
    fn environment(&self) -> Vec<(String, String)> {
        let file = &self.source;
        self.values("Environment")
            .iter()
            .flat_map(|line| shlex::split(line).unwrap_or_else(|| panic!("{file}: Environment= quoting: {line}")))
            .map(|assignment| {
                let (name, value) = assignment
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{file}: Environment={assignment} is not NAME=value"));
                (name.to_string(), value.to_string())
            })
            .collect()
    }

    /// ExecStart as licensync parses it with the unit's Environment= (not
    /// its EnvironmentFile=, the operator's).
    fn cli(&self) -> Cli {
        parse_with_env(&self.exec_start_argv(), &self.environment(), &self.source)
    }
}

/// Every service unit as systemd reads it, and as its commented
/// alternatives make it.
fn service_units_and_their_alternatives() -> Vec<Unit> {
    SERVICE_UNITS
        .iter()
        .flat_map(|file| std::iter::once(Unit::read(file)).chain(Unit::with_commented_directives(file)))
        .collect()
}

/// `Key=value` lines of a unit file, in order (keys may repeat).
fn unit_entries(file: &str) -> Vec<(String, String)> {
    Unit::read(file).entries
}

fn unit_values(file: &str, key: &str) -> Vec<String> {
    Unit::read(file).values(key)
}

fn unit_value(file: &str, key: &str) -> String {
    Unit::read(file).value(key)
}

fn exec_start_argv(file: &str) -> Vec<String> {
    Unit::read(file).exec_start_argv()
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
    for file in SERVICE_UNITS {
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
    cron::Schedule::from_str(args.schedule.expression())
        .unwrap_or_else(|e| panic!("{file}: --schedule {:?}: {e}", args.schedule.expression()));
    assert!(
        unit_values(file, "RestartPreventExitStatus")
            .iter()
            .any(|v| v.split_whitespace().any(|c| c == EXIT_USAGE.to_string())),
        "{file}: a configuration error (2) must not be restarted forever"
    );
}

/// The daemon unit's commented `#Key=value` lines turn Stripe's webhooks
/// on: uncommented, its daemon listens on loopback only (for the TLS proxy
/// on the host; /healthz and /metrics stay local), on the same schedule, and
/// reads the webhook secret from its credential (which
/// `the_systemd_units_load_the_secrets_as_credentials_...` holds to the
/// other secrets' rules).
#[test]
fn the_daemon_units_commented_webhook_lines_listen_on_loopback_and_read_the_secret_as_a_credential() {
    let file = "systemd/licensync-daemon.service";
    let unit = Unit::with_commented_directives(file)
        .unwrap_or_else(|| panic!("{file}: shows how to turn webhooks on, in commented #Key=value lines"));
    let source = unit.source.clone();
    let cli = unit.cli();
    let path = webhook_secret_path(&cli)
        .unwrap_or_else(|| panic!("{source}: reads no webhook secret ({})", webhook_secret().file_var))
        .to_path_buf();
    assert_eq!(
        path,
        Path::new("%d").join(WEBHOOK_SECRET),
        "{source}: the webhook secret's credential"
    );
    let args = daemon_args(cli, &source);
    let listen = args
        .listen
        .unwrap_or_else(|| panic!("{source}: --listen, for the webhook path"));
    assert!(
        listen.ip().is_loopback(),
        "{source}: --listen {listen}: on loopback only, behind the reverse proxy that terminates TLS"
    );
    let active = daemon_args(unit_cli(file), file);
    assert_eq!(
        args.schedule.expression(),
        active.schedule.expression(),
        "{source}: the webhook lines keep the unit's schedule (it stays the backstop)"
    );
    // Everything else is the unit as it is: the hardening, the restarts.
    for (key, value) in unit_entries(file) {
        if key != "ExecStart" {
            assert!(unit.values(&key).contains(&value), "{source}: lost {key}={value}");
        }
    }
}

const SERVE_UNIT: &str = "systemd/licensync-serve.service";

#[test]
fn the_key_api_unit_runs_serve_restarts_it_and_keeps_no_state_beside_the_batch_runs() {
    let file = SERVE_UNIT;
    assert_eq!(
        unit_value(file, "Type"),
        "exec",
        "{file}: a long-running process, started once exec'd"
    );
    let args = serve_args(unit_cli(file), file);
    assert!(
        signing_key_path(&unit_cli(file)).is_some_and(|p| p == args.signing_key_file.as_path()),
        "{file}"
    );
    // serve exits 2 when the database does not answer at start (at boot,
    // before a remote PostgreSQL is up): a restart fixes that one.
    let restart = unit_value(file, "Restart");
    assert!(
        matches!(restart.as_str(), "on-failure" | "always"),
        "{file}: Restart={restart}: the key API must come back by itself"
    );
    assert!(
        !unit_values(file, "RestartPreventExitStatus")
            .iter()
            .any(|v| v.split_whitespace().any(|c| c == EXIT_USAGE.to_string())),
        "{file}: exit 2 includes a database that did not answer at start: restart it"
    );
    assert!(!unit_value(file, "TimeoutStopSec").is_empty(), "{file}: TimeoutStopSec");
    // DynamicUser= hands a StateDirectory= to the unit's own user at every
    // start: shared with licensync.service's, the two would take it from
    // each other (and with it the embedded database).
    let batch: BTreeSet<String> = ["systemd/licensync.service", "systemd/licensync-daemon.service"]
        .iter()
        .flat_map(|f| unit_values(f, "StateDirectory"))
        .collect();
    for dir in unit_values(file, "StateDirectory") {
        assert!(
            !batch.contains(&dir),
            "{file}: StateDirectory={dir} is the batch units'"
        );
    }
}

/// The sandboxing directives of licensync.service, by family.
const HARDENING_PREFIXES: [&str; 12] = [
    "DynamicUser",
    "UMask",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "Protect",
    "Private",
    "Restrict",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "SystemCallFilter",
];

#[test]
fn every_service_unit_is_hardened_as_the_reconcile_unit_is() {
    let reference = "systemd/licensync.service";
    let hardening: BTreeSet<String> = unit_entries(reference)
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| HARDENING_PREFIXES.iter().any(|p| key.starts_with(p)))
        .collect();
    assert!(hardening.len() >= 20, "{reference}: {hardening:?}");
    for file in SERVICE_UNITS {
        for key in &hardening {
            assert_eq!(
                unit_values(file, key),
                unit_values(reference, key),
                "{file}: {key}= as in {reference}"
            );
        }
    }
}

const SERVICE_UNITS: [&str; 3] = [
    "systemd/licensync.service",
    "systemd/licensync-daemon.service",
    SERVE_UNIT,
];

/// A unit's ExecStart as licensync parses it with the unit's Environment=
/// (not its EnvironmentFile=, the operator's).
fn unit_cli(file: &str) -> Cli {
    Unit::read(file).cli()
}

#[test]
fn the_systemd_units_load_the_secrets_as_credentials_and_name_them_by_their_file_form() {
    let secrets = secrets();
    let every_secret = every_secret();
    let units = service_units_and_their_alternatives();
    assert!(
        units.len() > SERVICE_UNITS.len(),
        "the daemon unit's commented webhook lines are checked too"
    );
    for unit in units {
        let file = unit.source.as_str();
        let environment = unit.environment();
        for (name, _) in &environment {
            if let Some(secret) = every_secret.iter().find(|s| s.var == *name) {
                panic!(
                    "{file}: Environment= sets {name}, the secret itself; use LoadCredential= and {}=%d/...",
                    secret.file_var
                );
            }
        }
        for value in unit.values("PassEnvironment") {
            for name in value.split_whitespace() {
                assert!(
                    !every_secret.iter().any(|s| s.var == name),
                    "{file}: PassEnvironment={name} passes a secret through the environment"
                );
            }
        }
        assert!(
            unit.values("SetCredential").is_empty(),
            "{file}: SetCredential= writes the secret into the unit (readable by every user over D-Bus); use LoadCredential="
        );
        let credentials: Vec<(String, String)> = ["LoadCredential", "LoadCredentialEncrypted"]
            .iter()
            .flat_map(|key| unit.values(key))
            .map(|value| {
                let (id, path) = value
                    .split_once(':')
                    .unwrap_or_else(|| panic!("{file}: LoadCredential={value} is not ID:PATH"));
                (id.to_string(), path.to_string())
            })
            .collect();
        let loads = |id: &str| {
            let (_, source) = credentials
                .iter()
                .find(|(cid, _)| cid == id)
                .unwrap_or_else(|| panic!("{file}: %d/{id} without a LoadCredential={id}:<path>"));
            assert!(
                source.starts_with("/etc/licensync/"),
                "{file}: LoadCredential={id}:{source} must load a root-only file under /etc/licensync/"
            );
        };
        let cli = unit.cli();
        let mut used = BTreeSet::new();
        for var in secrets_needed(&cli) {
            let secret = secret_by_var(&secrets, var);
            let values: Vec<&String> = environment
                .iter()
                .filter(|(name, _)| *name == secret.file_var)
                .map(|(_, value)| value)
                .collect();
            assert_eq!(
                values.len(),
                1,
                "{file}: needs {var}: one Environment={}=%d/<credential>, got {values:?}",
                secret.file_var
            );
            let id = values[0].strip_prefix("%d/").unwrap_or_else(|| {
                panic!(
                    "{file}: {}={} must name a file in the credentials directory (%d/...)",
                    secret.file_var, values[0]
                )
            });
            assert_eq!(
                id, secret.name,
                "{file}: {} names the credential {id}, not {}",
                secret.file_var, secret.name
            );
            loads(id);
            used.insert(id.to_string());
        }
        // The files that exist only as files: the signing key (serve's, or
        // a daemon's serving the key API) and the daemon's webhook secret,
        // whether their variable or their flag names them.
        let files = [
            (signing_key_path(&cli), SIGNING_KEY, signing_key_file_var()),
            (webhook_secret_path(&cli), WEBHOOK_SECRET, webhook_secret().file_var),
        ];
        for (path, expected, var) in files {
            let Some(path) = path else {
                continue;
            };
            let path = path.to_str().unwrap();
            let id = path
                .strip_prefix("%d/")
                .unwrap_or_else(|| panic!("{file}: the file {path} ({var} or its flag) must be a credential (%d/...)"));
            assert_eq!(id, expected, "{file}: {var}'s credential");
            loads(id);
            used.insert(id.to_string());
        }
        // Least privilege: the key API has no use for the Stripe key.
        let loaded: BTreeSet<String> = credentials.into_iter().map(|(id, _)| id).collect();
        assert_eq!(loaded, used, "{file}: loads only the credentials its command reads");
    }
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
            cron::Schedule::from_str(args.schedule.expression())
                .unwrap_or_else(|e| panic!("crontab: daemon --schedule {:?}: {e}", args.schedule.expression()));
            saw_daemon = true;
        }
    }
    assert!(saw_daemon, "the crontab documents the daemon alternative");
}

/// The crontab's `NAME=value` lines, which cron puts in every entry's environment.
fn crontab_variables() -> Vec<(String, String)> {
    read("crontab")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.split_once('=')?;
            let name = name.trim();
            let is_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            is_name.then(|| (name.to_string(), value.trim().to_string()))
        })
        .collect()
}

#[test]
fn the_crontab_reads_the_secrets_from_files_it_names() {
    let secrets = secrets();
    let variables = crontab_variables();
    for (name, _) in &variables {
        assert!(
            !every_secret().iter().any(|s| s.var == *name),
            "crontab: sets {name}, the secret itself; set its _FILE form to a file readable only by root and licensync"
        );
    }
    for entry in crontab_entries() {
        assert_no_secret_value_in_command(&entry.command, "crontab");
        let cli = parse(&licensync_words_in_shell(&entry.command, "crontab"), "crontab");
        for var in secrets_needed(&cli) {
            let secret = secret_by_var(&secrets, var);
            let (_, path) = variables
                .iter()
                .find(|(name, _)| *name == secret.file_var)
                .unwrap_or_else(|| {
                    panic!(
                        "crontab: `{}` needs {var}: set {}=/etc/licensync/...",
                        entry.command, secret.file_var
                    )
                });
            assert!(
                path.starts_with("/etc/licensync/"),
                "crontab: {}={path} must be a file under /etc/licensync/",
                secret.file_var
            );
        }
    }
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

/// The settings clap hides the values of: the secrets, licensync's and its
/// commands'.
fn secret_setting_names() -> Vec<String> {
    let names: Vec<String> = every_secret().into_iter().map(|s| s.var).collect();
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
    for (m, spec) in workloads(&all) {
        for container in containers(spec) {
            for env in container["env"].as_sequence().into_iter().flatten() {
                // JOB_COMPLETION_INDEX, defined for `--shard $(JOB_COMPLETION_INDEX)/N`.
                if is_expanded_into_args(container, env) {
                    continue;
                }
                assert_known(env["name"].as_str().unwrap(), &m.label(), &known);
                checked += 1;
            }
        }
    }
    for unit in service_units_and_their_alternatives() {
        for (name, _) in unit.environment() {
            assert_known(&name, &unit.source, &known);
            checked += 1;
        }
    }
    for (name, _) in crontab_variables() {
        if !matches!(name.as_str(), "SHELL" | "HOME" | "PATH" | "MAILTO") {
            assert_known(&name, "crontab", &known);
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
fn the_env_file_example_holds_no_secret_and_no_secret_file_path() {
    let secrets = every_secret();
    // Commented lines too: an example `# STRIPE_API_KEY=...` invites the mistake.
    for line in read("licensync.env.example").lines() {
        let body = line.trim().trim_start_matches('#').trim();
        let Some((name, _)) = body.split_once('=') else {
            continue;
        };
        for secret in &secrets {
            assert_ne!(
                name, secret.var,
                "licensync.env.example: {name} is a secret; it belongs in its own file, read through {}",
                secret.file_var
            );
            // EnvironmentFile= overrides the units' Environment=%d/... paths.
            assert_ne!(
                name, secret.file_var,
                "licensync.env.example: {name} is set by the systemd units (credentials) and the crontab; \
                 the env file would override it"
            );
        }
        assert_ne!(
            name,
            signing_key_file_var(),
            "licensync.env.example: {name} is set by licensync-serve.service (a credential); \
             the env file would override it"
        );
    }
    let settings: Vec<(String, String)> = read("licensync.env.example")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect();
    assert!(
        settings.iter().any(|(k, _)| k == "LICENSYNC_MAIL_FROM"),
        "licensync.env.example: LICENSYNC_MAIL_FROM"
    );
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

/// The events the README tells the operator to subscribe the webhook
/// endpoint to: its one code block of event types, which must be the types
/// a run reads. One missing would never wake a run (the schedule would
/// catch up); one extra would only be ignored, at the cost of a delivery.
#[test]
fn the_readme_subscribes_the_webhook_endpoint_to_every_event_type_a_run_reads() {
    let is_event_type = |word: &str| {
        word.contains('.')
            && word
                .split('.')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    };
    let mut blocks: Vec<Vec<String>> = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in read("README.md").lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(Vec::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.extend(line.split([',', ' ']).filter(|w| !w.is_empty()).map(str::to_string));
        }
    }
    let lists: Vec<&Vec<String>> = blocks
        .iter()
        .filter(|words| !words.is_empty() && words.iter().all(|w| is_event_type(w)))
        .collect();
    assert_eq!(
        lists.len(),
        1,
        "deploy/README.md: one code block lists the Stripe events (comma-separated event types)"
    );
    let listed: BTreeSet<&str> = lists[0].iter().map(String::as_str).collect();
    assert_eq!(listed.len(), lists[0].len(), "deploy/README.md: an event listed twice");
    let read_by_a_run: BTreeSet<&str> = licensync::stripe::RELEVANT_EVENT_TYPES.into_iter().collect();
    assert_eq!(
        listed, read_by_a_run,
        "deploy/README.md: the webhook endpoint's events must be those a run reads"
    );
}

// ---------------------------------------------------------------------------
// Secrets on every command line the deploy files run or show
// ---------------------------------------------------------------------------

/// Every file under deploy/ but the README, relative to deploy/.
fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, into: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())) {
            let entry = entry.unwrap();
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &format!("{name}/"), into);
            } else if name != "README.md" {
                into.push(name);
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy_path(""), "", &mut files);
    files.sort();
    files
}

/// Joins `\`-continued lines.
fn join_continuations(lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in lines {
        match line.trim_end().strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(&line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        joined.push(current);
    }
    joined
}

/// The command lines the deploy files run or show, `(source, line)`, with
/// continuation lines joined: the README's code blocks; in the other files
/// every line that is not a comment, and the example commands in comments
/// (indented: `#   kubectl ...`).
fn command_lines() -> Vec<(String, String)> {
    let mut commands = Vec::new();
    let mut in_code = false;
    let mut readme = Vec::new();
    for line in read("README.md").lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if in_code {
            readme.push(line.trim().to_string());
        }
    }
    commands.extend(
        join_continuations(readme)
            .into_iter()
            .map(|c| ("README.md".to_string(), c)),
    );
    for file in deploy_files() {
        let mut lines = Vec::new();
        for line in read(&file).lines() {
            let trimmed = line.trim();
            match trimmed.strip_prefix('#') {
                Some(body) if body.starts_with("   ") => lines.push(body.trim().to_string()),
                Some(_) => {}
                None => lines.push(trimmed.to_string()),
            }
        }
        commands.extend(join_continuations(lines).into_iter().map(|c| (file.clone(), c)));
    }
    commands
}

/// The values of an option in a split command line: `-e V`, `--env V`, `--env=V`.
fn option_values(words: &[String], names: &[&str]) -> Vec<String> {
    let mut values = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        if names.contains(&word.as_str()) {
            values.extend(words.get(i + 1).cloned());
            i += 2;
            continue;
        }
        for name in names.iter().filter(|n| n.starts_with("--")) {
            if let Some(value) = word.strip_prefix(&format!("{name}=")) {
                values.push(value.to_string());
            }
        }
        i += 1;
    }
    values
}

#[test]
fn no_command_line_in_the_deploy_files_or_the_readme_passes_a_secret_value() {
    let commands = command_lines();
    assert!(
        commands.len() > 100,
        "only {} command lines found: is the parsing broken?",
        commands.len()
    );
    for (source, command) in &commands {
        assert_no_secret_value_in_command(command, source);
    }
}

#[test]
fn every_docker_run_shown_mounts_the_secrets_read_only_and_names_them_with_file_variables() {
    let secrets = secrets();
    let mut runs = 0;
    for (source, command) in command_lines() {
        if !command.contains("docker run") {
            continue;
        }
        let words = shlex::split(&command).unwrap_or_else(|| panic!("{source}: quoting: {command}"));
        let env = option_values(&words, &["-e", "--env"]);
        let volumes = option_values(&words, &["-v", "--volume"]);
        let mounts = option_values(&words, &["--mount"]);
        for secret in &secrets {
            let path = env
                .iter()
                .find_map(|e| e.strip_prefix(&format!("{}=", secret.file_var)))
                .unwrap_or_else(|| {
                    panic!(
                        "{source}: `{command}` does not set -e {}=<mounted file>",
                        secret.file_var
                    )
                });
            let by_volume = volumes.iter().any(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                parts.len() == 3 && parts[1] == path && parts[2].split(',').any(|o| o == "ro")
            });
            let by_mount = mounts.iter().any(|m| {
                let fields: Vec<&str> = m.split(',').collect();
                let target = fields.iter().any(|f| {
                    ["target", "dst", "destination"]
                        .iter()
                        .any(|k| f.strip_prefix(&format!("{k}=")) == Some(path))
                });
                target && fields.iter().any(|f| matches!(*f, "readonly" | "ro" | "readonly=true"))
            });
            assert!(
                by_volume || by_mount,
                "{source}: {}={path} is not a file mounted read-only (-v SRC:{path}:ro) in `{command}`",
                secret.file_var
            );
        }
        runs += 1;
    }
    assert!(runs >= 2, "the README and the Dockerfile show `docker run`");
}

#[test]
fn every_systemd_run_shown_loads_the_secrets_as_credentials() {
    let secrets = secrets();
    let mut runs = 0;
    for (source, command) in command_lines() {
        if !command.contains("systemd-run") || !command.contains(BINARY) {
            continue;
        }
        let words = shlex::split(&command).unwrap_or_else(|| panic!("{source}: quoting: {command}"));
        // The specifier %d is not expanded in systemd-run's properties: the
        // credentials directory must be spelled out, hence a fixed unit name.
        let unit = option_values(&words, &["-u", "--unit"])
            .pop()
            .unwrap_or_else(|| panic!("{source}: `{command}` needs --unit=NAME to know its credentials directory"));
        let unit = if unit.contains('.') {
            unit
        } else {
            format!("{unit}.service")
        };
        let properties = option_values(&words, &["-p", "--property"]);
        let env = option_values(&words, &["-E", "--setenv"]);
        for secret in &secrets {
            let path = env
                .iter()
                .find_map(|e| e.strip_prefix(&format!("{}=", secret.file_var)))
                .unwrap_or_else(|| panic!("{source}: `{command}` does not set -E {}=...", secret.file_var));
            let id = path
                .strip_prefix(&format!("/run/credentials/{unit}/"))
                .unwrap_or_else(|| {
                    panic!(
                        "{source}: {}={path} is not in /run/credentials/{unit}/",
                        secret.file_var
                    )
                });
            assert!(
                properties.iter().any(|p| p
                    .strip_prefix(&format!("LoadCredential={id}:"))
                    .is_some_and(|src| src.starts_with('/'))),
                "{source}: {}={path} without -p LoadCredential={id}:/path in `{command}`",
                secret.file_var
            );
        }
        runs += 1;
    }
    assert!(runs >= 1, "the README shows a run by hand with systemd-run");
}

/// Readiness on `/healthz`, liveness on another path of the `http` port (a
/// restart fixes nothing `/healthz` reports), both with explicit timings,
/// and liveness giving up after readiness: a pod that stops answering leaves
/// the Service before it is restarted.
fn assert_ready_on_healthz_alive_elsewhere(container: &Value, label: &str, ready_means: &str) {
    let (ready_path, ready_port) = http_probe(container, "readinessProbe", label);
    assert_eq!(ready_path, "/healthz", "{label}: readiness is {ready_means}");
    assert_eq!(ready_port, "http", "{label}: readinessProbe port");
    let (live_path, live_port) = http_probe(container, "livenessProbe", label);
    assert_ne!(
        live_path, "/healthz",
        "{label}: livenessProbe must not depend on {ready_means}"
    );
    assert_eq!(live_port, "http", "{label}: livenessProbe port");
    let seconds = |probe: &str, field: &str, default: u64| container[probe][field].as_u64().unwrap_or(default);
    for probe in ["readinessProbe", "livenessProbe"] {
        for field in ["periodSeconds", "timeoutSeconds", "failureThreshold"] {
            assert!(
                container[probe][field].as_u64().is_some_and(|v| v > 0),
                "{label}: {probe}.{field} set, not left to the defaults"
            );
        }
        assert!(
            seconds(probe, "timeoutSeconds", 1) < seconds(probe, "periodSeconds", 10),
            "{label}: {probe} times out before the next probe"
        );
    }
    let window = |probe: &str| seconds(probe, "periodSeconds", 10) * seconds(probe, "failureThreshold", 3);
    assert!(
        window("livenessProbe") > window("readinessProbe"),
        "{label}: liveness gives up after readiness"
    );
}
