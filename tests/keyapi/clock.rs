//! Expiry that starts at activation, from the batch side (key-api.md
//! "Expiry that starts at activation"): the key API records when a license
//! was first used in `license_clocks`; the next run writes the `expires_at`
//! it implies, with a ledger row, once; a clock started longer ago than the
//! license's days expires it. The real binary against a fake Stripe and a
//! real PostgreSQL database; the clock rows are written as `serve` writes them.

use crate::common::{Ran, TestDb, licensync};
use chrono::{DateTime, SecondsFormat, Utc};
use diesel::prelude::*;
use fake_stripe::{CheckoutSpec, FakeStripe};
use serde_json::Value;

const DAY: i64 = 86_400;

/// Two paid one-time purchases of a product whose 30 days start at
/// activation, with a file outbox.
struct World {
    db: TestDb,
    fake: FakeStripe,
    mail: tempfile::TempDir,
    now: i64,
}

impl World {
    async fn new() -> World {
        let fake = FakeStripe::start().await;
        let now = Utc::now().timestamp();
        fake.set_now(now - 3600);
        let product = fake.create_product(
            "Editor",
            &[
                ("product_id", "editor"),
                ("expiration_days", "30"),
                ("expiration_start", "ACTIVATION"),
            ],
        );
        let once = fake.create_price(&product, None, 4900, &[]);
        for email in ["ada@example.test", "bob@example.test"] {
            let customer = fake.create_customer(Some(email), None);
            fake.create_checkout_session(CheckoutSpec {
                customer: Some(customer),
                lines: vec![(once.clone(), 1)],
                ..CheckoutSpec::default()
            });
        }
        fake.set_now(now);
        World {
            db: TestDb::new(),
            fake,
            mail: tempfile::tempdir().unwrap(),
            now,
        }
    }

    async fn run(&self, args: &[&str]) -> Ran {
        let mut cmd = licensync();
        cmd.args(args)
            .env("DATABASE_URL", &self.db.url)
            .env("LICENSYNC_MAIL_URL", format!("file://{}", self.mail.path().display()))
            .env("STRIPE_API_BASE", self.fake.base_url())
            .env("STRIPE_API_KEY", self.fake.api_key());
        crate::common::run_binary(cmd).await
    }

    /// `reconcile --output json [extra]`, which must succeed.
    async fn reconcile(&self, extra: &[&str]) -> Value {
        let mut args = vec!["reconcile", "--output", "json"];
        args.extend_from_slice(extra);
        self.run(&args).await.report()
    }

    /// The licenses by customer email.
    async fn licenses(&self) -> std::collections::BTreeMap<String, Value> {
        match self.run(&["licenses", "list", "--output", "json"]).await.ok_json() {
            Value::Array(all) => all
                .into_iter()
                .map(|l| (l["customer_email"].as_str().unwrap().to_owned(), l))
                .collect(),
            other => panic!("not an array: {other}"),
        }
    }

    /// What the key API writes at a license's first VALID answer.
    fn start_clock(&self, license_id: i64, at: i64) {
        self.db
            .store
            .batch_execute(&format!(
                "INSERT INTO license_clocks (license_id, started_at) VALUES ({license_id}, to_timestamp({at}))"
            ))
            .unwrap();
    }

    /// A license's ledger: (action, after), oldest first.
    fn ledger(&self, license_id: i64) -> Vec<(String, Value)> {
        use licensync::schema::license_ledger::dsl as l;
        l::license_ledger
            .filter(l::license_id.eq(license_id))
            .order(l::id.asc())
            .select((l::action, l::after))
            .load(&mut self.db.conn())
            .unwrap()
    }
}

fn ts(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn id(license: &Value) -> i64 {
    license["id"].as_i64().unwrap()
}

/// The report's counts that are not zero.
fn nonzero(report: &Value) -> Vec<(String, u64)> {
    report["counts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .filter(|(_, n)| *n != 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_after_a_first_activation_writes_the_expiry_once_and_a_clock_past_its_days_expires() {
    let w = World::new().await;
    let first = w.reconcile(&[]).await;
    assert_eq!(nonzero(&first), [("issued".to_owned(), 2)], "{first:#}");
    let issued = w.licenses().await;
    let (ada, bob) = (&issued["ada@example.test"], &issued["bob@example.test"]);
    for l in [ada, bob] {
        assert_eq!(l["status"], "active", "{l:#}");
        assert_eq!(
            l["expires_at"],
            Value::Null,
            "no expiry before the first activation: {l:#}"
        );
        assert_eq!(l["expiration_start"], "ACTIVATION");
        assert_eq!(l["expiration_days"], 30);
    }

    // A run before any activation changes nothing.
    let quiet = w.reconcile(&[]).await;
    assert_eq!(nonzero(&quiet), [], "{quiet:#}");

    // Ada's application was first answered VALID 5 days ago, Bob's 40 days ago.
    let (ada_started, bob_started) = (w.now - 5 * DAY, w.now - 40 * DAY);
    w.start_clock(id(ada), ada_started);
    w.start_clock(id(bob), bob_started);
    let ledger_before = (w.ledger(id(ada)).len(), w.ledger(id(bob)).len());

    let clocked = w.reconcile(&[]).await;
    assert_eq!(clocked["mode"], "incremental", "{clocked:#}");
    let mut counts = nonzero(&clocked);
    counts.sort();
    assert_eq!(
        counts,
        [("expired".to_owned(), 1), ("shortened".to_owned(), 1)],
        "{clocked:#}"
    );
    let after = w.licenses().await;
    let (ada_now, bob_now) = (&after["ada@example.test"], &after["bob@example.test"]);
    assert_eq!(ada_now["expires_at"], ts(ada_started + 30 * DAY), "{ada_now:#}");
    assert_eq!(ada_now["status"], "active");
    assert_eq!(ada_now["key"], ada["key"]);
    assert_eq!(bob_now["expires_at"], ts(bob_started + 30 * DAY), "{bob_now:#}");
    assert_eq!(
        bob_now["status"], "expired",
        "40 days after activation a 30-day license is over"
    );

    let ada_ledger = w.ledger(id(ada));
    assert_eq!(ada_ledger.len(), ledger_before.0 + 1, "{ada_ledger:#?}");
    let (action, written) = ada_ledger.last().unwrap();
    assert_eq!(action, "shorten", "no expiry counts as the latest one");
    assert_eq!(written["expires_at"], ts(ada_started + 30 * DAY), "{written:#}");
    let bob_ledger = w.ledger(id(bob));
    assert_eq!(bob_ledger.len(), ledger_before.1 + 1, "{bob_ledger:#?}");
    let (action, written) = bob_ledger.last().unwrap();
    assert_eq!(action, "expire");
    assert_eq!(written["expires_at"], ts(bob_started + 30 * DAY), "{written:#}");
    assert_eq!(written["status"], "expired");

    // Written once: neither an incremental nor a full run changes it again.
    for extra in [&[][..], &["--full"][..]] {
        let again = w.reconcile(extra).await;
        let changed: Vec<(String, u64)> = nonzero(&again).into_iter().filter(|(k, _)| k != "unchanged").collect();
        assert_eq!(changed, [], "{extra:?}: {again:#}");
        assert_eq!(w.licenses().await, after, "{extra:?}");
        assert_eq!(w.ledger(id(ada)), ada_ledger, "{extra:?}");
        assert_eq!(w.ledger(id(bob)), bob_ledger, "{extra:?}");
    }
}
