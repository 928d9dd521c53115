//! Stripe's webhook signatures, checked as Stripe specifies them: the
//! `Stripe-Signature` header carries a timestamp `t` and one or more `v1`
//! signatures, each an HMAC-SHA256 of `{t}.{payload}` under an endpoint
//! secret (`whsec_...`, the whole string is the key). A delivery is genuine
//! when one `v1` matches one of the configured secrets (several while one is
//! rolled) and `t` lies within the tolerance of now. Signatures are compared
//! in constant time (`hmac`'s `verify_slice`).
//!
//! What a genuine delivery says is never used as data: `EventHead` reads
//! only which account it concerns, for the wake-up.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use secrecy::{ExposeSecret, SecretString};

/// Stripe's own libraries refuse signatures older than this.
pub const TOLERANCE_SECONDS: i64 = 300;

/// The endpoint secrets a delivery may be signed with: one, or several
/// while one is rolled (Stripe signs with the old and the new one for as
/// long as the Dashboard keeps the old one).
pub struct WebhookSecrets(Vec<SecretString>);

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecrets({} secrets)", self.0.len())
    }
}

impl WebhookSecrets {
    /// Comma-separated `whsec_...` secrets. Errors never quote a secret.
    pub fn parse(list: &str) -> Result<WebhookSecrets, String> {
        let secrets: Vec<SecretString> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains("REPLACE_ME") {
                    // The deployment examples' placeholder is public: a
                    // copy left unreplaced must not accept deliveries.
                    Err("a webhook secret is still the example's placeholder (REPLACE_ME): \
                         paste the endpoint's signing secret from the Stripe Dashboard"
                        .to_owned())
                } else if s.starts_with("whsec_") && s.len() > "whsec_".len() {
                    Ok(SecretString::from(s.to_owned()))
                } else {
                    Err(
                        "a webhook secret starts with whsec_ (the endpoint's signing secret in the Stripe Dashboard)"
                            .to_owned(),
                    )
                }
            })
            .collect::<Result<_, _>>()?;
        if secrets.is_empty() {
            return Err("no webhook secret given".to_owned());
        }
        Ok(WebhookSecrets(secrets))
    }
}

/// Why a delivery was refused. The `Display` is the `400`'s message: it
/// says what to fix and never echoes the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no Stripe-Signature header")]
    Unsigned,
    #[error("the Stripe-Signature header has no timestamp (t=) or no v1 signature")]
    Malformed,
    #[error("the signature's timestamp is more than 300 s from now (a replay, or a clock off)")]
    Stale,
    #[error("no v1 signature matches a configured webhook secret")]
    NoMatch,
}

impl Refused {
    /// The label of the metric that counts refusals.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Unsigned => "unsigned",
            Refused::Malformed => "malformed",
            Refused::Stale => "stale",
            Refused::NoMatch => "no_match",
        }
    }
}

