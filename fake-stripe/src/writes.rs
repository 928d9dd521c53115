//! The write endpoints of licensync's write-back: `POST /v1/subscription_items/{id}`,
//! `/v1/payment_intents/{id}` and `/v1/invoices/{id}` with `metadata[KEY]=VALUE`
//! pairs, answered as Stripe answers them: the pairs are merged into the
//! object's `metadata` (an empty value unsets a key) within Stripe's metadata
//! limits, a restricted key without write permission is refused, and an
//! `Idempotency-Key` replays its first answer.
//!
//! Layering: uses `state` (the change, through [`State::update`], so the
//! usual events are recorded), `api` (the answer is the object as a GET
//! serves it) and `wire`; the server hands over the account the request
//! addressed ([`To`]), so `accounts` (which holds each account's
//! [`Writes`]) is not imported here.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Map, Value};

use crate::MetadataWrite;
use crate::api;
use crate::state::State;
use crate::wire::{ApiError, mask_key};

/// The request header that makes a write idempotent, and Stripe's answer
/// header saying an answer is a replay.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Stripe's metadata limits.
const MAX_KEYS: usize = 50;
const MAX_KEY_CHARS: usize = 40;
const MAX_VALUE_CHARS: usize = 500;

/// The object types that take metadata writes, with the permission of a
/// restricted key that a write of each needs.
const WRITABLE: [(&str, &str); 3] = [
    ("subscription_item", "rak_subscription_write"),
    ("payment_intent", "rak_payment_intent_write"),
    ("invoice", "rak_invoice_write"),
];

/// Whether objects of a type take metadata writes (the server routes a POST for them).
pub(crate) fn writable(ty: &str) -> bool {
    permission(ty).is_some()
}

fn permission(ty: &str) -> Option<&'static str> {
    WRITABLE.iter().find(|(t, _)| *t == ty).map(|(_, p)| *p)
}

/// The account a write addressed, as the server resolved it.
pub(crate) struct To<'a> {
    /// Its write permission, idempotency keys and record.
    pub writes: &'a Writes,
    /// The key that reached it, for a refusal's message (masked).
    pub api_key: &'a str,
    pub account_id: &'a str,
}

/// One write request, as the server hands it over.
pub(crate) struct WriteRequest<'a> {
    pub ty: &'a str,
    pub id: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
    pub idempotency_key: Option<&'a str>,
    /// The request's `Request-Id`, which the events of the change carry.
    pub request_id: &'a str,
}

/// The answer to a write: its status and body, and whether it replays the
/// answer remembered for its idempotency key.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

impl Answer {
    fn fresh(result: Result<Value, ApiError>) -> Answer {
        let (status, body) = match result {
            Ok(body) => (200, body),
            Err(err) => (err.status, err.body),
        };
        Answer {
            status,
            body,
            replayed: false,
        }
    }
}

/// What an account keeps of its writes: whether its key may write, the
/// answers of its idempotency keys and the writes it applied.
#[derive(Default)]
pub(crate) struct Writes {
    denied: AtomicBool,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// `Idempotency-Key` -> the first request with it and its answer.
    remembered: HashMap<String, Remembered>,
    applied: Vec<MetadataWrite>,
}

struct Remembered {
    /// Method, path and body: what a later use of the key must repeat.
    request: String,
    status: u16,
    body: Value,
}

impl Writes {
    pub fn deny(&self, on: bool) {
        self.denied.store(on, Ordering::Relaxed);
    }

    pub fn applied(&self) -> Vec<MetadataWrite> {
        self.ledger().applied.clone()
    }

    pub fn clear_applied(&self) {
        self.ledger().applied.clear();
    }

