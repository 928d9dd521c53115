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
/// `lists` has reported its first page.
#[derive(Debug)]
pub struct Horizon {
    lists: usize,
    reported: AtomicUsize,
    pages: AtomicU64,
}

impl Horizon {
    /// For a scan that starts `lists` lists at once.
    pub fn new(lists: usize) -> Arc<Horizon> {
        Arc::new(Horizon {
            lists,
            reported: AtomicUsize::new(0),
            pages: AtomicU64::new(0),
        })
    }

    /// A list's estimated pages after its first page; `None` when the
    /// list cannot tell (no lower bound to estimate from).
    fn report(&self, pages: Option<u64>) {
        if let Some(pages) = pages {
            self.pages.fetch_max(pages, Ordering::SeqCst);
        }
        self.reported.fetch_add(1, Ordering::SeqCst);
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
}

/// Every page of one list within `range`, up to `width` requests at once.
/// `fetch` reads one page of a segment; `floor` is the oldest `created` the
/// account can have (guides the split only); `horizon` is shared with the
/// lists read beside this one. When `estimate` is given, the list's
/// estimated size in objects is added to it after the first page. The
/// stream ends after the first error.
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
    };
    stream::unfold(state, move |mut st| {
        let estimate = estimate.clone();
        let horizon = horizon.clone();
        async move {
            if st.failed {
                return None;
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
                    }
                    let split = match horizon.pages_per_segment(width) {
                        Some(pages_per_segment) => Split {
                            // Readers neither busy nor promised a segment.
                            room: width.max(1).saturating_sub(st.flight.len() + st.pending.len() + 1),
                            pages_per_segment,
                        },
                        None => Split::NONE,
                    };
                    st.pending
                        .extend(segments::rest(&segment, &span, page.next_cursor(), floor, split));
                    Some((Ok(page), st))
                }
                Err(e) => {
                    st.failed = true;
                    Some((Err(e), st))
                }
            }
        }
    })
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
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A model list of `n` objects, one per second, served a page at a
    /// time with a delay, counting the requests in flight.
    struct Model {
        created: Vec<i64>,
        in_flight: AtomicU64,
        max_in_flight: AtomicU64,
        requests: AtomicU64,
    }

    impl Model {
        async fn page(self: Arc<Self>, s: Segment) -> Result<Page<i64>, StripeError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            self.requests.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            // Newest first; ids are the created seconds (unique here).
            let after: Option<i64> = s.after.as_deref().map(|a| a.parse().unwrap());
            let matching: Vec<i64> = self
                .created
                .iter()
                .rev()
                .copied()
                .filter(|c| after.is_none_or(|a| *c < a))
                .filter(|c| s.gte.is_none_or(|g| *c >= g) && s.lt.is_none_or(|l| *c < l))
                .collect();
            let items: Vec<i64> = matching.iter().take(PAGE).copied().collect();
            let has_more = matching.len() > PAGE;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(Page {
                next: has_more.then(|| items.last().unwrap().to_string()),
                span: Span {
                    newest: items.first().copied(),
                    oldest: items.last().copied(),
                    listed: items.len(),
                },
                items,
            })
        }
    }

    fn model(n: i64) -> Arc<Model> {
        model_of((0..n).collect())
    }

    fn model_of(created: Vec<i64>) -> Arc<Model> {
        Arc::new(Model {
            created,
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    async fn read(m: &Arc<Model>, width: usize) -> (Vec<i64>, u64) {
        read_with_floor(m, width, 0).await
    }

    async fn read_with_floor(m: &Arc<Model>, width: usize, floor: i64) -> (Vec<i64>, u64) {
        let estimate = Arc::new(AtomicU64::new(0));
        let m2 = m.clone();
        let stream = pages(
            CreatedRange::default(),
            Some(floor),
            width,
            Horizon::new(1),
            Some(estimate.clone()),
            move |s| m2.clone().page(s),
        );
        let mut ahead = Ahead::new(stream, 4);
        let mut seen = Vec::new();
        while let Some(page) = ahead.next().await {
            seen.extend(page.unwrap().items);
        }
        seen.sort();
        (seen, estimate.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_large_list_is_read_once_with_requests_side_by_side() {
        let m = model(5_000);
        let (seen, estimate) = read(&m, WIDTH).await;
        assert_eq!(seen, (0..5_000).collect::<Vec<_>>());
        let max = m.max_in_flight.load(Ordering::SeqCst);
        assert!(max > 1 && max <= WIDTH as u64, "in flight at most: {max}");
        // 50 pages of data plus at most a partial page per reader.
        let requests = m.requests.load(Ordering::SeqCst);
        assert!((50..=50 + WIDTH as u64).contains(&requests), "requests: {requests}");
        assert!(
            (4_500..=5_500).contains(&estimate),
            "estimated from the first page: {estimate}"
        );
    }

    /// Reads a model list beside others sharing `horizon`; its requests.
    async fn requests_beside(m: &Arc<Model>, horizon: Arc<Horizon>) -> u64 {
        let m2 = m.clone();
        let mut stream = Box::pin(pages(
            CreatedRange::default(),
            Some(0),
            WIDTH,
            horizon,
            None,
            move |s| m2.clone().page(s),
        ));
        let mut seen = 0;
        while let Some(page) = stream.next().await {
            seen += page.unwrap().items.len();
        }
        assert_eq!(seen, m.created.len());
        m.requests.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_short_list_beside_a_long_one_is_split_no_finer_than_the_long_one() {
        // 200 pages beside 14: the long list's segments hold 20 pages, so
        // the short one is read serially (its 14 pages, no partial page).
        let (long, short) = (model(20_000), model(1_400));
        let horizon = Horizon::new(2);
        let (long_requests, short_requests) = tokio::join!(
            requests_beside(&long, horizon.clone()),
            requests_beside(&short, horizon)
        );
        assert_eq!(short_requests, 14, "the short list beside the long one");
        assert!(
            (200..=200 + 2 * WIDTH as u64).contains(&long_requests),
            "the long list: {long_requests}"
        );
        assert!(long.max_in_flight.load(Ordering::SeqCst) > 1);
        // Alone, the short list is the longest: split for its own sake.
        let alone = model(1_400);
        assert!(requests_beside(&alone, Horizon::new(1)).await > 14);
    }

    #[tokio::test]
    async fn a_list_it_cannot_size_costs_at_most_a_request_per_reader_per_split() {
        // Purchases older than every price: the split reaches back to
        // Stripe's launch, years too far, and most segments are empty.
        let m = model_of((0..5_000).map(|i| 1_500_000_000 + i * 1_000).collect());
        let (seen, _) = read_with_floor(&m, WIDTH, 1_800_000_000).await;
        assert_eq!(seen.len(), 5_000);
        // 50 pages of data; 69 requests here, 80 when each split makes
        // segments no reader can take yet.
        let requests = m.requests.load(Ordering::SeqCst);
        assert!(requests < 75, "requests: {requests}");
    }

    #[tokio::test]
    async fn a_floor_above_the_objects_still_splits_but_estimates_nothing_it_cannot_know() {
        // Purchases older than every price: the split reaches back to
        // Stripe's launch, the ETA does not (it would promise hours).
        let m = model_of((0..5_000).map(|i| 1_500_000_000 + i * 1_000).collect());
        let (seen, estimate) = read_with_floor(&m, WIDTH, 1_800_000_000).await;
        assert_eq!(seen.len(), 5_000);
        assert!(m.max_in_flight.load(Ordering::SeqCst) > 1, "split anyway");
        assert_eq!(estimate, 200, "the first page and one more, not years of them");
    }

    #[tokio::test]
    async fn a_small_list_costs_a_serial_read_and_width_one_is_serial() {
        let m = model(150);
        let (seen, _) = read(&m, WIDTH).await;
        assert_eq!(seen.len(), 150);
        assert_eq!(m.requests.load(Ordering::SeqCst), 2);
        let m = model(2_000);
        let (seen, _) = read(&m, 1).await;
        assert_eq!(seen.len(), 2_000);
        assert_eq!(m.max_in_flight.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_stream_ends_after_an_error_and_dropping_it_stops_the_reading() {
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let stream = pages(
            CreatedRange::default(),
            Some(0),
            4,
            Horizon::new(1),
            None,
            move |_s: Segment| {
                let c = c.clone();
                async move {
                    *c.lock().unwrap() += 1;
                    Err::<Page<i64>, _>(StripeError::Decode {
                        path: "/v1/x".into(),
                        message: "bad".into(),
                    })
                }
            },
        );
        let mut ahead = Ahead::new(stream, 2);
        assert!(ahead.next().await.unwrap().is_err());
        assert!(ahead.next().await.is_none());
        assert_eq!(*calls.lock().unwrap(), 1);
    }
}
