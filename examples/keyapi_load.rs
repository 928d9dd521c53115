//! Load on the key API: a throwaway PostgreSQL with `--licenses` licenses,
//! the real `licensync serve` binary, and `--clients` concurrent clients
//! (HTTP/1.1 keep-alive) on this machine, first validating for
//! `--seconds`, then activating a new machine per request for as long.
//! Prints answers per second, latency percentiles, and CPU per answer (the
//! server's own, and the whole machine's: PostgreSQL and this generator
//! run beside it).
//!
//! ```sh
//! cargo build --release --bin licensync --example keyapi_load
//! target/release/examples/keyapi_load --licenses 10000 --clients 64 --seconds 10
//! ```
//!
//! Every client sends from 127.0.0.1, one address for the rate limit, so
//! the server runs with `--rate-limit` far above the load: what is measured
//! is the service, not its limiter.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use diesel::prelude::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use licensync::domain::{ActionKind, GrantKey, LicenseState, LicenseStatus};
use licensync::pg::{Binaries, Cluster, Tuning};
use licensync::secret::Secret;
use licensync::store::models::NewLicenseRow;
use licensync::store::{LicenseWrite, Store};
use licensync_verify::Signer;
use rand::Rng;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    licenses: usize,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The licensync binary to serve with.
    #[arg(long, default_value = "target/release/licensync")]
    licensync: PathBuf,
}

const DB: &str = "keyapi_load";

fn main() -> Result<()> {
    let args = Args::parse();
    let binaries = Binaries::discover()?;
    let dir = tempfile::Builder::new()
        .prefix("licensync-keyapi-load-")
        .tempdir_in("/tmp")?;
    let cluster = Cluster::new(binaries, dir.path().join("pg"))?;
    cluster.ensure_running(Tuning { unsafe_fast: true })?;
    let result = run(&args, &cluster, dir.path());
    cluster.stop(false)?;
    result
}

fn run(args: &Args, cluster: &Cluster, dir: &std::path::Path) -> Result<()> {
    let mut admin = PgConnection::establish(&cluster.url("postgres"))?;
    diesel::sql_query(format!("CREATE DATABASE {DB}")).execute(&mut admin)?;
    let url = cluster.url(DB);
    let store = Store::connect(&Secret::from(url.clone()))?;
    store.migrate()?;
    let (open, seats) = seed(&store, args.licenses)?;
    // A service in production answers over tables that already hold
    // machines, with statistics about them: two machines per seat license
    // (their fingerprints never repeat the generator's), then ANALYZE.
    // Without the machines the statistics describe an empty table, and the
    // plans each connection caches scan it until autovacuum's first ANALYZE
    // (a minute after the first 50 activations) replaces them.
    store.batch_execute(
        "INSERT INTO machine_activations (license_id, machine_hash, first_seen, last_seen) \
         SELECT id, encode(sha256(convert_to('seeded-' || id || '-' || n, 'UTF8')), 'hex'), now(), now() \
         FROM licenses, generate_series(1, 2) AS n WHERE hwid_limit IS NOT NULL; \
         ANALYZE",
    )?;

    let keys = Signer::generate()?;
    let key_file = dir.join("signing.key");
    std::fs::write(&key_file, &keys.secret)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server = std::process::Command::new(&args.licensync)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--rate-limit",
            "10000000",
        ])
        .arg("--signing-key-file")
        .arg(&key_file)
        .env("DATABASE_URL", &url)
        .env("LICENSYNC_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.licensync.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let outcome = runtime.block_on(async {
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base).await?;
        let pid = server.id();
        let validate = phase(args, &base, pid, "/v1/licenses/validate", Arc::new(open), false).await?;
        let activate = phase(args, &base, pid, "/v1/licenses/activate", Arc::new(seats), true).await?;
        anyhow::Ok(serde_json::json!({
            "licenses": args.licenses,
            "clients": args.clients,
            "seconds_per_phase": args.seconds,
            "validate": validate,
            "activate": activate,
        }))
    });
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = server.wait()?;
    let outcome = outcome?;
    println!("{}", serde_json::to_string_pretty(&outcome)?);
    if !status.success() {
        bail!("serve exited with {status}");
    }
    Ok(())
}

