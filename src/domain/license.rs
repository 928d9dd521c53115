//! A license as stored, its mutable state, and an operator's override of it
//! (licensing-rules §5, §8).

use serde::{Deserialize, Serialize};

use super::Timestamp;
use super::grant::GrantKey;
use super::terms::ExpirationStart;

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

/// One license as stored (licensing-rules §5): where it comes from, its key,
/// the state runs write, and what an operator holds it to. The store's rows
/// embed the same [`GrantKey`] and [`LicenseState`], so the license's fields
/// are spelled once; JSON output is flat (`#[serde(flatten)]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct License {
    pub id: i64,
    pub key: String,
    #[serde(flatten)]
    pub grant: GrantKey,
    /// The Stripe account the purchase was made in (licensing-rules §9):
    /// `acct_...`, or `None` for the API key's own account.
    pub stripe_account: Option<String>,
    #[serde(flatten)]
    pub state: LicenseState,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// What support holds this license to (licensing-rules §8); `None`: it follows Stripe.
    #[serde(rename = "override")]
    pub operator_override: Option<Override>,
    /// When the key API first answered `VALID` for a license whose expiry
    /// starts at activation (its clock); the next run writes `expires_at`
    /// from it. Kept by the key API, not in the license row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<Timestamp>,
}

/// The mutable part of a license: what the planner computes from Stripe and
/// a run writes, column for column (`licenses` in `schema.rs`).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    diesel::Queryable,
    diesel::QueryableByName,
    diesel::Selectable,
    diesel::Insertable,
)]
#[diesel(table_name = crate::schema::licenses)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct LicenseState {
    pub status: LicenseStatus,
    /// Stored as `text[]`, whose elements PostgreSQL lets be NULL; licensync
    /// never writes one, and reading skips any.
    #[diesel(deserialize_as = ProductIdColumn)]
    pub product_ids: Vec<String>,
    /// The Stripe product's name, for emails (none on licenses issued before
    /// names were kept; the next run that sees the grant fills it in).
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

/// `product_ids` as its `text[]` column holds it (`store::enums` maps it).
#[derive(Debug, Clone, diesel::FromSqlRow)]
pub struct ProductIdColumn(pub Vec<Option<String>>);

impl From<ProductIdColumn> for Vec<String> {
    fn from(column: ProductIdColumn) -> Self {
        column.0.into_iter().flatten().collect()
    }
}

impl License {
    pub fn grant_key(&self) -> GrantKey {
        self.grant.clone()
    }

    pub fn state(&self) -> LicenseState {
        self.state.clone()
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
