//! Test fixture builders for the planner and the catalog: Stripe-shaped facts
//! with readable defaults, a small catalog, and a pure "applier" that turns a
//! plan into the license rows the database would hold afterwards.

use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};

use crate::catalog::{Catalog, PriceRecord, ProductRecord};
use crate::domain::{
    CustomerInfo, GrantFact, GrantKey, License, OneTimeLineFact, PaymentReversal, ReversalKind, SubscriptionItemFact,
    SubscriptionStatus, Timestamp,
};
use crate::plan::{Action, Facts, Plan, PlanConfig};

/// Day `n` of the test calendar (day 0 is 2025-01-01 00:00 UTC).
pub fn day(n: i64) -> Timestamp {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap() + Duration::days(n)
}

pub fn hours(n: i64) -> Duration {
    Duration::hours(n)
}

/// Grace 24 h, past-due grace 7 days (the documented defaults).
pub fn config() -> PlanConfig {
    PlanConfig::default()
}

pub fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

pub fn product(id: &str, pairs: &[(&str, &str)]) -> ProductRecord {
    ProductRecord {
        id: id.to_owned(),
        name: format!("{id} name"),
        active: true,
        metadata: metadata(pairs),
    }
}

pub fn one_time_price(id: &str, product: &str, pairs: &[(&str, &str)]) -> PriceRecord {
    PriceRecord {
        id: id.to_owned(),
        product: product.to_owned(),
        active: true,
        recurring: false,
        metadata: metadata(pairs),
        created: 0,
    }
}

pub fn recurring_price(id: &str, product: &str, pairs: &[(&str, &str)]) -> PriceRecord {
    PriceRecord {
        recurring: true,
        ..one_time_price(id, product, pairs)
    }
}

/// The catalog most tests use:
/// - `price_pro_monthly`/`price_pro_yearly` of `prod_pro` (`product_id=pro`,
///   `hwid_limit=2`, `ip_limit=5`; the yearly price overrides `hwid_limit=4`);
/// - `price_team_monthly` of `prod_team` (`product_id=pro,team`, `hwid_limit=1`);
/// - `price_tool` (one-time, perpetual) of `prod_tool` (`product_id=tool`);
/// - `price_tool_30d` (one-time, 30 days from purchase) and
///   `price_tool_activation` (one-time, 30 days from activation) of `prod_tool`;
/// - `price_broken` of `prod_broken` (`ip_limit=abc`);
/// - `price_shirt` of `prod_shirt` (no `product_id`: not licensed).
pub fn catalog() -> Catalog {
    Catalog::new(
        [
            product(
                "prod_pro",
                &[("product_id", "pro"), ("hwid_limit", "2"), ("ip_limit", "5")],
            ),
            product("prod_team", &[("product_id", "pro,team"), ("hwid_limit", "1")]),
            product("prod_tool", &[("product_id", "tool")]),
            product("prod_broken", &[("product_id", "broken"), ("ip_limit", "abc")]),
            product("prod_shirt", &[("size", "xl")]),
        ],
        [
            recurring_price("price_pro_monthly", "prod_pro", &[]),
            recurring_price("price_pro_yearly", "prod_pro", &[("hwid_limit", "4")]),
            recurring_price("price_team_monthly", "prod_team", &[]),
            one_time_price("price_tool", "prod_tool", &[]),
            one_time_price("price_tool_30d", "prod_tool", &[("expiration_days", "30")]),
            one_time_price(
                "price_tool_activation",
                "prod_tool",
                &[("expiration_days", "30"), ("expiration_start", "activation")],
            ),
            recurring_price("price_broken", "prod_broken", &[]),
            one_time_price("price_shirt", "prod_shirt", &[]),
        ],
    )
}

pub fn customer(id: &str) -> CustomerInfo {
    CustomerInfo {
        id: Some(id.to_owned()),
        email: Some(format!("{id}@example.com")),
        name: Some(format!("Customer {id}")),
    }
}

/// An `active` item `si_1` of `sub_1` on `price_pro_monthly`, period day 0..30.
pub fn sub_item() -> SubItem {
    SubItem(SubscriptionItemFact {
        item_id: "si_1".to_owned(),
        subscription_id: "sub_1".to_owned(),
        status: SubscriptionStatus::Active,
        customer: customer("cus_1"),
        price_id: "price_pro_monthly".to_owned(),
        product_id: "prod_pro".to_owned(),
        quantity: 1,
        current_period_start: day(0),
        current_period_end: day(30),
        trial_end: None,
        cancel_at_period_end: false,
        cancel_at: None,
        ended_at: None,
        paid_through: Some(day(30)),
        created: day(0),
        livemode: false,
    })
}

