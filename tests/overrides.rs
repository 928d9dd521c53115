//! Operator overrides (licensing-rules §8) end to end: the real binary's
//! `licenses revoke|suspend|pin|release|reissue` against a real PostgreSQL
//! database, then reconcile runs against the fake Stripe while Stripe keeps
//! changing, checked through `licenses list/show --output json`, the run
//! reports, the ledger and the `.eml` files of the file outbox.

mod common;

use chrono::{SecondsFormat, Utc};
use common::{Ran, TestDb, issue_license, licensync};
use diesel::prelude::*;
use fake_stripe::{CheckoutSpec, FakeStripe, SubscriptionSpec};
use serde_json::Value;

/// A subscription (1 seat of 2 devices) and a one-time purchase, created an
/// hour ago (outside the overlap window), with a file outbox.
struct World {
    db: TestDb,
    fake: FakeStripe,
    mail: tempfile::TempDir,
    sub: String,
    item: String,
}

impl World {
    async fn new() -> World {
        let fake = FakeStripe::start().await;
        let now = Utc::now().timestamp();
        fake.set_now(now - 3600);
        let product = fake.create_product("Editor", &[("product_id", "editor"), ("hwid_limit", "2")]);
        let monthly = fake.create_price(&product, Some("month"), 900, &[]);
        let one_time = fake.create_price(&product, None, 4900, &[]);
        let customer = fake.create_customer(Some("ada@example.test"), Some("Ada"));
        let start = now - 10 * 86_400;
        let created = fake.create_subscription(SubscriptionSpec {
            customer: customer.clone(),
            items: vec![(monthly, 1)],
            current_period_start: Some(start),
            current_period_end: Some(start + 30 * 86_400),
            ..Default::default()
        });
        fake.create_checkout_session(CheckoutSpec {
            customer: Some(customer),
            lines: vec![(one_time, 1)],
            ..Default::default()
        });
        fake.set_now(now);
        World {
            db: TestDb::new(),
            fake,
            mail: tempfile::tempdir().unwrap(),
            sub: created.id,
            item: created.item_ids[0].clone(),
        }
    }

    /// The binary with this world's database and outbox, and no Stripe key.
    async fn run(&self, args: &[&str], stripe: bool) -> Ran {
        let mut cmd = licensync();
        cmd.args(args)
            .env("DATABASE_URL", &self.db.url)
            .env("LICENSYNC_MAIL_URL", format!("file://{}", self.mail.path().display()));
        if stripe {
            cmd.env("STRIPE_API_BASE", self.fake.base_url())
                .env("STRIPE_API_KEY", self.fake.api_key());
        }
        let out = tokio::process::Command::from(cmd).output().await.unwrap();
        Ran::new(&out)
    }

    /// `reconcile --output json [extra]`, which must succeed.
    async fn reconcile(&self, extra: &[&str]) -> Value {
        let mut args = vec!["reconcile", "--output", "json"];
        args.extend_from_slice(extra);
        let report = self.run(&args, true).await.ok_json();
        assert_eq!(report["outcome"], "succeeded", "{report:#}");
        report
    }

