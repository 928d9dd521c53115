//! The HTTP transport under async-stripe's request builders, owned here
//! because async-stripe's own client never retries, ignores `Retry-After`
//! and opens a connection per request. This module owns the wire policy:
//! one pooled keep-alive client (https via rustls/webpki roots, plain http
//! for loopback fakes), retries (on `backon`) with exponential backoff and
//! jitter that honour `Retry-After` and `Stripe-Should-Retry`, a client-side rate
//! ceiling (governor), a per-attempt timeout, and counters of every HTTP
//! attempt made and of the 429s among them.
//!
//! A `429` is not only a retry: its `Retry-After` (or the computed backoff)
//! holds the whole endpoint, so the other requests a run has in flight to
//! it wait too instead of each earning its own 429.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stripe_client_core::{CustomizedStripeRequest, IdempotencyKey, RequestBuilder, StripeClient, StripeMethod};

use super::config::{RateCeiling, StripeConfig, normalise_base, quota};
use super::error::StripeError;
use super::key::redact;

/// A `Retry-After` longer than this is a misbehaving server, not a plan.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A Stripe HTTP client with licensync's wire policy; usable directly by
/// async-stripe requests (`.customize().send(&transport)`).
pub struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Scheme and authority (plus any path prefix), no trailing slash.
    base: String,
    auth: HeaderValue,
    masked_key: String,
    ceiling: RateCeiling,
    global: DefaultDirectRateLimiter,
    per_endpoint: Option<DefaultKeyedRateLimiter<String>>,
    /// Endpoints Stripe answered 429, held until the time it asked for.
    held: Mutex<HashMap<String, tokio::time::Instant>>,
    timeout: Duration,
    max_retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    requests: AtomicU64,
    rate_limited: AtomicU64,
    /// [`StripeConfig::account`].
    account: Option<String>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("base", &self.base)
            .field("key", &self.masked_key)
            .field("ceiling", &self.ceiling)
            .field("requests", &self.requests())
            .field("rate_limited", &self.rate_limited())
            .finish_non_exhaustive()
    }
}

/// `/v1/checkout` for `/checkout/sessions/cs_1/line_items`: the endpoint
/// family Stripe's per-endpoint limits apply to.
fn endpoint_of(path: &str) -> String {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    format!("/v1/{first}")
}

fn method_of(method: StripeMethod) -> Method {
    match method {
        StripeMethod::Get => Method::GET,
        StripeMethod::Post => Method::POST,
        StripeMethod::Delete => Method::DELETE,
    }
}

/// The whole cause chain of a transport error, e.g. "client error
/// (SendRequest): connection closed before message completed".
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    redact(&text)
}

/// Stripe's error envelope `{"error":{"type","code","message"}}`.
struct Envelope {
    error_type: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

fn parse_envelope(body: &[u8]) -> Envelope {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |name: &str| value["error"][name].as_str().map(redact);
    Envelope {
        error_type: field("type"),
        code: field("code"),
        message: field("message"),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = header_str(headers, "retry-after")?.trim().parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs).min(MAX_RETRY_AFTER))
}

/// Whether a 2xx body is shaped as Stripe's answers are, one JSON object:
/// what a proxy or a captive portal sends instead (an HTML page, plain
/// text) or a body cut off where the connection closed is not. The decoder
/// reads the object itself; parsing every page a second time here, only to
/// tell, cost a first import about 4% of its CPU (BENCHMARKS.md, issue 18).
fn is_json_object(body: &[u8]) -> bool {
    let body = body.trim_ascii();
    body.first() == Some(&b'{') && body.last() == Some(&b'}')
}

/// Why a 2xx answer that is not JSON is unusable, with the start of it.
fn not_json(status: u16, headers: &HeaderMap, body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body).chars().take(100).collect();
    format!(
        "HTTP {status} answer is not JSON (content-type {}): {}",
        header_str(headers, "content-type").unwrap_or("none"),
        redact(text.trim())
    )
}

/// One request as every attempt sends it.
struct Call<'a> {
    method: Method,
    /// `/v1/...`, for errors and logs.
    path: String,
    uri: String,
    body: Option<&'a str>,
    idempotency_key: Option<String>,
    /// [`endpoint_of`] the path: what a 429 holds.
    endpoint: String,
    timeout: Duration,
    account: Option<&'a str>,
}

/// An attempt that brought no usable answer.
struct Failed {
    error: StripeError,
    /// Another attempt may succeed (a network failure, a 429, a 5xx, a
    /// lock timeout, or whatever `Stripe-Should-Retry` says).
    retryable: bool,
    /// The server's `Retry-After`, waited instead of the backoff.
    retry_after: Option<Duration>,
}

enum Attempt {
    Answered {
        status: u16,
        headers: HeaderMap,
        body: Bytes,
    },
    Failed(String),
}

