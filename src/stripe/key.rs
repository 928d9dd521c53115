//! The Stripe API key: parsed once, shown only masked (`rk_live_…abcd`), and
//! exposed in clear text to exactly one place, the `Authorization` header.
//! Also `redact`, which masks any `sk_…`/`rk_…` token in free text so
//! messages echoed from Stripe or from the environment never carry a secret.

use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};

/// The prefixes licensync accepts: secret and restricted keys, test or live.
/// Publishable keys (`pk_`) cannot read purchases.
const PREFIXES: [&str; 4] = ["sk_live_", "sk_test_", "rk_live_", "rk_test_"];

/// A Stripe secret (`sk_`) or restricted (`rk_`) key, held as secrecy's
/// `SecretString` (zeroed when dropped, never in a `Debug`).
#[derive(Clone)]
pub struct ApiKey {
    secret: SecretString,
}

impl PartialEq for ApiKey {
    fn eq(&self, other: &ApiKey) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for ApiKey {}

/// Why a string is not a usable Stripe API key. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidApiKey(String);

impl ApiKey {
    /// Parses a key taken from `STRIPE_API_KEY`.
    pub fn parse(text: &str) -> Result<ApiKey, InvalidApiKey> {
        let text = text.trim();
        if text.is_empty() {
            return Err(InvalidApiKey(
                "STRIPE_API_KEY is empty: set it to a Stripe secret (sk_...) or restricted (rk_...) key".into(),
            ));
        }
        if text.starts_with("pk_") {
            return Err(InvalidApiKey(
                "STRIPE_API_KEY is a publishable key (pk_...), which cannot read purchases: \
                 use a secret (sk_...) or restricted (rk_...) key"
                    .into(),
            ));
        }
        let Some(prefix) = PREFIXES.iter().find(|p| text.starts_with(**p)) else {
            return Err(InvalidApiKey(
                "STRIPE_API_KEY must start with sk_live_, sk_test_, rk_live_ or rk_test_".into(),
            ));
        };
        let rest = &text[prefix.len()..];
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(InvalidApiKey(format!(
                "STRIPE_API_KEY starts with {prefix} but the rest is not a Stripe key \
                 (letters, digits and underscores only): copy the whole key from the Stripe dashboard"
            )));
        }
        Ok(ApiKey {
            secret: SecretString::from(text),
        })
    }

    /// Live keys read real customers; test keys must never create production licenses.
    pub fn livemode(&self) -> bool {
        let key = self.expose();
        key.starts_with("sk_live_") || key.starts_with("rk_live_")
    }

    /// The key in clear text, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// The key as it may appear in logs and errors: `rk_live_…abcd`.
    pub fn masked(&self) -> String {
        mask(self.expose())
    }
}

impl FromStr for ApiKey {
    type Err = InvalidApiKey;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiKey::parse(s)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.masked())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Masks one key-shaped token: the mode prefix, an ellipsis, and at most the
/// last four characters, only when the secret part is long enough that four
/// characters give nothing away.
fn mask(token: &str) -> String {
    let prefix = PREFIXES
        .iter()
        .find(|p| token.starts_with(**p))
        .copied()
        .unwrap_or(&token[..3.min(token.len())]);
    let rest = &token[prefix.len()..];
    if rest.chars().count() >= 16 {
        let tail: String = rest
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{prefix}…{tail}")
    } else {
        format!("{prefix}…")
    }
}

/// Masks every `sk_…` and `rk_…` token in `text` (Stripe's own error
/// messages, URLs, anything that might have met the key).
pub fn redact(text: &str) -> String {
    let bytes = text.as_bytes();
    let is_token_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i + 3 <= bytes.len() {
        let starts_token = (bytes[i] == b's' || bytes[i] == b'r')
            && bytes[i + 1] == b'k'
            && bytes[i + 2] == b'_'
            && (i == 0 || !is_token_byte(bytes[i - 1]));
        if starts_token {
            let mut end = i + 3;
            while end < bytes.len() && is_token_byte(bytes[end]) {
                end += 1;
            }
            out.push_str(&text[copied..i]);
            out.push_str(&mask(&text[i..end]));
            copied = end;
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = "rk_live_51AbCdEfGhIjKlMnOpQrStUvWxYz0123abcd";

    #[test]
    fn all_four_key_kinds_parse_and_know_their_mode() {
        for (key, live) in [
            ("sk_live_0123456789abcdefABCD", true),
            ("rk_live_0123456789abcdefABCD", true),
            ("sk_test_0123456789abcdefABCD", false),
            ("rk_test_0123456789abcdefABCD", false),
        ] {
            assert_eq!(ApiKey::parse(key).unwrap().livemode(), live, "{key}");
        }
    }

    #[test]
    fn other_strings_are_refused_with_the_accepted_prefixes_named() {
        for bad in ["", "hello", "whsec_123", "sk_prod_123", "sk_live_", "sk_live_abc def"] {
            let err = ApiKey::parse(bad).unwrap_err().to_string();
            assert!(err.contains("STRIPE_API_KEY"), "{bad}: {err}");
        }
        let err = ApiKey::parse("nope").unwrap_err().to_string();
        assert_eq!(
            err,
            "STRIPE_API_KEY must start with sk_live_, sk_test_, rk_live_ or rk_test_"
        );
        assert!(
            ApiKey::parse("pk_live_abc")
                .unwrap_err()
                .to_string()
                .contains("publishable")
        );
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let key = ApiKey::parse(LIVE).unwrap();
        for shown in [format!("{key}"), format!("{key:?}"), key.masked()] {
            assert!(!shown.contains("51AbCdEf"), "{shown}");
            assert!(shown.contains("rk_live_…abcd"), "{shown}");
        }
        assert_eq!(key.expose(), LIVE);
    }

    #[test]
    fn short_keys_show_no_tail_at_all() {
        let key = ApiKey::parse("sk_test_abc123").unwrap();
        assert_eq!(key.masked(), "sk_test_…");
    }

    #[test]
    fn redact_masks_every_key_in_free_text_and_leaves_other_words_alone() {
        let text = format!("Invalid API Key provided: {LIVE}; task_id=sk_x; url=https://x/?k={LIVE}");
        let red = redact(&text);
        assert!(!red.contains("51AbCdEf"), "{red}");
        assert_eq!(red.matches("rk_live_…abcd").count(), 2, "{red}");
        assert!(red.contains("task_id="), "{red}");
        assert_eq!(redact("nothing secret here"), "nothing secret here");
        assert_eq!(redact("sk_"), "sk_…");
    }
}
