//! The HTTP side: an axum router for the read endpoints and the metadata
//! writes (`writes`), wrapped in a hyper service that resolves the request's
//! account from its key and `Stripe-Account` header, applies that account's
//! rate limits and injected faults, stamps `Request-Id` and logs every
//! request, reads and writes alike. Serving through hyper directly (rather
//! than `axum::serve`) is what lets a fault close a connection without answering:
//! a service error makes hyper drop the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use axum::routing::get;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::accounts::{Account, Accounts};
use crate::api;
use crate::wire::ApiError;
use crate::writes::{self, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, WriteRequest};
use crate::{FaultKind, LoggedRequest};

/// The account a request is served from, handed to the router's handlers.
type Served = Extension<Arc<Account>>;

/// A request's `Request-Id`, handed to the router's handlers: the events a
/// write records name it.
#[derive(Clone)]
struct RequestId(String);

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
    pub async fn spawn(addr: SocketAddr, accounts: Arc<Accounts>) -> std::io::Result<ServerTask> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = router();
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
                let (accounts, router) = (accounts.clone(), router.clone());
                let service = hyper::service::service_fn(move |req| handle(accounts.clone(), router.clone(), req));
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
    accounts: Arc<Accounts>,
    router: Router,
    req: Request<Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let at = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let addressed = accounts.address(req.headers());
    let account = addressed.account;
    // The limits count requests as they arrive; the latency (the way there
    // and back, and Stripe's own time) is slept with no lock held.
    let over_limit = account.limits.admit(&path);
    if let Some(delay) = accounts.conditions.draw_latency() {
        tokio::time::sleep(delay).await;
    }
    let fault = if over_limit.is_some() {
        None
    } else {
        account.lock().take_fault(&path)
    };
    let request_id = accounts.next_request_id();
    let log = |status: u16| {
        accounts.record(LoggedRequest {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            status,
            at,
            account: addressed.logged.clone(),
        });
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
                let response = match addressed.denied {
                    Some(err) => error_response(err),
                    None => {
                        let mut req = req.map(Body::new);
                        req.extensions_mut().insert(account.clone());
                        req.extensions_mut().insert(RequestId(request_id.clone()));
                        match router.oneshot(req).await {
                            Ok(resp) => resp,
                            Err(never) => match never {},
                        }
                    }
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

/// A write's answer, with Stripe's idempotency headers: the key echoed,
/// and `Idempotent-Replayed: true` on a replay.
fn write_reply(answer: writes::Answer, idempotency_key: Option<&str>) -> Response<Body> {
    let mut resp = json_response(answer.status, &answer.body);
    let headers = resp.headers_mut();
    if let Some(key) = idempotency_key.and_then(|k| HeaderValue::from_str(k).ok()) {
        headers.insert(IDEMPOTENCY_KEY, key);
    }
    if answer.replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

/// `POST /v1/<collection>/{id}` of a type that takes metadata writes.
fn post_write(
    ty: &str,
    account: &Account,
    request_id: &RequestId,
    id: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<Body> {
    let idempotency_key = headers.get(IDEMPOTENCY_KEY).and_then(|v| v.to_str().ok());
    let req = WriteRequest {
        ty,
        id,
        path: uri.path(),
        body,
        idempotency_key,
        request_id: &request_id.0,
    };
    let to = writes::To {
        writes: &account.writes,
        api_key: &account.api_key,
        account_id: &account.id,
    };
    write_reply(writes::write(to, || account.lock(), &req), idempotency_key)
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

fn router() -> Router {
    let mut router = Router::new();
    for &(path, ty) in COLLECTIONS {
        router = router
            .route(
                path,
                get(move |Extension(account): Served, RawQuery(q): RawQuery| async move {
                    reply(api::list(&account.lock(), ty, path, q.as_deref()))
                }),
            )
            .route(&format!("{path}/{{id}}"), {
                let one = get(
                    move |Extension(account): Served, Path(id): Path<String>, RawQuery(q): RawQuery| async move {
                        reply(api::retrieve(&account.lock(), ty, &id, q.as_deref()))
                    },
                );
                if writes::writable(ty) {
                    one.post(
                        move |account: Served,
                              request_id: Extension<RequestId>,
                              id: Path<String>,
                              uri: Uri,
                              headers: HeaderMap,
                              body: Bytes| async move {
                            post_write(ty, &account, &request_id, &id, &uri, &headers, &body)
                        },
                    )
                } else {
                    one
                }
            });
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
                move |Extension(account): Served, Path(id): Path<String>, RawQuery(q): RawQuery| async move {
                    let url = format!("{}/{id}/{suffix}", route.split("/{id}").next().unwrap_or_default());
                    reply(api::list_children(
                        &account.lock(),
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
    router.fallback(unrecognized).method_not_allowed_fallback(unrecognized)
}

async fn unrecognized(method: Method, uri: Uri) -> Response<Body> {
    let message = format!(
        "Unrecognized request URL ({method}: {}). fake-stripe serves the read endpoints licensync uses \
         and the metadata writes of its write-back (POST /v1/subscription_items/{{id}}, \
         /v1/payment_intents/{{id}}, /v1/invoices/{{id}}).",
        uri.path()
    );
    error_response(ApiError::new(404, "invalid_request_error", None, message, None))
}
