//! Prometheus textfile metrics (`--metrics-file`) for alerting on a batch
//! job: node_exporter's textfile collector reads the file, so it is written
//! to a temporary file and renamed, never seen half-written.
//!
//! The file is encoded by `prometheus-client` (the official Rust client) in
//! the Prometheus text format (0.0.4) that the textfile collector parses.
//! Every metric is a gauge: each value describes the last run or the
//! database as it was when the run ended, and a gauge keeps its name as
//! given (a counter would gain `_total`). The alerting rules and the
//! dashboard in `deploy/monitoring/` use these names; `tests/monitoring.rs`
//! checks that each name they use is one this module writes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::domain::{EmailStatus, WriteStatus};
use crate::reconcile::Report;
use crate::reconcile::fleet::{AccountOutcome, Fleet};
use crate::store::{OutboxCounts, Store, WriteCounts};

/// Why a run was refused before it read or wrote anything
/// (`licensync_last_run_refused{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key's test/live mode differs from the stored licenses' (exit 2).
    ModeMismatch,
}

impl Refusal {
    /// Every reason: each is written on every run, 1 for the one that
    /// refused the last run and 0 for the others, so an alert can tell
    /// "not refused" from "no data".
    pub const ALL: [Refusal; 1] = [Refusal::ModeMismatch];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ModeMismatch => "mode_mismatch",
        }
    }
}

/// What a run that went ahead did, as the metrics tell it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunMetrics {
    pub succeeded: bool,
    pub duration_seconds: f64,
    /// Actions by kind, plus `unchanged` and `skipped` (the report's `counts`).
    pub actions: BTreeMap<String, u64>,
    /// HTTP attempts to Stripe, retries included.
    pub stripe_requests: u64,
    /// Of those, the ones Stripe answered 429 (rate limited).
    pub stripe_rate_limited: u64,
}

impl RunMetrics {
    pub fn of(report: &Report) -> RunMetrics {
        RunMetrics {
            succeeded: report.outcome == crate::domain::RunOutcome::Succeeded,
            duration_seconds: report.duration_ms as f64 / 1000.0,
            actions: report
                .counts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v as u64))
                .collect(),
            stripe_requests: report.stripe_requests,
            stripe_rate_limited: report.stripe_rate_limited,
        }
    }
}

/// How the last run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum LastRun {
    /// It ran (succeeded or failed part-way).
    Ran(RunMetrics),
    /// It was refused before doing anything: no `licensync_run_*` metric
    /// is written, as there was no run to describe.
    Refused(Refusal),
}

/// Everything one metrics file says: the last run and the database.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// When the run ended (`licensync_last_run_timestamp_seconds`).
    pub now: DateTime<Utc>,
    pub last_run: LastRun,
    /// When the last successful run ended (none yet: the metric is left out).
    pub last_success: Option<DateTime<Utc>>,
    pub licenses: BTreeMap<String, i64>,
    pub emails: OutboxCounts,
    /// When the oldest email still pending was queued.
    pub oldest_pending_email: Option<DateTime<Utc>>,
    /// The write-back queue (`--stripe-write-back`); its metric is left out
    /// while the queue has never held a row.
    pub stripe_writes: WriteCounts,
}

impl Snapshot {
    /// Reads the database's side of the snapshot.
    pub fn read(store: &Store, last_run: LastRun) -> Result<Snapshot> {
        Ok(Snapshot {
            now: Utc::now(),
            last_run,
            last_success: store.last_success()?,
            licenses: store.license_counts()?,
            emails: store.outbox_counts()?,
            oldest_pending_email: store.oldest_pending_email()?,
            stripe_writes: store.stripe_write_counts()?,
        })
    }
}

/// A snapshot and the account it belongs to: `None` for the one account of
/// a run without accounts (no `stripe_account` label), else its label.
pub type Labelled = (Option<String>, Snapshot);

