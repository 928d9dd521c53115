//! Which Stripe objects a batch of events asks to re-read (pure). An event
//! is a trigger, never a source of truth: the run re-fetches the object it
//! names and reconciles its current state.
//!
//! Choices (each a row of `routing_table`):
//! - a product or price event makes the run a full scan: any license of
//!   that product may change, and licenses do not record their Stripe product;
//! - an invoice of a subscription re-reads the subscription, whose current
//!   state decides its licenses; a one-off invoice re-reads itself;
//! - a refund or dispute event (`charge.*`) re-reads the refund and dispute
//!   lists (short lists, and the only way to learn the payment intent they
//!   belong to);
//! - `customer.updated` is not acted on: the email of an existing license
//!   is refreshed by the next full run or the next event of its purchase.

use std::collections::BTreeSet;

use crate::stripe::EventFact;

/// What to re-read for a batch of events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Triggers {
    /// A product or price changed: read everything instead.
    pub full_scan: bool,
    /// A charge was refunded or disputed: read refunds and disputes first.
    pub reversals: bool,
    pub subscriptions: BTreeSet<String>,
    pub sessions: BTreeSet<String>,
    pub invoices: BTreeSet<String>,
}

impl Triggers {
    /// Whether the events name a purchase to re-read (and plan).
    pub fn names_purchases(&self) -> bool {
        !(self.subscriptions.is_empty() && self.sessions.is_empty() && self.invoices.is_empty())
    }
}

/// Routes each event to the object it asks to re-read.
pub fn route(events: &[EventFact]) -> Triggers {
    let mut t = Triggers::default();
    for e in events {
        let kind = e.event_type.as_str();
        if kind.starts_with("product.") || kind.starts_with("price.") {
            t.full_scan = true;
        } else if kind.starts_with("customer.subscription.") {
            t.subscriptions.insert(e.object_id.clone());
        } else if kind.starts_with("checkout.session.") {
            t.sessions.insert(e.object_id.clone());
        } else if kind.starts_with("invoice.") {
            match &e.subscription {
                Some(sub) => t.subscriptions.insert(sub.clone()),
                None => t.invoices.insert(e.object_id.clone()),
            };
        } else if kind.starts_with("charge.") {
            t.reversals = true;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, object: &str, subscription: Option<&str>) -> EventFact {
        EventFact {
            id: format!("evt_{object}"),
            event_type: kind.to_owned(),
            created: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            object_id: object.to_owned(),
            object_type: String::new(),
            subscription: subscription.map(str::to_owned),
        }
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn routing_table() {
        let t = |full_scan, reversals, subs: &[&str], sessions: &[&str], invoices: &[&str]| Triggers {
            full_scan,
            reversals,
            subscriptions: set(subs),
            sessions: set(sessions),
            invoices: set(invoices),
        };
        let cases: Vec<(&str, Vec<EventFact>, Triggers)> = vec![
            ("no events", vec![], Triggers::default()),
            (
                "a subscription event re-reads it",
                vec![event("customer.subscription.updated", "sub_1", None)],
                t(false, false, &["sub_1"], &[], &[]),
            ),
            (
                "a session event re-reads it",
                vec![event("checkout.session.completed", "cs_1", None)],
                t(false, false, &[], &["cs_1"], &[]),
            ),
            (
                "an invoice of a subscription re-reads the subscription",
                vec![event("invoice.paid", "in_1", Some("sub_9"))],
                t(false, false, &["sub_9"], &[], &[]),
            ),
            (
                "a one-off invoice re-reads itself",
                vec![event("invoice.paid", "in_2", None)],
                t(false, false, &[], &[], &["in_2"]),
            ),
            (
                "refunds and disputes re-read the reversal lists",
                vec![
                    event("charge.refunded", "ch_1", None),
                    event("charge.dispute.closed", "du_1", None),
                ],
                t(false, true, &[], &[], &[]),
            ),
            (
                "a product change asks for a full scan",
                vec![
                    event("customer.subscription.updated", "sub_1", None),
                    event("product.updated", "prod_1", None),
                ],
                t(true, false, &["sub_1"], &[], &[]),
            ),
            (
                "a price change asks for a full scan",
                vec![event("price.created", "price_1", None)],
                t(true, false, &[], &[], &[]),
            ),
            (
                "customer.updated is not acted on",
                vec![event("customer.updated", "cus_1", None)],
                Triggers::default(),
            ),
            (
                "the same object named twice is re-read once",
                vec![
                    event("customer.subscription.updated", "sub_1", None),
                    event("invoice.paid", "in_1", Some("sub_1")),
                ],
                t(false, false, &["sub_1"], &[], &[]),
            ),
        ];
        for (case, events, expected) in cases {
            assert_eq!(route(&events), expected, "{case}");
        }
    }
}
