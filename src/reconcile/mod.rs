//! One reconcile run (licensing-rules §7), as a small pipeline:
//!
//! ```text
//! scope ──> read ──────────────> stage ──────────> report
//! (what)    (Stripe pages,       (plan a page,      (counts, first
//!            segments read        apply it in one    actions, unchanged)
//!            side by side,        transaction)
//!            read ahead)
//! ```
//!
//! One file per concern: `scope` chooses what a run reads and the cursor it
//! stores (pure), `routing` turns events into the objects to re-read
//! (pure), `segments` splits a list into `created` ranges (pure), `read`
//! streams each list's pages, `lists` puts them together into the streams
//! a run applies, `stage` plans and applies a page, `report` keeps what
//! the run did, `progress` shows it, `policy` maps how a run ended to
//! what comes next (one error policy). `run` holds the phases: read refunds
//! and disputes, then every purchase list at once (or the events), then
//! sweep what the clock expired. This file wraps them: take the run lock,
//! check the mode, record the run, start the email sender beside it (each
//! committed page wakes it), then write the keys back to Stripe
//! (`--stripe-write-back`) and let the sender finish.
//!
//! A run that fails part-way leaves every committed page consistent and
//! the next run converges (pages are independent: each is planned against
//! the table as it is). Choices where the rules are silent:
//! - refunds and disputes are read before the purchases (full scans, and
//!   incremental runs with a charge event), and the payments taken back in
//!   full are kept for the rest of the run, so a purchase refunded before
//!   licensync first saw it issues nothing rather than a key mailed and
//!   revoked in one run. That map grows with the account's full refunds and
//!   lost disputes, a small share of its purchases. These two lists are
//!   short and read one page at a time.
//! - **Read only what can grant**: a payment-mode Checkout Session or a
//!   one-off invoice grants only through a one-time price of a licensed
//!   product. When the catalog has none, a scan reads neither list. When
//!   it has some, a full scan finds one-off invoices through
//!   `GET /v1/invoiceitems` (one-off invoices are made of invoice items,
//!   subscription renewals are not), each item with its invoice expanded,
//!   and keeps only the invoices whose items have such a price, instead of
//!   paging every renewal invoice or retrieving each one-off invoice;
//!   Stripe's invoice list cannot filter by `billing_reason` and its search
//!   cannot say "no subscription". A `--since` window older than the event
//!   retention still pages the paid invoices created in the window (an
//!   item can be created long before its invoice).
//! - The invoices Checkout Sessions created are the sessions': a one-off
//!   invoice is planned only once every session was read. A full scan
//!   reads the invoice items beside the sessions and holds the invoices
//!   they name until then; a `--since` window pages its invoices after its
//!   sessions. Subscriptions are read alongside both.
//! - A run stopped by a signal stops applying at once; pages read ahead but
//!   not applied are read again by the next run.

pub mod fleet;
mod lists;
mod policy;
mod progress;
mod read;
mod report;
mod routing;
mod run;
mod scope;
mod segments;
mod stage;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result, anyhow};
use chrono::Utc;

pub use policy::{Action, Interrupted, Outcome, error_policy};
pub use report::{Report, ReportAction, ReportSkip, TEXT_ACTIONS, WriteBackReport, render_json, render_text};
pub use scope::{EVENT_RETENTION, EVENTS_CURSOR, EventCursor, OVERLAP, RunMode, Scope};

use crate::delivery::{DeliveryCounts, Queued, deliver_due, deliver_during};
use crate::domain::RunOutcome;
use crate::error::{Failure, usage};
use crate::mail::MailService;
use crate::plan::PlanConfig;
use crate::shutdown::Shutdown;
use crate::store::{Store, blocking};
use crate::stripe::StripeSource;
use progress::Progress;
use run::Run;

/// What every account's run of one `reconcile` shares (controller-rs's
/// `Context`): what to read, the rules' settings, the shutdown.
#[derive(Debug, Clone)]
pub struct Context {
    pub scope: Scope,
    /// Stop after the page in progress once this is shut down (SIGTERM/SIGINT).
    pub stop: Option<Shutdown>,
    /// Show a progress bar (a terminal is watching).
    pub progress: bool,
    pub dry_run: bool,
    pub allow_mode_mismatch: bool,
    pub plan: PlanConfig,
    /// Attempts before an undeliverable email is given up.
    pub mail_max_attempts: u32,
    /// `--report-actions`: the report keeps this many actions and counts the
    /// rest, so a run's memory does not grow with its actions.
    pub report_actions: usize,
    /// `--stripe-write-back`: issued keys are queued for their Stripe
    /// objects, and the queue is sent after the pages.
    pub write_back: bool,
}

