//! Write-back (`--stripe-write-back`): which Stripe object shows which keys,
//! and the metadata it gets, within Stripe's limits. Pure: the store queues
//! and reads the rows, `crate::write_back` sends them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{GrantKey, SourceKind};

/// The metadata key of a subscription item's license key.
pub const KEY_FIELD: &str = "licensync_key";
/// The metadata key of a subscription item's license id.
pub const LICENSE_ID_FIELD: &str = "licensync_license_id";
/// The metadata key of a one-time purchase's keys, comma-separated.
pub const KEYS_FIELD: &str = "licensync_keys";
/// How many of a one-time purchase's keys did not fit in [`KEYS_FIELD`].
pub const KEYS_MORE_FIELD: &str = "licensync_keys_more";
/// Stripe's limit on one metadata value.
pub const MAX_VALUE_CHARS: usize = 500;

/// The Stripe object a write sets metadata on.
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
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum WriteTarget {
    /// `POST /v1/subscription_items/si_...`
    SubscriptionItem,
    /// `POST /v1/payment_intents/pi_...`: a Checkout Session's payment.
    PaymentIntent,
    /// `POST /v1/invoices/in_...`: a one-off invoice.
    Invoice,
}

impl WriteTarget {
    /// The restricted key's permission a write needs (as Stripe names it
    /// in a 403), and its name in the Dashboard.
    pub fn permission(self) -> (&'static str, &'static str) {
        match self {
            WriteTarget::SubscriptionItem => ("rak_subscription_write", "Subscriptions: Write"),
            WriteTarget::PaymentIntent => ("rak_payment_intent_write", "PaymentIntents: Write"),
            WriteTarget::Invoice => ("rak_invoice_write", "Invoices: Write"),
        }
    }
}

/// Where one queued write stands.
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
    diesel::AsExpression,
    diesel::FromSqlRow,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum WriteStatus {
    /// To send (again, after a retryable failure).
    Pending,
    /// Stripe holds the metadata.
    Sent,
    /// Stripe refused it for good (the object is gone, its metadata is
    /// full): not retried until the license changes key again.
    Refused,
}

/// The object one license's key is written onto, and the purchase whose
/// licenses it shows; `None` for a Checkout Session without a payment
/// intent (nothing was charged: nothing to show it on).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WriteTo {
    pub target: WriteTarget,
    pub target_id: String,
    pub source_kind: SourceKind,
    /// `si_...`, `cs_...` or `in_...`: the part of the grant's source id
    /// before `/`.
    pub purchase: String,
}

impl WriteTo {
    pub fn for_grant(grant: &GrantKey, payment_intent: Option<&str>) -> Option<WriteTo> {
        let purchase = grant.source_id.split('/').next().unwrap_or(&grant.source_id).to_owned();
        let (target, target_id) = match grant.source_kind {
            SourceKind::SubscriptionItem => (WriteTarget::SubscriptionItem, purchase.clone()),
            SourceKind::CheckoutLine => (WriteTarget::PaymentIntent, payment_intent?.to_owned()),
            SourceKind::InvoiceLine => (WriteTarget::Invoice, purchase.clone()),
        };
        Some(WriteTo {
            target,
            target_id,
            source_kind: grant.source_kind,
            purchase,
        })
    }
}

/// The metadata an object gets from its licenses `(id, key)`, oldest
/// first: a subscription item its one license's key and id; a one-time
/// purchase every key of its lines, comma-separated, as many whole keys
/// as fit in Stripe's 500 characters, and the count of those that did not
/// under [`KEYS_MORE_FIELD`] (`licensync licenses list --customer` shows
/// them all). Three entries at most, well within Stripe's 50 per object.
pub fn metadata_for(target: WriteTarget, licenses: &[(i64, String)]) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    match target {
        WriteTarget::SubscriptionItem => {
            if let Some((id, key)) = licenses.last() {
                metadata.insert(KEY_FIELD.to_owned(), key.clone());
                metadata.insert(LICENSE_ID_FIELD.to_owned(), id.to_string());
            }
        }
        WriteTarget::PaymentIntent | WriteTarget::Invoice => {
            let mut keys = String::new();
            let mut more = 0usize;
            for (_, key) in licenses {
                let grown = keys.chars().count() + usize::from(!keys.is_empty()) + key.chars().count();
                if more == 0 && grown <= MAX_VALUE_CHARS {
                    if !keys.is_empty() {
                        keys.push(',');
                    }
                    keys.push_str(key);
                } else {
                    more += 1;
                }
            }
            if !keys.is_empty() {
                metadata.insert(KEYS_FIELD.to_owned(), keys);
            }
            if more > 0 {
                metadata.insert(KEYS_MORE_FIELD.to_owned(), more.to_string());
            }
        }
    }
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> String {
        format!("AAAAA-BBBBB-CCCCC-DDDDD-{n:05}")
    }

    #[test]
    fn a_subscription_item_shows_its_key_and_license_id() {
        let m = metadata_for(WriteTarget::SubscriptionItem, &[(42, key(1))]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[KEY_FIELD], key(1));
        assert_eq!(m[LICENSE_ID_FIELD], "42");
    }

    #[test]
    fn a_purchase_shows_every_key_that_fits_and_counts_the_rest() {
        let two: Vec<(i64, String)> = (1..=2).map(|n| (n as i64, key(n))).collect();
        let m = metadata_for(WriteTarget::PaymentIntent, &two);
        assert_eq!(m[KEYS_FIELD], format!("{},{}", key(1), key(2)));
        assert!(!m.contains_key(KEYS_MORE_FIELD));
        // 29-character keys: 16 fit in 500 characters with their commas.
        let many: Vec<(i64, String)> = (1..=20).map(|n| (n as i64, key(n))).collect();
        let m = metadata_for(WriteTarget::Invoice, &many);
        let shown: Vec<&str> = m[KEYS_FIELD].split(',').collect();
        assert_eq!(shown.len(), 16);
        assert_eq!(shown[0], key(1));
        assert!(m[KEYS_FIELD].chars().count() <= MAX_VALUE_CHARS);
        assert_eq!(m[KEYS_MORE_FIELD], "4");
    }

    #[test]
    fn objects_follow_the_grant() {
        let item = WriteTo::for_grant(&GrantKey::subscription_item("si_1"), None).unwrap();
        assert_eq!(
            (item.target, item.target_id.as_str(), item.purchase.as_str()),
            (WriteTarget::SubscriptionItem, "si_1", "si_1")
        );
        let line = GrantKey::checkout_line("cs_1", "li_2");
        let session = WriteTo::for_grant(&line, Some("pi_3")).unwrap();
        assert_eq!(
            (session.target, session.target_id.as_str(), session.purchase.as_str()),
            (WriteTarget::PaymentIntent, "pi_3", "cs_1")
        );
        assert_eq!(
            WriteTo::for_grant(&line, None),
            None,
            "no payment intent, nothing to write on"
        );
        let invoice = WriteTo::for_grant(&GrantKey::invoice_line("in_1", "il_2"), Some("pi_9")).unwrap();
        assert_eq!(
            (invoice.target, invoice.target_id.as_str(), invoice.purchase.as_str()),
            (WriteTarget::Invoice, "in_1", "in_1")
        );
    }
}
