//! The fault kinds that licensync's fault tests (tests/faults.rs) inject
//! beyond the basic ones of protocol.rs: a pass-through that aims a fault at
//! a later request, a bare 429, a body cut off mid-transfer and an HTML page
//! instead of JSON. Each is checked on the wire, with a raw HTTP/1.1 client
//! where a normal client would hide what came (a truncated body).

mod common;

use common::{get, try_get};
use fake_stripe::{FakeStripe, Fault, FaultKind};
use std::io::{Read, Write};

fn fault(path_prefix: &str, kind: FaultKind, times: usize) -> Fault {
    Fault {
        path_prefix: path_prefix.into(),
        kind,
        times,
    }
}

/// What a raw HTTP/1.1 GET read up to the server's closing of the connection.
struct Raw {
    status: u16,
    /// Header lines, lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

async fn raw_get(fake: &FakeStripe, path: &str) -> Raw {
    let addr = fake.base_url().trim_start_matches("http://").to_owned();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        fake.api_key()
    );
    // Blocking std IO on a blocking thread: the fake serves on this runtime.
    let bytes = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        // A reset after the partial body is an end like any other here.
        let _ = stream.read_to_end(&mut bytes);
        bytes
    })
    .await
    .unwrap();
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete header block");
    let head = String::from_utf8(bytes[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    Raw {
        status,
        headers,
        body: bytes[split + 4..].to_vec(),
    }
}

#[tokio::test]
async fn pass_lets_matching_requests_through_so_that_the_next_fault_hits_a_later_one() {
    let fake = FakeStripe::start().await;
    fake.inject_fault(fault("/v1/subscriptions", FaultKind::Pass, 2));
    fake.inject_fault(fault("/v1/subscriptions", FaultKind::ServerError(500), 1));
    assert_eq!(fake.faults_left(), 3, "every request a fault is yet to hit");
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(try_get(&fake, "/v1/subscriptions").await.status);
    }
    assert_eq!(codes, [200, 200, 500, 200]);
    assert_eq!(fake.faults_left(), 0);
    // Another path neither consumes nor sees them.
    assert_eq!(try_get(&fake, "/v1/customers").await.status, 200);
}

#[tokio::test]
async fn a_bare_429_has_the_rate_limit_envelope_but_no_retry_headers() {
    let fake = FakeStripe::start().await;
    fake.inject_fault(fault("/v1/prices", FaultKind::TooManyRequestsWithoutRetryAfter, 1));
    let limited = try_get(&fake, "/v1/prices").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.body["error"]["code"], "rate_limit");
    assert_eq!(limited.body["error"]["type"], "invalid_request_error");
    assert!(!limited.headers.contains_key("retry-after"), "{:?}", limited.headers);
    assert!(!limited.headers.contains_key("stripe-should-retry"));
    assert!(limited.headers.contains_key("request-id"));
    assert_eq!(try_get(&fake, "/v1/prices").await.status, 200);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200]);
}

#[tokio::test]
async fn a_truncated_body_announces_the_whole_length_sends_half_and_closes() {
    let fake = FakeStripe::start().await;
    fake.seed_sample();
    let whole = raw_get(&fake, "/v1/products").await;
    assert_eq!(whole.status, 200);
    let length: usize = whole.header("content-length").unwrap().parse().unwrap();
    assert_eq!(whole.body.len(), length, "an untouched answer is whole");

    fake.inject_fault(fault("/v1/products", FaultKind::TruncatedBody, 1));
    let cut = raw_get(&fake, "/v1/products").await;
    assert_eq!(cut.status, 200);
    assert_eq!(
        cut.header("content-length"),
        Some(length.to_string().as_str()),
        "the headers announce the whole body"
    );
    assert_eq!(cut.body.len(), length / 2, "only the first half arrives");
    assert_eq!(cut.body, whole.body[..length / 2]);
    assert!(serde_json::from_slice::<serde_json::Value>(&cut.body).is_err());
    // The next request gets the whole answer again.
    assert_eq!(get(&fake, "/v1/products").await["object"], "list");
}

#[tokio::test]
async fn a_non_json_body_is_an_html_page_with_the_given_status() {
    let fake = FakeStripe::start().await;
    fake.inject_fault(fault("/v1/invoices", FaultKind::NonJsonBody(200), 1));
    fake.inject_fault(fault("/v1/invoices", FaultKind::NonJsonBody(502), 1));
    for status in [200, 502] {
        let reply = try_get(&fake, "/v1/invoices").await;
        assert_eq!(reply.status, status);
        assert!(reply.headers["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(reply.text.starts_with("<html>"), "{}", reply.text);
        assert!(serde_json::from_str::<serde_json::Value>(&reply.text).is_err());
    }
    assert_eq!(get(&fake, "/v1/invoices").await["object"], "list");
}
