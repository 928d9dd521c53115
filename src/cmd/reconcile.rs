//! `licensync reconcile`: one run, of the key's own account or of several
//! accounts side by side (`--stripe-account`, `--accounts-file`), as the
//! command and each daemon tick run it.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use futures::StreamExt;

use super::Output;
use crate::accounts::Shard;
use crate::config::Config;
use crate::db::OpenDatabase;
use crate::error::{Failure, usage};
use crate::mail::{MailService, MailUrl};
use crate::plan::PlanConfig;
use crate::reconcile::fleet::{self, AccountRun, Fleet};
use crate::reconcile::{Account, Context, ModeMismatch, Outcome, Report, Scope, reconcile, render_json, render_text};
use crate::shutdown::Shutdown;
use crate::stripe::{StripeConfig, StripeSource};
use crate::values::{Setting, parse_timestamp};

#[derive(Debug, Args, Clone)]
pub struct ReconcileArgs {
    /// Page everything instead of reading events since the cursor.
    #[arg(long, conflicts_with = "since")]
    pub full: bool,
    /// Catch up on everything that changed since this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TIME", value_parser = Setting::new("--since", parse_timestamp))]
    pub since: Option<DateTime<Utc>>,
    /// End of the --since window (default: now).
    #[arg(long, value_name = "TIME", requires = "since", value_parser = Setting::new("--until", parse_timestamp))]
    pub until: Option<DateTime<Utc>>,
    /// Compute and print the plan; write nothing (no license, no cursor, no email, no run row).
    #[arg(long)]
    pub dry_run: bool,
    /// Print the run report as text or as one JSON object on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Allow a key whose mode (test/live) differs from the licenses already stored.
    #[arg(long)]
    pub allow_mode_mismatch: bool,
    /// Write Prometheus textfile metrics here after the run.
    #[arg(long, env = "LICENSYNC_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// The JSON report lists at most this many actions and counts the rest in `actions_omitted`
    /// (every action is in the ledger).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub report_actions: usize,
    /// Only the accounts of shard I of N (0 <= I < N), by a stable hash of the account id: a Kubernetes
    /// Indexed Job passes $(JOB_COMPLETION_INDEX)/N.
    #[arg(long, env = "LICENSYNC_SHARD", value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Only these accounts (`None`: the key's own) of those configured: a
    /// daemon's wake-up runs the accounts its webhooks named.
    #[arg(skip)]
    pub only: Option<BTreeSet<Option<String>>>,
    /// Where a daemon keeps each account's last metrics between runs.
    #[arg(skip)]
    pub board: Option<crate::metrics::Board>,
}

/// One run, its report printed as text or JSON; the run's own failure
/// comes after the report.
pub async fn run(config: &Config, args: ReconcileArgs, shutdown: Shutdown) -> Result<()> {
    let (ran, outcome) = reconcile_once(config, &args, shutdown).await?;
    match args.output {
        Output::Json => println!("{}", ran.render_json()?),
        Output::Text => {
            print!("{}", ran.render_text());
            if let (MailUrl::File(dir), false) = (&config.mail.url, args.dry_run) {
                println!(
                    "License emails are written to {} (one .eml file per message).",
                    dir.display()
                );
            }
        }
    }
    outcome
}

/// What one `reconcile` did: one account's run, as before accounts
/// existed, or several accounts' (`--stripe-account`, `--accounts-file`).
#[derive(Debug)]
pub enum Ran {
    One(Box<Report>),
    Many(Fleet),
}

impl Ran {
    pub fn render_json(&self) -> Result<String> {
        match self {
            Ran::One(report) => render_json(report),
            Ran::Many(fleet) => fleet::render_json(fleet),
        }
    }

    pub fn render_text(&self) -> String {
        match self {
            Ran::One(report) => render_text(report),
            Ran::Many(fleet) => fleet::render_text(fleet),
        }
    }
}

/// One reconcile as the `reconcile` command runs it.
pub async fn reconcile_once(config: &Config, args: &ReconcileArgs, shutdown: Shutdown) -> Result<(Ran, Result<()>)> {
    reconcile_in(config, args, None, shutdown).await
}

