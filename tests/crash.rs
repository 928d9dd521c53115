//! The crash suite (issue 11): `licensync reconcile` is killed with SIGKILL
//! (its whole process group) at many points, then run once to completion,
//! and the database is compared license by license with one that reconciled
//! the same fake Stripe account without ever crashing.
//!
//! Kill points, drawn from a seeded generator (the same seed, the same
//! points):
//! - `request`: right after the fake Stripe answered the run's N-th request
//!   (every request takes 3 ms more, so the kill lands before the next one);
//! - `time`: a random moment of the run, up to a clean run's length;
//! - `delivery`: while the run writes the license emails (file transport),
//!   0 to 3 ms after the K-th `.eml` file appeared;
//! - `midsend`: after the K-th `.eml` file, at the first moment the run's
//!   sender holds a claim (an email claimed and not yet marked sent): the
//!   next run must send it at once, not after the claim's 10-minute lease;
//! - `smtp`: the run sends through an SMTP server (in this file) that
//!   answers each DATA 25 ms late, and is killed 0 to 50 ms after the server
//!   stored its K-th message: mostly while it waits for an answer, its email
//!   claimed; the server has stored that message already (odd ones: the
//!   next run sends it again, with the same Message-ID) or drops it when
//!   the client is gone (even ones: never delivered, the next run sends it).
//!
//! Each kind is tried against full runs of an empty database (an account of
//! about 240 licenses over two pages or more of each list licensync reads:
//! subscriptions in every status, checkouts, invoices, refunds, disputes)
//! and against incremental runs (a copy of the synced database, after
//! renewals, cancellations, refunds and new purchases that the run reads
//! through the event cursor). An episode kills one to three runs in a row
//! (scan kills first: a run killed while it sends has stored its cursor),
//! then runs `licensync reconcile` once more, which must succeed, and checks:
//! - the same grants as the database that never crashed, each with the same
//!   status, expiry, limits, quantity, products, customer and ledger actions;
//! - no grant twice (one license per grant, one `issue` in its ledger, one
//!   `license_issued` outbox row, no key on two licenses), and every key
//!   seen after a kill unchanged at the end;
//! - every license with an address mailed and its outbox row `sent` (rows
//!   without an address `no_recipient`); every email of a license carries
//!   its row's Message-ID: a repeat with the same Message-ID is the outbox's
//!   documented at-worst case (counted, allowed), two Message-IDs for one
//!   license are not; a file cut short by the kill is counted as torn;
//! - no run after a kill exits 75: the dead run's lock died with it.
//!
//! The suite also fails when fewer than 3/4 of its points killed a running
//! licensync, or when no kill while sending left a claimed email behind:
//! the checks would then not have met the crashed-sender case at all.
//!
//! `LICENSYNC_CRASH_POINTS=200` kills 200 runs instead of the default 36,
//! half of them full, half incremental (a point the run ends before is
//! counted as "ended first" and another is drawn, up to twice the count);
//! `LICENSYNC_CRASH_SEED=<u64>` draws another sequence;
//! `LICENSYNC_CRASH_VERBOSE=1` prints every episode. The figures are printed
//! at the end (`cargo test --test crash -- --nocapture`), also when a check
//! fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestDb, licensync};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Int4, Nullable, Text};
use fake_stripe::{CheckoutSpec, FakeStripe, Fault, FaultKind, InvoiceSpec, SubscriptionSpec};
use serde_json::Value;

const DEFAULT_POINTS: usize = 36;
const DEFAULT_SEED: u64 = 0x11c7_a5e5;
const DAY: i64 = 86_400;
/// Added to every Stripe request, so that a kill "after the N-th request"
/// lands before the next one is answered, and runs last long enough to be hit.
const LATENCY: Duration = Duration::from_millis(3);
/// A run that takes longer than this is hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

// ---- seeded choices ---------------------------------------------------------

/// SplitMix64: small, seeded, the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `percent`/100.
    fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")),
    )
}

// ---- the Stripe account -------------------------------------------------------

/// The prices purchases are made of.
struct Catalog {
    editor_monthly: String,
    editor_yearly: String,
    suite_monthly: String,
    suite_once: String,
    pass_once: String,
    shirt_once: String,
}

/// What later scenario steps (the incremental phase) act on.
#[derive(Default)]
struct Purchases {
    subscriptions: Vec<String>,
    /// Payment intents of paid checkouts, not refunded or disputed yet.
    payments: Vec<String>,
}

fn open_catalog(f: &FakeStripe) -> Catalog {
    let editor = f.create_product(
        "Acme Editor",
        &[("product_id", "acme-editor"), ("hwid_limit", "3"), ("ip_limit", "5")],
    );
    let suite = f.create_product(
        "Acme Pro Suite",
        &[
            ("product_id", "acme-pro,acme-cli"),
            ("hwid_limit", "10"),
            ("ip_limit", "0"),
        ],
    );
    let pass = f.create_product(
        "Acme 30-day Pass",
        &[
            ("product_id", "acme-pass"),
            ("hwid_limit", "1"),
            ("expiration_days", "30"),
        ],
    );
    let shirt = f.create_product("Acme T-shirt", &[]);
    Catalog {
        editor_monthly: f.create_price(&editor, Some("month"), 900, &[]),
        editor_yearly: f.create_price(&editor, Some("year"), 9_000, &[("hwid_limit", "5")]),
        suite_monthly: f.create_price(&suite, Some("month"), 2_900, &[]),
        suite_once: f.create_price(&suite, None, 29_900, &[]),
        pass_once: f.create_price(&pass, None, 1_500, &[]),
        shirt_once: f.create_price(&shirt, None, 2_500, &[]),
    }
}

/// A new customer; one in eight has no email address (its licenses are
/// issued without an email), some have no name.
fn customer(f: &FakeStripe, rng: &mut Rng, n: usize) -> String {
    let email = (!rng.percent(12)).then(|| format!("buyer{n}@example.test"));
    let name = (!rng.percent(10)).then(|| format!("Buyer {n}"));
    f.create_customer(email.as_deref(), name.as_deref())
}

