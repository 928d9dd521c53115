use super::*;
use std::sync::Mutex;
use std::time::Duration;

/// A model list of `n` objects, one per second, served a page at a
/// time with a delay, counting the requests in flight.
struct Model {
    created: Vec<i64>,
    delay: Duration,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    requests: AtomicU64,
    answered: AtomicU64,
    /// Pages answered before two requests were first in flight at once.
    serial: AtomicU64,
}

impl Model {
    async fn page(self: Arc<Self>, s: Segment) -> Result<Page<i64>, StripeError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        if now == 2 && self.serial.load(Ordering::SeqCst) == u64::MAX {
            self.serial
                .store(self.answered.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        tokio::time::sleep(self.delay).await;
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
        self.answered.fetch_add(1, Ordering::SeqCst);
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
    slow_model_of(created, Duration::from_millis(5))
}

fn slow_model_of(created: Vec<i64>, delay: Duration) -> Arc<Model> {
    Arc::new(Model {
        created,
        delay,
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        serial: AtomicU64::new(u64::MAX),
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
async fn a_list_answered_first_waits_for_the_others_and_then_fans_out() {
    // The long list's pages take 5 ms, the short list's first page
    // 100 ms. Read on serially, the long list would read about 20
    // pages one at a time before the horizon let it split; parked, it
    // splits on its first page as soon as the short one reports.
    let long = model(20_000);
    let short = slow_model_of((0..1_400).collect(), Duration::from_millis(100));
    let horizon = Horizon::new(2);
    let (long_requests, _) = tokio::join!(
        requests_beside(&long, horizon.clone()),
        requests_beside(&short, horizon)
    );
    assert_eq!(long.serial.load(Ordering::SeqCst), 1, "one page, then side by side");
    assert!(
        (200..=200 + 2 * WIDTH as u64).contains(&long_requests),
        "the long list: {long_requests}"
    );
}

#[tokio::test]
async fn a_list_whose_neighbour_fails_first_still_reads_on() {
    let long = model(5_000);
    let horizon = Horizon::new(2);
    let failing = pages(
        CreatedRange::default(),
        Some(0),
        WIDTH,
        horizon.clone(),
        None,
        |_s: Segment| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<Page<i64>, _>(StripeError::Decode {
                path: "/v1/x".into(),
                message: "bad".into(),
            })
        },
    );
    // Without the failed list's report the long one would wait forever.
    let both = async { tokio::join!(requests_beside(&long, horizon), failing.collect::<Vec<_>>()) };
    let (long_requests, failed) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("the long list reads on");
    assert!(failed.len() == 1 && failed[0].is_err());
    assert!(long_requests >= 50);
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
