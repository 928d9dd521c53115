//! The pure planner: `plan(facts, current licenses, config, now) -> Plan`.
//! It owns every rule of licensing-rules §1–5 that turns Stripe state into a
//! desired license, and the diff against what the table holds. No IO, no
//! clock, no randomness: the same input always gives the same plan.
//!
//! Choices where the rules are silent (each one has a test):
//! - **No dead keys**: a grant whose license would be born `suspended`,
//!   `expired` or `revoked` (a subscription first seen `paused`, `unpaid` or
//!   `canceled`, a 30-day purchase first seen on day 31, a purchase refunded
//!   before the first run) issues nothing: issuing would mail a key that
//!   cannot be used. An existing license of such a grant does follow Stripe.
//!   A refunded purchase that issues nothing is reported as skipped.
//! - Grants that cannot issue and have no license (see above, plus
//!   `incomplete` subscriptions and unpaid sessions) are not looked up in the
//!   catalog, so old canceled subscriptions of an archived, misconfigured
//!   product do not flood every report with skips.
//! - **Untouched is not frozen**: a license that is "left as it is"
//!   (misconfigured or no-longer-licensed product, `incomplete` subscription,
//!   unpaid session, a bad quantity, or no fact in this slice) still follows
//!   the clock (§3 "status also follows time") and reversals (§4): both
//!   depend on the stored row, not on the metadata.
//! - A product that loses its `product_id` keeps its existing licenses as
//!   they are: removing the key is not a way to revoke customers' keys.
//! - The cause of a pure clock expiry is the license's own Stripe object
//!   (`sub_...` for a subscription item, else the `cs_...`/`in_...` before
//!   the `/` of its source id), so every ledger row names a Stripe object.
//! - `canceled`/`incomplete_expired` without `ended_at` expire at `now`, but
//!   an already-stored expiry that has passed is kept, so re-running later
//!   does not move it (idempotence).
//! - `trialing` without `trial_end` uses `current_period_end` (Stripe sets
//!   both to the trial's end).
//! - A quantity below 1 (Stripe allows `quantity=0` items) grants no seats:
//!   the grant is skipped with a reason and its license left as it is.
//! - **Stripe adds values**: a subscription whose status this version does
//!   not know (Stripe adds enum values without an API version change) skips
//!   each of its grants with a reason naming the subscription and the value;
//!   its license is left as it is (save for the clock) and the run succeeds.
//! - `cancel_at` equal to the current period end (what "cancel at period
//!   end" sets in current API versions) will not renew: no grace, like
//!   `cancel_at_period_end`.
//! - `expiration_days` with `CREATION` stores `expiration_days` and
//!   `expiration_start` next to the computed `expires_at`, so the row shows
//!   where the expiry came from; `ACTIVATION` stores them with no expiry.
//! - `unchanged` counts licenses of `current` that get no action.
//! - **`--mail-since`** compares the purchase's `created`: a one-time
//!   purchase's session or invoice, and for a subscription the *item's*
//!   `created`, so a seat or add-on bought on an old subscription after the
//!   cut-off is a new purchase and is mailed. The cut-off is inclusive (a
//!   purchase at exactly `T` is mailed). It only decides the email of an
//!   `issue`: it never changes what is issued.
//! - A license keeps the Stripe product's name (`product_name`) so emails
//!   can name what was bought; it follows the catalog like every other
//!   field, and a blank name counts as none.
//!
//! Operator overrides (licensing-rules §8) are data on the license
//! (`License::operator_override`); the plan for a license under override is
//! what Stripe asks (reversals and the clock included) with the override put
//! on top by [`apply_override`]. Choices where the rules are silent:
//! - Pinned fields keep their values and everything else follows Stripe:
//!   quantity, expiry, customer, products (`an_override_holds_what_it_pins_while_the_rest_follows_stripe`).
//! - A held revocation wins over everything; a held suspension wins over
//!   every Stripe status but a revocation (a refund still revokes), because
//!   a revocation is final (same test, and
//!   `a_held_suspension_gives_way_to_a_refund_and_a_release_keeps_stripes_revocation`).
//! - A pinned expiry decides between `active` and `expired`, whatever
//!   Stripe's own end was: a goodwill extension keeps a canceled
//!   subscription's key working until the pinned date, and a pinned date
//!   that passed expires a paid one (the table test above).
//! - Each plan also records what Stripe asked for the held fields in the
//!   override (`Override::stripe`), so `release` restores Stripe's values
//!   without a Stripe call. When Stripe moves only a held field, the plan
//!   has one `update` that changes no value of the row and lists the field
//!   as held; the next plan is empty
//!   (`when_stripe_moves_only_a_held_field_the_plan_records_it_once_and_changes_no_value`).
//! - A license no fact names keeps its override, and what Stripe would say
//!   still follows the clock underneath it
//!   (`a_license_no_fact_names_keeps_its_override_and_follows_the_clock_underneath`);
//!   a removed item expires with its pins kept
//!   (`a_removed_item_under_pinned_seats_expires_with_its_seats_still_pinned`).
//! - An action shows in `held` each held field whose value differs from
//!   Stripe's, with the override's reason: the text plan prints it as
//!   "held by override (reason)".
//! - A plan never creates or clears an override: only an operator does.

