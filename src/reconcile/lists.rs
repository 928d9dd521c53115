//! The streams of purchase pages a run applies: every list of a scan (its
//! subscriptions, Checkout Sessions and one-off invoices read side by side)
//! and the objects events name, re-fetched.

use std::collections::{BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures::stream::{self, Stream, StreamExt};

use super::read::{Horizon, WIDTH};
use super::segments::Segment;
use super::{read, routing};
use crate::catalog::Catalog;
use crate::domain::GrantFact;
use crate::stripe::{CreatedRange, GrantPage, StripeError, StripeSource};

/// Objects re-fetched (events, one-off invoices) per planned page.
pub(super) const REFETCH_BATCH: usize = 50;

/// Purchase pages as the pipeline carries them.
pub(super) type Pages = Pin<Box<dyn Stream<Item = Result<GrantPage>> + Send>>;

/// Every purchase list a scan reads, merged into one stream of pages:
/// subscriptions (all of them) alongside the Checkout Sessions created in
/// `window` and, once those are read, the one-off invoices.
pub(super) fn purchase_pages(
    source: Arc<StripeSource>,
    window: CreatedRange,
    catalog: &Catalog,
    estimate: Arc<AtomicU64>,
) -> Pages {
    let floor = catalog.oldest_price();
    let one_time = catalog.one_time_prices_that_grant();
    // Subscriptions and Checkout Sessions start together; the one-off
    // invoices follow the sessions and report when they start.
    let horizon = Horizon::new(if one_time.is_empty() { 1 } else { 2 });
    let subscriptions = {
        let source = source.clone();
        read::pages(
            CreatedRange::default(),
            floor,
            WIDTH,
            horizon.clone(),
            Some(estimate.clone()),
            move |s: Segment| {
                let source = source.clone();
                async move { source.subscriptions_page(s.after.as_deref(), &s.range()).await }
            },
        )
        .map(|r| r.context("reading subscriptions"))
    };
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
        read::pages(
            window,
            floor,
            WIDTH,
            horizon.clone(),
            Some(estimate.clone()),
            move |s: Segment| {
                let source = source.clone();
                async move { source.checkout_sessions_page(s.after.as_deref(), &s.range()).await }
            },
        )
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
    let invoices = stream::once(async move {
        one_off_invoice_pages(source, window, floor, one_time, session_invoices, horizon, estimate)
    })
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
    horizon: Arc<Horizon>,
    estimate: Arc<AtomicU64>,
) -> Pages {
    if window != CreatedRange::default() {
        return read::pages(window, floor, WIDTH, horizon, Some(estimate), move |s: Segment| {
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
    let one_time = Arc::new(one_time);
    let items = {
        let (source, one_time) = (source.clone(), one_time.clone());
        read::pages(window, floor, WIDTH, horizon, Some(estimate), move |s: Segment| {
            let (source, one_time) = (source.clone(), one_time.clone());
            async move {
                source
                    .invoice_items_page(s.after.as_deref(), &s.range(), &one_time)
                    .await
            }
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
                        .filter(|i| i.can_grant(&one_time))
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
pub(super) fn refetch_pages(source: Arc<StripeSource>, triggers: routing::Triggers) -> Pages {
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
