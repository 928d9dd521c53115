//! What the catalog makes of product and price metadata (licensing-rules §2).

use serde::{Deserialize, Serialize};

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
