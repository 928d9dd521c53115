//! deploy/monitoring/ checked with the real tools: the alerting rules pass
//! `promtool check rules`, their unit tests pass `promtool test rules` and
//! exercise every alert firing and not firing, the dashboard is JSON whose
//! queries are PromQL promtool accepts, and every metric name (and label
//! value) the rules, their tests and the dashboard use is one that a real
//! licensync run writes to its metrics file. Without promtool these tests
//! fail, saying how to install it: they never pass by skipping.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{TestDb, licensync};
use fake_stripe::{CheckoutSpec, FakeStripe, Fault, FaultKind, Options, SubscriptionSpec};
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

const RULES: &str = "prometheus/licensync.rules.yml";
const RULE_TESTS: &str = "prometheus/licensync.rules.test.yml";
const DASHBOARD: &str = "grafana/licensync-dashboard.json";

/// Labels Prometheus adds when it scrapes node_exporter, not in the file.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

fn read(relative: &str) -> String {
    let path = monitoring().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs promtool in `dir`; a missing promtool fails the test with how to get it.
fn promtool<S: AsRef<OsStr>>(dir: &Path, args: &[S]) -> Output {
    promtool_reading(dir, args, None)
}

/// [`promtool`] with a file on its standard input.
fn promtool_reading<S: AsRef<OsStr>>(dir: &Path, args: &[S], stdin: Option<&Path>) -> Output {
    let mut cmd = Command::new("promtool");
    cmd.args(args).current_dir(dir);
    if let Some(path) = stdin {
        cmd.stdin(std::fs::File::open(path).unwrap());
    }
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed, so deploy/monitoring/ cannot be checked: install Debian's \
             `prometheus` package (`apt-get update && apt-get install -y --no-install-recommends \
             prometheus`), which ships promtool; CI installs it in .ci/run"
        ),
        Err(e) => panic!("running promtool: {e}"),
    }
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml(relative: &str) -> Yaml {
    serde_norway::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"))
}

/// Every rule of the rules file: (alert name or recording name, expr).
fn rules() -> Vec<(String, String)> {
    let doc = yaml(RULES);
    let mut rules = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("a named rule");
            let expr = rule["expr"].as_str().expect("an expr");
            rules.push((name.to_owned(), expr.to_owned()));
        }
    }
    rules
}

fn alerts() -> BTreeSet<String> {
    let doc = yaml(RULES);
    doc["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

/// Every PromQL query of the dashboard: the panels' targets (rows' nested
/// panels included) and the template variables' queries.
fn dashboard_queries(dash: &Json) -> Vec<(String, String)> {
    fn panels<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dash["panels"], &mut all);
    let mut queries = Vec::new();
    for p in all {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel `{title}` has no targets"));
        assert!(!targets.is_empty(), "panel `{title}` has no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of panel `{title}` has no PromQL `expr`: {t}"));
            queries.push((format!("panel `{title}`"), expr.to_owned()));
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .expect("a query variable has a query");
            queries.push((format!("variable `{}`", v["name"]), q.to_owned()));
        }
    }
    queries
}

/// A metric named in PromQL (or a series of the rule tests): its name and
/// the `label="value"` matchers written with it.
#[derive(Debug)]
struct Selector {
    name: String,
    labels: Vec<(String, String)>,
}

/// The `licensync_*` metrics named in a PromQL expression.
fn selectors(promql: &str) -> Vec<Selector> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = Vec::new();
    for (at, _) in promql.match_indices("licensync_") {
        if promql[..at].chars().next_back().is_some_and(ident) {
            continue; // inside another name
        }
        let tail = &promql[at..];
        let len = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
        let mut labels = Vec::new();
        if let Some(inside) = tail[len..].strip_prefix('{') {
            let inside = &inside[..inside.find('}').expect("a closed label matcher")];
            for matcher in inside.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                // Only exact matches name a value the file must hold.
                if let Some((key, value)) = matcher.split_once('=')
                    && !key.ends_with('!')
                    && !value.starts_with('~')
                {
                    labels.push((key.trim().to_owned(), value.trim().trim_matches('"').to_owned()));
                }
            }
        }
        found.push(Selector {
            name: tail[..len].to_owned(),
            labels,
        });
    }
    found
}

/// A metrics file: each metric name with the label sets of its samples.
type Written = BTreeMap<String, Vec<BTreeMap<String, String>>>;

fn parse_metrics(text: &str) -> Written {
    let mut written = Written::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, _value) = line.rsplit_once(' ').expect("`series value`");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label=value");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        written.entry(name.to_owned()).or_default().push(labels);
    }
    written
}

/// The first sample of `series` (`name` or `name{labels}` as written).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `where_` names a metric (and labels) that a real run does not write?
fn check_selector(where_: &str, s: &Selector, written: &Written, problems: &mut Vec<String>) {
    let Some(samples) = written.get(&s.name) else {
        problems.push(format!("{where_}: `{}` is not a metric licensync writes", s.name));
        return;
    };
    for (key, value) in s.labels.iter().filter(|(k, _)| !TARGET_LABELS.contains(&k.as_str())) {
        if !samples.iter().any(|labels| labels.get(key) == Some(value)) {
            problems.push(format!(
                "{where_}: licensync writes no `{}` sample with {key}=\"{value}\"",
                s.name
            ));
        }
    }
}