/// One reconcile in a database already open (a daemon's, which it keeps
/// for its key API and its runs: the embedded database admits one opener),
/// or in one it opens for the run.
pub async fn reconcile_in(
    config: &Config,
    args: &ReconcileArgs,
    opened: Option<&OpenDatabase>,
    shutdown: Shutdown,
) -> Result<(Ran, Result<()>)> {
    let several = config.accounts.is_configured();
    if !several {
        config.require_stripe_key().map_err(usage)?;
    }
    // Flags and accounts first: --until before --since or a bad accounts file is a usage
    // error before any database or network IO.
    let scope = reconcile_scope(args)?;
    let configured = config.accounts().map_err(usage)?;
    let count = configured.len();
    let configured_ids: Vec<Option<String>> = configured.iter().map(|a| a.stripe_account.clone()).collect();
    let mut accounts = crate::accounts::select(configured, args.shard);
    if let Some(only) = &args.only {
        accounts.retain(|account| only.contains(&account.stripe_account));
    }
    let mut mails = Vec::with_capacity(accounts.len());
    for account in &accounts {
        mails.push(if args.dry_run {
            None
        } else {
            let mail = MailService::new(account.mail.clone());
            Some(if several {
                mail.map_err(|e| usage(e.context(format!("the sender of account {}", account.label()))))?
            } else {
                mail?
            })
        });
    }
    let owned;
    let db = match opened {
        Some(db) => db,
        None => {
            owned = OpenDatabase::open(&config.database)?;
            &owned
        }
    };
    if args.dry_run {
        if db.store.has_pending_migrations()? {
            return Err(usage(anyhow::anyhow!(
                "the database has pending migrations and a dry run writes nothing: run `licensync migrate` first"
            )));
        }
    } else {
        db.store.migrate()?;
    }
    if several {
        // Licenses of an account no longer configured are left as they are:
        // nothing renews or expires them. Say so on every run.
        for account in db.store.known_accounts()? {
            if !configured_ids.contains(&account) {
                tracing::warn!(
                    stripe_account = crate::accounts::label(account.as_deref()),
                    "the database holds licenses of an account that is not configured: nothing reconciles them; \
                     add it (`--stripe-account {}`) or leave it out knowingly",
                    account.as_deref().unwrap_or("self")
                );
            }
        }
    }
    let ctx = Context {
        scope,
        stop: Some(shutdown),
        progress: !several && args.output == Output::Text && std::io::stderr().is_terminal(),
        dry_run: args.dry_run,
        allow_mode_mismatch: args.allow_mode_mismatch,
        plan: PlanConfig {
            grace: config.grace,
            past_due_grace: config.past_due_grace,
            mail_since: config.mail_since,
        },
        mail_max_attempts: config.mail_max_attempts,
        write_back: config.stripe_write_back,
        report_actions: args.report_actions,
    };
    if !several && let (Some(account), Some(mail)) = (accounts.first(), mails.pop()) {
        let source = account_source(config, account)?;
        let account = Account {
            store: &db.store,
            source,
            mail: mail.as_ref(),
        };
        let (report, outcome) = match reconcile(account, &ctx).await.into_result() {
            (Some(report), outcome) => (report, outcome),
            (None, outcome) => {
                let e = outcome
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("the run ended without a report"));
                // A refused run did nothing, but alerting must hear of it.
                if is_mode_mismatch(&e) {
                    publish_metrics(args, || {
                        crate::metrics::of_refusal(crate::metrics::Refusal::ModeMismatch, &db.store)
                    });
                }
                return Err(e);
            }
        };
        publish_metrics(args, || crate::metrics::of_run(&report, &db.store));
        return Ok((Ran::One(Box::new(report)), outcome));
    }
    // The report's memory does not grow with the number of accounts either:
    // `--report-actions` is the whole run's, shared out among the accounts.
    let ctx = Context {
        report_actions: args.report_actions.div_ceil(accounts.len().max(1)),
        ..ctx
    };
    let started = std::time::Instant::now();
    let shard = args.shard;
    let runs = futures::stream::iter(accounts.into_iter().zip(mails).enumerate())
        .map(|(i, (account, mail))| {
            let (store, ctx) = (db.store.for_account(account.stripe_account.as_deref()), &ctx);
            // Every log line of the account's run names it.
            let span = tracing::info_span!("account", stripe_account = %account.label());
            tracing::Instrument::instrument(
                async move {
                    let done = match account_source(config, &account) {
                        Ok(source) => {
                            let run = Account {
                                store: &store,
                                source,
                                mail: mail.as_ref(),
                            };
                            reconcile(run, ctx).await
                        }
                        Err(e) => Outcome::of(None, Err(e)),
                    };
                    let run = AccountRun::of(account.stripe_account.clone(), account.name.clone(), done);
                    match &run.error {
                        None => {
                            tracing::info!(stripe_account = run.label(), outcome = %run.outcome, "account reconciled")
                        }
                        Some(e) => tracing::warn!(
                            stripe_account = run.label(),
                            outcome = %run.outcome,
                            error = %crate::secret::redact(&format!("{e:#}")),
                            "account not reconciled; the other accounts go on"
                        ),
                    }
                    (i, run)
                },
                span,
            )
        })
        .buffer_unordered(config.account_concurrency)
        .collect::<Vec<_>>()
        .await;
    let mut runs = runs;
    runs.sort_by_key(|(i, _)| *i);
    let fleet = Fleet {
        runs: runs.into_iter().map(|(_, r)| r).collect(),
        dry_run: args.dry_run,
        shard,
        configured: count,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    publish_metrics(args, || crate::metrics::of_fleet(&fleet, &db.store));
    let outcome = fleet.outcome();
    Ok((Ran::Many(fleet), outcome))
}

