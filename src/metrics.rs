//! Prometheus textfile metrics (`--metrics-file`) for alerting on a batch
//! job: node_exporter's textfile collector reads the file, so it is written
//! to a temporary file and renamed, never seen half-written.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::reconcile::Report;
use crate::store::Store;

/// Renders the metrics of the last run and the state of the store.
pub fn render(report: &Report, store: &Store) -> Result<String> {
    let last_success = store.last_success()?;
    let licenses = store.license_counts()?;
    let emails = store.outbox_counts()?;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let now = chrono::Utc::now().timestamp() as f64;
    gauge(
        "licensync_last_run_timestamp_seconds",
        "When the last run ended.",
        &[(String::new(), now)],
    );
    gauge(
        "licensync_last_run_success",
        "1 when the last run succeeded, else 0.",
        &[(String::new(), if report.outcome == "succeeded" { 1.0 } else { 0.0 })],
    );
    if let Some(at) = last_success {
        gauge(
            "licensync_last_success_timestamp_seconds",
            "When the last successful run ended.",
            &[(String::new(), at.timestamp() as f64)],
        );
    }
    gauge(
        "licensync_run_duration_seconds",
        "Duration of the last run.",
        &[(String::new(), report.duration_ms as f64 / 1000.0)],
    );
    let actions: Vec<(String, f64)> = report
        .counts
        .iter()
        .map(|(k, v)| (format!("{{action=\"{k}\"}}"), *v as f64))
        .collect();
    gauge(
        "licensync_run_actions",
        "Actions of the last run by kind (and unchanged, skipped).",
        &actions,
    );
    gauge(
        "licensync_run_stripe_requests",
        "Stripe requests made by the last run.",
        &[(String::new(), report.stripe_requests as f64)],
    );
    let email_samples: Vec<(String, f64)> = [
        ("pending", emails.pending),
        ("sent", emails.sent),
        ("failed", emails.failed),
        ("no_recipient", emails.no_recipient),
    ]
    .iter()
    .map(|(s, n)| (format!("{{status=\"{s}\"}}"), *n as f64))
    .collect();
    gauge("licensync_emails", "License emails by delivery status.", &email_samples);
    let license_samples: Vec<(String, f64)> = licenses
        .iter()
        .map(|(s, n)| (format!("{{status=\"{s}\"}}"), *n as f64))
        .collect();
    gauge("licensync_licenses", "Licenses by status.", &license_samples);
    Ok(out)
}

/// Writes the file atomically (temporary file in the same directory, then rename).
pub fn write(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing metrics to {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("moving metrics into {}", path.display()))
}
