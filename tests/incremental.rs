//! Incremental runs, backfills and the daemon (licensing-rules §7), driven
//! through the real binary against the fake Stripe and a real PostgreSQL.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{TestDb, licensync};
use diesel::prelude::*;
use fake_stripe::{CheckoutSpec, FakeStripe, Fault, FaultKind, SubscriptionSpec};
use serde_json::Value;

struct World {
    db: TestDb,
    fake: FakeStripe,
    sub: String,
    other_sub: String,
    one_time: String,
    customer: String,
}

/// A catalog and two subscriptions, created a while ago (outside the
/// overlap window), with the fake's clock at wall time.
async fn world() -> World {
    let fake = FakeStripe::start().await;
    let db = TestDb::new();
    let now = Utc::now().timestamp();
    fake.set_now(now - 3600);
    let product = fake.create_product("Editor", &[("product_id", "editor"), ("hwid_limit", "2")]);
    let monthly = fake.create_price(&product, Some("month"), 900, &[]);
    let one_time = fake.create_price(&product, None, 4900, &[]);
    let customer = fake.create_customer(Some("ada@example.test"), Some("Ada"));
    let start = now - 10 * 86_400;
    let spec = |price: &str| SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(price.to_owned(), 1)],
        current_period_start: Some(start),
        current_period_end: Some(start + 30 * 86_400),
        ..Default::default()
    };
    let sub = fake.create_subscription(spec(&monthly)).id;
    let other_sub = fake.create_subscription(spec(&monthly)).id;
    fake.set_now(now);
    World {
        db,
        fake,
        sub,
        other_sub,
        one_time,
        customer,
    }
}

async fn run(w: &World, args: &[&str]) -> (i32, Value, String) {
    let mut cmd = licensync();
    cmd.args(args)
        .env("DATABASE_URL", &w.db.url)
        .env("STRIPE_API_BASE", w.fake.base_url())
        .env("STRIPE_API_KEY", w.fake.api_key())
        .env("LICENSYNC_MAIL_URL", "none");
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, stderr)
}

async fn reconcile(w: &World, extra: &[&str]) -> Value {
    let mut args = vec!["reconcile", "--output", "json"];
    args.extend_from_slice(extra);
    let (code, report, stderr) = run(w, &args).await;
    assert_eq!(code, 0, "reconcile {extra:?} failed: {report} {stderr}");
    report
}

async fn licenses(w: &World) -> Value {
    let (code, list, stderr) = run(w, &["licenses", "list", "--output", "json"]).await;
    assert_eq!(code, 0, "{stderr}");
    list
}

fn paths(fake: &FakeStripe) -> Vec<String> {
    fake.requests().into_iter().map(|r| r.path).collect()
}

