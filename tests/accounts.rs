//! Several Stripe accounts in one deployment (licensing-rules §9), end to
//! end: the real binary against one fake Stripe serving a platform and its
//! connected accounts (each with its own objects, ids and events, reached
//! through the `Stripe-Account` header) and a real PostgreSQL database.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Ran, TestDb, licensync};
use fake_stripe::{CheckoutSpec, FakeStripe, Fault, FaultKind, SubscriptionSpec};
use serde_json::Value;

/// A database, its file outbox, and the platform whose accounts it reconciles.
struct Deployment {
    db: TestDb,
    mail: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
        Deployment {
            db: TestDb::new(),
            mail: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, fake: &FakeStripe, args: &[&str]) -> std::process::Command {
        let mut cmd = licensync();
        cmd.args(args)
            .env("DATABASE_URL", &self.db.url)
            .env("LICENSYNC_MAIL_URL", format!("file://{}", self.mail.path().display()))
            .env("STRIPE_API_BASE", fake.base_url())
            .env("STRIPE_API_KEY", fake.api_key());
        cmd
    }

    async fn run(cmd: std::process::Command) -> Ran {
        common::run_binary(cmd).await
    }

    /// `licensync reconcile --output json` of `accounts` (`self` or `acct_...`) and `extra` flags.
    fn reconcile_cmd(&self, fake: &FakeStripe, accounts: &[String], extra: &[&str]) -> std::process::Command {
        let mut args = vec!["reconcile", "--output", "json"];
        args.extend_from_slice(extra);
        let mut cmd = self.command(fake, &args);
        cmd.env("LICENSYNC_STRIPE_ACCOUNTS", accounts.join(","));
        cmd
    }

    async fn reconcile(&self, fake: &FakeStripe, accounts: &[String], extra: &[&str]) -> Ran {
        Deployment::run(self.reconcile_cmd(fake, accounts, extra)).await
    }

    async fn licenses(&self, fake: &FakeStripe) -> Vec<Value> {
        let ran = Deployment::run(self.command(fake, &["licenses", "list", "--output", "json"])).await;
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.all()))
    }

    /// Every license as [`common::portable_licenses`] has it.
    async fn portable(&self, fake: &FakeStripe) -> Vec<Value> {
        common::portable_licenses(&self.licenses(fake).await)
    }

    fn emails(&self) -> Vec<String> {
        common::eml_files(self.mail.path())
    }
}

/// A shop in one account: a monthly subscription and a one-time checkout
/// line, bought by `email`. Every shop is built the same way, so the
/// accounts' object ids coincide (`sub_...1` in each): only the account
/// tells their licenses apart.
fn open_shop(f: &FakeStripe, email: &str) {
    let customer = f.create_customer(Some(email), Some(email));
    let pro = f.create_product("Pro", &[("product_id", "pro"), ("hwid_limit", "2")]);
    let monthly = f.create_price(&pro, Some("month"), 1_000, &[]);
    let tool = f.create_product("Tool", &[("product_id", "tool")]);
    let once = f.create_price(&tool, None, 2_000, &[]);
    f.create_subscription(SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly, 1)],
        ..SubscriptionSpec::default()
    });
    f.create_checkout_session(CheckoutSpec {
        customer: Some(customer),
        lines: vec![(once, 1)],
        ..CheckoutSpec::default()
    });
}

/// A platform whose own account and `n` connected accounts each have a shop;
/// the customer of account `label` is `buyer@<label>.test`.
async fn platform(n: usize) -> (FakeStripe, Vec<FakeStripe>) {
    let platform = FakeStripe::start().await;
    platform.set_now(chrono::Utc::now().timestamp());
    open_shop(&platform, "buyer@platform.test");
    let connected: Vec<FakeStripe> = (0..n)
        .map(|_| {
            let c = platform.connect_account();
            open_shop(&c, &format!("buyer@{}.test", c.account_id().unwrap()));
            c
        })
        .collect();
    (platform, connected)
}

fn ids(connected: &[FakeStripe]) -> Vec<String> {
    connected.iter().map(|c| c.account_id().unwrap()).collect()
}

