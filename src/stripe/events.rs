//! Events: triggers naming the objects to re-fetch.

use miniserde::json::Value;
use stripe_core::event::ListEvent;

use super::error::StripeError;
use super::source::{CreatedRange, PAGE, Page, Span, StripeSource, next_cursor, ts};
use crate::domain::Timestamp;

/// The event types that can change a license, for `types[]` (Stripe
/// accepts at most 20). An event only says which object to re-fetch.
pub const RELEVANT_EVENT_TYPES: [&str; 17] = [
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "charge.refunded",
    "charge.dispute.closed",
    "customer.updated",
    "product.created",
    "product.updated",
    "price.created",
    "price.updated",
];

/// One event, as a trigger to re-fetch `object_id` (never a source of truth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFact {
    pub id: String,
    pub event_type: String,
    pub created: Timestamp,
    /// `sub_...`, `cs_...`, `in_...`, `ch_...`, `du_...`, `prod_...`, ...
    pub object_id: String,
    /// The snapshot's `object` (`subscription`, `checkout.session`, ...).
    pub object_type: String,
    /// For an invoice of a subscription: that subscription, whose current
    /// state is what decides its licenses (`parent.subscription_details`).
    pub subscription: Option<String>,
}

impl StripeSource {
    /// One page of relevant events created at or after `created_gte`,
    /// newest first as Stripe orders them; the caller de-duplicates.
    pub async fn events_page(
        &self,
        created_gte: Timestamp,
        after: Option<&str>,
    ) -> Result<Page<EventFact>, StripeError> {
        let range = CreatedRange {
            gte: Some(created_gte),
            lt: None,
        };
        self.events_in(&range, after).await
    }

    /// One page of relevant events created in `created` (see `events_page`).
    pub async fn events_in(&self, created: &CreatedRange, after: Option<&str>) -> Result<Page<EventFact>, StripeError> {
        let mut request = ListEvent::new()
            .types(RELEVANT_EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>())
            .limit(PAGE);
        if let Some(range) = created.query() {
            request = request.created(range);
        }
        if let Some(cursor) = after {
            request = request.starting_after(cursor);
        }
        let list = self.fetch(&request).await?;
        let next = next_cursor(&list, |e| e.id.as_str().to_owned());
        let span = Span::of(&list, |e| e.created);
        let mut items = Vec::with_capacity(list.data.len());
        for event in list.data {
            let id = event.id.as_str().to_owned();
            // `data.object` is untyped in async-stripe: only its id and kind
            // are read, the object itself is re-fetched by the caller.
            let (object_id, object_type, subscription) = match &event.data.object {
                Value::Object(map) => (
                    string_field(map.get("id")),
                    string_field(map.get("object")),
                    invoice_subscription(map),
                ),
                _ => (None, None, None),
            };
            let Some(object_id) = object_id else {
                tracing::warn!(event = %id, "event without an object id: ignored");
                continue;
            };
            items.push(EventFact {
                event_type: event.type_.as_str().to_owned(),
                created: ts(event.created, "created", &format!("event {id}"))?,
                object_id,
                object_type: object_type.unwrap_or_default(),
                subscription,
                id,
            });
        }
        Ok(Page { items, next, span })
    }
}

/// `parent.subscription_details.subscription` of an invoice snapshot.
fn invoice_subscription(map: &miniserde::json::Object) -> Option<String> {
    let Some(Value::Object(parent)) = map.get("parent") else {
        return None;
    };
    let Some(Value::Object(details)) = parent.get("subscription_details") else {
        return None;
    };
    string_field(details.get("subscription"))
}

fn string_field(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_twenty_event_types_are_asked_for() {
        assert!(RELEVANT_EVENT_TYPES.len() <= 20);
    }
}