/// One account to reconcile: its store (scoped to the account), its Stripe
/// client and its sender (none on a dry run).
pub struct Account<'a> {
    pub store: &'a Store,
    pub source: StripeSource,
    pub mail: Option<&'a MailService>,
}

/// Reconciles one account. The outcome's report says what happened, also
/// when the run failed part-way (`outcome: failed`, with the error); its
/// action, from [`error_policy`], what comes next.
pub async fn reconcile(account: Account<'_>, ctx: &Context) -> Outcome {
    match run_account(account.store, account.source, account.mail, ctx.clone()).await {
        Ok((report, result)) => Outcome::of(Some(report), result),
        Err(refused) => Outcome::of(None, Err(refused)),
    }
}

/// The run itself: `Err` when it was refused before it began (no report),
/// else its report and how it ended.
async fn run_account(
    store: &Store,
    source: StripeSource,
    mail: Option<&MailService>,
    options: Context,
) -> Result<(Report, Result<()>)> {
    let started = Instant::now();
    let now = Utc::now();
    let dry_run = options.dry_run;
    let _lock = if dry_run {
        None
    } else {
        let lock = store.try_lock_run()?;
        if lock.is_none() {
            return Err(Failure::Locked(
                "another licensync run holds the lock on this database; nothing was done".into(),
            )
            .into());
        }
        lock
    };
    // Every page write of this run checks it still holds the lock.
    let fenced;
    let store = match &_lock {
        Some(lock) => {
            fenced = store.fenced(lock);
            let abandoned = fenced.abandon_unfinished_runs()?;
            if abandoned > 0 {
                tracing::warn!(
                    runs = abandoned,
                    "earlier runs ended without finishing; recorded as failed"
                );
            }
            &fenced
        }
        None => store,
    };
    check_mode(store, source.livemode(), options.allow_mode_mismatch)?;
    let cursor = match store.cursor(EVENTS_CURSOR)? {
        Some((value, _)) => serde_json::from_str::<EventCursor>(&value).ok(),
        None => None,
    };
    let planned_mode = scope::planned_mode(options.scope, cursor.is_some());
    let run_id = if dry_run {
        None
    } else {
        Some(store.start_run(planned_mode, Some(source.livemode()))?)
    };
    let mut run = Run {
        store: store.clone(),
        source: Arc::new(source),
        plan: options.plan,
        dry_run,
        now,
        run_id,
        catalog: None,
        catalog_read: None,
        stop: options.stop.clone(),
        progress: Progress::new(options.progress),
        report: Report::new(planned_mode, dry_run, options.report_actions),
        taken_back: HashMap::new(),
        write_back: options.write_back,
        mail: None,
    };
    if options.write_back {
        run.report.stripe_writes = Some(WriteBackReport::default());
    }
    // Emails go out while the run goes on, each page's as it commits (the
    // `none` backend sends nothing, so its pass waits for the run's end).
    let mailing = match (mail, dry_run) {
        (Some(mail), false) if mail.sends() => Some(Mailing::start(store, mail, options.mail_max_attempts)),
        _ => None,
    };
    run.mail = mailing.as_ref().map(|m| m.queued.clone());
    let outcome = run.execute(scope::choose(options.scope, cursor, now)).await;
    run.progress.bar.finish_and_clear();
    let mut report = run.report;
    // Once at the end: per page, this set difference would make a full run quadratic.
    report.count_unchanged();
    let outcome = match outcome {
        Ok((mode, new_cursor)) => {
            report.mode = mode;
            // A run that lost its lock (a database restart) may have
            // overlapped another: it neither moves the cursor nor succeeds.
            store.check_fence().and_then(|()| match (new_cursor, dry_run) {
                (Some(c), false) => store.set_cursor(EVENTS_CURSOR, &serde_json::to_string(&c)?),
                _ => Ok(()),
            })
        }
        Err(e) => Err(e),
    };
    report.run_id = run_id.map(|id| id.to_string());
    if let Some(writes) = &mut report.stripe_writes {
        // Before the request count: the writes are this run's requests too.
        send_write_backs(store, &run.source, dry_run, options.report_actions, writes).await;
    }
    report.stripe_requests = run.source.requests();
    report.stripe_rate_limited = run.source.rate_limited();
    report.duration_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = &outcome {
        report.outcome = RunOutcome::Failed;
        report.error = Some(crate::secret::redact(&format!("{e:#}")));
    }
    // The emails of the last pages; one that fails stays pending for the
    // next run and never fails this one.
    let sent = match (mailing, mail) {
        (Some(mailing), _) => Some(mailing.finish().await),
        (None, Some(mail)) if !dry_run => Some(deliver_due(store, mail, options.mail_max_attempts, Utc::now()).await),
        _ => None,
    };
    if let Some(sent) = sent {
        match sent {
            Ok(sent) => report.emails_sent = sent.sent,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not deliver license emails; the next run retries")
            }
        }
    }
    if let Some(id) = run_id {
        let counts = serde_json::to_value(&report.counts)?;
        store.finish_run(
            id,
            outcome.is_ok(),
            &counts,
            report.stripe_requests,
            report.emails_sent as i32,
            report.mode,
            report.note.as_deref(),
            report.error.as_deref(),
        )?;
    }
    Ok((report, outcome))
}