    /// An operator command with `--output json`, which must succeed.
    async fn operate(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend_from_slice(&["--output", "json"]);
        self.run(&args, false).await.ok_json()
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

    async fn license(&self, kind: &str) -> Value {
        self.licenses()
            .await
            .into_iter()
            .find(|l| l["source_kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} license"))
    }

    fn emails(&self) -> Vec<String> {
        let mut texts: Vec<String> = std::fs::read_dir(self.mail.path())
            .map(|dir| {
                dir.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .map(|p| std::fs::read_to_string(p).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        texts.sort();
        texts
    }
}

fn key_of(license: &Value) -> String {
    license["key"].as_str().unwrap().to_owned()
}

fn count(report: &Value, key: &str) -> u64 {
    report["counts"][key].as_u64().unwrap()
}

fn ledger_rows(db: &TestDb) -> i64 {
    use diesel::dsl::sql;
    diesel::select(sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM license_ledger)",
    ))
    .get_result(&mut db.conn())
    .unwrap()
}

fn expires(license: &Value) -> String {
    license["expires_at"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_and_pinned_seats_survive_full_incremental_since_and_dry_runs() {
    let w = World::new().await;
    let first = w.reconcile(&["--full"]).await;
    assert_eq!(count(&first, "issued"), 2, "{first:#}");
    let one_time = key_of(&w.license("checkout_line").await);
    let sub_license = w.license("subscription_item").await;
    let sub_key = key_of(&sub_license);
    assert_eq!(sub_license["hwid_limit"], 2);

    let revoked = w
        .operate(&[
            "licenses",
            "revoke",
            &one_time,
            "--reason",
            "chargeback abuse",
            "--by",
            "alice",
        ])
        .await;
    assert_eq!(revoked["command"], "revoke");
    let status_change = revoked["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == "status")
        .unwrap_or_else(|| panic!("{revoked:#}"));
    assert_eq!(
        (&status_change["before"], &status_change["after"]),
        (&"active".into(), &"revoked".into())
    );
    let pinned = w
        .operate(&[
            "licenses",
            "pin",
            &sub_key,
            "--hwid-limit",
            "50",
            "--reason",
            "enterprise deal, 50 seats",
        ])
        .await;
    assert_eq!(pinned["override"]["hwid_limit"], 50, "{pinned:#}");
    assert_eq!(w.license("subscription_item").await["hwid_limit"], 50, "acts at once");
    assert_eq!(w.license("checkout_line").await["status"], "revoked", "acts at once");

    // Stripe moves on: three seats bought, then the period renews.
    w.fake.set_now(Utc::now().timestamp());
    w.fake.update(&w.item, |item| item["quantity"] = 3.into());
    w.fake.renew_subscription(&w.sub, true);
    let before_renewal = expires(&sub_license);

    let incremental = w.reconcile(&[]).await;
    assert_eq!(incremental["mode"], "incremental", "{incremental:#}");
    let action = &incremental["actions"][0];
    assert_eq!(action["license_key"], sub_key.as_str(), "{incremental:#}");
    assert_eq!(action["held"]["reason"], "enterprise deal, 50 seats", "{incremental:#}");
    assert_eq!(action["held"]["fields"][0]["field"], "hwid_limit");
    assert_eq!(action["held"]["fields"][0]["stripe"], 6);
    assert_eq!(action["held"]["fields"][0]["kept"], 50);
    let sub_license = w.license("subscription_item").await;
    assert_eq!(sub_license["quantity"], 3, "quantity follows Stripe");
    assert!(
        expires(&sub_license) > before_renewal,
        "expiry follows Stripe: {sub_license:#}"
    );
    assert_eq!(sub_license["hwid_limit"], 50, "the pinned seats stay");
    assert_eq!(w.license("checkout_line").await["status"], "revoked");

    // Another change: a dry run shows the override holding it, writes nothing.
    w.fake.update(&w.item, |item| item["quantity"] = 4.into());
    let dry = w.run(&["reconcile", "--dry-run"], true).await;
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(
        dry.stdout
            .contains("held by override (enterprise deal, 50 seats): hwid_limit 50 (Stripe: 8)"),
        "{}",
        dry.all()
    );
    assert_eq!(
        w.license("subscription_item").await["quantity"],
        3,
        "a dry run writes nothing"
    );

    let since = (Utc::now() - chrono::Duration::minutes(2)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let backfill = w.reconcile(&["--since", &since]).await;
    assert_eq!(backfill["mode"], "since");
    let sub_license = w.license("subscription_item").await;
    assert_eq!(
        (sub_license["quantity"].clone(), sub_license["hwid_limit"].clone()),
        (4.into(), 50.into())
    );

    let full = w.reconcile(&["--full"]).await;
    assert_eq!(
        full["actions"],
        serde_json::json!([]),
        "nothing left to change: {full:#}"
    );
    let licenses = w.licenses().await;
    let one = licenses.iter().find(|l| l["source_kind"] == "checkout_line").unwrap();
    assert_eq!(one["status"], "revoked", "Stripe still says paid; the revocation stays");
    assert_eq!(one["override"]["status"], "revoked");
    assert_eq!(one["override"]["reason"], "chargeback abuse");
    assert_eq!(one["override"]["by"], "alice");
    let sub = licenses
        .iter()
        .find(|l| l["source_kind"] == "subscription_item")
        .unwrap();
    assert_eq!(sub["hwid_limit"], 50);
    assert_eq!(sub["override"]["hwid_limit"], 50);
    assert_eq!(sub["override"]["status"], Value::Null);
    assert!(
        sub["override"]["by"].as_str().is_some_and(|by| !by.is_empty()),
        "the OS user by default"
    );

    let status = w.run(&["status", "--output", "json"], false).await.ok_json();
    assert_eq!(status["licenses_under_override"], 2, "{status:#}");
    let shown = w
        .run(&["licenses", "show", &one_time, "--output", "json"], false)
        .await
        .ok_json();
    let ledger = shown["ledger"].as_array().unwrap();
    let operator_row = ledger.iter().find(|e| e["action"] == "operator_revoke").unwrap();
    assert_eq!(operator_row["reason"], "chargeback abuse");
    assert_eq!(operator_row["operator"], "alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn release_hands_the_seats_back_to_stripe_on_the_next_run() {
    let w = World::new().await;
    w.reconcile(&["--full"]).await;
    let key = key_of(&w.license("subscription_item").await);
    w.operate(&[
        "licenses",
        "pin",
        &key,
        "--hwid-limit",
        "50",
        "--reason",
        "trial of the big plan",
    ])
    .await;
    w.fake.set_now(Utc::now().timestamp());
    w.fake.update(&w.item, |item| item["quantity"] = 3.into());

    let released = w.operate(&["licenses", "release", &key, "--by", "carol"]).await;
    assert_eq!(released["override"], Value::Null, "{released:#}");
    let now = w.license("subscription_item").await;
    assert_eq!(now["hwid_limit"], 2, "at once: what Stripe asked when last seen");
    assert_eq!(now["override"], Value::Null);

    let next = w.reconcile(&[]).await;
    assert_eq!(next["mode"], "incremental");
    let now = w.license("subscription_item").await;
    assert_eq!(
        (now["quantity"].clone(), now["hwid_limit"].clone()),
        (3.into(), 6.into()),
        "{next:#}"
    );
    let again = w.reconcile(&["--full"]).await;
    assert_eq!(again["actions"], serde_json::json!([]), "{again:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reissue_changes_the_key_keeps_the_license_and_mails_the_new_key_once() {
    let w = World::new().await;
    w.reconcile(&["--full"]).await;
    assert_eq!(w.emails().len(), 2, "one email per license");
    let before = w.license("subscription_item").await;
    let old_key = key_of(&before);

    let reissued = w
        .operate(&[
            "licenses",
            "reissue",
            &old_key,
            "--reason",
            "key posted on a forum",
            "--by",
            "dave",
        ])
        .await;
    let new_key = reissued["key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, old_key);
    assert_eq!(reissued["license_id"], before["id"]);
    assert_eq!(reissued["email"]["status"], "sent", "{reissued:#}");
    assert!(reissued["email"]["kind"].as_str().unwrap().starts_with("key_reissued:"));

    let after = w.license("subscription_item").await;
    assert_eq!(after["key"], new_key.as_str());
    for same in ["id", "source_kind", "source_id", "status", "expires_at", "hwid_limit"] {
        assert_eq!(after[same], before[same], "{same} unchanged");
    }
    assert_eq!(after["key_history"][0]["key"], old_key.as_str());
    assert_eq!(after["key_history"][0]["by"], "dave");

    let emails = w.emails();
    assert_eq!(emails.len(), 3, "the new key is mailed once");
    let mailed: Vec<&String> = emails.iter().filter(|e| e.contains(&new_key)).collect();
    assert_eq!(mailed.len(), 1);
    assert!(mailed[0].contains("no longer works"), "{}", mailed[0]);

    // The license server asks about the old key: found, and replaced.
    let shown = w
        .run(&["licenses", "show", &old_key, "--output", "json"], false)
        .await
        .ok_json();
    assert_eq!(shown["id"], before["id"]);
    assert_eq!(shown["key"], new_key.as_str());
    assert_eq!(shown["replaced_key"]["key"], old_key.as_str());
    assert_eq!(shown["replaced_key"]["reason"], "key posted on a forum");
    let text = w.run(&["licenses", "show", &old_key], false).await;
    assert!(
        text.stdout.contains("was replaced") && text.stdout.contains("no longer works"),
        "{}",
        text.all()
    );

    for extra in [&[][..], &["--full"][..]] {
        let next = w.reconcile(extra).await;
        assert_eq!(next["actions"], serde_json::json!([]), "{next:#}");
        assert_eq!(next["emails_sent"], 0);
    }
    assert_eq!(w.emails().len(), 3, "no second email");
    assert_eq!(w.licenses().await.len(), 2, "still one license per grant");
    assert_eq!(w.license("subscription_item").await["key"], new_key.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_commands_exit_2_say_what_to_do_and_write_nothing() {
    let db = TestDb::new();
    let license = issue_license(&db.store, 1, Some("ada@example.test"));
    let key = license.key.as_str();
    let run = |args: &[&str]| {
        let out = licensync()
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("LICENSYNC_MAIL_URL", "none")
            .env("LICENSYNC_OPERATOR", "erin")
            .output()
            .unwrap();
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let list = |db: &TestDb| {
        let out = licensync()
            .args(["licenses", "list", "--output", "json"])
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let refusals: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "licenses",
                "revoke",
                "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE",
                "--reason",
                "abuse",
            ],
            "no license with key or id",
        ),
        (
            vec!["licenses", "revoke", "999999", "--reason", "abuse"],
            "licenses list",
        ),
        (vec!["licenses", "revoke", key], "--reason"),
        (vec!["licenses", "suspend", key, "--reason", "  "], "say why"),
        (vec!["licenses", "reissue", key], "--reason"),
        (vec!["licenses", "pin", key, "--reason", "deal"], "--hwid-limit"),
        (
            vec!["licenses", "pin", key, "--hwid-limit", "-1", "--reason", "deal"],
            "-1",
        ),
        (
            vec![
                "licenses",
                "pin",
                key,
                "--expires-at",
                "next tuesday",
                "--reason",
                "goodwill",
            ],
            "RFC 3339",
        ),
        (vec!["licenses", "release", key], "no override to release"),
    ];
    let ledger = ledger_rows(&db);
    let table = list(&db);
    for (args, says) in &refusals {
        let ran = run(args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.all());
        assert!(ran.stderr.contains(says), "{args:?} should say {says:?}: {}", ran.all());
        assert_eq!(ledger_rows(&db), ledger, "{args:?} wrote a ledger row");
        assert_eq!(list(&db), table, "{args:?} changed a license");
    }

    // A revoked license: pins, suspensions, reissues and a second revoke are refused.
    let ran = run(&["licenses", "revoke", key, "--reason", "abuse"]);
    assert_eq!(ran.code, 0, "{}", ran.all());
    assert!(
        ran.stdout.contains("by erin") && ran.stdout.contains("override    none -> revoked (\"abuse\", by erin)"),
        "LICENSYNC_OPERATOR names the operator: {}",
        ran.all()
    );
    let ledger = ledger_rows(&db);
    let table = list(&db);
    for (args, says) in [
        (
            vec!["licenses", "pin", key, "--hwid-limit", "5", "--reason", "deal"],
            "licenses release",
        ),
        (vec!["licenses", "suspend", key, "--reason", "investigation"], "revoked"),
        (vec!["licenses", "reissue", key, "--reason", "leak"], "revoked"),
        (vec!["licenses", "revoke", key, "--reason", "again"], "already revoked"),
    ] {
        let ran = run(&args);
        assert_eq!(ran.code, 2, "{args:?}: {}", ran.all());
        assert!(ran.stderr.contains(says), "{args:?} should say {says:?}: {}", ran.all());
        assert_eq!(ledger_rows(&db), ledger, "{args:?} wrote a ledger row");
        assert_eq!(list(&db), table, "{args:?} changed a license");
    }
}

#[test]
fn every_command_in_the_support_page_parses() {
    use clap::Parser;
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/overrides.md")).unwrap();
    let commands: Vec<&str> = page
        .lines()
        .filter_map(|line| line.trim().strip_prefix("$ "))
        .filter(|line| line.starts_with("licensync "))
        .collect();
    assert!(commands.len() >= 6, "the page shows the commands: {commands:?}");
    for line in commands {
        let words = shlex::split(line).unwrap_or_else(|| panic!("quoting: {line}"));
        if let Err(e) = licensync::cmd::Cli::try_parse_from(&words) {
            panic!("docs/overrides.md: `{line}` does not parse: {e}");
        }
    }
}
