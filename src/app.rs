//! Runs one command of the CLI against an open database: the glue between
//! configuration, the store, the reconcile engine and the output formats.
//! Text goes to stdout for people; JSON shapes follow cli.md.

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result};
use chrono::Utc;
use futures::StreamExt;
use serde_json::json;

use crate::cli::{Cli, Command, DaemonArgs, LicensesCommand, MailCommand, OperatorArgs, Output, ReconcileArgs};
use crate::config::{Config, parse_timestamp};
use crate::db::OpenDatabase;
use crate::delivery::deliver_due;
use crate::domain::{EmailStatus, License, LicenseStatus, OperatorAction};
use crate::error::{EXIT_USAGE, Failure, exit_status, usage};
use crate::mail::{MailService, MailUrl};
use crate::operator;
use crate::plan::PlanConfig;
use crate::reconcile::fleet::{self, AccountRun, Fleet};
use crate::reconcile::{
    EVENTS_CURSOR, Interrupted, ModeMismatch, Report, RunOptions, Scope, reconcile, render_json, render_text,
};
use crate::store::{LicenseFilter, Store};
use crate::stripe::{StripeConfig, StripeSource};

pub async fn run(cli: Cli, config: Config) -> Result<()> {
    match cli.command {
        Command::Migrate => {
            let db = OpenDatabase::open(&config.database)?;
            let applied = db.store.migrate()?;
            if applied.is_empty() {
                println!("database is up to date");
            } else {
                println!("applied {} migration(s): {}", applied.len(), applied.join(", "));
            }
            Ok(())
        }
        Command::Status { output } => {
            let db = open_migrated(&config)?;
            status(&db.store, output)
        }
        Command::Licenses(LicensesCommand::List {
            status,
            customer,
            account,
            output,
        }) => {
            let status = status
                .map(|s| {
                    LicenseStatus::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
                        usage(anyhow::anyhow!(
                            "--status must be one of active, suspended, expired, revoked, not `{s}`"
                        ))
                    })
                })
                .transpose()?;
            let db = open_migrated(&config)?;
            let licenses = db.store.list_licenses(&LicenseFilter {
                status,
                customer_email: customer,
                stripe_account: account.map(|a| a.0),
            })?;
            print_licenses(&db.store, &licenses, output)
        }
        Command::Licenses(LicensesCommand::Show { key_or_id, output }) => {
            let db = open_migrated(&config)?;
            show_license(&db.store, &key_or_id, output)
        }
        Command::Licenses(LicensesCommand::Revoke(args)) => {
            operate(
                &config,
                &args.key_or_id,
                operator::Command::Revoke,
                Some(args.reason),
                &args.operator,
            )
            .await
        }
        Command::Licenses(LicensesCommand::Suspend(args)) => {
            operate(
                &config,
                &args.key_or_id,
                operator::Command::Suspend,
                Some(args.reason),
                &args.operator,
            )
            .await
        }
        Command::Licenses(LicensesCommand::Pin(args)) => {
            let command = operator::Command::Pin {
                hwid_limit: args.hwid_limit,
                ip_limit: args.ip_limit,
                expires_at: args.expires_at,
            };
            operate(&config, &args.key_or_id, command, Some(args.reason), &args.operator).await
        }
        Command::Licenses(LicensesCommand::Release(args)) => {
            operate(
                &config,
                &args.key_or_id,
                operator::Command::Release,
                args.reason,
                &args.operator,
            )
            .await
        }
        Command::Licenses(LicensesCommand::Reissue(args)) => {
            let command = operator::Command::Reissue {
                new_key: crate::keys::new_license_key(),
            };
            operate(&config, &args.key_or_id, command, Some(args.reason), &args.operator).await
        }
        Command::Reconcile(args) => {
            let (ran, outcome) = reconcile_once(&config, &args, stop_on_signal()).await?;
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
        Command::Mail(MailCommand::Resend { key_or_id }) => {
            let db = open_migrated(&config)?;
            let license = db
                .store
                .find_license(&key_or_id)?
                .ok_or_else(|| usage(anyhow::anyhow!("no license with key or id `{key_or_id}`")))?;
            // Sent as its account sends (its sender and templates), by a
            // sender that claims only its account's emails.
            let mail = account_mail(&config, license.stripe_account.as_deref())?;
            let store = db.store.for_account(license.stripe_account.as_deref());
            if license.customer_email.is_none() {
                return Err(usage(anyhow::anyhow!(
                    "license {} has no customer email (Stripe had none); nothing to send",
                    license.key
                )));
            }
            let outbox_id = store.queue_resend(&license)?;
            deliver_due(&store, &mail, config.mail_max_attempts, Utc::now()).await?;
            let row = store
                .outbox_for_license(license.id)?
                .into_iter()
                .find(|o| o.id == outbox_id);
            match row {
                Some(row) if row.status == EmailStatus::Sent => {
                    println!(
                        "sent the license email for {} to {}",
                        license.key,
                        row.recipient.unwrap_or_default()
                    );
                    Ok(())
                }
                Some(row) if row.status == EmailStatus::Pending && matches!(config.mail.url, MailUrl::None) => {
                    println!(
                        "queued the license email for {} (mail transport `none`: not sent)",
                        license.key
                    );
                    Ok(())
                }
                Some(row) if row.status == EmailStatus::Failed => Err(anyhow::anyhow!(
                    "the license email for {} could not be delivered and was given up: {}",
                    license.key,
                    row.last_error.unwrap_or_else(|| row.status.to_string())
                )),
                Some(row) => Err(anyhow::anyhow!(
                    "the license email for {} was queued but not delivered yet ({}): the next reconcile retries it",
                    license.key,
                    row.last_error.unwrap_or_else(|| row.status.to_string())
                )),
                None => Err(anyhow::anyhow!("the queued email for {} disappeared", license.key)),
            }
        }
        Command::Daemon(args) => daemon(&config, args).await,
    }
}

