//! One reconcile run (licensing-rules §7): take the run lock, read Stripe
//! page by page through the adapter, plan each page against the licenses it
//! can touch, apply it in one transaction, sweep what the clock expired, and
//! record the run. Memory stays bounded by a page; a run that fails part-way
//! leaves every committed page consistent and the next run converges.
//!
//! Three scopes: a full scan; an incremental run that reads the Events API
//! from the stored cursor and re-fetches only the objects events name (an
//! event is a trigger, never a source of truth); and a `--since` backfill of
//! a window. Choices where the rules are silent:
//! - the cursor is `{"created": <unix s>, "seen": [event ids]}`: the run's
//!   start time and the events already handled inside the overlap window, so
//!   an event that arrives late for its second is handled once, not twice;
//! - a product or price event makes the run a full scan: any license of that
//!   product may change, and licenses do not record their Stripe product;
//! - a refund or dispute event re-reads the refund and dispute lists (short
//!   lists, and the only way to learn the payment intent they belong to);
//! - `customer.updated` is not acted on: the email of an existing license is
//!   refreshed by the next full run or the next event of its purchase.
//! - refunds and disputes are read before the purchases (full scans, and
//!   incremental runs with a charge event), and the payments taken back in
//!   full are kept for the rest of the run, so a purchase refunded before
//!   licensync first saw it issues nothing rather than a key mailed and
//!   revoked in one run. That map grows with the account's full refunds and
//!   lost disputes, a small share of its purchases.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::apply::{Applied, apply_page};
use crate::catalog::Catalog;
use crate::delivery::deliver_due;
use crate::domain::{ActionKind, GrantFact, License, PaymentReversal, ReversalKind, Timestamp};
use crate::error::{Failure, usage};
use crate::mail::MailService;
use crate::plan::{Action, Facts, Held, Plan, PlanConfig, plan};
use crate::store::{Store, blocking};
use crate::stripe::{CreatedRange, EventFact, GrantPage, StripeError, StripeSource};

/// How much of Stripe a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Incremental from the event cursor when it is fresh, else full.
    Auto,
    /// Every subscription, completed payment-mode session and paid invoice.
    Full,
    /// Everything that changed in a window (backfill after an outage).
    Since { since: Timestamp, until: Option<Timestamp> },
}

/// Name of the Events API cursor in `sync_state`.
pub const EVENTS_CURSOR: &str = "events";
/// Events of one second can be listed late: every incremental run re-reads
/// this much before its cursor and skips the event ids it already handled.
pub const OVERLAP: chrono::Duration = chrono::Duration::minutes(5);
/// Stripe keeps events 30 days; past 25 the cursor is too old to trust.
pub const EVENT_RETENTION: chrono::Duration = chrono::Duration::days(25);
/// Objects re-fetched per planned page in incremental and backfill runs.
const REFETCH_BATCH: usize = 50;

/// The stored Events API cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EventCursor {
    /// Unix seconds: events created at or after `created - OVERLAP` are read next time.
    pub created: i64,
    /// Events already handled with `created >= self.created - OVERLAP`.
    pub seen: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scope: Scope,
    /// Set to `true` (SIGTERM/SIGINT) to stop after the page in progress.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
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

/// One entry of the report's `actions` (cli.md JSON shape).
#[derive(Debug, Clone, Serialize)]
pub struct ReportAction {
    pub action: ActionKind,
    pub source_kind: &'static str,
    pub source_id: String,
    pub license_key: Option<String>,
    pub before: Map<String, Value>,
    pub after: Map<String, Value>,
    pub stripe_object: String,
    /// Where an operator override kept a value Stripe asked to change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportSkip {
    pub stripe_object: String,
    pub reason: String,
}