/// Checks a delivery: the header (`None` when absent), the raw body, and
/// now as Unix seconds.
pub fn verify(secrets: &WebhookSecrets, header: Option<&str>, payload: &[u8], now: i64) -> Result<(), Refused> {
    let header = header.ok_or(Refused::Unsigned)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            // The first `t` counts, as in Stripe's libraries.
            Some(("t", value)) if timestamp.is_none() => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.extend(decode_hex(value)),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(Refused::Malformed)?;
    if signatures.is_empty() {
        return Err(Refused::Malformed);
    }
    // Too old is a replay; too far ahead is no more trustworthy.
    if (now - timestamp).abs() > TOLERANCE_SECONDS {
        return Err(Refused::Stale);
    }
    for secret in &secrets.0 {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes a key of any length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        for signature in &signatures {
            if mac.clone().verify_slice(signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err(Refused::NoMatch)
}

/// The `v1` value as 32 bytes, or nothing (another scheme's, or garbage).
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// What a genuine delivery is allowed to say: which event, of which type,
/// for which account (`account` is set on a Connect endpoint's events, for
/// the connected account; absent for the endpoint's own account).
#[derive(Debug, Clone, Deserialize)]
pub struct EventHead {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub account: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use fake_stripe::sign_webhook as sign;

    const NOW: i64 = 1_765_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed"}"#;

    fn secrets(list: &str) -> WebhookSecrets {
        WebhookSecrets::parse(list).unwrap()
    }

    #[test]
    fn each_delivery_gets_its_verdict() {
        let one = secrets("whsec_current");
        let rolled = secrets("whsec_old, whsec_current");
        let other = secrets("whsec_other");
        let good = sign("whsec_current", BODY, NOW);
        let old_sig = sign("whsec_old", BODY, NOW);
        let v1 = |h: &str| h.split_once(",v1=").unwrap().1.to_owned();
        // Stripe sends several v1 while a secret is rolled, and v0 in test mode.
        let both = format!("t={NOW},v1={},v1={},v0=deadbeef", v1(&old_sig), v1(&good));
        type Case<'a> = (
            &'a str,
            &'a WebhookSecrets,
            Option<String>,
            &'a [u8],
            i64,
            Result<(), Refused>,
        );
        let cases: Vec<Case> = vec![
            ("valid", &one, Some(good.clone()), BODY, NOW, Ok(())),
            ("valid, 299 s late", &one, Some(good.clone()), BODY, NOW + 299, Ok(())),
            ("several v1, one matches", &one, Some(both.clone()), BODY, NOW, Ok(())),
            (
                "signed with the old secret while rolling",
                &rolled,
                Some(old_sig.clone()),
                BODY,
                NOW,
                Ok(()),
            ),
            (
                "old secret after the roll",
                &one,
                Some(old_sig),
                BODY,
                NOW,
                Err(Refused::NoMatch),
            ),
            ("unsigned", &one, None, BODY, NOW, Err(Refused::Unsigned)),
            (
                "empty header",
                &one,
                Some(String::new()),
                BODY,
                NOW,
                Err(Refused::Malformed),
            ),
            (
                "no timestamp",
                &one,
                Some(format!("v1={}", v1(&good))),
                BODY,
                NOW,
                Err(Refused::Malformed),
            ),
            (
                "no v1",
                &one,
                Some(format!("t={NOW},v0=abc")),
                BODY,
                NOW,
                Err(Refused::Malformed),
            ),
            ("stale", &one, Some(good.clone()), BODY, NOW + 301, Err(Refused::Stale)),
            (
                "from the future",
                &one,
                Some(good.clone()),
                BODY,
                NOW - 301,
                Err(Refused::Stale),
            ),
            (
                "tampered body",
                &one,
                Some(good.clone()),
                br#"{"id":"evt_2"}"#,
                NOW,
                Err(Refused::NoMatch),
            ),
            (
                "timestamp moved",
                &one,
                Some(format!("t={},v1={}", NOW + 1, v1(&good))),
                BODY,
                NOW,
                Err(Refused::NoMatch),
            ),
            ("wrong secret", &other, Some(good), BODY, NOW, Err(Refused::NoMatch)),
        ];
        for (name, secrets, header, body, now, expected) in cases {
            assert_eq!(verify(secrets, header.as_deref(), body, now), expected, "{name}");
        }
    }

    #[test]
    fn secrets_must_look_like_endpoint_secrets_and_never_print() {
        assert!(WebhookSecrets::parse("").is_err());
        assert!(WebhookSecrets::parse("sk_test_123").is_err());
        assert!(WebhookSecrets::parse("whsec_").is_err());
        assert!(
            WebhookSecrets::parse("whsec_REPLACE_ME")
                .unwrap_err()
                .contains("placeholder")
        );
        let two = WebhookSecrets::parse("whsec_a,whsec_b").unwrap();
        assert_eq!(format!("{two:?}"), "WebhookSecrets(2 secrets)");
        let e = WebhookSecrets::parse("whsec_ok,not_a_secret_value").unwrap_err();
        assert!(!e.contains("not_a_secret_value"), "{e}");
    }

    #[test]
    fn the_head_reads_the_account_and_nothing_more() {
        let head: EventHead =
            serde_json::from_slice(br#"{"id":"evt_1","type":"invoice.paid","account":"acct_1","data":{}}"#).unwrap();
        assert_eq!(head.account.as_deref(), Some("acct_1"));
        let own: EventHead = serde_json::from_slice(BODY).unwrap();
        assert_eq!(own.account, None);
    }
}
