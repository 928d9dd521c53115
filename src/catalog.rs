//! The product catalog and its license metadata (licensing-rules §2): which
//! prices are licensed, with which terms, and which products are
//! misconfigured. Pure: the Stripe adapter fills it with plain records.

use std::collections::BTreeMap;

use crate::domain::Licensing;

/// A Stripe product as the catalog needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRecord {
    pub id: String,
    pub name: String,
    pub active: bool,
    pub metadata: BTreeMap<String, String>,
}

/// A Stripe price as the catalog needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRecord {
    pub id: String,
    pub product: String,
    pub active: bool,
    /// `type=recurring`: expiration metadata is ignored with a warning.
    pub recurring: bool,
    pub metadata: BTreeMap<String, String>,
}
