//! The key API (`licensync serve`, docs/key-api.md): an application asks
//! whether its key is good, takes or frees a machine's seat, and gets a
//! signed token it can check again offline.
//!
//! One file per concern: `request` types a body (or refuses it with a
//! `400`), `decide` chooses the answer from a license's facts (pure, with
//! its table tests), `token` signs a `VALID` answer, `limit` holds each
//! client address to its request rate, `metrics` counts answers. This file
//! wires them into axum's router: read the facts, decide, and only when the
//! answer writes (a seat, an address, the activation clock) decide again
//! under the license's lock in one transaction (`store::activation`).
//!
//! The service never calls Stripe and never writes a license; it never logs
//! a key or a machine fingerprint (only license ids and codes), and a body,
//! whatever it holds, gets an answer or a `4xx`, never a `500`.

mod decide;
mod limit;
mod metrics;
mod request;
mod token;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{Duration, SubsecRound, Utc};
use licensync_verify::sha256_hex;
use serde_json::json;
use tokio::net::TcpListener;

pub use decide::{Ask, Code, Decision, Question, decide, limit};
pub use limit::RateLimit;
pub use request::{Body, Rejection};
pub use token::{KeyEntry, Keys};

use crate::domain::License;
use crate::shutdown::Shutdown;
use crate::store::{KeyQuery, Store, blocking};
use metrics::Metrics;

/// Bodies over this are refused with `413`.
pub const MAX_BODY: usize = 8 * 1024;

/// Everything a request needs, shared by all of them.
pub struct Service {
    pub store: Store,
    pub keys: Keys,
    /// `--ip-window`: how far back client addresses count for `ip_limit`.
    pub ip_window: Duration,
    /// `--trust-forwarded-for`: the client is the last `X-Forwarded-For` hop.
    pub trust_forwarded_for: bool,
    pub rate_limit: RateLimit,
    /// As many database tasks at once as the pool has connections: the
    /// others wait here, not in blocking threads contending for the pool.
    db_slots: tokio::sync::Semaphore,
    metrics: Metrics,
}

impl Service {
    pub fn new(store: Store, keys: Keys, ip_window: Duration, trust_forwarded_for: bool, rate: u32) -> Service {
        Service {
            db_slots: tokio::sync::Semaphore::new(store.pool_size() as usize),
            store,
            keys,
            ip_window,
            trust_forwarded_for,
            rate_limit: RateLimit::per_second(rate),
            metrics: Metrics::new(),
        }
    }
}

/// The key API's own routes (its answers and its public keys), for a
/// server that adds its own `/healthz` and `/metrics` (the daemon's).
pub fn routes(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/licenses/validate", post(validate))
        .route("/v1/licenses/activate", post(activate))
        .route("/v1/licenses/deactivate", post(deactivate))
        .route("/v1/keys", get(keys))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(service)
}

/// `serve`'s routes: the key API with its probe and its metrics.
pub fn router(service: Arc<Service>) -> Router {
    json_fallbacks(
        routes(service.clone()).merge(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/metrics", get(metrics))
                .with_state(service),
        ),
    )
}

/// An unknown path or method answers JSON like every other refusal.
pub(crate) fn json_fallbacks(router: Router) -> Router {
    router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method",
            )
        })
}

/// Serves until `shutdown`, then finishes the requests in flight.
pub async fn serve(listener: TcpListener, service: Arc<Service>, mut shutdown: Shutdown) -> Result<()> {
    let sweeper = sweep(service.clone(), shutdown.clone());
    let app = router(service).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.recv().await })
        .await
        .context("serving the key API")?;
    sweeper.abort();
    Ok(())
}

/// Every minute until `shutdown`: forgets client addresses once the IP
/// window no longer needs them, and idle clients' rate buckets.
pub fn sweep(service: Arc<Service>, mut shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.recv() => return,
            }
            service.rate_limit.forget_idle();
            let (store, before) = (service.store.clone(), Utc::now() - service.ip_window);
            match blocking(move || store.forget_addresses(before)).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(addresses = n, "forgot client addresses past the IP window"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not forget old client addresses"),
            }
        }
    })
}

