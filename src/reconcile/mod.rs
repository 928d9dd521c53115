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
//! streams each list's pages, `stage` plans and applies a page, `report`
//! keeps what the run did. This file runs the phases: take the run lock,
//! read refunds and disputes, then every purchase list at once, sweep what
//! the clock expired, record the run, then send the emails.
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
//!   subscription renewals are not) and retrieves only the invoices whose
//!   items have such a price, instead of paging every renewal invoice;
//!   Stripe's invoice list cannot filter by `billing_reason` and its search
//!   cannot say "no subscription". A `--since` window older than the event
//!   retention still pages the paid invoices created in the window (an
//!   item can be created long before its invoice).
//! - Sessions are read before invoices (the invoices they created are
//!   theirs); subscriptions are read alongside both.
//! - A run stopped by a signal stops applying at once; pages read ahead but
//!   not applied are read again by the next run.

pub mod fleet;
mod read;
mod report;
mod routing;
mod scope;
mod segments;
mod stage;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use chrono::Utc;
use futures::stream::{self, Stream, StreamExt};

pub use report::{Report, ReportAction, ReportSkip, TEXT_ACTIONS, render_json, render_text};
pub use scope::{EVENT_RETENTION, EVENTS_CURSOR, EventCursor, OVERLAP, RunMode, Scope};

use crate::catalog::Catalog;
use crate::delivery::deliver_due;
use crate::domain::{GrantFact, PaymentReversal, ReversalKind, RunOutcome, Timestamp};
use crate::error::{Failure, usage};
use crate::mail::MailService;
use crate::plan::PlanConfig;
use crate::shutdown::Shutdown;
use crate::store::{Store, blocking};
use crate::stripe::{CreatedRange, EventFact, GrantPage, StripeError, StripeSource};
use read::{AHEAD, Ahead, WIDTH};
use scope::{Choice, Reading};
use segments::Segment;
use stage::{PageContext, Slice, Staged, plan_and_apply};

/// Objects re-fetched (events, one-off invoices) per planned page.
const REFETCH_BATCH: usize = 50;
/// How often a run logs its progress.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct RunOptions {
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
}

/// Raised when SIGTERM/SIGINT asked the run to stop between pages.
#[derive(Debug, thiserror::Error)]
#[error("stopped by a signal after the page in progress; committed pages stay, the next run converges")]
pub struct Interrupted;

/// Purchase pages as the pipeline carries them.
type Pages = Pin<Box<dyn Stream<Item = Result<GrantPage>> + Send>>;

/// The progress line: objects read, objects/s, and the time left when the
/// lists' sizes are estimated (`None` before any estimate).
fn progress_line(
    objects: u64,
    elapsed: Duration,
    estimate: u64,
    requests: u64,
    changes: u64,
) -> (String, Option<Duration>) {
    let rate = objects as f64 / elapsed.as_secs_f64().max(0.001);
    let eta =
        (estimate > objects && rate > 0.0).then(|| Duration::from_secs(((estimate - objects) as f64 / rate) as u64));
    let left = eta
        .map(|d| format!(", about {} left", humantime::format_duration(d)))
        .unwrap_or_default();
    (
        format!("{objects} objects, {rate:.0}/s, {requests} Stripe requests, {changes} changes{left}"),
        eta,
    )
}

/// Progress on a terminal (a spinner) and in the log (every
/// [`PROGRESS_LOG_EVERY`]).
struct Progress {
    bar: indicatif::ProgressBar,
    started: Instant,
    last_log: Instant,
    objects: u64,
    changes: u64,
    /// Objects the lists read so far are estimated to hold.
    estimate: Arc<AtomicU64>,
}

impl Progress {
    fn new(terminal: bool) -> Progress {
        let bar = if terminal {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .expect("progress template is valid"),
            );
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        Progress {
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
            objects: 0,
            changes: 0,
            estimate: Arc::new(AtomicU64::new(0)),
        }
    }

    fn advance(&mut self, objects: usize, changes: usize, requests: u64) {
        self.objects += objects as u64;
        self.changes += changes as u64;
        let estimate = self.estimate.load(Ordering::Relaxed);
        let (line, eta) = progress_line(self.objects, self.started.elapsed(), estimate, requests, self.changes);
        if self.last_log.elapsed() >= PROGRESS_LOG_EVERY {
            self.last_log = Instant::now();
            tracing::info!(
                objects = self.objects,
                estimated_objects = estimate,
                eta_s = eta.map(|d| d.as_secs()),
                stripe_requests = requests,
                "reconcile progress: {line}"
            );
        }
        self.bar.set_message(line);
        self.bar.tick();
    }
}

