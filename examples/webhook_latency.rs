//! From purchase to license email: `--purchases` sales at random moments
//! over `--seconds`, made in an in-process fake Stripe while the real
//! `licensync daemon` runs against a throwaway PostgreSQL and writes each
//! email as an `.eml` file. Prints the latency from each sale to its email
//! (p50, p90, p99, max), the runs and Stripe requests it took, and what an
//! idle run costs.
//!
//! ```sh
//! cargo build --release --bin licensync --example webhook_latency
//! # webhooks wake the daemon (its own schedule: every 15 minutes)
//! target/release/examples/webhook_latency --webhooks --purchases 200 --seconds 120
//! # no webhooks: the daemon every 30 s
//! target/release/examples/webhook_latency --schedule "*/30 * * * * *" --purchases 200 --seconds 300
//! ```
//!
//! By default the fake answers at once (no latency, no rate limits): what
//! is measured is licensync's own path from the event to the email.
//! `--latency-ms 50..300` gives every request Stripe's latency (from the
//! sale on: the first import runs without it), so the figures also count
//! the round trips a run makes one after another.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use diesel::prelude::*;
use fake_stripe::{CheckoutSpec, FakeStripe, Latency};
use licensync::pg::{Binaries, Cluster, Tuning};
use rand::Rng;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200)]
    purchases: usize,
    /// The sales are spread uniformly at random over this many seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Deliver the fake's events to the daemon as signed webhooks.
    #[arg(long)]
    webhooks: bool,
    /// The daemon's schedule.
    #[arg(long, default_value = "0 */15 * * * *")]
    schedule: String,
    /// The licensync binary.
    #[arg(long, default_value = "target/release/licensync")]
    licensync: PathBuf,
    /// Stripe's latency per request once the daemon runs, uniform in
    /// MIN..MAX milliseconds (e.g. 50..300).
    #[arg(long, value_name = "MIN..MAX")]
    latency_ms: Option<Latency>,
}

const SECRET: &str = "whsec_latency_benchmark";

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("licensync-webhook-latency-")
        .tempdir_in("/tmp")?;
    let cluster = Cluster::new(Binaries::discover()?, dir.path().join("pg"))?;
    cluster.ensure_running(Tuning { unsafe_fast: false })?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(&args, &cluster, dir.path()));
    cluster.stop(false)?;
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}

fn wall() -> i64 {
    chrono::Utc::now().timestamp()
}

fn count(url: &str, sql: &str) -> Result<i64> {
    let mut conn = PgConnection::establish(url)?;
    Ok(diesel::sql_query(sql).load::<N>(&mut conn)?[0].n)
}

