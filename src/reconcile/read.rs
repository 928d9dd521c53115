//! Reading Stripe: one stream of pages per list, read by several requests
//! at once over `created` segments (see `segments`), and read ahead of the
//! planner in its own task so that Stripe's latency and the database work
//! overlap. The transport paces every request within Stripe's rate limits
//! (one budget per endpoint and one global, fed back by `429`s), so the
//! width here only has to be enough to fill them.
//!
//! Memory: at most [`WIDTH`] requests in flight per list and [`AHEAD`]
//! pages waiting for the planner, whatever the size of the account.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::stream::{self, FuturesUnordered, Stream, StreamExt};

use super::segments::{self, PAGE, Segment, Split};
use crate::stripe::{CreatedRange, GrantPage, InvoiceItemsPage, Page, Span, StripeError};

/// Requests in flight per list: Stripe allows 25 requests/s per endpoint
/// and answers a list page in 50-300 ms, so about 8 keep an endpoint busy.
pub const WIDTH: usize = 10;
/// Pages read ahead of the planner.
pub const AHEAD: usize = 2 * WIDTH;

/// What the lists of one scan, read side by side, know of each other: the
/// longest list's estimated pages. The run lasts as long as that list, read
/// by [`WIDTH`] segments at once; a shorter list is split into segments no
/// shorter than those, since more would cost requests (each segment ends on
/// a partial page) and end no sooner. No list splits before each of the
/// `lists` has reported its first page: a list whose first page comes back
/// sooner waits for the others before it reads on (see [`pages`]).
#[derive(Debug)]
pub struct Horizon {
    lists: usize,
    reported: AtomicUsize,
    pages: AtomicU64,
    complete: tokio::sync::Notify,
}

impl Horizon {
    /// For a scan that starts `lists` lists at once.
    pub fn new(lists: usize) -> Arc<Horizon> {
        Arc::new(Horizon {
            lists,
            reported: AtomicUsize::new(0),
            pages: AtomicU64::new(0),
            complete: tokio::sync::Notify::new(),
        })
    }

    /// A list's estimated pages after its first page; `None` when the
    /// list cannot tell (no lower bound to estimate from, or its first
    /// request failed).
    fn report(&self, pages: Option<u64>) {
        if let Some(pages) = pages {
            self.pages.fetch_max(pages, Ordering::SeqCst);
        }
        if self.reported.fetch_add(1, Ordering::SeqCst) + 1 == self.lists {
            self.complete.notify_waiters();
        }
    }

    /// Waits until every list reported its first page.
    async fn completed(&self) {
        loop {
            // Registered before the check, so a report in between wakes it.
            let reported = self.complete.notified();
            if self.reported.load(Ordering::SeqCst) >= self.lists {
                return;
            }
            reported.await;
        }
    }

    /// Estimated pages a segment should hold, once every list reported (0:
    /// no list could tell, the least).
    fn pages_per_segment(&self, width: usize) -> Option<u64> {
        (self.reported.load(Ordering::SeqCst) >= self.lists)
            .then(|| self.pages.load(Ordering::SeqCst).div_ceil(width.max(1) as u64))
    }
}

/// A page the segmented reader can continue from.
pub trait Paged {
    fn next_cursor(&self) -> Option<&str>;
    fn span(&self) -> Span;
}

impl Paged for GrantPage {
    fn next_cursor(&self) -> Option<&str> {
        self.next.as_deref()
    }
    fn span(&self) -> Span {
        self.span
    }
}

impl<T> Paged for Page<T> {
    fn next_cursor(&self) -> Option<&str> {
        self.next.as_deref()
    }
    fn span(&self) -> Span {
        self.span
    }
}

impl Paged for InvoiceItemsPage {
    fn next_cursor(&self) -> Option<&str> {
        self.items.next.as_deref()
    }
    fn span(&self) -> Span {
        self.items.span
    }
}

type Flight<P> = Pin<Box<dyn Future<Output = (Segment, Result<P, StripeError>)> + Send>>;

struct Segmented<P, F> {
    pending: VecDeque<Segment>,
    flight: FuturesUnordered<Flight<P>>,
    fetch: F,
    failed: bool,
    first: bool,
    /// The first page's segment, span and cursor, whose rest waits for the
    /// lists read beside this one to report (the horizon).
    parked: Option<(Segment, Span, String)>,
}