    /// Taken alone, or after the account's state lock (never before it), so
    /// that a write's idempotency check, change and record are one step.
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serves one write for the account it addressed: the key's permission
/// first (a refusal is not remembered: Stripe checks it before the endpoint
/// runs, as it checks the key), then the idempotency key, then the change.
pub(crate) fn write<'a>(to: To<'a>, lock: impl FnOnce() -> MutexGuard<'a, State>, req: &WriteRequest<'_>) -> Answer {
    if to.writes.denied.load(Ordering::Relaxed) {
        return Answer::fresh(Err(no_permission(&to, req.ty)));
    }
    let mut st = lock();
    let mut ledger = to.writes.ledger();
    let request = format!("POST {}\n{}", req.path, String::from_utf8_lossy(req.body));
    if let Some(key) = req.idempotency_key
        && let Some(first) = ledger.remembered.get(key)
    {
        if first.request != request {
            return Answer::fresh(Err(idempotency_mismatch(key)));
        }
        return Answer {
            status: first.status,
            body: first.body.clone(),
            replayed: true,
        };
    }
    let answer = Answer::fresh(update_metadata(&mut st, req).map(|(object, sent)| {
        ledger.applied.push(MetadataWrite {
            object: req.id.to_owned(),
            metadata: sent,
            idempotency_key: req.idempotency_key.map(str::to_owned),
        });
        object
    }));
    // Every answer here is the endpoint's own (2xx or 4xx); rate limits,
    // faults and 5xx answer before the endpoint runs and are never remembered.
    if let Some(key) = req.idempotency_key
        && (200..500).contains(&answer.status)
    {
        let remembered = Remembered {
            request,
            status: answer.status,
            body: answer.body.clone(),
        };
        ledger.remembered.insert(key.to_owned(), remembered);
    }
    answer
}

/// Merges the body's pairs into the object's metadata and answers the
/// object as a GET serves it, with the pairs sent. A merge that changes
/// nothing leaves the object (and the events) alone.
fn update_metadata(st: &mut State, req: &WriteRequest<'_>) -> Result<(Value, BTreeMap<String, String>), ApiError> {
    // Stripe validates the parameters before it looks the object up.
    let sent = parse(req.body)?;
    let current = api::retrieve(st, req.ty, req.id, None)?;
    if st.generated().is_some_and(|g| g.owns(req.id)) {
        return Err(generated_object(req.ty, req.id));
    }
    let mut merged = current["metadata"].as_object().cloned().unwrap_or_default();
    for (key, value) in &sent {
        if value.is_empty() {
            merged.shift_remove(key);
        } else {
            merged.insert(key.clone(), value.as_str().into());
        }
    }
    check_limits(&merged)?;
    let merged = Value::Object(merged);
    if merged == current["metadata"] {
        return Ok((current, sent));
    }
    st.api_request = Some((req.request_id.to_owned(), req.idempotency_key.map(str::to_owned)));
    st.update(req.id, |obj| obj["metadata"] = merged);
    st.api_request = None;
    Ok((api::retrieve(st, req.ty, req.id, None)?, sent))
}

/// The `metadata[KEY]=VALUE` pairs of a form body, in key order (a key sent
/// twice keeps its last value).
fn parse(body: &[u8]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut pairs = BTreeMap::new();
    for (param, value) in form_urlencoded::parse(body) {
        let Some(key) = param.strip_prefix("metadata[").and_then(|k| k.strip_suffix(']')) else {
            let name = param.split('[').next().unwrap_or_default();
            if name == "metadata" {
                return Err(ApiError::invalid(
                    "Invalid metadata: fake-stripe takes metadata as metadata[KEY]=VALUE pairs \
                     (clearing it with `metadata=` is not supported)."
                        .into(),
                    Some("metadata"),
                ));
            }
            return Err(unknown_parameter(name));
        };
        if key.is_empty() || key.contains(['[', ']']) {
            let message = format!("Invalid metadata key: '{key}'. Keys must be non-empty strings without '[' or ']'.");
            return Err(ApiError::invalid(message, Some("metadata")));
        }
        pairs.insert(key.to_owned(), value.into_owned());
    }
    Ok(pairs)
}

