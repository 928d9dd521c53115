//! A run killed while it reads a list as several `created` segments at once
//! converges on the next run (issue 10): same licenses as a run that never
//! crashed, no grant twice, no key changed, every license mailed once.
//!
//! The account spreads 600 subscriptions (of up to 5 past periods each)
//! and 75 Checkout Sessions over a year, after the catalog was created, so a full run's first page of each
//! list shows a long rest and splits it; the fake answers every request
//! 20-40 ms late, so segments are in flight side by side when the kill lands.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{TestDb, licensync};
use fake_stripe::{CheckoutSpec, FakeStripe, Latency, SubscriptionSpec};
use serde_json::Value;

const DAY: i64 = 86_400;

async fn account() -> FakeStripe {
    let f = FakeStripe::start().await;
    // Purchases current for licensync's real clock.
    let now = chrono::Utc::now().timestamp();
    f.set_now(now - 365 * DAY);
    let pro = f.create_product("Pro", &[("product_id", "pro"), ("hwid_limit", "2")]);
    let monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    let tool = f.create_product("Tool", &[("product_id", "tool")]);
    let tool_once = f.create_price(&tool, None, 2_000, &[]);
    for n in 0..600i64 {
        // Created up to half a year back (`past_periods`), each paid through
        // the current period.
        f.set_now(now - n * 60);
        let customer = f.create_customer(Some(&format!("c{n}@example.test")), None);
        f.create_subscription(SubscriptionSpec {
            customer: customer.clone(),
            items: vec![(monthly.clone(), 1)],
            past_periods: (n % 6) as u32,
            ..SubscriptionSpec::default()
        });
        if n % 8 == 0 {
            f.set_now(now - 365 * DAY + n * 52_000);
            f.create_checkout_session(CheckoutSpec {
                customer: Some(customer),
                lines: vec![(tool_once.clone(), 1)],
                ..CheckoutSpec::default()
            });
        }
    }
    f.set_now(now);
    f
}

fn command(db: &TestDb, f: &FakeStripe, mail: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = licensync();
    cmd.args(args)
        .env("DATABASE_URL", &db.url)
        .env("STRIPE_API_BASE", f.base_url())
        .env("STRIPE_API_KEY", f.api_key())
        .env("LICENSYNC_MAIL_URL", format!("file://{}", mail.display()))
        .env("LICENSYNC_STRIPE_RPS", "1000");
    cmd
}

/// The licenses by grant, without what differs between two databases.
fn licenses(db: &TestDb, f: &FakeStripe, mail: &std::path::Path) -> BTreeMap<String, Value> {
    let out = command(db, f, mail, &["licenses", "list", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut by_grant = BTreeMap::new();
    for l in list {
        let grant = format!(
            "{}:{}",
            l["source_kind"].as_str().unwrap(),
            l["source_id"].as_str().unwrap()
        );
        assert!(by_grant.insert(grant.clone(), l).is_none(), "{grant} issued twice");
    }
    by_grant
}

fn portable(l: &Value) -> Value {
    let mut l = l.clone();
    for field in ["id", "key", "created_at", "updated_at"] {
        l.as_object_mut().unwrap().remove(field);
    }
    l
}

fn count(db: &TestDb, sql: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = PgConnection::establish(&db.url).unwrap();
    diesel::sql_query(sql).get_result::<N>(&mut conn).unwrap().n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_killed_while_segments_are_in_flight_converges_on_the_next_run() {
    let f = account().await;
    let mail = tempfile::tempdir().unwrap();
    let reference_db = TestDb::new();
    let ran = command(
        &reference_db,
        &f,
        mail.path(),
        &["reconcile", "--full", "--output", "json"],
    )
    .output()
    .unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let reference: BTreeMap<String, Value> = licenses(&reference_db, &f, mail.path())
        .iter()
        .map(|(g, l)| (g.clone(), portable(l)))
        .collect();
    assert_eq!(reference.len(), 600 + 75);
    // Kill points: from just after the first segment a clean run read, to
    // just before its end.
    let clean = f.requests();
    let first_segment = clean
        .iter()
        .position(|r| r.path == "/v1/subscriptions" && r.query.contains("created"))
        .expect("the subscriptions were read as segments");
    let segments = clean
        .iter()
        .filter(|r| r.path == "/v1/subscriptions" && r.query.contains("created"))
        .count();
    assert!(segments >= 3, "the subscriptions were read as segments: {segments}");
    let span = clean.len() - 3 - (first_segment + 1);
    let kill_points: Vec<usize> = (0..4).map(|i| first_segment + 1 + span * i / 3).collect();

    f.set_latency(Some(Latency::ms(20, 40)));
    let mut killed_mid_segments = 0;
    for kill_after in kill_points {
        let db = TestDb::new();
        let mail = tempfile::tempdir().unwrap();
        f.clear_requests();
        let mut child = command(&db, &f, mail.path(), &["reconcile", "--full", "--output", "json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let mut exited = false;
        while f.requests().len() < kill_after {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the run hung");
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!exited, "the run ended before request {kill_after}");
        let answered = f.requests();
        let segments_read = answered
            .iter()
            .filter(|r| r.path == "/v1/subscriptions" && r.query.contains("created"))
            .count();
        let keys_before: BTreeMap<String, Value> = licenses(&db, &f, mail.path())
            .into_iter()
            .map(|(g, l)| (g, l["key"].clone()))
            .collect();
        if segments_read > 0 && keys_before.len() < reference.len() {
            killed_mid_segments += 1;
        }
        let rerun = command(&db, &f, mail.path(), &["reconcile", "--output", "json"])
            .output()
            .unwrap();
        assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
        let after = licenses(&db, &f, mail.path());
        let portable_after: BTreeMap<String, Value> = after.iter().map(|(g, l)| (g.clone(), portable(l))).collect();
        assert_eq!(
            portable_after, reference,
            "killed after request {kill_after}: the next run converges"
        );
        for (grant, key) in &keys_before {
            assert_eq!(&after[grant]["key"], key, "{grant}: a key issued before the kill stays");
        }
        assert_eq!(
            count(&db, "SELECT count(*) AS n FROM license_ledger WHERE action = 'issue'"),
            reference.len() as i64,
            "one issue per license"
        );
        assert_eq!(
            count(
                &db,
                "SELECT count(*) AS n FROM email_outbox WHERE kind = 'license_issued' AND status = 'sent'"
            ),
            reference.len() as i64,
            "one email per license, sent"
        );
    }
    assert!(
        killed_mid_segments >= 3,
        "at least 3 kills landed while segments were being read and before the run was done: {killed_mid_segments}"
    );
}
