//! Where a license comes from: a grant's natural key and the facts the
//! Stripe adapter reports about purchases (licensing-rules §1, §3, §4).

use serde::{Deserialize, Serialize};

use super::Timestamp;

/// Where a grant comes from; `(source_kind, source_id)` is a license's natural key.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::EnumString,
    strum::Display,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum SourceKind {
    /// `si_...`
    SubscriptionItem,
    /// `cs_.../li_...`
    CheckoutLine,
    /// `in_.../il_...`
    InvoiceLine,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The natural key of a grant and of the license it yields (embedded in the
/// license rows).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    diesel::Queryable,
    diesel::QueryableByName,
    diesel::Selectable,
    diesel::Insertable,
)]
#[diesel(table_name = crate::schema::licenses)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct GrantKey {
    pub source_kind: SourceKind,
    pub source_id: String,
}

impl GrantKey {
    pub fn subscription_item(item_id: &str) -> Self {
        GrantKey {
            source_kind: SourceKind::SubscriptionItem,
            source_id: item_id.to_owned(),
        }
    }
    pub fn checkout_line(session_id: &str, line_id: &str) -> Self {
        GrantKey {
            source_kind: SourceKind::CheckoutLine,
            source_id: format!("{session_id}/{line_id}"),
        }
    }
    pub fn invoice_line(invoice_id: &str, line_id: &str) -> Self {
        GrantKey {
            source_kind: SourceKind::InvoiceLine,
            source_id: format!("{invoice_id}/{line_id}"),
        }
    }
}

/// The customer behind a purchase.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CustomerInfo {
    pub id: Option<String>,
    /// Already resolved per §5: customer email, else session `customer_details`,
    /// else invoice `customer_email`.
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
    /// A status this version of the rules does not know. Stripe documents
    /// new enum values as backwards compatible and adds them without an API
    /// version change, so one must never fail a run: the planner skips the
    /// grant with a reason naming the subscription and the value.
    Unknown(String),
}

impl SubscriptionStatus {
    /// Every value Stripe sends maps to a status; unknown ones keep their text.
    pub fn parse(s: &str) -> Self {
        match s {
            "incomplete" => SubscriptionStatus::Incomplete,
            "incomplete_expired" => SubscriptionStatus::IncompleteExpired,
            "trialing" => SubscriptionStatus::Trialing,
            "active" => SubscriptionStatus::Active,
            "past_due" => SubscriptionStatus::PastDue,
            "canceled" => SubscriptionStatus::Canceled,
            "unpaid" => SubscriptionStatus::Unpaid,
            "paused" => SubscriptionStatus::Paused,
            other => SubscriptionStatus::Unknown(other.to_owned()),
        }
    }
}

/// One item of one subscription, with the subscription-level state that
/// decides its license (licensing-rules §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionItemFact {
    pub item_id: String,
    pub subscription_id: String,
    pub status: SubscriptionStatus,
    pub customer: CustomerInfo,
    pub price_id: String,
    pub product_id: String,
    pub quantity: i64,
    pub current_period_start: Timestamp,
    pub current_period_end: Timestamp,
    pub trial_end: Option<Timestamp>,
    pub cancel_at_period_end: bool,
    pub cancel_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    /// `period.end` of the item's newest paid invoice line; when the latest
    /// invoice is unpaid, the item's `current_period_start`.
    pub paid_through: Option<Timestamp>,
    pub created: Timestamp,
    pub livemode: bool,
}

/// One line of a one-time purchase: a paid `payment`-mode Checkout Session or
/// a paid invoice that belongs to no subscription and no session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeLineFact {
    /// `CheckoutLine` or `InvoiceLine`.
    pub key: GrantKey,
    /// `cs_...` or `in_...`: the object shown as the cause of actions.
    pub purchase_id: String,
    pub customer: CustomerInfo,
    pub price_id: String,
    pub product_id: String,
    pub quantity: i64,
    /// Session/invoice `created`: the start of `CREATION` expiry.
    pub purchased_at: Timestamp,
    /// Whether the purchase grants now (session complete and paid or
    /// no_payment_required; invoice paid). Unpaid sessions are reported so a
    /// later run can grant them; the planner issues nothing for them.
    pub paid: bool,
    /// `pi_...`: how refunds and disputes find this license.
    pub payment_intent: Option<String>,
    pub livemode: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantFact {
    Subscription(SubscriptionItemFact),
    OneTime(OneTimeLineFact),
}

impl GrantFact {
    pub fn key(&self) -> GrantKey {
        match self {
            GrantFact::Subscription(s) => GrantKey::subscription_item(&s.item_id),
            GrantFact::OneTime(o) => o.key.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReversalKind {
    /// The charge is refunded in full: the license is revoked.
    FullRefund,
    /// Part of the charge was refunded: nothing changes, it is logged.
    PartialRefund,
    /// A dispute on the charge was lost: the license is revoked.
    DisputeLost,
}

/// Money taken back from a one-time payment, found by its payment intent
/// (never by customer: one customer can hold many licenses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentReversal {
    pub payment_intent: String,
    pub kind: ReversalKind,
    /// `re_...` or `dp_...`: the cause shown in the ledger.
    pub stripe_object: String,
}
