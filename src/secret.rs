//! Keeping secrets out of logs, errors, `--help` and panics: a wrapper whose
//! `Debug`/`Display` never show the value, and a scrubber for free text
//! (error chains from libraries) that masks Stripe keys and URL passwords.

use std::fmt;

/// A configured secret (Stripe key, database URL with password, SMTP URL).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"[redacted]\")")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Masks every `sk_…`/`rk_…` token and every password in a `scheme://user:password@host` URL.
pub fn redact(text: &str) -> String {
    let masked = mask_stripe_keys(text);
    mask_url_passwords(&masked)
}

fn mask_stripe_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = find_key_start(rest) {
        out.push_str(&rest[..pos]);
        let token_len = rest[pos..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - pos);
        let token = &rest[pos..pos + token_len];
        // Keep the mode prefix (`sk_live_`), which tells an operator which key is meant.
        let prefix_len = token.match_indices('_').nth(1).map(|(i, _)| i + 1).unwrap_or(3);
        out.push_str(&token[..prefix_len]);
        out.push_str("[redacted]");
        rest = &rest[pos + token_len..];
    }
    out.push_str(rest);
    out
}

fn find_key_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(3)).find(|&i| {
        let at_boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        at_boundary
            && (bytes[i..].starts_with(b"sk_") || bytes[i..].starts_with(b"rk_"))
            && bytes.get(i + 3).is_some_and(|b| b.is_ascii_alphanumeric())
    })
}

fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_end = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":[redacted]");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &rest[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripe_keys_are_masked_but_keep_their_mode() {
        let text = "key sk_live_51Habc123 and rk_test_XyZ, not risk_management";
        assert_eq!(
            redact(text),
            "key sk_live_[redacted] and rk_test_[redacted], not risk_management"
        );
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            redact("postgres://app:s3cr%40t@db:5432/lic and smtp://u:p@mail:587"),
            "postgres://app:[redacted]@db:5432/lic and smtp://u:[redacted]@mail:587"
        );
        assert_eq!(redact("http://host:8080/path"), "http://host:8080/path");
    }

    #[test]
    fn secrets_never_show_in_debug_or_display() {
        let s = Secret::new("sk_test_abc");
        assert!(!format!("{s:?} {s}").contains("abc"));
    }
}
