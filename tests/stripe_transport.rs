//! The transport's wire policy against a tiny scripted HTTP/1.1 server:
//! retries (429 + Retry-After, 5xx, dropped connections, timeouts),
//! `Stripe-Should-Retry`, auth errors that never show the key, headers,
//! connection reuse, and the client-side rate ceiling.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use licensync::stripe::{ApiKey, RateCeiling, StripeConfig, StripeError, Transport};
use stripe_client_core::StripeRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: &str = "sk_test_51TinyStripeSecretValue0123WXYZ";
const EMPTY_LIST: &str = r#"{"object":"list","data":[],"has_more":false,"url":"/v1/products"}"#;

#[derive(Clone)]
enum Step {
    Reply {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: &'static str,
    },
    Drop,
    Hang,
}

fn ok() -> Step {
    Step::Reply {
        status: 200,
        headers: vec![],
        body: EMPTY_LIST,
    }
}

#[derive(Debug, Clone)]
struct Logged {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    at: Instant,
}

impl Logged {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted server: answers requests with the script's steps in order,
/// then with an empty list.
struct TinyStripe {
    base: String,
    log: Arc<Mutex<Vec<Logged>>>,
    connections: Arc<AtomicUsize>,
}

impl TinyStripe {
    async fn start(script: Vec<Step>) -> TinyStripe {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let served = Arc::new(AtomicUsize::new(0));
        {
            let (log, connections) = (log.clone(), connections.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(stream, log.clone(), script.clone(), served.clone()));
                }
            });
        }
        TinyStripe { base, log, connections }
    }

    fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    log: Arc<Mutex<Vec<Logged>>>,
    script: Arc<Mutex<VecDeque<Step>>>,
    served: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_owned();
        let target = request_line.next().unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        log.lock().unwrap().push(Logged {
            method,
            target,
            headers,
            at: Instant::now(),
        });
        let step = script.lock().unwrap().pop_front().unwrap_or_else(ok);
        let n = served.fetch_add(1, Ordering::SeqCst);
        match step {
            Step::Drop => return,
            Step::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            Step::Reply { status, headers, body } => {
                let mut response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRequest-Id: req_tiny_{n}\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                response.push_str(body);
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn config(base: &str, max_retries: u32) -> StripeConfig {
    let mut config = StripeConfig::new(ApiKey::parse(KEY).unwrap());
    config.base_url = format!("{base}/");
    config.max_retries = max_retries;
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(40);
    config.rps = Some(1000);
    config
}

async fn list_products(transport: &Transport) -> Result<usize, StripeError> {
    let list = stripe_product::product::ListProduct::new()
        .limit(100)
        .customize()
        .send(transport)
        .await?;
    Ok(list.data.len())
}

const SERVER_ERROR: &str = r#"{"error":{"type":"api_error","message":"Something went wrong on Stripe's end."}}"#;

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_and_then_succeeds() {
    let server = TinyStripe::start(vec![Step::Reply {
        status: 429,
        headers: vec![("Retry-After", "1"), ("Stripe-Should-Retry", "true")],
        body: r#"{"error":{"type":"invalid_request_error","code":"rate_limit","message":"Too many requests"}}"#,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 5)).unwrap();
    assert_eq!(list_products(&transport).await.unwrap(), 0);
    assert_eq!(transport.requests(), 2);
    let log = server.requests();
    assert_eq!(log.len(), 2);
    // Retry-After says one second; the computed backoff here is at most 40 ms.
    assert!(log[1].at.duration_since(log[0].at) >= Duration::from_millis(900));
}

#[tokio::test]
async fn a_429_holds_the_endpoint_for_every_request_in_flight_not_only_its_own() {
    // The first request is rate limited for 2 s; a second request to the
    // same endpoint, started after that answer, waits it out too rather
    // than earning its own 429. Another endpoint is not held.
    let server = TinyStripe::start(vec![Step::Reply {
        status: 429,
        headers: vec![("Retry-After", "2")],
        body: r#"{"error":{"type":"invalid_request_error","code":"rate_limit","message":"Too many requests"}}"#,
    }])
    .await;
    let transport = Arc::new(Transport::new(&config(&server.base, 5)).unwrap());
    let first = {
        let t = transport.clone();
        tokio::spawn(async move { list_products(&t).await })
    };
    while server.requests().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = {
        let t = transport.clone();
        tokio::spawn(async move { list_products(&t).await })
    };
    stripe_core::customer::ListCustomer::new()
        .customize()
        .send(&*transport)
        .await
        .unwrap();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    let log = server.requests();
    assert_eq!(log.len(), 4, "{:?}", log.iter().map(|l| &l.target).collect::<Vec<_>>());
    let start = log[0].at;
    let other = log.iter().find(|l| l.target.starts_with("/v1/customers")).unwrap();
    assert!(
        other.at.duration_since(start) < Duration::from_millis(1_000),
        "another endpoint is not held"
    );
    for later in log.iter().skip(1).filter(|l| l.target.starts_with("/v1/products")) {
        assert!(
            later.at.duration_since(start) >= Duration::from_millis(1_900),
            "a request to the held endpoint started {:?} after the 429",
            later.at.duration_since(start)
        );
    }
    assert_eq!(transport.rate_limited(), 1, "only the first request was rate limited");
}

#[tokio::test]
async fn server_errors_are_retried_then_surfaced_with_the_path_and_request_id() {
    let fail = Step::Reply {
        status: 500,
        headers: vec![],
        body: SERVER_ERROR,
    };
    let server = TinyStripe::start(vec![fail.clone(), fail.clone(), fail.clone(), fail]).await;
    let transport = Transport::new(&config(&server.base, 3)).unwrap();
    let err = list_products(&transport).await.unwrap_err();
    assert_eq!(transport.requests(), 4);
    match &err {
        StripeError::Api {
            status,
            path,
            request_id,
            attempts,
            error_type,
            ..
        } => {
            assert_eq!(*status, 500);
            assert_eq!(path, "/v1/products");
            assert_eq!(request_id.as_deref(), Some("req_tiny_3"));
            assert_eq!(*attempts, 4);
            assert_eq!(error_type.as_deref(), Some("api_error"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("GET /v1/products"), "{text}");
    assert!(text.contains("req_tiny_3"), "{text}");
    assert!(text.contains("Something went wrong"), "{text}");
}

#[tokio::test]
async fn a_server_error_then_success_recovers() {
    let server = TinyStripe::start(vec![Step::Reply {
        status: 503,
        headers: vec![],
        body: SERVER_ERROR,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 5)).unwrap();
    assert_eq!(list_products(&transport).await.unwrap(), 0);
    assert_eq!(transport.requests(), 2);
}

#[tokio::test]
async fn stripe_should_retry_false_stops_at_once_and_true_retries_a_client_error() {
    let server = TinyStripe::start(vec![Step::Reply {
        status: 500,
        headers: vec![("Stripe-Should-Retry", "false")],
        body: SERVER_ERROR,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 5)).unwrap();
    assert!(matches!(
        list_products(&transport).await,
        Err(StripeError::Api { attempts: 1, .. })
    ));
    assert_eq!(transport.requests(), 1);

    let server = TinyStripe::start(vec![Step::Reply {
        status: 400,
        headers: vec![("Stripe-Should-Retry", "true")],
        body: r#"{"error":{"type":"invalid_request_error","message":"try again"}}"#,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 5)).unwrap();
    assert_eq!(list_products(&transport).await.unwrap(), 0);
    assert_eq!(transport.requests(), 2);
}

#[tokio::test]
async fn a_plain_client_error_is_not_retried() {
    let server = TinyStripe::start(vec![Step::Reply {
        status: 400,
        headers: vec![],
        body: r#"{"error":{"type":"invalid_request_error","message":"Received unknown parameter: foo"}}"#,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 5)).unwrap();
    let err = list_products(&transport).await.unwrap_err();
    assert_eq!(transport.requests(), 1);
    assert!(err.to_string().contains("Received unknown parameter: foo"), "{err}");
}

#[tokio::test]
async fn a_lock_timeout_conflict_is_retried_but_other_conflicts_are_not() {
    let server = TinyStripe::start(vec![Step::Reply {
        status: 409,
        headers: vec![],
        body: r#"{"error":{"type":"invalid_request_error","code":"lock_timeout","message":"locked"}}"#,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 5)).unwrap();
    assert_eq!(list_products(&transport).await.unwrap(), 0);
    assert_eq!(transport.requests(), 2);

    let server = TinyStripe::start(vec![Step::Reply {
        status: 409,
        headers: vec![],
        body: r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters"}}"#,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 5)).unwrap();
    assert!(list_products(&transport).await.is_err());
    assert_eq!(transport.requests(), 1);
}

#[tokio::test]
async fn a_rejected_key_is_an_auth_error_that_never_shows_the_key() {
    let server = TinyStripe::start(vec![Step::Reply {
        status: 401,
        headers: vec![],
        body: r#"{"error":{"type":"invalid_request_error","message":"Invalid API Key provided: sk_test_51TinyStripeSecretValue0123WXYZ"}}"#,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 5)).unwrap();
    let err = list_products(&transport).await.unwrap_err();
    assert_eq!(transport.requests(), 1, "a rejected key is not retried");
    assert!(matches!(err, StripeError::Auth { status: 401, .. }), "{err:?}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("TinyStripeSecret"), "{shown}");
    }
    assert!(err.to_string().contains("check STRIPE_API_KEY"), "{err}");
    assert!(err.to_string().contains("sk_test_…WXYZ"), "{err}");
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let server = TinyStripe::start(vec![Step::Drop, Step::Drop]).await;
    let transport = Transport::new(&config(&server.base, 5)).unwrap();
    assert_eq!(list_products(&transport).await.unwrap(), 0);
    assert_eq!(transport.requests(), 3);
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn connections_dropped_every_time_end_in_a_transport_error_naming_the_request() {
    let server = TinyStripe::start(vec![Step::Drop, Step::Drop, Step::Drop]).await;
    let transport = Transport::new(&config(&server.base, 2)).unwrap();
    let err = list_products(&transport).await.unwrap_err();
    assert!(matches!(err, StripeError::Transport { attempts: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("GET /v1/products"), "{err}");
}

#[tokio::test]
async fn an_attempt_without_an_answer_times_out_and_is_retried() {
    let server = TinyStripe::start(vec![Step::Hang]).await;
    let mut config = config(&server.base, 3);
    config.timeout = Duration::from_millis(200);
    let transport = Transport::new(&config).unwrap();
    assert_eq!(list_products(&transport).await.unwrap(), 0);
    assert_eq!(transport.requests(), 2);
}

#[tokio::test]
async fn refused_connections_are_retried_then_reported() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let transport = Transport::new(&config(&format!("http://127.0.0.1:{port}"), 2)).unwrap();
    let err = list_products(&transport).await.unwrap_err();
    assert_eq!(transport.requests(), 3);
    assert!(matches!(err, StripeError::Transport { .. }), "{err:?}");
    assert!(!err.to_string().contains("TinyStripeSecret"));
}

#[tokio::test]
async fn requests_carry_the_key_the_pinned_version_and_reuse_one_connection() {
    let server = TinyStripe::start(vec![]).await;
    let transport = Transport::new(&config(&server.base, 0)).unwrap();
    for _ in 0..5 {
        list_products(&transport).await.unwrap();
    }
    let log = server.requests();
    assert_eq!(log.len(), 5);
    for request in &log {
        assert_eq!(request.method, "GET");
        assert!(request.target.starts_with("/v1/products?"), "{}", request.target);
        assert_eq!(request.header("authorization"), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!(
            request.header("stripe-version"),
            Some(stripe_client_core::VERSION.as_str())
        );
        assert_eq!(
            request.header("idempotency-key"),
            None,
            "reads carry no idempotency key"
        );
    }
    assert_eq!(
        server.connections.load(Ordering::SeqCst),
        1,
        "keep-alive: one connection for all"
    );
}

#[tokio::test]
async fn a_retried_post_keeps_one_idempotency_key() {
    let server = TinyStripe::start(vec![Step::Reply {
        status: 500,
        headers: vec![],
        body: SERVER_ERROR,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 2)).unwrap();
    // The reply is no customer, so decoding fails; only the requests matter here.
    let result = stripe_core::customer::CreateCustomer::new()
        .email("a@example.com")
        .customize()
        .send(&transport)
        .await;
    assert!(matches!(result, Err(StripeError::Decode { .. })), "{result:?}");
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "POST");
    let key = log[0]
        .header("idempotency-key")
        .expect("POST carries an idempotency key");
    assert!(!key.is_empty());
    assert_eq!(log[1].header("idempotency-key"), Some(key));
    assert_eq!(log[0].header("content-type"), Some("application/x-www-form-urlencoded"));
}

#[tokio::test]
async fn a_response_that_does_not_fit_async_stripe_types_is_a_decode_error() {
    let server = TinyStripe::start(vec![Step::Reply {
        status: 200,
        headers: vec![],
        body: r#"{"object":"list","data":[{"id":"prod_1"}],"has_more":false,"url":"/v1/products"}"#,
    }])
    .await;
    let transport = Transport::new(&config(&server.base, 0)).unwrap();
    assert!(matches!(
        list_products(&transport).await,
        Err(StripeError::Decode { .. })
    ));
}

#[tokio::test]
async fn the_rate_ceiling_holds_over_a_burst() {
    let server = TinyStripe::start(vec![]).await;
    let mut config = config(&server.base, 0);
    config.rps = Some(20);
    let transport = Arc::new(Transport::new(&config).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let transport = transport.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                list_products(&transport).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let times: Vec<Instant> = server.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 60);
    let allowed = 20 + RateCeiling::burst(20) as usize + 1;
    let busiest = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= allowed,
        "{busiest} requests within one second, ceiling {allowed}"
    );
}