/// Half the licenses without a seat limit (validated without a machine),
/// half with room for every activation the run makes; their keys.
fn seed(store: &Store, n: usize) -> Result<(Vec<String>, Vec<String>)> {
    let (mut open, mut seats) = (Vec::new(), Vec::new());
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let writes: Vec<LicenseWrite> = chunk
            .iter()
            .map(|&i| {
                let state = LicenseState {
                    status: LicenseStatus::Active,
                    product_ids: vec!["app".into()],
                    product_name: Some("App".into()),
                    stripe_customer_id: Some(format!("cus_{i}")),
                    stripe_subscription_id: Some(format!("sub_{i}")),
                    stripe_payment_intent: None,
                    customer_email: None,
                    customer_name: None,
                    quantity: 1,
                    ip_limit: None,
                    hwid_limit: (i % 2 == 1).then_some(1_000_000),
                    expiration_days: None,
                    expiration_start: None,
                    expires_at: Some(chrono::Utc::now() + chrono::Duration::days(30)),
                    livemode: false,
                };
                let key = licensync::keys::new_license_key();
                if i % 2 == 1 { &mut seats } else { &mut open }.push(key.clone());
                LicenseWrite {
                    license: NewLicenseRow::new(key, &GrantKey::subscription_item(&format!("si_{i}")), &state),
                    action: ActionKind::Issue,
                    before: None,
                    after: serde_json::to_value(&state).expect("state serializes"),
                    stripe_object: format!("sub_{i}"),
                    email: None,
                    write_back: None,
                }
            })
            .collect();
        store.write_page(None, &writes)?;
    }
    Ok((open, seats))
}

async fn wait_ready(base: &str) -> Result<()> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/healthz").parse()?).await
            && r.status() == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server did not become ready")
}

/// User + system CPU seconds of a process, or of the whole machine (`None`).
fn cpu_seconds(pid: Option<u32>) -> Result<f64> {
    let ticks = 100.0; // USER_HZ on Linux
    match pid {
        Some(pid) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let fields: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
            let (utime, stime): (f64, f64) = (fields[11].parse()?, fields[12].parse()?);
            Ok((utime + stime) / ticks)
        }
        None => {
            let stat = std::fs::read_to_string("/proc/stat")?;
            let cpu: Vec<f64> = stat
                .lines()
                .next()
                .context("/proc/stat")?
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(0.0))
                .collect();
            // Busy: everything but idle and iowait.
            Ok((cpu.iter().sum::<f64>() - cpu[3] - cpu[4]) / ticks)
        }
    }
}

/// The `code` of an answer, found without parsing the whole JSON.
fn code_of(answer: &[u8]) -> Option<String> {
    const FIELD: &[u8] = br#""code":""#;
    let at = answer.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    let len = answer[at..].iter().position(|&b| b == b'"')?;
    Some(String::from_utf8_lossy(&answer[at..at + len]).into_owned())
}

async fn phase(
    args: &Args,
    base: &str,
    pid: u32,
    path: &str,
    keys: Arc<Vec<String>>,
    activate: bool,
) -> Result<serde_json::Value> {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.clients)
        .build_http::<Full<Bytes>>();
    let stop = Arc::new(AtomicBool::new(false));
    let (server_cpu, machine_cpu) = (cpu_seconds(Some(pid))?, cpu_seconds(None)?);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|c| {
            let (client, stop, keys) = (client.clone(), stop.clone(), keys.clone());
            let uri: hyper::Uri = format!("{base}{path}").parse().expect("uri");
            tokio::spawn(async move {
                let (mut latencies, mut codes) = (Vec::new(), std::collections::BTreeMap::<String, u64>::new());
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Bodies written by hand and answers read by searching for
                    // their code: the generator shares the machine, so it
                    // spends as little of it as it can (keys are [A-Z0-9-]).
                    let key = &keys[rand::rng().random_range(0..keys.len())];
                    let body = if activate {
                        format!(r#"{{"key":"{key}","machine":"machine-{c}-{n}"}}"#)
                    } else {
                        format!(r#"{{"key":"{key}"}}"#)
                    };
                    n += 1;
                    let request = hyper::Request::post(uri.clone())
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .expect("request");
                    let sent = Instant::now();
                    let response = client.request(request).await?;
                    let status = response.status().as_u16();
                    let bytes = response.into_body().collect().await?.to_bytes();
                    latencies.push(sent.elapsed().as_micros() as u32);
                    let code = code_of(&bytes).unwrap_or_else(|| format!("HTTP {status}"));
                    *codes.entry(code).or_default() += 1;
                }
                anyhow::Ok((latencies, codes))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut codes) = (Vec::new(), std::collections::BTreeMap::<String, u64>::new());
    for task in tasks {
        let (l, c) = task.await??;
        latencies.extend(l);
        for (code, n) in c {
            *codes.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (server_cpu, machine_cpu) = (cpu_seconds(Some(pid))? - server_cpu, cpu_seconds(None)? - machine_cpu);
    latencies.sort_unstable();
    let answers = latencies.len() as f64;
    let pct = |p: f64| latencies[((answers * p) as usize).min(latencies.len() - 1)] as f64 / 1000.0;
    Ok(serde_json::json!({
        "answers": latencies.len(),
        "answers_per_second": (answers / elapsed).round(),
        "codes": codes,
        "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)},
        "server_cpu_us_per_answer": (server_cpu / answers * 1e6).round(),
        "machine_cpu_us_per_answer": (machine_cpu / answers * 1e6).round(),
    }))
}
