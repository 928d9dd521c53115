//! `licensync daemon`: a reconcile at each tick of a cron schedule until
//! SIGTERM/SIGINT, which finishes the page in progress and exits cleanly.

use std::path::PathBuf;

use anyhow::Result;
use chrono::Utc;
use clap::Args;

use super::Output;
use super::reconcile::{Ran, ReconcileArgs, reconcile_once};
use crate::accounts::Shard;
use crate::config::Config;
use crate::error::usage;
use crate::reconcile::{Action, error_policy};
use crate::shutdown::Shutdown;
use crate::values::{Schedule, Setting, parse_schedule};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Cron expression with seconds, e.g. "0 */15 * * * *" (every 15 minutes).
    #[arg(
        long,
        env = "LICENSYNC_SCHEDULE",
        value_name = "CRON",
        value_parser = Setting::new("--schedule / LICENSYNC_SCHEDULE", parse_schedule)
    )]
    pub schedule: Schedule,
    #[command(flatten)]
    pub reconcile: DaemonReconcileArgs,
}

#[derive(Debug, Args)]
pub struct DaemonReconcileArgs {
    /// Allow a key whose mode (test/live) differs from the licenses already stored.
    #[arg(long)]
    pub allow_mode_mismatch: bool,
    /// Write Prometheus textfile metrics here after every run.
    #[arg(long, env = "LICENSYNC_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Only the accounts of shard I of N, as for `reconcile --shard`.
    #[arg(long, env = "LICENSYNC_SHARD", value_name = "I/N")]
    pub shard: Option<Shard>,
}

/// A reconcile at each tick until SIGTERM/SIGINT. Runs never overlap: the
/// next tick is computed when a run ends, so ticks that passed during a long
/// run are skipped. A failed run is logged and the daemon goes on.
pub async fn run(config: &Config, args: DaemonArgs, mut shutdown: Shutdown) -> Result<()> {
    if config.accounts.is_configured() {
        config.accounts().map_err(usage)?;
    } else {
        config.require_stripe_key().map_err(usage)?;
    }
    let reconcile_args = ReconcileArgs {
        full: false,
        since: None,
        until: None,
        dry_run: false,
        output: Output::Json,
        allow_mode_mismatch: args.reconcile.allow_mode_mismatch,
        metrics_file: args.reconcile.metrics_file.clone(),
        // The daemon logs counts, never the actions: keep none.
        report_actions: 0,
        shard: args.reconcile.shard,
    };
    tracing::info!(schedule = %args.schedule, "daemon started");
    loop {
        let Some(next) = args.schedule.next() else {
            tracing::info!("the schedule has no further ticks; stopping");
            return Ok(());
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.recv() => {}
        }
        if shutdown.is_shutdown() {
            tracing::info!("stopping on signal");
            return Ok(());
        }
        match reconcile_once(config, &reconcile_args, shutdown.clone()).await {
            Ok((Ran::One(report), Ok(()))) => tracing::info!(
                run_id = report.run_id.as_deref().unwrap_or("-"),
                mode = report.mode.as_ref(),
                counts = %serde_json::to_string(&report.counts).unwrap_or_default(),
                stripe_requests = report.stripe_requests,
                emails_sent = report.emails_sent,
                duration_ms = report.duration_ms,
                "run succeeded"
            ),
            Ok((Ran::Many(fleet), Ok(()))) => tracing::info!(
                accounts = fleet.runs.len(),
                counts = %serde_json::to_string(&fleet.counts()).unwrap_or_default(),
                stripe_requests = fleet.stripe_requests(),
                emails_sent = fleet.emails_sent(),
                duration_ms = fleet.duration_ms,
                "run succeeded"
            ),
            Ok((_, Err(e))) | Err(e) => match error_policy(&e) {
                _ if shutdown.is_shutdown() => {
                    tracing::info!("stopped on signal after the page in progress");
                    return Ok(());
                }
                Action::Stop => {
                    tracing::info!("stopped on signal after the page in progress");
                    return Ok(());
                }
                // A configuration error (a mode mismatch, a key Stripe
                // rejects) fails every tick the same way: stop, exit 2.
                Action::Refuse => return Err(e),
                Action::Retry | Action::Locked | Action::Requeue => {
                    tracing::error!(error = %crate::secret::redact(&format!("{e:#}")), "run failed; the daemon goes on")
                }
            },
        }
    }
}
