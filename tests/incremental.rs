//! Incremental runs, backfills and the daemon (licensing-rules §7), driven
//! through the real binary against the fake Stripe and a real PostgreSQL.

mod common;

// `daemon --listen`: webhooks as wake-ups, in this one test binary.
// `daemon` before its database is up.
#[path = "incremental/daemon_database.rs"]
mod daemon_database;
#[path = "incremental/webhooks.rs"]
mod webhooks;
// `daemon --listen --stripe-write-back`: our own writes' webhooks do not loop.
#[path = "incremental/write_back_wakeups.rs"]
mod write_back_wakeups;
// The catalog read beside the objects events name.
#[path = "incremental/catalog_read.rs"]
mod catalog_read;

use std::time::Duration;

use chrono::Utc;
use common::{TestDb, licensync};
use diesel::prelude::*;
use fake_stripe::{CheckoutSpec, FakeStripe, Fault, FaultKind, SubscriptionSpec};
use serde_json::Value;

pub(crate) struct World {
    db: TestDb,
    fake: FakeStripe,
    product: String,
    sub: String,
    other_sub: String,
    one_time: String,
    customer: String,
}

/// A catalog and two subscriptions, created a while ago (outside the
/// overlap window), with the fake's clock at wall time.
pub(crate) async fn world() -> World {
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
        product,
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

/// A sale made while a full run scans, after the scan read its sessions:
/// the run's events are listed before the scan, so that sale's event is not
/// among the handled ones and the next run licenses it. (Listed after the
/// scan, it was taken for handled and never licensed: Stripe dates events
/// in whole seconds, and the full run counts its own second in.)
#[tokio::test(flavor = "multi_thread")]
async fn a_sale_made_while_a_full_run_scans_is_licensed_by_the_next_run() {
    let w = world().await;
    let launch = Utc::now().timestamp();
    // Keeps the events request (wherever the run makes it) open for 2 s.
    w.fake.inject_fault(Fault {
        path_prefix: "/v1/events".into(),
        kind: FaultKind::Latency(Duration::from_secs(2)),
        times: 1,
    });
    let sale = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !w
            .fake
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/v1/checkout/sessions"))
        {
            assert!(tokio::time::Instant::now() < deadline, "the full run read no sessions");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Dated in the run's window, as Stripe dates it (whole seconds).
        w.fake.set_now(launch);
        let customer = w.fake.create_customer(Some("midscan@example.test"), None);
        w.fake.create_checkout_session(CheckoutSpec {
            customer: Some(customer),
            lines: vec![(w.one_time.clone(), 1)],
            ..CheckoutSpec::default()
        });
    };
    let (first, ()) = tokio::join!(reconcile(&w, &[]), sale);
    assert_eq!(first["mode"], "full", "{first}");
    reconcile(&w, &[]).await;
    let list = licenses(&w).await;
    let emails: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["customer_email"].as_str())
        .collect();
    assert!(emails.contains(&"midscan@example.test"), "the sale was lost: {list}");
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
pub(crate) struct N {
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

/// The licenses by `source_id`.
async fn by_source(w: &World) -> std::collections::BTreeMap<String, Value> {
    licenses(w)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["source_id"].as_str().unwrap().to_owned(), l.clone()))
        .collect()
}

/// The mode the last run recorded in its row.
fn last_run_mode(w: &World) -> String {
    diesel::sql_query("SELECT mode FROM runs ORDER BY id DESC LIMIT 1")
        .load::<Mode>(&mut w.db.conn())
        .unwrap()
        .remove(0)
        .mode
}

