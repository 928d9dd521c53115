//! Webhook deliveries, as Stripe makes them: each event an account records
//! is posted to the endpoint's URL with a `Stripe-Signature` header (an
//! HMAC-SHA256 of `{t}.{payload}` under the endpoint secret, `t` the wall
//! clock at delivery), concurrently and in no promised order. A connected
//! account's events carry its id in `account`, as a Connect endpoint gets
//! them. Each delivery's answer is logged for the tests to read.

use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;

/// The secret `fake-stripe --webhook-url` signs with unless told another.
pub const DEFAULT_WEBHOOK_SECRET: &str = "whsec_fake_stripe";

/// The `Stripe-Signature` header value Stripe sends for `payload` at
/// `timestamp` (Unix seconds).
pub fn sign_webhook(secret: &str, payload: &[u8], timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// One delivery and how the endpoint answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event: String,
    pub event_type: String,
    /// The connected account the event belongs to.
    pub account: Option<String>,
    /// The endpoint's HTTP status; `None` when it could not be reached.
    pub status: Option<u16>,
}

/// Where an account's events go.
#[derive(Clone)]
pub(crate) struct Endpoint {
    url: String,
    secret: String,
    /// The connected account whose events these are.
    account: Option<String>,
    log: Arc<Mutex<Vec<Delivery>>>,
}

impl Endpoint {
    pub(crate) fn new(url: &str, secret: &str, account: Option<String>, log: Arc<Mutex<Vec<Delivery>>>) -> Endpoint {
        Endpoint {
            url: url.to_owned(),
            secret: secret.to_owned(),
            account,
            log,
        }
    }

    /// The sender an account's state posts its events into, and the task
    /// that delivers them (one request each, side by side).
    pub(crate) fn start(self) -> mpsc::UnboundedSender<Value> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        tokio::spawn(async move {
            while let Some(mut event) = rx.recv().await {
                if let (Some(account), Some(object)) = (&self.account, event.as_object_mut()) {
                    object.insert("account".into(), Value::String(account.clone()));
                }
                let (endpoint, client) = (self.clone(), client.clone());
                tokio::spawn(async move { endpoint.deliver(&client, event).await });
            }
        });
        tx
    }

    async fn deliver(
        &self,
        client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
        event: Value,
    ) {
        let payload = serde_json::to_vec(&event).expect("an event serializes");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let request = hyper::Request::post(&self.url)
            .header("content-type", "application/json; charset=utf-8")
            .header("stripe-signature", sign_webhook(&self.secret, &payload, now))
            .header("user-agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)")
            .body(Full::new(Bytes::from(payload)));
        let status = match request {
            Ok(request) => client.request(request).await.ok().map(|r| r.status().as_u16()),
            Err(_) => None,
        };
        let text = |field: &str| event.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(Delivery {
                event: text("id"),
                event_type: text("type"),
                account: self.account.clone(),
                status,
            });
    }
}