/// The metrics of a run and the state of the store.
pub fn of_run(report: &Report, store: &Store) -> Result<Vec<Labelled>> {
    Ok(vec![(
        None,
        Snapshot::read(store, LastRun::Ran(RunMetrics::of(report)))?,
    )])
}

/// The metrics of a refused run: the store's state and why.
pub fn of_refusal(refusal: Refusal, store: &Store) -> Result<Vec<Labelled>> {
    Ok(vec![(None, Snapshot::read(store, LastRun::Refused(refusal))?)])
}

/// The metrics of several accounts' runs (licensing-rules §9):
/// every sample carries `stripe_account` (`acct_...`, or `own` for the key's
/// own account), and each account's database figures are its own. An
/// account refused before it ran (locked, a bad key) has no `licensync_run_*`
/// samples and `licensync_last_run_success` 0, unless another run holds it
/// (then it is left out: that run writes its metrics).
pub fn of_fleet(fleet: &Fleet, store: &Store) -> Result<Vec<Labelled>> {
    let mut snapshots = Vec::new();
    for run in &fleet.runs {
        if run.outcome == AccountOutcome::Locked {
            continue;
        }
        let last_run = match &run.report {
            Some(report) => LastRun::Ran(RunMetrics::of(report)),
            None => LastRun::Ran(RunMetrics::default()),
        };
        let scoped = store.for_account(run.stripe_account.as_deref());
        snapshots.push((Some(run.label().to_owned()), Snapshot::read(&scoped, last_run)?));
    }
    Ok(snapshots)
}

/// The snapshot in the Prometheus text format, through prometheus-client's
/// registry and encoder.
pub fn encode(snapshot: &Snapshot) -> String {
    encode_all(vec![(None, snapshot.clone())])
}

/// Snapshots of several accounts in one file: one family per metric, a
/// sample per account (labelled `stripe_account` when the account is named).
pub fn encode_all(snapshots: Vec<Labelled>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshots)));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// What a long-lived process (the daemon) publishes: each account's last
/// snapshot. A run of some accounts (a webhook's wake-up) replaces theirs
/// and keeps the others', so the file and `/metrics` always describe every
/// account.
#[derive(Debug, Clone, Default)]
pub struct Board(Arc<Mutex<BTreeMap<Option<String>, Snapshot>>>);