/// A reconcile run in progress.
struct Run {
    store: Store,
    source: Arc<StripeSource>,
    plan: PlanConfig,
    dry_run: bool,
    now: Timestamp,
    run_id: Option<i64>,
    /// Read on first use: a run with nothing to re-plan never pays for it.
    catalog: Option<Arc<Catalog>>,
    stop: Option<Shutdown>,
    progress: Progress,
    report: Report,
    /// Payments taken back in full (full refunds, lost disputes) by payment
    /// intent, as read by [`Run::reversals`]: every later page of the
    /// run plans its one-time grants with them, so a purchase refunded
    /// before licensync first saw it issues nothing instead of a key that
    /// is mailed and revoked in the same run.
    taken_back: HashMap<String, PaymentReversal>,
}

impl Run {
    fn check_stop(&self) -> Result<()> {
        match &self.stop {
            Some(stop) if stop.is_shutdown() => Err(Interrupted.into()),
            _ => Ok(()),
        }
    }

    async fn catalog(&mut self) -> Result<Arc<Catalog>> {
        if let Some(catalog) = &self.catalog {
            return Ok(catalog.clone());
        }
        let (products, prices) = self.source.catalog().await.context("reading the product catalog")?;
        let catalog = Arc::new(Catalog::new(products, prices));
        self.catalog = Some(catalog.clone());
        Ok(catalog)
    }

    /// Plans and applies one slice; `objects` is how many Stripe objects
    /// it came from (for the progress line).
    async fn page(&mut self, mut slice: Slice, objects: usize) -> Result<()> {
        for grant in &slice.grants {
            if let GrantFact::OneTime(line) = grant
                && let Some(reversal) = line.payment_intent.as_ref().and_then(|pi| self.taken_back.get(pi))
                && !slice.reversals.contains(reversal)
            {
                slice.reversals.push(reversal.clone());
            }
        }
        let catalog = if slice.grants.is_empty() {
            Arc::new(Catalog::default())
        } else {
            self.catalog().await?
        };
        let ctx = PageContext {
            store: self.store.clone(),
            catalog,
            plan: self.plan,
            dry_run: self.dry_run,
            now: self.now,
            run_id: self.run_id,
        };
        let Staged {
            plan,
            applied,
            looked_at,
        } = blocking(move || plan_and_apply(&ctx, slice)).await?;
        self.report.record(&plan, applied.as_deref(), &looked_at);
        self.progress
            .advance(objects, plan.actions.len(), self.source.requests());
        Ok(())
    }

    /// Applies purchase pages as they arrive, read ahead of the planner.
    async fn apply_pages(&mut self, pages: Pages) -> Result<()> {
        let mut ahead = Ahead::new(pages, AHEAD);
        while let Some(page) = ahead.next().await {
            self.check_stop()?;
            let page = page?;
            let objects = page.span.listed.max(page.objects);
            let slice = Slice {
                grants: page.grants,
                complete_subscriptions: page.complete_subscriptions,
                ..Slice::default()
            };
            self.page(slice, objects).await?;
        }
        Ok(())
    }

    /// Refunds and disputes; see `taken_back`.
    async fn reversals(&mut self) -> Result<()> {
        let (refunds, disputes) = (self.source.clone(), self.source.clone());
        // Short lists, without a `created` filter here: one page at a time,
        // never split (no floor).
        let refunds = read::pages(CreatedRange::default(), None, 1, None, move |s: Segment| {
            let source = refunds.clone();
            async move { source.reversals_page(s.after.as_deref()).await }
        })
        .map(|r| r.context("reading refunds"));
        let disputes = read::pages(CreatedRange::default(), None, 1, None, move |s: Segment| {
            let source = disputes.clone();
            async move { source.disputes_page(s.after.as_deref()).await }
        })
        .map(|r| r.context("reading disputes"));
        let mut ahead = Ahead::new(stream::select(refunds, disputes), AHEAD);
        while let Some(page) = ahead.next().await {
            self.check_stop()?;
            let page = page?;
            for reversal in &page.items {
                if reversal.kind != ReversalKind::PartialRefund {
                    self.taken_back
                        .entry(reversal.payment_intent.clone())
                        .or_insert_with(|| reversal.clone());
                }
            }
            let slice = Slice {
                reversals: page.items,
                ..Slice::default()
            };
            self.page(slice, page.span.listed).await?;
        }
        Ok(())
    }

    /// Subscriptions in full; sessions and invoices created in `window`.
    /// Refunds and disputes first (see `taken_back`).
    async fn scan(&mut self, window: CreatedRange) -> Result<()> {
        self.reversals().await?;
        let catalog = self.catalog().await?;
        let pages = purchase_pages(self.source.clone(), window, &catalog, self.progress.estimate.clone());
        self.apply_pages(pages).await
    }

