//! The full-run benchmark (testing.md "Benchmarks are not tests"): serves a
//! real account's mix of purchases from the in-process fake Stripe (85%
//! subscriptions, each with a paid invoice per past billing period up to a
//! year; 14% one-time Checkout Sessions; 1% one-off invoices), optionally
//! with Stripe's latency and rate limits, runs the real release binary's
//! `reconcile --full` against a throwaway PostgreSQL cluster with license
//! emails written by the file transport, and prints wall time next to the
//! bound Stripe's rate limits imply, requests per object, peak memory,
//! objects/s and emails/s end to end, database time next to a `COPY` of the
//! same license rows, and CPU per process; then a second, no-op run. It
//! prints figures and asserts nothing about speed; it only refuses to report
//! figures of a run that failed or did not produce the licenses and emails
//! the account implies.
//!
//! Run (BENCHMARKS.md): `cargo build --release --bin licensync --example bench &&
//! target/release/examples/bench --n 10000` (cargo does not build the binary
//! for an example on its own).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};
use fake_stripe::{FakeStripe, GeneratedAccount, GeneratedSummary, Latency, Options, RateLimits};
use licensync::pg::{Binaries, Cluster, Tuning};
use serde_json::Value;

/// The fake Stripe serves from this process: see the note in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks a full reconcile of the release binary against a real account's mix in the fake Stripe")]
struct Args {
    /// Stripe purchases: 85% subscriptions, 14% one-time Checkout Sessions, 1% one-off invoices.
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    /// The most past billing periods (each with its paid invoice) of a
    /// subscription; purchases spread over (this + 1) * 30 days.
    #[arg(long, default_value_t = 12)]
    max_past_periods: u32,
    /// Seed of the generated account.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Store the account in the fake (FakeStripe::load_generated) instead of
    /// computing it per request: the same objects, for comparing the fake's
    /// own cost at small N (it takes memory per object).
    #[arg(long)]
    stored: bool,
    /// `--stripe-write-back` on: every issued key is written onto its Stripe
    /// object after the pages (needs --stored: the fake updates stored
    /// objects only). The report's `stripe_writes` is printed.
    #[arg(long, requires = "stored")]
    write_back: bool,
    /// Stripe's latency per request, uniform in MIN..MAX milliseconds (e.g. 50..300).
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_latency)]
    latency_ms: Option<Latency>,
    /// Enforce Stripe's rate limits in the fake (25/s per endpoint; 100/s
    /// overall live, 25/s test): over them it answers 429. licensync then
    /// keeps its own default ceiling for the key's mode instead of the
    /// benchmark's unlimited one.
    #[arg(long)]
    rate_limits: bool,
    /// A live-mode key (sk_live_): Stripe's live limits, 100/s overall.
    #[arg(long)]
    live: bool,
    /// LICENSYNC_STRIPE_RPS for licensync; default unlimited (100000)
    /// without --rate-limits, licensync's own default with them.
    #[arg(long, value_name = "RPS")]
    client_rps: Option<u32>,
    /// The licensync binary; default `licensync` next to this example's directory.
    #[arg(long)]
    licensync: Option<PathBuf>,
    /// Run PostgreSQL with `fsync=off` (the test harness's settings) instead of durable commits.
    #[arg(long)]
    unsafe_fast_db: bool,
    /// Skip the second (no-op) run.
    #[arg(long)]
    skip_noop: bool,
    /// Where the file transport writes each run's `.eml` files (in a new
    /// directory inside it, removed afterwards); default: beside the bench
    /// cluster in /tmp. Creating tens of thousands of files shortly after a
    /// previous run deleted as many makes ext4's inode allocator scan, and
    /// that kernel time lands in licensync's CPU: `/dev/shm` keeps it out.
    #[arg(long)]
    mail_dir: Option<PathBuf>,
    /// Stripe accounts, each with --n purchases and Stripe's limits of its
    /// own: the platform's own account and accounts-1 connected ones (the
    /// Stripe-Account header), reconciled side by side in one run
    /// (`--account-concurrency` = accounts).
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    /// LICENSYNC_ACCOUNT_CONCURRENCY with --accounts; default: every account at once.
    #[arg(long)]
    account_concurrency: Option<usize>,
}