mod desired;
mod overrides;
mod time;
mod types;

use std::collections::{HashMap, HashSet};

use crate::domain::{
    ActionKind, ExpirationStart, GrantFact, GrantKey, HeldValues, License, LicenseState, LicenseStatus, Override,
    PaymentReversal, ReversalKind, SourceKind, Timestamp,
};
use desired::{Desired, Target};
pub use overrides::apply_override;
use overrides::held_fields;
use time::add_days;
#[cfg(test)]
use time::latest;
pub use types::{Action, Facts, FieldChange, Held, HeldField, IssueEmail, Plan, PlanConfig, Skipped};

/// Decides what `current` must become so the table says what `facts` say at
/// `now`. Licenses of `current` that no grant of this slice names get only the
/// rules that need no grant: removed subscription items, reversals, the clock.
pub fn plan(facts: &Facts, current: &[License], config: &PlanConfig, now: Timestamp) -> Plan {
    Planner {
        facts,
        config,
        now,
        plan: Plan::default(),
    }
    .run(current)
}

struct Planner<'a> {
    facts: &'a Facts<'a>,
    config: &'a PlanConfig,
    now: Timestamp,
    plan: Plan,
}

impl Planner<'_> {
    fn run(mut self, current: &[License]) -> Plan {
        // A grant listed twice (overlapping pages, an event and a scan) is one
        // grant: the last fact wins, the first position orders the output.
        let mut order: Vec<GrantKey> = Vec::new();
        let mut latest: HashMap<GrantKey, &GrantFact> = HashMap::new();
        for grant in self.facts.grants {
            let key = grant.key();
            if latest.insert(key.clone(), grant).is_none() {
                order.push(key);
            }
        }

        let mut licenses: Vec<&License> = current.iter().collect();
        licenses.sort_by_key(|l| l.id);
        let mut by_grant: HashMap<GrantKey, &License> = HashMap::new();
        for license in &licenses {
            by_grant.entry(license.grant_key()).or_insert(license);
        }

        let mut handled: HashSet<i64> = HashSet::new();
        for key in &order {
            let existing = by_grant.get(key).copied();
            if let Some(license) = existing {
                handled.insert(license.id);
            }
            let target = match latest[key] {
                GrantFact::Subscription(item) => self.desired().subscription(key, item, existing),
                GrantFact::OneTime(line) => self.desired().one_time(key, line),
            };
            self.settle(key, existing, target);
        }
        for license in licenses {
            if !handled.contains(&license.id) {
                let target = self.desired().without_grant(license);
                self.settle(&license.grant_key(), Some(license), target);
            }
        }
        self.plan
    }

    /// The grant rules, reading this call's facts and recording into its plan.
    fn desired(&mut self) -> Desired<'_> {
        Desired {
            catalog: self.facts.catalog,
            complete_subscriptions: self.facts.complete_subscriptions,
            grace: self.config.grace,
            past_due_grace: self.config.past_due_grace,
            now: self.now,
            skipped: &mut self.plan.skipped,
            warnings: &mut self.plan.warnings,
        }
    }

    /// `--mail-since`: a purchase made before it is issued silently. A
    /// purchase time is always known for an issue (only a `Want` issues).
    fn issue_email(&self, purchased_at: Option<Timestamp>) -> IssueEmail {
        match (self.config.mail_since, purchased_at) {
            (Some(since), Some(at)) if at < since => IssueEmail::Silent,
            _ => IssueEmail::Send,
        }
    }

    /// Applies reversals, the clock and the operator override to a target
    /// and diffs it against the stored license.
    fn settle(&mut self, key: &GrantKey, existing: Option<&License>, target: Target) {
        let operator_override = existing.and_then(|l| l.operator_override.as_ref());
        if existing.is_some_and(|l| l.state.status == LicenseStatus::Revoked) && operator_override.is_none() {
            // Revoked is final: no later fact brings a refunded key back.
            self.plan.unchanged += 1;
            return;
        }
        let (mut state, mut cause, purchased_at) = match (target, existing) {
            (
                Target::Want {
                    state,
                    cause,
                    purchased_at,
                },
                _,
            ) => (state, cause, Some(purchased_at)),
            // What Stripe last asked for: the override is applied below.
            (Target::Keep { cause }, Some(license)) => (license.stripe_state(), cause, None),
            (Target::Keep { .. }, None) => return,
        };
        if operator_override.is_some_and(|o| o.stripe.status == LicenseStatus::Revoked) {
            // Stripe's own revocation is final under an override too.
            state.status = LicenseStatus::Revoked;
        }

        let mut partial_refunds = Vec::new();
        if key.source_kind != SourceKind::SubscriptionItem
            && let Some(payment_intent) = &state.stripe_payment_intent
        {
            let reversals = self
                .facts
                .reversals
                .iter()
                .filter(|r| &r.payment_intent == payment_intent);
            let (taken_back, partial): (Vec<&PaymentReversal>, Vec<&PaymentReversal>) =
                reversals.partition(|r| r.kind != ReversalKind::PartialRefund);
            if let Some(reversal) = taken_back.first() {
                state.status = LicenseStatus::Revoked;
                cause = reversal.stripe_object.clone();
            } else {
                partial_refunds = partial;
            }
        }

        // Expiry that starts at activation: the key API started the clock.
        if state.expiration_start == Some(ExpirationStart::Activation)
            && state.expires_at.is_none()
            && let (Some(days), Some(started)) = (state.expiration_days, existing.and_then(|l| l.activated_at))
        {
            state.expires_at = Some(add_days(started, days));
        }

        if state.status == LicenseStatus::Active && state.expires_at.is_some_and(|at| at <= self.now) {
            state.status = LicenseStatus::Expired;
        }

        let (override_after, held) = match operator_override {
            None => (None, None),
            Some(o) => {
                let stripe = HeldValues::of(&state);
                apply_override(&mut state, o, self.now);
                let fields = held_fields(&stripe, &HeldValues::of(&state));
                let held = (!fields.is_empty()).then(|| Held {
                    reason: o.reason.clone(),
                    by: o.by.clone(),
                    fields,
                });
                (Some(Override { stripe, ..o.clone() }), held)
            }
        };

        match existing {
            None if state.status == LicenseStatus::Active => self.plan.actions.push(Action {
                kind: ActionKind::Issue,
                grant: key.clone(),
                license_id: None,
                license_key: None,
                before: None,
                after: state,
                cause,
                held: None,
                override_after: None,
                email: Some(self.issue_email(purchased_at)),
            }),
            None => {
                if state.status == LicenseStatus::Revoked {
                    self.plan.skipped.push(Skipped {
                        stripe_object: cause.clone(),
                        grant: Some(key.clone()),
                        reason: format!("{cause} took the payment back before a license was issued: no license issued"),
                    });
                }
                return;
            }
            Some(license) => {
                let before = license.state();
                // An override whose Stripe side moved is written too, so that
                // `release` restores what Stripe asks now.
                if before == state && override_after.as_ref() == license.operator_override.as_ref() {
                    self.plan.unchanged += 1;
                } else {
                    self.plan.actions.push(Action {
                        kind: kind_of_change(&before, &state),
                        grant: key.clone(),
                        license_id: Some(license.id),
                        license_key: Some(license.key.clone()),
                        before: Some(before),
                        after: state,
                        cause,
                        held,
                        override_after,
                        email: None,
                    });
                }
            }
        }
        for refund in partial_refunds {
            self.plan.skipped.push(Skipped {
                stripe_object: refund.stripe_object.clone(),
                grant: Some(key.clone()),
                reason: format!("partial refund {}: license unchanged", refund.stripe_object),
            });
        }
    }
}

/// The main kind of a change: status first, then the move of `expires_at`
/// (no expiry counts as the latest one), then anything else.
pub(crate) fn kind_of_change(before: &LicenseState, after: &LicenseState) -> ActionKind {
    if before.status != after.status {
        return match after.status {
            LicenseStatus::Active => ActionKind::Reinstate,
            LicenseStatus::Suspended => ActionKind::Suspend,
            LicenseStatus::Expired => ActionKind::Expire,
            LicenseStatus::Revoked => ActionKind::Revoke,
        };
    }
    match (before.expires_at, after.expires_at) {
        (Some(old), Some(new)) if new > old => ActionKind::Extend,
        (Some(old), Some(new)) if new < old => ActionKind::Shorten,
        (Some(_), None) => ActionKind::Extend,
        (None, Some(_)) => ActionKind::Shorten,
        _ => ActionKind::Update,
    }
}

#[cfg(test)]
mod tests;
