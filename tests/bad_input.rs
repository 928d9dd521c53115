//! Issue 11, part 4, end to end: a fake Stripe account full of hostile data
//! (customer names with CR/LF, NUL, bidi marks and emoji, emails with
//! unicode or CRLF, a 10k-character product name, 500 metadata keys,
//! quantities 0 and past `i32::MAX`, subscription items listed twice, a
//! status this version does not know, timestamps at the extremes) is
//! reconciled by the real binary: the run succeeds, the good grants are
//! issued, every skipped grant has a reason naming its Stripe object,
//! nothing wrong is issued, and a second run changes nothing.
//!
//! No generated cases here (the property tests live in
//! `src/tests/catalog_properties.rs` and `src/tests/stripe_properties.rs`): each scenario
//! is one fixed account, two or three runs of the binary.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, Utc};
use common::{Ran, TestDb, licensync};
use fake_stripe::{CheckoutSpec, FakeStripe, InvoiceSpec, SubscriptionSpec};
use serde_json::{Value, json};

const DAY: i64 = 86_400;

/// One database and file outbox reconciling one fake account.
struct World {
    db: TestDb,
    fake: FakeStripe,
    mail: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let fake = FakeStripe::start().await;
        // The binary runs on the wall clock.
        fake.set_now(Utc::now().timestamp());
        World {
            db: TestDb::new(),
            fake,
            mail: tempfile::tempdir().unwrap(),
        }
    }

    async fn run(&self, args: &[&str]) -> Ran {
        let mut cmd = licensync();
        cmd.args(args)
            .env("DATABASE_URL", &self.db.url)
            .env("LICENSYNC_MAIL_URL", format!("file://{}", self.mail.path().display()))
            .env("STRIPE_API_BASE", self.fake.base_url())
            .env("STRIPE_API_KEY", self.fake.api_key());
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .expect("running the licensync binary");
        Ran::new(&out)
    }

    async fn reconcile(&self) -> Ran {
        self.run(&["reconcile", "--full", "--output", "json", "--report-actions", "1000"])
            .await
    }

    /// `licensync licenses list --output json`, by `source_id`.
    async fn licenses(&self) -> BTreeMap<String, Value> {
        let ran = self.run(&["licenses", "list", "--output", "json"]).await;
        assert_eq!(ran.code, 0, "{}", ran.all());
        let list: Vec<Value> = serde_json::from_str(&ran.stdout).unwrap();
        let by_source: BTreeMap<String, Value> = list
            .iter()
            .map(|l| (l["source_id"].as_str().unwrap().to_owned(), l.clone()))
            .collect();
        assert_eq!(by_source.len(), list.len(), "one license per grant");
        by_source
    }

    /// The text of every `.eml` file written so far.
    fn emails(&self) -> Vec<String> {
        std::fs::read_dir(self.mail.path())
            .map(|dir| {
                dir.map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `{stripe_object: [reasons]}` of a report's skips.
fn skips(report: &Value) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in report["skipped"].as_array().expect("skipped is an array") {
        let object = s["stripe_object"].as_str().expect("every skip names a Stripe object");
        let reason = s["reason"].as_str().expect("every skip has a reason");
        assert!(!reason.trim().is_empty(), "{s}");
        map.entry(object.to_owned()).or_default().push(reason.to_owned());
    }
    map
}

fn reason_of<'a>(skips: &'a BTreeMap<String, Vec<String>>, object: &str) -> &'a str {
    match skips.get(object).map(Vec::as_slice) {
        Some([reason]) => reason,
        other => panic!("expected one skip naming {object}, got {other:?} in {skips:#?}"),
    }
}

/// The hostile customers, by what is wrong with them.
struct Customers {
    crlf_name: String,
    nul_name: String,
    bidi_name: String,
    emoji: String,
    crlf_email: String,
    blank: String,
}