/// One subscription in a status drawn from the mix an account has.
fn subscribe(f: &FakeStripe, rng: &mut Rng, c: &Catalog, bought: &mut Purchases, n: usize) {
    let now = f.now();
    let customer = customer(f, rng, n);
    let recurring = [&c.editor_monthly, &c.editor_yearly, &c.suite_monthly];
    let mut items = vec![((*rng.pick(&recurring)).clone(), rng.range(1, 3) as i64)];
    if rng.percent(10) {
        let second = if items[0].0 == c.suite_monthly {
            &c.editor_monthly
        } else {
            &c.suite_monthly
        };
        items.push((second.clone(), 1));
    }
    let mut spec = SubscriptionSpec {
        customer,
        items,
        // Started a few days ago: no period ends near the wall clock.
        current_period_start: Some(now - rng.range(1, 20) as i64 * DAY),
        ..SubscriptionSpec::default()
    };
    spec.current_period_end = Some(spec.current_period_start.unwrap() + 30 * DAY);
    let roll = rng.range(0, 99);
    let mut canceled = false;
    match roll {
        0..=64 => {}
        65..=72 => {
            spec.status = Some("trialing".into());
            spec.trial_end = Some(now + 10 * DAY);
        }
        73..=80 => {
            spec.status = Some("past_due".into());
            spec.latest_invoice_paid = Some(false);
        }
        81..=88 => spec.cancel_at_period_end = true,
        _ => canceled = true,
    }
    let sub = f.create_subscription(spec);
    if canceled {
        f.set_subscription_status(&sub.id, "canceled");
    } else {
        bought.subscriptions.push(sub.id);
    }
}

/// One checkout: one or two lines (licensed or not), by a customer or a
/// guest, paid or (rarely) not yet.
fn checkout(f: &FakeStripe, rng: &mut Rng, c: &Catalog, bought: &mut Purchases, n: usize) {
    let once = [&c.suite_once, &c.pass_once, &c.pass_once, &c.shirt_once];
    let mut lines = vec![((*rng.pick(&once[..3])).clone(), rng.range(1, 3) as i64)];
    if rng.percent(30) {
        let other = (*rng.pick(&once)).clone();
        if other != lines[0].0 {
            lines.push((other, 1));
        }
    }
    let guest = rng.percent(10);
    let unpaid = rng.percent(5);
    let spec = CheckoutSpec {
        customer: (!guest).then(|| customer(f, rng, n)),
        customer_email: guest.then(|| format!("guest{n}@example.test")),
        lines,
        payment_status: unpaid.then(|| "unpaid".to_owned()),
        create_invoice: rng.percent(10),
        ..CheckoutSpec::default()
    };
    let session = f.create_checkout_session(spec.clone());
    if let (false, Some(pi)) = (unpaid, session.payment_intent) {
        bought.payments.push(pi);
    }
}

/// The account the suite reconciles: about 240 licenses over two pages or
/// more of every list licensync reads. Every date is at least a day away
/// from the wall clock, so no license expires while the suite runs. It was
/// all bought an hour ago: outside the event cursor's overlap window, so a
/// full run does not re-read the whole account's history as events.
fn open_shop(f: &FakeStripe, rng: &mut Rng) -> (Catalog, Purchases) {
    let wall = chrono::Utc::now().timestamp() - 3600;
    f.set_now(wall);
    let c = open_catalog(f);
    let mut bought = Purchases::default();
    for n in 0..120 {
        subscribe(f, rng, &c, &mut bought, n);
    }
    for n in 120..235 {
        // Some bought 40 days ago: their 30-day passes have run out.
        let backdated = rng.percent(15);
        if backdated {
            f.set_now(wall - 40 * DAY);
        }
        checkout(f, rng, &c, &mut bought, n);
        f.set_now(wall);
    }
    for n in 235..255 {
        let customer = customer(f, rng, n);
        let price = if rng.percent(50) { &c.suite_once } else { &c.pass_once };
        f.create_invoice(InvoiceSpec {
            customer,
            lines: vec![(price.clone(), rng.range(1, 2) as i64)],
            ..InvoiceSpec::default()
        });
    }
    reverse_some(f, rng, &mut bought, 10, 4);
    (c, bought)
}

/// Refunds (most in full) and disputes some of the paid checkouts.
fn reverse_some(f: &FakeStripe, rng: &mut Rng, bought: &mut Purchases, refunds: usize, disputes: usize) {
    for _ in 0..refunds {
        let pi = bought
            .payments
            .remove((rng.next() % bought.payments.len() as u64) as usize);
        let partial = rng.percent(25);
        let amount = f.get(&pi).and_then(|p| p["amount"].as_i64()).filter(|_| partial);
        f.refund(&pi, amount.map(|a| a / 2).filter(|a| *a > 0));
    }
    for _ in 0..disputes {
        let pi = bought
            .payments
            .remove((rng.next() % bought.payments.len() as u64) as usize);
        f.dispute(&pi, "needs_response");
        let outcome = *rng.pick(&["needs_response", "under_review", "lost", "won"]);
        if outcome != "needs_response" {
            f.dispute(&pi, outcome);
        }
    }
}

/// What happens in Stripe between two runs, for the incremental phase:
/// renewals (paid and failed), cancellations, a quantity change, refunds,
/// disputes and new purchases, each recording its events.
fn a_week_of_business(f: &FakeStripe, rng: &mut Rng, c: &Catalog, bought: &mut Purchases) {
    f.set_now(chrono::Utc::now().timestamp());
    let mut subs = std::mem::take(&mut bought.subscriptions);
    let mut take = |rng: &mut Rng| subs.remove((rng.next() % subs.len() as u64) as usize);
    for _ in 0..20 {
        f.renew_subscription(&take(rng), true);
    }
    for _ in 0..8 {
        f.renew_subscription(&take(rng), false);
    }
    for _ in 0..8 {
        f.set_subscription_status(&take(rng), "canceled");
    }
    for _ in 0..5 {
        let sub = take(rng);
        let end = f
            .get(&sub)
            .and_then(|s| s["items"]["data"][0]["current_period_end"].as_i64());
        f.update(&sub, |s| {
            s["cancel_at_period_end"] = true.into();
            s["cancel_at"] = end.into();
        });
    }
    for _ in 0..4 {
        let sub = take(rng);
        let item = f
            .get(&sub)
            .and_then(|s| s["items"]["data"][0]["id"].as_str().map(str::to_owned));
        if let Some(item) = item {
            f.update(&item, |i| i["quantity"] = 4.into());
        }
    }
    for n in 1000..1040 {
        checkout(f, rng, c, bought, n);
    }
    for n in 1040..1055 {
        subscribe(f, rng, c, bought, n);
    }
    reverse_some(f, rng, bought, 6, 3);
}

