//! The product catalog and its license metadata (licensing-rules §2): which
//! prices are licensed, with which terms, and which products are
//! misconfigured. Pure: the Stripe adapter fills it with plain records.
//!
//! Choices where the rules are silent:
//! - Metadata values are trimmed; a value that is empty after trimming counts
//!   as absent, on the price (so the product's value applies) as on the
//!   product. Keys are matched exactly (case-sensitive), as Lukittu does.
//! - Empty elements of a `product_id` list (`a,,b`, a trailing comma) are
//!   dropped; a list with no id left at all (`,`) is misconfigured.
//! - The price decides which product's metadata applies (`price.product`),
//!   because that is what Stripe bills; the product id a grant reports is only
//!   used to name the product when the price itself is unknown.
//! - A price or product missing from the catalog is a misconfiguration with
//!   key `price`/`product`, so the run reports it instead of guessing.
//! - On a recurring price, `expiration_days`/`expiration_start` are ignored
//!   without being validated (the subscription decides expiry): a typo in a
//!   key that has no effect must not cost a subscriber their license.
//! - When `expiration_days` is set without `expiration_start`, the resolved
//!   terms say `CREATION` explicitly, so every later layer sees the default.

use std::collections::BTreeMap;

use crate::domain::{ExpirationStart, LicenseTerms, Licensing, Misconfiguration};

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
    /// Unix seconds. No purchase of this price is older: the engine reads
    /// lists in `created` segments starting at the oldest price.
    pub created: i64,
}

/// The metadata keys of licensing-rules §2.
pub const PRODUCT_ID: &str = "product_id";
pub const IP_LIMIT: &str = "ip_limit";
pub const HWID_LIMIT: &str = "hwid_limit";
pub const EXPIRATION_DAYS: &str = "expiration_days";
pub const EXPIRATION_START: &str = "expiration_start";

/// The longest product id the id grammar allows.
const MAX_ID_LEN: usize = 128;

/// Products and prices by id. Archived (`active=false`) records resolve like
/// active ones: old subscriptions keep pointing at them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    products: BTreeMap<String, ProductRecord>,
    prices: BTreeMap<String, PriceRecord>,
}

impl Catalog {
    pub fn new(
        products: impl IntoIterator<Item = ProductRecord>,
        prices: impl IntoIterator<Item = PriceRecord>,
    ) -> Catalog {
        let mut catalog = Catalog::default();
        catalog.extend(products, prices);
        catalog
    }

    /// Adds (or replaces, by id) records, e.g. prices the adapter fetched
    /// because a grant pointed at one the catalog did not hold yet.
    pub fn extend(
        &mut self,
        products: impl IntoIterator<Item = ProductRecord>,
        prices: impl IntoIterator<Item = PriceRecord>,
    ) {
        self.products.extend(products.into_iter().map(|p| (p.id.clone(), p)));
        self.prices.extend(prices.into_iter().map(|p| (p.id.clone(), p)));
    }

    /// No product and no price.
    pub fn is_empty(&self) -> bool {
        self.products.is_empty() && self.prices.is_empty()
    }

    /// The number of prices (what grants resolve through).
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn product_count(&self) -> usize {
        self.products.len()
    }

    pub fn contains_price(&self, price_id: &str) -> bool {
        self.prices.contains_key(price_id)
    }

    pub fn contains_product(&self, product_id: &str) -> bool {
        self.products.contains_key(product_id)
    }

    /// One-time prices a one-off invoice or a payment-mode Checkout Session
    /// can grant through: licensed, or meant to be (misconfigured, so the
    /// run still reports them). Empty: those lists cannot grant and a full
    /// scan skips them.
    pub fn one_time_prices_that_grant(&self) -> std::collections::BTreeSet<String> {
        self.prices
            .values()
            .filter(|p| !p.recurring)
            .filter(|p| !matches!(self.resolve(&p.id, &p.product), Licensing::NotLicensed))
            .map(|p| p.id.clone())
            .collect()
    }

    /// The `created` of the oldest price: no purchase is older.
    pub fn oldest_price(&self) -> Option<i64> {
        self.prices.values().map(|p| p.created).min()
    }

    pub fn product_name(&self, product_id: &str) -> Option<&str> {
        self.products.get(product_id).map(|p| p.name.as_str())
    }

    /// What a line of `price_id` grants. `product_id` is the product the
    /// grant reports; it only names the product when the price is unknown.
    pub fn resolve(&self, price_id: &str, product_id: &str) -> Licensing {
        let Some(price) = self.prices.get(price_id) else {
            return Licensing::Misconfigured(Misconfiguration {
                stripe_object: price_id.to_owned(),
                product: product_id.to_owned(),
                key: "price".to_owned(),
                why: format!(
                    "price not found in the catalog (a line of product `{product_id}` uses it); \
                     check that the run reads the same Stripe account and mode as the purchase"
                ),
            });
        };
        let Some(product) = self.products.get(&price.product) else {
            return Licensing::Misconfigured(Misconfiguration {
                stripe_object: price.product.clone(),
                product: price.product.clone(),
                key: "product".to_owned(),
                why: format!(
                    "product not found in the catalog (price `{}` belongs to it); \
                     check that the run reads the same Stripe account and mode as the purchase",
                    price.id
                ),
            });
        };
        match resolve_terms(&Merged { price, product }) {
            Ok(licensing) => licensing,
            Err(bad) => Licensing::Misconfigured(bad),
        }
    }
}

