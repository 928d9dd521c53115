//! The pure planner: `plan(facts, current licenses, config, now) -> Plan`.
//! It owns every rule of licensing-rules §1–5 that turns Stripe state into a
//! desired license, and the diff against what the table holds. No IO, no
//! clock, no randomness: the same input always gives the same plan.

use std::time::Duration;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::domain::{ActionKind, GrantFact, GrantKey, License, LicenseState, PaymentReversal, Timestamp};

/// The settings the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    /// Renewal grace after `current_period_end`/`trial_end` (default 24 h).
    pub grace: Duration,
    /// Grace after `paid_through` while Stripe retries a failed payment (default 7 d).
    pub past_due_grace: Duration,
}

/// What one slice of Stripe says (a page, an incremental batch, or nothing
/// but the clock for the final expiry sweep).
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub catalog: &'a Catalog,
    pub grants: &'a [GrantFact],
    pub reversals: &'a [PaymentReversal],
    /// Subscriptions whose complete item list is in `grants`: a license of one
    /// of these whose item is missing had its item removed, and expires.
    pub complete_subscriptions: &'a [String],
}

/// One change to one license (or one new license).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// The main kind when several fields change (status change first, then
    /// the move of `expires_at`, then `update`).
    pub kind: ActionKind,
    pub grant: GrantKey,
    /// `None` for `issue`: the applier creates the row and its key.
    pub license_id: Option<i64>,
    pub license_key: Option<String>,
    pub before: Option<LicenseState>,
    pub after: LicenseState,
    /// The Stripe object behind the change (`sub_...`, `cs_...`, `in_...`, `re_...`, `dp_...`, or `clock` for pure time expiry).
    pub cause: String,
}

/// A grant that was not acted on, with the reason (misconfigured product,
/// partial refund, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub stripe_object: String,
    pub grant: Option<GrantKey>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub skipped: Vec<Skipped>,
    /// Licenses looked at that need no change.
    pub unchanged: usize,
}
