//! What can go wrong talking to Stripe, split where callers decide
//! differently: a rejected key (fix the configuration), an API error after
//! retries, a network failure after retries, and a response that does not
//! match async-stripe's types. Every message names the request; none carries
//! the key (messages echoed from Stripe pass through `redact`).

use std::fmt::Display;

use stripe_client_core::StripeClientErr;

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// 401/403: the key is wrong, revoked, or lacks a permission.
    #[error(
        "Stripe rejected the API key ({key}) with HTTP {status} on {method} {path}: {message}{}; check STRIPE_API_KEY{}",
        fmt_request_id(request_id),
        if *status == 403 { " (a restricted key needs read access to products, prices, customers, subscriptions, invoices, checkout sessions, refunds, disputes and events)" } else { "" }
    )]
    Auth {
        /// Masked: `rk_live_…abcd`.
        key: String,
        method: String,
        path: String,
        status: u16,
        request_id: Option<String>,
        message: String,
    },
    /// Stripe answered with an error status, after every retry allowed.
    #[error(
        "Stripe {method} {path} failed with HTTP {status}{} after {attempts} attempt(s): {message}{}",
        error_type.as_ref().map(|t| format!(" ({t})")).unwrap_or_default(),
        fmt_request_id(request_id)
    )]
    Api {
        method: String,
        path: String,
        status: u16,
        request_id: Option<String>,
        /// Stripe's `error.type` (`invalid_request_error`, `api_error`, ...).
        error_type: Option<String>,
        message: String,
        attempts: u32,
    },
    /// No HTTP answer (connection refused/reset/dropped, timeout), after every retry allowed.
    #[error("Stripe {method} {path} failed after {attempts} attempt(s): {reason}")]
    Transport {
        method: String,
        path: String,
        attempts: u32,
        reason: String,
    },
    /// The response is not what async-stripe's type for it expects.
    #[error("could not decode Stripe's response to {path}: {message}")]
    Decode { path: String, message: String },
    /// Bad configuration (base URL, key) found before any request.
    #[error("{0}")]
    Config(String),
}

fn fmt_request_id(id: &Option<String>) -> String {
    id.as_ref().map(|id| format!(" (Request-Id {id})")).unwrap_or_default()
}

impl StripeError {
    /// async-stripe reports decode failures without the request; the
    /// source adds it back.
    pub(crate) fn on_path(self, request_path: &str, type_name: &str) -> StripeError {
        match self {
            StripeError::Decode { path, message } if path.is_empty() => StripeError::Decode {
                path: request_path.to_owned(),
                message: format!("{message} (expected async-stripe's {type_name})"),
            },
            other => other,
        }
    }
}

impl StripeClientErr for StripeError {
    fn deserialize_err(msg: impl Display) -> Self {
        StripeError::Decode {
            path: String::new(),
            message: msg.to_string(),
        }
    }
}
