//! A request's body, typed in one step: JSON with bounded strings, or a
//! `400` that says what is wrong. Nothing in a body can reach a `500`.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

/// The longest value each field may hold, in characters.
const LIMITS: [(&str, usize); 5] = [
    ("key", 200),
    ("machine", 256),
    ("name", 100),
    ("nonce", 128),
    ("product", 200),
];

/// A refused request: its status and message (`{"error": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn bad_request(message: impl Into<String>) -> Rejection {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
}

/// The fields of every key API body; which are required depends on the path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Body {
    pub key: String,
    pub product: Option<String>,
    pub machine: Option<String>,
    pub name: Option<String>,
    pub nonce: Option<String>,
}

/// Parses a body: an object whose known fields are strings (or null) within
/// their lengths, with a non-empty `key`; `machine` too when `need_machine`.
/// Unknown fields are ignored, so an application may send more.
pub fn parse(bytes: &[u8], need_machine: bool) -> Result<Body, Rejection> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Rejection::bad_request(format!("the body is not JSON: {}", e.classify_name())))?;
    let Value::Object(fields) = value else {
        return Err(Rejection::bad_request("the body must be a JSON object"));
    };
    let text = |name: &str| -> Result<Option<String>, Rejection> {
        let max = LIMITS.iter().find(|(n, _)| *n == name).map_or(200, |(_, m)| *m);
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.chars().count() > max => Err(Rejection::bad_request(format!(
                "`{name}` is longer than {max} characters"
            ))),
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                Err(Rejection::bad_request(format!("`{name}` holds a control character")))
            }
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Rejection::bad_request(format!("`{name}` must be a string"))),
        }
    };
    let body = Body {
        key: text("key")?.ok_or_else(|| Rejection::bad_request("`key` is missing"))?,
        product: text("product")?,
        machine: text("machine")?,
        name: text("name")?,
        nonce: text("nonce")?,
    };
    if need_machine && body.machine.is_none() {
        return Err(Rejection::bad_request("`machine` is missing"));
    }
    Ok(body)
}

/// serde_json's error category, never its text: the text can quote the body.
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "it could not be read",
            serde_json::error::Category::Syntax => "malformed JSON",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "it ends too early",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_typed_or_refused_with_a_reason() {
        let ok = parse(br#"{"key":"K","machine":"m","extra":[1]}"#, true).unwrap();
        assert_eq!((ok.key.as_str(), ok.machine.as_deref()), ("K", Some("m")));
        for (body, need_machine, why) in [
            (&b"not json"[..], false, "not JSON"),
            (b"[1]", false, "object"),
            (b"{}", false, "`key` is missing"),
            (br#"{"key":"   "}"#, false, "`key` is missing"),
            (br#"{"key":7}"#, false, "`key` must be a string"),
            (br#"{"key":"K"}"#, true, "`machine` is missing"),
            (br#"{"key":"K","nonce":{"a":1}}"#, false, "`nonce` must be a string"),
            (br#"{"key":"K\u0000"}"#, false, "`key` holds a control character"),
            (
                br#"{"key":"K","name":"a\nb"}"#,
                false,
                "`name` holds a control character",
            ),
        ] {
            let err = parse(body, need_machine).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(why), "{err:?}");
        }
        let long = format!(r#"{{"key":"{}"}}"#, "k".repeat(201));
        assert!(
            parse(long.as_bytes(), false)
                .unwrap_err()
                .message
                .contains("longer than 200")
        );
        let name = format!(r#"{{"key":"K","name":"{}"}}"#, "é".repeat(100));
        assert!(parse(name.as_bytes(), false).is_ok(), "characters, not bytes");
    }

    #[test]
    fn a_malformed_body_is_never_quoted() {
        let err = parse(br#"{"key":"sk_live_secret""#, false).unwrap_err();
        assert!(!err.message.contains("secret"), "{err:?}");
    }
}
