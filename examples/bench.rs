//! The full-run benchmark (testing.md "Benchmarks are not tests"): loads the
//! in-process fake Stripe with subscriptions and one-time Checkout Sessions,
//! runs the real release binary's `reconcile --full` against a throwaway
//! PostgreSQL cluster twice (the second run has nothing to do), and prints
//! throughput, Stripe requests per object, database statements per page,
//! peak memory and CPU per process. It prints figures and asserts nothing
//! about speed; it only refuses to report figures of a run that failed or
//! did not produce the licenses the load implies.
//!
//! Run: `cargo build --release --bin licensync --example bench &&
//! cargo run --release --example bench -- --subscriptions 5000 --sessions 5000`
//! (cargo does not build the binary for an example on its own).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use fake_stripe::{CheckoutSpec, FakeStripe, SubscriptionSpec};
use licensync::pg::{Binaries, Cluster, Tuning};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks a full reconcile of the release binary against the fake Stripe")]
struct Args {
    /// Subscriptions to load (1 or 2 items each, recurring licensed prices).
    #[arg(long, default_value_t = 5_000)]
    subscriptions: usize,
    /// Paid payment-mode Checkout Sessions to load (one licensed line each).
    #[arg(long, default_value_t = 5_000)]
    sessions: usize,
    /// Customers the purchases are spread over; default a quarter of the purchases.
    #[arg(long)]
    customers: Option<usize>,
    /// The licensync binary; default `licensync` next to this example's directory.
    #[arg(long)]
    licensync: Option<PathBuf>,
    /// Run PostgreSQL with `fsync=off` (the test harness's settings) instead of durable commits.
    #[arg(long)]
    unsafe_fast_db: bool,
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
    let fake = runtime.block_on(FakeStripe::start());

    println!("# licensync full-run benchmark");
    println!("binary: {}", licensync.display());
    let load_started = Instant::now();
    let expected = load(&fake, &args);
    println!(
        "loaded fake Stripe: {} subscriptions ({} items), {} paid payment-mode sessions, {} customers in {:.1} s",
        args.subscriptions,
        expected.subscription_items,
        args.sessions,
        expected.customers,
        load_started.elapsed().as_secs_f64()
    );

    let db = BenchDb::start(!args.unsafe_fast_db)?;
    println!(
        "database: PostgreSQL on a throwaway cluster in {} (fsync {}), statements counted with {}",
        db.dir.path().display(),
        if args.unsafe_fast_db { "off" } else { "on" },
        db.counter.describe()
    );

    let objects = args.subscriptions + args.sessions;
    let licenses = expected.subscription_items + args.sessions;
    let first = run_once(&runtime, &fake, &db, &licensync, "first (cold)")?;
    let issued = first.count("issued");
    ensure!(
        issued == licenses as u64,
        "the first run issued {issued} licenses, the load implies {licenses}: not reporting figures of a wrong run. \
         Counts: {}; first skips: {}",
        first.report["counts"],
        first.report["skipped"]
            .as_array()
            .map_or(Value::Null, |s| Value::from(s[..s.len().min(3)].to_vec()))
    );
    let second = run_once(&runtime, &fake, &db, &licensync, "second (no-op)")?;
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

    println!();
    println!("## Figures (N = {objects} Stripe purchase objects, {licenses} licenses)");
    for run in [&first, &second] {
        run.print(objects);
    }
    println!(
        "no-op run / first run wall time: {:.3}",
        second.wall.as_secs_f64() / first.wall.as_secs_f64()
    );
    db.stop();
    Ok(())
}

/// `target/<profile>/licensync`, next to `target/<profile>/examples/bench`.
fn default_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this benchmark's own path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the benchmark is not inside a cargo target directory; pass --licensync")?;
    Ok(profile_dir.join("licensync"))
}

struct Expected {
    subscription_items: usize,
    customers: usize,
}

