//! A real account's service conditions: latency per request, and Stripe's
//! rate limits answered with 429, `rate_limit` and `Retry-After`.

mod common;

use std::time::{Duration, Instant};

use common::try_get;
use fake_stripe::{FakeStripe, Latency, Options, RateLimits};

/// `n` requests to `path` sent at once; their statuses and Retry-After headers.
async fn burst(fake: &FakeStripe, path: &str, n: usize) -> Vec<(u16, Option<String>, serde_json::Value)> {
    let replies = futures_join(
        (0..n)
            .map(|_| {
                let (fake, path) = (fake.clone(), path.to_owned());
                tokio::spawn(async move { try_get(&fake, &path).await })
            })
            .collect(),
    )
    .await;
    replies
        .into_iter()
        .map(|r| {
            let retry_after = r.headers.get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (r.status, retry_after, r.body)
        })
        .collect()
}

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_endpoint_limit_gets_429_with_retry_after_and_is_counted() {
    let fake = FakeStripe::start().await;
    fake.set_rate_limits(Some(RateLimits {
        per_endpoint_rps: 5,
        global_rps: 1000,
    }));
    let replies = burst(&fake, "/v1/customers?limit=1", 20).await;
    let limited: Vec<_> = replies.iter().filter(|(s, _, _)| *s == 429).collect();
    let ok = replies.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(ok + limited.len(), 20, "{replies:?}");
    // A bucket of 5 that refills at 5/s: the 20 arrive within far less than
    // a second, so at most one more than the bucket gets through.
    assert!((5..=7).contains(&ok), "{ok} passed: {replies:?}");
    for (_, retry_after, body) in &limited {
        let secs: u64 = retry_after
            .as_deref()
            .expect("Retry-After on every 429")
            .parse()
            .unwrap();
        assert!(secs >= 1, "whole seconds, at least 1: {secs}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "rate_limit");
    }
    assert_eq!(
        fake.rate_limited().get("/v1/customers").copied(),
        Some(limited.len() as u64)
    );
    // Another endpoint has its own bucket.
    assert_eq!(try_get(&fake, "/v1/products").await.status, 200);
    // The 429s are in the request log, as Stripe's dashboard shows them.
    let logged = fake.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(logged, limited.len());
    // Lifting the limits lets the same burst through.
    fake.set_rate_limits(None);
    assert!(
        burst(&fake, "/v1/customers", 20)
            .await
            .iter()
            .all(|(s, _, _)| *s == 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_limit_spans_endpoints_and_test_mode_is_25_per_second() {
    assert_eq!(
        RateLimits::stripe(false),
        RateLimits {
            per_endpoint_rps: 25,
            global_rps: 25
        }
    );
    assert_eq!(RateLimits::stripe(true).global_rps, 100);
    let fake = FakeStripe::start().await;
    fake.set_rate_limits(Some(RateLimits::stripe(fake.livemode())));
    // 16 + 16 requests on two endpoints: each under its 25, together over the 25 overall.
    let (a, b) = tokio::join!(burst(&fake, "/v1/customers", 16), burst(&fake, "/v1/products", 16));
    let limited = a.iter().chain(&b).filter(|(s, _, _)| *s == 429).count();
    assert!((3..=7).contains(&limited), "{limited} of 32 limited: {a:?} {b:?}");
    let counts = fake.rate_limited();
    assert_eq!(counts.values().sum::<u64>(), limited as u64, "{counts:?}");
}

#[tokio::test]
async fn a_client_paced_under_the_limit_gets_no_429() {
    let fake = FakeStripe::start_with(Options {
        api_key: "sk_live_fake_0123456789".into(),
        ..Options::default()
    })
    .await;
    fake.set_rate_limits(Some(RateLimits {
        per_endpoint_rps: 10,
        global_rps: 100,
    }));
    // 30 requests at 5 per second (half the limit), one after another.
    let started = Instant::now();
    for i in 0..30u32 {
        tokio::time::sleep_until((started + Duration::from_millis(200) * i).into()).await;
        let reply = try_get(&fake, "/v1/subscriptions").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text);
    }
    assert!(fake.rate_limited().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_delays_each_request_and_concurrent_requests_overlap() {
    let fake = FakeStripe::start().await;
    assert_eq!(fake.latency(), None, "off by default");
    fake.set_latency(Some(Latency::ms(200, 300)));
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(try_get(&fake, "/v1/customers").await.status, 200);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
    }
    // Ten at once take about one latency, not ten: the sleep holds no lock.
    let started = Instant::now();
    let replies = burst(&fake, "/v1/customers", 10).await;
    let took = started.elapsed();
    assert!(replies.iter().all(|(s, _, _)| *s == 200));
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(1_500), "10 requests took {took:?}");
    fake.set_latency(None);
    assert_eq!(fake.latency(), None);
}