/// An operator command (licensing-rules §8): decided and written on the
/// locked license row in one transaction; a reissue's email is sent at once.
async fn operate(
    config: &Config,
    key_or_id: &str,
    command: operator::Command,
    reason: Option<String>,
    who: &OperatorArgs,
) -> Result<()> {
    let request = operator::Request {
        command,
        reason,
        by: operator::operator_name(who.by.as_deref())?,
        now: Utc::now(),
    };
    let db = open_migrated(config)?;
    let done = db
        .store
        .operate(key_or_id, |license| operator::decide(license, &request))?
        .ok_or_else(|| {
            usage(anyhow::anyhow!(
                "no license with key or id `{}`; find it with `licensync licenses list --customer EMAIL`",
                key_or_id.trim()
            ))
        })?;
    let mut email = None;
    if let Some(outbox_id) = done.outbox_id {
        let account = done.after.stripe_account.as_deref();
        let (mail, store) = (account_mail(config, account)?, db.store.for_account(account));
        if let Err(e) = deliver_due(&store, &mail, config.mail_max_attempts, Utc::now()).await {
            tracing::warn!(error = %format!("{e:#}"), "could not deliver the new key; the next reconcile retries");
        }
        email = db
            .store
            .outbox_for_license(done.after.id)?
            .into_iter()
            .find(|o| o.id == outbox_id);
    }
    let changes = operator::changes(&done.before, &done.after);
    let command = done.write.action.command();
    match who.output {
        Output::Json => {
            let value = json!({
                "command": command,
                "license_id": done.after.id,
                "key": done.after.key,
                "by": done.write.operator,
                "reason": done.write.reason,
                "changes": changes,
                "override": done.after.operator_override,
                "email": email,
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{command}: license {} ({}) by {}{}",
                done.after.id,
                done.before.key,
                done.write.operator,
                done.write
                    .reason
                    .as_deref()
                    .map(|r| format!(", reason: {r}"))
                    .unwrap_or_default()
            )?;
            for c in &changes {
                let (before, after) = match c.field {
                    "override" => (
                        operator::summary(done.before.operator_override.as_ref()),
                        operator::summary(done.after.operator_override.as_ref()),
                    ),
                    _ => (brief(&c.before), brief(&c.after)),
                };
                writeln!(out, "  {:<11} {before} -> {after}", c.field)?;
            }
            match (&done.after.operator_override, done.write.action) {
                (_, OperatorAction::Reissue) => {}
                (Some(_), _) => writeln!(
                    out,
                    "Every later run keeps what the override holds; `licensync licenses release {}` hands it back to Stripe.",
                    done.after.key
                )?,
                (None, _) => writeln!(
                    out,
                    "No override: the license follows Stripe (fully from the next run that reads its purchase)."
                )?,
            }
            if let Some(row) = &email {
                writeln!(
                    out,
                    "New key email to {}: {}",
                    row.recipient.as_deref().unwrap_or("-"),
                    row.status
                )?;
            }
        }
    }
    Ok(())
}

/// The email service of one account: its sender and templates from the
/// accounts file, else the deployment's.
fn account_mail(config: &Config, stripe_account: Option<&str>) -> Result<MailService> {
    let settings = config.accounts.mail_for(stripe_account, &config.mail).map_err(usage)?;
    MailService::new(settings)
}

fn brief(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
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

/// One reconcile as the `reconcile` command and each daemon tick run it.
pub async fn reconcile_once(
    config: &Config,
    args: &ReconcileArgs,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(Ran, Result<()>)> {
    let several = config.accounts.is_configured();
    if !several {
        config.require_stripe_key().map_err(usage)?;
    }
    // Flags and accounts first: a bad --since or accounts file is a usage
    // error before any database or network IO.
    let scope = reconcile_scope(args)?;
    let configured = config.accounts().map_err(usage)?;
    let count = configured.len();
    let configured_ids: Vec<Option<String>> = configured.iter().map(|a| a.stripe_account.clone()).collect();
    let accounts = crate::accounts::select(configured, args.shard);
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
    let db = OpenDatabase::open(&config.database)?;
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
    let options = RunOptions {
        scope,
        stop: Some(stop),
        progress: !several && args.output == Output::Text && std::io::stderr().is_terminal(),
        dry_run: args.dry_run,
        allow_mode_mismatch: args.allow_mode_mismatch,
        plan: PlanConfig {
            grace: config.grace,
            past_due_grace: config.past_due_grace,
            mail_since: config.mail_since,
        },
        mail_max_attempts: config.mail_max_attempts,
        report_actions: args.report_actions,
    };
    let metrics_file = args.metrics_file.as_deref().filter(|_| !args.dry_run);
    if !several && let (Some(account), Some(mail)) = (accounts.first(), mails.pop()) {
        let source = account_source(config, account)?;
        let (report, outcome) = match reconcile(&db.store, source, mail.as_ref(), options).await {
            Ok(done) => done,
            Err(e) => {
                // A refused run did nothing, but alerting must hear of it.
                if let Some(path) = metrics_file.filter(|_| is_mode_mismatch(&e)) {
                    write_metrics(path, || {
                        crate::metrics::render_refused(crate::metrics::Refusal::ModeMismatch, &db.store)
                    });
                }
                return Err(e);
            }
        };
        if let Some(path) = metrics_file {
            write_metrics(path, || crate::metrics::render(&report, &db.store));
        }
        return Ok((Ran::One(Box::new(report)), outcome));
    }
    // The report's memory does not grow with the number of accounts either:
    // `--report-actions` is the whole run's, shared out among the accounts.
    let options = RunOptions {
        report_actions: args.report_actions.div_ceil(accounts.len().max(1)),
        ..options
    };
    let started = std::time::Instant::now();
    let shard = args.shard;
    let runs = futures::stream::iter(accounts.into_iter().zip(mails).enumerate())
        .map(|(i, (account, mail))| {
            let (store, options) = (db.store.for_account(account.stripe_account.as_deref()), options.clone());
            // Every log line of the account's run names it.
            let span = tracing::info_span!("account", stripe_account = %account.label());
            tracing::Instrument::instrument(
                async move {
                    let done = match account_source(config, &account) {
                        Ok(source) => reconcile(&store, source, mail.as_ref(), options).await,
                        Err(e) => Err(e),
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
    if let Some(path) = metrics_file {
        write_metrics(path, || crate::metrics::render_fleet(&fleet, &db.store));
    }
    let outcome = fleet.outcome();
    Ok((Ran::Many(fleet), outcome))
}

/// `--full`, `--since`/`--until`, or neither.
fn reconcile_scope(args: &ReconcileArgs) -> Result<Scope> {
    let scope = match (&args.since, args.full) {
        (Some(since), _) => Scope::Since {
            since: parse_timestamp(since, "--since").map_err(usage)?,
            until: args
                .until
                .as_deref()
                .map(|u| parse_timestamp(u, "--until"))
                .transpose()
                .map_err(usage)?,
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
fn write_metrics(path: &std::path::Path, render: impl FnOnce() -> Result<String>) {
    if let Err(e) = render().and_then(|m| crate::metrics::write(path, &m)) {
        tracing::warn!(error = %format!("{e:#}"), "could not write the metrics file");
    }
}

fn is_mode_mismatch(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<Failure>(), Some(Failure::Usage(inner)) if inner.is::<ModeMismatch>()))
}

/// Reads a cron expression: the `cron` crate's form with seconds
/// (`0 */15 * * * *`), or the classic five fields of crontab
/// (`*/15 * * * *`), which run at second 0.
pub fn parse_schedule(expression: &str) -> Result<cron::Schedule> {
    let trimmed = expression.trim();
    let fields = trimmed.split_whitespace().count();
    let full = if fields == 5 {
        format!("0 {trimmed}")
    } else {
        trimmed.to_owned()
    };
    full.parse::<cron::Schedule>().map_err(|e| {
        usage(anyhow::anyhow!(
            "--schedule / LICENSYNC_SCHEDULE: `{expression}` is not a cron expression ({e}); \
             write e.g. `*/15 * * * *` (every 15 minutes) or `0 */15 * * * *` (with seconds)"
        ))
    })
}

/// A reconcile at each tick until SIGTERM/SIGINT. Runs never overlap: the
/// next tick is computed when a run ends, so ticks that passed during a long
/// run are skipped. A failed run is logged and the daemon goes on.
async fn daemon(config: &Config, args: DaemonArgs) -> Result<()> {
    let schedule = parse_schedule(&args.schedule)?;
    if config.accounts.is_configured() {
        config.accounts().map_err(usage)?;
    } else {
        config.require_stripe_key().map_err(usage)?;
    }
    let mut stop = stop_on_signal();
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
        let Some(next) = schedule.upcoming(Utc).next() else {
            tracing::info!("the schedule has no further ticks; stopping");
            return Ok(());
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            tracing::info!("stopping on signal");
            return Ok(());
        }
        match reconcile_once(config, &reconcile_args, stop.clone()).await {
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
            Ok((_, Err(e))) if e.chain().any(|c| c.is::<Interrupted>()) || *stop.borrow() => {
                tracing::info!("stopped on signal after the page in progress");
                return Ok(());
            }
            Ok((_, Err(e))) | Err(e) => {
                // A configuration error (a mode mismatch, a key Stripe
                // rejects) fails every tick the same way: stop, exit 2.
                if exit_status(&e) == EXIT_USAGE {
                    return Err(e);
                }
                tracing::error!(error = %crate::secret::redact(&format!("{e:#}")), "run failed; the daemon goes on");
            }
        }
    }
}

/// A flag that turns `true` on SIGTERM or SIGINT: runs stop after the page
/// in progress, so nothing is half-applied.
pub fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stop requested: finishing the page in progress");
        let _ = tx.send(true);
    });
    rx
}

/// Opens the database and applies pending migrations, so that read
/// commands work on a fresh embedded database too.
pub fn open_migrated(config: &Config) -> Result<OpenDatabase> {
    let db = OpenDatabase::open(&config.database)?;
    db.store.migrate()?;
    Ok(db)
}

fn status(store: &Store, output: Output) -> Result<()> {
    let runs = store.recent_runs(5)?;
    let cursor = store.cursor(EVENTS_CURSOR)?;
    let licenses = store.license_counts()?;
    let under_override = store.override_count()?;
    let emails = store.outbox_counts()?;
    let now = Utc::now();
    let cursor_json = |cursor: &Option<(String, chrono::DateTime<Utc>)>| {
        cursor.as_ref().map(|(value, updated_at)| {
            json!({"value": value, "updated_at": updated_at, "age_seconds": (now - *updated_at).num_seconds()})
        })
    };
    // Each account's own figures (licensing-rules §9).
    let mut accounts = Vec::new();
    for account in store.known_accounts()? {
        let scoped = store.for_account(account.as_deref());
        accounts.push((
            account,
            scoped.recent_runs(1)?.into_iter().next(),
            scoped.cursor(EVENTS_CURSOR)?,
            scoped.license_counts()?,
            scoped.outbox_counts()?,
        ));
    }
    match output {
        Output::Json => {
            let by_account: Vec<serde_json::Value> = accounts
                .iter()
                .map(|(account, last_run, cursor, licenses, emails)| {
                    json!({
                        "stripe_account": account,
                        "last_run": last_run,
                        "cursor": cursor_json(cursor),
                        "licenses": licenses,
                        "emails": emails,
                    })
                })
                .collect();
            let report = json!({
                "runs": runs,
                "cursor": cursor_json(&cursor),
                "licenses": licenses,
                "licenses_under_override": under_override,
                "emails": emails,
                "accounts": by_account,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "Last runs:")?;
            if runs.is_empty() {
                writeln!(out, "  none yet")?;
            }
            for r in &runs {
                let duration = r
                    .finished_at
                    .map(|f| format!("{:.1}s", (f - r.started_at).num_milliseconds() as f64 / 1000.0))
                    .unwrap_or_else(|| "still running".into());
                let account = match (&r.stripe_account, accounts.len() > 1) {
                    (_, false) => String::new(),
                    (account, true) => format!("{:<22}", crate::accounts::label(account.as_deref())),
                };
                writeln!(
                    out,
                    "  #{:<5} {account}{:<11} {:<9} started {}  {}  {} Stripe requests{}",
                    r.id,
                    r.mode,
                    r.outcome,
                    r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    duration,
                    r.stripe_requests,
                    r.error.as_deref().map(|e| format!("  error: {e}")).unwrap_or_default()
                )?;
            }
            match &cursor {
                Some((value, at)) => writeln!(
                    out,
                    "Event cursor: {value} (stored {} ago)",
                    humantime::format_duration(std::time::Duration::from_secs((now - *at).num_seconds().max(0) as u64))
                )?,
                None => writeln!(out, "Event cursor: none (the next reconcile is a full scan)")?,
            }
            let counts: Vec<String> = licenses.iter().map(|(k, v)| format!("{k} {v}")).collect();
            writeln!(
                out,
                "Licenses: {} ({under_override} under operator override)",
                counts.join(", ")
            )?;
            writeln!(
                out,
                "Emails: {} pending, {} sent, {} failed, {} without recipient, {} skipped (before --mail-since)",
                emails.pending, emails.sent, emails.failed, emails.no_recipient, emails.skipped
            )?;
            if accounts.len() > 1 {
                writeln!(out, "By account:")?;
                for (account, last_run, cursor, licenses, emails) in &accounts {
                    let counts: Vec<String> = licenses
                        .iter()
                        .filter(|(_, v)| **v > 0)
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect();
                    let run = last_run
                        .as_ref()
                        .map(|r| format!("last run #{} {} {}", r.id, r.mode, r.outcome))
                        .unwrap_or_else(|| "no run yet".into());
                    let cursor = cursor
                        .as_ref()
                        .map(|(_, at)| {
                            format!(
                                "cursor stored {} ago",
                                humantime::format_duration(std::time::Duration::from_secs(
                                    (now - *at).num_seconds().max(0) as u64
                                ))
                            )
                        })
                        .unwrap_or_else(|| "no cursor".into());
                    writeln!(
                        out,
                        "  {:<22} {run}; {cursor}; licenses {}; emails {} pending, {} failed",
                        crate::accounts::label(account.as_deref()),
                        if counts.is_empty() {
                            "none".into()
                        } else {
                            counts.join(", ")
                        },
                        emails.pending,
                        emails.failed
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn print_licenses(store: &Store, licenses: &[License], output: Output) -> Result<()> {
    match output {
        Output::Json => {
            let ids: Vec<i64> = licenses.iter().map(|l| l.id).collect();
            let mut history = store.key_history(&ids)?;
            let mut rows = Vec::with_capacity(licenses.len());
            for l in licenses {
                let mut value = serde_json::to_value(l).context("serializing a license")?;
                value["key_history"] = serde_json::to_value(history.remove(&l.id).unwrap_or_default())?;
                rows.push(value);
            }
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            if licenses.is_empty() {
                writeln!(out, "no licenses")?;
            }
            for l in licenses {
                writeln!(
                    out,
                    "{:<6} {}  {:<9} {:<24} {:<32} expires {}  {}:{}{}",
                    l.id,
                    l.key,
                    l.status.as_str(),
                    l.product_ids.join(","),
                    l.customer_email.as_deref().unwrap_or("-"),
                    l.expires_at
                        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                        .unwrap_or_else(|| "never".into()),
                    l.source_kind.as_str(),
                    l.source_id,
                    l.operator_override
                        .as_ref()
                        .map(|o| format!("  [override: {}]", o.reason))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}

fn show_license(store: &Store, key_or_id: &str, output: Output) -> Result<()> {
    let license = store
        .find_license(key_or_id)?
        .ok_or_else(|| usage(anyhow::anyhow!("no license with key or id `{key_or_id}`")))?;
    let ledger = store.ledger(license.id)?;
    let emails = store.outbox_for_license(license.id)?;
    let history = store
        .key_history(&[license.id])?
        .remove(&license.id)
        .unwrap_or_default();
    // Looked up by a key a reissue replaced: that key no longer works.
    let asked = key_or_id.trim().to_ascii_uppercase();
    let replaced = history.iter().find(|h| h.key == asked);
    match output {
        Output::Json => {
            let mut value = serde_json::to_value(&license).context("serializing the license")?;
            value["key_history"] = serde_json::to_value(&history)?;
            value["replaced_key"] = serde_json::to_value(replaced)?;
            value["ledger"] = serde_json::to_value(&ledger)?;
            value["emails"] = serde_json::to_value(&emails)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            if let Some(h) = replaced {
                writeln!(
                    out,
                    "Key {} was replaced on {} by {} ({}) and no longer works; the license's key is now {}.",
                    h.key,
                    h.replaced_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    h.replaced_by,
                    h.reason,
                    license.key
                )?;
            }
            let pretty = serde_json::to_string_pretty(&license)?;
            writeln!(out, "{pretty}")?;
            if !history.is_empty() {
                writeln!(out, "Replaced keys (no longer valid):")?;
                for h in &history {
                    writeln!(
                        out,
                        "  {}  replaced {} by {}: {}",
                        h.key,
                        h.replaced_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        h.replaced_by,
                        h.reason
                    )?;
                }
            }
            writeln!(out, "Ledger:")?;
            for e in &ledger {
                let operator = match (&e.operator, &e.reason) {
                    (Some(by), Some(reason)) => format!(" by {by}: {reason}"),
                    (Some(by), None) => format!(" by {by}"),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "  {}  {:<9} run {:<5} because of {}{operator}",
                    e.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    e.action,
                    e.run_id.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                    e.stripe_object
                )?;
            }
            writeln!(out, "Emails:")?;
            for m in &emails {
                writeln!(
                    out,
                    "  {:<12} {:<12} to {}  attempts {}{}",
                    m.kind,
                    m.status,
                    m.recipient.as_deref().unwrap_or("-"),
                    m.attempts,
                    m.last_error
                        .as_deref()
                        .map(|e| format!("  last error: {e}"))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}
