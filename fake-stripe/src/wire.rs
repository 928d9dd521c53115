//! The bottom layer: the small pieces of Stripe's wire format that the store,
//! the read API and the generated account all share (the error and list
//! envelopes, field readers, list order, time units). It imports nothing from the crate.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

/// One day in seconds.
pub(crate) const DAY: i64 = 86_400;

/// A Stripe error response: HTTP status and the `{"error": {...}}` body.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: u16,
    pub body: Value,
}

impl ApiError {
    pub fn new(status: u16, kind: &str, code: Option<&str>, message: String, param: Option<&str>) -> Self {
        let mut error = json!({"type": kind, "message": message});
        if let Some(code) = code {
            error["code"] = code.into();
            error["doc_url"] = format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-")).into();
        }
        if let Some(param) = param {
            error["param"] = param.into();
        }
        ApiError {
            status,
            body: json!({ "error": error }),
        }
    }

    /// A 400 `invalid_request_error` about a parameter.
    pub fn invalid(message: String, param: Option<&str>) -> Self {
        ApiError::new(400, "invalid_request_error", None, message, param)
    }

    pub fn no_such(status: u16, ty: &str, id: &str, param: &str) -> Self {
        let message = format!("No such {ty}: '{id}'");
        ApiError::new(
            status,
            "invalid_request_error",
            Some("resource_missing"),
            message,
            Some(param),
        )
    }
}

/// Stripe's list envelope.
pub(crate) fn list_value(data: Vec<Value>, has_more: bool, url: &str) -> Value {
    // Built by hand: `json!` would serialize `data` into a copy of itself,
    // a fifth of the fake's CPU for a page of generated purchases.
    let mut list = serde_json::Map::new();
    list.insert("object".into(), Value::from("list"));
    list.insert("data".into(), Value::Array(data));
    list.insert("has_more".into(), Value::from(has_more));
    list.insert("url".into(), Value::from(url));
    Value::Object(list)
}

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// The id of a field that is either an id or an expanded object.
pub(crate) fn id_of(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v["id"].as_str())
}

/// When an object was created: `created`, or `date` for invoice items,
/// which are listed and filtered by it.
pub(crate) fn created_of(v: &Value) -> i64 {
    v["created"].as_i64().or_else(|| v["date"].as_i64()).unwrap_or_default()
}

/// An object's place in list order: ascending keys are newest first.
pub(crate) type ListKey = (Reverse<i64>, Reverse<String>);

pub(crate) fn list_key(v: &Value) -> ListKey {
    (Reverse(created_of(v)), Reverse(str_of(v, "id").to_owned()))
}

/// Object type -> id -> object: a read-only catalog (products and prices)
/// shared by the scratch builds of a generated account.
pub(crate) type Catalog = HashMap<String, BTreeMap<String, Value>>;

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