/// Stripe's metadata limits, checked on the merged metadata.
fn check_limits(merged: &Map<String, Value>) -> Result<(), ApiError> {
    let invalid = |message: String| Err(ApiError::invalid(message, Some("metadata")));
    for (key, value) in merged {
        let key_chars = key.chars().count();
        if key_chars > MAX_KEY_CHARS {
            return invalid(format!(
                "Metadata keys can have up to {MAX_KEY_CHARS} characters, but you passed in a key that is \
                 {key_chars} characters. Invalid key: {key}"
            ));
        }
        let value = value.as_str().unwrap_or_default();
        let value_chars = value.chars().count();
        if value_chars > MAX_VALUE_CHARS {
            return invalid(format!(
                "Metadata values can have up to {MAX_VALUE_CHARS} characters, but you passed in a value that is \
                 {value_chars} characters. Invalid value: {value}"
            ));
        }
    }
    if merged.len() > MAX_KEYS {
        return invalid(format!(
            "Invalid metadata: metadata can have up to {MAX_KEYS} keys, but you have passed in {} keys.",
            merged.len()
        ));
    }
    Ok(())
}

fn unknown_parameter(name: &str) -> ApiError {
    ApiError::new(
        400,
        "invalid_request_error",
        Some("parameter_unknown"),
        format!("Received unknown parameter: {name}"),
        Some(name),
    )
}

/// Stripe's 403 to a restricted key without the endpoint's write permission.
fn no_permission(to: &To<'_>, ty: &str) -> ApiError {
    let permission = permission(ty).unwrap_or("rak_write");
    ApiError::new(
        403,
        "invalid_request_error",
        None,
        format!(
            "The provided key '{}' does not have the required permissions for this endpoint on account '{}'. \
             Having the '{permission}' permission would allow this request to continue.",
            mask_key(to.api_key),
            to.account_id
        ),
        None,
    )
}

/// Stripe's answer to an idempotency key reused for another request.
fn idempotency_mismatch(key: &str) -> ApiError {
    ApiError::new(
        400,
        "idempotency_error",
        None,
        format!(
            "Keys for idempotent requests can only be used with the same parameters they were first used with. \
             Try using a key other than '{key}' if you meant to execute a different request."
        ),
        None,
    )
}

/// A generated account's objects are computed on every request, so there is
/// nothing stored to change: the fake refuses rather than pretend.
fn generated_object(ty: &str, id: &str) -> ApiError {
    ApiError::invalid(
        format!(
            "fake-stripe cannot update generated objects: {ty} '{id}' is computed from its index on every \
             request, not stored (load the account with load_generated to change its objects)."
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn pairs_are_percent_decoded_and_plus_is_a_space() {
        let pairs = parse(b"metadata[license%20key]=LK-1+a%2Bb&metadata[gone]=&metadata[k]=1&metadata[k]=2").unwrap();
        assert_eq!(pairs["license key"], "LK-1 a+b");
        assert_eq!(pairs["gone"], "");
        assert_eq!(pairs["k"], "2", "a key sent twice keeps its last value");
    }

    #[test]
    fn other_parameters_and_malformed_keys_are_refused() {
        let err = parse(b"metadata[a]=1&quantity=2").unwrap_err();
        assert_eq!(err.body["error"]["message"], "Received unknown parameter: quantity");
        assert_eq!(err.body["error"]["code"], "parameter_unknown");
        assert_eq!(
            parse(b"expand[]=customer").unwrap_err().body["error"]["param"],
            "expand"
        );
        assert_eq!(parse(b"metadata[]=x").unwrap_err().status, 400);
        assert_eq!(parse(b"metadata[a][b]=x").unwrap_err().status, 400);
        assert_eq!(parse(b"metadata=").unwrap_err().body["error"]["param"], "metadata");
    }
}
