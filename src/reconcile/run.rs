//! The phases of one run over its account: refunds and disputes, the
//! catalog, the purchase lists or the events, the clock sweep; each page
//! planned and applied as it arrives.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt};

use super::lists::{Pages, purchase_pages, refetch_pages};
use super::progress::Progress;
use super::read::{AHEAD, Ahead, Horizon, WIDTH};
use super::scope::{Choice, Reading};
use super::segments::Segment;
use super::stage::{PageContext, Slice, Staged, plan_and_apply};
use super::{EventCursor, Interrupted, OVERLAP, Report, RunMode, read, routing, scope};
use crate::catalog::Catalog;
use crate::delivery::Queued;
use crate::domain::{GrantFact, PaymentReversal, ReversalKind, Timestamp};
use crate::plan::PlanConfig;
use crate::shutdown::Shutdown;
use crate::store::{Store, blocking};
use crate::stripe::{CreatedRange, EventFact, StripeSource};

/// A reconcile run in progress.
pub(super) struct Run {
    pub(super) store: Store,
    pub(super) source: Arc<StripeSource>,
    pub(super) plan: PlanConfig,
    pub(super) dry_run: bool,
    pub(super) now: Timestamp,
    pub(super) run_id: Option<i64>,
    /// Read on first use: a run with nothing to re-plan never pays for it.
    pub(super) catalog: Option<Arc<Catalog>>,
    /// The catalog's read when it was started ahead of its first use,
    /// beside the objects events name (see [`Run::replay`]).
    pub(super) catalog_read: Option<CatalogRead>,
    pub(super) stop: Option<Shutdown>,
    pub(super) progress: Progress,
    pub(super) report: Report,
    /// Payments taken back in full (full refunds, lost disputes) by payment
    /// intent, as read by [`Run::reversals`]: every later page of the
    /// run plans its one-time grants with them, so a purchase refunded
    /// before licensync first saw it issues nothing instead of a key that
    /// is mailed and revoked in the same run.
    pub(super) taken_back: HashMap<String, PaymentReversal>,
    /// `--stripe-write-back`.
    pub(super) write_back: bool,
    /// The sender beside the run, told of each page that queued emails.
    pub(super) mail: Option<Queued>,
}

impl Run {
    pub(super) fn check_stop(&self) -> Result<()> {
        match &self.stop {
            Some(stop) if stop.is_shutdown() => Err(Interrupted.into()),
            _ => Ok(()),
        }
    }

    async fn catalog(&mut self) -> Result<Arc<Catalog>> {
        if let Some(catalog) = &self.catalog {
            return Ok(catalog.clone());
        }
        let catalog = match self.catalog_read.take() {
            Some(read) => read.finish().await?,
            None => read_catalog(self.source.clone()).await?,
        };
        let catalog = Arc::new(catalog);
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
            write_back: self.write_back,
        };
        let Staged {
            plan,
            applied,
            looked_at,
        } = blocking(move || plan_and_apply(&ctx, slice)).await?;
        if let Some(mail) = &self.mail
            && applied.iter().flatten().any(|a| a.action.email.is_some())
        {
            mail.committed();
        }
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
        let refunds = read::serial(move |s: Segment| {
            let source = refunds.clone();
            async move { source.reversals_page(s.after.as_deref()).await }
        })
        .map(|r| r.context("reading refunds"));
        let disputes = read::serial(move |s: Segment| {
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
    /// Refunds and disputes first (see `taken_back`), read beside the
    /// catalog.
    async fn scan(&mut self, window: CreatedRange) -> Result<()> {
        if self.catalog.is_none() {
            let (catalog, ()) = tokio::try_join!(read_catalog(self.source.clone()), self.reversals())?;
            self.catalog = Some(Arc::new(catalog));
        } else {
            self.reversals().await?;
        }
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
        let pages = read::pages(range, floor, WIDTH, Horizon::new(1), None, move |s: Segment| {
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
        // The objects' pages are planned with the catalog: read it beside
        // them rather than one round trip after the first of them.
        if triggers.names_purchases() && self.catalog.is_none() && self.catalog_read.is_none() {
            self.catalog_read = Some(CatalogRead::start(self.source.clone()));
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
        // The events listed before the scan starts count as handled: the
        // scan reads every object after them, so the next run does not
        // replay them (a product change would otherwise mean another full
        // scan within the overlap window). An event created after this
        // listing is not among them, even when Stripe dates it in the
        // run's own second (`created` has whole seconds), so the next run
        // replays it: a purchase made while the scan went on is never taken
        // for handled. (With a webhook waking a run per sale, that second
        // is no longer rare.)
        let window = CreatedRange {
            gte: Some(self.now - OVERLAP),
            lt: chrono::DateTime::from_timestamp(self.now.timestamp() + 1, 0),
        };
        let (_, listed) = self.events(window, &HashSet::new()).await?;
        self.scan(CreatedRange::default()).await?;
        self.clock_sweep().await?;
        Ok((RunMode::Full, Some(scope::next_cursor(self.now, &listed))))
    }

    /// Reads what `choice` says; returns the mode actually run and the
    /// cursor to store when the run succeeds.
    pub(super) async fn execute(&mut self, choice: Choice) -> Result<(RunMode, Option<EventCursor>)> {
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

async fn read_catalog(source: Arc<StripeSource>) -> Result<Catalog> {
    let (products, prices) = source.catalog().await.context("reading the product catalog")?;
    Ok(Catalog::new(products, prices))
}

/// A catalog read going on in its own task; dropped unfinished, it stops.
pub(super) struct CatalogRead(tokio::task::JoinHandle<Result<Catalog>>);

impl CatalogRead {
    fn start(source: Arc<StripeSource>) -> CatalogRead {
        CatalogRead(tokio::spawn(read_catalog(source)))
    }

    async fn finish(mut self) -> Result<Catalog> {
        (&mut self.0).await.context("reading the product catalog")?
    }
}

impl Drop for CatalogRead {
    fn drop(&mut self) {
        self.0.abort();
    }
}