#[tokio::test(flavor = "multi_thread")]
async fn a_product_or_price_event_turns_the_incremental_run_into_a_full_scan() {
    let w = world().await;
    reconcile(&w, &[]).await;
    w.fake.set_now(Utc::now().timestamp());

    // New limits on the product: no event names a subscription, yet every
    // license of the product changes.
    w.fake.update(&w.product, |p| p["metadata"]["hwid_limit"] = "5".into());
    w.fake.clear_requests();
    let report = reconcile(&w, &[]).await;
    assert_eq!(report["mode"], "full", "{report}");
    assert!(
        report["note"]
            .as_str()
            .is_some_and(|n| n.contains("product or price changed")),
        "{report}"
    );
    assert_eq!(last_run_mode(&w), "full", "the run row records the full scan");
    assert_eq!(count(&report, "updated"), 2, "{report}");
    assert!(
        paths(&w.fake).iter().any(|p| p == "/v1/subscriptions"),
        "every subscription is listed: {:?}",
        paths(&w.fake)
    );
    for sub in [&w.sub, &w.other_sub] {
        let license = licenses(&w)
            .await
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["stripe_subscription_id"] == sub.as_str())
            .cloned()
            .unwrap();
        assert_eq!(license["hwid_limit"], 5, "{license}");
    }

    // A new price, too.
    w.fake.create_price(&w.product, Some("year"), 9_000, &[]);
    let report = reconcile(&w, &[]).await;
    assert_eq!(report["mode"], "full", "{report}");
    assert_eq!(count(&report, "unchanged"), 2, "{report}");

    // The full scan counts the events before it as handled: the next run
    // is incremental again.
    let next = reconcile(&w, &[]).await;
    assert_eq!(next["mode"], "incremental", "{next}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refund_or_dispute_event_re_reads_the_refund_and_dispute_lists() {
    let w = world().await;
    reconcile(&w, &[]).await;
    w.fake.set_now(Utc::now().timestamp());
    let buy = || {
        w.fake.create_checkout_session(CheckoutSpec {
            customer: Some(w.customer.clone()),
            lines: vec![(w.one_time.clone(), 1)],
            ..Default::default()
        })
    };
    let (refunded, disputed) = (buy(), buy());
    let grant = |s: &fake_stripe::CreatedSession| format!("{}/{}", s.id, s.line_ids[0]);
    w.fake.clear_requests();
    let issued = reconcile(&w, &[]).await;
    assert_eq!(issued["mode"], "incremental", "{issued}");
    assert_eq!(count(&issued, "issued"), 2, "{issued}");
    let read = paths(&w.fake);
    assert!(
        !read.iter().any(|p| p == "/v1/refunds" || p == "/v1/disputes"),
        "no refund or dispute event, no reversal list: {read:?}"
    );

    // A full refund: `charge.refunded` names only the charge.
    w.fake.refund(refunded.payment_intent.as_deref().unwrap(), None);
    w.fake.clear_requests();
    let report = reconcile(&w, &[]).await;
    assert_eq!(report["mode"], "incremental", "{report}");
    let read = paths(&w.fake);
    assert!(read.iter().any(|p| p == "/v1/refunds"), "{read:?}");
    assert!(
        !read
            .iter()
            .any(|p| p == "/v1/subscriptions" || p == "/v1/checkout/sessions"),
        "not a full scan: {read:?}"
    );
    assert_eq!(count(&report, "revoked"), 1, "{report}");
    let licenses = by_source(&w).await;
    assert_eq!(licenses[&grant(&refunded)]["status"], "revoked");
    assert_eq!(licenses[&grant(&disputed)]["status"], "active");

    // A lost dispute: `charge.dispute.closed` names only the dispute.
    w.fake.dispute(disputed.payment_intent.as_deref().unwrap(), "lost");
    w.fake.clear_requests();
    let report = reconcile(&w, &[]).await;
    assert_eq!(report["mode"], "incremental", "{report}");
    let read = paths(&w.fake);
    assert!(read.iter().any(|p| p == "/v1/disputes"), "{read:?}");
    assert_eq!(count(&report, "revoked"), 1, "{report}");
    assert_eq!(by_source(&w).await[&grant(&disputed)]["status"], "revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn customer_updated_alone_is_not_acted_on() {
    let w = world().await;
    reconcile(&w, &[]).await;
    w.fake.set_now(Utc::now().timestamp());
    let (old, new) = ("ada@example.test", "ada@new.example.test");
    w.fake.update(&w.customer, |c| c["email"] = new.into());
    assert_eq!(w.fake.events().last().unwrap()["type"], "customer.updated");

    w.fake.clear_requests();
    let report = reconcile(&w, &[]).await;
    assert_eq!(report["mode"], "incremental", "{report}");
    assert_eq!(report["actions"], serde_json::json!([]), "{report}");
    assert_eq!(
        paths(&w.fake),
        ["/v1/events"],
        "the events are listed, nothing is re-read"
    );
    let email_of = |licenses: &std::collections::BTreeMap<String, Value>, sub: &str| {
        licenses.values().find(|l| l["stripe_subscription_id"] == sub).unwrap()["customer_email"].clone()
    };
    let licenses = by_source(&w).await;
    assert_eq!(email_of(&licenses, &w.sub), old);
    assert_eq!(email_of(&licenses, &w.other_sub), old);

    // The next event of a purchase refreshes that purchase's licenses.
    w.fake.renew_subscription(&w.sub, true);
    let report = reconcile(&w, &[]).await;
    assert_eq!(report["mode"], "incremental", "{report}");
    let licenses = by_source(&w).await;
    assert_eq!(email_of(&licenses, &w.sub), new);
    assert_eq!(email_of(&licenses, &w.other_sub), old);

    // The next full run refreshes the rest.
    let full = reconcile(&w, &["--full"]).await;
    assert_eq!(count(&full, "updated"), 1, "{full}");
    assert_eq!(email_of(&by_source(&w).await, &w.other_sub), new);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_naming_an_object_stripe_no_longer_has_is_skipped() {
    let w = world().await;
    reconcile(&w, &[]).await;
    w.fake.set_now(Utc::now().timestamp());
    // The fake deletes nothing: an event of a subscription is made to name
    // one Stripe does not have, which Stripe answers 404 for, as for an
    // object deleted since its event.
    let gone = "sub_00000000999999";
    assert!(w.fake.get(gone).is_none());
    w.fake
        .update(&w.other_sub, |s| s["metadata"] = serde_json::json!({"note": "touched"}));
    let event = w.fake.events().last().unwrap().clone();
    assert_eq!(event["type"], "customer.subscription.updated");
    w.fake.update(event["id"].as_str().unwrap(), |e| {
        e["data"]["object"]["id"] = gone.into()
    });
    // And a real change in the same run.
    w.fake.renew_subscription(&w.sub, true);

    w.fake.clear_requests();
    let (code, report, stderr) = run(&w, &["reconcile", "--output", "json"]).await;
    assert_eq!(code, 0, "{report} {stderr}");
    assert_eq!(report["outcome"], "succeeded", "{report}");
    assert_eq!(report["mode"], "incremental", "{report}");
    assert_eq!(count(&report, "extended"), 1, "the other event is applied: {report}");
    assert_eq!(report["actions"][0]["stripe_object"], w.sub.as_str());
    let asked: Vec<u16> = w
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path == format!("/v1/subscriptions/{gone}"))
        .map(|r| r.status)
        .collect();
    assert_eq!(asked, [404], "re-fetched once, answered 404");
    assert!(
        stderr.contains(gone) && stderr.contains("no longer has"),
        "the skip is logged naming the object: {stderr}"
    );

    // The cursor moved past the event: the next run does not ask again.
    w.fake.clear_requests();
    let next = reconcile(&w, &[]).await;
    assert_eq!(next["actions"], serde_json::json!([]), "{next}");
    assert!(!paths(&w.fake).iter().any(|p| p.contains(gone)), "{:?}", paths(&w.fake));
}
