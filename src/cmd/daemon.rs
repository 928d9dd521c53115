//! `licensync daemon`: a reconcile at each tick of a cron schedule, and
//! with `--listen` one as soon as a Stripe webhook names an account
//! (docs/deployment.md), until SIGTERM/SIGINT, which finishes the run in
//! progress and exits cleanly.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use clap::Args;

use super::Output;
use super::reconcile::{Ran, ReconcileArgs, reconcile_in};
use super::serve::{KeyApiOptions, KeyApiSettings};
use crate::accounts::Shard;
use crate::config::{Config, secret_setting};
use crate::daemon::{Endpoint, Health, Wakeups};
use crate::db::OpenDatabase;
use crate::error::usage;
use crate::metrics::Board;
use crate::reconcile::{Action, error_policy};
use crate::shutdown::Shutdown;
use crate::stripe::WebhookSecrets;
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
    /// Serve Stripe's webhooks (POST /v1/stripe/webhook), /healthz and /metrics here, and the key API
    /// with --signing-key-file.
    #[arg(long, env = "LICENSYNC_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// The webhook endpoint's signing secret (whsec_...); several, comma-separated, while one is rolled.
    #[arg(long, env = "LICENSYNC_WEBHOOK_SECRET", hide_env_values = true, value_name = "WHSEC")]
    pub webhook_secret: Option<String>,
    /// A file holding the webhook secret(s), as container secrets are mounted.
    #[arg(long, env = "LICENSYNC_WEBHOOK_SECRET_FILE", value_name = "PATH")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Also answer the key API on --listen, signing with this key (a PASERK `k4.secret` file).
    #[arg(long, env = "LICENSYNC_SIGNING_KEY_FILE", value_name = "PATH")]
    pub signing_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub key_api: KeyApiOptions,
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

/// Why a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Schedule,
    Webhook,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Webhook => "webhook",
        }
    }
}