/// The run report (`reconcile --output json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: Option<String>,
    pub mode: &'static str,
    pub dry_run: bool,
    pub outcome: &'static str,
    pub counts: BTreeMap<&'static str, usize>,
    pub skipped: Vec<ReportSkip>,
    /// The first `--report-actions` actions; every action is in the ledger.
    pub actions: Vec<ReportAction>,
    /// Actions past `--report-actions`, counted but not listed.
    pub actions_omitted: usize,
    pub stripe_requests: u64,
    /// Of `stripe_requests`, those Stripe answered 429 (rate limited).
    pub stripe_rate_limited: u64,
    /// License emails this run queued for customers with an address (a dry
    /// run: would queue). Sent after the commit, so `emails_sent` also
    /// counts retries of earlier runs.
    pub emails_to_send: usize,
    /// Licenses issued without an email because their purchase predates
    /// `--mail-since` (outbox rows `skipped`, sendable by `mail resend`).
    pub emails_skipped: usize,
    pub emails_sent: usize,
    pub duration_ms: u64,
    /// Why the run read what it read (e.g. "no event cursor: full scan").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Licenses some page looked at, and those some page changed: a license
    /// can be in several pages of one run (its purchase's page, then the
    /// refunds page), and `unchanged` counts it once, only if no page changed it.
    #[serde(skip)]
    seen: HashSet<i64>,
    #[serde(skip)]
    changed: HashSet<i64>,
    #[serde(skip)]
    action_limit: usize,
}

impl Report {
    fn new(mode: &'static str, dry_run: bool, action_limit: usize) -> Report {
        let counts = ActionKind::ALL
            .iter()
            .map(|k| (k.count_key(), 0))
            .chain([("unchanged", 0), ("skipped", 0)])
            .collect();
        Report {
            run_id: None,
            mode,
            dry_run,
            outcome: "succeeded",
            counts,
            skipped: Vec::new(),
            actions: Vec::new(),
            actions_omitted: 0,
            stripe_requests: 0,
            stripe_rate_limited: 0,
            emails_to_send: 0,
            emails_skipped: 0,
            emails_sent: 0,
            duration_ms: 0,
            note: None,
            error: None,
            seen: HashSet::new(),
            changed: HashSet::new(),
            action_limit,
        }
    }

    fn record(&mut self, plan: &Plan, applied: Option<&[Applied]>, looked_at: &[i64]) {
        for (key, n) in plan.counts() {
            if key != "unchanged" {
                *self.counts.entry(key).or_default() += n;
            }
        }
        self.seen.extend(looked_at);
        let (mailed, silent) = plan.emails();
        self.emails_to_send += mailed;
        self.emails_skipped += silent;
        for s in &plan.skipped {
            self.skipped.push(ReportSkip {
                stripe_object: s.stripe_object.clone(),
                reason: s.reason.clone(),
            });
        }
        for (i, action) in plan.actions.iter().enumerate() {
            let key = applied
                .map(|a| a[i].license_key.clone())
                .or_else(|| action.license_key.clone());
            if let Some(id) = applied.map(|a| a[i].license_id).or(action.license_id) {
                self.changed.insert(id);
            }
            if self.actions.len() < self.action_limit {
                self.actions.push(report_action(action, key));
            } else {
                self.actions_omitted += 1;
            }
        }
    }
}

fn report_action(action: &Action, license_key: Option<String>) -> ReportAction {
    let mut before = Map::new();
    let mut after = Map::new();
    for change in action.changes() {
        if let Some(b) = change.before {
            before.insert(change.field.clone(), b);
        }
        after.insert(change.field, change.after);
    }
    ReportAction {
        action: action.kind,
        source_kind: action.grant.source_kind.as_str(),
        source_id: action.grant.source_id.clone(),
        license_key,
        before,
        after,
        stripe_object: action.cause.clone(),
        held: action.held.clone(),
    }
}

/// What every page needs, shared with the blocking database work.
struct PageContext {
    store: Store,
    catalog: Arc<Catalog>,
    plan: PlanConfig,
    dry_run: bool,
    now: Timestamp,
    run_id: Option<i64>,
}