impl Transport {
    pub fn new(config: &StripeConfig) -> Result<Transport, StripeError> {
        let base = normalise_base(&config.base_url)?;
        if config.rps == Some(0) {
            return Err(StripeError::Config(
                "LICENSYNC_STRIPE_RPS must be at least 1 (requests per second)".into(),
            ));
        }
        let mut auth = HeaderValue::try_from(format!("Bearer {}", config.api_key.expose()))
            .map_err(|_| StripeError::Config("STRIPE_API_KEY is not a valid header value".into()))?;
        auth.set_sensitive(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .pool_max_idle_per_host(16)
            .build(connector);
        let ceiling = RateCeiling::for_mode(config.api_key.livemode(), config.rps);
        Ok(Transport {
            client,
            base,
            auth,
            masked_key: config.api_key.masked(),
            ceiling,
            global: RateLimiter::direct(quota(ceiling.global_rps)),
            per_endpoint: ceiling.per_endpoint_rps.map(|r| RateLimiter::keyed(quota(r))),
            held: Mutex::new(HashMap::new()),
            timeout: config.timeout,
            max_retries: config.max_retries,
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff,
            requests: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            account: config.account.clone(),
        })
    }

    /// Every HTTP attempt made so far, retries included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The attempts Stripe answered 429 (rate limited), retried or not.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    pub fn ceiling(&self) -> RateCeiling {
        self.ceiling
    }

