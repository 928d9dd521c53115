//! An operator override put on top of what Stripe asks (licensing-rules §8),
//! and which held fields differ from Stripe's.

use super::types::HeldField;
use crate::domain::{HeldStatus, HeldValues, LicenseState, LicenseStatus, Override, Timestamp};

/// Puts an operator override on top of what Stripe asks (`state`, reversals
/// and the clock already applied): pinned fields keep their values, a pinned
/// expiry decides between `active` and `expired`, a held status wins (a held
/// suspension gives way only to a revocation).
pub fn apply_override(state: &mut LicenseState, o: &Override, now: Timestamp) {
    if let Some(seats) = o.hwid_limit {
        state.hwid_limit = Some(seats);
    }
    if let Some(ips) = o.ip_limit {
        state.ip_limit = Some(ips);
    }
    if let Some(at) = o.expires_at {
        state.expires_at = Some(at);
        if matches!(state.status, LicenseStatus::Active | LicenseStatus::Expired) {
            state.status = if at <= now {
                LicenseStatus::Expired
            } else {
                LicenseStatus::Active
            };
        }
    }
    match o.status {
        Some(HeldStatus::Revoked) => state.status = LicenseStatus::Revoked,
        Some(HeldStatus::Suspended) if state.status != LicenseStatus::Revoked => {
            state.status = LicenseStatus::Suspended
        }
        _ => {}
    }
}

/// The fields where the kept value differs from Stripe's, sorted by name.
pub(super) fn held_fields(stripe: &HeldValues, kept: &HeldValues) -> Vec<HeldField> {
    let fields = |values: &HeldValues| match serde_json::to_value(values) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let kept = fields(kept);
    let mut held: Vec<HeldField> = fields(stripe)
        .into_iter()
        .filter_map(|(field, stripe)| {
            let kept = kept.get(&field).cloned().unwrap_or(serde_json::Value::Null);
            (kept != stripe).then_some(HeldField { field, stripe, kept })
        })
        .collect();
    held.sort_by(|a, b| a.field.cmp(&b.field));
    held
}