#[test]
fn the_alerting_rules_pass_promtool_check_rules() {
    let out = promtool(&monitoring(), &["check", "rules", RULES]);
    assert_success("promtool check rules", &out);
    let alerts = alerts();
    for wanted in [
        "LicensyncNoRecentSuccess",
        "LicensyncEmailsFailed",
        "LicensyncEmailStuckPending",
        "LicensyncGrantsSkipped",
        "LicensyncModeMismatchRefused",
        "LicensyncStripeRateLimited",
    ] {
        assert!(alerts.contains(wanted), "{wanted} is missing from {RULES}: {alerts:?}");
    }
}

#[test]
fn the_rule_unit_tests_pass_promtool_and_see_every_alert_fire_and_stay_quiet() {
    let out = promtool(
        &monitoring().join("prometheus"),
        &["test", "rules", "licensync.rules.test.yml"],
    );
    assert_success("promtool test rules", &out);

    let tests = yaml(RULE_TESTS);
    let files: Vec<&str> = tests["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(files, ["licensync.rules.yml"], "the unit tests test the shipped rules");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_sequence().expect("tests") {
        for t in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = t["alertname"].as_str().expect("alertname").to_owned();
            match t["exp_alerts"].as_sequence() {
                Some(expected) if !expected.is_empty() => fires.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    for alert in alerts() {
        assert!(fires.contains(&alert), "no unit test sees {alert} fire");
        assert!(quiet.contains(&alert), "no unit test sees {alert} stay quiet");
    }
}

#[test]
fn the_dashboard_is_json_whose_queries_are_promql_on_licensync_metrics() {
    let dash = dashboard();
    assert!(
        dash["title"].is_string() && dash["uid"].is_string(),
        "a dashboard has a title and a uid"
    );
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 10, "{queries:?}");
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_i64().expect("panel id")),
            "duplicate panel id {}",
            p["id"]
        );
    }

    // promtool parses each panel query as a recording rule: PromQL it
    // rejects would be an empty panel in Grafana.
    let mut group = Vec::new();
    for (i, (where_, expr)) in queries.iter().enumerate() {
        assert!(
            !selectors(expr).is_empty(),
            "{where_}: `{expr}` names no licensync metric"
        );
        if where_.starts_with("variable") {
            assert!(expr.starts_with("label_values("), "{where_}: {expr}");
            continue;
        }
        let promql = expr.replace("$instance", ".*");
        assert!(
            !promql.contains('$'),
            "{where_}: an unknown dashboard variable in `{expr}`"
        );
        group.push(serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": promql}));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    // JSON is YAML.
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": group}]});
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = promtool(
        dir.path(),
        &[OsStr::new("check"), OsStr::new("rules"), file.as_os_str()],
    );
    assert_success("promtool check rules on the dashboard's queries", &out);
}

/// A fake Stripe in test mode with a catalog and one subscription whose
/// customer has an email (left pending: mail transport `none`).
async fn shop(fake: &FakeStripe) {
    fake.set_now(chrono::Utc::now().timestamp());
    let product = fake.create_product("Editor", &[("product_id", "editor")]);
    let monthly = fake.create_price(&product, Some("month"), 900, &[]);
    let customer = fake.create_customer(Some("ada@example.test"), Some("Ada"));
    fake.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(monthly, 1)],
        ..Default::default()
    });
}

struct Ran {
    code: i32,
    report: Json,
    stderr: String,
    metrics: String,
}

async fn reconcile(db: &TestDb, fake: &FakeStripe, metrics: &Path) -> Ran {
    let mut cmd = licensync();
    cmd.args(["reconcile", "--output", "json", "--metrics-file"])
        .arg(metrics)
        .env("DATABASE_URL", &db.url)
        .env("STRIPE_API_BASE", fake.base_url())
        .env("STRIPE_API_KEY", fake.api_key())
        .env("LICENSYNC_MAIL_URL", "none");
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        report: serde_json::from_slice(&out.stdout).unwrap_or(Json::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        metrics: std::fs::read_to_string(metrics).unwrap_or_default(),
    }
}

