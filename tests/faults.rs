//! Faults at every boundary of a run, end to end through the real binary,
//! each followed by a run without the fault that must converge to what a
//! database that never saw a fault holds (issue 11, part 3).
//!
//! - Stripe (the fake's injected faults): bursts of 429 with and without
//!   `Retry-After`, 500/503, dropped connections, a body cut off
//!   mid-transfer, an HTML page instead of JSON, an answer slower than the
//!   client's timeout. A burst is retried and the run lands like a clean
//!   one; a storm (more than the retries) fails the run with exit 1 and a
//!   message naming the request. The lists are read side by side, so which
//!   pages committed before a failure depends on the order they reached
//!   the writer; what the tests hold does not: the table keeps exactly the
//!   pages the failed run committed, each whole, nothing of the failed one.
//! - PostgreSQL: restarted while a page's transaction waits, a
//!   `statement_timeout` hit by a page's write, every connection slot taken.
//! - SMTP (a real server, `mail_support/smtp_server.rs`): down, refusing,
//!   slow, accepting a message then dropping the connection.
//! - The file transport on a full disk (a tiny tmpfs).
//!
//! Each test prints what it tried (faults per kind, runs of the binary);
//! the totals of the whole file are printed at exit (`--nocapture`).

mod common;
mod mail_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Ran, TestDb, licensync};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use fake_stripe::{CheckoutSpec, FakeStripe, Fault, FaultKind, SubscriptionSpec};
use serde_json::Value;

const DAY: i64 = 86_400;
/// Three pages of subscriptions (100 + 100 + 50), read one after the
/// other: the shop creates them all in one second, which the segmented
/// reader cannot split (`src/reconcile/segments.rs`), so the third request
/// of `/v1/subscriptions` is the third page, asked once the first two were
/// answered. The other lists are read alongside it.
const SUBSCRIPTIONS: usize = 250;
/// The licenses of subscriptions (a query for [`count_now`]).
const SUBSCRIPTION_LICENSES: &str = "SELECT id FROM licenses WHERE source_kind = 'subscription_item'";
const SESSIONS: usize = 20;
/// Retries of licensync's Stripe transport after the first attempt
/// (`StripeConfig::new`): a storm is one more fault than that.
const STRIPE_ATTEMPTS: usize = 6;
/// No single invocation of the binary may take longer (the slow-answer
/// test waits out the 30 s client timeout once).
const RUN_LIMIT: Duration = Duration::from_secs(75);

// ---- figures ------------------------------------------------------------------

static TOTALS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
static PRINT_TOTALS: Once = Once::new();

extern "C" fn print_totals() {
    let totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    if totals.is_empty() {
        return;
    }
    let line: Vec<String> = totals.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("\nfaults.rs totals: {}", line.join(", "));
}

/// What one test tried, printed when it ends and added to the totals.
struct Figures {
    test: &'static str,
    counts: BTreeMap<String, usize>,
    started: Instant,
}