/// The report's entry for `account` (`None`: the key's own).
fn entry<'a>(report: &'a Value, account: Option<&str>) -> &'a Value {
    report["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["stripe_account"].as_str() == account)
        .unwrap_or_else(|| panic!("no account {account:?} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn connected_accounts_and_the_platforms_own_reconcile_into_one_database_without_mixing() {
    let (platform, connected) = platform(2).await;
    let d = Deployment::new();
    let mut accounts = vec!["self".to_owned()];
    accounts.extend(ids(&connected));

    // `--report-actions` is the whole run's, shared out among the accounts.
    let report = d
        .reconcile(&platform, &accounts, &["--report-actions", "3"])
        .await
        .report();
    assert_eq!(report["accounts"].as_array().unwrap().len(), 3, "{report:#}");
    assert_eq!(report["counts"]["issued"], 6, "{report:#}");
    for account in [None, Some(accounts[1].as_str()), Some(accounts[2].as_str())] {
        let e = entry(&report, account);
        assert_eq!(e["outcome"], "succeeded", "{e:#}");
        assert_eq!(e["mode"], "full", "no cursor yet: {e:#}");
        assert_eq!(e["counts"]["issued"], 2, "{e:#}");
        assert_eq!(
            (e["actions"].as_array().unwrap().len(), e["actions_omitted"].as_u64()),
            (1, Some(1)),
            "{e:#}"
        );
    }
    // Each connected account was read through its own header, with the
    // platform's key; the platform's own account without one.
    for c in &connected {
        let requests = c.requests();
        assert!(!requests.is_empty());
        assert!(requests.iter().all(|r| r.status == 200), "{requests:?}");
    }
    assert!(!platform.requests().is_empty());

    // A license never carries another account's customer, though the ids coincide.
    let licenses = d.licenses(&platform).await;
    assert_eq!(licenses.len(), 6);
    let mut by_account: BTreeMap<Option<String>, Vec<&Value>> = BTreeMap::new();
    for l in &licenses {
        by_account
            .entry(l["stripe_account"].as_str().map(str::to_owned))
            .or_default()
            .push(l);
    }
    assert_eq!(by_account.len(), 3);
    for (account, ls) in &by_account {
        let expected = format!("buyer@{}.test", account.as_deref().unwrap_or("platform"));
        assert_eq!(ls.len(), 2);
        for l in ls {
            assert_eq!(l["customer_email"], expected.as_str(), "{l:#}");
        }
    }
    let sources: BTreeSet<&str> = licenses.iter().map(|l| l["source_id"].as_str().unwrap()).collect();
    assert_eq!(sources.len(), 2, "the three accounts' object ids coincide: {sources:?}");
    // One email per license, to its own account's customer.
    let emails = d.emails();
    assert_eq!(emails.len(), 6);
    for l in &licenses {
        let key = l["key"].as_str().unwrap();
        let mail: Vec<&String> = emails.iter().filter(|m| m.contains(key)).collect();
        assert_eq!(mail.len(), 1);
        assert!(mail[0].contains(l["customer_email"].as_str().unwrap()));
    }

    // `licenses list --account` and `status` break the figures down by account.
    let one = Deployment::run(d.command(
        &platform,
        &["licenses", "list", "--account", &accounts[1], "--output", "json"],
    ))
    .await
    .ok_json();
    assert_eq!(one.as_array().unwrap().len(), 2);
    let own = Deployment::run(d.command(
        &platform,
        &["licenses", "list", "--account", "self", "--output", "json"],
    ))
    .await
    .ok_json();
    assert!(own.as_array().unwrap().iter().all(|l| l["stripe_account"].is_null()));
    let status = Deployment::run(d.command(&platform, &["status", "--output", "json"]))
        .await
        .ok_json();
    let per_account = status["accounts"].as_array().unwrap();
    assert_eq!(per_account.len(), 3, "{status:#}");
    for a in per_account {
        assert_eq!(a["licenses"]["active"], 2, "{a:#}");
        assert_eq!(a["last_run"]["outcome"], "succeeded", "{a:#}");
        assert!(a["cursor"]["value"].is_string(), "each account has its cursor: {a:#}");
    }
    let text = Deployment::run(d.command(&platform, &["status"])).await;
    assert!(text.stdout.contains("By account:"), "{}", text.all());

    // A rerun changes nothing in any account and mails no one again; each
    // account reads its own events from its own cursor.
    let again = d.reconcile(&platform, &accounts, &[]).await.report();
    for account in [None, Some(accounts[1].as_str()), Some(accounts[2].as_str())] {
        let e = entry(&again, account);
        assert_eq!(e["mode"], "incremental", "{e:#}");
        let changed: u64 = e["counts"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "unchanged")
            .map(|(_, v)| v.as_u64().unwrap())
            .sum();
        assert_eq!(changed, 0, "{e:#}");
    }
    assert_eq!(d.emails().len(), 6);
    let keys: Vec<&Value> = licenses.iter().map(|l| &l["key"]).collect();
    let after = d.licenses(&platform).await;
    assert_eq!(after.iter().map(|l| &l["key"]).collect::<Vec<_>>(), keys);

    // An event in one connected account touches that account only.
    let c = &connected[0];
    let account = c.account_id().unwrap();
    let sub = after
        .iter()
        .find(|l| l["stripe_account"] == account.as_str() && !l["stripe_subscription_id"].is_null())
        .map(|l| l["stripe_subscription_id"].as_str().unwrap().to_owned())
        .unwrap();
    c.set_subscription_status(&sub, "canceled");
    let third = d.reconcile(&platform, &accounts, &[]).await.report();
    assert_eq!(entry(&third, Some(&accounts[1]))["counts"]["expired"], 1, "{third:#}");
    assert_eq!(entry(&third, None)["counts"]["expired"], 0, "{third:#}");
    assert_eq!(entry(&third, Some(&accounts[2]))["counts"]["expired"], 0, "{third:#}");
    let expired: Vec<Value> = d
        .licenses(&platform)
        .await
        .into_iter()
        .filter(|l| l["status"] == "expired")
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["stripe_account"], accounts[1].as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn one_account_failing_never_stops_the_others_and_the_report_names_it() {
    let (platform, connected) = platform(3).await;
    let d = Deployment::new();
    let mut accounts = vec!["self".to_owned()];
    accounts.extend(ids(&connected));
    // Account 1 disconnected the platform's application: 401. Account 2's
    // subscriptions answer 500 to every attempt of the retry policy.
    connected[0].revoke();
    connected[1].inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::ServerError(500),
        times: 6,
    });

    let metrics = d.mail.path().join("licensync.prom");
    let ran = d
        .reconcile(&platform, &accounts, &["--metrics-file", metrics.to_str().unwrap()])
        .await;
    assert_eq!(ran.code, 1, "any failed account fails the run: {}", ran.all());
    // Alerting sees each account: the failed ones fail, the others succeed.
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for (account, success) in [
        ("own", 1),
        (accounts[1].as_str(), 0),
        (accounts[2].as_str(), 0),
        (accounts[3].as_str(), 1),
    ] {
        let line = format!("licensync_last_run_success{{stripe_account=\"{account}\"}} {success}");
        assert!(prom.lines().any(|l| l == line), "missing `{line}`:\n{prom}");
    }
    assert!(prom.contains(&format!(
        "licensync_licenses{{stripe_account=\"{}\",status=\"active\"}} 2",
        accounts[3]
    )));
    let report = ran.json();
    assert_eq!(report["outcome"], "failed");
    assert_eq!(
        report["failed_accounts"],
        serde_json::json!([accounts[1], accounts[2]]),
        "{report:#}"
    );
    let revoked = entry(&report, Some(&accounts[1]));
    assert_eq!(revoked["outcome"], "failed");
    assert!(revoked["error"].as_str().unwrap().contains("401"), "{revoked:#}");
    assert!(!ran.stdout.contains(&platform.api_key()) && !ran.stderr.contains(&platform.api_key()));
    let storm = entry(&report, Some(&accounts[2]));
    assert!(storm["error"].as_str().unwrap().contains("500"), "{storm:#}");
    // The others were applied in full.
    for account in [None, Some(accounts[3].as_str())] {
        let e = entry(&report, account);
        assert_eq!(e["outcome"], "succeeded", "{e:#}");
        assert_eq!(e["counts"]["issued"], 2, "{e:#}");
    }
    let licenses = d.licenses(&platform).await;
    let of = |account: Option<&str>| {
        licenses
            .iter()
            .filter(|l| l["stripe_account"].as_str() == account)
            .count()
    };
    assert_eq!((of(None), of(Some(&accounts[1])), of(Some(&accounts[3]))), (2, 0, 2));
    assert!(
        of(Some(&accounts[2])) <= 1,
        "the sessions read beside the failed list may commit"
    );
    // The runs table says which account failed and why.
    let status = Deployment::run(d.command(&platform, &["status", "--output", "json"]))
        .await
        .ok_json();
    let failed_run = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stripe_account"] == accounts[2].as_str())
        .unwrap();
    assert_eq!(failed_run["outcome"], "failed");

    // An account left out of the configuration is named on every run: its
    // licenses would otherwise silently stop following Stripe.
    let mut fewer = d.reconcile_cmd(&platform, &accounts[..3], &[]);
    fewer.env("LICENSYNC_LOG_FORMAT", "json");
    let ran = Deployment::run(fewer).await;
    assert!(
        ran.stderr
            .lines()
            .any(|l| l.contains("not configured") && l.contains(&accounts[3])),
        "{}",
        ran.all()
    );

    // The outage is over (the revoked account stays revoked): the storm's
    // account converges, the others change nothing.
    let ran = d.reconcile(&platform, &accounts, &[]).await;
    assert_eq!(ran.code, 1, "{}", ran.all());
    let report = ran.json();
    assert_eq!(
        report["failed_accounts"],
        serde_json::json!([accounts[1]]),
        "{report:#}"
    );
    assert_eq!(entry(&report, Some(&accounts[2]))["outcome"], "succeeded");
    assert_eq!(entry(&report, None)["counts"]["issued"], 0);
    let licenses = d.licenses(&platform).await;
    assert_eq!(
        licenses
            .iter()
            .filter(|l| l["stripe_account"] == accounts[2].as_str())
            .count(),
        2
    );
    assert_eq!(d.emails().len(), 6, "one email per license, none twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_accounts_rate_limit_holds_that_account_only() {
    let (platform, connected) = platform(2).await;
    let d = Deployment::new();
    let mut accounts = vec!["self".to_owned()];
    accounts.extend(ids(&connected));
    // Stripe limits each account on its own. The first account's
    // subscriptions answer 429 with a 5 s Retry-After: its endpoint is held
    // that long, the other two accounts are not.
    let held = &connected[0];
    held.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::TooManyRequests { retry_after_secs: 5 },
        times: 1,
    });

    let ran = d.reconcile(&platform, &accounts, &[]).await;
    assert_eq!(ran.code, 0, "a 429 is waited out, not a failure: {}", ran.all());
    let report = ran.json();
    for account in [None, Some(accounts[1].as_str()), Some(accounts[2].as_str())] {
        let e = entry(&report, account);
        assert_eq!(e["outcome"], "succeeded", "{e:#}");
        assert_eq!(e["counts"]["issued"], 2, "{e:#}");
        let answered_429 = u64::from(account == Some(accounts[1].as_str()));
        assert_eq!(e["stripe_rate_limited"], answered_429, "{e:#}");
    }

    let requests = platform.all_requests();
    let held_id = held.account_id();
    let limited = requests
        .iter()
        .find(|r| r.status == 429)
        .expect("the fault answered 429");
    assert_eq!(limited.account, held_id);
    let resumed = requests
        .iter()
        .find(|r| r.account == held_id && r.path.starts_with("/v1/subscriptions") && r.at > limited.at)
        .expect("the held account read its subscriptions after the hold");
    assert!(
        resumed.at - limited.at >= std::time::Duration::from_millis(4_500),
        "the held account waited out its Retry-After: {:?}",
        resumed.at - limited.at
    );
    // Every request of the other accounts was answered while the first
    // account was still held: its wait slowed none of them.
    let others: Vec<_> = requests.iter().filter(|r| r.account != held_id).collect();
    assert!(others.iter().all(|r| r.status == 200), "{others:?}");
    let last_other = others.iter().map(|r| r.at).max().unwrap();
    assert!(
        last_other < resumed.at,
        "the other accounts finished reading {:?} after the held one resumed",
        last_other - resumed.at
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_shards_run_concurrently_and_together_equal_one_unsharded_run() {
    let (platform, connected) = platform(3).await;
    let accounts = ids(&connected);

    let sharded = Deployment::new();
    let shard = |i: usize| {
        let shard = format!("{i}/2");
        let mut cmd = sharded.reconcile_cmd(&platform, &accounts, &["--shard", &shard]);
        cmd.env("LICENSYNC_LOG_FORMAT", "json");
        Deployment::run(cmd)
    };
    let (first, second) = tokio::join!(shard(0), shard(1));
    let (first, second) = (first.report(), second.report());
    let names = |r: &Value| -> BTreeSet<String> {
        r["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["stripe_account"].as_str().unwrap().to_owned())
            .collect()
    };
    let (a, b) = (names(&first), names(&second));
    assert!(a.is_disjoint(&b), "{a:?} {b:?}");
    assert_eq!(
        a.union(&b).cloned().collect::<BTreeSet<_>>(),
        accounts.iter().cloned().collect()
    );
    assert_eq!(first["shard"], "0/2");
    assert_eq!(first["accounts_configured"], 3);

    let whole = Deployment::new();
    whole.reconcile(&platform, &accounts, &[]).await.report();
    assert_eq!(sharded.portable(&platform).await, whole.portable(&platform).await);
    assert_eq!(sharded.emails().len(), 6);

    // Overlapping shards are safe: while the two shards run again, an
    // unsharded run of the same accounts takes each account only when no
    // shard holds it, and nothing is done twice.
    let more = platform.connect_account();
    open_shop(&more, "late@example.test");
    let mut all = accounts.clone();
    all.push(more.account_id().unwrap());
    let (x, y, z) = tokio::join!(
        Deployment::run(sharded.reconcile_cmd(&platform, &all, &["--shard", "0/2"])),
        Deployment::run(sharded.reconcile_cmd(&platform, &all, &["--shard", "1/2"])),
        Deployment::run(sharded.reconcile_cmd(&platform, &all, &[])),
    );
    for ran in [&x, &y, &z] {
        assert!(ran.code == 0 || ran.code == 75, "{}", ran.all());
    }
    whole.reconcile(&platform, &all, &[]).await.report();
    assert_eq!(sharded.portable(&platform).await, whole.portable(&platform).await);
    assert_eq!(sharded.emails().len(), 8, "one email per license, none twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn brands_with_keys_of_their_own_come_from_the_accounts_file_with_their_own_senders() {
    let platform = FakeStripe::start().await;
    platform.set_now(chrono::Utc::now().timestamp());
    open_shop(&platform, "buyer@brand-a.test");
    let brand_b = platform.add_account("sk_test_brandb_0123456789abcdef");
    open_shop(&brand_b, "buyer@brand-b.test");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.key"), format!("{}\n", platform.api_key())).unwrap();
    std::fs::write(dir.path().join("b.key"), format!("{}\n", brand_b.api_key())).unwrap();
    std::fs::create_dir(dir.path().join("b-templates")).unwrap();
    std::fs::write(
        dir.path().join("b-templates/license.subject.j2"),
        "Your Brand B key for {{ product }}",
    )
    .unwrap();
    let file = dir.path().join("accounts.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[account]]
name = "Brand A"
stripe_api_key_file = "a.key"
mail_from = "Brand A <licenses@brand-a.test>"

[[account]]
name = "Brand B"
stripe_account = "{}"
stripe_api_key_file = "b.key"
mail_from = "Brand B <licenses@brand-b.test>"
mail_templates = "b-templates"
"#,
            brand_b.stripe_account_id()
        ),
    )
    .unwrap();
    let d = Deployment::new();
    let mut cmd = d.command(&platform, &["reconcile", "--output", "json"]);
    // No platform key: each brand's key comes from its file, never from the environment.
    cmd.env_remove("STRIPE_API_KEY").env("LICENSYNC_ACCOUNTS_FILE", &file);
    let report = Deployment::run(cmd).await.report();
    assert_eq!(entry(&report, None)["name"], "Brand A");
    assert_eq!(
        entry(&report, Some(&brand_b.stripe_account_id()))["counts"]["issued"],
        2
    );
    // Brand B's requests carried its own key and no header.
    assert!(brand_b.requests().iter().all(|r| r.status == 200));
    let emails = d.emails();
    assert_eq!(emails.len(), 4);
    for m in &emails {
        let brand = if m.contains("buyer@brand-b.test") { "b" } else { "a" };
        assert!(m.contains(&format!("licenses@brand-{brand}.test")), "{m}");
        assert_eq!(m.contains("Your Brand B key"), brand == "b", "{m}");
    }
    // Support's resend goes out as the license's account sends, too.
    let b_license = d
        .licenses(&platform)
        .await
        .into_iter()
        .find(|l| l["stripe_account"] == brand_b.stripe_account_id().as_str())
        .unwrap();
    let mut resend = d.command(&platform, &["mail", "resend", b_license["key"].as_str().unwrap()]);
    resend
        .env_remove("STRIPE_API_KEY")
        .env("LICENSYNC_ACCOUNTS_FILE", &file);
    let ran = Deployment::run(resend).await;
    assert_eq!(ran.code, 0, "{}", ran.all());
    let emails = d.emails();
    assert_eq!(emails.len(), 5);
    let again: Vec<&String> = emails
        .iter()
        .filter(|m| m.contains(b_license["key"].as_str().unwrap()))
        .collect();
    assert_eq!(again.len(), 2);
    assert!(
        again
            .iter()
            .all(|m| m.contains("licenses@brand-b.test") && m.contains("Your Brand B key"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_account_setting_is_a_usage_error_before_any_request() {
    let (platform, _) = platform(0).await;
    let d = Deployment::new();
    for (accounts, shard, expected) in [
        ("cus_123", None, "is not a Stripe account id"),
        ("acct_1,acct_1", None, "acct_1 is configured twice"),
        ("acct_1", Some("2/2"), "is not a shard"),
    ] {
        let mut args = vec!["reconcile"];
        if let Some(shard) = shard {
            args.extend(["--shard", shard]);
        }
        let mut cmd = d.command(&platform, &args);
        cmd.env("LICENSYNC_STRIPE_ACCOUNTS", accounts);
        let ran = Deployment::run(cmd).await;
        assert_eq!(ran.code, 2, "{}", ran.all());
        assert!(ran.stderr.contains(expected), "{}", ran.all());
    }
    assert!(platform.all_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn test_and_live_mode_are_checked_per_account() {
    let platform = FakeStripe::start().await;
    platform.set_now(chrono::Utc::now().timestamp());
    open_shop(&platform, "buyer@test-brand.test");
    let live = platform.add_account("sk_live_livebrand_0123456789abcdef");
    open_shop(&live, "buyer@live-brand.test");
    let other_test = platform.add_account("sk_test_otherbrand_0123456789abcd");
    open_shop(&other_test, "buyer@other.test");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.key"), platform.api_key()).unwrap();
    let accounts_file = |live_key: &str| {
        std::fs::write(dir.path().join("live.key"), live_key).unwrap();
        let file = dir.path().join("accounts.toml");
        std::fs::write(
            &file,
            format!(
                "[[account]]\nname = \"Test brand\"\nstripe_api_key_file = \"test.key\"\n\n\
                 [[account]]\nname = \"Live brand\"\nstripe_account = \"{}\"\nstripe_api_key_file = \"live.key\"\n",
                live.stripe_account_id()
            ),
        )
        .unwrap();
        file
    };
    let d = Deployment::new();
    let run = |file: std::path::PathBuf| {
        let mut cmd = d.command(&platform, &["reconcile", "--output", "json"]);
        cmd.env_remove("STRIPE_API_KEY").env("LICENSYNC_ACCOUNTS_FILE", file);
        Deployment::run(cmd)
    };
    // A test-mode account and a live-mode one share the database: each is
    // checked against its own licenses only.
    let report = run(accounts_file(&live.api_key())).await.report();
    let live_id = live.stripe_account_id();
    assert_eq!(entry(&report, Some(&live_id))["counts"]["issued"], 2, "{report:#}");
    let licenses = d.licenses(&platform).await;
    for l in &licenses {
        assert_eq!(l["livemode"], l["stripe_account"] == live_id.as_str(), "{l:#}");
    }
    // The live brand's file now holds a test-mode key: that account is
    // refused (its licenses are live), the other goes on.
    let ran = run(accounts_file(&other_test.api_key())).await;
    assert_eq!(ran.code, 1, "{}", ran.all());
    let report = ran.json();
    assert_eq!(report["failed_accounts"], serde_json::json!([live_id]), "{report:#}");
    let refused = entry(&report, Some(&live_id));
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("test-mode key but the database holds live-mode licenses"),
        "{refused:#}"
    );
    assert_eq!(entry(&report, None)["outcome"], "succeeded");
    assert!(
        other_test.requests().iter().all(|r| !r.path.contains("subscriptions")),
        "refused before reading"
    );
    assert_eq!(
        d.licenses(&platform).await.len(),
        4,
        "nothing of the other account was written"
    );
}
