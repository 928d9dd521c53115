//! Events: triggers naming the objects to re-fetch.

use miniserde::json::Value;
use stripe_core::event::ListEvent;
use stripe_shared::Event;

use super::error::StripeError;
use super::source::{CreatedRange, PAGE, Page, StripeSource, ts};
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
        let list = self.page(&request, after, false).await?;
        let (next, span) = (list.next(), list.span(|e| e.created));
        let mut items = Vec::with_capacity(list.len());
        for entry in list.into_entries() {
            // An event async-stripe's `Event` cannot hold still names the
            // object to re-fetch: it is read from what Stripe sent.
            let read = match &entry {
                Ok(event) => read_event(event),
                Err(skipped) => read_raw_event(&skipped.raw),
            };
            let Some((id, event_type, created, object)) = read else {
                tracing::warn!(event = ?entry.as_ref().ok().map(|e| e.id.as_str()), "event without an object id: ignored");
                continue;
            };
            items.push(EventFact {
                created: ts(created, "created", &format!("event {id}"))?,
                event_type,
                object_id: object.id,
                object_type: object.kind.unwrap_or_default(),
                subscription: object.subscription,
                id,
            });
        }
        Ok(Page { items, next, span })
    }
}

/// What an event's `data.object` says of the object to re-fetch.
struct Snapshot {
    id: String,
    /// `object`.
    kind: Option<String>,
    /// For an invoice: `parent.subscription_details.subscription`.
    subscription: Option<String>,
}

/// `(id, type, created, object)` of an event; `None` without an object id.
type EventParts = (String, String, i64, Snapshot);

fn read_event(event: &Event) -> Option<EventParts> {
    // `data.object` is untyped in async-stripe: only its id and kind are
    // read, the object itself is re-fetched by the caller.
    let Value::Object(map) = &event.data.object else {
        return None;
    };
    let string = |value: Option<&Value>| match value {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let field = |map: &miniserde::json::Object, name: &str| match map.get(name) {
        Some(Value::Object(inner)) => Some(inner.clone()),
        _ => None,
    };
    let subscription = field(map, "parent")
        .and_then(|parent| field(&parent, "subscription_details"))
        .and_then(|details| string(details.get("subscription")));
    let snapshot = Snapshot {
        id: string(map.get("id"))?,
        kind: string(map.get("object")),
        subscription,
    };
    Some((
        event.id.as_str().to_owned(),
        event.type_.as_str().to_owned(),
        event.created,
        snapshot,
    ))
}

/// The same, from an event as Stripe sent it.
fn read_raw_event(raw: &serde_json::Value) -> Option<EventParts> {
    let object = &raw["data"]["object"];
    let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
    let snapshot = Snapshot {
        id: text(&object["id"])?,
        kind: text(&object["object"]),
        subscription: text(&object["parent"]["subscription_details"]["subscription"]),
    };
    Some((
        text(&raw["id"])?,
        text(&raw["type"])?,
        raw["created"].as_i64()?,
        snapshot,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_twenty_event_types_are_asked_for() {
        assert!(RELEVANT_EVENT_TYPES.len() <= 20);
    }
}
