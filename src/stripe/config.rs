//! How to reach Stripe and how hard to push it: the base URL, the key,
//! the rate ceiling of the key's mode, timeouts and the retry budget.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;

use super::error::StripeError;
use super::key::ApiKey;

pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// Stripe's documented limits: live mode 100 requests/s overall and lower
/// limits on some endpoints (25/s is the safe figure), test mode 25/s.
const LIVE_GLOBAL_RPS: u32 = 100;
const LIVE_PER_ENDPOINT_RPS: u32 = 25;
const TEST_GLOBAL_RPS: u32 = 25;

/// How to reach Stripe and how hard to push it.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    pub api_key: ApiKey,
    /// `STRIPE_API_BASE`, with or without a trailing `/` (or `/v1`).
    pub base_url: String,
    /// `LICENSYNC_STRIPE_RPS`: overrides the global request ceiling (the
    /// per-endpoint ceiling of live mode never exceeds it).
    pub rps: Option<u32>,
    /// Per HTTP attempt, connection and body included.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff; each retry doubles it, with jitter, up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Caps the computed backoff (a server's `Retry-After` is honoured as given).
    pub max_backoff: Duration,
    /// A connected account (`acct_...`) every request acts on, through the
    /// `Stripe-Account` header (Stripe Connect); `None`: the key's own account.
    pub account: Option<String>,
}

impl StripeConfig {
    /// Production defaults: api.stripe.com, the ceiling of the key's mode,
    /// 30 s per attempt, 5 retries, backoff 0.5 s doubling up to 20 s.
    pub fn new(api_key: ApiKey) -> StripeConfig {
        StripeConfig {
            api_key,
            base_url: DEFAULT_API_BASE.to_owned(),
            rps: None,
            timeout: Duration::from_secs(30),
            max_retries: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
            account: None,
        }
    }
}

/// The rate ceiling actually applied, derived from the key's mode and the override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCeiling {
    pub global_rps: u32,
    /// Per endpoint (`/v1/<first segment>`), live mode only.
    pub per_endpoint_rps: Option<u32>,
}

impl RateCeiling {
    pub fn for_mode(livemode: bool, rps: Option<u32>) -> RateCeiling {
        match (livemode, rps) {
            (true, None) => RateCeiling {
                global_rps: LIVE_GLOBAL_RPS,
                per_endpoint_rps: Some(LIVE_PER_ENDPOINT_RPS),
            },
            (true, Some(r)) => RateCeiling {
                global_rps: r,
                per_endpoint_rps: Some(r.min(LIVE_PER_ENDPOINT_RPS)),
            },
            (false, r) => RateCeiling {
                global_rps: r.unwrap_or(TEST_GLOBAL_RPS),
                per_endpoint_rps: None,
            },
        }
    }

    /// Requests allowed back to back before the steady rate applies. Kept
    /// small so that no one-second window sees more than `rps + burst`.
    pub fn burst(rps: u32) -> u32 {
        (rps / 10).max(1)
    }
}

pub(super) fn quota(rps: u32) -> Quota {
    let rate = NonZeroU32::new(rps.max(1)).expect("max(1) is non-zero");
    let burst = NonZeroU32::new(RateCeiling::burst(rps)).expect("burst is at least 1");
    Quota::per_second(rate).allow_burst(burst)
}

/// Accepts `https://api.stripe.com`, `http://127.0.0.1:1234/`,
/// `http://127.0.0.1:1234/v1`; refuses anything else with the reason.
/// A URL password never reaches the error.
pub(super) fn normalise_base(raw: &str) -> Result<String, StripeError> {
    let parsed = url::Url::parse(raw.trim()).map_err(|e| {
        StripeError::Config(format!(
            "STRIPE_API_BASE is not a URL ({e}): use e.g. https://api.stripe.com"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(StripeError::Config(format!(
            "STRIPE_API_BASE must be an http:// or https:// URL with a host, got scheme `{}`",
            parsed.scheme()
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(StripeError::Config(
            "STRIPE_API_BASE must not carry a query or fragment: use e.g. https://api.stripe.com".into(),
        ));
    }
    let mut base = parsed.as_str().trim_end_matches('/').to_owned();
    if let Some(stripped) = base.strip_suffix("/v1") {
        base = stripped.to_owned();
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::Transport;

    #[test]
    fn base_urls_are_normalised_with_or_without_slash_or_v1() {
        for raw in [
            "http://127.0.0.1:9/",
            "http://127.0.0.1:9",
            "http://127.0.0.1:9/v1",
            "http://127.0.0.1:9/v1/",
        ] {
            assert_eq!(normalise_base(raw).unwrap(), "http://127.0.0.1:9", "{raw}");
        }
        assert_eq!(normalise_base(DEFAULT_API_BASE).unwrap(), "https://api.stripe.com");
        assert_eq!(
            normalise_base("https://proxy.example/stripe/").unwrap(),
            "https://proxy.example/stripe"
        );
    }

    #[test]
    fn bad_base_urls_are_refused_without_echoing_a_password() {
        for raw in ["ftp://x", "not a url", "https://x/?a=1"] {
            assert!(matches!(normalise_base(raw), Err(StripeError::Config(_))), "{raw}");
        }
        let err = normalise_base("ftp://user:hunter2@x").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_ceiling_follows_the_key_mode_and_the_override() {
        assert_eq!(
            RateCeiling::for_mode(true, None),
            RateCeiling {
                global_rps: 100,
                per_endpoint_rps: Some(25)
            }
        );
        assert_eq!(
            RateCeiling::for_mode(false, None),
            RateCeiling {
                global_rps: 25,
                per_endpoint_rps: None
            }
        );
        assert_eq!(
            RateCeiling::for_mode(false, Some(5)),
            RateCeiling {
                global_rps: 5,
                per_endpoint_rps: None
            }
        );
        assert_eq!(
            RateCeiling::for_mode(true, Some(10)),
            RateCeiling {
                global_rps: 10,
                per_endpoint_rps: Some(10)
            }
        );
    }

    #[test]
    fn zero_requests_per_second_is_a_configuration_error() {
        let mut config = StripeConfig::new(ApiKey::parse("sk_test_0123456789abcdefghij").unwrap());
        config.rps = Some(0);
        let err = Transport::new(&config).unwrap_err().to_string();
        assert!(err.contains("LICENSYNC_STRIPE_RPS"), "{err}");
    }
}