/// The sender beside a run (`delivery::deliver_during`), in its own task.
struct Mailing {
    queued: Queued,
    task: tokio::task::JoinHandle<Result<DeliveryCounts>>,
}

impl Mailing {
    fn start(store: &Store, mail: &MailService, max_attempts: u32) -> Mailing {
        let queued = Queued::default();
        let (store, mail, wake) = (store.clone(), mail.clone(), queued.clone());
        let task = tokio::spawn(async move { deliver_during(&store, &mail, max_attempts, Utc::now(), &wake).await });
        Mailing { queued, task }
    }

    /// Sends what the run's last pages queued and returns what the whole
    /// run sent.
    async fn finish(mut self) -> Result<DeliveryCounts> {
        self.queued.over();
        (&mut self.task).await.context("the email sender stopped")?
    }
}

impl Drop for Mailing {
    /// A run given up before its end (its future dropped) still lets its
    /// sender finish instead of leaving it waiting for pages.
    fn drop(&mut self) {
        self.queued.over();
    }
}

/// Sends the write-back queue after the pages committed (a dry run lists
/// what it would send). A failure is logged and left for the next run:
/// write-back never fails a run. A run that lost its lock writes nothing.
async fn send_write_backs(
    store: &Store,
    source: &StripeSource,
    dry_run: bool,
    limit: usize,
    writes: &mut WriteBackReport,
) {
    let result = if dry_run {
        let list_store = store.clone();
        blocking(move || crate::write_back::planned_writes(&list_store, limit))
            .await
            .map(|mut queued| {
                queued.append(&mut writes.planned);
                queued.truncate(limit);
                writes.planned = queued;
            })
    } else if store.check_fence().is_ok() {
        crate::write_back::write_back_due(store, source)
            .await
            .map(|pass| writes.pass = pass)
    } else {
        Ok(())
    };
    if let Err(e) = result {
        let doing = if dry_run { "list" } else { "send" };
        tracing::warn!(error = %format!("{e:#}"), "could not {doing} the write-back queue; the next run tries again");
    }
    let count_store = store.clone();
    match blocking(move || count_store.stripe_write_counts()).await {
        Ok(counts) => writes.pending = counts.pending,
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not count the write-back queue"),
    }
}

/// Test and live mode never mix (licensing-rules §5).
fn check_mode(store: &Store, livemode: bool, allowed: bool) -> Result<()> {
    let stored = store.stored_modes()?;
    if allowed || stored.iter().all(|&m| m == livemode) {
        return Ok(());
    }
    let (key, db) = if livemode { ("live", "test") } else { ("test", "live") };
    Err(usage(anyhow!(ModeMismatch { key, db })))
}

/// A run refused by [`check_mode`] (exit 2); typed so that the refusal can
/// still be reported in the metrics file.
#[derive(Debug, thiserror::Error)]
#[error(
    "the Stripe key is a {key}-mode key but the database holds {db}-mode licenses; refusing to mix them. \
     Use the matching key or database, or pass --allow-mode-mismatch if this is really intended"
)]
pub struct ModeMismatch {
    key: &'static str,
    db: &'static str,
}
