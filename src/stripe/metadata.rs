//! The one write licensync makes to Stripe (`--stripe-write-back`): set
//! metadata on the object behind a license, through async-stripe's request
//! builder and the same transport, rate ceiling and account header as
//! every read of the run.

use std::collections::BTreeMap;

use stripe_client_core::{RequestBuilder, StripeMethod};

use super::error::StripeError;
use super::source::StripeSource;
use crate::domain::WriteTarget;

/// A Stripe id in a path: ids are letters, digits and `_`; anything else
/// (never sent by Stripe) is escaped rather than trusted.
const ID: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'_');

#[derive(serde::Serialize)]
struct MetadataForm<'a> {
    metadata: &'a BTreeMap<String, String>,
}

impl StripeSource {
    /// Merges `metadata` into the object's (Stripe keeps the keys it does
    /// not name). `idempotency_key` is the same for the same write, so a
    /// write repeated after a crash is answered, not made again.
    pub async fn set_metadata(
        &self,
        target: WriteTarget,
        id: &str,
        metadata: &BTreeMap<String, String>,
        idempotency_key: &str,
    ) -> Result<(), StripeError> {
        let collection = match target {
            WriteTarget::SubscriptionItem => "subscription_items",
            WriteTarget::PaymentIntent => "payment_intents",
            WriteTarget::Invoice => "invoices",
        };
        let id = percent_encoding::utf8_percent_encode(id, ID);
        let request =
            RequestBuilder::new(StripeMethod::Post, format!("/{collection}/{id}")).form(&MetadataForm { metadata });
        self.transport
            .send(&request, None, None, Some(idempotency_key))
            .await
            .map(|_| ())
    }
}