    /// Every relevant event created in `range`, de-duplicated by id and
    /// without the ids in `seen`, oldest first; and every event listed
    /// (seen or not) as `(created, id)`, from which the next cursor keeps
    /// those inside its overlap window.
    async fn events(
        &mut self,
        range: CreatedRange,
        seen: &HashSet<String>,
    ) -> Result<(Vec<EventFact>, Vec<(Timestamp, String)>)> {
        let source = self.source.clone();
        let floor = range.gte.map(|t| t.timestamp());
        let pages = read::pages(range, floor, WIDTH, None, move |s: Segment| {
            let source = source.clone();
            async move { source.events_in(&s.range(), s.after.as_deref()).await }
        });
        let mut ahead = Ahead::new(pages, AHEAD);
        let mut events = Vec::new();
        let mut listed = Vec::new();
        let mut ids = HashSet::new();
        while let Some(page) = ahead.next().await {
            self.check_stop()?;
            for e in page.context("reading Stripe events")?.items {
                if !ids.insert(e.id.clone()) {
                    continue;
                }
                listed.push((e.created, e.id.clone()));
                if !seen.contains(&e.id) {
                    events.push(e);
                }
            }
        }
        events.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok((events, listed))
    }

    /// Re-fetches the objects the events name and reconciles those.
    /// Returns `false` when an event asks for a full scan instead.
    async fn replay(&mut self, events: &[EventFact]) -> Result<bool> {
        let triggers = routing::route(events);
        if triggers.full_scan {
            return Ok(false);
        }
        // Before the purchases: a purchase refunded since the last run must
        // not be issued (and mailed) only to be revoked.
        if triggers.reversals {
            self.reversals().await?;
        }
        self.apply_pages(refetch_pages(self.source.clone(), triggers)).await?;
        Ok(true)
    }

