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

mod db;
mod figures;
mod run;

use db::*;
use figures::*;
use run::*;

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
    #[arg(long, value_name = "MIN..MAX")]
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
