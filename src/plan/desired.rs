//! What a grant asks of its license (licensing-rules §2–§4): the state a
//! subscription item or a one-time line describes, through the catalog's
//! terms and the seats its quantity buys, or "keep" when Stripe says nothing
//! the license should follow. Skips and catalog warnings are recorded as
//! they are found.

use std::time::Duration;

use super::time::{add, add_days};
use super::types::Skipped;
use crate::catalog::Catalog;
use crate::domain::{
    ExpirationStart, GrantKey, License, LicenseState, LicenseStatus, LicenseTerms, Licensing, OneTimeLineFact,
    SourceKind, SubscriptionItemFact, SubscriptionStatus, Timestamp,
};

/// What a grant (or the absence of one) asks of its license. One lives per
/// grant for the length of a call, so the size of `Want` costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Target {
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

/// The rules of one plan call that turn a grant into a [`Target`], and where
/// they record what they skip.
pub(super) struct Desired<'a> {
    pub catalog: &'a Catalog,
    pub complete_subscriptions: &'a [String],
    pub grace: Duration,
    pub past_due_grace: Duration,
    pub now: Timestamp,
    pub skipped: &'a mut Vec<Skipped>,
    pub warnings: &'a mut Vec<String>,
}

impl Desired<'_> {
    pub(super) fn subscription(
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
            self.skipped.push(Skipped {
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

        let grace = |t| add(t, self.grace);
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
                    self.past_due_grace,
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

    pub(super) fn one_time(&mut self, key: &GrantKey, line: &OneTimeLineFact) -> Target {
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
    pub(super) fn without_grant(&self, license: &License) -> Target {
        if license.grant.source_kind == SourceKind::SubscriptionItem
            && let Some(subscription) = &license.state.stripe_subscription_id
            && self.complete_subscriptions.contains(subscription)
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
        self.catalog
            .product_name(product_id)
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
    }

    /// The catalog's terms for a grant; records a skip when the product is
    /// misconfigured and a warning when the catalog has one.
    fn terms(&mut self, key: &GrantKey, price_id: &str, product_id: &str) -> Option<LicenseTerms> {
        match self.catalog.resolve(price_id, product_id) {
            Licensing::NotLicensed => None,
            Licensing::Misconfigured(bad) => {
                let product = match self.catalog.product_name(&bad.product) {
                    Some(name) => format!("{} ({name})", bad.product),
                    None => bad.product.clone(),
                };
                self.skipped.push(Skipped {
                    stripe_object: bad.stripe_object.clone(),
                    grant: Some(key.clone()),
                    reason: format!("{product} `{}`: {}", bad.key, bad.why),
                });
                None
            }
            Licensing::Licensed { terms, warnings } => {
                for warning in warnings {
                    if !self.warnings.contains(&warning) {
                        self.warnings.push(warning);
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
        self.skipped.push(Skipped {
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