impl Service {
    /// Whether the license database answers.
    pub async fn database_answers(&self) -> bool {
        let store = self.store.clone();
        matches!(blocking(move || Ok(store.ping())).await, Ok(true))
    }

    /// The key API's metrics in the Prometheus text format, to serve beside
    /// another's (the daemon's).
    pub fn metrics_text(&self) -> Result<String> {
        self.metrics.render_prometheus()
    }
}

/// `{"error": {"code", "message"}}` with `status`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        error(self.status, self.code, &self.message)
    }
}

/// The client's address: the peer's, or the last `X-Forwarded-For` hop
/// behind a proxy the operator trusts.
fn client_address(service: &Service, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    // The last hop only: the proxy wrote it; earlier hops are the client's word.
    let last_hop = headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|hop| hop.trim().parse::<IpAddr>().ok());
    match last_hop {
        Some(hop) if service.trust_forwarded_for => hop,
        _ => peer.ip(),
    }
}

/// The rate limit, then the body: a request over the rate is refused
/// before its body is parsed. The error is the response to send.
#[allow(clippy::result_large_err)]
fn admit(
    service: &Service,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    need_machine: bool,
) -> Result<(IpAddr, Body), Response> {
    let address = client_address(service, peer, headers);
    if let Err(wait) = service.rate_limit.check(address) {
        service.metrics.rejected(StatusCode::TOO_MANY_REQUESTS);
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this address; retry later",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
        return Err(response);
    }
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        service.metrics.rejected(status);
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the body is over {MAX_BODY} bytes")
        } else {
            "the body could not be read".to_owned()
        };
        error(status, "bad_request", &message)
    })?;
    let body = request::parse(&bytes, need_machine).map_err(|rejection| {
        service.metrics.rejected(rejection.status);
        rejection.into_response()
    })?;
    Ok((address, body))
}

async fn validate(
    State(service): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match admit(&service, peer, &headers, body, false) {
        Ok((address, body)) => answer(service, address, body, Ask::Validate).await,
        Err(response) => response,
    }
}

async fn activate(
    State(service): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match admit(&service, peer, &headers, body, true) {
        Ok((address, body)) => {
            let name = body.name.clone();
            answer(service, address, body, Ask::Activate { name }).await
        }
        Err(response) => response,
    }
}

/// What a request found: the license (none: `NOT_FOUND`) and the decision.
type Found = Option<(License, Decision)>;

async fn answer(service: Arc<Service>, address: IpAddr, body: Body, ask: Ask) -> Response {
    let started = Instant::now();
    // Microseconds, as the database keeps times: the clock an answer starts
    // shows the same expiry in this answer as in every later one.
    let now = Utc::now().trunc_subsecs(6);
    let machine_hash = body.machine.as_deref().map(sha256_hex);
    let slot = service.db_slots.acquire().await;
    let found = {
        let (service, body, machine_hash) = (service.clone(), body.clone(), machine_hash.clone());
        blocking(move || -> Result<Found> {
            let address = address.to_string();
            let query = KeyQuery {
                key: &body.key,
                machine_hash: machine_hash.as_deref(),
                address: &address,
                window_start: now - service.ip_window,
            };
            let question = Question {
                ask,
                product: body.product.as_deref(),
                machine_hash: machine_hash.as_deref(),
                address: &address,
                now,
            };
            // A validation seldom writes: decide on the facts read without a
            // lock, and only when that answer writes, decide again under it.
            // An activation of a new machine always writes: straight to the lock.
            if question.ask == Ask::Validate {
                let Some(facts) = service.store.key_facts(&query)? else {
                    return Ok(None);
                };
                let first = decide(&facts, &question);
                if first.writes.is_empty() {
                    return Ok(Some((facts.license, first)));
                }
            }
            service.store.key_request(&query, now, |facts| {
                let decision = decide(facts, &question);
                let writes = decision.writes.clone();
                ((facts.license.clone(), decision), writes)
            })
        })
        .await
    };
    drop(slot);
    let found = match found {
        Ok(found) => found,
        Err(e) => return unavailable(&service, &e),
    };
    let token = match &found {
        Some((license, decision)) if decision.code == Code::Valid => {
            match service.keys.sign(
                license,
                decision.expires_at,
                machine_hash.as_deref(),
                body.nonce.as_deref(),
                now,
            ) {
                Ok(token) => Some(token),
                Err(e) => return unavailable(&service, &e),
            }
        }
        _ => None,
    };
    let (code, license) = match &found {
        None => (Code::NotFound, None),
        Some((license, decision)) => (decision.code, Some((license, decision))),
    };
    service.metrics.answered(code, started.elapsed());
    tracing::debug!(
        license_id = found.as_ref().map(|(l, _)| l.id),
        code = code.as_ref(),
        "key API answer"
    );
    reply(code, license, token, body.nonce.as_deref())
}