/// Product metadata with the price's values on top, key by key.
struct Merged<'a> {
    price: &'a PriceRecord,
    product: &'a ProductRecord,
}

/// One metadata value and the Stripe object it was read from.
struct Value<'a> {
    text: &'a str,
    from: &'a str,
}

impl<'a> Merged<'a> {
    fn get(&self, key: &str) -> Option<Value<'a>> {
        let present =
            |metadata: &'a BTreeMap<String, String>| metadata.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        if let Some(text) = present(&self.price.metadata) {
            return Some(Value {
                text,
                from: &self.price.id,
            });
        }
        present(&self.product.metadata).map(|text| Value {
            text,
            from: &self.product.id,
        })
    }

    fn misconfigured(&self, value: &Value<'_>, key: &str, why: String) -> Misconfiguration {
        Misconfiguration {
            stripe_object: value.from.to_owned(),
            product: self.product.id.clone(),
            key: key.to_owned(),
            why,
        }
    }
}

fn resolve_terms(m: &Merged<'_>) -> Result<Licensing, Misconfiguration> {
    let Some(ids) = m.get(PRODUCT_ID) else {
        return Ok(Licensing::NotLicensed);
    };
    let product_ids = parse_product_ids(ids.text).map_err(|why| m.misconfigured(&ids, PRODUCT_ID, why))?;
    let ip_limit = parse_limit(m, IP_LIMIT)?;
    let hwid_limit = parse_limit(m, HWID_LIMIT)?;

    let mut warnings = Vec::new();
    let days = m.get(EXPIRATION_DAYS);
    let start = m.get(EXPIRATION_START);
    let (expiration_days, expiration_start) = if m.price.recurring {
        for value in [(EXPIRATION_DAYS, &days), (EXPIRATION_START, &start)] {
            if let (key, Some(v)) = value {
                warnings.push(format!(
                    "`{key}`=`{}` on {} is ignored for recurring price {}: \
                     the subscription decides when its license expires",
                    v.text, v.from, m.price.id
                ));
            }
        }
        (None, None)
    } else {
        let expiration_days = match &days {
            None => None,
            Some(v) => Some(parse_days(v.text).map_err(|why| m.misconfigured(v, EXPIRATION_DAYS, why))?),
        };
        let expiration_start = match (&start, expiration_days) {
            (None, None) => None,
            (None, Some(_)) => Some(ExpirationStart::Creation),
            (Some(v), days) => {
                let parsed = ExpirationStart::parse(v.text).ok_or_else(|| {
                    m.misconfigured(
                        v,
                        EXPIRATION_START,
                        format!(
                            "`{}` is neither `CREATION` nor `ACTIVATION`; set one of them or remove the key",
                            v.text
                        ),
                    )
                })?;
                if days.is_none() {
                    return Err(m.misconfigured(
                        v,
                        EXPIRATION_START,
                        "`expiration_start` only applies together with `expiration_days`; \
                         set `expiration_days` (e.g. `30`) or remove `expiration_start`"
                            .to_owned(),
                    ));
                }
                Some(parsed)
            }
        };
        (expiration_days, expiration_start)
    };

    Ok(Licensing::Licensed {
        terms: LicenseTerms {
            product_ids,
            ip_limit,
            hwid_limit,
            expiration_days,
            expiration_start,
        },
        warnings,
    })
}

fn parse_limit(m: &Merged<'_>, key: &str) -> Result<Option<i32>, Misconfiguration> {
    let Some(v) = m.get(key) else {
        return Ok(None);
    };
    match parse_whole(v.text) {
        Some(n) => Ok(Some(n)),
        None => Err(m.misconfigured(
            &v,
            key,
            format!(
                "`{}` is not a whole number >= 0 (at most {}); set it to e.g. `3` or remove the key",
                v.text,
                i32::MAX
            ),
        )),
    }
}

fn parse_days(text: &str) -> Result<i32, String> {
    match parse_whole(text) {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{text}` is not a whole number of days >= 1 (at most {}); set it to e.g. `30` or remove the key",
            i32::MAX
        )),
    }
}

/// Digits only: `str::parse` would also accept a sign, which no limit needs.
fn parse_whole(text: &str) -> Option<i32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_product_ids(text: &str) -> Result<Vec<String>, String> {
    let mut ids: Vec<String> = Vec::new();
    for id in text.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        if !is_valid_id(id) {
            return Err(format!(
                "`{id}` is not a valid product id: it must start with a letter or digit, contain only \
                 letters, digits, `_`, `.`, `:` and `-`, and be at most {MAX_ID_LEN} characters; \
                 fix the id (separate several ids with commas)"
            ));
        }
        if !ids.iter().any(|seen| seen == id) {
            ids.push(id.to_owned());
        }
    }
    if ids.is_empty() {
        return Err(format!(
            "`{text}` holds no product id; set one id or a comma-separated list"
        ));
    }
    Ok(ids)
}

/// `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`.
pub fn is_valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    id.len() <= MAX_ID_LEN
        && first.is_ascii_alphanumeric()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

#[cfg(test)]
mod tests;