/// Every page of one list within `range`, up to `width` requests at once.
/// `fetch` reads one page of a segment; `floor` is the oldest `created` the
/// account can have (guides the split only); `horizon` is shared with the
/// lists read beside this one. When `estimate` is given, the list's
/// estimated size in objects is added to it after the first page. The
/// stream ends after the first error.
///
/// A first page that arrives before the horizon is complete is handed on
/// at once, but the rest of its list is parked until the other lists'
/// first pages are in, and then split with what they said. Reading on
/// serially instead would split only after the next page, a round trip
/// later than the horizon allows, and the run's busiest list would spend
/// that round trip with one request in flight.
pub fn pages<P, F, Fut>(
    range: CreatedRange,
    floor: Option<i64>,
    width: usize,
    horizon: Arc<Horizon>,
    estimate: Option<Arc<AtomicU64>>,
    fetch: F,
) -> impl Stream<Item = Result<P, StripeError>> + Send + 'static
where
    P: Paged + Send + 'static,
    F: Fn(Segment) -> Fut + Send + 'static,
    Fut: Future<Output = Result<P, StripeError>> + Send + 'static,
{
    let state = Segmented {
        pending: VecDeque::from([Segment::of(&range)]),
        flight: FuturesUnordered::new(),
        fetch,
        failed: false,
        first: true,
        parked: None,
    };
    stream::unfold(state, move |mut st| {
        let estimate = estimate.clone();
        let horizon = horizon.clone();
        async move {
            if st.failed {
                return None;
            }
            if let Some((segment, span, next)) = st.parked.take() {
                horizon.completed().await;
                let split = split_for(&horizon, width, &st);
                st.pending
                    .extend(segments::rest(&segment, &span, Some(&next), floor, split));
            }
            while st.flight.len() < width.max(1) {
                let Some(segment) = st.pending.pop_front() else { break };
                let request = (st.fetch)(segment.clone());
                st.flight.push(Box::pin(async move { (segment, request.await) }));
            }
            let (segment, result) = st.flight.next().await?;
            match result {
                Ok(page) => {
                    let span = page.span();
                    // The ETA only trusts a real floor: Stripe's launch (the
                    // split's fallback) would promise hours for a young account.
                    let low = segment.gte.or(floor.filter(|f| span.oldest.is_some_and(|o| *f < o)));
                    if std::mem::take(&mut st.first) {
                        // Pages below this one: none after the last page;
                        // unknown without a real lower bound.
                        let left = match (page.next_cursor(), low) {
                            (None, _) => Some(0),
                            (Some(_), Some(_)) => Some(segments::pages_left(&span, low).max(1)),
                            (Some(_), None) => None,
                        };
                        if let Some(estimate) = estimate {
                            // The ETA counts an unknown rest as one page.
                            let rest = left.unwrap_or(1) * PAGE as u64;
                            estimate.fetch_add(span.listed as u64 + rest, Ordering::Relaxed);
                        }
                        horizon.report(left.map(|left| 1 + left));
                        if let Some(next) = page.next_cursor()
                            && horizon.pages_per_segment(width).is_none()
                        {
                            st.parked = Some((segment, span, next.to_owned()));
                            return Some((Ok(page), st));
                        }
                    }
                    let split = split_for(&horizon, width, &st);
                    st.pending
                        .extend(segments::rest(&segment, &span, page.next_cursor(), floor, split));
                    Some((Ok(page), st))
                }
                Err(e) => {
                    st.failed = true;
                    if std::mem::take(&mut st.first) {
                        // The lists beside this one do not wait for it.
                        horizon.report(None);
                    }
                    Some((Err(e), st))
                }
            }
        }
    })
}

/// How far the rest of a segment may be split now: not at all until every
/// list of the horizon reported; then into the readers neither busy nor
/// promised a segment.
fn split_for<P, F>(horizon: &Horizon, width: usize, st: &Segmented<P, F>) -> Split {
    match horizon.pages_per_segment(width) {
        Some(pages_per_segment) => Split {
            room: width.max(1).saturating_sub(st.flight.len() + st.pending.len() + 1),
            pages_per_segment,
        },
        None => Split::NONE,
    }
}

/// A short list without a `created` filter (refunds, disputes): one page
/// at a time, never split.
pub fn serial<P, F, Fut>(fetch: F) -> impl Stream<Item = Result<P, StripeError>> + Send + 'static
where
    P: Paged + Send + 'static,
    F: Fn(Segment) -> Fut + Send + 'static,
    Fut: Future<Output = Result<P, StripeError>> + Send + 'static,
{
    pages(CreatedRange::default(), None, 1, Horizon::new(1), None, fetch)
}

/// A stream read ahead of its consumer in its own task, up to `ahead`
/// items buffered. Dropping it stops the reading (requests in flight are
/// cancelled).
pub struct Ahead<T> {
    rx: tokio::sync::mpsc::Receiver<T>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Send + 'static> Ahead<T> {
    pub fn new(items: impl Stream<Item = T> + Send + 'static, ahead: usize) -> Ahead<T> {
        let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
        let task = tokio::spawn(async move {
            let mut items = std::pin::pin!(items);
            while let Some(item) = items.next().await {
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Ahead { rx, task }
    }

    pub async fn next(&mut self) -> Option<T> {
        self.rx.recv().await
    }
}

impl<T> Drop for Ahead<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests;