fn customers(f: &FakeStripe) -> Customers {
    Customers {
        crlf_name: f.create_customer(Some("ann@example.test"), Some("Ann\r\nBcc: eve@evil.test")),
        nul_name: f.create_customer(Some("nul@example.test"), Some("Nul\u{0}Byte")),
        bidi_name: f.create_customer(Some("rtl@example.test"), Some("\u{202e}gnp.exe\u{200f} Mallory")),
        emoji: f.create_customer(
            Some("zo\u{eb}@ex\u{e4}mple.test"),
            Some("\u{1f469}\u{200d}\u{1f4bb}\u{1f980} Zo\u{eb}"),
        ),
        crlf_email: f.create_customer(Some("eve@example.test\r\nBcc: x@evil.test"), Some("Eve")),
        blank: f.create_customer(Some("   "), Some(" \t ")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_account_issues_the_good_grants_skips_the_rest_by_name_and_converges() {
    let w = World::new().await;
    let f = &w.fake;
    let now = f.now();
    let c = customers(f);

    // The catalog: a plain licensed product, a 10k-character name with 500
    // metadata keys, unicode metadata, a misconfigured product, a per-unit
    // limit that overflows with quantity 2, and a price type Stripe may add.
    let pro = f.create_product("Pro", &[("product_id", "pro"), ("hwid_limit", "2"), ("ip_limit", "3")]);
    let pro_monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    let pro_yearly = f.create_price(&pro, Some("year"), 10_000, &[("hwid_limit", "\u{3000}5\u{a0}")]);
    let long_name = "N".repeat(10_000);
    let mut many: Vec<(String, String)> = (0..500)
        .map(|i| {
            (
                format!("k{i:03}_\u{e9}\u{1f980}"),
                format!("v\u{0}\r\n{}", "9".repeat(i % 50)),
            )
        })
        .collect();
    many.push(("product_id".into(), " long , long,long.v2 ".into()));
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let long = f.create_product(&long_name, &many);
    let long_once = f.create_price(&long, None, 500, &[]);
    let broken = f.create_product(
        "Broken",
        &[
            ("product_id", "broken"),
            ("hwid_limit", "\u{ff12}"),
            ("Product_ID", "x y"),
        ],
    );
    let broken_once = f.create_price(&broken, None, 500, &[]);
    let huge = f.create_product("Huge", &[("product_id", "huge"), ("hwid_limit", "2147483647")]);
    let huge_once = f.create_price(&huge, None, 500, &[]);
    let novel = f.create_product("Novel \u{202e}\u{0}", &[("product_id", "novel")]);
    let novel_once = f.create_price(&novel, None, 500, &[]);
    f.update(&novel_once, |p| p["type"] = "tiered_usage_v9".into());
    let shirt = f.create_product("Shirt", &[("size", "xl"), ("hwid_limit", "lots")]);
    let shirt_once = f.create_price(&shirt, None, 500, &[]);

    let subscribe = |customer: &str, items: Vec<(String, i64)>| {
        f.create_subscription(SubscriptionSpec {
            customer: customer.to_owned(),
            items,
            ..SubscriptionSpec::default()
        })
    };
    // Good subscriptions, with hostile customers.
    let emoji_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1)]);
    let crlf_sub = subscribe(&c.crlf_name, vec![(pro_monthly.clone(), 3)]);
    let nul_sub = subscribe(&c.nul_name, vec![(pro_yearly.clone(), 1)]);
    let bidi_sub = subscribe(&c.bidi_name, vec![(pro_monthly.clone(), 1)]);
    let blank_sub = subscribe(&c.blank, vec![(pro_monthly.clone(), 1)]);
    // Two items whose list says `has_more`: paging them lists one twice.
    let twice_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1), (pro_yearly.clone(), 2)]);
    f.update(&twice_sub.id, |s| s["items"]["has_more"] = true.into());
    // A period that ends on 9999-12-31, and one two days before the end of
    // chrono's range (at its very end, see the ignored test below).
    let far_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1)]);
    f.update(&far_sub.item_ids[0], |i| {
        i["current_period_end"] = 253_402_300_799i64.into()
    });
    let chrono_end = DateTime::<Utc>::MAX_UTC.timestamp() - 2 * DAY;
    let end_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1)]);
    f.update(&end_sub.item_ids[0], |i| i["current_period_end"] = chrono_end.into());
    // Bad ones: quantities 0, past i32::MAX and u64::MAX, an unknown
    // status, and periods that ended at the epoch and before it.
    let zero_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1)]);
    f.update(&zero_sub.item_ids[0], |i| i["quantity"] = 0.into());
    let past_i32_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1)]);
    f.update(&past_i32_sub.item_ids[0], |i| {
        i["quantity"] = (i64::from(i32::MAX) + 1).into()
    });
    let u64_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1)]);
    f.update(&u64_sub.item_ids[0], |i| i["quantity"] = u64::MAX.into());
    let unknown_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1)]);
    f.update(&unknown_sub.id, |s| s["status"] = "on_hold".into());
    let epoch_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1)]);
    f.update(&epoch_sub.item_ids[0], |i| {
        i["current_period_start"] = 0.into();
        i["current_period_end"] = 0.into();
        i["created"] = 0.into();
    });
    let before_epoch_sub = subscribe(&c.emoji, vec![(pro_monthly.clone(), 1)]);
    f.update(&before_epoch_sub.item_ids[0], |i| {
        i["current_period_start"] = (-2_208_988_800i64 - 30 * DAY).into();
        i["current_period_end"] = (-2_208_988_800i64).into();
    });
    f.update(&before_epoch_sub.id, |s| {
        s["created"] = (-2_208_988_800i64 - 30 * DAY).into()
    });

    // One-time purchases: a good line, a misconfigured one, an overflowing
    // one and an unlicensed one in one session; a guest with a unicode email
    // bought at the epoch; one bought on 9999-12-31; a session of a mode
    // Stripe may add; a one-off invoice to a CRLF email.
    let mixed = f.create_checkout_session(CheckoutSpec {
        customer: Some(c.bidi_name.clone()),
        lines: vec![
            (long_once.clone(), 1),
            (broken_once.clone(), 1),
            (huge_once.clone(), 2),
            (shirt_once.clone(), 1),
            (novel_once.clone(), 1),
        ],
        ..CheckoutSpec::default()
    });
    let guest = f.create_checkout_session(CheckoutSpec {
        customer_email: Some("g\u{fc}est@ex\u{e4}mple.test".into()),
        lines: vec![(long_once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    f.update(&guest.id, |s| {
        s["created"] = 0.into();
        s["customer_details"]["name"] = "Gu\u{0}est\r\n".into();
    });
    let future = f.create_checkout_session(CheckoutSpec {
        customer: Some(c.crlf_email.clone()),
        lines: vec![(long_once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    f.update(&future.id, |s| s["created"] = 253_402_300_799i64.into());
    let novel_mode = f.create_checkout_session(CheckoutSpec {
        customer: Some(c.emoji.clone()),
        lines: vec![(long_once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    f.update(&novel_mode.id, |s| s["mode"] = "installments".into());
    let invoice = f.create_invoice(InvoiceSpec {
        customer: c.crlf_email.clone(),
        lines: vec![(long_once.clone(), 1)],
        ..InvoiceSpec::default()
    });
    let novel_invoice = f.create_invoice(InvoiceSpec {
        customer: c.emoji.clone(),
        lines: vec![(long_once.clone(), 1)],
        ..InvoiceSpec::default()
    });
    f.update(&novel_invoice.id, |i| i["status"] = "reserved".into());

    // ---- the first run ----
    let first = w.reconcile().await;
    let report = first.report();
    let licenses = w.licenses().await;
    let item = |sub: &fake_stripe::CreatedSubscription, n: usize| sub.item_ids[n].clone();
    let line = |session: &fake_stripe::CreatedSession, n: usize| format!("{}/{}", session.id, session.line_ids[n]);
    let good: BTreeSet<String> = [
        item(&emoji_sub, 0),
        item(&crlf_sub, 0),
        item(&nul_sub, 0),
        item(&bidi_sub, 0),
        item(&blank_sub, 0),
        item(&twice_sub, 0),
        item(&twice_sub, 1),
        item(&far_sub, 0),
        item(&end_sub, 0),
        line(&mixed, 0),
        line(&mixed, 4),
        line(&guest, 0),
        line(&future, 0),
        format!("{}/{}", invoice.id, invoice.line_ids[0]),
    ]
    .into_iter()
    .collect();
    let issued: BTreeSet<String> = licenses.keys().cloned().collect();
    assert_eq!(issued, good, "exactly the good grants are issued: {report:#}");
    assert_eq!(report["counts"]["issued"], good.len(), "{report:#}");
    for (source, license) in &licenses {
        assert_eq!(license["status"], "active", "{source}: {license:#}");
        let quantity = license["quantity"].as_i64().unwrap();
        assert!(quantity >= 1, "{license:#}");
        if let Some(limit) = license["hwid_limit"].as_i64() {
            assert!(limit >= quantity, "per-unit limit x quantity: {license:#}");
        }
    }

    // Every skip names its object, with the reason.
    let skipped = skips(&report);
    let objects: BTreeSet<&str> = skipped.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        zero_sub.item_ids[0].as_str(),
        past_i32_sub.item_ids[0].as_str(),
        u64_sub.item_ids[0].as_str(),
        unknown_sub.id.as_str(),
        broken.as_str(),
        mixed.id.as_str(),
    ]
    .into_iter()
    .collect();
    assert_eq!(objects, expected, "{skipped:#?}");
    assert!(reason_of(&skipped, &zero_sub.item_ids[0]).contains("quantity 0"));
    assert!(reason_of(&skipped, &past_i32_sub.item_ids[0]).contains("2147483648"));
    assert!(reason_of(&skipped, &u64_sub.item_ids[0]).contains(&i64::MAX.to_string()));
    let unknown = reason_of(&skipped, &unknown_sub.id);
    assert!(
        unknown.contains(&unknown_sub.id) && unknown.contains("`on_hold`"),
        "{unknown}"
    );
    let broken_reason = reason_of(&skipped, &broken);
    assert!(
        broken_reason.contains("hwid_limit") && broken_reason.contains(broken.as_str()),
        "{broken_reason}"
    );
    let overflow = reason_of(&skipped, &mixed.id);
    assert!(
        overflow.contains("hwid_limit") && overflow.contains("quantity 2"),
        "{overflow}"
    );

    // What was issued is what Stripe says, hostile text and all.
    let sub_license = |sub: &fake_stripe::CreatedSubscription| &licenses[&sub.item_ids[0]];
    assert_eq!(sub_license(&crlf_sub)["customer_name"], "Ann\r\nBcc: eve@evil.test");
    assert_eq!(
        (
            sub_license(&crlf_sub)["quantity"].clone(),
            sub_license(&crlf_sub)["hwid_limit"].clone()
        ),
        (json!(3), json!(6))
    );
    assert_eq!(
        sub_license(&nul_sub)["hwid_limit"],
        5,
        "the price's padded `hwid_limit` wins"
    );
    assert_eq!(
        sub_license(&bidi_sub)["customer_name"],
        "\u{202e}gnp.exe\u{200f} Mallory"
    );
    assert_eq!(sub_license(&emoji_sub)["customer_email"], "zo\u{eb}@ex\u{e4}mple.test");
    assert_eq!(
        sub_license(&blank_sub)["customer_email"],
        Value::Null,
        "a blank email is none"
    );
    assert_eq!(
        sub_license(&blank_sub)["customer_name"],
        Value::Null,
        "a blank name is none"
    );
    assert_eq!(
        sub_license(&far_sub)["expires_at"],
        rfc3339(DateTime::from_timestamp(253_402_300_799 + DAY, 0).unwrap())
    );
    assert_eq!(
        sub_license(&end_sub)["expires_at"],
        "+262142-12-30T23:59:59Z",
        "{:#}",
        sub_license(&end_sub)
    );
    // PostgreSQL text cannot hold NUL: the source drops it (else one name fails every run).
    assert_eq!(sub_license(&nul_sub)["customer_name"], "NulByte");
    assert_eq!(licenses[&line(&guest, 0)]["customer_name"], "Guest");
    assert_eq!(licenses[&line(&mixed, 4)]["product_name"], "Novel \u{202e}");
    let long_license = &licenses[&line(&mixed, 0)];
    assert_eq!(long_license["product_name"], long_name.as_str());
    assert_eq!(long_license["product_ids"], json!(["long", "long.v2"]));
    assert_eq!(licenses[&line(&mixed, 4)]["product_ids"], json!(["novel"]));
    assert_eq!(
        licenses[&line(&guest, 0)]["customer_email"],
        "g\u{fc}est@ex\u{e4}mple.test"
    );
    assert_eq!(
        sub_license(&emoji_sub)["expires_at"],
        rfc3339(DateTime::from_timestamp(now + 31 * DAY, 0).unwrap())
    );

    // An address with CR/LF is never mailed (its email fails, the run does
    // not); a blank one has no recipient; every other issue is mailed.
    let outbox = common::email_status(&w.db);
    assert_eq!(
        (
            outbox["failed"].clone(),
            outbox["no_recipient"].clone(),
            outbox["pending"].clone()
        ),
        (json!(2), json!(1), json!(0)),
        "{outbox:#}"
    );
    assert_eq!(w.emails().len(), good.len() - 3);
    // No email smuggles a header in through a name or an address.
    for email in w.emails() {
        let headers = email.split("\r\n\r\n").next().unwrap_or_default();
        for header in headers.lines() {
            assert!(
                !header.to_ascii_lowercase().starts_with("bcc:"),
                "an injected header:\n{headers}"
            );
        }
    }

    // ---- the second run changes nothing ----
    let second = w.reconcile().await.report();
    assert_eq!(second["actions"], json!([]), "{second:#}");
    assert_eq!(second["counts"]["unchanged"], good.len(), "{second:#}");
    assert_eq!(skips(&second), skipped, "the same skips, reported again");
    assert_eq!(w.licenses().await, licenses, "the second run changed a license");
}

/// A timestamp chrono cannot hold (Stripe's are `i64`): the run cannot
/// read that subscription and stops, with an error that names it, and
/// the next run after Stripe is fixed converges.
#[tokio::test(flavor = "multi_thread")]
async fn a_timestamp_past_chronos_range_stops_the_run_naming_its_subscription() {
    let w = World::new().await;
    let f = &w.fake;
    let customer = f.create_customer(Some("ann@example.test"), Some("Ann"));
    let pro = f.create_product("Pro", &[("product_id", "pro")]);
    let monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    let sub = f.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(monthly, 1)],
        ..SubscriptionSpec::default()
    });
    f.update(&sub.item_ids[0], |i| i["current_period_end"] = i64::MAX.into());

    let ran = w.reconcile().await;
    assert_ne!(ran.code, 0, "{}", ran.all());
    let output = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        output.contains(&sub.id) && output.contains("current_period_end"),
        "{}",
        ran.all()
    );

    // (The fake's clock is read outside `update`, which holds its lock.)
    let end = f.now() + 30 * DAY;
    f.update(&sub.item_ids[0], |i| i["current_period_end"] = end.into());
    let report = w.reconcile().await.report();
    assert_eq!(report["counts"]["issued"], 1, "{report:#}");
}

/// An expiry past chrono's range saturates at a microsecond, which
/// PostgreSQL stores as it is (it once saturated at `MAX_UTC`, whose
/// nanoseconds the table drops, so every later run planned an `extend` and
/// wrote a ledger row, never converging). Here: a period ending at chrono's last
/// second plus the 24 h grace. An absurd `--grace` does it to every
/// subscription license.
#[tokio::test(flavor = "multi_thread")]
async fn an_expiry_saturated_at_chronos_end_converges() {
    let w = World::new().await;
    let f = &w.fake;
    let customer = f.create_customer(Some("ann@example.test"), Some("Ann"));
    let pro = f.create_product("Pro", &[("product_id", "pro")]);
    let monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    let sub = f.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(monthly, 1)],
        ..SubscriptionSpec::default()
    });
    let last_second = DateTime::<Utc>::MAX_UTC.timestamp();
    f.update(&sub.item_ids[0], |i| i["current_period_end"] = last_second.into());
    let first = w.reconcile().await.report();
    assert_eq!(first["counts"]["issued"], 1, "{first:#}");
    let second = w.reconcile().await.report();
    assert_eq!(second["actions"], json!([]), "{second:#}");
}