// ---- databases and runs ---------------------------------------------------------

/// A database of the suite: a fresh one, or a copy of another
/// (`CREATE DATABASE ... TEMPLATE`), dropped with this value.
struct Db {
    url: String,
    _fresh: Option<TestDb>,
    copy: Option<String>,
    mail: tempfile::TempDir,
}

static NEXT_COPY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("a database URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

impl Db {
    fn fresh() -> Db {
        let db = TestDb::new();
        Db {
            url: db.url.clone(),
            _fresh: Some(db),
            copy: None,
            mail: tempfile::tempdir().unwrap(),
        }
    }

    /// A copy of `source`, which no session may be connected to.
    fn copy_of(source: &Db) -> Db {
        let name = format!(
            "crash_{}_{}",
            std::process::id(),
            NEXT_COPY.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let source_name = url::Url::parse(&source.url)
            .unwrap()
            .path()
            .trim_start_matches('/')
            .to_owned();
        let mut admin = PgConnection::establish(&with_database(&source.url, "postgres")).unwrap();
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {source_name}"))
            .execute(&mut admin)
            .unwrap();
        Db {
            url: with_database(&source.url, &name),
            _fresh: None,
            copy: Some(name),
            mail: tempfile::tempdir().unwrap(),
        }
    }

    fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).unwrap()
    }

    fn command(&self, fake: &FakeStripe, args: &[&str]) -> std::process::Command {
        let mut cmd = licensync();
        cmd.args(args)
            .env("DATABASE_URL", &self.url)
            .env("STRIPE_API_BASE", fake.base_url())
            .env("STRIPE_API_KEY", fake.api_key())
            .env("LICENSYNC_MAIL_URL", format!("file://{}", self.mail.path().display()))
            // The fake has no rate limit; test mode's default ceiling (25/s) would make the suite crawl.
            .env("LICENSYNC_STRIPE_RPS", "1000");
        cmd
    }

    /// `licensync licenses list --output json`, by grant.
    fn licenses(&self, fake: &FakeStripe) -> Result<BTreeMap<Grant, Value>, String> {
        let out = self
            .command(fake, &["licenses", "list", "--output", "json"])
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "licenses list failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut by_grant = BTreeMap::new();
        let mut twice = Vec::new();
        for l in list {
            let grant = (
                l["source_kind"].as_str().unwrap().to_owned(),
                l["source_id"].as_str().unwrap().to_owned(),
            );
            if by_grant.insert(grant.clone(), l).is_some() {
                twice.push(grant);
            }
        }
        if twice.is_empty() {
            Ok(by_grant)
        } else {
            Err(format!("grants listed twice: {twice:?}"))
        }
    }

    /// `(grant, key)` of every license, straight from the table.
    fn keys(&self) -> Vec<(Grant, String)> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            source_kind: String,
            #[diesel(sql_type = Text)]
            source_id: String,
            #[diesel(sql_type = Text)]
            key: String,
        }
        diesel::sql_query("SELECT source_kind, source_id, key FROM licenses")
            .load::<Row>(&mut self.conn())
            .unwrap()
            .into_iter()
            .map(|r| ((r.source_kind, r.source_id), r.key))
            .collect()
    }

    /// Every outbox row with its license's grant.
    fn outbox(&self) -> Vec<OutboxRow> {
        diesel::sql_query(
            "SELECT l.source_kind, l.source_id, o.kind, o.status, o.message_id, o.recipient, o.claimed_by \
             FROM email_outbox o JOIN licenses l ON l.id = o.license_id ORDER BY o.id",
        )
        .load::<OutboxRow>(&mut self.conn())
        .unwrap()
    }

    /// The senders holding claims on rows neither sent nor given back: after
    /// a kill, the dead senders that left claimed emails behind.
    fn claimants(&self) -> BTreeSet<i32> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Int4)]
            claimed_by: i32,
        }
        diesel::sql_query(
            "SELECT DISTINCT claimed_by FROM email_outbox WHERE status = 'pending' AND claimed_by IS NOT NULL",
        )
        .load::<Row>(&mut self.conn())
        .unwrap()
        .into_iter()
        .map(|r| r.claimed_by)
        .collect()
    }

    /// The ledger's actions per grant, oldest first.
    fn ledger(&self) -> BTreeMap<Grant, Vec<String>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            source_kind: String,
            #[diesel(sql_type = Text)]
            source_id: String,
            #[diesel(sql_type = Text)]
            action: String,
        }
        let rows = diesel::sql_query(
            "SELECT l.source_kind, l.source_id, g.action \
             FROM license_ledger g JOIN licenses l ON l.id = g.license_id ORDER BY g.id",
        )
        .load::<Row>(&mut self.conn())
        .unwrap();
        let mut by_grant: BTreeMap<Grant, Vec<String>> = BTreeMap::new();
        for r in rows {
            by_grant.entry((r.source_kind, r.source_id)).or_default().push(r.action);
        }
        by_grant
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(name) = &self.copy
            && let Ok(mut admin) = PgConnection::establish(&with_database(&self.url, "postgres"))
        {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin);
        }
    }
}

type Grant = (String, String);

#[derive(QueryableByName, Debug)]
struct OutboxRow {
    #[diesel(sql_type = Text)]
    source_kind: String,
    #[diesel(sql_type = Text)]
    source_id: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Text)]
    message_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    recipient: Option<String>,
    #[diesel(sql_type = Nullable<Int4>)]
    claimed_by: Option<i32>,
}

/// When to kill a run.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after it started.
    Time(Duration),
    /// When the fake Stripe has answered this many of its requests.
    Request(usize),
    /// When this many `.eml` files exist in its outbox directory (counting
    /// those of earlier runs), and then `delay` more; with `mid_send`, at the
    /// first moment after that when the run's sender holds a claim (between
    /// claiming an email and marking it sent).
    Delivery {
        files: usize,
        delay: Duration,
        mid_send: bool,
    },
    /// When the SMTP server has accepted this many messages of the run, and
    /// then `delay` more (the run sends through [`SlowSmtp`]).
    Smtp { accepted: usize, delay: Duration },
}