    /// Expires active licenses whose time ran out and that no Stripe page
    /// touched (e.g. a 30-day one-time license on day 31).
    async fn clock_sweep(&mut self) -> Result<()> {
        const BATCH: i64 = 500;
        let mut after_id = 0;
        loop {
            self.check_stop()?;
            let (store, now) = (self.store.clone(), self.now);
            let due = blocking(move || store.licenses_expired_by_clock(now, after_id, BATCH)).await?;
            let Some(last) = due.last() else { return Ok(()) };
            after_id = last.id;
            let full = due.len() as i64 == BATCH;
            self.page(
                Slice {
                    extra: due,
                    ..Slice::default()
                },
                0,
            )
            .await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// A full scan, then the clock; the cursor starts at the run's start.
    async fn full(&mut self) -> Result<(RunMode, Option<EventCursor>)> {
        self.scan(CreatedRange::default()).await?;
        self.clock_sweep().await?;
        // The scan read every object after the events created before it
        // started: those count as handled, so the next run does not replay
        // them (a product change would otherwise mean another full scan
        // within the overlap window).
        // Stripe's `created` has whole seconds: the run's own second is in
        // (events of it may predate the run, and the cursor starts there).
        let window = CreatedRange {
            gte: Some(self.now - OVERLAP),
            lt: chrono::DateTime::from_timestamp(self.now.timestamp() + 1, 0),
        };
        let (_, listed) = self.events(window, &HashSet::new()).await?;
        Ok((RunMode::Full, Some(scope::next_cursor(self.now, &listed))))
    }

    /// Reads what `choice` says; returns the mode actually run and the
    /// cursor to store when the run succeeds.
    async fn execute(&mut self, choice: Choice) -> Result<(RunMode, Option<EventCursor>)> {
        if let Some(note) = choice.note {
            tracing::info!("{note}");
            self.report.note = Some(note);
        }
        match choice.reading {
            Reading::Full => self.full().await,
            Reading::Incremental { from, seen } => {
                let range = CreatedRange {
                    gte: Some(from),
                    lt: None,
                };
                let (events, listed) = self.events(range, &seen).await?;
                if !self.replay(&events).await? {
                    self.report.note = Some("a product or price changed: full scan".into());
                    return self.full().await;
                }
                self.clock_sweep().await?;
                Ok((RunMode::Incremental, Some(scope::next_cursor(self.now, &listed))))
            }
            Reading::WindowEvents { since, until } => {
                let range = CreatedRange {
                    gte: Some(since),
                    lt: until,
                };
                let (events, _) = self.events(range, &HashSet::new()).await?;
                if !self.replay(&events).await? {
                    self.report.note = Some("a product or price changed in the window: full scan".into());
                    self.scan(CreatedRange::default()).await?;
                }
                self.clock_sweep().await?;
                Ok((RunMode::Since, None))
            }
            Reading::WindowScan { range } => {
                self.scan(range).await?;
                self.clock_sweep().await?;
                Ok((RunMode::Since, None))
            }
        }
    }
}

/// Every purchase list a scan reads, merged into one stream of pages:
/// subscriptions (all of them) alongside the Checkout Sessions created in
/// `window` and, once those are read, the one-off invoices.
fn purchase_pages(
    source: Arc<StripeSource>,
    window: CreatedRange,
    catalog: &Catalog,
    estimate: Arc<AtomicU64>,
) -> Pages {
    let floor = catalog.oldest_price();
    let subscriptions = {
        let source = source.clone();
        read::pages(
            CreatedRange::default(),
            floor,
            WIDTH,
            Some(estimate.clone()),
            move |s: Segment| {
                let source = source.clone();
                async move { source.subscriptions_page(s.after.as_deref(), &s.range()).await }
            },
        )
        .map(|r| r.context("reading subscriptions"))
    };
    let one_time = catalog.one_time_prices_that_grant();
    if one_time.is_empty() {
        tracing::info!(
            "no one-time price of a licensed product: Checkout Sessions and one-off invoices cannot grant and are not read"
        );
        return subscriptions.boxed();
    }
    let session_invoices: Arc<Mutex<HashSet<String>>> = Arc::default();
    let sessions = {
        let source = source.clone();
        let session_invoices = session_invoices.clone();
        read::pages(window, floor, WIDTH, Some(estimate.clone()), move |s: Segment| {
            let source = source.clone();
            async move { source.checkout_sessions_page(s.after.as_deref(), &s.range()).await }
        })
        .map(move |r| {
            let page = r.context("reading checkout sessions")?;
            session_invoices
                .lock()
                .expect("session invoices lock")
                .extend(page.session_invoices.iter().cloned());
            Ok(page)
        })
    };
    // Built once the sessions are read: it needs their invoices.
    let invoices =
        stream::once(async move { one_off_invoice_pages(source, window, floor, one_time, session_invoices, estimate) })
            .flatten();
    stream::select(subscriptions, sessions.chain(invoices)).boxed()
}

/// The one-off invoices that can grant (see the module's "Read only what
/// can grant"), without those Checkout Sessions created.
fn one_off_invoice_pages(
    source: Arc<StripeSource>,
    window: CreatedRange,
    floor: Option<i64>,
    one_time: BTreeSet<String>,
    session_invoices: Arc<Mutex<HashSet<String>>>,
    estimate: Arc<AtomicU64>,
) -> Pages {
    if window != CreatedRange::default() {
        return read::pages(window, floor, WIDTH, Some(estimate), move |s: Segment| {
            let source = source.clone();
            async move { source.invoices_page(s.after.as_deref(), &s.range()).await }
        })
        .map(move |r| {
            let mut page = r.context("reading invoices")?;
            let skip = session_invoices.lock().expect("session invoices lock");
            page.grants.retain(|g| !skip.contains(purchase_of(g)));
            Ok(page)
        })
        .boxed();
    }
    let items = {
        let source = source.clone();
        read::pages(window, floor, WIDTH, Some(estimate), move |s: Segment| {
            let source = source.clone();
            async move { source.invoice_items_page(s.after.as_deref(), &s.range()).await }
        })
    };
    // Invoices already taken: an invoice of several items counts once, even
    // when its items stand on different pages.
    let mut wanted = HashSet::new();
    items
        .flat_map(move |r| {
            // Each invoice that can grant: read already (expanded with its
            // items), or its id when Stripe did not expand it.
            let invoices: Vec<Result<Result<GrantPage, String>>> = match r {
                Err(e) => vec![Err(anyhow::Error::new(e).context("reading invoice items"))],
                Ok(mut page) => {
                    let skip = session_invoices.lock().expect("session invoices lock");
                    let ids: Vec<String> = page
                        .items
                        .items
                        .into_iter()
                        .filter(|i| !i.of_subscription && i.price.as_ref().is_some_and(|p| one_time.contains(p)))
                        .filter_map(|i| i.invoice)
                        .filter(|id| !skip.contains(id) && wanted.insert(id.clone()))
                        .collect();
                    ids.into_iter()
                        .map(|id| Ok(page.invoices.remove(&id).ok_or(id)))
                        .collect()
                }
            };
            stream::iter(invoices)
        })
        .map(move |invoice| {
            let source = source.clone();
            async move {
                match invoice? {
                    Ok(read) => Ok(Some(read)),
                    Err(id) => {
                        let page = source
                            .one_off_invoice(&id)
                            .await
                            .with_context(|| format!("reading invoice {id}"))?;
                        Ok(Some(page))
                    }
                }
            }
        })
        .buffer_unordered(WIDTH)
        .ready_chunks(REFETCH_BATCH)
        .map(merge_pages)
        .boxed()
}

/// The purchase a grant belongs to (`cs_...`/`in_...` before the `/`).
fn purchase_of(grant: &GrantFact) -> &str {
    match grant {
        GrantFact::OneTime(line) => &line.purchase_id,
        GrantFact::Subscription(item) => &item.subscription_id,
    }
}

/// Objects the events name, re-fetched side by side and merged into pages
/// of up to [`REFETCH_BATCH`]. An object Stripe no longer has (404) has
/// nothing left to reconcile.
fn refetch_pages(source: Arc<StripeSource>, triggers: routing::Triggers) -> Pages {
    #[derive(Clone, Copy)]
    enum Kind {
        Subscription,
        Session,
        Invoice,
    }
    let ids = (triggers.subscriptions.into_iter().map(|id| (Kind::Subscription, id)))
        .chain(triggers.sessions.into_iter().map(|id| (Kind::Session, id)))
        .chain(triggers.invoices.into_iter().map(|id| (Kind::Invoice, id)));
    stream::iter(ids)
        .map(move |(kind, id)| {
            let source = source.clone();
            async move {
                let page = match kind {
                    Kind::Subscription => source.subscription(&id).await,
                    Kind::Session => source.checkout_session(&id).await,
                    Kind::Invoice => source.invoice(&id).await,
                };
                match page {
                    Ok(page) => Ok(Some(page)),
                    Err(StripeError::Api { status: 404, .. }) => {
                        tracing::warn!(object = %id, "an event names an object Stripe no longer has; nothing to reconcile");
                        Ok(None)
                    }
                    Err(e) => Err(anyhow::Error::new(e).context(format!("re-fetching {id}"))),
                }
            }
        })
        .buffer_unordered(WIDTH)
        .ready_chunks(REFETCH_BATCH)
        .map(merge_pages)
        .boxed()
}

/// One page of objects fetched one by one; the first error wins.
fn merge_pages(pages: Vec<Result<Option<GrantPage>>>) -> Result<GrantPage> {
    let mut merged = GrantPage::default();
    for page in pages {
        let Some(page) = page? else { continue };
        merged.grants.extend(page.grants);
        merged.complete_subscriptions.extend(page.complete_subscriptions);
        merged.objects += page.objects;
    }
    Ok(merged)
}

/// Runs one reconcile; the report says what happened, also when it failed
/// part-way (`outcome: failed`, with the error), in which case the error is
/// returned too so the exit code is 1.
pub async fn reconcile(
    store: &Store,
    source: StripeSource,
    mail: Option<&MailService>,
    options: RunOptions,
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
        stop: options.stop.clone(),
        progress: Progress::new(options.progress),
        report: Report::new(planned_mode, dry_run, options.report_actions),
        taken_back: HashMap::new(),
    };
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
    report.stripe_requests = run.source.requests();
    report.stripe_rate_limited = run.source.rate_limited();
    report.duration_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = &outcome {
        report.outcome = RunOutcome::Failed;
        report.error = Some(crate::secret::redact(&format!("{e:#}")));
    }
    // Sending happens after the pages committed; an email that fails stays
    // pending for the next run and never fails this one.
    if let (Some(mail), false) = (mail, dry_run) {
        match deliver_due(store, mail, options.mail_max_attempts, Utc::now()).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_table() {
        let s = Duration::from_secs;
        // (objects, elapsed, estimate, expected line, expected eta)
        let cases = [
            (0, s(1), 0, "0 objects, 0/s, 7 Stripe requests, 3 changes", None),
            (
                5_000,
                s(2),
                0,
                "5000 objects, 2500/s, 7 Stripe requests, 3 changes",
                None,
            ),
            (
                5_000,
                s(2),
                20_000,
                "5000 objects, 2500/s, 7 Stripe requests, 3 changes, about 6s left",
                Some(s(6)),
            ),
            (
                20_000,
                s(8),
                10_000,
                "20000 objects, 2500/s, 7 Stripe requests, 3 changes",
                None,
            ),
        ];
        for (objects, elapsed, estimate, line, eta) in cases {
            assert_eq!(progress_line(objects, elapsed, estimate, 7, 3), (line.to_owned(), eta));
        }
    }
}