/// A real run answered two 429s by Stripe, then a live-mode key refused on
/// the same (test-mode) database: the two metrics files they wrote.
async fn real_runs() -> (Ran, Ran) {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeStripe::start().await;
    shop(&fake).await;
    fake.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::TooManyRequests { retry_after_secs: 0 },
        times: 2,
    });
    let ran = reconcile(&db, &fake, &dir.path().join("ran.prom")).await;
    assert_eq!(ran.code, 0, "{} {}", ran.report, ran.stderr);

    let live = FakeStripe::start_with(Options {
        api_key: "rk_live_51LiveKeyForTheMonitoringTest0123".into(),
        ..Options::default()
    })
    .await;
    live.set_now(chrono::Utc::now().timestamp());
    let product = live.create_product("Live", &[("product_id", "live")]);
    let price = live.create_price(&product, None, 100, &[]);
    live.create_checkout_session(CheckoutSpec {
        customer: Some(live.create_customer(Some("live@example.test"), None)),
        lines: vec![(price, 1)],
        ..CheckoutSpec::default()
    });
    let refused = reconcile(&db, &live, &dir.path().join("refused.prom")).await;
    assert_eq!(refused.code, 2, "{} {}", refused.report, refused.stderr);
    assert!(refused.stderr.contains("--allow-mode-mismatch"), "{}", refused.stderr);
    (ran, refused)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_counts_stripe_429s_and_a_refused_run_still_writes_its_metrics() {
    let (ran, refused) = real_runs().await;

    assert_eq!(ran.report["stripe_rate_limited"], 2, "{}", ran.report);
    let m = &ran.metrics;
    assert_eq!(value(m, "licensync_run_stripe_rate_limited"), Some(2.0), "{m}");
    assert!(value(m, "licensync_run_stripe_requests").unwrap() >= 3.0, "{m}");
    assert_eq!(value(m, "licensync_last_run_success"), Some(1.0), "{m}");
    assert_eq!(
        value(m, "licensync_last_run_refused{reason=\"mode_mismatch\"}"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(value(m, "licensync_licenses{status=\"active\"}"), Some(1.0), "{m}");
    assert_eq!(value(m, "licensync_emails{status=\"pending\"}"), Some(1.0), "{m}");
    assert_eq!(value(m, "licensync_emails{status=\"skipped\"}"), Some(0.0), "{m}");
    let age = value(m, "licensync_email_oldest_pending_age_seconds").expect(m);
    assert!((0.0..60.0).contains(&age), "the email was queued by this run: {m}");
    let success = value(m, "licensync_last_success_timestamp_seconds").expect(m);

    let r = &refused.metrics;
    assert_eq!(
        value(r, "licensync_last_run_refused{reason=\"mode_mismatch\"}"),
        Some(1.0),
        "{r}"
    );
    assert_eq!(value(r, "licensync_last_run_success"), Some(0.0), "{r}");
    assert_eq!(
        value(r, "licensync_last_success_timestamp_seconds"),
        Some(success),
        "the last success is still the first run: {r}"
    );
    assert_eq!(value(r, "licensync_licenses{status=\"active\"}"), Some(1.0), "{r}");
    assert!(!r.contains("licensync_run_"), "a refused run describes no run: {r}");

    // promtool lints both files as the Prometheus text format.
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("ran.prom", m), ("refused.prom", r)] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = promtool_reading(dir.path(), &["check", "metrics"], Some(&path));
        assert_success(&format!("promtool check metrics {name}"), &out);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_rules_their_tests_and_the_dashboard_use_is_one_a_real_run_writes() {
    let (ran, refused) = real_runs().await;
    let mut written = parse_metrics(&ran.metrics);
    for (name, samples) in parse_metrics(&refused.metrics) {
        written.entry(name).or_default().extend(samples);
    }
    // The run's report counts every kind, so every action label is written.
    let actions: BTreeSet<&str> = written["licensync_run_actions"]
        .iter()
        .filter_map(|l| l.get("action").map(String::as_str))
        .collect();
    assert!(actions.contains("skipped") && actions.contains("issued"), "{actions:?}");

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (alert, expr) in rules() {
        let found = selectors(&expr);
        assert!(!found.is_empty(), "rule {alert} names no licensync metric: {expr}");
        for s in found {
            check_selector(&format!("rule {alert}"), &s, &written, &mut problems);
            used.insert(s.name);
        }
    }
    let tests = yaml(RULE_TESTS);
    for case in tests["tests"].as_sequence().unwrap() {
        for series in case["input_series"].as_sequence().into_iter().flatten() {
            let text = series["series"].as_str().expect("series");
            let found = selectors(text);
            assert_eq!(found.len(), 1, "a rule test series is one licensync metric: {text}");
            check_selector(
                &format!("rule test `{}`", case["name"].as_str().unwrap_or("")),
                &found[0],
                &written,
                &mut problems,
            );
        }
    }
    for (where_, expr) in dashboard_queries(&dashboard()) {
        for s in selectors(&expr) {
            check_selector(&where_, &s, &written, &mut problems);
            used.insert(s.name);
        }
    }
    assert!(
        problems.is_empty(),
        "names licensync does not write:\n{}",
        problems.join("\n")
    );
    // The dashboard and the rules between them show every metric written.
    let unused: Vec<&String> = written.keys().filter(|n| !used.contains(*n)).collect();
    assert!(
        unused.is_empty(),
        "metrics neither the rules nor the dashboard use: {unused:?}"
    );
}

#[test]
fn selectors_find_names_and_exact_label_values() {
    let found = selectors(
        r#"time() - licensync_a_seconds{instance=~"$instance"} > 1 or licensync_b{status="failed", x!="y"} / xlicensync_c"#,
    );
    let names: Vec<&str> = found.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["licensync_a_seconds", "licensync_b"]);
    assert!(found[0].labels.is_empty());
    assert_eq!(found[1].labels, [("status".to_owned(), "failed".to_owned())]);
}