/// A catalog of three licensed products (one with a product-id list, one a
/// 30-day pass), then purchases spread over the customers deterministically.
fn load(fake: &FakeStripe, args: &Args) -> Expected {
    // The planner judges periods against the real clock: purchases made now are current.
    fake.set_now(chrono::Utc::now().timestamp());
    // A full run never reads events; their snapshots would take most of the memory.
    fake.set_record_events(false);
    let editor = fake.create_product(
        "Bench Editor",
        &[("product_id", "bench-editor"), ("hwid_limit", "3"), ("ip_limit", "5")],
    );
    let suite = fake.create_product(
        "Bench Suite",
        &[("product_id", "bench-pro,bench-cli"), ("hwid_limit", "10")],
    );
    let pass = fake.create_product("Bench Pass", &[("product_id", "bench-pass"), ("expiration_days", "30")]);
    let recurring = [
        fake.create_price(&editor, Some("month"), 900, &[]),
        fake.create_price(&editor, Some("year"), 9_000, &[("hwid_limit", "5")]),
        fake.create_price(&suite, Some("month"), 2_900, &[]),
    ];
    let one_time = [
        fake.create_price(&suite, None, 29_900, &[]),
        fake.create_price(&pass, None, 1_500, &[]),
        fake.create_price(&editor, None, 4_900, &[]),
    ];
    let n_customers = args
        .customers
        .unwrap_or((args.subscriptions + args.sessions) / 4)
        .max(1);
    let customers: Vec<String> = (0..n_customers)
        .map(|i| {
            let email = format!("buyer{i}@example.com");
            fake.create_customer(Some(&email), Some(&format!("Buyer {i}")))
        })
        .collect();
    let mut subscription_items = 0;
    for i in 0..args.subscriptions {
        // Every third subscription has a second item on the other product.
        let mut items = vec![(recurring[i % 2].clone(), 1 + (i % 3) as i64)];
        if i % 3 == 0 {
            items.push((recurring[2].clone(), 1));
        }
        subscription_items += items.len();
        fake.create_subscription(SubscriptionSpec {
            customer: customers[i % customers.len()].clone(),
            items,
            ..SubscriptionSpec::default()
        });
    }
    for i in 0..args.sessions {
        // Half the sessions are guest checkouts that only carry an email.
        let (customer, customer_email) = if i % 2 == 0 {
            (Some(customers[(i / 2) % customers.len()].clone()), None)
        } else {
            (None, Some(format!("guest{i}@example.com")))
        };
        fake.create_checkout_session(CheckoutSpec {
            customer,
            customer_email,
            lines: vec![(one_time[i % one_time.len()].clone(), 1)],
            ..CheckoutSpec::default()
        });
    }
    Expected {
        subscription_items,
        customers: customers.len(),
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
struct TopStatement {
    #[diesel(sql_type = BigInt)]
    calls: i64,
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

    fn top_statements(&self) -> Result<Vec<TopStatement>> {
        if let Counter::Transactions = self.counter {
            return Ok(Vec::new());
        }
        let sql = "SELECT s.calls::bigint AS calls, left(regexp_replace(s.query, '\\s+', ' ', 'g'), 110) AS query \
                   FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                   WHERE d.datname = 'bench' AND s.query NOT ILIKE '%pg_stat_statements%' \
                   ORDER BY s.calls DESC LIMIT 8";
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

    fn print(&self, objects: usize) {
        let secs = self.wall.as_secs_f64();
        let reported = self.report["stripe_requests"].as_u64().unwrap_or(0);
        println!();
        println!("### {} run", self.label);
        println!(
            "wall time:                 {secs:.2} s (report duration_ms {})",
            self.report["duration_ms"]
        );
        println!("objects/s:                 {:.0}", objects as f64 / secs);
        println!(
            "Stripe requests:           {reported} reported, {} logged by the fake; {:.4} per object",
            self.fake_requests,
            reported as f64 / objects as f64
        );
        println!("pages planned and applied: {}", self.pages);
        println!(
            "database {}:      {} total, {:.1} per page",
            self.statement_unit,
            self.statements,
            self.statements as f64 / self.pages.max(1) as f64
        );
        for t in &self.top {
            println!("    {:>8} × {}", t.calls, t.query);
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

fn self_cpu() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

fn run_once(
    runtime: &tokio::runtime::Runtime,
    fake: &FakeStripe,
    db: &BenchDb,
    licensync: &Path,
    label: &'static str,
) -> Result<RunFigures> {
    db.reset_counts()?;
    let statements_before = match db.counter {
        Counter::Statements => 0,
        Counter::Transactions => db.count()?,
    };
    fake.clear_requests();
    let stderr_path = db
        .dir
        .path()
        .join(format!("licensync-{}.log", label.split(' ').next().unwrap_or("run")));
    let stderr = std::fs::File::create(&stderr_path)?;
    let usage_path = db.dir.path().join("rusage");
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
        .env("LICENSYNC_MAIL_URL", "none")
        // Far above what the local fake can serve, so the client never waits on its own limiter.
        .env("LICENSYNC_STRIPE_RPS", "100000")
        .env("LICENSYNC_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);

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
    let report: Value = serde_json::from_str(output.trim()).context("parsing the JSON report")?;
    ensure!(
        report["outcome"] == "succeeded",
        "the {label} run reported {}: {}",
        report["outcome"],
        report["error"]
    );
    let requests = fake.requests();
    let pages = requests
        .iter()
        .filter(|r| r.method == "GET" && PAGED.contains(&r.path.as_str()))
        .count();
    let statements = db.count()? - statements_before;
    let cpu_postgres = db.backends_cpu().zip(postgres_before).map(|(a, b)| a - b);
    Ok(RunFigures {
        label,
        wall,
        report,
        fake_requests: requests.len(),
        pages,
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
