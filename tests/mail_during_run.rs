//! License emails go out while the run goes on (issue 18: plan, apply and
//! mail as a pipeline): a page's keys are mailed once the page commits,
//! not after the whole account was read, and an outage still costs one
//! attempt per run. The real binary against the fake Stripe.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Ran, TestDb, eml_files, hold_next_request, issue_license, reconcile_json};
use diesel::prelude::*;
use fake_stripe::{CheckoutSpec, FakeStripe, SubscriptionSpec};

/// How long the fake holds the first Checkout Session page: the
/// subscription's page commits, and its key is mailed, meanwhile.
const HELD: Duration = Duration::from_secs(8);

/// A subscription and a Checkout Session of two lines, each read on its own
/// list, so each on its own page: three licenses, three emails.
async fn shop() -> FakeStripe {
    let fake = FakeStripe::start().await;
    let now = Utc::now().timestamp();
    fake.set_now(now - 3600);
    let product = fake.create_product("Editor", &[("product_id", "editor")]);
    let monthly = fake.create_price(&product, Some("month"), 900, &[]);
    let one_time = fake.create_price(&product, None, 4900, &[]);
    let other = fake.create_price(&product, None, 1900, &[]);
    let start = now - 10 * 86_400;
    let ada = fake.create_customer(Some("ada@example.test"), Some("Ada"));
    fake.create_subscription(SubscriptionSpec {
        customer: ada,
        items: vec![(monthly, 1)],
        current_period_start: Some(start),
        current_period_end: Some(start + 30 * 86_400),
        ..Default::default()
    });
    let grace = fake.create_customer(Some("grace@example.test"), Some("Grace"));
    fake.create_checkout_session(CheckoutSpec {
        customer: Some(grace),
        lines: vec![(one_time, 1), (other, 1)],
        ..Default::default()
    });
    fake.set_now(now);
    fake
}

#[tokio::test]
async fn a_key_is_mailed_as_its_page_commits_while_the_run_still_reads() {
    let fake = shop().await;
    hold_next_request(&fake, "/v1/checkout/sessions", HELD);
    let db = TestDb::new();
    let mail = tempfile::tempdir().unwrap();
    let mut child =
        tokio::process::Command::from(reconcile_json(&db, &fake, &format!("file://{}", mail.path().display())))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();

    // The subscription's key arrives while the session page is held.
    let started = Instant::now();
    while eml_files(mail.path()).is_empty() {
        assert!(
            started.elapsed() < HELD,
            "no email within {HELD:?}: the subscription's key waits for the whole run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The file may still be being written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = eml_files(mail.path());
    assert_eq!(first.len(), 1, "only the subscription's page has committed: {first:?}");
    assert!(first[0].contains("ada@example.test"), "{}", first[0]);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run had ended before its first email: nothing shows the email went out during the run"
    );

    let ran = Ran::new(&child.wait_with_output().await.unwrap());
    let report = ran.ok_json();
    assert_eq!(report["outcome"], "succeeded", "{report:#}\n{}", ran.all());
    assert_eq!(report["counts"]["issued"], 3, "{report:#}");
    assert_eq!(
        report["emails_sent"], 3,
        "every email of the run counts, sent early or late: {report:#}"
    );
    let all = eml_files(mail.path());
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all.iter().filter(|m| m.contains("grace@example.test")).count(), 2);
}

#[tokio::test]
async fn an_outage_met_during_the_run_costs_one_attempt_and_the_rest_wait_for_the_next_run() {
    let fake = shop().await;
    // Pages commit apart: the session page only once the first email was tried.
    hold_next_request(&fake, "/v1/checkout/sessions", Duration::from_secs(2));
    let db = TestDb::new();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let ran = Ran::new(
        &tokio::process::Command::from(reconcile_json(
            &db,
            &fake,
            &format!("smtp://127.0.0.1:{closed}?tls=none"),
        ))
        .output()
        .await
        .unwrap(),
    );
    let report = ran.ok_json();
    assert_eq!(report["outcome"], "succeeded", "{report:#}\n{}", ran.all());
    assert_eq!(report["counts"]["issued"], 3, "{report:#}");
    assert_eq!(report["emails_sent"], 0, "{report:#}");

    let attempts: Vec<i32> = diesel::sql_query("SELECT attempts FROM email_outbox ORDER BY id")
        .load::<Attempts>(&mut db.conn())
        .unwrap()
        .into_iter()
        .map(|r| r.attempts)
        .collect();
    assert_eq!(
        attempts,
        [1, 0, 0],
        "the server was down: one message tried, and nothing more for the rest of the run"
    );
}

#[derive(QueryableByName)]
struct Attempts {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
}

/// The sender beside a run claims each page's rows as the page commits. A
/// row is queued at the database's `now()`: a sender whose own clock lags
/// the database's must still take it for due, not wait for the next page.
#[test]
fn a_row_just_queued_is_due_for_a_sender_whose_clock_lags_the_database() {
    let db = TestDb::new();
    issue_license(&db.store, 1, Some("ada@example.test"));
    let sender = db.store.sender_session().unwrap();
    let lagging = Utc::now() - chrono::Duration::seconds(30);
    let jobs = db
        .store
        .claim_due_emails(&sender, lagging, lagging + chrono::Duration::minutes(10), 10)
        .unwrap();
    assert_eq!(
        jobs.len(),
        1,
        "the row queued a moment ago was not due for a clock 30 s behind"
    );
}