#[derive(Debug, Clone)]
pub struct SubItem(pub SubscriptionItemFact);

impl SubItem {
    /// When the item was bought (what `--mail-since` compares).
    pub fn created(mut self, t: Timestamp) -> Self {
        self.0.created = t;
        self
    }
    pub fn id(mut self, item_id: &str) -> Self {
        self.0.item_id = item_id.to_owned();
        self
    }
    pub fn subscription(mut self, subscription_id: &str) -> Self {
        self.0.subscription_id = subscription_id.to_owned();
        self
    }
    pub fn status(mut self, status: SubscriptionStatus) -> Self {
        self.0.status = status;
        self
    }
    pub fn customer(mut self, customer: CustomerInfo) -> Self {
        self.0.customer = customer;
        self
    }
    /// The price and, as Stripe reports it, the product that price belongs to.
    pub fn price(mut self, price_id: &str, product_id: &str) -> Self {
        self.0.price_id = price_id.to_owned();
        self.0.product_id = product_id.to_owned();
        self
    }
    pub fn quantity(mut self, quantity: i64) -> Self {
        self.0.quantity = quantity;
        self
    }
    pub fn period(mut self, start: Timestamp, end: Timestamp) -> Self {
        self.0.current_period_start = start;
        self.0.current_period_end = end;
        self
    }
    pub fn trial_end(mut self, t: Timestamp) -> Self {
        self.0.trial_end = Some(t);
        self
    }
    pub fn cancel_at_period_end(mut self) -> Self {
        self.0.cancel_at_period_end = true;
        self
    }
    pub fn cancel_at(mut self, t: Timestamp) -> Self {
        self.0.cancel_at = Some(t);
        self
    }
    pub fn ended_at(mut self, t: Option<Timestamp>) -> Self {
        self.0.ended_at = t;
        self
    }
    pub fn paid_through(mut self, t: Option<Timestamp>) -> Self {
        self.0.paid_through = t;
        self
    }
    pub fn livemode(mut self, livemode: bool) -> Self {
        self.0.livemode = livemode;
        self
    }
    pub fn fact(self) -> GrantFact {
        GrantFact::Subscription(self.0)
    }
}

/// A paid line `li_1` of Checkout Session `cs_1` for the perpetual
/// `price_tool`, bought on day 0 with payment `pi_1`.
pub fn one_time() -> OneTime {
    OneTime(OneTimeLineFact {
        key: GrantKey::checkout_line("cs_1", "li_1"),
        purchase_id: "cs_1".to_owned(),
        customer: customer("cus_1"),
        price_id: "price_tool".to_owned(),
        product_id: "prod_tool".to_owned(),
        quantity: 1,
        purchased_at: day(0),
        paid: true,
        payment_intent: Some("pi_1".to_owned()),
        livemode: false,
    })
}

#[derive(Debug, Clone)]
pub struct OneTime(pub OneTimeLineFact);

impl OneTime {
    /// A line of a Checkout Session.
    pub fn checkout(mut self, session_id: &str, line_id: &str) -> Self {
        self.0.key = GrantKey::checkout_line(session_id, line_id);
        self.0.purchase_id = session_id.to_owned();
        self
    }
    /// A line of a one-off invoice.
    pub fn invoice(mut self, invoice_id: &str, line_id: &str) -> Self {
        self.0.key = GrantKey::invoice_line(invoice_id, line_id);
        self.0.purchase_id = invoice_id.to_owned();
        self
    }
    pub fn price(mut self, price_id: &str, product_id: &str) -> Self {
        self.0.price_id = price_id.to_owned();
        self.0.product_id = product_id.to_owned();
        self
    }
    pub fn customer(mut self, customer: CustomerInfo) -> Self {
        self.0.customer = customer;
        self
    }
    pub fn quantity(mut self, quantity: i64) -> Self {
        self.0.quantity = quantity;
        self
    }
    pub fn purchased_at(mut self, t: Timestamp) -> Self {
        self.0.purchased_at = t;
        self
    }
    pub fn unpaid(mut self) -> Self {
        self.0.paid = false;
        self
    }
    pub fn payment_intent(mut self, pi: Option<&str>) -> Self {
        self.0.payment_intent = pi.map(str::to_owned);
        self
    }
    pub fn fact(self) -> GrantFact {
        GrantFact::OneTime(self.0)
    }
}

pub fn reversal(payment_intent: &str, kind: ReversalKind, stripe_object: &str) -> PaymentReversal {
    PaymentReversal {
        payment_intent: payment_intent.to_owned(),
        kind,
        stripe_object: stripe_object.to_owned(),
    }
}

