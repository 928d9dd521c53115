//! One run of licensync against the fake, measured from outside: the
//! helper that forks it, its CPU and peak RSS, and the fake's request log.

use super::*;

/// `bench --measure-child <usage-file> <program> [args]`: runs the program
/// with this process's stdio and environment and writes its wait status,
/// peak RSS (KiB) and CPU seconds. A freshly started small process forks
/// licensync, not the benchmark itself, because Linux folds the forking
/// process's resident set (here: the whole fake account) into the child's
/// `ru_maxrss` when it execs.
pub(crate) fn measure_child(args: &[String]) -> Result<()> {
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
pub(crate) fn endpoint_of(path: &str) -> String {
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("v1"), Some(first)) => format!("/v1/{first}"),
        (first, _) => format!("/{}", first.unwrap_or_default()),
    }
}

pub(crate) fn self_cpu() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

pub(crate) fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// How licensync is run against the fake: its rate ceiling, Stripe's
/// limits the bound is computed from, and how many accounts at once.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub(crate) rps: Option<u32>,
    pub(crate) limits: RateLimits,
    pub(crate) account_concurrency: Option<usize>,
    pub(crate) write_back: bool,
    pub(crate) mail_dir: Option<PathBuf>,
}

pub(crate) fn run_once(
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