/// `50..300` or `120` (milliseconds).
fn parse_latency(raw: &str) -> Result<Latency, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{s}` is not a number of milliseconds"))
    };
    let (min, max) = match raw.split_once("..") {
        Some((min, max)) => (number(min)?, number(max)?),
        None => (number(raw)?, number(raw)?),
    };
    if min > max {
        return Err(format!("the minimum {min} is above the maximum {max}"));
    }
    Ok(Latency::ms(min, max))
}

/// The list endpoints whose pages the full scan plans and applies one by one.
const PAGED: [&str; 5] = [
    "/v1/subscriptions",
    "/v1/checkout/sessions",
    "/v1/invoices",
    "/v1/refunds",
    "/v1/disputes",
];

/// The hidden first argument of the helper mode (see `measure_child`).
const MEASURE_CHILD: &str = "--measure-child";

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(MEASURE_CHILD) {
        return measure_child(&argv[2..]);
    }
    let args = Args::parse();
    let licensync = match &args.licensync {
        Some(path) => path.clone(),
        None => default_binary()?,
    };
    ensure!(
        licensync.is_file(),
        "no licensync binary at {}: build it first with `cargo build --release --bin licensync` (or pass --licensync PATH)",
        licensync.display()
    );
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let key = if args.live {
        "sk_live_bench_0123456789"
    } else {
        fake_stripe::DEFAULT_API_KEY
    };
    let fake = runtime.block_on(FakeStripe::start_with(Options {
        api_key: key.into(),
        seed_sample: false,
    }));

    println!("# licensync full-run benchmark");
    println!("binary: {}", licensync.display());
    let load_started = Instant::now();
    ensure!(args.accounts >= 1, "--accounts must be at least 1");
    let mut handles = vec![fake.clone()];
    handles.extend((1..args.accounts).map(|_| fake.connect_account()));
    let summaries: Vec<GeneratedSummary> = handles.iter().map(|h| load(h, &args)).collect();
    let account = summaries[0].clone();
    let k = args.accounts;
    let limits = RateLimits::stripe(fake.livemode());
    if k > 1 {
        println!(
            "accounts: {k} (the platform's own and {} connected ones), each with the account below and its own rate limits",
            k - 1
        );
    }
    println!(
        "fake Stripe ({}, {} mode): {} subscriptions ({} items; {} invoices with their history), \
         {} payment-mode Checkout Sessions ({} guest, {} lines), {} one-off invoices ({} lines), {} customers; \
         ready in {:.1} s",
        if args.stored { "stored" } else { "generated per request" },
        if fake.livemode() { "live" } else { "test" },
        account.subscriptions,
        account.subscription_items,
        account.invoices,
        account.sessions,
        account.guest_sessions,
        account.session_lines,
        account.one_off_invoices,
        account.one_off_lines,
        account.customers,
        load_started.elapsed().as_secs_f64()
    );
    println!(
        "conditions: latency {}, rate limits {}",
        args.latency_ms.map_or("none".to_owned(), |l| format!(
            "{}..{} ms",
            l.min.as_millis(),
            l.max.as_millis()
        )),
        if args.rate_limits {
            format!(
                "{}/s per endpoint, {}/s overall (429 over them)",
                limits.per_endpoint_rps, limits.global_rps
            )
        } else {
            "none".to_owned()
        }
    );
    fake.set_latency(args.latency_ms);
    if args.rate_limits {
        for h in &handles {
            h.set_rate_limits(Some(limits));
        }
    }

    let db = BenchDb::start(!args.unsafe_fast_db)?;
    println!(
        "database: PostgreSQL on a throwaway cluster in {} (fsync {}), statements counted with {}",
        db.dir.path().display(),
        if args.unsafe_fast_db { "off" } else { "on" },
        db.counter.describe()
    );

    let objects = k * (account.subscriptions + account.sessions + account.one_off_invoices);
    let licenses = k * (account.subscription_items + account.session_lines + account.one_off_lines);
    let client_rps = match (args.client_rps, args.rate_limits) {
        (Some(rps), _) => Some(rps),
        // Far above what the local fake serves, so the client never waits on its own limiter.
        (None, false) => Some(100_000),
        (None, true) => None,
    };
    let client = Client {
        rps: client_rps,
        limits,
        account_concurrency: args.account_concurrency,
        write_back: args.write_back,
        mail_dir: args.mail_dir.clone(),
    };
    let first = run_once(&runtime, &handles, &db, &licensync, "first (cold)", &client)?;
    let issued = first.count("issued");
    ensure!(
        issued == licenses as u64,
        "the first run issued {issued} licenses, the account implies {licenses}: not reporting figures of a wrong run. \
         Counts: {}; first skips: {}",
        first.report["counts"],
        first.report["skipped"]
            .as_array()
            .map_or(Value::Null, |s| Value::from(s[..s.len().min(3)].to_vec()))
    );
    ensure!(
        first.emails == licenses,
        "the first run wrote {} .eml files for {licenses} licenses (report emails_sent {})",
        first.emails,
        first.report["emails_sent"]
    );
    let copy = db.copy_licenses()?;
    let second = if args.skip_noop {
        None
    } else {
        let second = run_once(&runtime, &handles, &db, &licensync, "second (no-op)", &client)?;
        let changed: u64 = second
            .report
            .get("counts")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "unchanged" | "skipped"))
            .filter_map(|(_, v)| v.as_u64())
            .sum();
        ensure!(
            changed == 0,
            "the second run changed {changed} licenses; it should have had nothing to do"
        );
        Some(second)
    };

    println!();
    println!(
        "## Figures (N = {objects} Stripe purchases, {} Stripe objects with invoices and customers, {licenses} licenses)",
        objects + k * (account.invoices - account.one_off_invoices + account.customers)
    );
    first.print(objects, limits, args.latency_ms);
    println!(
        "COPY of the same {} license rows: out {:.3} s, into a copy of the table with its indexes {:.3} s \
         (the run's database time also writes the ledger, the outbox and the runs table)",
        copy.rows,
        copy.out.as_secs_f64(),
        copy.into.as_secs_f64()
    );
    if let Some(second) = &second {
        second.print(objects, limits, args.latency_ms);
        println!(
            "no-op run / first run wall time: {:.3}",
            second.wall.as_secs_f64() / first.wall.as_secs_f64()
        );
    }
    db.stop();
    Ok(())
}

/// `target/<profile>/licensync`, next to `target/<profile>/examples/bench`.
fn default_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this benchmark's own path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the benchmark is not inside a cargo target directory; pass --licensync PATH")?;
    Ok(profile_dir.join("licensync"))
}

/// The account: a real mix of `--n` purchases, generated per request (or
/// stored with `--stored`), laid out up to the real clock so that every
/// purchase is current and yields a license.
fn load(fake: &FakeStripe, args: &Args) -> GeneratedSummary {
    // The planner judges periods against the real clock.
    fake.set_now(chrono::Utc::now().timestamp());
    // A full run never reads events; their snapshots would take most of the memory.
    fake.set_record_events(false);
    let account = GeneratedAccount {
        max_past_periods: args.max_past_periods,
        ..GeneratedAccount::real_mix(args.n, args.seed)
    };
    if args.stored {
        fake.load_generated(account)
    } else {
        fake.generate(account);
        fake.generated_summary().expect("a generated account")
    }
}

// ---- the database ------------------------------------------------------------

/// How statements are counted.
enum Counter {
    /// `pg_stat_statements` (postgresql-contrib): every statement executed, BEGIN/COMMIT included.
    Statements,
    /// `pg_stat_database`: only transactions (commits + rollbacks) can be counted.
    Transactions,
}

impl Counter {
    fn describe(&self) -> &'static str {
        match self {
            Counter::Statements => "pg_stat_statements (every statement, BEGIN/COMMIT included)",
            Counter::Transactions => {
                "pg_stat_database xact_commit+xact_rollback (pg_stat_statements is not installed: transactions, not statements)"
            }
        }
    }
}

struct BenchDb {
    cluster: Cluster,
    dir: tempfile::TempDir,
    admin_url: String,
    url: String,
    counter: Counter,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Millis {
    #[diesel(sql_type = Double)]
    ms: f64,
}

struct CopyFigures {
    rows: i64,
    out: Duration,
    into: Duration,
}

#[derive(QueryableByName)]
struct TopStatement {
    #[diesel(sql_type = BigInt)]
    calls: i64,
    #[diesel(sql_type = Double)]
    ms: f64,
    #[diesel(sql_type = Text)]
    query: String,
}

impl BenchDb {
    fn start(durable: bool) -> Result<BenchDb> {
        let binaries = Binaries::discover()?;
        // /tmp, not the target dir: the postgres user must be able to reach it.
        let dir = tempfile::Builder::new()
            .prefix("licensync-bench-pg-")
            .tempdir_in("/tmp")
            .context("creating the cluster's temporary directory")?;
        let cluster = Cluster::new(binaries.clone(), dir.path())?;
        let tuning = Tuning { unsafe_fast: !durable };
        let counter = if stat_statements_installed(&binaries) {
            Counter::Statements
        } else {
            Counter::Transactions
        };
        let db = BenchDb {
            admin_url: cluster.url("postgres"),
            url: cluster.url("bench"),
            cluster,
            dir,
            counter,
        };
        // From here on, dropping `db` stops the server on any error path.
        db.cluster
            .ensure_running(tuning)
            .context("starting the bench cluster")?;
        let mut admin = PgConnection::establish(&db.admin_url).context("connecting to the bench cluster")?;
        if let Counter::Statements = db.counter {
            // The module must be preloaded: set it and restart the server.
            diesel::sql_query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                .execute(&mut admin)?;
            drop(admin);
            db.cluster.stop(false)?;
            db.cluster
                .ensure_running(tuning)
                .context("restarting the bench cluster")?;
            admin = PgConnection::establish(&db.admin_url)?;
        }
        diesel::sql_query("CREATE DATABASE bench").execute(&mut admin)?;
        if let Counter::Statements = db.counter {
            let mut conn = db.conn()?;
            diesel::sql_query("CREATE EXTENSION pg_stat_statements").execute(&mut conn)?;
        }
        Ok(db)
    }

    fn conn(&self) -> Result<PgConnection> {
        PgConnection::establish(&self.url).context("connecting to the bench database")
    }

    fn reset_counts(&self) -> Result<()> {
        if let Counter::Statements = self.counter {
            diesel::sql_query("SELECT pg_stat_statements_reset()").execute(&mut self.conn()?)?;
        }
        Ok(())
    }

    /// Statements (or transactions) since the last reset; for transactions a
    /// running total the caller subtracts.
    fn count(&self) -> Result<i64> {
        let sql = match self.counter {
            Counter::Statements => {
                "SELECT coalesce(sum(s.calls), 0)::bigint AS n FROM pg_stat_statements s \
                 JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = 'bench' AND s.query NOT ILIKE '%pg_stat_statements%'"
            }
            Counter::Transactions => {
                "SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database WHERE datname = 'bench'"
            }
        };
        // The view lives where the extension was created; pg_stat_database is
        // read from another database, so this session's own transactions do not count.
        let mut conn = match self.counter {
            Counter::Statements => self.conn()?,
            Counter::Transactions => PgConnection::establish(&self.admin_url)?,
        };
        Ok(diesel::sql_query(sql).get_result::<Row>(&mut conn)?.n)
    }

    /// Milliseconds the server spent executing the bench database's
    /// statements since the last reset (COMMITs and their WAL flushes
    /// included); `None` without pg_stat_statements.
    fn exec_ms(&self) -> Result<Option<f64>> {
        if let Counter::Transactions = self.counter {
            return Ok(None);
        }
        let sql = "SELECT coalesce(sum(s.total_exec_time), 0)::float8 AS ms FROM pg_stat_statements s \
                   JOIN pg_database d ON d.oid = s.dbid \
                   WHERE d.datname = 'bench' AND s.query NOT ILIKE '%pg_stat_statements%'";
        Ok(Some(diesel::sql_query(sql).get_result::<Millis>(&mut self.conn()?)?.ms))
    }

    /// `COPY` of the licenses table out to a file and back into a copy of
    /// the table with the same indexes and constraints: what writing the
    /// same rows costs the server in bulk.
    fn copy_licenses(&self) -> Result<CopyFigures> {
        let mut conn = self.conn()?;
        // In the data directory: the server (the postgres user) writes and reads it.
        let file = self.cluster.data_dir().join("bench-licenses.copy");
        let file = file.display().to_string().replace('\'', "''");
        let rows = diesel::sql_query("SELECT count(*)::bigint AS n FROM licenses")
            .get_result::<Row>(&mut conn)?
            .n;
        let started = Instant::now();
        diesel::sql_query(format!("COPY licenses TO '{file}' (FORMAT binary)")).execute(&mut conn)?;
        let out = started.elapsed();
        diesel::sql_query("CREATE TABLE bench_licenses_copy (LIKE licenses INCLUDING ALL)").execute(&mut conn)?;
        let started = Instant::now();
        diesel::sql_query(format!("COPY bench_licenses_copy FROM '{file}' (FORMAT binary)")).execute(&mut conn)?;
        let into = started.elapsed();
        diesel::sql_query("DROP TABLE bench_licenses_copy").execute(&mut conn)?;
        std::fs::remove_file(self.cluster.data_dir().join("bench-licenses.copy")).ok();
        Ok(CopyFigures { rows, out, into })
    }

    fn top_statements(&self) -> Result<Vec<TopStatement>> {
        if let Counter::Transactions = self.counter {
            return Ok(Vec::new());
        }
        // Grouped by the statement's first 60 characters: a multi-row
        // INSERT is a different statement for every row count.
        let sql = "SELECT sum(s.calls)::bigint AS calls, sum(s.total_exec_time)::float8 AS ms, \
                   left(regexp_replace(s.query, '\\s+', ' ', 'g'), 60) AS query \
                   FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                   WHERE d.datname = 'bench' AND s.query NOT ILIKE '%pg_stat_statements%' \
                   GROUP BY 3 ORDER BY 2 DESC LIMIT 10";
        Ok(diesel::sql_query(sql).load(&mut self.conn()?)?)
    }

    /// CPU seconds of the server's exited children (the backends of
    /// finished sessions), from the postmaster's `cutime + cstime`.
    fn backends_cpu(&self) -> Option<f64> {
        let pid_file = std::fs::read_to_string(self.cluster.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; cutime and cstime are fields 16 and 17.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields.get(13)?.parse::<f64>().ok()? + fields.get(14)?.parse::<f64>().ok()?;
        Some(ticks / clock_ticks())
    }

    fn stop(&self) {
        if let Err(e) = self.cluster.stop(false) {
            eprintln!("could not stop the bench cluster: {e:#}");
        }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        // Stops a server left running by an error path; a second stop just fails quietly.
        let _ = self.cluster.stop(true);
    }
}

/// The contrib module ships a control file in the server's share directory.
fn stat_statements_installed(binaries: &Binaries) -> bool {
    let sharedir = Command::new(binaries.bindir.join("pg_config"))
        .arg("--sharedir")
        .output()
        .or_else(|_| Command::new("pg_config").arg("--sharedir").output())
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    sharedir.is_some_and(|dir| dir.join("extension/pg_stat_statements.control").is_file())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

// ---- one run -------------------------------------------------------------------

struct RunFigures {
    label: &'static str,
    wall: Duration,
    report: Value,
    /// Requests the fake logged during the run, and how many were pages of the scan.
    fake_requests: usize,
    pages: usize,
    /// Requests per rate-limit endpoint (`/v1/<first segment>`), and the 429s among them.
    per_endpoint: BTreeMap<String, usize>,
    /// Per endpoint, when its first and its last request arrived at the
    /// fake, in seconds after licensync started: what the run waits for.
    timeline: BTreeMap<String, (f64, f64)>,
    /// The wall time Stripe's limits allow at best, and why: the slowest
    /// account's (accounts are limited each on its own and read side by side).
    bound: f64,
    bound_why: String,
    rate_limited: BTreeMap<String, u64>,
    /// `.eml` files the file transport wrote.
    emails: usize,
    /// Server time of the run's statements (pg_stat_statements), when known.
    db_ms: Option<f64>,
    statements: i64,
    statement_unit: &'static str,
    top: Vec<TopStatement>,
    peak_rss_kib: i64,
    cpu_licensync: f64,
    cpu_fake: f64,
    cpu_postgres: Option<f64>,
}

impl RunFigures {
    fn count(&self, key: &str) -> u64 {
        self.report["counts"][key].as_u64().unwrap_or(0)
    }

    fn print(&self, objects: usize, limits: RateLimits, latency: Option<Latency>) {
        let secs = self.wall.as_secs_f64();
        let reported = self.report["stripe_requests"].as_u64().unwrap_or(0);
        let run_secs = self.report["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let _ = limits;
        let bound = self.bound;
        println!();
        println!("### {} run", self.label);
        println!(
            "wall time:                 {secs:.2} s, process start to exit (reconcile {run_secs:.2} s, then emails {:.2} s)",
            secs - run_secs
        );
        println!(
            "rate-limit bound:          {bound:.2} s = {}; wall / bound {:.2}",
            self.bound_why,
            secs / bound.max(f64::MIN_POSITIVE)
        );
        if let Some(l) = latency {
            // licensync reads one page at a time: each request waits its whole latency.
            let mean = (l.min + l.max).as_secs_f64() / 2.0;
            println!(
                "latency floor:             {:.2} s = {} requests one at a time × {:.0} ms mean latency",
                self.fake_requests as f64 * mean,
                self.fake_requests,
                mean * 1000.0
            );
        }
        println!("objects/s end to end:      {:.0}", objects as f64 / secs);
        println!(
            "emails:                    {} .eml files; {:.0} emails/s of sending, {:.0} per s end to end",
            self.emails,
            self.emails as f64 / (secs - run_secs).max(f64::MIN_POSITIVE),
            self.emails as f64 / secs
        );
        println!(
            "Stripe requests:           {reported} reported, {} logged by the fake; {:.4} per object",
            self.fake_requests,
            reported as f64 / objects as f64
        );
        let per_endpoint: Vec<String> = self.per_endpoint.iter().map(|(e, n)| format!("{e} {n}")).collect();
        println!("  per endpoint:            {}", per_endpoint.join(", "));
        let spans: Vec<String> = self
            .timeline
            .iter()
            .map(|(e, (first, last))| format!("{e} {first:.2}-{last:.2}"))
            .collect();
        println!("  requests arrived (s):    {}", spans.join(", "));
        let limited: u64 = self.rate_limited.values().sum();
        let limited_each: Vec<String> = self.rate_limited.iter().map(|(e, n)| format!("{e} {n}")).collect();
        println!(
            "  answered 429:            {limited} (licensync counted {}){}{}",
            // Several accounts: each account's report counts its own.
            self.report.get("stripe_rate_limited").cloned().unwrap_or_else(|| {
                Value::from(
                    self.report["accounts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a["stripe_rate_limited"].as_u64())
                        .sum::<u64>(),
                )
            }),
            if limited_each.is_empty() { "" } else { ": " },
            limited_each.join(", ")
        );
        println!("pages planned and applied: {}", self.pages);
        println!(
            "database time:             {}",
            self.db_ms
                .map_or("unknown (pg_stat_statements not installed)".to_owned(), |ms| format!(
                    "{:.2} s executing statements (pg_stat_statements total_exec_time, commits included)",
                    ms / 1000.0
                ))
        );
        println!(
            "database {}:      {} total, {:.1} per page",
            self.statement_unit,
            self.statements,
            self.statements as f64 / self.pages.max(1) as f64
        );
        for t in &self.top {
            println!("    {:>8.0} ms {:>7} × {}", t.ms, t.calls, t.query);
        }
        println!(
            "peak RSS of licensync:     {:.1} MiB",
            self.peak_rss_kib as f64 / 1024.0
        );
        println!(
            "CPU seconds:               licensync {:.2}, fake Stripe {:.2}, PostgreSQL backends {}",
            self.cpu_licensync,
            self.cpu_fake,
            self.cpu_postgres.map_or("unknown".to_owned(), |c| format!("{c:.2}"))
        );
        let counts: Vec<String> = self.report["counts"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.as_u64() != Some(0))
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        println!("counts:                    {}", counts.join(", "));
        if let Some(writes) = self.report.get("stripe_writes") {
            println!("write-back:                {writes}");
        }
    }
}

/// `bench --measure-child <usage-file> <program> [args]`: runs the program
/// with this process's stdio and environment and writes its wait status,
/// peak RSS (KiB) and CPU seconds. A freshly started small process forks
/// licensync, not the benchmark itself, because Linux folds the forking
/// process's resident set (here: the whole fake account) into the child's
/// `ru_maxrss` when it execs.
fn measure_child(args: &[String]) -> Result<()> {
    let [usage_file, program, rest @ ..] = args else {
        bail!("usage: bench {MEASURE_CHILD} <usage-file> <program> [args...]");
    };
    let child = Command::new(program)
        .args(rest)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed is a valid rusage; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unreaped child.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(r == pid, "waiting for {program}: {}", std::io::Error::last_os_error());
    // Reaped by wait4; dropping the handle does not wait again.
    drop(child);
    let cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    std::fs::write(usage_file, format!("{status} {} {cpu}", usage.ru_maxrss))
        .with_context(|| format!("writing {usage_file}"))?;
    Ok(())
}

/// Stripe's rate-limit bucket of a path: `/v1/<first path segment>`.
fn endpoint_of(path: &str) -> String {
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("v1"), Some(first)) => format!("/v1/{first}"),
        (first, _) => format!("/{}", first.unwrap_or_default()),
    }
}

fn self_cpu() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// How licensync is run against the fake: its rate ceiling, Stripe's
/// limits the bound is computed from, and how many accounts at once.
#[derive(Debug, Clone)]
struct Client {
    rps: Option<u32>,
    limits: RateLimits,
    account_concurrency: Option<usize>,
    write_back: bool,
    mail_dir: Option<PathBuf>,
}

fn run_once(
    runtime: &tokio::runtime::Runtime,
    handles: &[FakeStripe],
    db: &BenchDb,
    licensync: &Path,
    label: &'static str,
    client: &Client,
) -> Result<RunFigures> {
    let Client {
        rps: client_rps,
        limits,
        account_concurrency,
        write_back,
        ..
    } = *client;
    let fake = &handles[0];
    db.reset_counts()?;
    let statements_before = match db.counter {
        Counter::Statements => 0,
        Counter::Transactions => db.count()?,
    };
    for h in handles {
        h.clear_requests();
    }
    let stderr_path = db
        .dir
        .path()
        .join(format!("licensync-{}.log", label.split(' ').next().unwrap_or("run")));
    let stderr = std::fs::File::create(&stderr_path)?;
    let usage_path = db.dir.path().join("rusage");
    // The file transport writes one .eml per email here.
    let outbox_in = client.mail_dir.clone().unwrap_or_else(|| db.dir.path().to_path_buf());
    let outbox = tempfile::Builder::new()
        .prefix(&format!("outbox-{}-", label.split(' ').next().unwrap_or("run")))
        .tempdir_in(&outbox_in)
        .with_context(|| format!("creating a directory in {}", outbox_in.display()))?;
    let outbox = outbox.path();
    let limited_of = |handles: &[FakeStripe]| {
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        for h in handles {
            for (e, n) in h.rate_limited() {
                *all.entry(e).or_default() += n;
            }
        }
        all
    };
    let limited_before = limited_of(handles);
    let self_exe = std::env::current_exe().context("finding this benchmark's own path")?;
    let mut cmd = Command::new(self_exe);
    for (key, _) in std::env::vars() {
        if key.starts_with("LICENSYNC_") || key.starts_with("STRIPE_") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    cmd.arg(MEASURE_CHILD)
        .arg(&usage_path)
        .arg(licensync)
        .args(["reconcile", "--full", "--output", "json"])
        .env("STRIPE_API_BASE", fake.base_url())
        .env("STRIPE_API_KEY", fake.api_key())
        .env("DATABASE_URL", &db.url)
        .env("LICENSYNC_MAIL_URL", format!("file://{}", outbox.display()))
        .env("LICENSYNC_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    if let Some(rps) = client_rps {
        cmd.env("LICENSYNC_STRIPE_RPS", rps.to_string());
    }
    if write_back {
        cmd.env("LICENSYNC_STRIPE_WRITE_BACK", "true");
    }
    if handles.len() > 1 {
        let accounts: Vec<String> = std::iter::once("self".to_owned())
            .chain(
                handles[1..]
                    .iter()
                    .map(|h| h.account_id().expect("a connected account")),
            )
            .collect();
        cmd.env("LICENSYNC_STRIPE_ACCOUNTS", accounts.join(",")).env(
            "LICENSYNC_ACCOUNT_CONCURRENCY",
            account_concurrency.unwrap_or(handles.len()).to_string(),
        );
    }

    let postgres_before = db.backends_cpu();
    let fake_before = self_cpu();
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", licensync.display()))?;
    let mut stdout = child.stdout.take().context("the child's stdout")?;
    // The fake serves on the runtime's worker threads; this thread only waits.
    let output = runtime.block_on(async {
        tokio::task::spawn_blocking(move || -> Result<String> {
            let mut out = String::new();
            stdout.read_to_string(&mut out).context("reading the report")?;
            let helper = child.wait().context("waiting for licensync")?;
            ensure!(helper.success(), "the measuring helper failed ({helper})");
            Ok(out)
        })
        .await
        .context("the waiting thread stopped")?
    })?;
    let wall = started.elapsed();
    let usage = std::fs::read_to_string(&usage_path).context("reading licensync's resource usage")?;
    let fields: Vec<f64> = usage.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let [status, maxrss_kib, cpu_licensync] = fields[..] else {
        bail!("unexpected resource usage record `{usage}`");
    };
    let status = status as i32;
    let cpu_fake = self_cpu() - fake_before;
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !exited_ok {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "licensync {label} run failed (wait status {status}); last log lines:\n{}\nreport: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            output.chars().take(2000).collect::<String>()
        );
    }
    if let Ok(dir) = std::env::var("BENCH_SAVE_REPORTS") {
        let name = format!("report-{}.json", label.split(' ').next().unwrap_or("run"));
        std::fs::write(Path::new(&dir).join(name), &output).context("saving the report")?;
        std::fs::copy(
            &stderr_path,
            Path::new(&dir).join(stderr_path.file_name().unwrap_or_default()),
        )
        .context("saving the log")?;
    }
    if let Ok(dir) = std::env::var("BENCH_SAVE_REPORTS") {
        // When each request arrived, in seconds after licensync started.
        let mut log = String::new();
        for h in handles {
            for r in h.requests() {
                let at = r.at.saturating_duration_since(started).as_secs_f64();
                log.push_str(&format!(
                    "{at:.3}\t{}\t{}\t{}?{}\n",
                    r.status, r.method, r.path, r.query
                ));
            }
        }
        let name = format!("requests-{}.tsv", label.split(' ').next().unwrap_or("run"));
        std::fs::write(Path::new(&dir).join(name), log).context("saving the request log")?;
    }
    let report: Value = serde_json::from_str(output.trim()).context("parsing the JSON report")?;
    ensure!(
        report["outcome"] == "succeeded",
        "the {label} run reported {}: {} {}",
        report["outcome"],
        report["error"],
        report["failed_accounts"]
    );
    // Stripe's limits, per account: every endpoint at most per_endpoint_rps,
    // all at most global_rps. Accounts are read side by side, so the bound
    // of the run is the slowest account's.
    let (mut bound, mut bound_why) = (0.0_f64, String::from("no request"));
    for (i, h) in handles.iter().enumerate() {
        let mut endpoints: BTreeMap<String, usize> = BTreeMap::new();
        let own = h.requests();
        for r in &own {
            *endpoints.entry(endpoint_of(&r.path)).or_insert(0) += 1;
        }
        let (busiest, busiest_requests) = endpoints
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or(("-".to_owned(), 0), |(e, n)| (e.clone(), *n));
        let b = (busiest_requests as f64 / f64::from(limits.per_endpoint_rps))
            .max(own.len() as f64 / f64::from(limits.global_rps));
        if b > bound {
            bound = b;
            bound_why = format!(
                "max({busiest_requests} requests to {busiest} / {} per s, {} requests / {} per s){}",
                limits.per_endpoint_rps,
                own.len(),
                limits.global_rps,
                if handles.len() > 1 {
                    format!(" of the slowest account (#{i} of {})", handles.len())
                } else {
                    String::new()
                }
            );
        }
    }
    let requests: Vec<fake_stripe::LoggedRequest> = handles.iter().flat_map(|h| h.requests()).collect();
    let pages = requests
        .iter()
        .filter(|r| r.method == "GET" && PAGED.contains(&r.path.as_str()) && r.status == 200)
        .count();
    let mut per_endpoint = BTreeMap::new();
    let mut timeline: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for r in &requests {
        *per_endpoint.entry(endpoint_of(&r.path)).or_insert(0) += 1;
        let at = r.at.saturating_duration_since(started).as_secs_f64();
        let span = timeline.entry(endpoint_of(&r.path)).or_insert((at, at));
        *span = (span.0.min(at), span.1.max(at));
    }
    let rate_limited = limited_of(handles)
        .into_iter()
        .map(|(e, n)| {
            let before = limited_before.get(&e).copied().unwrap_or(0);
            (e, n - before)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let emails = std::fs::read_dir(outbox)
        .with_context(|| format!("reading {}", outbox.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .count();
    let db_ms = db.exec_ms()?;
    let statements = db.count()? - statements_before;
    let cpu_postgres = db.backends_cpu().zip(postgres_before).map(|(a, b)| a - b);
    Ok(RunFigures {
        label,
        wall,
        report,
        fake_requests: requests.len(),
        pages,
        per_endpoint,
        timeline,
        bound,
        bound_why,
        rate_limited,
        emails,
        db_ms,
        statements,
        statement_unit: match db.counter {
            Counter::Statements => "statements",
            Counter::Transactions => "transactions",
        },
        top: db.top_statements()?,
        peak_rss_kib: maxrss_kib as i64,
        cpu_licensync,
        cpu_fake,
        cpu_postgres,
    })
}