/// Plans one slice of facts against the licenses it can touch and, unless
/// dry, applies it in one transaction.
fn plan_and_apply(
    ctx: &PageContext,
    grants: &[GrantFact],
    complete_subscriptions: &[String],
    reversals: &[PaymentReversal],
    extra: Vec<License>,
) -> Result<(Plan, Option<Vec<Applied>>, Vec<i64>)> {
    let source_ids: Vec<String> = grants.iter().map(|g| g.key().source_id).collect();
    let payment_intents: Vec<String> = reversals.iter().map(|r| r.payment_intent.clone()).collect();
    let mut current = ctx
        .store
        .licenses_for(&source_ids, complete_subscriptions, &payment_intents)?;
    let known: HashSet<i64> = current.iter().map(|l| l.id).collect();
    current.extend(extra.into_iter().filter(|l| !known.contains(&l.id)));
    let facts = Facts {
        catalog: &ctx.catalog,
        grants,
        reversals,
        complete_subscriptions,
    };
    let mut plan = plan(&facts, &current, &ctx.plan, ctx.now);
    let looked_at: Vec<i64> = current.iter().map(|l| l.id).collect();
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    if ctx.dry_run || plan.actions.is_empty() {
        return Ok((plan, None, looked_at));
    }
    // Actions an operator overtook (see `apply_page`) did not happen: the
    // report and the counts leave them out.
    let (actions, applied): (Vec<Action>, Vec<Applied>) = plan
        .actions
        .iter()
        .cloned()
        .zip(apply_page(&ctx.store, ctx.run_id, &plan.actions)?)
        .filter_map(|(action, applied)| applied.map(|a| (action, a)))
        .unzip();
    plan.actions = actions;
    Ok((plan, Some(applied), looked_at))
}

/// Raised when SIGTERM/SIGINT asked the run to stop between pages.
#[derive(Debug, thiserror::Error)]
#[error("stopped by a signal after the page in progress; committed pages stay, the next run converges")]
pub struct Interrupted;

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
    stop: Option<tokio::sync::watch::Receiver<bool>>,
    progress: indicatif::ProgressBar,
    objects: usize,
    report: Report,
    /// Payments taken back in full (full refunds, lost disputes) by payment
    /// intent, as read by [`Run::reversal_pages`]: every later page of the
    /// run plans its one-time grants with them, so a purchase refunded
    /// before licensync first saw it issues nothing instead of a key that
    /// is mailed and revoked in the same run.
    taken_back: HashMap<String, PaymentReversal>,
}

