//! The planner's vocabulary: its settings and input (`PlanConfig`, `Facts`)
//! and its output (`Plan`, a list of `Action`s with what they change, hold,
//! skip and mail).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::domain::{ActionKind, GrantFact, GrantKey, LicenseState, Override, PaymentReversal, Timestamp};

/// The settings the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    /// Renewal grace after `current_period_end`/`trial_end` (default 24 h).
    pub grace: Duration,
    /// Grace after `paid_through` while Stripe retries a failed payment (default 7 d).
    pub past_due_grace: Duration,
    /// `--mail-since`: a license whose purchase was created before this is
    /// issued silently (adopting an account whose customers already have
    /// their software). `None`: every new license is mailed.
    pub mail_since: Option<Timestamp>,
}

impl Default for PlanConfig {
    /// The defaults of cli.md: `--grace 24h`, `--past-due-grace 7d`.
    fn default() -> Self {
        PlanConfig {
            grace: Duration::from_secs(24 * 3600),
            past_due_grace: Duration::from_secs(7 * 24 * 3600),
            mail_since: None,
        }
    }
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
    /// The Stripe object behind the change (`sub_...`, `cs_...`, `in_...`,
    /// `re_...`, `dp_...`); for a pure time expiry, the license's own
    /// subscription or purchase.
    pub cause: String,
    /// Where an operator override kept a value Stripe asks to change.
    pub held: Option<Held>,
    /// The license's override with what Stripe now asks for the held fields
    /// (`Override::stripe`); `None` for a license without override.
    pub override_after: Option<Override>,
    /// For an `issue`, whether the customer is mailed the key; `None` for
    /// every other kind.
    pub email: Option<IssueEmail>,
}

/// The fields of a license an operator override kept from following Stripe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    pub reason: String,
    pub by: String,
    /// Sorted by field name.
    pub fields: Vec<HeldField>,
}

/// One field Stripe asks to be `stripe` that the override keeps at `kept`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldField {
    pub field: String,
    pub stripe: serde_json::Value,
    pub kept: serde_json::Value,
}

/// What an `issue` does about the license email (licensing-rules §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueEmail {
    /// Mailed after the page commits (or recorded as having no recipient).
    Send,
    /// The purchase predates `--mail-since`: issued silently, the outbox row
    /// is `skipped` and `mail resend` can still send it.
    Silent,
}

/// One field of a license that an action sets, as JSON values (`null` for
/// none), for the plan's `old -> new` output and the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    /// `None` for a field of a new license.
    pub before: Option<serde_json::Value>,
    pub after: serde_json::Value,
}

impl Action {
    /// The fields whose value differs between `before` and `after` (every
    /// field for an `issue`), sorted by field name.
    pub fn changes(&self) -> Vec<FieldChange> {
        let fields = |state: &LicenseState| match serde_json::to_value(state) {
            Ok(serde_json::Value::Object(map)) => map,
            // A struct of plain fields always serializes to an object.
            _ => serde_json::Map::new(),
        };
        let after = fields(&self.after);
        let before = self.before.as_ref().map(fields);
        let mut changes: Vec<FieldChange> = after
            .into_iter()
            .filter_map(|(field, new)| {
                let old = before
                    .as_ref()
                    .map(|b| b.get(&field).cloned().unwrap_or(serde_json::Value::Null));
                (old.as_ref() != Some(&new)).then_some(FieldChange {
                    field,
                    before: old,
                    after: new,
                })
            })
            .collect();
        // serde_json's map order depends on a crate feature; the output must not.
        changes.sort_by(|a, b| a.field.cmp(&b.field));
        changes
    }
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
    /// Catalog warnings to log once each (e.g. expiration metadata on a
    /// recurring price), in the order first met.
    pub warnings: Vec<String>,
}

impl Plan {
    /// The report's `counts` object (cli.md): every key present, zeros included.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> =
            ActionKind::ALL.iter().map(|kind| (kind.count_key(), 0)).collect();
        for action in &self.actions {
            *counts.entry(action.kind.count_key()).or_default() += 1;
        }
        counts.insert("unchanged", self.unchanged);
        counts.insert("skipped", self.skipped.len());
        counts
    }

    /// `(mailed, silent)` among issues to customers with an address: the
    /// license emails this plan queues, and those `--mail-since` keeps back
    /// (an issue without an address has nothing to send either way).
    pub fn emails(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for action in self.actions.iter().filter(|a| a.after.customer_email.is_some()) {
            match action.email {
                Some(IssueEmail::Send) => counts.0 += 1,
                Some(IssueEmail::Silent) => counts.1 += 1,
                None => {}
            }
        }
        counts
    }

    /// No license would change (skips and warnings may remain: they are
    /// reported again on every run that sees their grant).
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}