async fn run(args: &Args, cluster: &Cluster, dir: &std::path::Path) -> Result<serde_json::Value> {
    let mut admin = PgConnection::establish(&cluster.url("postgres"))?;
    diesel::sql_query("CREATE DATABASE latency").execute(&mut admin)?;
    let url = cluster.url("latency");
    let outbox = dir.join("outbox");
    std::fs::create_dir_all(&outbox)?;

    let fake = FakeStripe::start().await;
    fake.set_now(wall());
    let product = fake.create_product("Plugin", &[("product_id", "plugin"), ("hwid_limit", "2")]);
    let price = fake.create_price(&product, None, 4_900, &[]);
    let licensync = |command: &[&str]| {
        let mut cmd = tokio::process::Command::new(&args.licensync);
        cmd.args(command)
            .env("DATABASE_URL", &url)
            .env("STRIPE_API_BASE", fake.base_url())
            .env("STRIPE_API_KEY", fake.api_key())
            .env("LICENSYNC_MAIL_URL", format!("file://{}", outbox.display()))
            .env("LICENSYNC_LOG_FORMAT", "json")
            .kill_on_drop(true);
        cmd
    };
    // An established deployment: the first (full) run is behind it.
    let first = licensync(&["reconcile"]).output().await?;
    if !first.status.success() {
        bail!("the first run failed: {}", String::from_utf8_lossy(&first.stderr));
    }
    // What a run that finds nothing costs in Stripe requests.
    let before = fake.requests().len();
    let idle = licensync(&["reconcile"]).output().await?;
    if !idle.status.success() {
        bail!("the idle run failed: {}", String::from_utf8_lossy(&idle.stderr));
    }
    let idle_run_requests = fake.requests().len() - before;

    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = licensync(&["daemon", "--schedule", &args.schedule, "--listen", &listen]);
    daemon
        .env("LICENSYNC_WEBHOOK_SECRET", SECRET)
        .stderr(std::process::Stdio::null());
    let mut daemon = daemon.spawn().context("starting the daemon")?;
    let started = Instant::now();
    while std::net::TcpStream::connect(&listen).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the daemon did not listen on {listen}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.set_latency(args.latency_ms);
    if args.webhooks {
        fake.send_webhooks(&format!("http://{listen}/v1/stripe/webhook"), SECRET);
    }
    let requests_before = fake.requests().len();
    let runs_before = count(&url, "SELECT count(*) AS n FROM runs")?;

    // The sales at random moments; each email's latency from its sale.
    let mut moments: Vec<f64> = {
        let mut rng = rand::rng();
        (0..args.purchases)
            .map(|_| rng.random_range(0.0..args.seconds as f64))
            .collect()
    };
    moments.sort_by(f64::total_cmp);
    let t0 = Instant::now();
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut latencies: Vec<f64> = Vec::new();
    let mut files_seen: HashSet<PathBuf> = HashSet::new();
    let mut next = 0;
    let deadline = Duration::from_secs(args.seconds + 120);
    while latencies.len() < args.purchases {
        if t0.elapsed() > deadline {
            bail!("{} of {} emails arrived in time", latencies.len(), args.purchases);
        }
        while next < moments.len() && t0.elapsed().as_secs_f64() >= moments[next] {
            fake.set_now(wall());
            let email = format!("buyer-{next}@example.test");
            let customer = fake.create_customer(Some(&email), None);
            fake.create_checkout_session(CheckoutSpec {
                customer: Some(customer),
                lines: vec![(price.clone(), 1)],
                ..CheckoutSpec::default()
            });
            pending.insert(email, Instant::now());
            next += 1;
        }
        for entry in std::fs::read_dir(&outbox)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "eml") || files_seen.contains(&path) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // `buyer-1@` is not inside `buyer-10@`: the `@` ends the name.
            let buyer = pending.keys().find(|email| text.contains(email.as_str())).cloned();
            if let Some(sold) = buyer.and_then(|email| pending.remove(&email)) {
                latencies.push(sold.elapsed().as_secs_f64());
                files_seen.insert(path);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t0.elapsed();
    let runs = count(&url, "SELECT count(*) AS n FROM runs")? - runs_before;
    let requests = fake.requests().len() - requests_before;
    unsafe { libc::kill(daemon.id().unwrap_or_default() as i32, libc::SIGTERM) };
    let status = daemon.wait().await?;
    if !status.success() {
        bail!("the daemon exited with {status}");
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    let schedule: cron::Schedule = if args.schedule.split_whitespace().count() == 5 {
        format!("0 {}", args.schedule).parse()?
    } else {
        args.schedule.parse()?
    };
    let hour_start = chrono::Utc::now();
    let runs_per_hour = schedule
        .after(&hour_start)
        .take_while(|t| *t < hour_start + chrono::Duration::hours(1))
        .count();
    Ok(serde_json::json!({
        "setup": if args.webhooks { "webhooks + schedule" } else { "schedule only" },
        "schedule": args.schedule,
        "purchases": args.purchases,
        "stripe_latency": args.latency_ms.map(|l| format!("{}..{} ms", l.min.as_millis(), l.max.as_millis())),
        "seconds": took.as_secs_f64(),
        "latency_s": {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0)},
        "runs": runs,
        "stripe_requests": requests,
        "idle_run_stripe_requests": idle_run_requests,
        "scheduled_runs_per_hour": runs_per_hour,
        "stripe_requests_per_idle_hour": runs_per_hour * idle_run_requests,
    }))
}