impl Board {
    /// Merges a run's snapshots; the whole board, encoded.
    pub fn publish(&self, snapshots: Vec<Labelled>) -> String {
        let mut board = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        board.extend(snapshots);
        encode_all(board.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// The board encoded; `None` before the first run.
    pub fn render(&self) -> Option<String> {
        let board = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (!board.is_empty()).then(|| encode_all(board.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
    }
}

/// Hands the snapshots to the encoder as constant gauges, in a fixed order
/// (labelled samples sorted), so two files of the same state are identical.
#[derive(Debug)]
struct SnapshotCollector(Vec<(Option<String>, Snapshot)>);

/// A gauge's value: integers print as integers.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

impl From<i64> for Num {
    fn from(v: i64) -> Num {
        Num::Int(v)
    }
}

impl From<u64> for Num {
    fn from(v: u64) -> Num {
        Num::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<f64> for Num {
    fn from(v: f64) -> Num {
        Num::Float(v)
    }
}

/// One metric family: its samples, each with its labels.
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, Num)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, account: &Option<String>, labels: &[(&'static str, &str)], value: impl Into<Num>) {
        let mut all: Vec<(&'static str, String)> = Vec::new();
        if let Some(account) = account {
            all.push(("stripe_account", account.clone()));
        }
        all.extend(labels.iter().map(|(k, v)| (*k, (*v).to_owned())));
        self.samples.push((all, value.into()));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
        for (labels, value) in &self.samples {
            if labels.is_empty() {
                // The one sample of an unlabelled gauge.
                return encode_value(*value, metric);
            }
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            encode_value(*value, metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

fn encode_value(value: Num, encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
    match value {
        Num::Int(v) => ConstGauge::new(v).encode(encoder),
        Num::Float(v) => ConstGauge::new(v).encode(encoder),
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut last_run = Family::new(
            "licensync_last_run_timestamp_seconds",
            "When the last run ended (refused runs included), unix seconds.",
        );
        let mut success = Family::new("licensync_last_run_success", "1 when the last run succeeded, else 0.");
        let mut refused = Family::new(
            "licensync_last_run_refused",
            "1 when the last run was refused for this reason before doing anything, else 0.",
        );
        let mut last_success = Family::new(
            "licensync_last_success_timestamp_seconds",
            "When the last successful run ended, unix seconds.",
        );
        let mut duration = Family::new("licensync_run_duration_seconds", "Duration of the last run.");
        let mut actions = Family::new(
            "licensync_run_actions",
            "Actions of the last run by kind (and unchanged, skipped).",
        );
        let mut requests = Family::new(
            "licensync_run_stripe_requests",
            "Stripe requests (HTTP attempts, retries included) made by the last run.",
        );
        let mut rate_limited = Family::new(
            "licensync_run_stripe_rate_limited",
            "Stripe requests of the last run answered 429 (rate limited), retried while retries remained.",
        );
        let mut emails = Family::new("licensync_emails", "License emails by delivery status.");
        let mut oldest = Family::new(
            "licensync_email_oldest_pending_age_seconds",
            "Seconds since the oldest email still pending was queued (0: none pending).",
        );
        let mut licenses = Family::new("licensync_licenses", "Licenses by status.");
        let mut writes = Family::new(
            "licensync_stripe_writes",
            "License keys written back onto Stripe objects (--stripe-write-back), by status.",
        );
        for (account, s) in &self.0 {
            last_run.add(account, &[], s.now.timestamp());
            let succeeded = matches!(&s.last_run, LastRun::Ran(run) if run.succeeded);
            success.add(account, &[], i64::from(succeeded));
            for r in Refusal::ALL {
                refused.add(
                    account,
                    &[("reason", r.as_str())],
                    i64::from(s.last_run == LastRun::Refused(r)),
                );
            }
            if let Some(at) = s.last_success {
                last_success.add(account, &[], at.timestamp());
            }
            if let LastRun::Ran(run) = &s.last_run {
                duration.add(account, &[], run.duration_seconds);
                for (k, v) in &run.actions {
                    actions.add(account, &[("action", k.as_str())], *v);
                }
                requests.add(account, &[], run.stripe_requests);
                rate_limited.add(account, &[], run.stripe_rate_limited);
            }
            let m = &s.emails;
            for (status, n) in [
                (EmailStatus::Failed, m.failed),
                (EmailStatus::NoRecipient, m.no_recipient),
                (EmailStatus::Pending, m.pending),
                (EmailStatus::Sent, m.sent),
                (EmailStatus::Skipped, m.skipped),
            ] {
                emails.add(account, &[("status", status.as_str())], n);
            }
            let age = s
                .oldest_pending_email
                .map(|at| (s.now - at).num_seconds().max(0))
                .unwrap_or(0);
            oldest.add(account, &[], age);
            for (k, v) in &s.licenses {
                licenses.add(account, &[("status", k.as_str())], *v);
            }
            let w = &s.stripe_writes;
            if w.pending + w.sent + w.refused > 0 {
                for (status, n) in [
                    (WriteStatus::Pending, w.pending),
                    (WriteStatus::Sent, w.sent),
                    (WriteStatus::Refused, w.refused),
                ] {
                    writes.add(account, &[("status", status.as_ref())], n);
                }
            }
        }
        for family in [
            last_run,
            success,
            refused,
            last_success,
            duration,
            actions,
            requests,
            rate_limited,
            emails,
            oldest,
            licenses,
            writes,
        ] {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// Writes the file atomically (temporary file in the same directory, then rename).
pub fn write(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, contents).with_context(|| format!("writing metrics to {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("moving metrics into {}", path.display()))
}

#[cfg(test)]
mod tests;
