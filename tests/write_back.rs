//! `--stripe-write-back` end to end (issue 22): the real binary against the
//! fake Stripe, which applies and records metadata writes as Stripe does
//! (merge, events, idempotency keys, restricted keys without write
//! permission, connected accounts).

mod common;

use std::collections::BTreeMap;

use chrono::Utc;
use common::{Ran, TestDb, licensync};
use diesel::prelude::*;
use fake_stripe::{CheckoutSpec, FakeStripe, InvoiceSpec, SubscriptionSpec};
use serde_json::Value;

/// A subscription, a Checkout Session of two lines and a one-off invoice,
/// bought an hour ago, with a file outbox.
struct World {
    db: TestDb,
    fake: FakeStripe,
    mail: tempfile::TempDir,
    item: String,
    payment_intent: String,
    invoice: String,
}

/// Sets up `fake`'s purchases (an account of its own, or a connected one).
fn shop(fake: &FakeStripe) -> (String, String, String) {
    let now = Utc::now().timestamp();
    fake.set_now(now - 3600);
    let product = fake.create_product("Editor", &[("product_id", "editor"), ("hwid_limit", "2")]);
    let monthly = fake.create_price(&product, Some("month"), 900, &[]);
    let one_time = fake.create_price(&product, None, 4900, &[]);
    let other = fake.create_price(&product, None, 1900, &[]);
    let customer = fake.create_customer(Some("ada@example.test"), Some("Ada"));
    let start = now - 10 * 86_400;
    let sub = fake.create_subscription(SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly, 1)],
        current_period_start: Some(start),
        current_period_end: Some(start + 30 * 86_400),
        ..Default::default()
    });
    let session = fake.create_checkout_session(CheckoutSpec {
        customer: Some(customer.clone()),
        lines: vec![(one_time.clone(), 1), (other, 1)],
        ..Default::default()
    });
    let invoice = fake.create_invoice(InvoiceSpec {
        customer,
        lines: vec![(one_time, 1)],
        ..Default::default()
    });
    fake.set_now(now);
    (
        sub.item_ids[0].clone(),
        session.payment_intent.expect("a paid session has a payment"),
        invoice.id,
    )
}

impl World {
    async fn new() -> World {
        let fake = FakeStripe::start().await;
        let (item, payment_intent, invoice) = shop(&fake);
        World {
            db: TestDb::new(),
            fake,
            mail: tempfile::tempdir().unwrap(),
            item,
            payment_intent,
            invoice,
        }
    }

    fn command(&self, args: &[&str], write_back: bool) -> std::process::Command {
        let mut cmd = licensync();
        cmd.args(args)
            .env("DATABASE_URL", &self.db.url)
            .env("LICENSYNC_MAIL_URL", format!("file://{}", self.mail.path().display()))
            .env("STRIPE_API_BASE", self.fake.base_url())
            .env("STRIPE_API_KEY", self.fake.api_key());
        if write_back {
            cmd.env("LICENSYNC_STRIPE_WRITE_BACK", "true");
        }
        cmd
    }

    async fn run(&self, args: &[&str], write_back: bool) -> Ran {
        let out = tokio::process::Command::from(self.command(args, write_back))
            .output()
            .await
            .unwrap();
        Ran::new(&out)
    }

    /// `reconcile --output json [extra]` with write-back, which must succeed.
    async fn reconcile(&self, extra: &[&str]) -> Value {
        let mut args = vec!["reconcile", "--output", "json"];
        args.extend_from_slice(extra);
        let ran = self.run(&args, true).await;
        let report = ran.ok_json();
        assert_eq!(report["outcome"], "succeeded", "{report:#}\n{}", ran.all());
        report
    }

    async fn licenses(&self) -> Vec<Value> {
        match self
            .run(&["licenses", "list", "--output", "json"], false)
            .await
            .ok_json()
        {
            Value::Array(licenses) => licenses,
            other => panic!("not an array: {other}"),
        }
    }

