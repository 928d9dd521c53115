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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;

use crate::catalog::Catalog;
use crate::domain::{
    ActionKind, ExpirationStart, GrantFact, GrantKey, HeldStatus, HeldValues, License, LicenseState, LicenseStatus,
    LicenseTerms, Licensing, OneTimeLineFact, Override, PaymentReversal, ReversalKind, SourceKind,
    SubscriptionItemFact, SubscriptionStatus, Timestamp,
};

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

/// What a grant (or the absence of one) asks of its license. One lives per
/// grant for the length of a call, so the size of `Want` costs nothing.
#[allow(clippy::large_enum_variant)]
enum Target {
    /// Stripe says nothing new: the stored license stays as it is, save for
    /// reversals and the clock.
    Keep { cause: String },
    /// The license Stripe describes.
    Want {
        state: LicenseState,
        cause: String,
        /// When the purchase was made (`--mail-since` compares it).
        purchased_at: Timestamp,
    },
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
                GrantFact::Subscription(item) => self.subscription_target(key, item, existing),
                GrantFact::OneTime(line) => self.one_time_target(key, line),
            };
            self.settle(key, existing, target);
        }
        for license in licenses {
            if !handled.contains(&license.id) {
                let target = self.target_without_grant(license);
                self.settle(&license.grant_key(), Some(license), target);
            }
        }
        self.plan
    }

    fn subscription_target(
        &mut self,
        key: &GrantKey,
        item: &SubscriptionItemFact,
        existing: Option<&License>,
    ) -> Target {
        use SubscriptionStatus as S;
        let keep = Target::Keep {
            cause: item.subscription_id.clone(),
        };
        if let S::Unknown(value) = &item.status {
            // Stripe adds values without a version change: skip, never guess.
            self.plan.skipped.push(Skipped {
                stripe_object: item.subscription_id.clone(),
                grant: Some(key.clone()),
                reason: format!(
                    "subscription {} has status `{value}`, which this version of licensync does not know: \
                     grant skipped, its license left as it is; upgrade licensync",
                    item.subscription_id
                ),
            });
            return keep;
        }
        let can_issue = matches!(item.status, S::Trialing | S::Active | S::PastDue);
        if item.status == S::Incomplete || (existing.is_none() && !can_issue) {
            return keep;
        }
        let Some(terms) = self.terms(key, &item.price_id, &item.product_id) else {
            return keep;
        };
        let Some((quantity, hwid_limit)) = self.seats(key, &item.item_id, item.quantity, terms.hwid_limit) else {
            return keep;
        };

        let grace = |t| add(t, self.config.grace);
        let (status, expires_at) = match &item.status {
            S::Trialing => (
                LicenseStatus::Active,
                grace(item.trial_end.unwrap_or(item.current_period_end)),
            ),
            S::Active => {
                let period_end = item.current_period_end;
                // Stripe's "cancel at period end" sets `cancel_at` to exactly
                // the period end in current API versions: that is a
                // cancellation too, so `<=`.
                let ends = item.cancel_at_period_end || item.cancel_at.is_some_and(|at| at <= period_end);
                if ends {
                    // It will not renew: no grace past the end it was sold for.
                    (
                        LicenseStatus::Active,
                        item.cancel_at.map_or(period_end, |at| at.min(period_end)),
                    )
                } else {
                    (LicenseStatus::Active, grace(period_end))
                }
            }
            S::PastDue => (
                LicenseStatus::Active,
                add(
                    item.paid_through.unwrap_or(item.current_period_start),
                    self.config.past_due_grace,
                ),
            ),
            S::Paused => (
                LicenseStatus::Suspended,
                item.paid_through.unwrap_or(item.current_period_start),
            ),
            S::Unpaid => (
                LicenseStatus::Expired,
                item.paid_through.unwrap_or(item.current_period_start),
            ),
            S::Canceled | S::IncompleteExpired => (
                LicenseStatus::Expired,
                item.ended_at.unwrap_or_else(|| self.ended_now(existing)),
            ),
            S::Incomplete | S::Unknown(_) => return keep,
        };

        Target::Want {
            state: LicenseState {
                status,
                product_ids: terms.product_ids,
                product_name: self.product_name(&item.product_id),
                stripe_customer_id: item.customer.id.clone(),
                stripe_subscription_id: Some(item.subscription_id.clone()),
                stripe_payment_intent: None,
                customer_email: item.customer.email.clone(),
                customer_name: item.customer.name.clone(),
                quantity,
                ip_limit: terms.ip_limit,
                hwid_limit,
                // The subscription decides expiry (the catalog drops these
                // for recurring prices already).
                expiration_days: None,
                expiration_start: None,
                expires_at: Some(expires_at),
                livemode: item.livemode,
            },
            cause: item.subscription_id.clone(),
            purchased_at: item.created,
        }
    }

    fn one_time_target(&mut self, key: &GrantKey, line: &OneTimeLineFact) -> Target {
        let keep = Target::Keep {
            cause: line.purchase_id.clone(),
        };
        if !line.paid {
            return keep;
        }
        let Some(terms) = self.terms(key, &line.price_id, &line.product_id) else {
            return keep;
        };
        let Some((quantity, hwid_limit)) = self.seats(key, &line.purchase_id, line.quantity, terms.hwid_limit) else {
            return keep;
        };
        let (expires_at, expiration_days, expiration_start) = match (terms.expiration_days, terms.expiration_start) {
            (None, _) => (None, None, None),
            (Some(days), Some(ExpirationStart::Activation)) => (None, Some(days), Some(ExpirationStart::Activation)),
            (Some(days), _) => (
                Some(add_days(line.purchased_at, days)),
                Some(days),
                Some(ExpirationStart::Creation),
            ),
        };
        Target::Want {
            state: LicenseState {
                status: LicenseStatus::Active,
                product_ids: terms.product_ids,
                product_name: self.product_name(&line.product_id),
                stripe_customer_id: line.customer.id.clone(),
                stripe_subscription_id: None,
                stripe_payment_intent: line.payment_intent.clone(),
                customer_email: line.customer.email.clone(),
                customer_name: line.customer.name.clone(),
                quantity,
                ip_limit: terms.ip_limit,
                hwid_limit,
                expiration_days,
                expiration_start,
                expires_at,
                livemode: line.livemode,
            },
            cause: line.purchase_id.clone(),
            purchased_at: line.purchased_at,
        }
    }

    /// A license no grant of this slice names: only a removed subscription
    /// item changes it here (reversals and the clock follow in `settle`).
    fn target_without_grant(&self, license: &License) -> Target {
        if license.grant.source_kind == SourceKind::SubscriptionItem
            && let Some(subscription) = &license.state.stripe_subscription_id
            && self.facts.complete_subscriptions.contains(subscription)
        {
            let mut state = license.stripe_state();
            state.status = LicenseStatus::Expired;
            state.expires_at = Some(state.expires_at.map_or(self.now, |at| at.min(self.now)));
            return Target::Want {
                state,
                cause: subscription.clone(),
                purchased_at: license.created_at,
            };
        }
        Target::Keep {
            cause: source_object(license),
        }
    }

    /// The Stripe product's name as the catalog has it (blank names count as none).
    fn product_name(&self, product_id: &str) -> Option<String> {
        self.facts
            .catalog
            .product_name(product_id)
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
    }

    /// The catalog's terms for a grant; records a skip when the product is
    /// misconfigured and a warning when the catalog has one.
    fn terms(&mut self, key: &GrantKey, price_id: &str, product_id: &str) -> Option<LicenseTerms> {
        match self.facts.catalog.resolve(price_id, product_id) {
            Licensing::NotLicensed => None,
            Licensing::Misconfigured(bad) => {
                let product = match self.facts.catalog.product_name(&bad.product) {
                    Some(name) => format!("{} ({name})", bad.product),
                    None => bad.product.clone(),
                };
                self.plan.skipped.push(Skipped {
                    stripe_object: bad.stripe_object.clone(),
                    grant: Some(key.clone()),
                    reason: format!("{product} `{}`: {}", bad.key, bad.why),
                });
                None
            }
            Licensing::Licensed { terms, warnings } => {
                for warning in warnings {
                    if !self.plan.warnings.contains(&warning) {
                        self.plan.warnings.push(warning);
                    }
                }
                Some(terms)
            }
        }
    }

    /// `(quantity, hwid_limit × quantity)`, or a skip when the quantity grants
    /// no seats or does not fit the table.
    fn seats(
        &mut self,
        key: &GrantKey,
        object: &str,
        quantity: i64,
        hwid_limit: Option<i32>,
    ) -> Option<(i32, Option<i32>)> {
        let why = match i32::try_from(quantity) {
            Ok(q) if q >= 1 => match hwid_limit.map(|h| h.checked_mul(q)) {
                None => return Some((q, None)),
                Some(Some(seats)) => return Some((q, Some(seats))),
                Some(None) => format!(
                    "quantity {quantity} x `hwid_limit` {} exceeds {}; lower `hwid_limit`",
                    hwid_limit.unwrap_or_default(),
                    i32::MAX
                ),
            },
            Ok(_) => format!("quantity {quantity} grants no seats"),
            Err(_) => format!("quantity {quantity} exceeds {}", i32::MAX),
        };
        self.plan.skipped.push(Skipped {
            stripe_object: object.to_owned(),
            grant: Some(key.clone()),
            reason: format!("{why}; the license is left as it is"),
        });
        None
    }

    /// The end of a subscription that Stripe gave no `ended_at`: now, unless
    /// the stored license already ended earlier (so a re-run keeps it).
    fn ended_now(&self, existing: Option<&License>) -> Timestamp {
        existing
            .and_then(|l| l.stripe_state().expires_at)
            .filter(|at| *at <= self.now)
            .unwrap_or(self.now)
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
fn held_fields(stripe: &HeldValues, kept: &HeldValues) -> Vec<HeldField> {
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

/// The Stripe object a license comes from: its subscription, or the session
/// or invoice before the `/` of its source id.
fn source_object(license: &License) -> String {
    match (&license.grant.source_kind, &license.state.stripe_subscription_id) {
        (SourceKind::SubscriptionItem, Some(subscription)) => subscription.clone(),
        _ => license
            .grant
            .source_id
            .split('/')
            .next()
            .unwrap_or(&license.grant.source_id)
            .to_owned(),
    }
}

/// `t + d`, saturating: a configured grace can be absurd, never a panic.
fn add(t: Timestamp, d: Duration) -> Timestamp {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or_else(latest)
}

fn add_days(t: Timestamp, days: i32) -> Timestamp {
    t.checked_add_signed(chrono::Duration::days(i64::from(days)))
        .unwrap_or_else(latest)
}

/// Where saturated times stop: chrono's last instant cut to microseconds,
/// which the license table stores as it is (chrono's own last instant has
/// nanoseconds the table drops, so the next run would see a change).
pub(crate) fn latest() -> Timestamp {
    DateTime::<Utc>::MAX_UTC.trunc_subsecs(6)
}

#[cfg(test)]
mod tests;