fn count(report: &Value, key: &str) -> u64 {
    report["counts"][key].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_run_re_plans_exactly_the_subscription_an_event_names() {
    let w = world().await;
    let first = reconcile(&w, &[]).await;
    assert_eq!(first["mode"], "full", "no cursor yet: {first}");
    assert_eq!(count(&first, "issued"), 2);

    w.fake.clear_requests();
    let quiet = reconcile(&w, &[]).await;
    assert_eq!(quiet["mode"], "incremental");
    assert_eq!(
        quiet["stripe_requests"],
        1,
        "a run with no new events lists events once: {:?}",
        paths(&w.fake)
    );

    w.fake.set_now(Utc::now().timestamp());
    w.fake.renew_subscription(&w.sub, true);
    w.fake.clear_requests();
    let report = reconcile(&w, &[]).await;
    assert_eq!(report["mode"], "incremental");
    assert_eq!(count(&report, "extended"), 1, "{report}");
    assert_eq!(report["actions"][0]["stripe_object"], w.sub.as_str());
    let requested = paths(&w.fake);
    assert!(
        requested.contains(&format!("/v1/subscriptions/{}", w.sub)),
        "{requested:?}"
    );
    assert!(
        !requested.iter().any(|p| p == "/v1/subscriptions"),
        "no full listing: {requested:?}"
    );
    assert!(
        !requested.contains(&format!("/v1/subscriptions/{}", w.other_sub)),
        "untouched subscription not re-read"
    );
    assert_eq!(
        report["stripe_requests"].as_u64().unwrap(),
        requested.len() as u64,
        "the report counts every request the fake saw"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_event_inside_the_overlap_window_is_handled_once() {
    let w = world().await;
    reconcile(&w, &[]).await;
    reconcile(&w, &[]).await;
    // An event stamped two minutes before the last run, listed only now.
    let now = Utc::now().timestamp();
    w.fake.set_now(now - 120);
    let session = w.fake.create_checkout_session(CheckoutSpec {
        customer: Some(w.customer.clone()),
        lines: vec![(w.one_time.clone(), 1)],
        ..Default::default()
    });
    w.fake.set_now(now);
    let caught = reconcile(&w, &[]).await;
    assert_eq!(
        count(&caught, "issued"),
        1,
        "the late event is caught by the overlap: {caught}"
    );
    assert_eq!(caught["actions"][0]["stripe_object"], session.id.as_str());
    w.fake.clear_requests();
    let again = reconcile(&w, &[]).await;
    assert!(
        !paths(&w.fake).contains(&format!("/v1/checkout/sessions/{}", session.id)),
        "the event is not replayed by the next run: {:?}",
        paths(&w.fake)
    );
    assert_eq!(again["actions"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_older_than_event_retention_falls_back_to_a_full_scan() {
    let w = world().await;
    reconcile(&w, &[]).await;
    let stale = serde_json::json!({"created": Utc::now().timestamp() - 26 * 86_400, "seen": []}).to_string();
    diesel::sql_query("UPDATE sync_state SET value = $1 WHERE name = 'events'")
        .bind::<diesel::sql_types::Text, _>(stale)
        .execute(&mut w.db.conn())
        .unwrap();
    let report = reconcile(&w, &[]).await;
    assert_eq!(report["mode"], "full", "{report}");
    assert!(report["note"].as_str().unwrap().contains("full scan"), "{report}");
    assert_eq!(count(&report, "unchanged"), 2);
    let mode: String = diesel::sql_query("SELECT mode FROM runs ORDER BY id DESC LIMIT 1")
        .load::<Mode>(&mut w.db.conn())
        .unwrap()
        .remove(0)
        .mode;
    assert_eq!(mode, "full", "the run row records the fallback");
}

#[derive(QueryableByName)]
struct Mode {
    #[diesel(sql_type = diesel::sql_types::Text)]
    mode: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_after_an_outage_converges_to_what_a_full_run_sees() {
    let w = world().await;
    reconcile(&w, &[]).await;
    let outage_start = Utc::now();
    w.fake.set_now(outage_start.timestamp() + 1);
    // During the outage: an old subscription renews, another is canceled,
    // and a new one-time purchase is made.
    w.fake.renew_subscription(&w.sub, true);
    w.fake.set_subscription_status(&w.other_sub, "canceled");
    w.fake.create_checkout_session(CheckoutSpec {
        customer: Some(w.customer.clone()),
        lines: vec![(w.one_time.clone(), 2)],
        ..Default::default()
    });
    let since = outage_start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let backfill = reconcile(&w, &["--since", &since]).await;
    assert_eq!(backfill["mode"], "since");
    assert!(backfill["note"].as_str().unwrap().contains("events"), "{backfill}");
    assert_eq!(count(&backfill, "extended"), 1, "{backfill}");
    assert_eq!(count(&backfill, "expired"), 1, "{backfill}");
    assert_eq!(count(&backfill, "issued"), 1, "{backfill}");
    let after_backfill = licenses(&w).await;
    let full = reconcile(&w, &["--full"]).await;
    assert_eq!(
        full["actions"],
        serde_json::json!([]),
        "a full run finds nothing the backfill missed: {full}"
    );
    assert_eq!(licenses(&w).await, after_backfill);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_older_than_event_retention_scans_instead() {
    let w = world().await;
    let report = reconcile(&w, &["--since", "2020-01-01", "--until", "2020-02-01"]).await;
    assert_eq!(report["mode"], "since");
    assert!(report["note"].as_str().unwrap().contains("retention"), "{report}");
    assert_eq!(
        count(&report, "issued"),
        2,
        "subscriptions are scanned in full whatever their age"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_runs_on_its_schedule_and_stops_cleanly_on_sigterm_mid_run() {
    let w = world().await;
    let metrics = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = licensync();
    cmd.args(["daemon", "--schedule", "* * * * * *", "--metrics-file"])
        .arg(metrics.path())
        .env("DATABASE_URL", &w.db.url)
        .env("STRIPE_API_BASE", w.fake.base_url())
        .env("STRIPE_API_KEY", w.fake.api_key())
        .env("LICENSYNC_MAIL_URL", "none");
    // Its logs would bypass the test harness's capture; the runs table tells what it did.
    cmd.stderr(std::process::Stdio::null());
    let mut child = tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap();
    let succeeded = || -> i64 {
        diesel::sql_query("SELECT count(*) AS n FROM runs WHERE outcome = 'succeeded'")
            .load::<N>(&mut w.db.conn())
            .map(|r| r[0].n)
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while succeeded() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "two ticks did not run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written = std::fs::read_to_string(metrics.path()).unwrap();
    assert!(written.contains("licensync_last_run_success 1"), "{written}");
    assert!(written.contains("licensync_licenses{status=\"active\"} 2"), "{written}");

    // Catch the next run while it waits on Stripe, then ask it to stop.
    w.fake.inject_fault(Fault {
        path_prefix: "/v1/events".into(),
        kind: FaultKind::Latency(Duration::from_secs(2)),
        times: 1,
    });
    let running = || -> i64 {
        diesel::sql_query("SELECT count(*) AS n FROM runs WHERE outcome = 'running'")
            .load::<N>(&mut w.db.conn())
            .map(|r| r[0].n)
            .unwrap_or(0)
    };
    while running() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no run started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "the daemon exits cleanly on SIGTERM");
    assert_eq!(
        running(),
        0,
        "the interrupted run is recorded as finished, not left running"
    );
    let list = licenses(&w).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list.as_array().unwrap().iter().all(|l| l["status"] == "active"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_stops_with_exit_2_when_stripe_rejects_the_key() {
    let w = world().await;
    let wrong = "rk_test_51NotTheKeyOfThisAccount0000000000";
    let mut cmd = licensync();
    cmd.args(["daemon", "--schedule", "* * * * * *"])
        .env("DATABASE_URL", &w.db.url)
        .env("STRIPE_API_BASE", w.fake.base_url())
        .env("STRIPE_API_KEY", wrong)
        .env("LICENSYNC_MAIL_URL", "none");
    // Retrying a rejected key every tick would only hide it: the daemon
    // exits 2 at the first tick (systemd's RestartPreventExitStatus=2).
    let out = tokio::time::timeout(Duration::from_secs(60), tokio::process::Command::from(cmd).output())
        .await
        .expect("the daemon went on ticking with a rejected key")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("STRIPE_API_KEY"), "{stderr}");
    assert!(!stderr.contains(wrong), "the key leaked: {stderr}");
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[test]
fn a_malformed_schedule_exits_2_naming_it() {
    let out = licensync()
        .args(["daemon", "--schedule", "every monday"])
        .env("STRIPE_API_KEY", "sk_test_x1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--schedule") && stderr.contains("every monday"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cursor_keeps_only_event_ids_inside_the_overlap_window() {
    let w = world().await;
    reconcile(&w, &[]).await;
    let now = Utc::now().timestamp();
    w.fake.set_now(now - 60);
    w.fake.renew_subscription(&w.sub, true);
    w.fake.set_now(now);
    let stale = serde_json::json!({"created": now, "seen": ["evt_from_an_old_window"]}).to_string();
    diesel::sql_query("UPDATE sync_state SET value = $1 WHERE name = 'events'")
        .bind::<diesel::sql_types::Text, _>(stale)
        .execute(&mut w.db.conn())
        .unwrap();
    let report = reconcile(&w, &[]).await;
    assert_eq!(count(&report, "extended"), 1, "{report}");
    #[derive(QueryableByName)]
    struct Value_ {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let stored: Value = serde_json::from_str(
        &diesel::sql_query("SELECT value FROM sync_state WHERE name = 'events'")
            .load::<Value_>(&mut w.db.conn())
            .unwrap()
            .remove(0)
            .value,
    )
    .unwrap();
    let seen: Vec<&str> = stored["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !seen.contains(&"evt_from_an_old_window"),
        "ids outside the window are dropped: {seen:?}"
    );
    assert!(
        !seen.is_empty(),
        "the renewal's events, inside the window, are kept: {stored}"
    );
}
