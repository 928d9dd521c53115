//! The HTTP side: an axum router for the read endpoints, wrapped in a hyper
//! service that applies injected faults, checks the API key, stamps
//! `Request-Id` and logs every request. Serving through hyper directly (rather
//! than `axum::serve`) is what lets a fault close a connection without answering:
//! a service error makes hyper drop the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use axum::routing::get;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::api::{self, ApiError};
use crate::conditions::Conditions;
use crate::state::State;
use crate::{FaultKind, LoggedRequest};

type Shared = Arc<Mutex<State>>;

/// The accept loop; aborted when the last [`crate::FakeStripe`] clone goes away.
pub(crate) struct ServerTask {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ServerTask {
    pub async fn spawn(addr: SocketAddr, state: Shared, conditions: Arc<Conditions>) -> std::io::Result<ServerTask> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = router(state.clone());
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (state, router, conditions) = (state.clone(), router.clone(), conditions.clone());
                let service = hyper::service::service_fn(move |req| {
                    handle(state.clone(), conditions.clone(), router.clone(), req)
                });
                tokio::spawn(async move {
                    // A dropped connection (fault or client gone) ends here; nothing to report.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(ServerTask { addr, task })
    }
}

/// The error that makes hyper close a connection without a response.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected fault: connection dropped")
    }
}

impl std::error::Error for DropConnection {}

const RATE_LIMIT_MESSAGE: &str =
    "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.";

/// Stripe's answer to a request over a rate limit.
fn rate_limited(retry_after_secs: u64) -> Response<Body> {
    let err = ApiError::new(
        429,
        "invalid_request_error",
        Some("rate_limit"),
        RATE_LIMIT_MESSAGE.into(),
        None,
    );
    let mut resp = error_response(err);
    let headers = resp.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    headers.insert("stripe-should-retry", HeaderValue::from_static("true"));
    resp
}

async fn handle(
    state: Shared,
    conditions: Arc<Conditions>,
    router: Router,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let at = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    // The limits count requests as they arrive; the latency (the way there
    // and back, and Stripe's own time) is slept with no lock held.
    let over_limit = conditions.admit(&path);
    if let Some(delay) = conditions.draw_latency() {
        tokio::time::sleep(delay).await;
    }
    let (fault, request_id, api_key) = {
        let mut st = lock(&state);
        let fault = if over_limit.is_some() {
            None
        } else {
            st.take_fault(&path)
        };
        (fault, st.next_request_id(), st.api_key.clone())
    };
    let log = |status: u16| {
        let entry = LoggedRequest {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            status,
            at,
        };
        lock(&state).requests.push(entry);
    };
    let mut response = if let Some(retry_after_secs) = over_limit {
        rate_limited(retry_after_secs)
    } else {
        match fault {
            Some(FaultKind::DropConnection) => {
                log(0);
                return Err(DropConnection);
            }
            Some(FaultKind::TooManyRequests { retry_after_secs }) => rate_limited(retry_after_secs),
            Some(FaultKind::ServerError(status)) => {
                let message = "An unknown error occurred. Please retry your request (injected fault).";
                let mut resp = error_response(ApiError::new(status, "api_error", None, message.into(), None));
                resp.headers_mut()
                    .insert("stripe-should-retry", HeaderValue::from_static("true"));
                resp
            }
            Some(FaultKind::TooManyRequestsWithoutRetryAfter) => error_response(ApiError::new(
                429,
                "invalid_request_error",
                Some("rate_limit"),
                RATE_LIMIT_MESSAGE.into(),
                None,
            )),
            Some(FaultKind::NonJsonBody(status)) => Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY))
                .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
                .body(Body::from(
                    "<html><head><title>Gateway</title></head><body><h1>Upstream unavailable</h1>\n\
                     <p>injected fault: this is not Stripe's JSON</p></body></html>\n",
                ))
                .expect("a static response is valid"),
            fault => {
                if let Some(FaultKind::Latency(delay)) = fault {
                    tokio::time::sleep(delay).await;
                }
                let response = match authenticate(req.headers(), &api_key) {
                    Err(err) => error_response(err),
                    Ok(()) => match router.oneshot(req.map(Body::new)).await {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    },
                };
                if let Some(FaultKind::TruncatedBody) = fault {
                    truncated(response).await
                } else {
                    response
                }
            }
        }
    };
    let id = HeaderValue::from_str(&request_id).expect("request ids are ASCII");
    response.headers_mut().insert("request-id", id);
    log(response.status().as_u16());
    Ok(response)
}

/// `response` with the same status and headers, a `Content-Length` of its
/// whole body, and a body that stops with an error after the first half:
/// hyper then closes the connection mid-body.
async fn truncated(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let whole = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(whole.len()));
    let half = whole.slice(..whole.len() / 2);
    Response::from_parts(
        parts,
        Body::new(CutOff {
            first: Some(half),
            pause: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
        }),
    )
}

