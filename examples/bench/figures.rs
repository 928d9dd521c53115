//! The figures of one run and how they are printed.

use super::*;

pub(crate) struct RunFigures {
    pub(crate) label: &'static str,
    pub(crate) wall: Duration,
    pub(crate) report: Value,
    /// Requests the fake logged during the run, and how many were pages of the scan.
    pub(crate) fake_requests: usize,
    pub(crate) pages: usize,
    /// Requests per rate-limit endpoint (`/v1/<first segment>`), and the 429s among them.
    pub(crate) per_endpoint: BTreeMap<String, usize>,
    /// Per endpoint, when its first and its last request arrived at the
    /// fake, in seconds after licensync started: what the run waits for.
    pub(crate) timeline: BTreeMap<String, (f64, f64)>,
    /// The wall time Stripe's limits allow at best, and why: the slowest
    /// account's (accounts are limited each on its own and read side by side).
    pub(crate) bound: f64,
    pub(crate) bound_why: String,
    pub(crate) rate_limited: BTreeMap<String, u64>,
    /// `.eml` files the file transport wrote.
    pub(crate) emails: usize,
    /// Server time of the run's statements (pg_stat_statements), when known.
    pub(crate) db_ms: Option<f64>,
    pub(crate) statements: i64,
    pub(crate) statement_unit: &'static str,
    pub(crate) top: Vec<TopStatement>,
    pub(crate) peak_rss_kib: i64,
    pub(crate) cpu_licensync: f64,
    pub(crate) cpu_fake: f64,
    pub(crate) cpu_postgres: Option<f64>,
}

impl RunFigures {
    pub(crate) fn count(&self, key: &str) -> u64 {
        self.report["counts"][key].as_u64().unwrap_or(0)
    }

    pub(crate) fn print(&self, objects: usize, limits: RateLimits, latency: Option<Latency>) {
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
