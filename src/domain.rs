//! The plain domain vocabulary shared by every layer: what the Stripe adapter
//! reports (facts), what the license table holds (licenses), and the names of
//! the statuses and sources of the licensing rules. Nothing here knows about
//! Stripe's wire types; the enums stored in text columns only carry
//! diesel's derives (their text is strum's, read and written by
//! `store::enums`), so a status is a type everywhere and a string nowhere.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub type Timestamp = DateTime<Utc>;

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

/// The natural key of a grant and of the license it yields.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
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
pub enum LicenseStatus {
    Active,
    Suspended,
    Expired,
    Revoked,
}

impl LicenseStatus {
    pub const ALL: [LicenseStatus; 4] = [
        LicenseStatus::Active,
        LicenseStatus::Suspended,
        LicenseStatus::Expired,
        LicenseStatus::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// The kind of a reconcile run, as reports, the `runs` table and metrics name it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::AsRefStr,
    strum::EnumString,
    strum::Display,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum RunMode {
    Full,
    Incremental,
    Since,
}

/// How a run ended (`running` until it does, or forever if it was killed
/// and no later run has closed it yet).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    strum::AsRefStr,
    strum::EnumString,
    strum::Display,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum RunOutcome {
    Running,
    Succeeded,
    Failed,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::EnumString,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE", ascii_case_insensitive)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum ExpirationStart {
    Creation,
    Activation,
}

impl ExpirationStart {
    pub fn as_str(&self) -> &str {
        self.as_ref()
    }

    /// Case-insensitive, as the metadata rules allow.
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// What a licensed price grants, after price metadata has overridden product
/// metadata key by key (licensing-rules §2). Limits are per unit; the planner
/// multiplies `hwid_limit` by the quantity.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LicenseTerms {
    pub product_ids: Vec<String>,
    pub ip_limit: Option<i32>,
    pub hwid_limit: Option<i32>,
    pub expiration_days: Option<i32>,
    pub expiration_start: Option<ExpirationStart>,
}

/// A product (or price) whose metadata cannot be trusted: its grants are
/// skipped and its existing licenses left exactly as they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Misconfiguration {
    /// `prod_...` (or `price_...` when the bad key is on the price).
    pub stripe_object: String,
    /// The product the grant's price belongs to.
    pub product: String,
    pub key: String,
    pub why: String,
}

impl std::fmt::Display for Misconfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} metadata `{}`: {}", self.stripe_object, self.key, self.why)
    }
}

/// How the catalog classifies a price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Licensing {
    /// The product has no `product_id`: not a licensed product, ignored silently.
    NotLicensed,
    Licensed {
        terms: LicenseTerms,
        /// Warnings to log (e.g. expiration metadata on a recurring price).
        warnings: Vec<String>,
    },
    Misconfigured(Misconfiguration),
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

/// One license as stored (licensing-rules §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    pub id: i64,
    pub key: String,
    pub status: LicenseStatus,
    pub product_ids: Vec<String>,
    /// The Stripe product's name, for emails (none on licenses issued before
    /// names were kept; the next run that sees the grant fills it in).
    pub product_name: Option<String>,
    pub source_kind: SourceKind,
    pub source_id: String,
    /// The Stripe account the purchase was made in (licensing-rules §9):
    /// `acct_...`, or `None` for the API key's own account.
    pub stripe_account: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub stripe_payment_intent: Option<String>,
    pub customer_email: Option<String>,
    pub customer_name: Option<String>,
    pub quantity: i32,
    pub ip_limit: Option<i32>,
    pub hwid_limit: Option<i32>,
    pub expiration_days: Option<i32>,
    pub expiration_start: Option<ExpirationStart>,
    pub expires_at: Option<Timestamp>,
    pub livemode: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// What support holds this license to (licensing-rules §8); `None`: it follows Stripe.
    #[serde(rename = "override")]
    pub operator_override: Option<Override>,
}

impl License {
    pub fn grant_key(&self) -> GrantKey {
        GrantKey {
            source_kind: self.source_kind,
            source_id: self.source_id.clone(),
        }
    }
}

