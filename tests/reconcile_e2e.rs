//! End-to-end runs of `licensync reconcile`: the real binary against a fake
//! Stripe and a real PostgreSQL database, checked through
//! `licensync licenses list --output json`, the run report, the database
//! itself and the `.eml` files of the file outbox.
//!
//! The binary runs on the wall clock, so every fake account's clock is set
//! to the wall clock first: periods and purchases are then current.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use common::{Ran, TestDb, licensync};
use diesel::prelude::*;
use fake_stripe::{
    CheckoutSpec, CreatedSession, CreatedSubscription, FakeStripe, Fault, FaultKind, InvoiceSpec, Options,
    SubscriptionSpec,
};
use licensync::domain::RunOutcome;
use serde_json::{Value, json};

const DAY: i64 = 86_400;

/// One database with its file outbox, and the Stripe account it reconciles.
struct World {
    db: TestDb,
    fake: FakeStripe,
    mail: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let fake = FakeStripe::start().await;
        fake.set_now(chrono::Utc::now().timestamp());
        World::on(fake)
    }

    /// Another database (and outbox) reconciling the same account.
    fn on(fake: FakeStripe) -> World {
        World {
            db: TestDb::new(),
            fake,
            mail: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = licensync();
        cmd.args(args)
            .env("DATABASE_URL", &self.db.url)
            .env("LICENSYNC_MAIL_URL", format!("file://{}", self.mail.path().display()));
        cmd
    }

    async fn run(cmd: std::process::Command) -> Ran {
        common::run_binary(cmd).await
    }

    /// Full runs: this file is about what a full scan makes of Stripe's
    /// state (incremental runs have tests/incremental.rs).
    fn reconcile_cmd(&self, fake: &FakeStripe, key: &str, extra: &[&str]) -> std::process::Command {
        let mut args = vec!["reconcile", "--full", "--output", "json"];
        args.extend_from_slice(extra);
        let mut cmd = self.command(&args);
        cmd.env("STRIPE_API_BASE", fake.base_url()).env("STRIPE_API_KEY", key);
        cmd
    }

    /// `licensync reconcile --full --output json [extra]` against this world's account.
    async fn reconcile(&self, extra: &[&str]) -> Ran {
        World::run(self.reconcile_cmd(&self.fake, &self.fake.api_key(), extra)).await
    }

    /// `licensync licenses list --output json`.
    async fn licenses(&self) -> Vec<Value> {
        let ran = World::run(self.command(&["licenses", "list", "--output", "json"])).await;
        assert_eq!(ran.code, 0, "{}", ran.all());
        serde_json::from_str(&ran.stdout).unwrap()
    }

    /// The licenses by `source_id`.
    async fn by_source(&self) -> BTreeMap<String, Value> {
        self.licenses()
            .await
            .into_iter()
            .map(|l| (l["source_id"].as_str().unwrap().to_owned(), l))
            .collect()
    }

    fn count(&self, table: &str) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result::<Count>(&mut self.db.conn())
            .unwrap()
            .n
    }

    /// The text of every `.eml` file written so far.
    fn emails(&self) -> Vec<String> {
        common::eml_files(self.mail.path())
    }

    /// Every issued license was mailed exactly once: one `.eml` per license
    /// with a customer email, each naming its own key.
    async fn assert_one_email_per_license(&self) {
        let emails = self.emails();
        let licenses = self.licenses().await;
        let mailed: Vec<&Value> = licenses.iter().filter(|l| !l["customer_email"].is_null()).collect();
        assert_eq!(emails.len(), mailed.len(), "one .eml per license with an email");
        for l in mailed {
            let key = l["key"].as_str().unwrap();
            let n = emails.iter().filter(|e| e.contains(key)).count();
            assert_eq!(n, 1, "license {key} is in {n} emails");
        }
    }

    /// `pg_dump --data-only` of the database, or of some tables of it.
    fn dump(&self, tables: &[&str]) -> String {
        // Next to the real initdb: the discovered bindir may hold symlinks to the server programs only.
        let bindir = licensync::pg::Binaries::discover().unwrap().bindir;
        let initdb = std::fs::canonicalize(bindir.join("initdb")).unwrap();
        let mut cmd = std::process::Command::new(initdb.with_file_name("pg_dump"));
        cmd.args(["--data-only", "--no-owner"])
            .arg(format!("--dbname={}", self.db.url));
        for t in tables {
            cmd.arg(format!("--table={t}"));
        }
        let out = cmd.output().expect("running pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // pg_dump >= 15.14 fences the dump with a random `\restrict` key per run.
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn ts(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `{source_id: action}` of a report's actions.
fn actions(report: &Value) -> BTreeMap<String, Value> {
    let list = report["actions"].as_array().expect("actions is an array");
    let map: BTreeMap<String, Value> = list
        .iter()
        .map(|a| (a["source_id"].as_str().unwrap().to_owned(), a.clone()))
        .collect();
    assert_eq!(map.len(), list.len(), "one action per license: {report:#}");
    map
}

/// The report's counts, with the zero ones left out.
fn nonzero_counts(report: &Value) -> BTreeMap<String, u64> {
    report["counts"]
        .as_object()
        .expect("counts is an object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn without_unchanged(report: &Value) -> BTreeMap<String, u64> {
    let mut counts = nonzero_counts(report);
    counts.remove("unchanged");
    counts
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A license without what differs between two databases holding the same licenses.
fn portable(license: &Value) -> Value {
    let mut l = license.clone();
    for field in ["id", "key", "created_at", "updated_at"] {
        l.as_object_mut().unwrap().remove(field);
    }
    l
}

/// A small shop: a monthly "pro" subscription and a one-time checkout of
/// two licensed lines (the first with quantity 3), all for one customer.
struct Shop {
    customer: String,
    sub: CreatedSubscription,
    checkout: CreatedSession,
    addon_once: String,
    tool_once: String,
}

impl Shop {
    fn open(f: &FakeStripe) -> Shop {
        let customer = f.create_customer(Some("ada@example.test"), Some("Ada Lovelace"));
        let pro = f.create_product("Pro", &[("product_id", "pro"), ("hwid_limit", "2"), ("ip_limit", "4")]);
        let pro_monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
        let addon = f.create_product("Addon", &[("product_id", "addon"), ("hwid_limit", "1")]);
        let addon_once = f.create_price(&addon, None, 500, &[]);
        let tool = f.create_product("Tool", &[("product_id", "tool,tool-cli")]);
        let tool_once = f.create_price(&tool, None, 2_000, &[]);
        let sub = f.create_subscription(SubscriptionSpec {
            customer: customer.clone(),
            items: vec![(pro_monthly, 1)],
            ..SubscriptionSpec::default()
        });
        let checkout = f.create_checkout_session(CheckoutSpec {
            customer: Some(customer.clone()),
            lines: vec![(addon_once.clone(), 3), (tool_once.clone(), 1)],
            ..CheckoutSpec::default()
        });
        Shop {
            customer,
            sub,
            checkout,
            addon_once,
            tool_once,
        }
    }

    fn item(&self) -> String {
        self.sub.item_ids[0].clone()
    }

    fn addon_line(&self) -> String {
        format!("{}/{}", self.checkout.id, self.checkout.line_ids[0])
    }

    fn tool_line(&self) -> String {
        format!("{}/{}", self.checkout.id, self.checkout.line_ids[1])
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_story_from_purchase_to_refund_keeps_every_key_and_follows_stripe_run_by_run() {
    let w = World::new().await;
    let f = &w.fake;
    let now = f.now();
    let shop = Shop::open(f);
    let (item, addon, tool) = (shop.item(), shop.addon_line(), shop.tool_line());
    let period_end = now + 30 * DAY;

    // Run 1: the purchase issues one license per licensed line.
    let report = w.reconcile(&[]).await.report();
    assert_eq!(nonzero_counts(&report), counts(&[("issued", 3)]), "{report:#}");
    let acts = actions(&report);
    let licenses = w.by_source().await;
    assert_eq!(licenses.len(), 3);
    for (source, cause, kind) in [
        (&item, &shop.sub.id, "subscription_item"),
        (&addon, &shop.checkout.id, "checkout_line"),
        (&tool, &shop.checkout.id, "checkout_line"),
    ] {
        let a = &acts[source.as_str()];
        assert_eq!(a["action"], "issue");
        assert_eq!(a["source_kind"], kind);
        assert_eq!(&a["stripe_object"], cause.as_str());
        assert_eq!(
            a["license_key"],
            licenses[source.as_str()]["key"],
            "the report names the key it issued"
        );
        assert_eq!(licenses[source.as_str()]["status"], "active");
        assert_eq!(licenses[source.as_str()]["source_kind"], kind);
    }
    let keys: BTreeMap<String, Value> = licenses.iter().map(|(s, l)| (s.clone(), l["key"].clone())).collect();
    let sub_license = &licenses[&item];
    assert_eq!(
        sub_license["expires_at"],
        ts(period_end + DAY),
        "period end + 24h grace"
    );
    assert_eq!(sub_license["stripe_subscription_id"], shop.sub.id);
    assert_eq!(sub_license["product_ids"], json!(["pro"]));
    assert_eq!(
        (sub_license["hwid_limit"].clone(), sub_license["ip_limit"].clone()),
        (json!(2), json!(4))
    );
    let addon_license = &licenses[&addon];
    assert_eq!(addon_license["quantity"], 3);
    assert_eq!(addon_license["hwid_limit"], 3, "quantity 3 x hwid_limit 1 seats");
    assert_eq!(
        addon_license["expires_at"],
        Value::Null,
        "one-time purchases are perpetual"
    );
    assert_eq!(addon_license["stripe_subscription_id"], Value::Null);
    assert_eq!(addon_license["customer_email"], "ada@example.test");
    assert_eq!(addon_license["stripe_customer_id"], shop.customer);
    assert_eq!(licenses[&tool]["product_ids"], json!(["tool", "tool-cli"]));
    assert_eq!(licenses[&tool]["hwid_limit"], Value::Null);

    let assert_keys_kept = |licenses: &BTreeMap<String, Value>| {
        for (source, key) in &keys {
            assert_eq!(&licenses[source]["key"], key, "the key of {source} never changes");
        }
    };

    // Run 2: a paid renewal moves the expiry to the new period end + grace.
    f.renew_subscription(&shop.sub.id, true);
    let renewed_end = period_end + 30 * DAY;
    let report = w.reconcile(&[]).await.report();
    assert_eq!(
        nonzero_counts(&report),
        counts(&[("extended", 1), ("unchanged", 2)]),
        "{report:#}"
    );
    let a = &actions(&report)[&item];
    assert_eq!(a["action"], "extend");
    assert_eq!(a["source_kind"], "subscription_item");
    assert_eq!(a["license_key"], keys[&item]);
    assert_eq!(a["stripe_object"], shop.sub.id);
    assert_eq!(a["before"]["expires_at"], ts(period_end + DAY));
    assert_eq!(a["after"]["expires_at"], ts(renewed_end + DAY));
    let licenses = w.by_source().await;
    assert_keys_kept(&licenses);
    assert_eq!(licenses[&item]["status"], "active");
    assert_eq!(licenses[&item]["expires_at"], ts(renewed_end + DAY));

    // Run 3: canceling at period end drops the grace: access ends when the paid period does.
    f.update(&shop.sub.id, |s| {
        s["cancel_at_period_end"] = true.into();
        s["cancel_at"] = renewed_end.into();
    });
    let report = w.reconcile(&[]).await.report();
    assert_eq!(
        nonzero_counts(&report),
        counts(&[("shortened", 1), ("unchanged", 2)]),
        "{report:#}"
    );
    let a = &actions(&report)[&item];
    assert_eq!(a["action"], "shorten");
    assert_eq!(a["license_key"], keys[&item]);
    assert_eq!(a["stripe_object"], shop.sub.id);
    assert_eq!(a["after"]["expires_at"], ts(renewed_end));
    let licenses = w.by_source().await;
    assert_keys_kept(&licenses);
    assert_eq!(licenses[&item]["status"], "active");
    assert_eq!(licenses[&item]["expires_at"], ts(renewed_end));

    // Run 4: the customer changes their mind, then the next renewal's payment
    // fails: access runs to what was paid (the old period end) + 7 days.
    f.update(&shop.sub.id, |s| {
        s["cancel_at_period_end"] = false.into();
        s["cancel_at"] = Value::Null;
    });
    f.renew_subscription(&shop.sub.id, false);
    let paid_through = renewed_end;
    assert_eq!(f.get(&shop.sub.id).unwrap()["status"], "past_due");
    let report = w.reconcile(&[]).await.report();
    assert_eq!(
        nonzero_counts(&report),
        counts(&[("extended", 1), ("unchanged", 2)]),
        "{report:#}"
    );
    let a = &actions(&report)[&item];
    assert_eq!(a["action"], "extend");
    assert_eq!(a["license_key"], keys[&item]);
    assert_eq!(a["after"]["expires_at"], ts(paid_through + 7 * DAY));
    let licenses = w.by_source().await;
    assert_keys_kept(&licenses);
    assert_eq!(licenses[&item]["status"], "active");
    assert_eq!(licenses[&item]["expires_at"], ts(paid_through + 7 * DAY));

    // Run 5: paused collection suspends the license at what was paid.
    f.set_subscription_status(&shop.sub.id, "paused");
    let report = w.reconcile(&[]).await.report();
    assert_eq!(
        nonzero_counts(&report),
        counts(&[("suspended", 1), ("unchanged", 2)]),
        "{report:#}"
    );
    let a = &actions(&report)[&item];
    assert_eq!(a["action"], "suspend");
    assert_eq!(a["license_key"], keys[&item]);
    assert_eq!(a["stripe_object"], shop.sub.id);
    assert_eq!(a["before"]["status"], "active");
    assert_eq!(a["after"]["status"], "suspended");
    let licenses = w.by_source().await;
    assert_keys_kept(&licenses);
    assert_eq!(licenses[&item]["status"], "suspended");
    assert_eq!(licenses[&item]["expires_at"], ts(paid_through));

    // Run 6: a full refund of the one-time purchase revokes the license of
    // every line it paid for (identified by the payment intent), and nothing else.
    let refund = f.refund(shop.checkout.payment_intent.as_deref().unwrap(), None);
    let report = w.reconcile(&[]).await.report();
    // `unchanged` is checked by each_license_counts_once_in_a_run_that_refunds_it.
    assert_eq!(without_unchanged(&report), counts(&[("revoked", 2)]), "{report:#}");
    let acts = actions(&report);
    assert_eq!(acts.len(), 2);
    for line in [&addon, &tool] {
        let a = &acts[line.as_str()];
        assert_eq!(a["action"], "revoke");
        assert_eq!(a["source_kind"], "checkout_line");
        assert_eq!(a["license_key"], keys[line]);
        assert_eq!(a["stripe_object"], refund, "the refund is the cause");
    }
    let licenses = w.by_source().await;
    assert_keys_kept(&licenses);
    assert_eq!(licenses[&addon]["status"], "revoked");
    assert_eq!(licenses[&tool]["status"], "revoked");
    assert_eq!(
        licenses[&item]["status"], "suspended",
        "the subscription's license is not the refunded payment's"
    );
    assert_eq!(licenses[&item]["expires_at"], ts(paid_through));

    // And then nothing changes any more.
    let report = w.reconcile(&[]).await.report();
    assert_eq!(report["actions"], json!([]), "{report:#}");
    assert_eq!(w.by_source().await, licenses);

    // Seven runs, three licenses, three emails: changes never mail again.
    w.assert_one_email_per_license().await;
    assert_eq!(w.emails().len(), 3);
    assert_eq!(w.count("license_ledger"), 3 + 5 + 1, "one ledger row per change");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_right_after_a_run_changes_nothing_and_mails_no_one_again() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    // A one-off invoice, and a second customer with a subscription of two items.
    let bob = f.create_customer(Some("bob@example.test"), None);
    f.create_invoice(fake_stripe::InvoiceSpec {
        customer: bob.clone(),
        lines: vec![(shop.tool_once.clone(), 2)],
        ..Default::default()
    });
    f.create_checkout_session(CheckoutSpec {
        customer_email: Some("guest@example.test".into()),
        lines: vec![(shop.addon_once.clone(), 1)],
        ..CheckoutSpec::default()
    });

    let first = w.reconcile(&[]).await.report();
    assert_eq!(nonzero_counts(&first), counts(&[("issued", 5)]), "{first:#}");
    let licenses = w.licenses().await;
    assert_eq!(licenses.len(), 5);
    w.assert_one_email_per_license().await;
    let tables = ["licenses", "license_ledger", "email_outbox"];
    let dump = w.dump(&tables);
    let (ledger, outbox, runs) = (w.count("license_ledger"), w.count("email_outbox"), w.count("runs"));
    assert_eq!((ledger, outbox, runs), (5, 5, 1));

    for rerun in 1..=2 {
        let report = w.reconcile(&[]).await.report();
        assert_eq!(
            nonzero_counts(&report),
            counts(&[("unchanged", 5)]),
            "rerun {rerun}: {report:#}"
        );
        assert_eq!(report["actions"], json!([]));
        assert_eq!(report["skipped"], json!([]));
        assert_eq!(report["emails_sent"], 0);
        assert_eq!(w.licenses().await, licenses, "rerun {rerun} changed a license");
        assert_eq!(w.count("license_ledger"), ledger);
        assert_eq!(w.count("email_outbox"), outbox);
        assert_eq!(w.dump(&tables), dump, "rerun {rerun} wrote to the license tables");
        assert_eq!(w.count("runs"), runs + rerun, "every run is recorded");
        w.assert_one_email_per_license().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_while_one_holds_the_lock_exits_75_and_does_nothing() {
    let w = World::new().await;
    Shop::open(&w.fake);
    // The first run stalls on its first subscriptions page, holding the lock.
    w.fake.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::Latency(Duration::from_secs(3)),
        times: 1,
    });
    let first = tokio::process::Command::from(w.reconcile_cmd(&w.fake, &w.fake.api_key(), &[]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A guard against a hang, not a timed assertion.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let running = w.db.store.recent_runs(1).unwrap();
        if running.first().is_some_and(|r| r.outcome == RunOutcome::Running) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the first run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let second = w.reconcile(&[]).await;
    let first = first.wait_with_output().await.unwrap();
    let first = Ran {
        code: first.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&first.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&first.stderr).into_owned(),
    };
    assert_eq!(second.code, 75, "{}", second.all());
    assert!(
        second.stderr.contains("another licensync run holds the lock"),
        "{}",
        second.all()
    );
    assert_eq!(nonzero_counts(&first.report()), counts(&[("issued", 3)]));
    let runs = w.db.store.recent_runs(10).unwrap();
    assert_eq!(runs.len(), 1, "the locked-out run records nothing");
    assert_eq!(runs[0].outcome, RunOutcome::Succeeded);
    assert_eq!(w.licenses().await.len(), 3);
    w.assert_one_email_per_license().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_stopped_by_sigterm_exits_1_keeps_what_it_committed_and_the_next_run_converges() {
    let w = World::new().await;
    let shop = Shop::open(&w.fake);
    // The run waits on its subscriptions page; the Checkout Session, read
    // alongside, is applied meanwhile. Then it is stopped.
    w.fake.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::Latency(Duration::from_secs(5)),
        times: 1,
    });
    let child = tokio::process::Command::from(w.reconcile_cmd(&w.fake, &w.fake.api_key(), &[]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // A guard against a hang, not a timed assertion.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while w.count("licenses") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the session's page was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let ran = Ran::new(&child.wait_with_output().await.unwrap());

    assert_eq!(ran.code, 1, "{}", ran.all());
    let report = ran.json();
    assert_eq!(report["outcome"], "failed", "{report:#}");
    assert!(
        report["error"].as_str().is_some_and(|e| e.contains("signal")),
        "{report:#}"
    );
    let runs = w.db.store.recent_runs(10).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].outcome,
        RunOutcome::Failed,
        "recorded as failed, not left running"
    );
    let licenses = w.by_source().await;
    assert!(
        licenses.contains_key(&shop.addon_line()) && licenses.contains_key(&shop.tool_line()),
        "the page committed before the signal stays: {licenses:#?}"
    );
    assert!(
        !licenses.contains_key(&shop.item()),
        "the page that arrived after the signal is not applied"
    );

    // What the stopped run committed stays; the next run completes it.
    let next = w.reconcile(&[]).await.report();
    assert_eq!(
        nonzero_counts(&next),
        counts(&[("issued", 1), ("unchanged", 2)]),
        "{next:#}"
    );
    assert_eq!(w.licenses().await.len(), 3);
    w.assert_one_email_per_license().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_prints_the_plan_and_leaves_the_database_byte_for_byte_unchanged() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    w.reconcile(&[]).await.report();
    // New purchases that a real run would issue, and a change it would apply.
    let later = f.create_checkout_session(CheckoutSpec {
        customer: Some(shop.customer.clone()),
        lines: vec![(shop.addon_once.clone(), 1), (shop.tool_once.clone(), 2)],
        ..CheckoutSpec::default()
    });
    f.renew_subscription(&shop.sub.id, true);
    let before = w.dump(&[]);
    assert!(before.contains(&shop.sub.id), "the dump holds the data");
    let emails = w.emails().len();

    let report = w.reconcile(&["--dry-run"]).await.report();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["run_id"], Value::Null);
    assert_eq!(
        nonzero_counts(&report),
        counts(&[("issued", 2), ("extended", 1), ("unchanged", 2)]),
        "{report:#}"
    );
    let acts = actions(&report);
    for line in &later.line_ids {
        let a = &acts[&format!("{}/{line}", later.id)];
        assert_eq!(a["action"], "issue");
        assert_eq!(a["source_kind"], "checkout_line");
        assert_eq!(a["license_key"], Value::Null, "no key exists before the license does");
        assert_eq!(a["stripe_object"], later.id);
    }
    let extend = &acts[&shop.item()];
    assert_eq!(extend["action"], "extend");
    assert!(
        extend["license_key"].is_string(),
        "an existing license is named by its key"
    );

    assert_eq!(w.dump(&[]), before, "the dry run wrote to the database");
    assert_eq!(w.emails().len(), emails, "the dry run sent email");

    // What the dry run announced is what a real run then does.
    let real = w.reconcile(&[]).await.report();
    assert_eq!(real["counts"], report["counts"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_takes_no_lock() {
    let w = World::new().await;
    Shop::open(&w.fake);
    // Another run holds the lock for as long as this test wants.
    let lock = w.db.store.try_lock_run().unwrap().expect("the lock is free");
    let locked_out = w.reconcile(&[]).await;
    assert_eq!(locked_out.code, 75, "a real run is locked out: {}", locked_out.all());

    let dry = w.reconcile(&["--dry-run"]).await.report();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(nonzero_counts(&dry), counts(&[("issued", 3)]), "{dry:#}");
    drop(lock);
}

/// Rolls back the newest migration, as a database looks to the next
/// version of licensync before `licensync migrate`.
fn revert_newest_migration(db: &TestDb) {
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let newest = dirs.last().unwrap();
    let name = newest.file_name().unwrap().to_str().unwrap();
    let version = name.split('_').next().unwrap().replace('-', "");
    db.store
        .batch_execute(&std::fs::read_to_string(newest.join("down.sql")).unwrap())
        .unwrap();
    let deleted = diesel::sql_query("DELETE FROM __diesel_schema_migrations WHERE version = $1")
        .bind::<diesel::sql_types::Text, _>(&version)
        .execute(&mut db.conn())
        .unwrap();
    assert_eq!(deleted, 1, "migration {name} was applied as version {version}");
    assert!(db.store.has_pending_migrations().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_on_a_database_with_pending_migrations_exits_2_and_migrates_nothing() {
    let w = World::new().await;
    Shop::open(&w.fake);
    w.reconcile(&[]).await.report();
    revert_newest_migration(&w.db);
    let before = w.dump(&[]);

    let dry = w.reconcile(&["--dry-run"]).await;
    assert_eq!(dry.code, 2, "{}", dry.all());
    assert!(
        dry.stderr.contains("pending migrations") && dry.stderr.contains("licensync migrate"),
        "says what to do: {}",
        dry.all()
    );
    assert_eq!(w.dump(&[]), before, "the dry run wrote to the database");
    assert!(w.db.store.has_pending_migrations().unwrap(), "the dry run migrated");

    // A database never migrated, too.
    let empty = TestDb::empty();
    let mut cmd = w.reconcile_cmd(&w.fake, &w.fake.api_key(), &["--dry-run"]);
    cmd.env("DATABASE_URL", &empty.url);
    let dry = World::run(cmd).await;
    assert_eq!(dry.code, 2, "{}", dry.all());
    assert!(empty.store.has_pending_migrations().unwrap(), "the dry run migrated");

    // A real run applies the migrations first.
    let real = w.reconcile(&[]).await.report();
    assert_eq!(nonzero_counts(&real), counts(&[("unchanged", 3)]), "{real:#}");
    assert!(!w.db.store.has_pending_migrations().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misconfigured_product_is_skipped_with_its_key_named_and_its_license_left_alone() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    let pro = f.get(&shop.sub.id).unwrap()["items"]["data"][0]["price"]["product"]
        .as_str()
        .unwrap()
        .to_owned();
    w.reconcile(&[]).await.report();
    let before = w.by_source().await;

    // The metadata breaks; Stripe meanwhile renews, which would extend the license.
    f.update(&pro, |p| p["metadata"]["hwid_limit"] = "lots".into());
    f.renew_subscription(&shop.sub.id, true);
    // A healthy purchase in the same run still issues.
    let other = f.create_checkout_session(CheckoutSpec {
        customer: Some(shop.customer.clone()),
        lines: vec![(shop.tool_once.clone(), 1)],
        ..CheckoutSpec::default()
    });

    let report = w.reconcile(&[]).await.report();
    assert_eq!(
        nonzero_counts(&report),
        // The skipped grant's license is one of the unchanged ones.
        counts(&[("issued", 1), ("skipped", 1), ("unchanged", 3)]),
        "{report:#}"
    );
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    let reason = skipped[0]["reason"].as_str().unwrap();
    assert!(reason.contains(&pro), "the reason names the product: {reason}");
    assert!(reason.contains("hwid_limit"), "the reason names the key: {reason}");
    let acts = actions(&report);
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[&format!("{}/{}", other.id, other.line_ids[0])]["action"], "issue");

    let after = w.by_source().await;
    assert_eq!(
        after[&shop.item()],
        before[&shop.item()],
        "the license is left exactly as it was"
    );
    assert_eq!(after.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_mode_key_refuses_a_database_of_test_mode_licenses_unless_allowed() {
    let w = World::new().await;
    Shop::open(&w.fake);
    w.reconcile(&[]).await.report();
    let test_licenses = w.licenses().await;
    assert!(test_licenses.iter().all(|l| l["livemode"] == false));

    let live_key = "rk_live_51LiveKeyForTheE2eTests0123456789";
    let live = FakeStripe::start_with(Options {
        api_key: live_key.into(),
        ..Options::default()
    })
    .await;
    live.set_now(chrono::Utc::now().timestamp());
    let buyer = live.create_customer(Some("live@example.test"), None);
    let product = live.create_product("Live", &[("product_id", "live")]);
    let price = live.create_price(&product, None, 100, &[]);
    live.create_checkout_session(CheckoutSpec {
        customer: Some(buyer),
        lines: vec![(price, 1)],
        ..CheckoutSpec::default()
    });

    let refused = World::run(w.reconcile_cmd(&live, live_key, &[])).await;
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert!(refused.stderr.contains("--allow-mode-mismatch"), "{}", refused.all());
    assert!(!refused.all().contains(live_key), "the key leaked: {}", refused.all());
    assert_eq!(w.licenses().await, test_licenses, "nothing was done");
    assert_eq!(w.count("runs"), 1, "a refused run records no run");

    let allowed = World::run(w.reconcile_cmd(&live, live_key, &["--allow-mode-mismatch"])).await;
    assert!(!allowed.all().contains(live_key), "the key leaked: {}", allowed.all());
    assert_eq!(nonzero_counts(&allowed.report()), counts(&[("issued", 1)]));
    let licenses = w.licenses().await;
    assert_eq!(licenses.len(), test_licenses.len() + 1);
    assert_eq!(licenses.iter().filter(|l| l["livemode"] == true).count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_outage_fails_the_run_without_half_applying_and_the_next_run_converges() {
    let w = World::new().await;
    let f = &w.fake;
    Shop::open(f);
    // Every attempt of the production retry policy (1 + 5 retries) fails.
    f.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::ServerError(500),
        times: 6,
    });

    let failed = w.reconcile(&[]).await;
    assert_eq!(failed.code, 1, "{}", failed.all());
    let report = failed.json();
    assert_eq!(report["outcome"], "failed");
    let error = report["error"].as_str().expect("the report says why");
    assert!(error.contains("/v1/subscriptions") && error.contains("500"), "{error}");
    let run = &w.db.store.recent_runs(1).unwrap()[0];
    assert_eq!(run.outcome, RunOutcome::Failed);
    assert!(run.finished_at.is_some());
    assert!(run.error.as_deref().is_some_and(|e| e.contains("500")), "{run:?}");
    let served: Vec<u16> = f
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/v1/subscriptions"))
        .map(|r| r.status)
        .collect();
    assert_eq!(served, vec![500; 6], "the run gave up after the retries it is allowed");
    // The lists read alongside the subscriptions (the Checkout Sessions)
    // committed their pages; the failed list applied nothing, and what was
    // applied is whole: one ledger row and one email row per license.
    let during = w.licenses().await;
    assert!(
        during.iter().all(|l| l["source_kind"] != "subscription_item"),
        "nothing of the failed list: {during:#?}"
    );
    assert_eq!(w.count("license_ledger"), during.len() as i64);
    assert_eq!(w.count("email_outbox"), during.len() as i64);

    // The outage is over: the next run ends where a run without it would.
    w.reconcile(&[]).await.report();
    let clean = World::on(f.clone());
    clean.reconcile(&[]).await.report();
    let recovered: Vec<Value> = w.by_source().await.values().map(portable).collect();
    let expected: Vec<Value> = clean.by_source().await.values().map(portable).collect();
    assert_eq!(recovered.len(), 3);
    assert_eq!(recovered, expected);
    let after = w.by_source().await;
    for license in &during {
        let source = license["source_id"].as_str().unwrap();
        assert_eq!(
            after[source]["key"], license["key"],
            "a key issued during the outage stays"
        );
    }
    w.assert_one_email_per_license().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_time_license_expires_when_its_days_have_run_out() {
    let w = World::new().await;
    let f = &w.fake;
    let now = f.now();
    let buyer = f.create_customer(Some("pass@example.test"), None);
    let pass = f.create_product("Day pass", &[("product_id", "day-pass"), ("expiration_days", "1")]);
    let pass_once = f.create_price(&pass, None, 300, &[]);
    let buy = || {
        f.create_checkout_session(CheckoutSpec {
            customer: Some(buyer.clone()),
            lines: vec![(pass_once.clone(), 1)],
            ..CheckoutSpec::default()
        })
    };
    // Bought two days ago and never seen by a run: its day is over, so no
    // dead key is issued (or mailed).
    f.set_now(now - 2 * DAY);
    let stale = buy();
    f.set_now(now);
    let fresh = buy();
    let fresh_line = format!("{}/{}", fresh.id, fresh.line_ids[0]);

    let report = w.reconcile(&[]).await.report();
    assert_eq!(nonzero_counts(&report), counts(&[("issued", 1)]), "{report:#}");
    let licenses = w.by_source().await;
    assert_eq!(
        licenses.keys().collect::<Vec<_>>(),
        vec![&fresh_line],
        "{stale:?} issues nothing"
    );
    let license = &licenses[&fresh_line];
    assert_eq!(license["status"], "active");
    assert_eq!(license["expires_at"], ts(now + DAY));
    assert_eq!(license["expiration_days"], 1);
    assert_eq!(license["expiration_start"], "CREATION");

    // Two days pass for this purchase too (the binary runs on the wall
    // clock, so the purchase moves back instead).
    f.update(&fresh.id, |s| s["created"] = (now - 2 * DAY).into());
    let report = w.reconcile(&[]).await.report();
    assert_eq!(nonzero_counts(&report), counts(&[("expired", 1)]), "{report:#}");
    let a = &actions(&report)[&fresh_line];
    assert_eq!(a["action"], "expire");
    assert_eq!(a["license_key"], license["key"]);
    assert_eq!(a["stripe_object"], fresh.id);
    let expired = &w.by_source().await[&fresh_line];
    assert_eq!(expired["status"], "expired");
    assert_eq!(expired["expires_at"], ts(now - DAY));
    assert_eq!(expired["key"], license["key"]);
    w.assert_one_email_per_license().await;
}

const WRONG_KEY: &str = "sk_test_51ThisIsNotTheKeyTheAccountAccepts42";

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_api_key_stops_the_run_and_never_prints_the_key() {
    let w = World::new().await;
    Shop::open(&w.fake);
    let wrong = WRONG_KEY;
    let ran = World::run(w.reconcile_cmd(&w.fake, wrong, &[])).await;
    assert_ne!(ran.code, 0, "{}", ran.all());
    assert!(
        ran.all().contains("STRIPE_API_KEY"),
        "the error says what to fix: {}",
        ran.all()
    );
    assert!(!ran.all().contains(wrong), "the key leaked: {}", ran.all());
    assert!(w.licenses().await.is_empty());
    for run in w.db.store.recent_runs(10).unwrap() {
        assert!(
            !run.error.unwrap_or_default().contains(wrong),
            "the key leaked into the runs table"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_api_key_exits_2_like_any_configuration_error() {
    let w = World::new().await;
    let ran = World::run(w.reconcile_cmd(&w.fake, WRONG_KEY, &[])).await;
    assert_eq!(ran.code, 2, "{}", ran.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn each_license_counts_once_in_a_run_that_refunds_it() {
    let w = World::new().await;
    let shop = Shop::open(&w.fake);
    w.reconcile(&[]).await.report();

    w.fake.refund(shop.checkout.payment_intent.as_deref().unwrap(), None);
    let report = w.reconcile(&[]).await.report();
    assert_eq!(
        nonzero_counts(&report),
        counts(&[("revoked", 2), ("unchanged", 1)]),
        "each license once: revoked or unchanged, {report:#}"
    );
    let report = w.reconcile(&[]).await.report();
    assert_eq!(nonzero_counts(&report), counts(&[("unchanged", 3)]), "{report:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_fails_part_way_keeps_its_committed_pages_whole_and_the_next_run_completes_it() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    let invoice = f.create_invoice(fake_stripe::InvoiceSpec {
        customer: shop.customer.clone(),
        lines: vec![(shop.tool_once.clone(), 1)],
        ..Default::default()
    });
    let invoice_line = format!("{}/{}", invoice.id, invoice.line_ids[0]);
    // Subscriptions and checkout sessions are read first; the invoice items
    // that bring the one-off invoices fail for good.
    f.inject_fault(Fault {
        path_prefix: "/v1/invoiceitems".into(),
        kind: FaultKind::ServerError(503),
        times: 6,
    });

    let failed = w.reconcile(&[]).await;
    assert_eq!(failed.code, 1, "{}", failed.all());
    let report = failed.json();
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["counts"]["issued"], 3, "the pages before the failure committed");
    let licenses = w.by_source().await;
    assert_eq!(
        licenses.keys().cloned().collect::<Vec<_>>(),
        {
            let mut v = vec![shop.item(), shop.addon_line(), shop.tool_line()];
            v.sort();
            v
        },
        "no license of the page that failed"
    );
    // Each committed license is whole: its ledger row and its email.
    assert_eq!((w.count("license_ledger"), w.count("email_outbox")), (3, 3));
    w.assert_one_email_per_license().await;
    assert_eq!(w.db.store.recent_runs(1).unwrap()[0].outcome, RunOutcome::Failed);

    let report = w.reconcile(&[]).await.report();
    assert_eq!(
        nonzero_counts(&report),
        counts(&[("issued", 1), ("unchanged", 3)]),
        "{report:#}"
    );
    assert_eq!(actions(&report)[&invoice_line]["action"], "issue");
    let after = w.by_source().await;
    for (source, license) in &licenses {
        assert_eq!(&after[source], license, "the committed license stays as it was");
    }
    assert_eq!(after.len(), 4);
    w.assert_one_email_per_license().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_purchase_gives_one_license_however_stripe_shows_it() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    // The subscription was bought through Checkout: the session and its
    // first invoice are the same purchase as the subscription.
    let via_checkout = f.create_checkout_session(CheckoutSpec {
        customer: Some(shop.customer.clone()),
        mode: Some("subscription".into()),
        subscription: Some(shop.sub.id.clone()),
        ..CheckoutSpec::default()
    });
    // A one-time checkout that also made an invoice paid by the same payment.
    let with_invoice = f.create_checkout_session(CheckoutSpec {
        customer: Some(shop.customer.clone()),
        lines: vec![(shop.addon_once.clone(), 1)],
        create_invoice: true,
        ..CheckoutSpec::default()
    });
    assert!(via_checkout.invoice.is_some() && with_invoice.invoice.is_some());

    let report = w.reconcile(&[]).await.report();
    assert_eq!(nonzero_counts(&report), counts(&[("issued", 4)]), "{report:#}");
    let sources: Vec<String> = w.by_source().await.into_keys().collect();
    let mut expected = vec![
        shop.item(),
        shop.addon_line(),
        shop.tool_line(),
        format!("{}/{}", with_invoice.id, with_invoice.line_ids[0]),
    ];
    expected.sort();
    assert_eq!(
        sources, expected,
        "no license for the sessions' invoices or the subscription's session"
    );
    w.assert_one_email_per_license().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_line_without_a_price_is_ignored_with_a_warning_and_the_other_lines_are_licensed() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    let invoice = f.create_invoice(InvoiceSpec {
        customer: shop.customer.clone(),
        lines: vec![(shop.addon_once.clone(), 1), (shop.tool_once.clone(), 1)],
        ..InvoiceSpec::default()
    });
    // Stripe serves a Checkout line and an invoice line without a price (the
    // invoice line with the invoice item behind it).
    let session_line = shop.checkout.line_ids[1].clone();
    f.update(&session_line, |l| l["price"] = Value::Null);
    let invoice_line = invoice.line_ids[1].clone();
    let item = f.get(&invoice_line).unwrap()["parent"]["invoice_item_details"]["invoice_item"]
        .as_str()
        .unwrap()
        .to_owned();
    f.update(&invoice_line, |l| l["pricing"] = Value::Null);
    f.update(&item, |i| i["pricing"] = Value::Null);

    let ran = w.reconcile(&[]).await;
    let report = ran.report();
    let licenses = w.by_source().await;
    let priced = [
        shop.item(),
        shop.addon_line(),
        format!("{}/{}", invoice.id, invoice.line_ids[0]),
    ];
    for grant in &priced {
        assert!(licenses.contains_key(grant), "{grant} was not issued: {report:#}");
    }
    assert_eq!(licenses.len(), priced.len(), "{licenses:#?}");
    assert_eq!(
        nonzero_counts(&report),
        counts(&[("issued", 3)]),
        "ignored, not skipped: {report:#}"
    );
    for line in [&session_line, &invoice_line] {
        let warned = ran
            .stderr
            .lines()
            .any(|l| l.contains("WARN") && l.contains("without a price") && l.contains(line.as_str()));
        assert!(warned, "no warning naming {line}:\n{}", ran.all());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_refund_changes_nothing_and_a_lost_dispute_revokes() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    let other = f.create_checkout_session(CheckoutSpec {
        customer: Some(shop.customer.clone()),
        lines: vec![(shop.tool_once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    let other_line = format!("{}/{}", other.id, other.line_ids[0]);
    w.reconcile(&[]).await.report();
    let before = w.by_source().await;

    let partial = f.refund(shop.checkout.payment_intent.as_deref().unwrap(), Some(100));
    let dispute = f.dispute(other.payment_intent.as_deref().unwrap(), "needs_response");
    let report = w.reconcile(&[]).await.report();
    assert_eq!(
        report["actions"],
        json!([]),
        "an open dispute and a partial refund change nothing"
    );
    let skipped = report["skipped"].as_array().unwrap();
    assert!(
        skipped
            .iter()
            .any(|s| s["stripe_object"] == partial && s["reason"].as_str().unwrap().contains("partial refund")),
        "the partial refund is reported: {report:#}"
    );
    assert_eq!(w.by_source().await, before);

    f.dispute(other.payment_intent.as_deref().unwrap(), "lost");
    let report = w.reconcile(&[]).await.report();
    assert_eq!(without_unchanged(&report)["revoked"], 1, "{report:#}");
    let a = &actions(&report)[&other_line];
    assert_eq!(a["action"], "revoke");
    assert_eq!(a["stripe_object"], dispute);
    assert_eq!(a["license_key"], before[&other_line]["key"]);
    let after = w.by_source().await;
    assert_eq!(after[&other_line]["status"], "revoked");
    assert_eq!(
        after[&shop.addon_line()],
        before[&shop.addon_line()],
        "other purchases of the customer keep theirs"
    );
    assert_eq!(after[&shop.item()], before[&shop.item()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unpaid_subscription_expires_and_comes_back_with_its_key_when_paid() {
    let w = World::new().await;
    let f = &w.fake;
    let now = f.now();
    let shop = Shop::open(f);
    let item = shop.item();
    w.reconcile(&[]).await.report();
    let key = w.by_source().await[&item]["key"].clone();

    f.renew_subscription(&shop.sub.id, false);
    f.set_subscription_status(&shop.sub.id, "unpaid");
    let report = w.reconcile(&[]).await.report();
    let a = &actions(&report)[&item];
    assert_eq!(a["action"], "expire", "{report:#}");
    let license = &w.by_source().await[&item];
    assert_eq!(license["status"], "expired");
    assert_eq!(license["expires_at"], ts(now + 30 * DAY), "expired at what was paid");

    // The customer pays the open invoice: Stripe makes the subscription active again.
    let invoice = f.get(&shop.sub.id).unwrap()["latest_invoice"]
        .as_str()
        .unwrap()
        .to_owned();
    f.update(&invoice, |i| i["status"] = "paid".into());
    f.set_subscription_status(&shop.sub.id, "active");
    let report = w.reconcile(&[]).await.report();
    let a = &actions(&report)[&item];
    assert_eq!(a["action"], "reinstate", "{report:#}");
    assert_eq!(a["license_key"], key);
    let license = &w.by_source().await[&item];
    assert_eq!(license["status"], "active");
    assert_eq!(license["key"], key);
    assert_eq!(license["expires_at"], ts(now + 60 * DAY + DAY));
    w.assert_one_email_per_license().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn email_held_back_without_a_transport_is_sent_once_when_one_is_configured() {
    let w = World::new().await;
    Shop::open(&w.fake);
    let mut no_mail = w.reconcile_cmd(&w.fake, &w.fake.api_key(), &[]);
    no_mail.env("LICENSYNC_MAIL_URL", "none");
    let report = World::run(no_mail).await.report();
    assert_eq!(report["counts"]["issued"], 3);
    assert_eq!(report["emails_sent"], 0);
    assert!(w.emails().is_empty());

    let report = w.reconcile(&[]).await.report();
    assert_eq!(report["actions"], json!([]));
    assert_eq!(
        report["emails_sent"], 3,
        "the held-back emails go out with the next run"
    );
    w.assert_one_email_per_license().await;

    let report = w.reconcile(&[]).await.report();
    assert_eq!(report["emails_sent"], 0);
    w.assert_one_email_per_license().await;
}

// ---- adopting an existing account (--mail-since), Stripe's new values, secrets from files ----

/// The licenses whose key one of the `.eml` files names.
fn mailed_keys(emails: &[String], licenses: &BTreeMap<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = licenses
        .values()
        .map(|l| l["key"].as_str().unwrap().to_owned())
        .filter(|key| emails.iter().any(|e| e.contains(key.as_str())))
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn adopting_an_account_with_mail_since_issues_every_license_and_mails_only_new_purchases() {
    let w = World::new().await;
    let f = &w.fake;
    let wall = f.now();
    // Two months ago: a subscription (still current) and a perpetual one-time purchase.
    f.set_now(wall - 60 * DAY);
    let old_customer = f.create_customer(Some("old@example.test"), Some("Old Customer"));
    let pro = f.create_product("Acme Pro", &[("product_id", "pro"), ("hwid_limit", "2")]);
    let monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    let tool = f.create_product("Acme Tool", &[("product_id", "tool")]);
    let tool_once = f.create_price(&tool, None, 2_000, &[]);
    let old_sub = f.create_subscription(SubscriptionSpec {
        customer: old_customer.clone(),
        items: vec![(monthly.clone(), 1)],
        current_period_start: Some(wall - 10 * DAY),
        current_period_end: Some(wall + 20 * DAY),
        ..SubscriptionSpec::default()
    });
    let old_checkout = f.create_checkout_session(CheckoutSpec {
        customer: Some(old_customer.clone()),
        lines: vec![(tool_once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    // Today: a new subscriber and a new one-time buyer.
    f.set_now(wall);
    let new_customer = f.create_customer(Some("new@example.test"), Some("New Customer"));
    let new_sub = f.create_subscription(SubscriptionSpec {
        customer: new_customer.clone(),
        items: vec![(monthly.clone(), 1)],
        ..SubscriptionSpec::default()
    });
    let new_checkout = f.create_checkout_session(CheckoutSpec {
        customer: Some(new_customer.clone()),
        lines: vec![(tool_once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    let since = ts(wall - DAY);

    // The dry run says how many customers the run would email, before it happens.
    let dry_text = World::run({
        let mut cmd = w.command(&["reconcile", "--full", "--dry-run", "--mail-since", &since]);
        cmd.env("STRIPE_API_BASE", f.base_url())
            .env("STRIPE_API_KEY", f.api_key());
        cmd
    })
    .await;
    assert_eq!(dry_text.code, 0, "{}", dry_text.all());
    assert!(
        dry_text.stdout.contains("this run would email 2 customers")
            && dry_text.stdout.contains("2 new licenses issued silently"),
        "{}",
        dry_text.all()
    );
    let dry_json = w.reconcile(&["--dry-run", "--mail-since", &since]).await.report();
    assert_eq!(dry_json["emails_to_send"], 2, "{dry_json:#}");
    assert_eq!(dry_json["emails_skipped"], 2, "{dry_json:#}");
    assert!(w.licenses().await.is_empty(), "a dry run issues nothing");

    // The first real run issues all four licenses and mails the two new purchases only.
    let report = w.reconcile(&["--mail-since", &since]).await.report();
    assert_eq!(nonzero_counts(&report), counts(&[("issued", 4)]), "{report:#}");
    assert_eq!(report["emails_to_send"], 2);
    assert_eq!(report["emails_skipped"], 2);
    assert_eq!(report["emails_sent"], 2);
    let licenses = w.by_source().await;
    assert_eq!(licenses.len(), 4);
    let key_of = |source_id: &str| licenses[source_id]["key"].as_str().unwrap().to_owned();
    let old_keys = [
        key_of(&old_sub.item_ids[0]),
        key_of(&format!("{}/{}", old_checkout.id, old_checkout.line_ids[0])),
    ];
    let mut new_keys = vec![
        key_of(&new_sub.item_ids[0]),
        key_of(&format!("{}/{}", new_checkout.id, new_checkout.line_ids[0])),
    ];
    new_keys.sort();
    assert_eq!(mailed_keys(&w.emails(), &licenses), new_keys);
    let emails = common::email_status(&w.db);
    assert_eq!(emails["skipped"], 2, "{emails:#}");
    assert_eq!(emails["sent"], 2, "{emails:#}");

    // A purchase made after the cut-off is mailed by a later run; the
    // silent ones stay silent.
    f.advance(3600);
    let later = f.create_checkout_session(CheckoutSpec {
        customer: Some(old_customer.clone()),
        lines: vec![(tool_once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    let report = w.reconcile(&["--mail-since", &since]).await.report();
    assert_eq!(without_unchanged(&report), counts(&[("issued", 1)]), "{report:#}");
    let licenses = w.by_source().await;
    new_keys.push(key_of_in(&licenses, &format!("{}/{}", later.id, later.line_ids[0])));
    new_keys.sort();
    assert_eq!(mailed_keys(&w.emails(), &licenses), new_keys);

    // Support sends a silent one on request.
    let resend = World::run(w.command(&["mail", "resend", &old_keys[0]])).await;
    assert_eq!(resend.code, 0, "{}", resend.all());
    let resent: Vec<String> = w
        .emails()
        .into_iter()
        .filter(|e| e.contains(old_keys[0].as_str()))
        .collect();
    assert_eq!(resent.len(), 1, "the skipped license is sent once on request");
    assert!(resent[0].contains("Acme Pro"), "{}", resent[0]);
    assert!(!w.emails().iter().any(|e| e.contains(old_keys[1].as_str())));
    let emails = common::email_status(&w.db);
    assert_eq!(emails["skipped"], 2, "the issue rows stay skipped: {emails:#}");
}

fn key_of_in(licenses: &BTreeMap<String, Value>, source_id: &str) -> String {
    licenses[source_id]["key"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_status_stripe_added_later_is_skipped_by_name_and_the_run_succeeds() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    w.reconcile(&[]).await.report();
    let existing = w.by_source().await[&shop.item()].clone();

    // Stripe starts sending a status this version does not know, for the
    // existing subscription and for a new one; a third is ordinary.
    f.set_subscription_status(&shop.sub.id, "on_hold");
    let pro_monthly = f.get(&shop.sub.id).unwrap()["items"]["data"][0]["price"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let unknown_new = f.create_subscription(SubscriptionSpec {
        customer: shop.customer.clone(),
        items: vec![(pro_monthly.clone(), 1)],
        status: Some("on_hold".into()),
        ..SubscriptionSpec::default()
    });
    let ordinary = f.create_subscription(SubscriptionSpec {
        customer: shop.customer.clone(),
        items: vec![(pro_monthly, 1)],
        ..SubscriptionSpec::default()
    });

    let report = w.reconcile(&[]).await.report();
    assert_eq!(
        without_unchanged(&report),
        counts(&[("issued", 1), ("skipped", 2)]),
        "{report:#}"
    );
    assert_eq!(actions(&report)[&ordinary.item_ids[0]]["action"], "issue");
    let skipped = report["skipped"].as_array().unwrap();
    for sub in [&shop.sub.id, &unknown_new.id] {
        let skip = skipped
            .iter()
            .find(|s| s["stripe_object"] == sub.as_str())
            .unwrap_or_else(|| panic!("no skip for {sub}: {report:#}"));
        let reason = skip["reason"].as_str().unwrap();
        assert!(
            reason.contains(sub.as_str()) && reason.contains("`on_hold`"),
            "{reason}"
        );
    }
    let licenses = w.by_source().await;
    assert_eq!(
        licenses[&shop.item()],
        existing,
        "the existing license stays exactly as it was"
    );
    assert!(
        !licenses.contains_key(&unknown_new.item_ids[0]),
        "nothing issued for an unknown status"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_at_equal_to_the_period_end_expires_at_the_period_end_without_grace() {
    let w = World::new().await;
    let f = &w.fake;
    let now = f.now();
    let customer = f.create_customer(Some("c@example.test"), None);
    let pro = f.create_product("Pro", &[("product_id", "pro")]);
    let monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    let period_end = now + 30 * DAY;
    let sub = f.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(monthly, 1)],
        current_period_start: Some(now),
        current_period_end: Some(period_end),
        // What current API versions set for "cancel at period end".
        cancel_at: Some(period_end),
        ..SubscriptionSpec::default()
    });
    w.reconcile(&[]).await.report();
    let license = &w.by_source().await[&sub.item_ids[0]];
    assert_eq!(license["expires_at"], ts(period_end), "{license:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_come_from_files_and_never_appear_in_any_output() {
    let w = World::new().await;
    let f = &w.fake;
    Shop::open(f);
    let secrets = tempfile::tempdir().unwrap();
    let key = f.api_key();
    let key_file = secrets.path().join("stripe-key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let db_file = secrets.path().join("database-url");
    std::fs::write(&db_file, format!("{}\n", w.db.url)).unwrap();
    let mail_file = secrets.path().join("mail-url");
    std::fs::write(&mail_file, format!("file://{}\n", w.mail.path().display())).unwrap();
    let from_files = |args: &[&str]| {
        let mut cmd = licensync();
        cmd.args(args)
            .env("STRIPE_API_BASE", f.base_url())
            .env("STRIPE_API_KEY_FILE", &key_file)
            .env("DATABASE_URL_FILE", &db_file)
            .env("LICENSYNC_MAIL_URL_FILE", &mail_file);
        cmd
    };
    let mut printed = String::new();

    // Every command that reads Stripe, and the others, with every secret from a file.
    for args in [
        &["reconcile", "--full", "--output", "json"][..],
        &["reconcile", "--dry-run"][..],
        &["reconcile", "--output", "json"][..],
        &["status"][..],
        &["licenses", "list"][..],
    ] {
        let ran = World::run(from_files(args)).await;
        assert_eq!(ran.code, 0, "{args:?}: {}", ran.all());
        printed.push_str(&ran.all());
    }
    assert_eq!(
        w.licenses().await.len(),
        3,
        "the run read Stripe with the key from the file"
    );
    assert_eq!(w.emails().len(), 3, "and mailed through the URL from the file");

    // A variable and its _FILE together: exit 2, whichever secret it is, and nothing is done.
    for (var, value) in [
        ("STRIPE_API_KEY", key.clone()),
        ("DATABASE_URL", w.db.url.clone()),
        ("LICENSYNC_MAIL_URL", format!("file://{}", w.mail.path().display())),
    ] {
        let mut cmd = from_files(&["reconcile", "--full"]);
        cmd.env(var, &value);
        let ran = World::run(cmd).await;
        assert_eq!(ran.code, 2, "{var} and {var}_FILE: {}", ran.all());
        assert!(ran.stderr.contains(&format!("{var}_FILE")), "{}", ran.all());
        printed.push_str(&ran.all());
    }
    // The daemon reads Stripe too: same rule before it starts.
    let mut daemon = from_files(&["daemon", "--schedule", "*/15 * * * *"]);
    daemon.env("STRIPE_API_KEY", &key);
    let ran = World::run(daemon).await;
    assert_eq!(ran.code, 2, "{}", ran.all());
    printed.push_str(&ran.all());
    // A missing file names the file, not a secret.
    let mut missing = from_files(&["reconcile"]);
    missing.env("STRIPE_API_KEY_FILE", secrets.path().join("absent"));
    let ran = World::run(missing).await;
    assert_eq!(ran.code, 2, "{}", ran.all());
    assert!(ran.stderr.contains("absent"), "{}", ran.all());
    printed.push_str(&ran.all());

    assert!(!printed.contains(&key), "the Stripe key was printed:\n{printed}");
    let password = url::Url::parse(&w.db.url).unwrap().password().map(str::to_owned);
    if let Some(password) = password.filter(|p| p.len() > 3) {
        assert!(!printed.contains(&password), "the database password was printed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purchase_refunded_or_disputed_before_any_run_issues_and_mails_nothing_full_or_incremental() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    let buy = || {
        f.create_checkout_session(CheckoutSpec {
            customer: Some(shop.customer.clone()),
            lines: vec![(shop.tool_once.clone(), 1)],
            ..CheckoutSpec::default()
        })
    };
    let refunded = buy();
    f.refund(refunded.payment_intent.as_deref().unwrap(), None);
    let disputed = buy();
    f.dispute(disputed.payment_intent.as_deref().unwrap(), "lost");

    // A first full run: the shop's purchases are issued; the two taken back
    // are skipped by name, never issued, never mailed.
    let report = w.reconcile(&[]).await.report();
    let licenses = w.by_source().await;
    for taken_back in [&refunded, &disputed] {
        let grant = format!("{}/{}", taken_back.id, taken_back.line_ids[0]);
        assert!(!licenses.contains_key(&grant), "{grant} was issued: {report:#}");
    }
    assert_eq!(
        report["counts"]["revoked"], 0,
        "nothing issued to be revoked: {report:#}"
    );
    let skipped = report["skipped"].to_string();
    assert!(
        skipped.contains("took the payment back before a license was issued"),
        "{report:#}"
    );
    w.assert_one_email_per_license().await;

    // The same between two incremental runs (the events name the session
    // and the refund together).
    let later = buy();
    f.refund(later.payment_intent.as_deref().unwrap(), None);
    let mut cmd = w.command(&["reconcile", "--output", "json"]);
    cmd.env("STRIPE_API_BASE", f.base_url())
        .env("STRIPE_API_KEY", f.api_key());
    let report = World::run(cmd).await.report();
    assert_eq!(report["mode"], "incremental", "{report:#}");
    let grant = format!("{}/{}", later.id, later.line_ids[0]);
    assert!(!w.by_source().await.contains_key(&grant), "{report:#}");
    w.assert_one_email_per_license().await;
}

/// Paths the run requested, with how many times (query strings dropped).
fn requested(f: &FakeStripe) -> BTreeMap<String, usize> {
    let mut paths = BTreeMap::new();
    for r in f.requests() {
        *paths.entry(r.path.clone()).or_default() += 1;
    }
    paths
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_without_one_time_prices_reads_no_checkout_sessions_and_no_invoices() {
    let w = World::new().await;
    let f = &w.fake;
    let pro = f.create_product("Pro", &[("product_id", "pro")]);
    let monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    // A one-time price of a product that is not licensed cannot grant.
    let mug = f.create_product("Mug", &[]);
    let mug_once = f.create_price(&mug, None, 900, &[]);
    let customer = f.create_customer(Some("sub@example.test"), None);
    for _ in 0..3 {
        f.create_subscription(SubscriptionSpec {
            customer: customer.clone(),
            items: vec![(monthly.clone(), 1)],
            past_periods: 12,
            ..SubscriptionSpec::default()
        });
    }
    f.create_checkout_session(CheckoutSpec {
        customer: Some(customer.clone()),
        lines: vec![(mug_once, 1)],
        ..CheckoutSpec::default()
    });
    f.clear_requests();

    let report = w.reconcile(&[]).await.report();
    assert_eq!(nonzero_counts(&report), counts(&[("issued", 3)]));
    let paths = requested(f);
    for list in ["/v1/checkout/sessions", "/v1/invoices", "/v1/invoiceitems"] {
        assert!(!paths.contains_key(list), "{list} was read: {paths:?}");
    }
    assert!(paths.contains_key("/v1/subscriptions"), "{paths:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_off_invoices_are_found_through_their_items_without_paging_renewal_invoices() {
    let w = World::new().await;
    let f = &w.fake;
    let shop = Shop::open(f);
    let pro = f.create_product("Pro yearly", &[("product_id", "pro")]);
    let monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    // 150 subscriptions, each with a year of paid renewal invoices: 1,950
    // invoices Stripe's invoice list would page through.
    for n in 0..150 {
        let customer = f.create_customer(Some(&format!("renewing{n}@example.test")), None);
        f.create_subscription(SubscriptionSpec {
            customer,
            items: vec![(monthly.clone(), 1)],
            past_periods: 12,
            ..SubscriptionSpec::default()
        });
    }
    let one_off = |lines: Vec<(String, i64)>| {
        f.create_invoice(InvoiceSpec {
            customer: shop.customer.clone(),
            lines,
            ..InvoiceSpec::default()
        })
    };
    let paid = one_off(vec![(shop.tool_once.clone(), 1), (shop.addon_once.clone(), 2)]);
    let paid_too = one_off(vec![(shop.addon_once.clone(), 1)]);
    let unpaid = f.create_invoice(InvoiceSpec {
        customer: shop.customer.clone(),
        lines: vec![(shop.tool_once.clone(), 1)],
        status: Some("open".into()),
        ..InvoiceSpec::default()
    });
    f.clear_requests();

    let report = w.reconcile(&[]).await.report();
    let licenses = w.by_source().await;
    for (invoice, lines) in [(&paid, 2), (&paid_too, 1)] {
        let issued = licenses
            .keys()
            .filter(|s| s.starts_with(&format!("{}/", invoice.id)))
            .count();
        assert_eq!(issued, lines, "{} issues a license per line: {report:#}", invoice.id);
    }
    assert!(
        !licenses.keys().any(|s| s.starts_with(&format!("{}/", unpaid.id))),
        "an open invoice issues nothing"
    );
    // 151 subscriptions, the shop's session (2 lines) and 3 invoice lines.
    assert_eq!(report["counts"]["issued"], 151 + 2 + 3, "{report:#}");

    let paths = requested(f);
    assert!(
        !paths.contains_key("/v1/invoices"),
        "the invoice list was paged: {paths:?}"
    );
    assert_eq!(paths.get("/v1/invoiceitems"), Some(&1), "{paths:?}");
    // The items arrive with their invoices expanded: no invoice is
    // retrieved on its own.
    let retrieved: Vec<&String> = paths.keys().filter(|p| p.starts_with("/v1/invoices/")).collect();
    assert!(
        retrieved.is_empty(),
        "one-off invoices were retrieved one by one: {paths:?}"
    );
    // A rerun changes nothing.
    let again = w.reconcile(&[]).await.report();
    assert_eq!(nonzero_counts(&again), counts(&[("unchanged", 151 + 2 + 3)]));
}