    /// The keys of the licenses of one kind, oldest first.
    async fn keys(&self, kind: &str) -> Vec<(i64, String)> {
        let mut keys: Vec<(i64, String)> = self
            .licenses()
            .await
            .iter()
            .filter(|l| l["source_kind"] == kind)
            .map(|l| (l["id"].as_i64().unwrap(), l["key"].as_str().unwrap().to_owned()))
            .collect();
        keys.sort();
        keys
    }

    /// The metadata writes the fake applied, per object, in order.
    fn writes(&self) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
        writes_of(&self.fake)
    }

    fn posts(&self) -> usize {
        self.fake.requests().iter().filter(|r| r.method == "POST").count()
    }

    fn queue(&self) -> Vec<(String, String)> {
        diesel::sql_query("SELECT target_id, status FROM stripe_writes ORDER BY id")
            .load::<QueueRow>(&mut self.db.conn())
            .unwrap()
            .into_iter()
            .map(|r| (r.target_id, r.status))
            .collect()
    }
}

#[derive(QueryableByName)]
struct QueueRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    target_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
}

fn writes_of(fake: &FakeStripe) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut by_object: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for w in fake.metadata_writes() {
        by_object.entry(w.object).or_default().push(w.metadata);
    }
    by_object
}

fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn joined(keys: &[(i64, String)]) -> String {
    keys.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>().join(",")
}

#[tokio::test]
async fn each_issued_key_lands_on_its_object_once_and_reruns_and_our_own_events_write_nothing() {
    let w = World::new().await;
    let report = w.reconcile(&[]).await;
    let item_key = w.keys("subscription_item").await;
    let (session_keys, invoice_keys) = (w.keys("checkout_line").await, w.keys("invoice_line").await);
    assert_eq!((item_key.len(), session_keys.len(), invoice_keys.len()), (1, 2, 1));
    let expected: BTreeMap<String, Vec<BTreeMap<String, String>>> = [
        (
            w.item.clone(),
            vec![metadata(&[
                ("licensync_key", &item_key[0].1),
                ("licensync_license_id", &item_key[0].0.to_string()),
            ])],
        ),
        (
            w.payment_intent.clone(),
            vec![metadata(&[("licensync_keys", &joined(&session_keys))])],
        ),
        (
            w.invoice.clone(),
            vec![metadata(&[("licensync_keys", &joined(&invoice_keys))])],
        ),
    ]
    .into();
    assert_eq!(
        w.writes(),
        expected,
        "one write per object, with every key of its purchase"
    );
    let writes = &report["stripe_writes"];
    assert_eq!(writes["queued"], 3, "{report:#}");
    assert_eq!(writes["sent"], 3, "{report:#}");
    assert_eq!(writes["pending"], 0, "{report:#}");
    // Stripe shows them: support sees the key on the subscription item.
    let sub = w.fake.get(&w.item).unwrap();
    assert_eq!(sub["metadata"]["licensync_key"], item_key[0].1.as_str());
    let written = w.fake.requests().iter().filter(|r| r.method == "POST").count() as u64;
    assert!(
        report["stripe_requests"].as_u64().unwrap() >= written,
        "writes are counted as requests"
    );

    // The writes made `*.updated` events; the next run reads them and
    // changes nothing, and writes nothing: a webhook for them cannot loop.
    let events: Vec<String> = w
        .fake
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "customer.subscription.updated",
        "payment_intent.updated",
        "invoice.updated",
    ] {
        assert!(events.iter().any(|e| e == kind), "{kind} missing from {events:?}");
    }
    let posts = w.posts();
    let incremental = w.reconcile(&[]).await;
    assert_eq!(incremental["mode"], "incremental", "{incremental:#}");
    assert!(
        incremental["actions"].as_array().unwrap().is_empty(),
        "our own writes change no license: {incremental:#}"
    );
    assert_eq!(incremental["stripe_writes"]["queued"], 0);
    let full = w.reconcile(&["--full"]).await;
    assert!(full["actions"].as_array().unwrap().is_empty(), "{full:#}");
    assert_eq!(w.posts(), posts, "a rerun writes nothing");
    assert_eq!(w.writes(), expected);

    // Without the setting, nothing is written and the report has no such part.
    let ran = w.run(&["reconcile", "--full", "--output", "json"], false).await;
    assert!(ran.ok_json().get("stripe_writes").is_none());
}

