//! Saturating time arithmetic: a configured grace or an expiry in days can be
//! absurd, never a panic.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use crate::domain::Timestamp;

/// `t + d`, saturating: a configured grace can be absurd, never a panic.
pub(super) fn add(t: Timestamp, d: Duration) -> Timestamp {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or_else(latest)
}

pub(super) fn add_days(t: Timestamp, days: i32) -> Timestamp {
    t.checked_add_signed(chrono::Duration::days(i64::from(days)))
        .unwrap_or_else(latest)
}

/// Where saturated times stop: chrono's last instant cut to microseconds,
/// which the license table stores as it is (chrono's own last instant has
/// nanoseconds the table drops, so the next run would see a change).
pub(super) fn latest() -> Timestamp {
    DateTime::<Utc>::MAX_UTC.trunc_subsecs(6)
}