/// Everything one planner call needs, owned, so tests can build it inline.
#[derive(Debug, Clone)]
pub struct World {
    pub catalog: Catalog,
    pub grants: Vec<GrantFact>,
    pub reversals: Vec<PaymentReversal>,
    pub complete_subscriptions: Vec<String>,
}

impl World {
    pub fn new(grants: Vec<GrantFact>) -> Self {
        World {
            catalog: catalog(),
            grants,
            reversals: Vec::new(),
            complete_subscriptions: Vec::new(),
        }
    }

    pub fn facts(&self) -> Facts<'_> {
        Facts {
            catalog: &self.catalog,
            grants: &self.grants,
            reversals: &self.reversals,
            complete_subscriptions: &self.complete_subscriptions,
        }
    }

    pub fn plan(&self, current: &[License], now: Timestamp) -> Plan {
        crate::plan::plan(&self.facts(), current, &config(), now)
    }
}

/// The licenses the table holds after `plan` is applied to `current` at
/// `now`: what the real applier does, minus the database. It checks what the
/// applier relies on: `before` is the stored state and each license changes
/// at most once.
pub fn apply(current: &[License], plan: &Plan, now: Timestamp) -> Vec<License> {
    let mut licenses = current.to_vec();
    let mut next_id = licenses.iter().map(|l| l.id).max().unwrap_or(0) + 1;
    let mut touched = Vec::new();
    for action in &plan.actions {
        match action.license_id {
            None => {
                assert!(action.before.is_none(), "an issue has no before: {action:?}");
                assert!(
                    licenses.iter().all(|l| l.grant_key() != action.grant),
                    "issued twice for one grant: {action:?}"
                );
                licenses.push(license_from(action, next_id, now));
                touched.push(next_id);
                next_id += 1;
            }
            Some(id) => {
                assert!(!touched.contains(&id), "license {id} changed twice in one plan");
                touched.push(id);
                let license = licenses
                    .iter_mut()
                    .find(|l| l.id == id)
                    .expect("action on an unknown license");
                assert_eq!(
                    action.before.as_ref(),
                    Some(&license.state()),
                    "before must be the stored state"
                );
                assert_eq!(license.grant_key(), action.grant);
                license.state = action.after.clone();
                assert_eq!(
                    action.override_after.is_some(),
                    license.operator_override.is_some(),
                    "a plan never creates or clears an override"
                );
                license.operator_override = action.override_after.clone();
                license.updated_at = now;
            }
        }
    }
    licenses.sort_by_key(|l| l.id);
    licenses
}

/// The row an `issue` action creates.
pub fn license_from(action: &Action, id: i64, now: Timestamp) -> License {
    License {
        id,
        key: format!("KEY{id:02}-AAAAA-BBBBB-CCCCC-DDDDD"),
        grant: action.grant.clone(),
        stripe_account: None,
        state: action.after.clone(),
        created_at: now,
        updated_at: now,
        operator_override: None,
        activated_at: None,
    }
}

/// Plans `world` against `current`, applies it and returns the new table.
pub fn run(world: &World, current: &[License], now: Timestamp) -> (Plan, Vec<License>) {
    let plan = world.plan(current, now);
    let after = apply(current, &plan, now);
    (plan, after)
}

/// The table after one run on an empty database.
pub fn issued(world: &World, now: Timestamp) -> Vec<License> {
    run(world, &[], now).1
}

pub fn kinds(plan: &Plan) -> Vec<crate::domain::ActionKind> {
    plan.actions.iter().map(|a| a.kind).collect()
}

/// What `licenses <command>` does to `license` at `now` (the store's write
/// of `operator::decide`, minus the database): `Err` when it is refused.
pub fn operate(license: &mut License, command: crate::operator::Command, now: Timestamp) -> anyhow::Result<()> {
    let request = crate::operator::Request {
        command,
        reason: Some("support ticket 7".to_owned()),
        by: "alice".to_owned(),
        now,
        write_back: false,
    };
    let write = crate::operator::decide(license, &request)?;
    license.state = write.state.clone();
    license.operator_override = write.operator_override;
    if let Some(key) = write.new_key {
        license.key = key;
    }
    license.updated_at = now;
    Ok(())
}

/// `licenses pin` of the seats only.
pub fn pin_seats(seats: i32) -> crate::operator::Command {
    crate::operator::Command::Pin {
        hwid_limit: Some(seats),
        ip_limit: None,
        expires_at: None,
    }
}
