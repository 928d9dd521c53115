//! Service conditions of a real Stripe account: network and processing
//! latency, and Stripe's request rate limits. Both are off unless set
//! ([`crate::FakeStripe::set_latency`], [`crate::FakeStripe::set_rate_limits`]).
//!
//! The latency ([`Conditions`]) is the server's, shared by every account it
//! serves: it stands for the way to Stripe and back. The rate limits
//! ([`Limits`]) are each account's own, as Stripe counts requests per account.
//!
//! Kept apart from the account ([`crate::state::State`]) so that checking a
//! limit and sleeping a latency never hold the account's lock: concurrent
//! requests overlap their latencies as they do against Stripe.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::{Latency, RateLimits};

/// `50..300`, `50..=300` or `120` (milliseconds), as `--latency-ms` takes it.
impl std::str::FromStr for Latency {
    type Err = String;

    fn from_str(raw: &str) -> Result<Latency, String> {
        let number = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{s}` is not a number of milliseconds; write MIN..MAX, e.g. 50..300"))
        };
        let (min, max) = match raw.split_once("..") {
            Some((min, max)) => (number(min)?, number(max.trim_start_matches('='))?),
            None => (number(raw)?, number(raw)?),
        };
        if min > max {
            return Err(format!("the minimum {min} is above the maximum {max}"));
        }
        Ok(Latency::ms(min, max))
    }
}

/// The rate limiters of one [`RateLimits`] setting (replaced whole when it changes).
struct Limiter {
    global: DefaultDirectRateLimiter,
    per_endpoint: DefaultKeyedRateLimiter<String>,
}

fn quota(rps: u32) -> Quota {
    // A token bucket of one second's worth: a burst of `rps` back to back,
    // then `rps` per second, as Stripe's limiter allows.
    Quota::per_second(NonZeroU32::new(rps.max(1)).expect("max(1) is non-zero"))
}

impl Limiter {
    fn new(limits: RateLimits) -> Limiter {
        Limiter {
            global: RateLimiter::direct(quota(limits.global_rps)),
            per_endpoint: RateLimiter::keyed(quota(limits.per_endpoint_rps)),
        }
    }

    /// `None` when the request may pass, else how long until it would have.
    fn check(&self, endpoint: &str) -> Option<Duration> {
        let now = DefaultClock::default().now();
        if let Err(not_until) = self.per_endpoint.check_key(&endpoint.to_owned()) {
            return Some(not_until.wait_time_from(now));
        }
        if let Err(not_until) = self.global.check() {
            return Some(not_until.wait_time_from(now));
        }
        None
    }
}

/// The server's latency, the same for every account it serves.
#[derive(Default)]
pub(crate) struct Conditions {
    latency: RwLock<Option<Latency>>,
    /// State of the latency draws (splitmix64), seeded per server.
    draws: AtomicU64,
}

/// One account's rate limits and the 429s they answered.
#[derive(Default)]
pub(crate) struct Limits {
    limiter: RwLock<Option<Arc<Limiter>>>,
    /// endpoint (`/v1/<first segment>`) -> 429s answered by the rate limits
    rate_limited: Mutex<BTreeMap<String, u64>>,
}

/// The rate-limit bucket of a path: `/v1/<first path segment>`, as Stripe's
/// per-endpoint limits go (`/v1/checkout/sessions` is `/v1/checkout`).
pub(crate) fn endpoint_of(path: &str) -> String {
    let mut segments = path.trim_start_matches('/').split('/');
    match (segments.next(), segments.next()) {
        (Some("v1"), Some(first)) if !first.is_empty() => format!("/v1/{first}"),
        (Some(first), _) => format!("/{first}"),
        (None, _) => "/".to_owned(),
    }
}

/// splitmix64: a well-mixed 64-bit value from any input (used for latency
/// draws here and for the generated account's per-index choices).
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `Retry-After` in whole seconds, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0 || wait.is_zero())
}

impl Conditions {
    pub fn new(seed: u64) -> Conditions {
        Conditions {
            draws: AtomicU64::new(seed),
            ..Conditions::default()
        }
    }

    pub fn set_latency(&self, latency: Option<Latency>) {
        if let Some(l) = latency {
            assert!(l.min <= l.max, "fake-stripe: latency min {:?} > max {:?}", l.min, l.max);
        }
        *self.latency.write().unwrap_or_else(|p| p.into_inner()) = latency;
    }

    pub fn latency(&self) -> Option<Latency> {
        *self.latency.read().unwrap_or_else(|p| p.into_inner())
    }

    /// This request's latency: uniform in `[min, max]`, or none.
    pub fn draw_latency(&self) -> Option<Duration> {
        let Latency { min, max } = self.latency()?;
        let span = (max - min).as_micros() as u64;
        if span == 0 {
            return Some(min);
        }
        let draw = mix(self.draws.fetch_add(1, Ordering::Relaxed));
        Some(min + Duration::from_micros(draw % (span + 1)))
    }
}

impl Limits {
    pub fn set(&self, limits: Option<RateLimits>) {
        *self.limiter.write().unwrap_or_else(|p| p.into_inner()) = limits.map(|l| Arc::new(Limiter::new(l)));
    }

    /// `Some(Retry-After seconds)` when the request at `path` is over a
    /// limit (and counts it), `None` when it may be served.
    pub fn admit(&self, path: &str) -> Option<u64> {
        let limiter = self.limiter.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        let endpoint = endpoint_of(path);
        let wait = limiter.check(&endpoint)?;
        *self
            .rate_limited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(endpoint)
            .or_default() += 1;
        Some(whole_seconds(wait))
    }

    pub fn rate_limited(&self) -> BTreeMap<String, u64> {
        self.rate_limited.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_the_first_segment_after_v1() {
        assert_eq!(endpoint_of("/v1/subscriptions"), "/v1/subscriptions");
        assert_eq!(endpoint_of("/v1/subscriptions/sub_1"), "/v1/subscriptions");
        assert_eq!(endpoint_of("/v1/checkout/sessions/cs_1/line_items"), "/v1/checkout");
        assert_eq!(endpoint_of("/health"), "/health");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(40)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1_001)), 2);
    }

    #[test]
    fn latency_draws_stay_in_range_and_spread() {
        let c = Conditions::new(7);
        c.set_latency(Some(Latency {
            min: Duration::from_millis(50),
            max: Duration::from_millis(300),
        }));
        let draws: Vec<Duration> = (0..1000).map(|_| c.draw_latency().unwrap()).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_millis(300))
        );
        assert!(draws.iter().any(|d| *d < Duration::from_millis(80)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(270)));
    }
}