impl Figures {
    fn new(test: &'static str) -> Figures {
        // libtest ends the process with exit(), which runs atexit handlers.
        PRINT_TOTALS.call_once(|| unsafe {
            libc::atexit(print_totals);
        });
        Figures {
            test,
            counts: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    fn add(&mut self, what: impl Into<String>, n: usize) {
        *self.counts.entry(what.into()).or_default() += n;
    }

    fn fault(&mut self, kind: &str, n: usize) {
        self.add(format!("fault {kind}"), n);
    }

    /// A Stripe fault: counted per kind, then injected.
    fn inject(&mut self, fake: &FakeStripe, path_prefix: &str, kind: FaultKind, times: usize) {
        if !matches!(kind, FaultKind::Pass) {
            self.fault(&format!("stripe {}", stripe_kind(&kind)), times);
        }
        fake.inject_fault(Fault {
            path_prefix: path_prefix.into(),
            kind,
            times,
        });
    }

    fn print(&self) {
        let line: Vec<String> = self.counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!(
            "[{}] {} ({:.0} s)",
            self.test,
            line.join(", "),
            self.started.elapsed().as_secs_f64()
        );
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in &self.counts {
            *totals.entry(k.clone()).or_default() += v;
        }
        *totals.entry("tests".into()).or_default() += 1;
    }
}

fn stripe_kind(kind: &FaultKind) -> String {
    match kind {
        FaultKind::TooManyRequests { .. } => "429 with Retry-After".into(),
        FaultKind::TooManyRequestsWithoutRetryAfter => "429 without Retry-After".into(),
        FaultKind::ServerError(status) => format!("{status}"),
        FaultKind::DropConnection => "dropped connection".into(),
        FaultKind::Latency(_) => "slower than the client timeout".into(),
        FaultKind::TruncatedBody => "truncated body".into(),
        FaultKind::NonJsonBody(status) => format!("non-JSON body ({status})"),
        FaultKind::Pass => "pass".into(),
    }
}

// ---- running the binary ---------------------------------------------------------

/// What faults.rs asks of a run beyond the shared [`Ran`].
impl Ran {
    /// Exit 1, with the failing request named on stderr and in the report.
    fn failed_naming(&self, request: &str) -> Value {
        assert_eq!(self.code, 1, "the run must fail with exit 1:\n{}", self.all());
        let error_line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("no `error:` line on stderr:\n{}", self.all()));
        assert!(
            error_line.contains(request),
            "the error names the request `{request}`: {error_line}"
        );
        let report = self.json();
        assert_eq!(report["outcome"], "failed", "{report:#}");
        assert!(
            report["error"].as_str().is_some_and(|e| e.contains(request)),
            "the report's error names `{request}`: {report:#}"
        );
        report
    }
}

async fn run(figures: &mut Figures, cmd: Command) -> Ran {
    figures.add("licensync runs", 1);
    let child = tokio::process::Command::from(cmd).kill_on_drop(true).output();
    let out = tokio::time::timeout(RUN_LIMIT, child)
        .await
        .expect("licensync finished within the time limit")
        .expect("running the licensync binary");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: without_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// The text logs colour their fields even off a terminal: drop the escapes.
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters, up to the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---- the database side --------------------------------------------------------

/// The rows of `sql` as a JSON array (one object per row).
fn rows(url: &str, sql: &str) -> Vec<Value> {
    #[derive(QueryableByName)]
    struct Json {
        #[diesel(sql_type = diesel::sql_types::Text)]
        j: String,
    }
    let mut conn = PgConnection::establish(url).expect("connecting to the test database");
    let wrapped = format!("SELECT coalesce(json_agg(q), '[]')::text AS j FROM ({sql}) q");
    let json: Json = diesel::sql_query(wrapped).get_result(&mut conn).unwrap();
    serde_json::from_str::<Vec<Value>>(&json.j).unwrap()
}

fn count(url: &str, sql: &str) -> usize {
    rows(url, sql).len()
}

/// [`count`], or 0 while the query cannot run (no schema yet).
fn count_now(url: &str, sql: &str) -> usize {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    PgConnection::establish(url)
        .ok()
        .and_then(|mut conn| {
            diesel::sql_query(format!("SELECT count(*) AS n FROM ({sql}) q"))
                .get_result::<N>(&mut conn)
                .ok()
        })
        .map_or(0, |n| n.n as usize)
}

/// Every license without what differs between two databases holding the
/// same licenses (ids, keys, row times), by grant.
fn licenses(url: &str) -> BTreeMap<String, Value> {
    rows(
        url,
        "SELECT source_kind, source_id, status, product_ids, product_name, stripe_customer_id, \
         stripe_subscription_id, stripe_payment_intent, customer_email, customer_name, quantity, ip_limit, \
         hwid_limit, expiration_days, expiration_start, expires_at, livemode FROM licenses",
    )
    .into_iter()
    .map(|l| {
        (
            format!(
                "{}:{}",
                l["source_kind"].as_str().unwrap(),
                l["source_id"].as_str().unwrap()
            ),
            l,
        )
    })
    .collect()
}

/// `{grant: key}`.
fn keys(url: &str) -> BTreeMap<String, String> {
    rows(url, "SELECT source_kind || ':' || source_id AS g, key FROM licenses")
        .into_iter()
        .map(|r| {
            (
                r["g"].as_str().unwrap().to_owned(),
                r["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every license has exactly one `issue` in its ledger and one
/// `license_issued` outbox row, and no ledger or outbox row is without its
/// license: what pages that landed whole leave.
fn assert_every_license_whole(url: &str) {
    let broken = rows(
        url,
        "SELECT l.source_id, \
           (SELECT count(*) FROM license_ledger g WHERE g.license_id = l.id AND g.action = 'issue') AS issued, \
           (SELECT count(*) FROM email_outbox o WHERE o.license_id = l.id AND o.kind = 'license_issued') AS outbox \
         FROM licenses l",
    )
    .into_iter()
    .filter(|r| r["issued"] != 1 || r["outbox"] != 1)
    .collect::<Vec<_>>();
    assert!(
        broken.is_empty(),
        "licenses without exactly their issue and outbox row: {broken:?}"
    );
    let orphans = count(
        url,
        "SELECT id FROM license_ledger WHERE license_id NOT IN (SELECT id FROM licenses) \
         UNION ALL SELECT id FROM email_outbox WHERE license_id NOT IN (SELECT id FROM licenses)",
    );
    assert_eq!(orphans, 0);
}

/// Per grant, its ledger's actions and its emails' kinds and states, in order:
/// the history a database that converged shares with the reference.
fn history(url: &str) -> BTreeMap<String, String> {
    rows(
        url,
        "SELECT l.source_kind || ':' || l.source_id AS g, \
           (SELECT string_agg(action, ',' ORDER BY id) FROM license_ledger x WHERE x.license_id = l.id) || ' / ' || \
           coalesce((SELECT string_agg(kind || '=' || status, ',' ORDER BY id) FROM email_outbox o \
                     WHERE o.license_id = l.id), '-') AS h \
         FROM licenses l",
    )
    .into_iter()
    .map(|r| (r["g"].as_str().unwrap().to_owned(), r["h"].as_str().unwrap().to_owned()))
    .collect()
}

/// `(outcome, error)` of every run, oldest first.
fn runs(url: &str) -> Vec<(String, Option<String>)> {
    rows(url, "SELECT outcome, error FROM runs ORDER BY id")
        .into_iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_owned(),
                r["error"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn outcomes(url: &str) -> Vec<String> {
    runs(url).into_iter().map(|(o, _)| o).collect()
}

// ---- the Stripe side ----------------------------------------------------------

/// An account that sold for a while: [`SUBSCRIPTIONS`] monthly subscriptions
/// and [`SESSIONS`] one-time checkouts, each its own customer, two of the
/// checkouts refunded (no license), all created an hour ago; the clock at
/// wall time.
///
/// The clock is the same for every shop of this process, so every shop
/// holds the same objects with the same ids and one clean run of one of
/// them is the reference for all.
async fn shop() -> FakeStripe {
    static NOW: OnceLock<i64> = OnceLock::new();
    let fake = FakeStripe::start().await;
    let now = *NOW.get_or_init(|| Utc::now().timestamp());
    fake.set_now(now - 3600);
    let product = fake.create_product("Editor", &[("product_id", "editor"), ("hwid_limit", "2")]);
    let monthly = fake.create_price(&product, Some("month"), 900, &[]);
    let once = fake.create_price(&product, None, 4_900, &[("ip_limit", "3")]);
    for i in 0..SUBSCRIPTIONS {
        let customer = fake.create_customer(Some(&format!("sub{i}@example.test")), Some(&format!("Subscriber {i}")));
        fake.create_subscription(SubscriptionSpec {
            customer,
            items: vec![(monthly.clone(), 1)],
            current_period_start: Some(now - 10 * DAY),
            current_period_end: Some(now + 20 * DAY),
            ..SubscriptionSpec::default()
        });
    }
    for i in 0..SESSIONS {
        let customer = fake.create_customer(Some(&format!("buyer{i}@example.test")), None);
        let session = fake.create_checkout_session(CheckoutSpec {
            customer: Some(customer),
            lines: vec![(once.clone(), 1)],
            ..CheckoutSpec::default()
        });
        if i < 2 {
            fake.refund(session.payment_intent.as_deref().unwrap(), None);
        }
    }
    fake.set_now(now);
    fake
}

/// A database and a file outbox reconciling an account.
struct Side {
    db: TestDb,
    mail: tempfile::TempDir,
}

impl Side {
    fn new() -> Side {
        Side {
            db: TestDb::new(),
            mail: tempfile::tempdir().unwrap(),
        }
    }

    fn url(&self) -> &str {
        &self.db.url
    }

    fn reconcile(&self, fake: &FakeStripe) -> Command {
        let mut cmd = licensync();
        cmd.args(["reconcile", "--output", "json"])
            .env("DATABASE_URL", &self.db.url)
            .env("STRIPE_API_BASE", fake.base_url())
            .env("STRIPE_API_KEY", fake.api_key())
            .env("LICENSYNC_MAIL_URL", format!("file://{}", self.mail.path().display()));
        cmd
    }

    /// Every license with an address was mailed exactly once: one `.eml`
    /// per such license, naming its key.
    fn assert_one_email_per_license(&self) {
        let emails = common::eml_files(self.mail.path());
        let licensed: BTreeSet<String> = rows(
            &self.db.url,
            "SELECT key FROM licenses WHERE customer_email IS NOT NULL",
        )
        .into_iter()
        .map(|l| l["key"].as_str().unwrap().to_owned())
        .collect();
        let mut mailed: BTreeMap<String, usize> = BTreeMap::new();
        for email in &emails {
            let keys = license_keys(email);
            assert_eq!(keys.len(), 1, "one license key per email: {keys:?}");
            *mailed.entry(keys.into_iter().next().unwrap()).or_default() += 1;
        }
        let twice: Vec<_> = mailed.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "mailed more than once: {twice:?}");
        let mailed: BTreeSet<String> = mailed.into_keys().collect();
        assert_eq!(
            mailed, licensed,
            "one .eml per license with an address, none for another key"
        );
    }
}

/// The license keys (`ABCDE-FGHJK-MNPQR-STUVW-XYZ23`) in a text.
fn license_keys(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let is_key = |w: &[u8]| {
        w.iter().enumerate().all(|(i, c)| {
            if i % 6 == 5 {
                *c == b'-'
            } else {
                c.is_ascii_uppercase() || c.is_ascii_digit()
            }
        })
    };
    let bounded = |i: usize| i == 0 || !b[i - 1].is_ascii_alphanumeric();
    (0..b.len().saturating_sub(28))
        .filter(|&i| bounded(i) && is_key(&b[i..i + 29]) && b.get(i + 29).is_none_or(|c| !c.is_ascii_alphanumeric()))
        .map(|i| text[i..i + 29].to_owned())
        .collect()
}

/// A GET with the account's key over a plain socket; the JSON answer.
async fn stripe_get(fake: &FakeStripe, path_and_query: &str) -> Value {
    use std::io::{Read, Write};
    let addr = fake.base_url().trim_start_matches("http://").to_owned();
    let request = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        fake.api_key()
    );
    let bytes = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        bytes
    })
    .await
    .unwrap();
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    serde_json::from_slice(&bytes[split + 4..]).unwrap()
}

/// What a database that never saw a fault holds after one clean run of a
/// [`shop`].
struct Reference {
    /// Requests per path of the clean run.
    requests: BTreeMap<String, usize>,
    licenses: BTreeMap<String, Value>,
    history: BTreeMap<String, String>,
}

/// Made once per process, by the first test that asks, on a shop and a
/// database of its own.
async fn reference(figures: &mut Figures) -> &'static Reference {
    static REFERENCE: tokio::sync::OnceCell<Reference> = tokio::sync::OnceCell::const_new();
    REFERENCE
        .get_or_init(|| async {
            let fake = shop().await;
            let side = Side::new();
            run(figures, side.reconcile(&fake)).await.report();
            let mut requests = BTreeMap::new();
            for (path, status) in log(&fake) {
                assert_eq!(status, 200, "{path}");
                *requests.entry(path).or_default() += 1;
            }
            let licenses = licenses(side.url());
            // At least one per subscription and unrefunded checkout; the two
            // refunded checkouts issue nothing (refunds are read first), so
            // no license is born only to be revoked.
            assert!(licenses.len() >= SUBSCRIPTIONS + SESSIONS - 2, "{}", licenses.len());
            assert!(
                licenses.values().all(|l| l["status"] != "revoked"),
                "a refunded checkout was issued"
            );
            side.assert_one_email_per_license();
            assert_every_license_whole(side.url());
            Reference {
                requests,
                licenses,
                history: history(side.url()),
            }
        })
        .await
}

/// `(path, status)` of every request the fake answered since the last clear.
fn log(fake: &FakeStripe) -> Vec<(String, u16)> {
    fake.requests().into_iter().map(|r| (r.path, r.status)).collect()
}

/// How often the fake was asked for each query of the list at `path`
/// (exactly that path: not the retrieval of one object).
fn asked(fake: &FakeStripe, path: &str) -> BTreeMap<String, usize> {
    let mut asked = BTreeMap::new();
    for r in fake.requests().into_iter().filter(|r| r.path == path) {
        *asked.entry(r.query).or_default() += 1;
    }
    asked
}

/// The lists whose pages a full scan of a [`shop`] applies one transaction
/// each (refunds and disputes grant nothing; the shop has no one-off invoice).
const PURCHASE_LISTS: [&str; 2] = ["/v1/subscriptions", "/v1/checkout/sessions"];

/// The ids of the objects (subscriptions, Checkout Sessions) of the page of
/// the list at `path` that `query` asks for, read again from the fake: the
/// account has not changed since the run read it.
async fn page_objects(fake: &FakeStripe, path: &str, query: &str) -> BTreeSet<String> {
    let page = stripe_get(fake, &format!("{path}?{query}")).await;
    page["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}?{query} is a list page: {page}"))
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every page of [`PURCHASE_LISTS`] the fake answered 200 since the last
/// clear, by list and query, as the objects it holds. A fault logged with
/// 200 (a cut body, an HTML page) counts too: its page is asked for again.
async fn answered_pages(fake: &FakeStripe) -> Vec<(String, BTreeSet<String>)> {
    let mut pages = Vec::new();
    for path in PURCHASE_LISTS {
        let answered: BTreeSet<String> = fake
            .requests()
            .into_iter()
            .filter(|r| r.path == path && r.status == 200)
            .map(|r| r.query)
            .collect();
        for query in answered {
            let objects = page_objects(fake, path, &query).await;
            pages.push((format!("{path}?{query}"), objects));
        }
    }
    pages
}

/// The purchase a license of the reference was granted by: its
/// subscription, or the Checkout Session before the `/` of its source.
fn purchase(license: &Value) -> String {
    match license["stripe_subscription_id"].as_str() {
        Some(sub) if license["source_kind"] == "subscription_item" => sub.to_owned(),
        _ => license["source_id"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned(),
    }
}

/// What a failed run left, whichever order the lists read side by side
/// reached the writer in: every license in the table is the reference's,
/// as the reference has it, and came from a page of a purchase list the
/// fake answered; every such page landed whole or not at all (a page is
/// one transaction). Returns the pages that landed.
async fn assert_whole_pages(reference: &Reference, fake: &FakeStripe, url: &str) -> usize {
    let landed = licenses(url);
    for (grant, license) in &landed {
        assert_eq!(
            reference.licenses.get(grant),
            Some(license),
            "{grant} landed as the reference has it"
        );
    }
    let mut from_answered = BTreeSet::new();
    let mut whole = 0;
    for (page, objects) in answered_pages(fake).await {
        let grants: BTreeSet<&String> = reference
            .licenses
            .iter()
            .filter(|(_, l)| objects.contains(&purchase(l)))
            .map(|(g, _)| g)
            .collect();
        let got: BTreeSet<&String> = grants.iter().copied().filter(|g| landed.contains_key(*g)).collect();
        assert!(
            got.is_empty() || got == grants,
            "{page} landed half: {} of its {} licenses",
            got.len(),
            grants.len()
        );
        whole += usize::from(!got.is_empty());
        from_answered.extend(got);
    }
    let stray: Vec<&String> = landed.keys().filter(|g| !from_answered.contains(g)).collect();
    assert!(stray.is_empty(), "licenses of no page the fake answered: {stray:?}");
    whole
}

/// `{grant: key}` of every license a run's JSON report says it issued:
/// the pages it committed (a page is counted once its transaction
/// committed). The report must list every action.
fn issued_in(report: &Value) -> BTreeMap<String, String> {
    assert_eq!(report["actions_omitted"], 0, "the report lists every action");
    report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "issue")
        .map(|a| {
            (
                format!(
                    "{}:{}",
                    a["source_kind"].as_str().unwrap(),
                    a["source_id"].as_str().unwrap()
                ),
                a["license_key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A burst of faults, fewer than the retries, on several endpoints: the run
/// retries each and lands exactly like a clean one.
struct Burst {
    faults: Vec<(&'static str, FaultKind, usize)>,
    /// Per path, the statuses the fake logs the injected faults with (0: a
    /// dropped connection; a cut body carries the status of its headers),
    /// in any order: the lists are read side by side, so the requests of
    /// one path may reach the fake in any order relative to the others.
    faults_logged: Vec<(&'static str, Vec<u16>)>,
    /// Attempts the client gave up on before the fake answered (and logged) them.
    abandoned: usize,
    /// What the retry warnings on stderr must say.
    stderr_mentions: Vec<&'static str>,
}

/// Statuses and how often each was logged.
type Tally = BTreeMap<u16, usize>;

async fn stripe_burst(test: &'static str, burst: Burst) {
    let mut figures = Figures::new(test);
    let reference = reference(&mut figures).await;
    let fake = shop().await;
    for (path, kind, times) in burst.faults {
        figures.inject(&fake, path, kind, times);
    }
    let side = Side::new();
    let ran = run(&mut figures, side.reconcile(&fake)).await;
    let report = ran.report();
    assert_eq!(fake.faults_left(), 0, "every injected fault happened");
    let log = log(&fake);
    // Per path, as a tally rather than a sequence (the order of concurrent
    // requests is the scheduler's): the clean run's requests, each answered
    // 200 in the end, plus one logged answer per injected fault.
    let mut got: BTreeMap<&str, Tally> = BTreeMap::new();
    for (path, status) in &log {
        *got.entry(path).or_default().entry(*status).or_default() += 1;
    }
    let mut expected: BTreeMap<&str, Tally> = reference
        .requests
        .iter()
        .map(|(path, n)| (path.as_str(), Tally::from([(200, *n)])))
        .collect();
    for (path, statuses) in &burst.faults_logged {
        assert!(reference.requests.contains_key(*path), "the clean run reads {path}");
        for status in statuses {
            *expected.entry(path).or_default().entry(*status).or_default() += 1;
        }
    }
    for path in got.keys().chain(expected.keys()).collect::<BTreeSet<_>>() {
        assert_eq!(
            got.get(path),
            expected.get(path),
            "requests of {path} by status: the clean run's, each answered 200, and one per fault"
        );
    }
    for text in &burst.stderr_mentions {
        assert!(ran.stderr.contains(text), "stderr mentions `{text}`:\n{}", ran.stderr);
    }
    assert_eq!(
        report["stripe_requests"].as_u64().unwrap() as usize,
        log.len() + burst.abandoned,
        "the report counts every attempt, retries included"
    );
    assert_eq!(
        licenses(side.url()),
        reference.licenses,
        "the run lands like a clean one"
    );
    assert_eq!(history(side.url()), reference.history);
    assert_every_license_whole(side.url());
    side.assert_one_email_per_license();
    assert_eq!(outcomes(side.url()), ["succeeded"]);
    figures.print();
}

/// A storm on the third page of subscriptions (the list is read one page
/// after the other, see [`SUBSCRIPTIONS`]) while the Checkout Sessions and
/// one-off invoices are read alongside: the run fails with exit 1 naming
/// the request and is recorded as failed. Which pages of the other lists
/// committed before the failure depends on the order they reached the
/// writer, so the test holds what does not: every page the run committed
/// (its report's issues) is in the table with its keys and nothing else,
/// each page whole, each license the reference's with its issue and sent
/// email, none of the page the storm hit. The next run without faults
/// converges to the reference, keeping every key the failed run issued.
async fn stripe_storm(test: &'static str, kind: FaultKind, times: usize) {
    let mut figures = Figures::new(test);
    let reference = reference(&mut figures).await;
    let fake = shop().await;

    figures.inject(&fake, "/v1/subscriptions", FaultKind::Pass, 2);
    figures.inject(&fake, "/v1/subscriptions", kind, times);
    let side = Side::new();
    let failed = run(&mut figures, side.reconcile(&fake)).await;
    let report = failed.failed_naming("GET /v1/subscriptions");
    assert_eq!(fake.faults_left(), 0, "every injected fault happened");

    // Two pages answered once each, then the third asked `times` times (the
    // first attempt and every retry) before the run gave up on it.
    let asked = asked(&fake, "/v1/subscriptions");
    let mut tally: Vec<usize> = asked.values().copied().collect();
    tally.sort_unstable();
    assert_eq!(
        tally,
        [1, 1, times],
        "requests of /v1/subscriptions by query: {asked:?}"
    );
    let stormed = asked.iter().find(|(_, n)| **n == times).unwrap().0;
    let stormed = page_objects(&fake, "/v1/subscriptions", stormed).await;
    assert_eq!(stormed.len(), SUBSCRIPTIONS - 200, "the storm hit the third page");

    let pages = assert_whole_pages(reference, &fake, side.url()).await;
    figures.add("pages committed before the failure", pages);
    let landed = licenses(side.url());
    let of_stormed: Vec<&String> = landed
        .keys()
        .filter(|g| stormed.contains(&purchase(&landed[*g])))
        .collect();
    assert!(
        of_stormed.is_empty(),
        "nothing of the page the storm hit landed: {of_stormed:?}"
    );
    let keys_before = keys(side.url());
    assert_eq!(
        issued_in(&report),
        keys_before,
        "the table holds exactly the pages the failed run committed, with their keys"
    );
    // Not vacuous: a list's pages reach the writer in the order they were
    // read, so the two answered before the storm come ahead of its error.
    assert!(!keys_before.is_empty(), "the pages before the storm committed");
    assert!(
        history(side.url()).values().all(|h| h == "issue / license_issued=sent"),
        "each landed license has its issue and its (sent) email, nothing else: {:?}",
        history(side.url())
    );
    assert_every_license_whole(side.url());
    side.assert_one_email_per_license();
    let recorded = runs(side.url());
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].0, "failed", "{recorded:?}");
    assert!(
        recorded[0]
            .1
            .as_deref()
            .is_some_and(|e| e.contains("GET /v1/subscriptions")),
        "{recorded:?}"
    );

    run(&mut figures, side.reconcile(&fake)).await.report();
    assert_eq!(licenses(side.url()), reference.licenses, "the next run converges");
    assert_eq!(
        history(side.url()),
        reference.history,
        "with the same ledger and emails"
    );
    assert_every_license_whole(side.url());
    side.assert_one_email_per_license();
    let keys_after = keys(side.url());
    for (grant, key) in &keys_before {
        assert_eq!(keys_after.get(grant), Some(key), "{grant} keeps its key");
    }
    assert_eq!(outcomes(side.url()), ["failed", "succeeded"]);
    figures.print();
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_bursts_of_429_with_and_without_retry_after_are_retried() {
    stripe_burst(
        "stripe 429 bursts",
        Burst {
            faults: vec![
                (
                    "/v1/subscriptions",
                    FaultKind::TooManyRequests { retry_after_secs: 1 },
                    3,
                ),
                ("/v1/checkout/sessions", FaultKind::TooManyRequestsWithoutRetryAfter, 3),
            ],
            faults_logged: vec![
                ("/v1/subscriptions", vec![429; 3]),
                ("/v1/checkout/sessions", vec![429; 3]),
            ],
            abandoned: 0,
            // The Retry-After of the first is honoured as given.
            stderr_mentions: vec!["status=429", "wait=1s"],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_bursts_of_5xx_dropped_connections_cut_bodies_and_html_pages_are_retried() {
    stripe_burst(
        "stripe 5xx/drop/truncated/non-JSON bursts",
        Burst {
            faults: vec![
                ("/v1/products", FaultKind::ServerError(500), 2),
                ("/v1/prices", FaultKind::ServerError(503), 2),
                ("/v1/subscriptions", FaultKind::Pass, 1),
                ("/v1/subscriptions", FaultKind::DropConnection, 2),
                ("/v1/checkout/sessions", FaultKind::TruncatedBody, 2),
                // A full scan finds one-off invoices through their items
                // (it no longer lists `/v1/invoices`).
                ("/v1/invoiceitems", FaultKind::NonJsonBody(502), 2),
                ("/v1/refunds", FaultKind::NonJsonBody(200), 2),
            ],
            faults_logged: vec![
                ("/v1/products", vec![500, 500]),
                ("/v1/prices", vec![503, 503]),
                // After the first page answered: the second page's request, twice.
                ("/v1/subscriptions", vec![0, 0]),
                // A cut body is logged with the status its headers carried.
                ("/v1/checkout/sessions", vec![200, 200]),
                ("/v1/invoiceitems", vec![502, 502]),
                ("/v1/refunds", vec![200, 200]),
            ],
            abandoned: 0,
            stderr_mentions: vec![
                "connection closed before message completed",
                "end of file before message length reached",
                "answer is not JSON",
            ],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_answer_slower_than_the_client_timeout_is_abandoned_and_retried() {
    // One answer 35 s late: the client gives up after its 30 s timeout and
    // asks again (the fake never logs the abandoned one: its connection is
    // gone when it would answer). The only test here that waits that long.
    stripe_burst(
        "stripe slow answer",
        Burst {
            faults: vec![("/v1/checkout/sessions", FaultKind::Latency(Duration::from_secs(35)), 1)],
            faults_logged: vec![("/v1/checkout/sessions", vec![])],
            abandoned: 1,
            stderr_mentions: vec!["no complete response within 30s"],
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_429_with_retry_after_fails_the_run_after_whole_pages_and_the_next_run_converges() {
    stripe_storm(
        "stripe 429 storm (Retry-After)",
        FaultKind::TooManyRequests { retry_after_secs: 1 },
        STRIPE_ATTEMPTS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_429_without_retry_after_fails_the_run_after_whole_pages_and_the_next_run_converges() {
    stripe_storm(
        "stripe 429 storm (no Retry-After)",
        FaultKind::TooManyRequestsWithoutRetryAfter,
        STRIPE_ATTEMPTS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_500_fails_the_run_after_whole_pages_and_the_next_run_converges() {
    stripe_storm("stripe 500 storm", FaultKind::ServerError(500), STRIPE_ATTEMPTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_503_fails_the_run_after_whole_pages_and_the_next_run_converges() {
    stripe_storm("stripe 503 storm", FaultKind::ServerError(503), STRIPE_ATTEMPTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_connections_throughout_fail_the_run_after_whole_pages_and_the_next_run_converges() {
    stripe_storm(
        "stripe dropped-connection storm",
        FaultKind::DropConnection,
        STRIPE_ATTEMPTS,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_bodies_throughout_fail_the_run_after_whole_pages_and_the_next_run_converges() {
    stripe_storm("stripe truncated-body storm", FaultKind::TruncatedBody, STRIPE_ATTEMPTS).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn html_pages_instead_of_json_fail_the_run_after_whole_pages_and_the_next_run_converges() {
    stripe_storm(
        "stripe non-JSON 200 storm",
        FaultKind::NonJsonBody(200),
        STRIPE_ATTEMPTS,
    )
    .await;
}

// ---- SMTP ------------------------------------------------------------------------

use mail_support::{SinkOptions, SmtpSink};

/// Subscriptions in a small shop whose license emails go through SMTP.
const MAILED: usize = 6;

/// A database and a small account: [`MAILED`] subscriptions, each its own
/// customer with an address.
struct Mailing {
    db: TestDb,
    fake: FakeStripe,
}

impl Mailing {
    async fn new() -> Mailing {
        let fake = FakeStripe::start().await;
        let now = Utc::now().timestamp();
        fake.set_now(now - 3600);
        let product = fake.create_product("Editor", &[("product_id", "editor")]);
        let monthly = fake.create_price(&product, Some("month"), 900, &[]);
        for i in 0..MAILED {
            let customer = fake.create_customer(Some(&format!("mailed{i}@example.test")), None);
            fake.create_subscription(SubscriptionSpec {
                customer,
                items: vec![(monthly.clone(), 1)],
                current_period_start: Some(now - DAY),
                current_period_end: Some(now + 29 * DAY),
                ..SubscriptionSpec::default()
            });
        }
        fake.set_now(now);
        Mailing {
            db: TestDb::new(),
            fake,
        }
    }

    fn reconcile(&self, mail_url: &str) -> Command {
        let mut cmd = licensync();
        cmd.args(["reconcile", "--output", "json"])
            .env("DATABASE_URL", &self.db.url)
            .env("STRIPE_API_BASE", self.fake.base_url())
            .env("STRIPE_API_KEY", self.fake.api_key())
            .env("LICENSYNC_MAIL_URL", mail_url);
        cmd
    }

    /// The backoff of every pending email runs out (the binary runs on the
    /// wall clock; the next attempt would otherwise wait a minute or more).
    fn backoff_passes(&self) {
        self.db
            .store
            .batch_execute("UPDATE email_outbox SET next_attempt_at = now() WHERE status = 'pending'")
            .unwrap();
    }

    /// `(id, status, attempts, last_error)` of every outbox row, by id.
    fn outbox(&self) -> Vec<(i64, String, i64, Option<String>)> {
        rows(
            &self.db.url,
            "SELECT id, status, attempts, last_error FROM email_outbox ORDER BY id",
        )
        .into_iter()
        .map(|r| {
            (
                r["id"].as_i64().unwrap(),
                r["status"].as_str().unwrap().to_owned(),
                r["attempts"].as_i64().unwrap(),
                r["last_error"].as_str().map(str::to_owned),
            )
        })
        .collect()
    }

    /// After a pass that met a transient failure: the first row was tried
    /// once and kept with the error, the others not tried at all (the pass
    /// stops), nothing lost.
    fn assert_first_pending_with(&self, error: &[&str]) {
        let outbox = self.outbox();
        assert_eq!(outbox.len(), MAILED, "{outbox:?}");
        assert!(outbox.iter().all(|(_, status, _, _)| status == "pending"), "{outbox:?}");
        let (_, _, attempts, last_error) = &outbox[0];
        assert_eq!(*attempts, 1, "{outbox:?}");
        let last_error = last_error.as_deref().unwrap_or_default();
        assert!(
            error.iter().any(|e| last_error.contains(e)),
            "the error is kept with the row, one of {error:?}: {last_error}"
        );
        assert!(
            outbox[1..].iter().all(|(_, _, attempts, _)| *attempts == 0),
            "{outbox:?}"
        );
    }

    /// Once the server works: every license's email arrived, each exactly
    /// once, or, for the rows in `repeatable`, possibly twice, and then
    /// always with the Message-ID of its outbox row; every row is sent.
    fn assert_each_arrived_once(&self, received: &[mail_support::Received], repeatable: &[i64]) -> usize {
        let outbox = self.outbox();
        assert!(outbox.iter().all(|(_, status, _, _)| status == "sent"), "{outbox:?}");
        let by_key: BTreeMap<String, i64> = rows(
            &self.db.url,
            "SELECT l.key, o.id FROM licenses l JOIN email_outbox o ON o.license_id = l.id",
        )
        .into_iter()
        .map(|r| (r["key"].as_str().unwrap().to_owned(), r["id"].as_i64().unwrap()))
        .collect();
        assert_eq!(by_key.len(), MAILED);
        let mut arrived: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for message in received {
            let parsed = mail_support::parse(&message.raw);
            let keys = license_keys(&String::from_utf8_lossy(&message.raw));
            assert_eq!(keys.len(), 1, "one key per message: {keys:?}");
            let id = parsed.message_id().expect("a Message-ID").to_owned();
            arrived.entry(keys.into_iter().next().unwrap()).or_default().push(id);
        }
        assert_eq!(
            arrived.keys().collect::<BTreeSet<_>>(),
            by_key.keys().collect::<BTreeSet<_>>(),
            "every license's email arrived, and only theirs"
        );
        let mut repeats = 0;
        for (key, ids) in &arrived {
            let row = by_key[key];
            let expected = format!("licensync-outbox-{row}@localhost");
            assert!(
                ids.iter().all(|id| *id == expected),
                "{key}: {ids:?}, expected {expected}"
            );
            if repeatable.contains(&row) {
                assert!(ids.len() <= 2, "{key} arrived {} times", ids.len());
            } else {
                assert_eq!(ids.len(), 1, "{key} arrived {} times", ids.len());
            }
            repeats += ids.len() - 1;
        }
        repeats
    }
}

/// A loopback port nobody listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_down_keeps_every_email_pending_until_the_server_is_back_then_each_arrives_once() {
    let mut figures = Figures::new("smtp down");
    let w = Mailing::new().await;
    let port = free_port();
    let url = format!("smtp://127.0.0.1:{port}?tls=none");

    figures.fault("smtp down (connection refused)", 1);
    let report = run(&mut figures, w.reconcile(&url)).await.report();
    assert_eq!(report["emails_sent"], 0);
    assert_eq!(report["counts"]["issued"], MAILED);
    w.assert_first_pending_with(&["Connection refused", "connection refused"]);

    // The server comes back where it was.
    let sink = SmtpSink::start_with(SinkOptions {
        port: Some(port),
        ..SinkOptions::default()
    });
    w.backoff_passes();
    let report = run(&mut figures, w.reconcile(&url)).await.report();
    assert_eq!(report["emails_sent"], MAILED);
    w.assert_each_arrived_once(&sink.received(), &[]);
    // And a third run sends nothing again.
    let report = run(&mut figures, w.reconcile(&url)).await.report();
    assert_eq!(report["emails_sent"], 0);
    assert_eq!(sink.received().len(), MAILED);
    assert_eq!(outcomes(&w.db.url), ["succeeded", "succeeded", "succeeded"]);
    figures.print();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_smtp_server_refusing_service_or_deferring_keeps_the_email_pending_then_each_arrives_once() {
    let mut figures = Figures::new("smtp refusing");
    let w = Mailing::new().await;
    // 421 at the greeting for two connections, then 451 at DATA for one message.
    let sink = SmtpSink::start_with(SinkOptions {
        refuse_first: 2,
        defer_first: 1,
        ..SinkOptions::default()
    });
    figures.fault("smtp 421 greeting", 2);
    figures.fault("smtp 451 at DATA", 1);
    let url = sink.plain_url();

    run(&mut figures, w.reconcile(&url)).await.report();
    w.assert_first_pending_with(&["421"]);
    w.backoff_passes();
    run(&mut figures, w.reconcile(&url)).await.report();
    let outbox = w.outbox();
    assert_eq!(outbox[0].2, 2, "tried again: {outbox:?}");
    assert!(outbox[0].3.as_deref().unwrap_or_default().contains("421"), "{outbox:?}");
    w.backoff_passes();
    run(&mut figures, w.reconcile(&url)).await.report();
    let outbox = w.outbox();
    assert_eq!(outbox[0].2, 3, "{outbox:?}");
    assert!(outbox[0].3.as_deref().unwrap_or_default().contains("451"), "{outbox:?}");
    assert!(sink.received().is_empty(), "nothing accepted yet");
    w.backoff_passes();
    let report = run(&mut figures, w.reconcile(&url)).await.report();
    assert_eq!(report["emails_sent"], MAILED);
    w.assert_each_arrived_once(&sink.received(), &[]);
    figures.print();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_smtp_server_gets_each_email_once() {
    let mut figures = Figures::new("smtp slow");
    let w = Mailing::new().await;
    let sink = SmtpSink::start_with(SinkOptions {
        delay_data: Some(Duration::from_millis(700)),
        ..SinkOptions::default()
    });
    figures.fault("smtp slow DATA answer", MAILED);
    let report = run(&mut figures, w.reconcile(&sink.plain_url())).await.report();
    assert_eq!(report["emails_sent"], MAILED);
    w.assert_each_arrived_once(&sink.received(), &[]);
    figures.print();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_killed_while_a_slow_smtp_server_holds_its_message_repeats_it_only_with_the_same_message_id() {
    let mut figures = Figures::new("smtp slow, sender killed");
    let w = Mailing::new().await;
    let sink = SmtpSink::start_with(SinkOptions {
        delay_data: Some(Duration::from_secs(4)),
        ..SinkOptions::default()
    });
    figures.fault("smtp slow DATA answer", 1);
    figures.fault("sender killed mid-DATA", 1);
    let url = sink.plain_url();
    let mut child = tokio::process::Command::from(w.reconcile(&url))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    figures.add("licensync runs", 1);
    // The first email is claimed, then its DATA waits on the server: kill
    // the sender a second into that wait, as a deadline would.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let claimed = count(
            &w.db.url,
            "SELECT id FROM email_outbox WHERE claimed_by IS NOT NULL AND attempts = 1",
        );
        if claimed > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no email was claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let killed: Vec<i64> = w.outbox().iter().filter(|o| o.2 == 1).map(|o| o.0).collect();
    assert_eq!(killed.len(), 1, "one email was in flight: {:?}", w.outbox());
    // Let the server finish with the message it was holding, then serve
    // at normal speed on the same port.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = sink.received();
    let port = sink.port;
    drop(sink);
    let sink = SmtpSink::start_with(SinkOptions {
        port: Some(port),
        ..SinkOptions::default()
    });

    // The next run takes the dead sender's row at once, without waiting
    // out its lease, and sends everything.
    let report = run(&mut figures, w.reconcile(&url)).await.report();
    assert_eq!(report["emails_sent"], MAILED);
    received.extend(sink.received());
    let repeats = w.assert_each_arrived_once(&received, &killed);
    figures.add("emails repeated (same Message-ID)", repeats);
    figures.print();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_smtp_server_that_accepts_then_drops_the_connection_gets_the_message_again_with_the_same_message_id() {
    let mut figures = Figures::new("smtp accept then drop");
    let w = Mailing::new().await;
    let sink = SmtpSink::start_with(SinkOptions {
        drop_after_data: 1,
        ..SinkOptions::default()
    });
    figures.fault("smtp accepted then dropped", 1);
    let url = sink.plain_url();
    run(&mut figures, w.reconcile(&url)).await.report();
    assert_eq!(sink.received().len(), 1, "the server kept the first message");
    w.assert_first_pending_with(&["connection", "Connection", "closed", "incomplete"]);
    let first = w.outbox()[0].0;
    w.backoff_passes();
    let report = run(&mut figures, w.reconcile(&url)).await.report();
    assert_eq!(report["emails_sent"], MAILED);
    let repeats = w.assert_each_arrived_once(&sink.received(), &[first]);
    assert_eq!(repeats, 1, "the one the client never heard about came again");
    figures.add("emails repeated (same Message-ID)", repeats);
    figures.print();
}

// ---- a full disk under the file transport -------------------------------------------

/// A tiny tmpfs mounted on a temporary directory, unmounted on drop; `None`
/// when this machine does not let us mount (not root, no CAP_SYS_ADMIN).
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(size: &str) -> Option<TinyDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("cannot mount a tmpfs: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(TinyDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes `path` until the disk has fewer than `leave` bytes left.
fn fill(path: &Path, leave: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![b'x'; 512];
    loop {
        let free = fs4::available_space(path.parent().unwrap()).unwrap();
        if free <= leave {
            break;
        }
        let n = (free - leave).min(chunk.len() as u64) as usize;
        if file.write_all(&chunk[..n]).and_then(|()| file.sync_all()).is_err() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_under_the_file_transport_keeps_the_email_pending_with_the_error() {
    let mut figures = Figures::new("disk full");
    let w = Mailing::new().await;
    let disk = TinyDisk::mount("64k").expect(
        "mounting a 64 KiB tmpfs (run as root with CAP_SYS_ADMIN, as CI does); \
         there is no other way to make writes fail with ENOSPC",
    );
    let outbox = disk.path().join("outbox");
    std::fs::create_dir(&outbox).unwrap();
    let filler = disk.path().join("filler");
    fill(&filler, 0);
    figures.fault("disk full (ENOSPC)", 1);
    let url = format!("file://{}", outbox.display());

    let report = run(&mut figures, w.reconcile(&url)).await.report();
    assert_eq!(report["emails_sent"], 0);
    w.assert_first_pending_with(&["No space left on device"]);
    // The failed write leaves its file behind: empty here (tmpfs gives
    // space by the page; another filesystem may keep a truncated message).
    let left_behind = std::fs::read_dir(&outbox).unwrap().count();
    assert!(left_behind <= 1, "{left_behind} files after one failed write");

    std::fs::remove_file(&filler).unwrap();
    w.backoff_passes();
    let report = run(&mut figures, w.reconcile(&url)).await.report();
    assert_eq!(report["emails_sent"], MAILED);
    let outbox_rows = w.outbox();
    assert!(outbox_rows.iter().all(|o| o.1 == "sent"), "{outbox_rows:?}");
    // Each license's message is there exactly once, whole.
    let files: Vec<PathBuf> = std::fs::read_dir(&outbox).unwrap().map(|e| e.unwrap().path()).collect();
    let mut whole = BTreeMap::new();
    let mut broken = Vec::new();
    for file in &files {
        let raw = std::fs::read(file).unwrap();
        let keys = license_keys(&String::from_utf8_lossy(&raw));
        let parsed = mail_parser::MessageParser::default().parse(&raw);
        match (keys.len(), parsed.as_ref().and_then(|m| m.message_id())) {
            (1, Some(id)) => {
                *whole
                    .entry((keys.into_iter().next().unwrap(), id.to_owned()))
                    .or_insert(0) += 1
            }
            _ => broken.push((file.clone(), raw.len())),
        }
    }
    assert_eq!(whole.len(), MAILED, "{whole:?}");
    assert!(whole.values().all(|n| *n == 1), "{whole:?}");
    assert_eq!(
        broken.len(),
        left_behind,
        "only the failed write's file is not a whole message: {broken:?}"
    );
    figures.add("unusable .eml files left by the failed write", broken.len());
    figures.print();
}

// ---- PostgreSQL ------------------------------------------------------------------

use licensync::pg::{Binaries, Cluster, Tuning};

/// A PostgreSQL cluster of this test alone (the shared one of
/// `common` serves the other tests of this process, so it is never
/// restarted), with one database `faults`; stopped on drop.
struct OwnCluster {
    cluster: Cluster,
    tuning: Tuning,
    _dir: tempfile::TempDir,
}

impl OwnCluster {
    /// `settings` go to `postgresql.auto.conf` (ALTER SYSTEM) before the start.
    fn start(tuning: Tuning, settings: &[(&str, &str)]) -> OwnCluster {
        let binaries = Binaries::discover().expect("PostgreSQL server binaries (see README)");
        // /tmp, not the target dir: the postgres user must be able to reach it.
        let dir = tempfile::Builder::new()
            .prefix("licensync-faults-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let cluster = Cluster::new(binaries, dir.path()).unwrap();
        cluster
            .ensure_running(tuning)
            .expect("starting a cluster of the test's own");
        let own = OwnCluster {
            cluster,
            tuning,
            _dir: dir,
        };
        if !settings.is_empty() {
            let mut conn = PgConnection::establish(&own.cluster.url("postgres")).unwrap();
            for (name, value) in settings {
                diesel::sql_query(format!("ALTER SYSTEM SET {name} = '{value}'"))
                    .execute(&mut conn)
                    .unwrap();
            }
            drop(conn);
            own.restart();
        }
        licensync::db::create_database_if_missing(&own.cluster.url("postgres"), "faults").unwrap();
        own
    }

    fn url(&self) -> String {
        self.cluster.url("faults")
    }

    /// `pg_ctl stop -m fast` (every session is terminated), then start again.
    fn restart(&self) {
        self.cluster.stop(false).expect("stopping the cluster");
        self.cluster
            .ensure_running(self.tuning)
            .expect("starting the cluster again");
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.cluster.stop(true);
    }
}

/// `reconcile --output json` against `url`, writing mail to `mail`.
fn reconcile_on(fake: &FakeStripe, url: &str, mail: &Path) -> Command {
    let mut cmd = licensync();
    cmd.args(["reconcile", "--output", "json"])
        .env("DATABASE_URL", url)
        .env("STRIPE_API_BASE", fake.base_url())
        .env("STRIPE_API_KEY", fake.api_key())
        .env("LICENSYNC_MAIL_URL", format!("file://{}", mail.display()));
    cmd
}

/// The binary, started in the background.
fn spawn(figures: &mut Figures, cmd: Command) -> tokio::process::Child {
    figures.add("licensync runs", 1);
    tokio::process::Command::from(cmd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the licensync binary")
}

async fn finish(child: tokio::process::Child) -> Ran {
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("licensync finished within the time limit")
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: without_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// Polls `condition` every 20 ms for up to 40 s.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes the third page of subscriptions come 3 s late, so that the test
/// can act between the second page's commit and the third's write. The
/// Checkout Sessions, read alongside, may be written before, in or after
/// that gap.
fn hold_third_page(figures: &mut Figures, fake: &FakeStripe) {
    figures.inject(fake, "/v1/subscriptions", FaultKind::Pass, 2);
    fake.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::Latency(Duration::from_secs(3)),
        times: 1,
    });
}

/// Once the first two pages of subscriptions committed, takes a SHARE lock
/// on the licenses (reads go on, page writes wait) and waits until the
/// run's next page write waits on it: the third page of subscriptions, or
/// the Checkout Sessions' page if that was not written yet. A run writes
/// one page at a time, so the table then holds every page the run
/// committed and nothing else, and keeps it while the write waits. Returns
/// the connection holding the lock and those licenses, `{grant: key}`.
async fn block_the_next_page_write(url: &str) -> (PgConnection, BTreeMap<String, String>) {
    wait_for("the first two pages of subscriptions to commit", || {
        count_now(url, SUBSCRIPTION_LICENSES) >= 200
    })
    .await;
    let mut lock = PgConnection::establish(url).unwrap();
    lock.batch_execute("BEGIN; LOCK TABLE licenses IN SHARE MODE").unwrap();
    wait_for("the next page's write to wait on the lock", || {
        count_now(
            url,
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        ) > 0
    })
    .await;
    assert_eq!(
        count(url, SUBSCRIPTION_LICENSES),
        200,
        "the third page of subscriptions is not written yet"
    );
    (lock, keys(url))
}

/// After a run that failed writing a page: the table holds exactly the
/// pages it committed before (`committed`, with their keys), so nothing of
/// the failed page nor of any page after it; each page whole and each
/// license the reference's with its issue and email; no run recorded as
/// succeeded.
async fn assert_committed_pages_and_no_success(
    reference: &Reference,
    fake: &FakeStripe,
    url: &str,
    committed: &BTreeMap<String, String>,
) {
    assert_eq!(
        &keys(url),
        committed,
        "exactly the pages committed before the failed write, with their keys"
    );
    assert_landed_whole_and_no_success(reference, fake, url).await;
}

/// After a failed run: every page of a purchase list landed whole or not at
/// all, every license in the table is the reference's with its issue and
/// email; no run recorded as succeeded.
async fn assert_landed_whole_and_no_success(reference: &Reference, fake: &FakeStripe, url: &str) {
    assert_whole_pages(reference, fake, url).await;
    assert_every_license_whole(url);
    let recorded = runs(url);
    assert!(
        recorded.iter().all(|(outcome, _)| outcome != "succeeded"),
        "the failed run is not recorded as succeeded: {recorded:?}"
    );
}

/// The next run without the fault: the reference's licenses and history,
/// each license mailed exactly once, the run recorded as succeeded.
async fn assert_next_run_converges(
    figures: &mut Figures,
    reference: &Reference,
    fake: &FakeStripe,
    url: &str,
    mail: &Path,
) {
    let keys_before = keys(url);
    run(figures, reconcile_on(fake, url, mail)).await.report();
    assert_eq!(licenses(url), reference.licenses, "the next run converges");
    assert_eq!(history(url), reference.history, "with the same ledger and emails");
    assert_every_license_whole(url);
    let keys_after = keys(url);
    for (grant, key) in &keys_before {
        assert_eq!(keys_after.get(grant), Some(key), "{grant} keeps its key");
    }
    assert_eq!(runs(url).last().map(|r| r.0.as_str()), Some("succeeded"));
    let emails = common::eml_files(mail);
    let mut mailed: BTreeMap<String, usize> = BTreeMap::new();
    for email in &emails {
        for key in license_keys(email) {
            *mailed.entry(key).or_default() += 1;
        }
    }
    let expected: BTreeSet<String> = keys_after.into_values().collect();
    assert_eq!(
        mailed.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every license mailed"
    );
    assert!(mailed.values().all(|n| *n == 1), "none twice: {mailed:?}");
}

/// The server restarts while a page's transaction waits on a lock: the
/// run fails writing that page (whichever list's page it is: the lists are
/// read side by side), keeps exactly the pages it committed before, whole,
/// and records its failure once the server is back; the next run converges.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_while_a_page_is_written_fails_the_run_which_the_next_run_repairs() {
    let mut figures = Figures::new("postgres restarted mid-run");
    let reference = reference(&mut figures).await;
    let fake = shop().await;
    let pg = OwnCluster::start(Tuning { unsafe_fast: true }, &[]);
    let url = pg.url();
    let mail = tempfile::tempdir().unwrap();
    hold_third_page(&mut figures, &fake);

    let child = spawn(&mut figures, reconcile_on(&fake, &url, mail.path()));
    let (lock, committed) = block_the_next_page_write(&url).await;
    figures.add("licenses committed before the page write that failed", committed.len());
    // The page's transaction is open and waiting: restart the server under it.
    figures.fault("postgres restart", 1);
    let restart = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    });
    let ran = finish(child).await;
    let pg = restart.await.unwrap();
    drop(lock);
    assert_eq!(ran.code, 1, "{}", ran.all());
    let error = ran
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("writing a page of license changes"), "{}", ran.all());
    assert_committed_pages_and_no_success(reference, &fake, &url, &committed).await;
    assert_eq!(
        issued_in(&ran.json()),
        committed,
        "the failed run reports the pages it committed"
    );
    // The failed run records itself once the server is back.
    let recorded = runs(&url);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, "failed", "{recorded:?}");

    assert_next_run_converges(&mut figures, reference, &fake, &url, mail.path()).await;
    drop(pg);
    figures.print();
}

/// A page's write outlives `statement_timeout` (it waits on a lock): the
/// run fails naming the timeout, keeps exactly the pages it committed
/// before, whole, and records its failure; the next run converges.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_timeout_on_a_page_write_fails_the_run_which_the_next_run_repairs() {
    let mut figures = Figures::new("postgres statement_timeout");
    let reference = reference(&mut figures).await;
    let fake = shop().await;
    let db = TestDb::new();
    let mail = tempfile::tempdir().unwrap();
    hold_third_page(&mut figures, &fake);

    // Every statement of this run may take 1.5 s at most.
    let timed = format!("{}&options=-c%20statement_timeout%3D1500", db.url);
    figures.fault("postgres statement_timeout", 1);
    let child = spawn(&mut figures, reconcile_on(&fake, &timed, mail.path()));
    let (mut lock, committed) = block_the_next_page_write(&db.url).await;
    figures.add("licenses committed before the page write that failed", committed.len());
    let ran = finish(child).await;
    lock.batch_execute("ROLLBACK").unwrap();
    drop(lock);
    let report = ran.failed_naming("canceling statement due to statement timeout");
    assert_eq!(report["outcome"], "failed");
    assert_committed_pages_and_no_success(reference, &fake, &db.url, &committed).await;
    assert_eq!(
        issued_in(&report),
        committed,
        "the failed run reports the pages it committed"
    );
    assert_eq!(outcomes(&db.url), ["failed"], "the run recorded its own failure");

    assert_next_run_converges(&mut figures, reference, &fake, &db.url, mail.path()).await;
    assert_eq!(outcomes(&db.url), ["failed", "succeeded"]);
    figures.print();
}

/// Every connection slot taken before a run: it cannot start and writes
/// nothing. Taken once two pages of subscriptions committed: the run either
/// lands everything with the connections its pool and its sender hold (an
/// email that needed a new connection waits), or fails leaving only whole
/// pages. Either way the next run converges.
#[tokio::test(flavor = "multi_thread")]
async fn every_connection_slot_taken_before_or_during_a_run_loses_nothing() {
    let mut figures = Figures::new("postgres connection slots exhausted");
    let reference = reference(&mut figures).await;
    let fake = shop().await;
    // Few slots; no command-line tuning, which would set max_connections itself.
    let pg = OwnCluster::start(
        Tuning::default(),
        &[
            ("max_connections", "12"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
        ],
    );
    let url = pg.url();
    let mail = tempfile::tempdir().unwrap();
    licensync::store::Store::connect(&licensync::secret::Secret::from(url.clone()))
        .unwrap()
        .migrate()
        .unwrap();

    // Every slot taken before the run: it cannot even start.
    let take_all = || {
        let mut held = Vec::new();
        while let Ok(conn) = PgConnection::establish(&url) {
            held.push(conn);
        }
        held
    };
    let held = take_all();
    assert!(held.len() >= 10, "{} slots", held.len());
    figures.fault("postgres connection slots exhausted", 1);
    let ran = run(&mut figures, reconcile_on(&fake, &url, mail.path())).await;
    assert_eq!(ran.code, 1, "{}", ran.all());
    assert!(ran.stderr.contains("too many clients"), "{}", ran.all());
    drop(held);
    assert!(runs(&url).is_empty(), "nothing was recorded");
    assert!(licenses(&url).is_empty());

    // Every slot taken between two pages: the run goes on with the
    // connections its pool holds; what needs a new one fails.
    hold_third_page(&mut figures, &fake);
    let child = spawn(&mut figures, reconcile_on(&fake, &url, mail.path()));
    wait_for("the first two pages of subscriptions to commit", || {
        count_now(&url, SUBSCRIPTION_LICENSES) >= 200
    })
    .await;
    let mut held = Some(take_all());
    figures.fault("postgres connection slots exhausted", 1);
    // Given back after 8 s at the latest, should the run wait for a slot.
    let finished = finish(child);
    tokio::pin!(finished);
    let ran = match tokio::time::timeout(Duration::from_secs(8), &mut finished).await {
        Ok(ran) => ran,
        Err(_) => {
            held = None;
            finished.await
        }
    };
    drop(held);
    match ran.code {
        // The pages landed. The sender opened its own session when the run
        // began, so it sends with that and the pool's connections; what it
        // could not send for want of a new connection waits for the next run.
        0 => {
            let report = ran.report();
            assert_eq!(licenses(&url), reference.licenses);
            let sent = count(&url, "SELECT id FROM email_outbox WHERE status = 'sent'");
            let pending = count(&url, "SELECT id FROM email_outbox WHERE status = 'pending'");
            assert_eq!(report["emails_sent"], sent, "{}", ran.all());
            assert_eq!(sent + pending, reference.licenses.len(), "every email sent or pending");
            if pending > 0 {
                assert!(ran.stderr.contains("could not deliver license emails"), "{}", ran.all());
                assert!(ran.stderr.contains("too many clients"), "{}", ran.all());
            }
            figures.add("runs that went on without a new connection", 1);
        }
        1 => assert_landed_whole_and_no_success(reference, &fake, &url).await,
        _ => panic!("{}", ran.all()),
    }
    assert_next_run_converges(&mut figures, reference, &fake, &url, mail.path()).await;
    figures.print();
}

/// The run lock is a session-level advisory lock that a server restart
/// releases; the run goes on with fresh pool connections while a second run
/// may take the lock. Page writes are fenced by the lock's session, so one
/// of two overlapping runs ends with exit 75 (locked) or fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_lost_its_lock_in_a_postgres_restart_does_not_overlap_another() {
    let mut figures = Figures::new("postgres restart between pages, then a second run");
    let fake = shop().await;
    let pg = OwnCluster::start(Tuning { unsafe_fast: true }, &[]);
    let url = pg.url();
    let mail = tempfile::tempdir().unwrap();
    figures.inject(&fake, "/v1/subscriptions", FaultKind::Pass, 2);
    fake.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::Latency(Duration::from_secs(6)),
        times: 1,
    });
    let first = spawn(&mut figures, reconcile_on(&fake, &url, mail.path()));
    wait_for("the first two pages of subscriptions to commit", || {
        count_now(&url, SUBSCRIPTION_LICENSES) >= 200
    })
    .await;
    // The run waits on Stripe, not on the database: restart the server.
    figures.fault("postgres restart", 1);
    let pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    let second = run(&mut figures, reconcile_on(&fake, &url, mail.path())).await;
    let first = finish(first).await;
    let succeeded = [first.code, second.code].iter().filter(|c| **c == 0).count();
    assert!(
        succeeded <= 1,
        "two overlapping runs both succeeded:\n{}\n{}\nruns: {:?}",
        first.all(),
        second.all(),
        runs(&url)
    );
    drop(pg);
    figures.print();
}