fn describe(kill: KillAt) -> String {
    match kill {
        KillAt::Time(t) => format!("kill at {:.3}s", t.as_secs_f64()),
        KillAt::Request(n) => format!("kill after request {n}"),
        KillAt::Delivery {
            files,
            delay,
            mid_send: false,
        } => format!("kill {}µs after .eml {files}", delay.as_micros()),
        KillAt::Delivery {
            files, mid_send: true, ..
        } => format!("kill mid-send after .eml {files}"),
        KillAt::Smtp { accepted, delay } => format!(
            "kill {}µs after SMTP message {accepted} (DATA answered {}ms late)",
            delay.as_micros(),
            SMTP_DATA_DELAY.as_millis()
        ),
    }
}

/// How a run ended.
#[derive(Debug)]
enum Ended {
    Killed,
    Exited { code: i32, stdout: String, stderr: String },
}

fn eml_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

/// How long the SMTP server waits before answering each DATA.
const SMTP_DATA_DELAY: Duration = Duration::from_millis(25);

/// A plain SMTP server on loopback, in this process, that answers each
/// DATA [`SMTP_DATA_DELAY`] late: a sender killed while it waits has an
/// email claimed that it will never mark sent. Odd messages are stored as
/// soon as their data ends (the server accepted it, the client never heard:
/// the next run sends it again, with the same Message-ID); even ones only
/// when the client is still there to hear the 250 (otherwise never
/// delivered: the next run must send it). Stored as `NNNN.eml` in `spool`.
struct SlowSmtp {
    port: u16,
    spool: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl SlowSmtp {
    async fn start() -> SlowSmtp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let spool = tempfile::tempdir().unwrap();
        let dir = spool.path().to_owned();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(smtp_session(stream, dir.clone(), received.clone()));
            }
        });
        SlowSmtp { port, spool, server }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// Messages stored and not collected yet.
    fn accepted(&self) -> usize {
        eml_count(self.spool.path())
    }

    /// Moves the stored messages into `dir`, as `smtp-NNNN.eml`, once the
    /// server is done with the message of a sender killed mid-DATA.
    async fn collect_into(&self, dir: &Path) {
        tokio::time::sleep(SMTP_DATA_DELAY * 2).await;
        for entry in std::fs::read_dir(self.spool.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "eml") {
                let name = format!("smtp-{}", path.file_name().unwrap().to_string_lossy());
                std::fs::rename(&path, dir.join(name)).unwrap();
            }
        }
    }
}