async fn deactivate(
    State(service): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (address, body) = match admit(&service, peer, &headers, body, true) {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let started = Instant::now();
    // Microseconds, as the database keeps times: the clock an answer starts
    // shows the same expiry in this answer as in every later one.
    let now = Utc::now().trunc_subsecs(6);
    let machine_hash = body.machine.as_deref().map(sha256_hex).unwrap_or_default();
    let found = {
        let (service, key) = (service.clone(), body.key.clone());
        blocking(move || -> Result<Option<(License, Decision)>> {
            let address = address.to_string();
            let query = KeyQuery {
                key: &key,
                machine_hash: Some(&machine_hash),
                address: &address,
                window_start: now - service.ip_window,
            };
            let Some(facts) = service.store.key_facts(&query)? else {
                return Ok(None);
            };
            let freed =
                facts.machine_seen.is_some() && service.store.deactivate_machine(facts.license.id, &machine_hash)?;
            let decision = Decision {
                code: if freed {
                    Code::Deactivated
                } else {
                    Code::MachineNotActivated
                },
                writes: Default::default(),
                status: facts.license.state.status,
                expires_at: facts.license.state.expires_at,
                machines: facts.machines - i64::from(freed),
            };
            Ok(Some((facts.license, decision)))
        })
        .await
    };
    let found = match found {
        Ok(found) => found,
        Err(e) => return unavailable(&service, &e),
    };
    let code = found.as_ref().map_or(Code::NotFound, |(_, d)| d.code);
    service.metrics.answered(code, started.elapsed());
    reply(code, found.as_ref().map(|(l, d)| (l, d)), None, body.nonce.as_deref())
}

/// Every answer has this one shape, `NOT_FOUND` included, with status 200.
#[derive(serde::Serialize)]
struct Answer<'a> {
    valid: bool,
    code: Code,
    detail: &'static str,
    license: Option<LicenseView<'a>>,
    token: Option<String>,
    nonce: Option<&'a str>,
}

/// The license as an answer shows it.
#[derive(serde::Serialize)]
struct LicenseView<'a> {
    status: crate::domain::LicenseStatus,
    product_ids: &'a [String],
    expires_at: Option<crate::domain::Timestamp>,
    hwid_limit: Option<i32>,
    ip_limit: Option<i32>,
    machines: i64,
}

fn reply(code: Code, license: Option<(&License, &Decision)>, token: Option<String>, nonce: Option<&str>) -> Response {
    axum::Json(Answer {
        valid: code == Code::Valid,
        code,
        detail: code.detail(),
        license: license.map(|(license, decision)| LicenseView {
            status: decision.status,
            product_ids: &license.state.product_ids,
            expires_at: decision.expires_at,
            hwid_limit: license.state.hwid_limit,
            ip_limit: license.state.ip_limit,
            machines: decision.machines,
        }),
        token,
        nonce,
    })
    .into_response()
}

/// The database (or the signer) failed: a `503` the client may retry; the
/// log says why, without the request's key.
fn unavailable(service: &Service, e: &anyhow::Error) -> Response {
    service.metrics.rejected(StatusCode::SERVICE_UNAVAILABLE);
    tracing::warn!(error = %crate::secret::redact(&format!("{e:#}")), "key API request failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the license database is not answering; retry later",
    )
}

async fn keys(State(service): State<Arc<Service>>) -> Response {
    axum::Json(json!({ "keys": service.keys.list() })).into_response()
}

async fn healthz(State(service): State<Arc<Service>>) -> Response {
    if service.database_answers().await {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the license database is not answering\n",
        )
            .into_response()
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    match service.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => unavailable(&service, &e),
    }
}