    /// Holds `endpoint` for `wait`: requests to it start no sooner.
    fn hold(&self, endpoint: &str, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut held = self.held.lock().expect("held endpoints lock");
        let entry = held.entry(endpoint.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Waits until `endpoint` is no longer held by a 429.
    async fn wait_while_held(&self, endpoint: &str) {
        loop {
            let until = {
                let mut held = self.held.lock().expect("held endpoints lock");
                match held.get(endpoint) {
                    Some(&until) if until > tokio::time::Instant::now() => until,
                    Some(_) => {
                        held.remove(endpoint);
                        return;
                    }
                    None => return,
                }
            };
            tokio::time::sleep_until(until).await;
        }
    }

    /// The waits between attempts: exponential growth from
    /// `initial_backoff`, capped at `max_backoff`, with jitter in the upper
    /// half of each wait so that parallel clients do not retry in lockstep
    /// (backon adds up to the wait again, so it starts from half of it),
    /// one wait per retry allowed.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.initial_backoff.min(self.max_backoff) / 2)
            .with_max_delay(self.max_backoff / 2)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(usize::try_from(self.max_retries).unwrap_or(usize::MAX))
    }

    /// Sends one Stripe request with the retry and rate policy; the body of
    /// a 2xx answer, or the reason there is none. backon retries what
    /// `attempt_once` calls retryable, waiting the server's `Retry-After`
    /// when it gave one, else the backoff.
    /// A POST carries `idempotency_key`, or a random one, the same for every
    /// attempt.
    pub async fn send(
        &self,
        request: &RequestBuilder,
        timeout: Option<Duration>,
        account: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Bytes, StripeError> {
        let method = method_of(request.method);
        let path = format!("/v1{}", request.path);
        let mut uri = format!("{}{path}", self.base);
        if let Some(query) = request.query.as_deref().filter(|q| !q.is_empty()) {
            uri.push('?');
            uri.push_str(query);
        }
        let call = Call {
            // One key for every attempt, so a retried POST cannot apply twice.
            idempotency_key: (method == Method::POST)
                .then(|| idempotency_key.map_or_else(|| IdempotencyKey::new_uuid_v4().into_inner(), str::to_owned)),
            method,
            path,
            uri,
            body: request.body.as_deref(),
            endpoint: endpoint_of(&request.path),
            timeout: timeout.unwrap_or(self.timeout),
            account: account.or(self.account.as_deref()),
        };
        let attempts = AtomicU32::new(0);
        (|| self.attempt_once(&call, attempts.fetch_add(1, Ordering::Relaxed) + 1))
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(|failed| failed.retryable)
            .adjust(|failed, wait| wait.map(|wait| failed.retry_after.unwrap_or(wait)))
            .notify(|failed, wait| self.before_retry(&call, failed, wait))
            .await
            .map_err(|failed| failed.error)
    }

    /// A 429 holds its endpoint for the wait; every retry is logged.
    fn before_retry(&self, call: &Call<'_>, failed: &Failed, wait: Duration) {
        let (method, path) = (&call.method, &call.path);
        match &failed.error {
            StripeError::Api {
                status,
                attempts,
                request_id,
                ..
            } => {
                if *status == 429 {
                    self.hold(&call.endpoint, wait);
                }
                tracing::warn!(%method, %path, status, attempts, ?wait, request_id = request_id.as_deref().unwrap_or("-"), "Stripe answered with a retryable error; retrying");
            }
            StripeError::Transport { attempts, reason, .. } => {
                tracing::warn!(%method, %path, attempts, ?wait, %reason, "Stripe request failed; retrying");
            }
            other => tracing::warn!(%method, %path, ?wait, error = %other, "retrying"),
        }
    }

    /// One HTTP attempt (number `attempts`, from 1) after any hold and the
    /// rate ceiling: the body of a 2xx answer, or why not and whether a
    /// retry may help.
    async fn attempt_once(&self, call: &Call<'_>, attempts: u32) -> Result<Bytes, Failed> {
        self.wait_while_held(&call.endpoint).await;
        self.global.until_ready().await;
        if let Some(limiter) = &self.per_endpoint {
            limiter.until_key_ready(&call.endpoint).await;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = match tokio::time::timeout(call.timeout, self.attempt(call)).await {
            Ok(outcome) => outcome,
            Err(_) => Attempt::Failed(format!("no complete response within {:?}", call.timeout)),
        };
        let outcome = match outcome {
            // Stripe always answers JSON: a 2xx that is not (a proxy's or
            // portal's HTML page) is a failed attempt, retried like one.
            Attempt::Answered { status, headers, body } if (200..300).contains(&status) && !is_json_object(&body) => {
                Attempt::Failed(not_json(status, &headers, &body))
            }
            other => other,
        };
        let (status, headers, body) = match outcome {
            Attempt::Answered { status, headers, body } => (status, headers, body),
            Attempt::Failed(reason) => {
                return Err(Failed {
                    retryable: true,
                    retry_after: None,
                    error: StripeError::Transport {
                        method: call.method.to_string(),
                        path: call.path.clone(),
                        attempts,
                        reason,
                    },
                });
            }
        };
        if (200..300).contains(&status) {
            return Ok(body);
        }
        if status == 429 {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        let request_id = header_str(&headers, "request-id").map(str::to_owned);
        let envelope = parse_envelope(&body);
        let message = envelope.message.clone().unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.chars().take(200).collect();
            if text.trim().is_empty() {
                "(empty body)".into()
            } else {
                redact(&text)
            }
        });
        if status == 401 || status == 403 {
            return Err(Failed {
                retryable: false,
                retry_after: None,
                error: StripeError::Auth {
                    key: self.masked_key.clone(),
                    method: call.method.to_string(),
                    path: call.path.clone(),
                    status,
                    request_id,
                    message,
                },
            });
        }
        let retryable = match header_str(&headers, "stripe-should-retry") {
            Some("true") => true,
            Some("false") => false,
            _ => status == 429 || status >= 500 || (status == 409 && envelope.code.as_deref() == Some("lock_timeout")),
        };
        Err(Failed {
            retryable,
            retry_after: retry_after(&headers),
            error: StripeError::Api {
                method: call.method.to_string(),
                path: call.path.clone(),
                status,
                request_id,
                error_type: envelope.error_type,
                message,
                attempts,
            },
        })
    }

    async fn attempt(&self, call: &Call<'_>) -> Attempt {
        let mut builder = Request::builder()
            .method(call.method.clone())
            .uri(&call.uri)
            .header(AUTHORIZATION, self.auth.clone())
            .header(USER_AGENT, concat!("licensync/", env!("CARGO_PKG_VERSION")))
            .header(
                HeaderName::from_static("stripe-version"),
                stripe_client_core::VERSION.as_str(),
            );
        if let Some(key) = &call.idempotency_key {
            builder = builder.header(HeaderName::from_static("idempotency-key"), key);
        }
        if let Some(account) = call.account {
            builder = builder.header(HeaderName::from_static("stripe-account"), account);
        }
        let body = call.body;
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = match builder.body(Full::new(
            body.map(|b| Bytes::copy_from_slice(b.as_bytes())).unwrap_or_default(),
        )) {
            Ok(request) => request,
            Err(e) => return Attempt::Failed(format!("could not build the request: {e}")),
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(e) => return Attempt::Failed(error_chain(&e)),
        };
        let (parts, body) = response.into_parts();
        match body.collect().await {
            Ok(collected) => Attempt::Answered {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: collected.to_bytes(),
            },
            Err(e) => Attempt::Failed(error_chain(&e)),
        }
    }
}

impl StripeClient for Transport {
    type Err = StripeError;

    /// async-stripe's per-request timeout and account overrides are honoured,
    /// and the idempotency key of its request strategy; the rest of the
    /// strategy is not: retries are this transport's policy.
    fn execute(
        &self,
        req: CustomizedStripeRequest,
    ) -> impl std::future::Future<Output = Result<Bytes, StripeError>> + Send {
        let (request, overrides) = req.into_pieces();
        async move {
            let account = overrides.account_id.as_ref().map(|a| a.as_str().to_owned());
            let key = overrides.request_strategy.as_ref().and_then(|s| s.get_key());
            let key = key.as_ref().map(|k| k.as_str());
            self.send(&request, overrides.timeout, account.as_deref(), key).await
        }
    }
}

#[cfg(test)]
mod tests;