impl Drop for SlowSmtp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One SMTP connection: every command but DATA and QUIT is answered 250
/// (EHLO without extensions, so no STARTTLS).
async fn smtp_session(
    stream: tokio::net::TcpStream,
    spool: PathBuf,
    received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let store = |n: usize, message: &[u8]| {
        let tmp = spool.join(format!("{n:04}.tmp"));
        std::fs::write(&tmp, message).unwrap();
        std::fs::rename(&tmp, spool.join(format!("{n:04}.eml"))).unwrap();
    };
    if write.write_all(b"220 crash-smtp ESMTP\r\n").await.is_err() {
        return;
    }
    loop {
        let mut line = Vec::new();
        if read.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let verb = String::from_utf8_lossy(&line[..line.len().min(4)]).to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            "DATA" => {
                if write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await.is_err() {
                    return;
                }
                let mut message = Vec::new();
                loop {
                    let mut data = Vec::new();
                    if read.read_until(b'\n', &mut data).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if data == b".\r\n" {
                        break;
                    }
                    let unstuffed = if data.starts_with(b"..") { &data[1..] } else { &data[..] };
                    message.extend_from_slice(unstuffed);
                }
                let n = received.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let accepted_first = n % 2 == 1;
                if accepted_first {
                    store(n, &message);
                }
                // The client says nothing until it hears the answer: a read
                // that returns is the client gone.
                let mut rest = Vec::new();
                let gone = tokio::select! {
                    _ = tokio::time::sleep(SMTP_DATA_DELAY) => false,
                    _ = read.read_until(b'\n', &mut rest) => true,
                };
                if gone {
                    return;
                }
                if !accepted_first {
                    store(n, &message);
                }
                b"250 2.0.0 queued\r\n"
            }
            _ => b"250 OK\r\n",
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// Whether a live sender holds a claim: a pending row claimed by a sender
/// other than the `dead` ones (killed earlier, their claims still there).
fn live_claim(conn: &mut PgConnection, dead: &BTreeSet<i32>) -> bool {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT count(*) AS n FROM email_outbox \
         WHERE status = 'pending' AND claimed_by IS NOT NULL AND NOT (claimed_by = ANY($1))",
    )
    .bind::<Array<Int4>, _>(dead.iter().copied().collect::<Vec<i32>>())
    .get_result::<N>(conn)
    .map(|r| r.n > 0)
    .unwrap_or(false)
}

/// Runs `cmd` in a process group of its own and kills the whole group with
/// SIGKILL at `kill` (never, with `None`). `dead`: the senders of earlier
/// killed runs on `db`, whose claims may still be there.
async fn run(
    mut cmd: std::process::Command,
    fake: &FakeStripe,
    db: &Db,
    kill: Option<KillAt>,
    dead: &BTreeSet<i32>,
    smtp: Option<&SlowSmtp>,
) -> Ended {
    let mail = db.mail.path();
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    fake.clear_requests();
    let started = Instant::now();
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("starting licensync");
    let pgid = child.id().expect("a running child") as i32;
    let mut waiting = tokio::spawn(child.wait_with_output());
    let mut reached_at: Option<Instant> = None;
    // Connected up front: connecting takes longer than sending a few emails.
    let mut watcher = match kill {
        Some(KillAt::Delivery { mid_send: true, .. }) => Some(db.conn()),
        _ => None,
    };
    let mut killed = false;
    let tick = match kill {
        None => Duration::from_millis(20),
        Some(_) => Duration::from_millis(1),
    };
    let out = loop {
        let fire = match kill {
            None => false,
            Some(KillAt::Time(after)) => started.elapsed() >= after,
            Some(KillAt::Request(n)) => fake.requests().len() >= n,
            Some(KillAt::Delivery { files, delay, .. }) => {
                if reached_at.is_none() && eml_count(mail) >= files {
                    reached_at = Some(Instant::now());
                }
                reached_at.is_some_and(|at| at.elapsed() >= delay)
                    && watcher.as_mut().is_none_or(|conn| live_claim(conn, dead))
            }
            Some(KillAt::Smtp { accepted, delay }) => {
                let smtp = smtp.expect("an SMTP kill point sends through the SMTP server");
                if reached_at.is_none() && smtp.accepted() >= accepted {
                    reached_at = Some(Instant::now());
                }
                reached_at.is_some_and(|at| at.elapsed() >= delay)
            }
        };
        let hung = started.elapsed() >= RUN_TIMEOUT;
        if fire || hung {
            // SAFETY: a plain syscall; the group is the child's own (process_group(0)).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            assert!(!hung, "a licensync run hung for {RUN_TIMEOUT:?}");
            killed = true;
            break (&mut waiting).await;
        }
        tokio::select! {
            out = &mut waiting => break out,
            _ = tokio::time::sleep(tick) => {}
        }
    };
    let out = out.unwrap().expect("waiting for licensync");
    if killed && out.status.signal() == Some(libc::SIGKILL) {
        return Ended::Killed;
    }
    Ended::Exited {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---- emails -------------------------------------------------------------------

/// One `.eml` file: its Message-ID (`licensync-outbox-N`, as the outbox
/// column has it) and the key-shaped words in it.
#[derive(Debug, Clone)]
struct Mail {
    file: PathBuf,
    message_id: Option<String>,
    keys: BTreeSet<String>,
}

fn read_mails(dir: &Path) -> Vec<Mail> {
    let mut mails: Vec<Mail> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .map(|p| {
                    let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
                    Mail {
                        message_id: message_id(&text),
                        keys: key_words(&text),
                        file: p,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    mails.sort_by(|a, b| a.file.cmp(&b.file));
    mails
}

fn message_id(text: &str) -> Option<String> {
    let line = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))?;
    let id = line.split_once('<')?.1.split_once('@')?.0;
    Some(id.to_owned())
}

/// Every `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX` of the key alphabet in `text`.
fn key_words(text: &str) -> BTreeSet<String> {
    let alphabet = licensync::keys::KEY_ALPHABET;
    let bytes = text.as_bytes();
    let is_key_char = |b: u8| alphabet.contains(&b);
    let mut found = BTreeSet::new();
    if bytes.len() < 29 {
        return found;
    }
    for start in 0..=bytes.len() - 29 {
        if start > 0 && bytes[start - 1].is_ascii_alphanumeric() {
            continue;
        }
        let word = &bytes[start..start + 29];
        let shaped = word
            .iter()
            .enumerate()
            .all(|(i, &b)| if i % 6 == 5 { b == b'-' } else { is_key_char(b) });
        let ends = bytes.get(start + 29).is_none_or(|b| !b.is_ascii_alphanumeric());
        if shaped && ends {
            found.insert(String::from_utf8(word.to_vec()).unwrap());
        }
    }
    found
}

// ---- the checks ------------------------------------------------------------------

/// What a database that never crashed holds.
struct Reference {
    licenses: BTreeMap<Grant, Value>,
    ledger: BTreeMap<Grant, Vec<String>>,
    /// Licenses with an address: one email each.
    mailed: usize,
}

/// A license without what differs between two databases holding the same licenses.
fn portable(license: &Value) -> Value {
    let mut l = license.clone();
    for field in ["id", "key", "created_at", "updated_at"] {
        l.as_object_mut().unwrap().remove(field);
    }
    l
}

/// The suite's figures, summed over every episode.
#[derive(Default, Debug)]
struct Figures {
    /// Per `phase/kind`: kill points tried, runs killed, runs that ended
    /// before their kill point, kills that left a claimed email behind.
    points: BTreeMap<String, [usize; 4]>,
    episodes: usize,
    divergent_grants: usize,
    divergent_ledgers: usize,
    duplicate_licenses: usize,
    keys_changed: usize,
    missing_emails: usize,
    repeated_emails: usize,
    two_message_ids: usize,
    wrong_message_ids: usize,
    unsent_outbox_rows: usize,
    torn_eml_files: usize,
    locked_after_kill: usize,
    failed_runs: usize,
    licenses_compared: usize,
    slowest_episode: Duration,
}

impl Figures {
    fn report(&self, seed: u64, elapsed: Duration) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let total = |i: usize| self.points.values().map(|p| p[i]).sum::<usize>();
        let _ = writeln!(
            out,
            "crash suite (seed {seed:#x}): {} kill points tried in {} episodes, {} runs killed, \
             {} ended before their kill point, {} kills left claimed emails; {:.1}s",
            total(0),
            self.episodes,
            total(1),
            total(2),
            total(3),
            elapsed.as_secs_f64()
        );
        for (kind, [tried, killed, ended, orphans]) in &self.points {
            let _ = writeln!(
                out,
                "  {kind:<22} tried {tried:>3}  killed {killed:>3}  ended first {ended:>3}  left claims {orphans:>3}"
            );
        }
        let _ = writeln!(
            out,
            "  licenses compared {}; divergent grants {}; divergent ledgers {}; duplicate licenses {}; \
             keys changed {}",
            self.licenses_compared,
            self.divergent_grants,
            self.divergent_ledgers,
            self.duplicate_licenses,
            self.keys_changed
        );
        let _ = writeln!(
            out,
            "  emails: missing {}; repeated (same Message-ID) {}; two Message-IDs {}; wrong Message-ID {}; \
             outbox rows not sent {}; torn .eml files {}",
            self.missing_emails,
            self.repeated_emails,
            self.two_message_ids,
            self.wrong_message_ids,
            self.unsent_outbox_rows,
            self.torn_eml_files
        );
        let _ = writeln!(
            out,
            "  runs after a kill that exited 75 {}; other failed runs {}; slowest episode {:.1}s",
            self.locked_after_kill,
            self.failed_runs,
            self.slowest_episode.as_secs_f64()
        );
        out
    }
}

/// Keys seen in one database across its runs: a grant's key never changes.
#[derive(Default)]
struct KeyWatch {
    seen: BTreeMap<Grant, String>,
}

impl KeyWatch {
    /// Records `keys`; returns the grants whose key differs from before.
    fn observe(&mut self, keys: Vec<(Grant, String)>) -> Vec<String> {
        let mut changed = Vec::new();
        for (grant, key) in keys {
            match self.seen.get(&grant) {
                Some(old) if *old != key => changed.push(format!("{grant:?}: {old} -> {key}")),
                Some(_) => {}
                None => {
                    self.seen.insert(grant, key);
                }
            }
        }
        changed
    }
}

/// Compares a database after its clean run with the reference; adds to
/// `figures` and returns a line per violation.
fn check(
    db: &Db,
    fake: &FakeStripe,
    reference: &Reference,
    earlier_mails: &[Mail],
    watch: &mut KeyWatch,
    figures: &mut Figures,
) -> Vec<String> {
    let mut problems = Vec::new();
    let licenses = match db.licenses(fake) {
        Ok(l) => l,
        Err(e) => {
            figures.duplicate_licenses += 1;
            return vec![e];
        }
    };
    figures.licenses_compared += licenses.len();

    // Same grants, same state.
    for (grant, want) in &reference.licenses {
        match licenses.get(grant) {
            None => {
                figures.divergent_grants += 1;
                problems.push(format!("{grant:?} missing (the reference has it)"));
            }
            Some(got) if portable(got) != portable(want) => {
                figures.divergent_grants += 1;
                problems.push(format!(
                    "{grant:?} differs:\n    got  {}\n    want {}",
                    portable(got),
                    portable(want)
                ));
            }
            Some(_) => {}
        }
    }
    for grant in licenses.keys().filter(|g| !reference.licenses.contains_key(*g)) {
        figures.divergent_grants += 1;
        problems.push(format!("{grant:?} is not in the reference"));
    }
    let ledger = db.ledger();
    for (grant, want) in &reference.ledger {
        let got = ledger.get(grant).cloned().unwrap_or_default();
        if &got != want {
            figures.divergent_ledgers += 1;
            problems.push(format!("{grant:?} ledger {got:?}, the reference's {want:?}"));
        }
    }

    // No grant twice, no key twice, no key changed.
    let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
    for l in licenses.values() {
        *by_key.entry(l["key"].as_str().unwrap()).or_default() += 1;
    }
    for (key, n) in by_key.iter().filter(|(_, n)| **n > 1) {
        figures.duplicate_licenses += n - 1;
        problems.push(format!("key {key} is on {n} licenses"));
    }
    for (grant, actions) in &ledger {
        let issues = actions.iter().filter(|a| *a == "issue").count();
        if issues != 1 {
            figures.duplicate_licenses += 1;
            problems.push(format!("{grant:?} issued {issues} times: {actions:?}"));
        }
    }
    let changed = watch.observe(
        licenses
            .iter()
            .map(|(g, l)| (g.clone(), l["key"].as_str().unwrap().to_owned()))
            .collect(),
    );
    figures.keys_changed += changed.len();
    problems.extend(changed.into_iter().map(|c| format!("key changed after a kill: {c}")));

    // The outbox: one license email per license, sent when it has an address.
    let outbox = db.outbox();
    let mut issued_rows: BTreeMap<Grant, &OutboxRow> = BTreeMap::new();
    for row in outbox.iter().filter(|r| r.kind == "license_issued") {
        let grant = (row.source_kind.clone(), row.source_id.clone());
        if issued_rows.insert(grant.clone(), row).is_some() {
            figures.duplicate_licenses += 1;
            problems.push(format!("{grant:?} has two license_issued outbox rows"));
        }
        let want = if row.recipient.is_some() {
            "sent"
        } else {
            "no_recipient"
        };
        if row.status != want {
            figures.unsent_outbox_rows += 1;
            problems.push(format!(
                "{grant:?}: outbox row {} is {} (claimed by {:?}), not {want}",
                row.message_id, row.status, row.claimed_by
            ));
        }
    }

    // The emails, read from the files: each license with an address has at
    // least one, all with its row's Message-ID.
    let mut mails = earlier_mails.to_vec();
    mails.extend(read_mails(db.mail.path()));
    let key_of: BTreeMap<&str, &Grant> = licenses.iter().map(|(g, l)| (l["key"].as_str().unwrap(), g)).collect();
    let mut mails_of: BTreeMap<&Grant, Vec<&Mail>> = BTreeMap::new();
    for mail in &mails {
        let grants: Vec<&Grant> = mail
            .keys
            .iter()
            .filter_map(|k| key_of.get(k.as_str()).copied())
            .collect();
        match (grants.as_slice(), &mail.message_id) {
            ([grant], Some(_)) => mails_of.entry(grant).or_default().push(mail),
            ([], _) | (_, None) => {
                // Cut short by the kill (written, not yet marked sent): the
                // row stays pending and is sent again; it never counts as sent.
                figures.torn_eml_files += 1;
            }
            (many, Some(_)) => problems.push(format!("{} names {} licenses", mail.file.display(), many.len())),
        }
    }
    let mut mailed = 0;
    for (grant, license) in &licenses {
        let got = mails_of.get(grant).map(Vec::as_slice).unwrap_or_default();
        if license["customer_email"].is_null() {
            if !got.is_empty() {
                problems.push(format!("{grant:?} has no address but {} emails", got.len()));
            }
            continue;
        }
        mailed += 1;
        if got.is_empty() {
            figures.missing_emails += 1;
            problems.push(format!("{grant:?} ({}) was never mailed", license["key"]));
            continue;
        }
        figures.repeated_emails += got.len() - 1;
        let ids: BTreeSet<&str> = got.iter().filter_map(|m| m.message_id.as_deref()).collect();
        if ids.len() > 1 {
            figures.two_message_ids += 1;
            problems.push(format!("{grant:?} mailed with Message-IDs {ids:?}"));
        }
        if let Some(row) = issued_rows.get(grant)
            && ids.iter().any(|id| *id != row.message_id)
        {
            figures.wrong_message_ids += 1;
            problems.push(format!(
                "{grant:?} mailed as {ids:?}, its outbox row is {}",
                row.message_id
            ));
        }
    }
    if mailed != reference.mailed {
        problems.push(format!(
            "{mailed} licenses with an address, the reference has {}",
            reference.mailed
        ));
    }
    problems
}

// ---- the phases ---------------------------------------------------------------------

/// One account state to crash runs against: the reference made by a clean
/// run, what that run took, and how episodes start.
struct Phase<'a> {
    name: &'static str,
    fake: &'a FakeStripe,
    smtp: &'a SlowSmtp,
    /// Episodes start from a copy of this database (incremental), or from
    /// an empty one.
    base: Option<&'a Db>,
    /// The emails of `base`'s licenses (sent before the episode).
    base_mails: Vec<Mail>,
    reference: Reference,
    /// The clean run's length and its Stripe requests.
    duration: Duration,
    requests: usize,
    /// Emails a clean run writes.
    emails: usize,
}

impl Phase<'_> {
    fn start(&self) -> Db {
        match self.base {
            Some(base) => Db::copy_of(base),
            None => Db::fresh(),
        }
    }
}

/// Runs `reconcile` once on `db` without a kill; the report of a run that
/// must have succeeded.
async fn clean_run(db: &Db, fake: &FakeStripe) -> Result<Value, (i32, String)> {
    let cmd = db.command(fake, &["reconcile", "--output", "json"]);
    match run(cmd, fake, db, None, &BTreeSet::new(), None).await {
        Ended::Exited {
            code: 0,
            stdout,
            stderr,
        } => {
            let report: Value = serde_json::from_str(&stdout)
                .map_err(|e| (0, format!("report is not JSON ({e}): {stdout}{stderr}")))?;
            if report["outcome"] != "succeeded" {
                return Err((0, format!("{report:#}")));
            }
            Ok(report)
        }
        Ended::Exited { code, stdout, stderr } => Err((code, format!("{stdout}{stderr}"))),
        Ended::Killed => unreachable!("no kill was asked for"),
    }
}

/// The reference of a phase: `db` reconciled once, cleanly, by a run of `mode`.
async fn make_reference(db: &Db, fake: &FakeStripe, mode: &str) -> (Reference, Duration, usize, usize) {
    let started = Instant::now();
    let report = clean_run(db, fake)
        .await
        .unwrap_or_else(|(code, out)| panic!("the reference run failed ({code}): {out}"));
    assert_eq!(report["mode"], mode, "{report}");
    let duration = started.elapsed();
    let requests = fake.requests().len();
    assert_eq!(report["stripe_requests"].as_u64(), Some(requests as u64), "{report}");
    let licenses = db.licenses(fake).unwrap();
    let mailed = licenses.values().filter(|l| !l["customer_email"].is_null()).count();
    let emails = report["emails_sent"].as_u64().unwrap() as usize;
    (
        Reference {
            licenses,
            ledger: db.ledger(),
            mailed,
        },
        duration,
        requests,
        emails,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Time,
    Request,
    Delivery,
    MidSend,
    Smtp,
}

/// One episode: `kinds.len()` killed runs on a new database, one clean run,
/// the checks. Returns the violations, each naming the episode.
async fn episode(phase: &Phase<'_>, kinds: &[Kind], rng: &mut Rng, figures: &mut Figures) -> Vec<String> {
    let started = Instant::now();
    let db = phase.start();
    let mut watch = KeyWatch::default();
    watch.observe(db.keys());
    let mut problems = Vec::new();
    let mut plan = Vec::new();
    let mut after_kill = false;
    let mut claimants = BTreeSet::new();
    let full = phase.base.is_none();
    for &kind in kinds {
        let written = eml_count(db.mail.path());
        let kill = match kind {
            // Within a clean run's length: a run that ends first counts as
            // "ended first" and another point is drawn.
            Kind::Time => KillAt::Time(Duration::from_micros(rng.range(0, phase.duration.as_micros() as u64))),
            Kind::Request => KillAt::Request(rng.range(1, phase.requests as u64) as usize),
            Kind::Smtp => KillAt::Smtp {
                accepted: rng.range(1, 4) as usize,
                delay: Duration::from_micros(rng.range(0, 2 * SMTP_DATA_DELAY.as_micros() as u64)),
            },
            Kind::Delivery | Kind::MidSend => KillAt::Delivery {
                files: written + rng.range(1, phase.emails.saturating_sub(written).max(2) as u64 - 1) as usize,
                delay: Duration::from_micros(rng.range(0, 3_000)),
                mid_send: kind == Kind::MidSend,
            },
        };
        // Full runs of the first phase, now and then forced with --full.
        let args: &[&str] = if full && rng.percent(30) {
            &["reconcile", "--full", "--output", "json"]
        } else {
            &["reconcile", "--output", "json"]
        };
        plan.push(format!(
            "{}{}",
            describe(kill),
            if args.len() > 3 { " (--full)" } else { "" }
        ));
        let counts = figures
            .points
            .entry(format!("{}/{kind:?}", phase.name).to_lowercase())
            .or_default();
        counts[0] += 1;
        let mut cmd = db.command(phase.fake, args);
        let smtp = (kind == Kind::Smtp).then_some(phase.smtp);
        if let Some(smtp) = smtp {
            cmd.env("LICENSYNC_MAIL_URL", smtp.url());
        }
        let ended = run(cmd, phase.fake, &db, Some(kill), &claimants, smtp).await;
        if let Some(smtp) = smtp {
            smtp.collect_into(db.mail.path()).await;
        }
        match ended {
            Ended::Killed => {
                counts[1] += 1;
                let now_claiming = db.claimants();
                let left = now_claiming.difference(&claimants).count() > 0;
                if left {
                    counts[3] += 1;
                }
                claimants = now_claiming;
                plan.push(format!(
                    "killed: {} licenses, {} .eml files{}",
                    db.keys().len(),
                    eml_count(db.mail.path()),
                    if left { ", claimed emails left behind" } else { "" }
                ));
                after_kill = true;
            }
            Ended::Exited { code: 0, .. } => {
                counts[2] += 1;
                plan.push("ended before its kill point".into());
                after_kill = false;
            }
            Ended::Exited { code, stdout, stderr } => {
                if code == 75 && after_kill {
                    figures.locked_after_kill += 1;
                } else {
                    figures.failed_runs += 1;
                }
                problems.push(format!(
                    "a run exited {code} (after a kill: {after_kill}):\n{stdout}{stderr}"
                ));
            }
        }
        let changed = watch.observe(db.keys());
        figures.keys_changed += changed.len();
        problems.extend(changed.into_iter().map(|c| format!("key changed by a killed run: {c}")));
    }
    match clean_run(&db, phase.fake).await {
        Ok(_) => problems.extend(check(
            &db,
            phase.fake,
            &phase.reference,
            &phase.base_mails,
            &mut watch,
            figures,
        )),
        Err((code, out)) => {
            if code == 75 && after_kill {
                figures.locked_after_kill += 1;
            } else {
                figures.failed_runs += 1;
            }
            problems.push(format!(
                "the clean run exited {code} (after a kill: {after_kill}):\n{out}"
            ));
        }
    }
    figures.episodes += 1;
    figures.slowest_episode = figures.slowest_episode.max(started.elapsed());
    let header = format!(
        "{} episode ({:.1}s): {}",
        phase.name,
        started.elapsed().as_secs_f64(),
        plan.join("; ")
    );
    if std::env::var_os("LICENSYNC_CRASH_VERBOSE").is_some() {
        println!("{header}");
    }
    problems.into_iter().map(|p| format!("{header}\n  => {p}")).collect()
}

/// Episodes of one to three kill points of `phase`, cycling through the
/// kinds, until `kills` runs were killed: a point the run ends before (it
/// was faster than the clean run measured) does not count, within a bound.
async fn crash_phase(phase: &Phase<'_>, kills: usize, rng: &mut Rng, figures: &mut Figures) -> Vec<String> {
    let kinds = [Kind::Request, Kind::Delivery, Kind::Time, Kind::MidSend, Kind::Smtp];
    let of_phase = |figures: &Figures, i: usize| -> usize {
        figures
            .points
            .iter()
            .filter(|(kind, _)| kind.starts_with(phase.name))
            .map(|(_, p)| p[i])
            .sum()
    };
    let mut problems = Vec::new();
    let mut next = 0;
    while of_phase(figures, 1) < kills && of_phase(figures, 0) < 2 * kills + 6 {
        let n = (rng.range(1, 3) as usize).min(kills - of_phase(figures, 1));
        let mut chosen: Vec<Kind> = (next..next + n).map(|i| kinds[i % kinds.len()]).collect();
        // A run killed while it sends has stored its cursor already: the
        // next one is incremental and short, so scan kills go first.
        chosen.sort_by_key(|k| matches!(k, Kind::Delivery | Kind::MidSend | Kind::Smtp));
        next += n;
        problems.extend(episode(phase, &chosen, rng, figures).await);
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runs_converge_to_what_a_run_that_never_crashed_holds() {
    let suite_started = Instant::now();
    let points = env_number("LICENSYNC_CRASH_POINTS").map_or(DEFAULT_POINTS, |n| n as usize);
    let seed = env_number("LICENSYNC_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let mut rng = Rng(seed);
    let mut figures = Figures::default();
    let mut problems = Vec::new();

    let fake = FakeStripe::start().await;
    let smtp = SlowSmtp::start().await;
    let (catalog, mut bought) = open_shop(&fake, &mut rng);
    fake.inject_fault(Fault {
        path_prefix: "/v1/".into(),
        kind: FaultKind::Latency(LATENCY),
        times: 1 << 30,
    });

    // Phase 1: full runs of an empty database.
    let synced = Db::fresh();
    let (reference, duration, requests, emails) = make_reference(&synced, &fake, "full").await;
    assert!(
        emails > 150,
        "the account issues hundreds of emailed licenses: {emails}"
    );
    let full = Phase {
        name: "full",
        fake: &fake,
        smtp: &smtp,
        base: None,
        base_mails: Vec::new(),
        reference,
        duration,
        requests,
        emails,
    };
    // The checks hold for the reference itself (no crash, one email each).
    let mut own = Figures::default();
    let self_check = check(&synced, &fake, &full.reference, &[], &mut KeyWatch::default(), &mut own);
    assert!(
        self_check.is_empty(),
        "the reference fails its own checks: {self_check:#?}"
    );
    assert_eq!((own.repeated_emails, own.torn_eml_files), (0, 0));
    println!(
        "full phase: {} licenses, {} emails, {} Stripe requests, {:.2}s per clean run",
        full.reference.licenses.len(),
        full.emails,
        full.requests,
        full.duration.as_secs_f64()
    );
    let full_points = points.div_ceil(2);
    problems.extend(crash_phase(&full, full_points, &mut rng, &mut figures).await);
    drop(full);

    // Phase 2: incremental runs from the synced database's cursor, after a
    // week of business in Stripe.
    a_week_of_business(&fake, &mut rng, &catalog, &mut bought);
    let base_mails = read_mails(synced.mail.path());
    let clean = Db::copy_of(&synced);
    let (reference, duration, requests, emails) = make_reference(&clean, &fake, "incremental").await;
    let incremental = Phase {
        name: "incremental",
        fake: &fake,
        smtp: &smtp,
        base: Some(&synced),
        base_mails,
        reference,
        duration,
        requests,
        emails,
    };
    let mut own = Figures::default();
    let self_check = check(
        &clean,
        &fake,
        &incremental.reference,
        &incremental.base_mails,
        &mut KeyWatch::default(),
        &mut own,
    );
    assert!(
        self_check.is_empty(),
        "the reference fails its own checks: {self_check:#?}"
    );
    assert_eq!((own.repeated_emails, own.torn_eml_files), (0, 0));
    println!(
        "incremental phase: {} licenses, {} new emails, {} Stripe requests, {:.2}s per clean run",
        incremental.reference.licenses.len(),
        incremental.emails,
        incremental.requests,
        incremental.duration.as_secs_f64()
    );
    problems.extend(crash_phase(&incremental, points - full_points, &mut rng, &mut figures).await);

    println!("{}", figures.report(seed, suite_started.elapsed()));
    assert!(
        problems.is_empty(),
        "{} violations; the first ones:\n{}",
        problems.len(),
        problems.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    let killed: usize = figures.points.values().map(|p| p[1]).sum();
    assert!(
        killed * 4 >= points * 3,
        "only {killed} of {points} kill points hit a running licensync"
    );
    // The checks can only catch a crashed sender's emails waiting out their
    // lease if some kill left claimed emails behind: SMTP and mid-send kills
    // nearly always do.
    let sending = |i: usize| -> usize {
        figures
            .points
            .iter()
            .filter(|(kind, _)| kind.ends_with("/smtp") || kind.ends_with("/midsend"))
            .map(|(_, p)| p[i])
            .sum()
    };
    assert!(
        sending(1) < 4 || sending(3) > 0,
        "no kill while sending left a claimed email behind: the crashed-sender path was not exercised"
    );
}