impl Run {
    fn check_stop(&self) -> Result<()> {
        match &self.stop {
            Some(stop) if *stop.borrow() => Err(Interrupted.into()),
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

    async fn page(
        &mut self,
        grants: Vec<GrantFact>,
        complete_subscriptions: Vec<String>,
        reversals: Vec<PaymentReversal>,
        extra: Vec<License>,
    ) -> Result<()> {
        let mut reversals = reversals;
        for grant in &grants {
            if let GrantFact::OneTime(line) = grant
                && let Some(reversal) = line.payment_intent.as_ref().and_then(|pi| self.taken_back.get(pi))
                && !reversals.contains(reversal)
            {
                reversals.push(reversal.clone());
            }
        }
        let catalog = if grants.is_empty() {
            Arc::new(Catalog::default())
        } else {
            self.catalog().await?
        };
        self.objects += grants.len() + reversals.len() + extra.len();
        let ctx = PageContext {
            store: self.store.clone(),
            catalog,
            plan: self.plan,
            dry_run: self.dry_run,
            now: self.now,
            run_id: self.run_id,
        };
        let (plan, applied, looked_at) =
            blocking(move || plan_and_apply(&ctx, &grants, &complete_subscriptions, &reversals, extra)).await?;
        self.report.record(&plan, applied.as_deref(), &looked_at);
        self.progress.set_message(format!(
            "{} objects, {} Stripe requests, {} changes",
            self.objects,
            self.source.requests(),
            self.report.actions.len()
        ));
        self.progress.tick();
        Ok(())
    }

    async fn grant_pages<F, Fut>(
        &mut self,
        what: &str,
        mut fetch: F,
        skip_invoices: Option<&HashSet<String>>,
    ) -> Result<Vec<String>>
    where
        F: FnMut(Arc<StripeSource>, Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<GrantPage, StripeError>>,
    {
        let mut after: Option<String> = None;
        let mut session_invoices = Vec::new();
        loop {
            self.check_stop()?;
            let page = fetch(self.source.clone(), after.clone())
                .await
                .with_context(|| format!("reading {what}"))?;
            let grants = without_session_invoices(page.grants, skip_invoices);
            session_invoices.extend(page.session_invoices);
            self.page(grants, page.complete_subscriptions, Vec::new(), Vec::new())
                .await?;
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(session_invoices),
            }
        }
    }

    /// Subscriptions in full; sessions and invoices created in `created`.
    /// Refunds and disputes first, so that the purchase pages know which
    /// payments were taken back (see `taken_back`).
    async fn scan(&mut self, created: CreatedRange) -> Result<()> {
        self.reversal_pages().await?;
        let all = CreatedRange::default();
        self.grant_pages(
            "subscriptions",
            |s, after| async move { s.subscriptions_page(after.as_deref(), &all).await },
            None,
        )
        .await?;
        let session_invoices: HashSet<String> = self
            .grant_pages(
                "checkout sessions",
                |s, after| async move { s.checkout_sessions_page(after.as_deref(), &created).await },
                None,
            )
            .await?
            .into_iter()
            .collect();
        self.grant_pages(
            "invoices",
            |s, after| async move { s.invoices_page(after.as_deref(), &created).await },
            Some(&session_invoices),
        )
        .await?;
        Ok(())
    }

    async fn reversal_pages(&mut self) -> Result<()> {
        for disputes in [false, true] {
            let mut after: Option<String> = None;
            loop {
                self.check_stop()?;
                let page = if disputes {
                    self.source
                        .disputes_page(after.as_deref())
                        .await
                        .context("reading disputes")?
                } else {
                    self.source
                        .reversals_page(after.as_deref())
                        .await
                        .context("reading refunds")?
                };
                for reversal in &page.items {
                    if reversal.kind != ReversalKind::PartialRefund {
                        self.taken_back
                            .entry(reversal.payment_intent.clone())
                            .or_insert_with(|| reversal.clone());
                    }
                }
                self.page(Vec::new(), Vec::new(), page.items, Vec::new()).await?;
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Every relevant event created in `[gte, until)`, de-duplicated by id
    /// and without the ids in `seen`, oldest first; and every event listed
    /// (seen or not) as `(created, id)`, from which the next cursor keeps
    /// those inside its overlap window, so `seen` never outgrows the window.
    async fn events(
        &mut self,
        gte: Timestamp,
        until: Option<Timestamp>,
        seen: &HashSet<String>,
    ) -> Result<(Vec<EventFact>, Vec<(Timestamp, String)>)> {
        let mut events = Vec::new();
        let mut listed = Vec::new();
        let mut ids = HashSet::new();
        let mut after: Option<String> = None;
        loop {
            self.check_stop()?;
            let page = self
                .source
                .events_page(gte, after.as_deref())
                .await
                .context("reading Stripe events")?;
            for e in page.items {
                if until.is_some_and(|u| e.created >= u) || !ids.insert(e.id.clone()) {
                    continue;
                }
                listed.push((e.created, e.id.clone()));
                if !seen.contains(&e.id) {
                    events.push(e);
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        events.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok((events, listed))
    }

    /// Re-fetches the objects the events name and reconciles those.
    /// Returns `false` when an event asks for a full scan instead.
    async fn replay(&mut self, events: &[EventFact]) -> Result<bool> {
        let mut subscriptions = BTreeSet::new();
        let mut sessions = BTreeSet::new();
        let mut invoices = BTreeSet::new();
        let mut reversals = false;
        for e in events {
            let kind = e.event_type.as_str();
            if kind.starts_with("product.") || kind.starts_with("price.") {
                return Ok(false);
            } else if kind.starts_with("customer.subscription.") {
                subscriptions.insert(e.object_id.clone());
            } else if kind.starts_with("checkout.session.") {
                sessions.insert(e.object_id.clone());
            } else if kind.starts_with("invoice.") {
                match &e.subscription {
                    Some(sub) => subscriptions.insert(sub.clone()),
                    None => invoices.insert(e.object_id.clone()),
                };
            } else if kind.starts_with("charge.") {
                reversals = true;
            }
        }
        // Before the purchases: a purchase refunded since the last run must
        // not be issued (and mailed) only to be revoked.
        if reversals {
            self.reversal_pages().await?;
        }
        let subscriptions: Vec<String> = subscriptions.into_iter().collect();
        for batch in subscriptions.chunks(REFETCH_BATCH) {
            let page = self
                .refetch(batch, |s, id| async move { s.subscription(&id).await })
                .await?;
            self.page(page.grants, page.complete_subscriptions, Vec::new(), Vec::new())
                .await?;
        }
        let sessions: Vec<String> = sessions.into_iter().collect();
        for batch in sessions.chunks(REFETCH_BATCH) {
            let page = self
                .refetch(batch, |s, id| async move { s.checkout_session(&id).await })
                .await?;
            self.page(page.grants, Vec::new(), Vec::new(), Vec::new()).await?;
        }
        let invoices: Vec<String> = invoices.into_iter().collect();
        for batch in invoices.chunks(REFETCH_BATCH) {
            let page = self.refetch(batch, |s, id| async move { s.invoice(&id).await }).await?;
            self.page(page.grants, Vec::new(), Vec::new(), Vec::new()).await?;
        }
        Ok(true)
    }

    /// Current state of a batch of objects, merged into one page. An object
    /// Stripe no longer has (404) has nothing left to reconcile.
    async fn refetch<F, Fut>(&mut self, ids: &[String], fetch: F) -> Result<GrantPage>
    where
        F: Fn(Arc<StripeSource>, String) -> Fut,
        Fut: std::future::Future<Output = Result<GrantPage, StripeError>>,
    {
        self.check_stop()?;
        let mut merged = GrantPage::default();
        for id in ids {
            match fetch(self.source.clone(), id.clone()).await {
                Ok(page) => {
                    merged.grants.extend(page.grants);
                    merged.complete_subscriptions.extend(page.complete_subscriptions);
                }
                Err(StripeError::Api { status: 404, .. }) => {
                    tracing::warn!(object = %id, "an event names an object Stripe no longer has; nothing to reconcile");
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("re-fetching {id}"))),
            }
        }
        Ok(merged)
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
            self.page(Vec::new(), Vec::new(), Vec::new(), due).await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Does what the scope asks; returns the mode actually run and the
    /// cursor to store when the run succeeds.
    async fn execute(
        &mut self,
        scope: Scope,
        cursor: Option<EventCursor>,
    ) -> Result<(&'static str, Option<EventCursor>)> {
        let start_cursor = EventCursor {
            created: self.now.timestamp(),
            seen: Vec::new(),
        };
        match scope {
            Scope::Full => {
                self.scan(CreatedRange::default()).await?;
                self.clock_sweep().await?;
                // The scan read every object after the events created before
                // it started: those count as handled, so the next run does not
                // replay them (a product change would otherwise mean another
                // full scan within the overlap window).
                let (_, window) = self.events(self.now - OVERLAP, Some(self.now), &HashSet::new()).await?;
                let seen = window.into_iter().map(|(_, id)| id).collect();
                Ok(("full", Some(EventCursor { seen, ..start_cursor })))
            }
            Scope::Auto => {
                let usable = cursor.filter(|c| self.now.timestamp() - c.created < EVENT_RETENTION.num_seconds());
                let Some(cursor) = usable else {
                    self.report.note = Some("no event cursor, or older than 25 days: full scan".into());
                    tracing::info!("no fresh event cursor: running a full scan");
                    return Box::pin(self.execute(Scope::Full, None)).await;
                };
                let from = DateTime::from_timestamp(cursor.created, 0).unwrap_or(self.now) - OVERLAP;
                let seen: HashSet<String> = cursor.seen.into_iter().collect();
                let (events, listed) = self.events(from, None, &seen).await?;
                if !self.replay(&events).await? {
                    self.report.note = Some("a product or price changed: full scan".into());
                    return Box::pin(self.execute(Scope::Full, None)).await;
                }
                self.clock_sweep().await?;
                let window_start = self.now - OVERLAP;
                let mut seen: Vec<String> = listed
                    .into_iter()
                    .filter(|(created, _)| *created >= window_start)
                    .map(|(_, id)| id)
                    .collect();
                seen.sort();
                Ok((
                    "incremental",
                    Some(EventCursor {
                        created: start_cursor.created,
                        seen,
                    }),
                ))
            }
            Scope::Since { since, until } => {
                let until_ts = until.unwrap_or(self.now);
                if self.now - since <= EVENT_RETENTION {
                    self.report.note = Some(format!("window {since} .. {until_ts}: replayed from Stripe events"));
                    let (events, _) = self.events(since, until, &HashSet::new()).await?;
                    if !self.replay(&events).await? {
                        self.report.note = Some("a product or price changed in the window: full scan".into());
                        self.scan(CreatedRange::default()).await?;
                    }
                } else {
                    self.report.note = Some(format!(
                        "window {since} .. {until_ts} starts before Stripe's event retention: \
                         all subscriptions, and sessions and invoices created in the window"
                    ));
                    self.scan(CreatedRange {
                        gte: Some(since),
                        lt: until,
                    })
                    .await?;
                }
                self.clock_sweep().await?;
                Ok(("since", None))
            }
        }
    }
}

fn without_session_invoices(grants: Vec<GrantFact>, skip: Option<&HashSet<String>>) -> Vec<GrantFact> {
    match skip {
        Some(skip) => grants
            .into_iter()
            .filter(|g| !skip.contains(g.key().source_id.split('/').next().unwrap_or_default()))
            .collect(),
        None => grants,
    }
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
    let planned_mode = match options.scope {
        Scope::Full => "full",
        Scope::Since { .. } => "since",
        Scope::Auto if cursor.is_some() => "incremental",
        Scope::Auto => "full",
    };
    let run_id = if dry_run {
        None
    } else {
        Some(store.start_run(planned_mode, Some(source.livemode()))?)
    };
    let progress = if options.progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("progress template is valid"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
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
        progress,
        objects: 0,
        report: Report::new(planned_mode, dry_run, options.report_actions),
        taken_back: HashMap::new(),
    };
    let outcome = run.execute(options.scope, cursor).await;
    run.progress.finish_and_clear();
    let mut report = run.report;
    // Once at the end: per page, this set difference would make a full run quadratic.
    let unchanged = report.seen.difference(&report.changed).count();
    report.counts.insert("unchanged", unchanged);
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
        report.outcome = "failed";
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

/// The fields an `issue` line shows (the JSON report has them all).
const ISSUE_FIELDS: [&str; 6] = [
    "product_ids",
    "customer_email",
    "quantity",
    "hwid_limit",
    "ip_limit",
    "expires_at",
];

/// Action lines the text output shows; the rest are summed up with where
/// to find them, so a first import of thousands of purchases stays readable.
pub const TEXT_ACTIONS: usize = 20;

/// Text form of a plan, like `terraform plan`: the first actions, the skips,
/// then the totals and the emails the run sends.
pub fn render_text(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for a in report.actions.iter().take(TEXT_ACTIONS) {
        let key = a.license_key.as_deref().unwrap_or("(new key)");
        let changes: Vec<String> = a
            .after
            .iter()
            // A new license lists every field: show the ones a person reads.
            .filter(|(field, new)| {
                a.action != ActionKind::Issue || (ISSUE_FIELDS.contains(&field.as_str()) && !new.is_null())
            })
            .map(|(field, new)| match a.before.get(field) {
                Some(old) => format!("{field} {} -> {}", short(old), short(new)),
                None => format!("{field} {}", short(new)),
            })
            .collect();
        let held = a.held.as_ref().map(|h| {
            let fields: Vec<String> = h
                .fields
                .iter()
                .map(|f| format!("{} {} (Stripe: {})", f.field, short(&f.kept), short(&f.stripe)))
                .collect();
            format!("  held by override ({}): {}", h.reason, fields.join(", "))
        });
        let _ = writeln!(
            out,
            "  {:<9} {} {}  {}  [{}]  because of {}{}",
            a.action.as_str(),
            a.source_kind,
            a.source_id,
            key,
            changes.join(", "),
            a.stripe_object,
            held.unwrap_or_default()
        );
    }
    let total: usize = ActionKind::ALL
        .iter()
        .map(|k| report.counts.get(k.count_key()).copied().unwrap_or(0))
        .sum();
    let shown = report.actions.len().min(TEXT_ACTIONS);
    if total > shown {
        let _ = writeln!(
            out,
            "  ... and {} more actions, not shown: `--output json` lists up to --report-actions of them, \
             `licenses list` shows every license and `licenses show KEY` its ledger",
            total - shown
        );
    }
    for s in &report.skipped {
        let _ = writeln!(out, "  {:<9} {}  {}", "skip", s.stripe_object, s.reason);
    }
    let counts: Vec<String> = report
        .counts
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let counts = if counts.is_empty() {
        "nothing to do".to_owned()
    } else {
        counts.join(", ")
    };
    let _ = writeln!(
        out,
        "{}{} run{}: {}; {} Stripe requests, {} ms",
        if report.dry_run {
            "Plan (dry run, nothing written) of a "
        } else {
            ""
        },
        report.mode,
        report.run_id.as_deref().map(|id| format!(" #{id}")).unwrap_or_default(),
        counts,
        report.stripe_requests,
        report.duration_ms
    );
    let silent = if report.emails_skipped > 0 {
        format!(
            ", {} new licenses issued silently (purchased before --mail-since; `mail resend` sends one)",
            report.emails_skipped
        )
    } else {
        String::new()
    };
    if report.dry_run {
        let _ = writeln!(
            out,
            "Emails: this run would email {} customers their new license key{silent}",
            report.emails_to_send
        );
    } else {
        let _ = writeln!(
            out,
            "Emails: {} new license emails queued{silent}; {} emails sent",
            report.emails_to_send, report.emails_sent
        );
    }
    if let Some(e) = &report.error {
        let _ = writeln!(out, "run failed: {e}");
    }
    out
}

fn short(value: &Value) -> String {
    match value {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(short).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub fn render_json(report: &Report) -> Result<String> {
    // Straight from the struct: `json!` would first copy every action into a Value tree.
    Ok(serde_json::to_string(report)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{World, day, sub_item};

    /// A report of one plan issuing `n` subscription items.
    fn report_of(n: usize, limit: usize) -> Report {
        let grants = (0..n).map(|i| sub_item().id(&format!("si_{i}")).fact()).collect();
        let plan = World::new(grants).plan(&[], day(1));
        assert_eq!(plan.actions.len(), n);
        let mut report = Report::new("full", true, limit);
        report.record(&plan, None, &[]);
        report
    }

    #[test]
    fn the_report_keeps_the_first_report_actions_and_counts_the_rest() {
        let report = report_of(7, 3);
        assert_eq!(report.actions.len(), 3);
        assert_eq!(report.actions_omitted, 4);
        assert_eq!(report.counts["issued"], 7, "counts cover every action");
        let json: Value = serde_json::from_str(&render_json(&report).unwrap()).unwrap();
        assert_eq!(json["actions_omitted"], 4);
        assert_eq!(json["actions"].as_array().unwrap().len(), 3);
        assert_eq!(report_of(2, 3).actions_omitted, 0);
    }

    #[test]
    fn a_large_text_plan_shows_the_first_actions_the_totals_and_the_emails() {
        let text = render_text(&report_of(TEXT_ACTIONS + 15, 1000));
        let action_lines = text.lines().filter(|l| l.trim_start().starts_with("issue ")).count();
        assert_eq!(action_lines, TEXT_ACTIONS, "{text}");
        assert!(text.contains("... and 15 more actions"), "{text}");
        assert!(
            text.contains("--output json") && text.contains("licenses list") && text.contains("licenses show"),
            "says where the rest are: {text}"
        );
        assert!(text.contains(&format!("{} issued", TEXT_ACTIONS + 15)), "{text}");
        assert!(
            text.contains(&format!("this run would email {} customers", TEXT_ACTIONS + 15)),
            "{text}"
        );

        // An issue line shows what a person reads, not every column.
        let first = text.lines().next().unwrap();
        assert!(
            first.contains("product_ids pro") && first.contains("expires_at"),
            "{first}"
        );
        assert!(
            !first.contains("customer_name") && !first.contains("livemode"),
            "{first}"
        );
        assert!(
            !text.contains("0 expired") && !text.contains("0 unchanged"),
            "zero counts are left out: {text}"
        );

        // A small plan shows every action and no "more" line.
        let small = render_text(&report_of(3, 1000));
        assert_eq!(
            small.lines().filter(|l| l.trim_start().starts_with("issue ")).count(),
            3
        );
        assert!(!small.contains("more actions"), "{small}");
        // Actions omitted from the report are still counted as not shown.
        let capped = render_text(&report_of(5, 2));
        assert!(capped.contains("... and 3 more actions"), "{capped}");
    }
}