#[tokio::test]
async fn a_reissue_writes_the_new_key_and_the_status_counts_the_queue() {
    let w = World::new().await;
    w.reconcile(&[]).await;
    let (id, old) = w.keys("subscription_item").await.remove(0);
    let ran = w
        .run(
            &[
                "licenses",
                "reissue",
                &id.to_string(),
                "--reason",
                "leaked",
                "--by",
                "support",
            ],
            true,
        )
        .await;
    assert_eq!(ran.code, 0, "{}", ran.all());
    let status = w.run(&["status", "--output", "json"], false).await.ok_json();
    assert_eq!(
        status["stripe_writes"]["pending"], 1,
        "queued with the reissue: {status:#}"
    );
    let report = w.reconcile(&[]).await;
    assert_eq!(report["stripe_writes"]["sent"], 1, "{report:#}");
    let (_, new) = w.keys("subscription_item").await.remove(0);
    assert_ne!(new, old);
    let item_writes = &w.writes()[&w.item];
    assert_eq!(item_writes.len(), 2, "{item_writes:?}");
    assert_eq!(item_writes[1]["licensync_key"], new);
    assert_eq!(w.fake.get(&w.item).unwrap()["metadata"]["licensync_key"], new.as_str());
    let status = w.run(&["status", "--output", "json"], false).await.ok_json();
    assert_eq!(status["stripe_writes"]["sent"], 3, "{status:#}");
    assert_eq!(status["stripe_writes"]["pending"], 0, "{status:#}");
}

#[tokio::test]
async fn a_key_without_write_permission_stops_the_writes_with_one_message_and_the_run_succeeds() {
    let w = World::new().await;
    w.fake.deny_writes(true);
    let ran = w.run(&["reconcile", "--output", "json"], true).await;
    assert_eq!(ran.code, 0, "{}", ran.all());
    let report = ran.ok_json();
    assert_eq!(report["outcome"], "succeeded");
    assert_eq!(report["counts"]["issued"], 4, "licenses are issued as ever: {report:#}");
    let writes = &report["stripe_writes"];
    let stopped = writes["stopped"].as_str().expect("the pass says why it stopped");
    assert!(stopped.contains("rak_") && stopped.contains("Write"), "{stopped}");
    assert_eq!(writes["pending"], 3, "{report:#}");
    assert_eq!(w.posts(), 1, "the first write goes alone: one refused request");
    assert_eq!(
        ran.stderr.matches("--stripe-write-back needs write permission").count(),
        1,
        "{}",
        ran.stderr
    );
    assert!(w.writes().is_empty());
    let status = w.run(&["status"], false).await;
    assert!(status.stdout.contains("needs write permission"), "{}", status.stdout);

    // Granted: the next run sends every queued write, once.
    w.fake.deny_writes(false);
    let report = w.reconcile(&[]).await;
    assert_eq!(report["stripe_writes"]["sent"], 3, "{report:#}");
    assert_eq!(report["stripe_writes"]["pending"], 0, "{report:#}");
    assert!(w.writes().values().all(|writes| writes.len() == 1), "{:?}", w.writes());
    assert!(w.queue().iter().all(|(_, status)| status == "sent"), "{:?}", w.queue());
}

