//! Keeping secrets out of logs, errors, `--help` and panics: secrecy's
//! `SecretString`, whose `Debug` never shows the value, and a scrubber for free text
//! (error chains from libraries) that masks Stripe keys and URL passwords.

/// A configured secret (Stripe key, database URL with password, SMTP
/// password): secrecy's `SecretString`, whose `Debug` shows no value and
/// which has no `Display`; `expose_secret()` marks each place that sends it.
pub use secrecy::{ExposeSecret, SecretString as Secret};

/// Masks every `sk_…`/`rk_…` token and every password in a `scheme://user:password@host` URL.
pub fn redact(text: &str) -> String {
    mask_url_passwords(&crate::stripe::redact(text))
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
        assert_eq!(redact(text), "key sk_live_… and rk_test_…, not risk_management");
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
    fn secrets_never_show_in_debug() {
        let s = Secret::from("sk_test_abc");
        assert!(!format!("{s:?}").contains("abc"));
        assert_eq!(s.expose_secret(), "sk_test_abc");
    }
}
