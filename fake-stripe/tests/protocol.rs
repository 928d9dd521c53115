//! The wire protocol around the data: API keys, Request-Id, injected faults and
//! the request log.

mod common;

use std::time::{Duration, Instant};

use common::{get, get_with_auth, try_get};
use fake_stripe::{FakeStripe, Fault, FaultKind, Options};

#[tokio::test]
async fn a_wrong_key_is_401_with_the_key_masked_like_stripe_does() {
    let fake = FakeStripe::start().await;
    let wrong = "sk_test_51SecretThatMustNotLeak9876";
    let reply = get_with_auth(&fake.base_url(), Some(&format!("Bearer {wrong}")), "/v1/customers")
        .await
        .unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body["error"]["type"], "invalid_request_error");
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Invalid API Key provided: sk_test_****"),
        "{message}"
    );
    assert!(message.ends_with("9876"), "{message}");
    assert!(
        !reply.text.contains(wrong),
        "the full key never appears: {}",
        reply.text
    );
    assert!(!reply.text.contains("SecretThatMustNotLeak"));
}

#[tokio::test]
async fn a_missing_key_is_401_and_the_right_key_is_accepted() {
    let fake = FakeStripe::start().await;
    let none = get_with_auth(&fake.base_url(), None, "/v1/customers").await.unwrap();
    assert_eq!(none.status, 401);
    assert!(
        none.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not provide an API key")
    );
    assert_eq!(fake.api_key(), "sk_test_fake_0123456789");
    assert!(!fake.livemode());
    assert_eq!(try_get(&fake, "/v1/customers").await.status, 200);
}

#[tokio::test]
async fn a_live_restricted_key_makes_a_live_account() {
    let fake = FakeStripe::start_with(Options {
        api_key: "rk_live_fake_abcdefgh".into(),
        seed_sample: true,
    })
    .await;
    assert!(fake.livemode());
    let sessions = get(&fake, "/v1/checkout/sessions").await;
    let session = &sessions["data"][0];
    assert_eq!(session["livemode"], true);
    assert!(session["id"].as_str().unwrap().starts_with("cs_live_"));
    let test_key = get_with_auth(
        &fake.base_url(),
        Some("Bearer sk_test_fake_0123456789"),
        "/v1/customers",
    )
    .await
    .unwrap();
    assert_eq!(test_key.status, 401);
}

#[tokio::test]
async fn every_response_carries_a_distinct_request_id() {
    let fake = FakeStripe::start().await;
    let ok = try_get(&fake, "/v1/customers").await;
    let missing = try_get(&fake, "/v1/customers/cus_nope").await;
    let unauthorized = get_with_auth(&fake.base_url(), None, "/v1/customers").await.unwrap();
    let ids: Vec<String> = [ok, missing, unauthorized]
        .iter()
        .map(|r| r.headers["request-id"].to_str().unwrap().to_owned())
        .collect();
    assert!(ids.iter().all(|id| id.starts_with("req_")), "{ids:?}");
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
}

#[tokio::test]
async fn a_429_carries_retry_headers_and_the_next_request_succeeds() {
    let fake = FakeStripe::start().await;
    fake.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::TooManyRequests { retry_after_secs: 2 },
        times: 1,
    });
    // Other paths are untouched by the fault.
    assert_eq!(try_get(&fake, "/v1/customers").await.status, 200);
    let limited = try_get(&fake, "/v1/subscriptions").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.headers["retry-after"], "2");
    assert_eq!(limited.headers["stripe-should-retry"], "true");
    assert!(limited.headers.contains_key("request-id"));
    assert_eq!(limited.body["error"]["code"], "rate_limit");
    assert_eq!(limited.body["error"]["type"], "invalid_request_error");
    assert_eq!(try_get(&fake, "/v1/subscriptions").await.status, 200);
}

#[tokio::test]
async fn faults_are_consumed_in_injection_order_and_count() {
    let fake = FakeStripe::start().await;
    fake.inject_fault(Fault {
        path_prefix: "".into(),
        kind: FaultKind::ServerError(500),
        times: 2,
    });
    fake.inject_fault(Fault {
        path_prefix: "/v1/".into(),
        kind: FaultKind::ServerError(503),
        times: 1,
    });
    let statuses = [
        try_get(&fake, "/v1/invoices").await,
        try_get(&fake, "/v1/invoices").await,
        try_get(&fake, "/v1/invoices").await,
        try_get(&fake, "/v1/invoices").await,
    ];
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes, [500, 500, 503, 200]);
    assert_eq!(statuses[0].body["error"]["type"], "api_error");
}

#[tokio::test]
async fn a_dropped_connection_gives_no_response_then_the_server_answers_again() {
    let fake = FakeStripe::start().await;
    fake.inject_fault(Fault {
        path_prefix: "/v1/events".into(),
        kind: FaultKind::DropConnection,
        times: 1,
    });
    let auth = format!("Bearer {}", fake.api_key());
    let dropped = get_with_auth(&fake.base_url(), Some(&auth), "/v1/events").await;
    assert!(dropped.is_err(), "the connection closes without a response");
    assert_eq!(try_get(&fake, "/v1/events").await.status, 200);
    let log = fake.requests();
    assert_eq!(log[0].status, 0, "a dropped request is logged with status 0");
    assert_eq!(log[1].status, 200);
}

#[tokio::test]
async fn latency_delays_the_answer_and_then_answers_normally() {
    let fake = FakeStripe::start().await;
    let delay = Duration::from_millis(200);
    fake.inject_fault(Fault {
        path_prefix: "/v1/customers".into(),
        kind: FaultKind::Latency(delay),
        times: 1,
    });
    let started = Instant::now();
    let reply = try_get(&fake, "/v1/customers").await;
    // A lower bound only: the fake sleeps at least `delay`; no upper bound is asserted.
    assert!(started.elapsed() >= delay);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["object"], "list");
    assert!(fake.requests()[0].at >= started);
}

#[tokio::test]
async fn the_request_log_records_method_path_query_and_status_in_order() {
    let fake = FakeStripe::start().await;
    try_get(&fake, "/v1/customers?limit=3&expand[]=data.x").await;
    try_get(&fake, "/v1/customers/cus_nope").await;
    get_with_auth(&fake.base_url(), None, "/v1/prices").await.unwrap();
    let log = fake.requests();
    let summary: Vec<(&str, &str, &str, u16)> = log
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str(), r.query.as_str(), r.status))
        .collect();
    assert_eq!(
        summary,
        [
            ("GET", "/v1/customers", "limit=3&expand[]=data.x", 400),
            ("GET", "/v1/customers/cus_nope", "", 404),
            ("GET", "/v1/prices", "", 401),
        ]
    );
    assert!(log[0].at <= log[1].at && log[1].at <= log[2].at);
    fake.clear_requests();
    assert!(fake.requests().is_empty());
}