/// `--full`, `--since`/`--until`, or neither.
fn reconcile_scope(args: &ReconcileArgs) -> Result<Scope> {
    let scope = match (args.since, args.full) {
        (Some(since), _) => Scope::Since {
            since,
            until: args.until,
        },
        (None, true) => Scope::Full,
        (None, false) => Scope::Auto,
    };
    if let Scope::Since {
        since,
        until: Some(until),
    } = scope
        && until <= since
    {
        return Err(usage(anyhow::anyhow!(
            "--until ({until}) must be after --since ({since})"
        )));
    }
    Ok(scope)
}

/// The Stripe client of one account: its key, and the `Stripe-Account`
/// header for a connected account; each client has its own rate budget.
fn account_source(config: &Config, account: &crate::accounts::Account) -> Result<StripeSource> {
    Ok(StripeSource::new(StripeConfig {
        base_url: config.stripe_api_base.clone(),
        rps: config.stripe_rps,
        account: account.connect.then(|| account.stripe_account.clone()).flatten(),
        ..StripeConfig::new(account.api_key.clone())
    })?)
}

/// Metrics are for alerting: a failure to write them must not hide the run's own outcome.
/// Writes the run's metrics to `--metrics-file` and the daemon's board,
/// whichever there are; a dry run publishes nothing. A failure to write
/// them is logged, never the run's failure.
fn publish_metrics(args: &ReconcileArgs, snapshots: impl FnOnce() -> Result<Vec<crate::metrics::Labelled>>) {
    if args.dry_run || (args.metrics_file.is_none() && args.board.is_none()) {
        return;
    }
    let published = snapshots().and_then(|snapshots| {
        let text = match &args.board {
            Some(board) => board.publish(snapshots),
            None => crate::metrics::encode_all(snapshots),
        };
        match &args.metrics_file {
            Some(path) => crate::metrics::write(path, &text),
            None => Ok(()),
        }
    });
    if let Err(e) = published {
        tracing::warn!(error = %format!("{e:#}"), "could not write the metrics file");
    }
}

fn is_mode_mismatch(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<Failure>(), Some(Failure::Usage(inner)) if inner.is::<ModeMismatch>()))
}