/// The mutable part of a license: what the planner computes from Stripe and
/// the applier writes. A license row is `LicenseState` plus identity (id,
/// key, source) and timestamps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseState {
    pub status: LicenseStatus,
    pub product_ids: Vec<String>,
    pub product_name: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub stripe_payment_intent: Option<String>,
    pub customer_email: Option<String>,
    pub customer_name: Option<String>,
    pub quantity: i32,
    pub ip_limit: Option<i32>,
    pub hwid_limit: Option<i32>,
    pub expiration_days: Option<i32>,
    pub expiration_start: Option<ExpirationStart>,
    pub expires_at: Option<Timestamp>,
    pub livemode: bool,
}

impl License {
    pub fn state(&self) -> LicenseState {
        LicenseState {
            status: self.status,
            product_ids: self.product_ids.clone(),
            product_name: self.product_name.clone(),
            stripe_customer_id: self.stripe_customer_id.clone(),
            stripe_subscription_id: self.stripe_subscription_id.clone(),
            stripe_payment_intent: self.stripe_payment_intent.clone(),
            customer_email: self.customer_email.clone(),
            customer_name: self.customer_name.clone(),
            quantity: self.quantity,
            ip_limit: self.ip_limit,
            hwid_limit: self.hwid_limit,
            expiration_days: self.expiration_days,
            expiration_start: self.expiration_start,
            expires_at: self.expires_at,
            livemode: self.livemode,
        }
    }
}

impl License {
    /// The state Stripe last asked for: the stored state with the held
    /// fields as Stripe wanted them (see [`Override::stripe`]). Without an
    /// override, the stored state.
    pub fn stripe_state(&self) -> LicenseState {
        let mut state = self.state();
        if let Some(o) = &self.operator_override {
            state.status = o.stripe.status;
            state.hwid_limit = o.stripe.hwid_limit;
            state.ip_limit = o.stripe.ip_limit;
            state.expires_at = o.stripe.expires_at;
        }
        state
    }
}

/// A status an operator override holds a license to, whatever Stripe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldStatus {
    Revoked,
    Suspended,
}

impl HeldStatus {
    pub fn status(self) -> LicenseStatus {
        match self {
            HeldStatus::Revoked => LicenseStatus::Revoked,
            HeldStatus::Suspended => LicenseStatus::Suspended,
        }
    }
}

/// The fields an override can hold, as one side (Stripe's) sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldValues {
    pub status: LicenseStatus,
    pub hwid_limit: Option<i32>,
    pub ip_limit: Option<i32>,
    pub expires_at: Option<Timestamp>,
}

impl HeldValues {
    pub fn of(state: &LicenseState) -> HeldValues {
        HeldValues {
            status: state.status,
            hwid_limit: state.hwid_limit,
            ip_limit: state.ip_limit,
            expires_at: state.expires_at,
        }
    }
}

/// An operator override (licensing-rules §8), stored with the license:
/// what it holds, who set it, when and why. Every run plans the license as
/// Stripe's desired state with this applied on top.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// `revoked` or `suspended` whatever Stripe says; `None`: status follows Stripe.
    pub status: Option<HeldStatus>,
    /// Pinned seats.
    pub hwid_limit: Option<i32>,
    /// Pinned IP limit.
    pub ip_limit: Option<i32>,
    /// Pinned expiry (a goodwill extension, or an earlier end).
    pub expires_at: Option<Timestamp>,
    pub reason: String,
    pub by: String,
    pub at: Timestamp,
    /// What Stripe last asked for the fields an override can hold: set from
    /// the license when the override is created, refreshed by every run that
    /// re-plans the license. `licenses release` restores these.
    pub stripe: HeldValues,
}

impl Override {
    /// Whether it pins any field (as opposed to only holding a status).
    pub fn pins_anything(&self) -> bool {
        self.hwid_limit.is_some() || self.ip_limit.is_some() || self.expires_at.is_some()
    }
}

/// What an operator did to a license by hand; the ledger's `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OperatorAction {
    Revoke,
    Suspend,
    Pin,
    Release,
    Reissue,
}

impl OperatorAction {
    /// The ledger's `action` (distinct from the actions of runs).
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Revoke => "operator_revoke",
            OperatorAction::Suspend => "operator_suspend",
            OperatorAction::Pin => "operator_pin",
            OperatorAction::Release => "operator_release",
            OperatorAction::Reissue => "operator_reissue",
        }
    }

    /// The command's name, as the CLI and its JSON output spell it.
    pub fn command(self) -> &'static str {
        match self {
            OperatorAction::Revoke => "revoke",
            OperatorAction::Suspend => "suspend",
            OperatorAction::Pin => "pin",
            OperatorAction::Release => "release",
            OperatorAction::Reissue => "reissue",
        }
    }
}

