//! The streams of purchase pages a run applies: every list of a scan (its
//! subscriptions, Checkout Sessions and one-off invoices read side by side)
//! and the objects events name, re-fetched.

use std::collections::{BTreeSet, HashSet};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::watch;

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
/// `window` and the one-off invoices. A full scan reads the invoice items
/// beside the sessions and plans their invoices once the sessions are
/// read; a window reads its invoices after its sessions.
pub(super) fn purchase_pages(
    source: Arc<StripeSource>,
    window: CreatedRange,
    catalog: &Catalog,
    estimate: Arc<AtomicU64>,
) -> Pages {
    let floor = catalog.oldest_price();
    let one_time = catalog.one_time_prices_that_grant();
    // A full scan reads subscriptions, Checkout Sessions and invoice items
    // side by side; a window's one-off invoices follow its sessions and
    // report when they start.
    let side_by_side = window == CreatedRange::default();
    let horizon = Horizon::new(match (one_time.is_empty(), side_by_side) {
        (true, _) => 1,
        (false, true) => 3,
        (false, false) => 2,
    });
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
    // Set once every Checkout Session was read, and so every invoice a
    // session created is known.
    let (sessions_read, sessions_done) = watch::channel(false);
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
        .chain(stream::once(async move { sessions_read.send_replace(true) }).filter_map(|_| async { None }))
    };
    if side_by_side {
        let items = one_off_invoices_from_items(
            source,
            floor,
            one_time,
            session_invoices,
            sessions_done,
            horizon,
            estimate,
        );
        return stream::select(subscriptions, stream::select(sessions, items)).boxed();
    }
    let invoices = one_off_invoice_pages(source, window, floor, session_invoices, horizon, estimate);
    // Started once the sessions are read: it needs their invoices.
    let invoices = stream::once(async move {
        let mut sessions_done = sessions_done;
        let _ = sessions_done.wait_for(|read| *read).await;
        invoices
    })
    .flatten();
    stream::select(subscriptions, stream::select(sessions, invoices)).boxed()
}

/// The paid invoices created in `window` (a `--since` window), without
/// those Checkout Sessions created; read once the sessions are.
fn one_off_invoice_pages(
    source: Arc<StripeSource>,
    window: CreatedRange,
    floor: Option<i64>,
    session_invoices: Arc<Mutex<HashSet<String>>>,
    horizon: Arc<Horizon>,
    estimate: Arc<AtomicU64>,
) -> Pages {
    read::pages(window, floor, WIDTH, horizon, Some(estimate), move |s: Segment| {
        let source = source.clone();
        async move { source.invoices_page(s.after.as_deref(), &s.range()).await }
    })
    .map(move |r| {
        let mut page = r.context("reading invoices")?;
        let skip = session_invoices.lock().expect("session invoices lock");
        page.grants.retain(|g| !skip.contains(purchase_of(g)));
        Ok(page)
    })
    .boxed()
}

/// The one-off invoices that can grant (see the module's "Read only what
/// can grant"), found through their invoice items, without those Checkout
/// Sessions created. The items are read beside the sessions; the invoices
/// they name are held until every session was read, then those the
/// sessions created are dropped and the rest are planned. What is held is
/// the account's one-off invoices able to grant, a small share of its
/// purchases.
fn one_off_invoices_from_items(
    source: Arc<StripeSource>,
    floor: Option<i64>,
    one_time: BTreeSet<String>,
    session_invoices: Arc<Mutex<HashSet<String>>>,
    mut sessions_done: watch::Receiver<bool>,
    horizon: Arc<Horizon>,
    estimate: Arc<AtomicU64>,
) -> Pages {
    let one_time = Arc::new(one_time);
    let items = {
        let (source, one_time) = (source.clone(), one_time.clone());
        read::pages(
            CreatedRange::default(),
            floor,
            WIDTH,
            horizon,
            Some(estimate),
            move |s: Segment| {
                let (source, one_time) = (source.clone(), one_time.clone());
                async move {
                    source
                        .invoice_items_page(s.after.as_deref(), &s.range(), &one_time)
                        .await
                }
            },
        )
    };
    let held = async move {
        // Each invoice that can grant, once (an invoice of several items
        // counts once, even when its items stand on different pages): read
        // already (expanded with its items), or its id alone when Stripe did
        // not expand it.
        let mut wanted = HashSet::new();
        let mut invoices: Vec<(String, Option<GrantPage>)> = Vec::new();
        let mut items = std::pin::pin!(items);
        while let Some(page) = items.next().await {
            let mut page = page.context("reading invoice items")?;
            for id in page
                .items
                .items
                .into_iter()
                .filter(|i| i.can_grant(&one_time))
                .filter_map(|i| i.invoice)
            {
                if wanted.insert(id.clone()) {
                    let read = page.invoices.remove(&id);
                    invoices.push((id, read));
                }
            }
        }
        if sessions_done.wait_for(|read| *read).await.is_err() {
            anyhow::bail!("the Checkout Sessions were not read to their end");
        }
        let skip = session_invoices.lock().expect("session invoices lock");
        invoices.retain(|(id, _)| !skip.contains(id));
        Ok(invoices)
    };
    stream::once(held)
        .flat_map(|held: Result<Vec<(String, Option<GrantPage>)>>| match held {
            Ok(invoices) => stream::iter(invoices.into_iter().map(Ok)).left_stream(),
            Err(e) => stream::iter([Err(e)]).right_stream(),
        })
        .map(move |invoice| {
            let source = source.clone();
            async move {
                match invoice? {
                    (_, Some(read)) => Ok(Some(read)),
                    (id, None) => {
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