/// A body that yields its one chunk, then fails. The failure waits a moment,
/// so that hyper flushes the headers and the chunk before it closes the
/// connection (it buffers them together).
struct CutOff {
    first: Option<Bytes>,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for CutOff {
    type Data = Bytes;
    type Error = DropConnection;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, DropConnection>>> {
        if let Some(chunk) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        self.pause.as_mut().poll(cx).map(|()| Some(Err(DropConnection)))
    }
}

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Accepts `Authorization: Bearer <key>` with the account's one key.
fn authenticate(headers: &HeaderMap, api_key: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match given {
        Some(key) if key == api_key => Ok(()),
        Some(key) => Err(ApiError::new(
            401,
            "invalid_request_error",
            None,
            format!("Invalid API Key provided: {}", mask_key(key)),
            None,
        )),
        None => Err(ApiError::new(
            401,
            "invalid_request_error",
            None,
            "You did not provide an API key. You need to provide your API key in the Authorization header, \
             using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
                .into(),
            None,
        )),
    }
}

/// Stripe's masking: the key's kind prefix and its last four characters, stars between.
pub(crate) fn mask_key(key: &str) -> String {
    let prefix_len = ["sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_"]
        .iter()
        .find(|p| key.starts_with(*p))
        .map_or(0, |p| p.len());
    let rest: Vec<char> = key[prefix_len..].chars().collect();
    let shown = if rest.len() >= 8 { 4 } else { 0 };
    let stars = "*".repeat(rest.len() - shown);
    let tail: String = rest[rest.len() - shown..].iter().collect();
    format!("{}{stars}{tail}", &key[..prefix_len])
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a static response is valid")
}

fn error_response(err: ApiError) -> Response<Body> {
    json_response(err.status, &err.body)
}

fn reply(result: Result<Value, ApiError>) -> Response<Body> {
    match result {
        Ok(v) => json_response(200, &v),
        Err(err) => error_response(err),
    }
}

/// Collections served at `/v1/<path>` and `/v1/<path>/{id}`, with their object type.
const COLLECTIONS: &[(&str, &str)] = &[
    ("/v1/products", "product"),
    ("/v1/prices", "price"),
    ("/v1/customers", "customer"),
    ("/v1/subscriptions", "subscription"),
    ("/v1/subscription_items", "subscription_item"),
    ("/v1/checkout/sessions", "checkout.session"),
    ("/v1/invoices", "invoice"),
    ("/v1/invoiceitems", "invoiceitem"),
    ("/v1/refunds", "refund"),
    ("/v1/disputes", "dispute"),
    ("/v1/charges", "charge"),
    ("/v1/payment_intents", "payment_intent"),
    ("/v1/events", "event"),
];

fn router(state: Shared) -> Router {
    let mut router = Router::new();
    for &(path, ty) in COLLECTIONS {
        router = router
            .route(
                path,
                get(
                    move |AxumState(st): AxumState<Shared>, RawQuery(q): RawQuery| async move {
                        reply(api::list(&lock(&st), ty, path, q.as_deref()))
                    },
                ),
            )
            .route(
                &format!("{path}/{{id}}"),
                get(
                    move |AxumState(st): AxumState<Shared>, Path(id): Path<String>, RawQuery(q): RawQuery| async move {
                        reply(api::retrieve(&lock(&st), ty, &id, q.as_deref()))
                    },
                ),
            );
    }
    let children: [(&str, &str, &str, &str); 2] = [
        (
            "/v1/checkout/sessions/{id}/line_items",
            "checkout.session",
            "item",
            "line_items",
        ),
        ("/v1/invoices/{id}/lines", "invoice", "line_item", "lines"),
    ];
    for (route, parent_ty, child_ty, suffix) in children {
        router = router.route(
            route,
            get(
                move |AxumState(st): AxumState<Shared>, Path(id): Path<String>, RawQuery(q): RawQuery| async move {
                    let url = format!("{}/{id}/{suffix}", route.split("/{id}").next().unwrap_or_default());
                    reply(api::list_children(
                        &lock(&st),
                        parent_ty,
                        &id,
                        child_ty,
                        &url,
                        q.as_deref(),
                    ))
                },
            ),
        );
    }
    router
        .fallback(unrecognized)
        .method_not_allowed_fallback(unrecognized)
        .with_state(state)
}

async fn unrecognized(method: Method, uri: Uri) -> Response<Body> {
    let message = format!(
        "Unrecognized request URL ({method}: {}). fake-stripe serves the read endpoints licensync uses.",
        uri.path()
    );
    error_response(ApiError::new(404, "invalid_request_error", None, message, None))
}

#[cfg(test)]
mod tests {
    use super::mask_key;

    #[test]
    fn masking_keeps_the_kind_and_last_four_of_long_keys_only() {
        assert_eq!(mask_key("sk_test_abcdefgh1234"), "sk_test_********1234");
        assert_eq!(mask_key("rk_live_abc"), "rk_live_***");
        assert_eq!(mask_key("nonsense"), "****ense");
        assert_eq!(mask_key("short"), "*****");
    }
}