/// A ledger row's `action`: a change a run made, or what an operator did
/// by hand (`operator_revoke`, ...). Stored as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::AsExpression, diesel::FromSqlRow)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum LedgerAction {
    Run(ActionKind),
    Operator(OperatorAction),
}

impl LedgerAction {
    const OPERATOR: [OperatorAction; 5] = [
        OperatorAction::Revoke,
        OperatorAction::Suspend,
        OperatorAction::Pin,
        OperatorAction::Release,
        OperatorAction::Reissue,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            LedgerAction::Run(action) => action.as_str(),
            LedgerAction::Operator(action) => action.as_str(),
        }
    }
}

impl AsRef<str> for LedgerAction {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for LedgerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LedgerAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let run = ActionKind::ALL.into_iter().map(LedgerAction::Run);
        let operator = Self::OPERATOR.into_iter().map(LedgerAction::Operator);
        run.chain(operator)
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("unknown ledger action `{s}`"))
    }
}

impl Serialize for LedgerAction {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What an outbox row announces; its `kind` column is `license_issued`
/// (once per license), `resend:<n>` or `key_reissued:<n>` (one per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmailKind {
    LicenseIssued,
    /// Support's `mail resend`.
    Resend,
    /// The new key of `licenses reissue`.
    KeyReissued,
}

impl EmailKind {
    /// The kind of an outbox row's `kind` column; `None` for one this version does not know.
    pub fn of(kind: &str) -> Option<EmailKind> {
        let series = kind.split_once(':').map_or(kind, |(series, _)| series);
        match (series, kind.contains(':')) {
            ("license_issued", false) => Some(EmailKind::LicenseIssued),
            ("resend", true) => Some(EmailKind::Resend),
            ("key_reissued", true) => Some(EmailKind::KeyReissued),
            _ => None,
        }
    }

    /// The `kind` column of the `n`-th email of this kind of a license
    /// (`n` is ignored for `license_issued`, which is sent once).
    pub fn column(self, n: i64) -> String {
        match self {
            EmailKind::LicenseIssued => "license_issued".to_owned(),
            EmailKind::Resend => format!("resend:{n}"),
            EmailKind::KeyReissued => format!("key_reissued:{n}"),
        }
    }
}

/// The kinds of change a plan can make (cli.md "A plan").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Issue,
    Extend,
    Shorten,
    Suspend,
    Reinstate,
    Expire,
    Revoke,
    Update,
}

impl ActionKind {
    pub const ALL: [ActionKind; 8] = [
        ActionKind::Issue,
        ActionKind::Extend,
        ActionKind::Shorten,
        ActionKind::Suspend,
        ActionKind::Reinstate,
        ActionKind::Expire,
        ActionKind::Revoke,
        ActionKind::Update,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Issue => "issue",
            ActionKind::Extend => "extend",
            ActionKind::Shorten => "shorten",
            ActionKind::Suspend => "suspend",
            ActionKind::Reinstate => "reinstate",
            ActionKind::Expire => "expire",
            ActionKind::Revoke => "revoke",
            ActionKind::Update => "update",
        }
    }

    /// The key of this action in the report's `counts` object.
    pub fn count_key(self) -> &'static str {
        match self {
            ActionKind::Issue => "issued",
            ActionKind::Extend => "extended",
            ActionKind::Shorten => "shortened",
            ActionKind::Suspend => "suspended",
            ActionKind::Reinstate => "reinstated",
            ActionKind::Expire => "expired",
            ActionKind::Revoke => "revoked",
            ActionKind::Update => "updated",
        }
    }
}

/// Where one row of the email outbox stands (licensing-rules §6). Stored as
/// its snake_case name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    strum::AsRefStr,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumIter,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum EmailStatus {
    /// To send (or being sent under a lease).
    Pending,
    Sent,
    /// Given up after the configured attempts.
    Failed,
    /// The license has no customer address: nothing to send, ever.
    NoRecipient,
    /// Issued silently: the purchase predates `--mail-since`. `mail resend`
    /// still sends it.
    Skipped,
}

impl EmailStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}