#[tokio::test]
async fn a_run_killed_between_the_commit_and_the_write_leaves_it_queued_and_the_next_run_sends_it_once() {
    let w = World::new().await;
    // Stripe answers each kind's first write 3 s late: the run is killed
    // once its pages committed, while the first write waits.
    for prefix in ["/v1/subscription_items/", "/v1/payment_intents/", "/v1/invoices/"] {
        w.fake.inject_fault(fake_stripe::Fault {
            path_prefix: prefix.into(),
            kind: fake_stripe::FaultKind::Latency(std::time::Duration::from_secs(3)),
            times: 1,
        });
    }
    let mut cmd = w.command(&["reconcile", "--output", "json"], true);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while w.queue().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "the run never queued its writes");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(w.writes().is_empty(), "killed before Stripe applied anything");
    assert!(
        w.queue().iter().all(|(_, status)| status == "pending"),
        "{:?}",
        w.queue()
    );

    let report = w.reconcile(&[]).await;
    assert_eq!(report["stripe_writes"]["sent"], 3, "{report:#}");
    assert!(w.writes().values().all(|writes| writes.len() == 1), "{:?}", w.writes());
    assert!(w.queue().iter().all(|(_, status)| status == "sent"), "{:?}", w.queue());
}

#[tokio::test]
async fn a_write_whose_answer_was_lost_is_sent_again_with_its_key_and_made_once() {
    let w = World::new().await;
    // Stripe applies the write, and the answer is cut off on the way back.
    w.fake.inject_fault(fake_stripe::Fault {
        path_prefix: "/v1/subscription_items/".into(),
        kind: fake_stripe::FaultKind::TruncatedBody,
        times: 1,
    });
    let report = w.reconcile(&[]).await;
    assert_eq!(report["stripe_writes"]["sent"], 3, "{report:#}");
    let item_posts: Vec<_> = w
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/v1/subscription_items/"))
        .collect();
    assert_eq!(item_posts.len(), 2, "sent again after the lost answer: {item_posts:?}");
    let writes = w.fake.metadata_writes();
    let on_item: Vec<_> = writes.iter().filter(|x| x.object == w.item).collect();
    assert_eq!(
        on_item.len(),
        1,
        "Stripe answered the repeat from the first write: {writes:?}"
    );
    let key = on_item[0].idempotency_key.as_deref().unwrap();
    assert!(key.starts_with("licensync-write-back-"), "{key}");
}

#[tokio::test]
async fn a_connected_accounts_writes_go_to_it_with_its_header() {
    let platform = FakeStripe::start().await;
    let connected = platform.connect_account();
    let (item, _, _) = shop(&connected);
    let db = TestDb::new();
    let mail = tempfile::tempdir().unwrap();
    let account = connected.account_id().unwrap();
    let mut cmd = licensync();
    cmd.args(["reconcile", "--output", "json", "--stripe-account", &account])
        .env("DATABASE_URL", &db.url)
        .env("LICENSYNC_MAIL_URL", format!("file://{}", mail.path().display()))
        .env("STRIPE_API_BASE", platform.base_url())
        .env("STRIPE_API_KEY", platform.api_key())
        .env("LICENSYNC_STRIPE_WRITE_BACK", "true");
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    let ran = Ran::new(&out);
    assert_eq!(ran.code, 0, "{}", ran.all());
    let on_connected = writes_of(&connected);
    assert_eq!(on_connected.len(), 3, "{on_connected:?}");
    assert!(on_connected[&item][0].contains_key("licensync_key"));
    assert!(platform.metadata_writes().is_empty(), "nothing lands on the platform");
    let posts: Vec<_> = platform
        .all_requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert!(
        posts.iter().all(|r| r.account.as_deref() == Some(account.as_str())),
        "{posts:?}"
    );
}

#[tokio::test]
async fn a_dry_run_lists_the_writes_it_would_make_and_makes_none() {
    let w = World::new().await;
    let ran = w.run(&["reconcile", "--dry-run", "--output", "json"], true).await;
    let report = ran.ok_json();
    let planned = report["stripe_writes"]["planned"].as_array().expect("listed").clone();
    let objects: Vec<&str> = planned.iter().map(|p| p["object"].as_str().unwrap()).collect();
    for object in [&w.item, &w.payment_intent, &w.invoice] {
        assert!(objects.contains(&object.as_str()), "{object} missing from {planned:?}");
    }
    assert_eq!(w.posts(), 0);
    assert!(w.queue().is_empty());
    let text = w.run(&["reconcile", "--dry-run"], true).await;
    assert!(
        text.stdout.contains("would write keys onto 3 objects"),
        "{}",
        text.stdout
    );
}
