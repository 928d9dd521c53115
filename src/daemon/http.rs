//! `daemon --listen`: Stripe's webhooks (`POST /v1/stripe/webhook`), the
//! probe (`GET /healthz`), the metrics (`GET /metrics`), and with a signing
//! key the key API, on one address.
//!
//! A webhook is answered at once: `400` when its signature does not hold
//! (nothing else happens), `200` when it does, after waking its account's
//! run if the event is one a run reads and the account is one this daemon
//! reconciles. The body is read for the account and the type, nothing more.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;

use super::{Health, Wakeups};
use crate::keyapi::{self, error};
use crate::metrics::Board;
use crate::shutdown::Shutdown;
use crate::stripe::{EventHead, RELEVANT_EVENT_TYPES, WebhookSecrets, verify_webhook};
use crate::values::Schedule;

/// Stripe's events are small, but an invoice with many lines is not: a
/// body over this is refused with `413`.
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// Everything the daemon's endpoint answers from.
pub struct Endpoint {
    /// `None`: no secret configured, so no delivery can be checked and the
    /// webhook path is off (`404`).
    pub secrets: Option<WebhookSecrets>,
    /// The accounts this daemon reconciles (`None`: the key's own).
    pub accounts: BTreeSet<Option<String>>,
    pub wakeups: Wakeups,
    pub health: Health,
    pub schedule: Schedule,
    pub board: Board,
    /// The key API, with `--signing-key-file`.
    pub key_api: Option<Arc<keyapi::Service>>,
    deliveries: Family<Outcome, Counter>,
    registry: Registry,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Outcome {
    /// `woke`, `ignored` or `refused`.
    outcome: &'static str,
    /// Why it was ignored or refused; empty when it woke a run.
    reason: &'static str,
}

impl Endpoint {
    pub fn new(
        secrets: Option<WebhookSecrets>,
        accounts: BTreeSet<Option<String>>,
        wakeups: Wakeups,
        health: Health,
        schedule: Schedule,
        board: Board,
        key_api: Option<Arc<keyapi::Service>>,
    ) -> Endpoint {
        let mut registry = Registry::with_prefix("licensync");
        let deliveries = Family::<Outcome, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Stripe webhook deliveries by outcome: woke a run, ignored (an event or account no run here reads), \
             refused (400)",
            deliveries.clone(),
        );
        Endpoint {
            secrets,
            accounts,
            wakeups,
            health,
            schedule,
            board,
            key_api,
            deliveries,
            registry,
        }
    }

    fn count(&self, outcome: &'static str, reason: &'static str) {
        self.deliveries.get_or_create(&Outcome { outcome, reason }).inc();
    }
}

fn router(endpoint: Arc<Endpoint>) -> Router {
    let mut router = Router::new()
        .route(
            "/v1/stripe/webhook",
            post(webhook).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY)),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(endpoint.clone());
    if let Some(service) = &endpoint.key_api {
        router = router.merge(keyapi::routes(service.clone()));
    }
    keyapi::json_fallbacks(router)
}

/// Serves until `shutdown`, then finishes the requests in flight.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>, mut shutdown: Shutdown) -> Result<()> {
    let sweeper = endpoint
        .key_api
        .clone()
        .map(|service| keyapi::sweep(service, shutdown.clone()));
    let app = router(endpoint).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.recv().await })
        .await
        .context("serving the daemon's endpoint");
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    served
}

async fn webhook(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(secrets) = &endpoint.secrets else {
        return error(
            StatusCode::NOT_FOUND,
            "webhooks_off",
            "this daemon has no webhook secret (LICENSYNC_WEBHOOK_SECRET): its webhook endpoint is off",
        );
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            endpoint.count("refused", "body");
            let message = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the body is over {MAX_WEBHOOK_BODY} bytes")
            } else {
                "the body could not be read".to_owned()
            };
            return error(rejection.status(), "bad_request", &message);
        }
    };
    // A header that is not text cannot carry a signature.
    let signature = headers.get("stripe-signature").map(|v| v.to_str().unwrap_or(""));
    if let Err(refused) = verify_webhook(secrets, signature, &body, Utc::now().timestamp()) {
        endpoint.count("refused", refused.reason());
        tracing::info!(
            reason = refused.reason(),
            "webhook refused: its signature does not hold"
        );
        return error(StatusCode::BAD_REQUEST, "bad_signature", &refused.to_string());
    }
    let Ok(event) = serde_json::from_slice::<EventHead>(&body) else {
        endpoint.count("refused", "not_an_event");
        return error(
            StatusCode::BAD_REQUEST,
            "not_an_event",
            "the body is signed but is not a Stripe event",
        );
    };
    let ignored = if !RELEVANT_EVENT_TYPES.contains(&event.event_type.as_str()) {
        Some("event_type")
    } else if !endpoint.accounts.contains(&event.account) {
        Some("account")
    } else {
        None
    };
    match ignored {
        Some(reason) => {
            endpoint.count("ignored", reason);
            tracing::debug!(
                event = %event.id,
                event_type = %event.event_type,
                stripe_account = crate::accounts::label(event.account.as_deref()),
                reason,
                "webhook received; nothing here reads it"
            );
        }
        None => {
            endpoint.count("woke", "");
            tracing::info!(
                event = %event.id,
                event_type = %event.event_type,
                stripe_account = crate::accounts::label(event.account.as_deref()),
                "webhook received; waking the account's run"
            );
            endpoint.wakeups.wake(event.account);
        }
    }
    axum::Json(json!({"received": true, "woke": ignored.is_none()})).into_response()
}

async fn healthz(State(endpoint): State<Arc<Endpoint>>) -> Response {
    let now = Utc::now();
    let period = endpoint.schedule.period(now).unwrap_or(chrono::Duration::MAX / 4);
    if let Err(since) = endpoint.health.check(now, period) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no run has succeeded for {} s (two schedule periods are {} s)\n",
                since.num_seconds(),
                (period * 2).num_seconds()
            ),
        )
            .into_response();
    }
    if let Some(service) = &endpoint.key_api
        && !service.database_answers().await
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the license database is not answering\n",
        )
            .into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// The runs' metrics (each account's last run, as `--metrics-file` holds
/// them), the deliveries, and the key API's, in the Prometheus text format.
async fn metrics(State(endpoint): State<Arc<Endpoint>>) -> Response {
    let mut text = endpoint.board.render().unwrap_or_default();
    let mut deliveries = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut deliveries, &endpoint.registry).is_ok() {
        text.push_str(&deliveries);
    }
    if let Some(service) = &endpoint.key_api
        && let Ok(key_api) = service.metrics_text()
    {
        text.push_str(&key_api);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}