/// A reconcile at each tick until SIGTERM/SIGINT, and with `--listen` one
/// for the accounts webhooks woke. Runs never overlap: one run at a time,
/// so an account has at most one run going and one waiting. A tick that
/// passes during a run waits for it (a wake-up never makes the schedule
/// skip a tick); ticks that passed during a scheduled run are skipped. A
/// failed run is logged and the daemon goes on.
pub async fn run(config: &Config, args: DaemonArgs, mut shutdown: Shutdown) -> Result<()> {
    if config.accounts.is_configured() {
        config.accounts().map_err(usage)?;
    } else {
        config.require_stripe_key().map_err(usage)?;
    }
    // Every setting is checked before the database opens or a port binds.
    let secrets = secret_setting(
        args.webhook_secret.as_deref(),
        args.webhook_secret_file.as_deref(),
        ("--webhook-secret", "LICENSYNC_WEBHOOK_SECRET"),
    )
    .map_err(usage)?
    .map(|list| WebhookSecrets::parse(&list))
    .transpose()
    .map_err(|e| usage(anyhow!("--webhook-secret / LICENSYNC_WEBHOOK_SECRET: {e}")))?;
    let key_api = args
        .signing_key_file
        .as_deref()
        .map(|path| KeyApiSettings::read(path, &args.key_api))
        .transpose()?;
    if args.listen.is_none() && (secrets.is_some() || key_api.is_some()) {
        return Err(usage(anyhow!(
            "a webhook secret or --signing-key-file needs --listen / LICENSYNC_LISTEN: \
             the webhook endpoint and the key API are served there"
        )));
    }
    let listener = match args.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| usage(anyhow!("cannot listen on {addr} (--listen / LICENSYNC_LISTEN): {e}")))?,
        ),
        None => None,
    };
    // One database for every run and the key API: the embedded one admits
    // a single opener. A database that is down or refuses the password is
    // tried again at each tick, as a failed run would be; the endpoint
    // serves once it is open.
    let Some(db) = open_database(config, &args.schedule, &mut shutdown).await? else {
        return Ok(());
    };
    let wakeups = Wakeups::default();
    let health = Health::new(Utc::now());
    let board = Board::default();
    let server = match listener {
        Some(listener) => {
            let accounts: BTreeSet<Option<String>> =
                crate::accounts::select(config.accounts().map_err(usage)?, args.reconcile.shard)
                    .into_iter()
                    .map(|account| account.stripe_account)
                    .collect();
            if secrets.is_none() {
                tracing::warn!(
                    "no LICENSYNC_WEBHOOK_SECRET: the webhook endpoint is off (404); runs follow the schedule only"
                );
            }
            let key_api = key_api.map(|settings| {
                tracing::info!(kid = %settings.kid(), "the key API is served on the daemon's address");
                Arc::new(settings.service(&db.store))
            });
            let endpoint = Endpoint::new(
                secrets,
                accounts,
                wakeups.clone(),
                health.clone(),
                args.schedule.clone(),
                board.clone(),
                key_api,
            );
            let listen = listener.local_addr()?;
            tracing::info!(listen = %listen, "daemon listening");
            Some(tokio::spawn(crate::daemon::serve(
                listener,
                Arc::new(endpoint),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let ran = runs(config, &args, &db, &wakeups, &health, board, &mut shutdown).await;
    if let Some(server) = server {
        // The stop reached the server too: it finishes its requests in flight.
        match server.await {
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "the daemon's endpoint failed"),
            Err(e) => tracing::warn!(error = %e, "the daemon's endpoint panicked"),
            Ok(Ok(())) => {}
        }
    }
    ran
}

/// Opens and migrates the license database, again at each tick until it
/// opens; `None` when the stop (or the schedule's end) comes first. Only a
/// configuration error (no PostgreSQL binaries for the embedded database)
/// stops the daemon.
async fn open_database(config: &Config, schedule: &Schedule, shutdown: &mut Shutdown) -> Result<Option<OpenDatabase>> {
    loop {
        let opened = OpenDatabase::open(&config.database).and_then(|db| {
            db.store.migrate()?;
            Ok(db)
        });
        let e = match opened {
            Ok(db) => return Ok(Some(db)),
            Err(e) => e,
        };
        if error_policy(&e) == Action::Refuse {
            return Err(e);
        }
        tracing::error!(
            trigger = Trigger::Schedule.as_str(),
            error = %crate::secret::redact(&format!("{e:#}")),
            "run failed; the daemon goes on (the license database did not open: it is tried again at the next tick)"
        );
        // Nothing serves yet, so nothing wakes the daemon but the schedule.
        if next_trigger(schedule.next(), None, shutdown).await.is_none() {
            return Ok(None);
        }
    }
}

/// What a run waits for: `tick`, or a wake-up when `wakeups` are given;
/// with the accounts a wake-up names. `None` (logged) when the stop comes
/// first or the schedule has no tick left.
async fn next_trigger(
    tick: Option<DateTime<Utc>>,
    wakeups: Option<&Wakeups>,
    shutdown: &mut Shutdown,
) -> Option<(Trigger, Option<BTreeSet<Option<String>>>)> {
    let Some(next) = tick else {
        tracing::info!("the schedule has no further ticks; stopping");
        return None;
    };
    let wait = (next - Utc::now()).to_std().unwrap_or_default();
    let woken = async {
        match wakeups {
            Some(wakeups) => wakeups.next().await,
            None => std::future::pending().await,
        }
    };
    let trigger = tokio::select! {
        _ = tokio::time::sleep(wait) => (Trigger::Schedule, None),
        accounts = woken => (Trigger::Webhook, Some(accounts)),
        _ = shutdown.recv() => (Trigger::Schedule, None),
    };
    if shutdown.is_shutdown() {
        tracing::info!("stopping on signal");
        return None;
    }
    Some(trigger)
}

/// The runs, one at a time, until the stop (or a run that must not be
/// repeated: a configuration Stripe refuses).
async fn runs(
    config: &Config,
    args: &DaemonArgs,
    db: &OpenDatabase,
    wakeups: &Wakeups,
    health: &Health,
    board: Board,
    shutdown: &mut Shutdown,
) -> Result<()> {
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
        only: None,
        board: Some(board),
    };
    let schedule = &args.schedule;
    tracing::info!(schedule = %schedule, "daemon started");
    let mut tick: Option<DateTime<Utc>> = schedule.next();
    loop {
        let Some((trigger, only)) = next_trigger(tick, Some(wakeups), shutdown).await else {
            return Ok(());
        };
        if trigger == Trigger::Schedule {
            // This run covers every account: wake-ups so far are served.
            wakeups.clear();
        }
        let args = ReconcileArgs {
            only,
            ..reconcile_args.clone()
        };
        let outcome = reconcile_in(config, &args, Some(db), shutdown.clone()).await;
        if trigger == Trigger::Schedule {
            // Ticks that passed during this run are skipped.
            tick = schedule.next();
        }
        let trigger = trigger.as_str();
        match outcome {
            Ok((Ran::One(report), Ok(()))) => {
                health.succeeded(Utc::now());
                tracing::info!(
                    trigger,
                    run_id = report.run_id.as_deref().unwrap_or("-"),
                    mode = report.mode.as_ref(),
                    counts = %serde_json::to_string(&report.counts).unwrap_or_default(),
                    stripe_requests = report.stripe_requests,
                    emails_sent = report.emails_sent,
                    duration_ms = report.duration_ms,
                    "run succeeded"
                )
            }
            Ok((Ran::Many(fleet), Ok(()))) => {
                health.succeeded(Utc::now());
                tracing::info!(
                    trigger,
                    accounts = fleet.runs.len(),
                    counts = %serde_json::to_string(&fleet.counts()).unwrap_or_default(),
                    stripe_requests = fleet.stripe_requests(),
                    emails_sent = fleet.emails_sent(),
                    duration_ms = fleet.duration_ms,
                    "run succeeded"
                )
            }
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
                    tracing::error!(trigger, error = %crate::secret::redact(&format!("{e:#}")), "run failed; the daemon goes on")
                }
            },
        }
    }
}
