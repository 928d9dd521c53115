//! Subscriptions: one grant per subscription item.

use std::collections::HashMap;

use futures::TryStreamExt;
use stripe_billing::invoice_line_item::ListInvoiceInvoiceLineItem;
use stripe_billing::subscription::{ListSubscription, ListSubscriptionStatus, RetrieveSubscription};
use stripe_billing::subscription_item::ListSubscriptionItem;
use stripe_shared::{Invoice, InvoiceLineItem, InvoiceStatus, Subscription, SubscriptionItem};
use stripe_types::Expandable;

use super::error::StripeError;
use super::source::{CreatedRange, Customers, GrantPage, PAGE, StripeSource, customer_info, expand, quantity, ts};
use crate::domain::{GrantFact, SubscriptionItemFact, SubscriptionStatus};

impl StripeSource {
    /// One page of subscriptions of every status, with customer and latest
    /// invoice expanded; one fact per item (items of `incomplete`
    /// subscriptions too: the planner decides). A subscription that does
    /// not decode is skipped (logged): no fact, and not complete.
    pub async fn subscriptions_page(
        &self,
        after: Option<&str>,
        created: &CreatedRange,
    ) -> Result<GrantPage, StripeError> {
        let request = |with_customer| {
            let mut request = ListSubscription::new()
                .status(ListSubscriptionStatus::All)
                .limit(PAGE)
                .expand(expand("data.customer", &["data.latest_invoice"], with_customer));
            if let Some(range) = created.query() {
                request = request.created(range);
            }
            request
        };
        let (list, customers) = self
            .page_with_customers(request, after, |s: &Subscription| {
                Some(s.customer.id().as_str().to_owned())
            })
            .await?;
        let mut page = GrantPage {
            next: list.next(),
            objects: list.len() + customers.len(),
            span: list.span(|s| s.created),
            ..GrantPage::default()
        };
        for subscription in list.into_objects() {
            self.add_subscription(subscription, &customers, &mut page).await?;
        }
        Ok(page)
    }

    /// One subscription, re-fetched with the same expansions (incremental runs).
    pub async fn subscription(&self, id: &str) -> Result<GrantPage, StripeError> {
        let request = |with_customer| {
            RetrieveSubscription::new(id).expand(expand("customer", &["latest_invoice"], with_customer))
        };
        let (subscription, customers) = self
            .retrieve_with_customer(request, |s| vec![s.customer.id().as_str().to_owned()])
            .await?;
        let mut page = GrantPage {
            objects: 1 + customers.len(),
            ..GrantPage::default()
        };
        self.add_subscription(subscription, &customers, &mut page).await?;
        Ok(page)
    }

    async fn add_subscription(
        &self,
        subscription: Subscription,
        customers: &Customers,
        page: &mut GrantPage,
    ) -> Result<(), StripeError> {
        let sub_id = subscription.id.as_str().to_owned();
        // An unknown status is a fact too: the planner skips its grants.
        let status = SubscriptionStatus::parse(subscription.status.as_str());
        let mut items = subscription.items.data;
        // Every item read: only then does an item missing from the facts
        // mean it was removed in Stripe.
        let mut complete = true;
        if subscription.items.has_more {
            let request = ListSubscriptionItem::new(sub_id.as_str()).limit(PAGE);
            let after = items.last().map(|i| i.id.as_str().to_owned());
            let mut pages = std::pin::pin!(self.pages(&request, after));
            while let Some(list) = pages.try_next().await? {
                page.objects += list.len();
                complete &= list.skipped().next().is_none();
                items.extend(list.into_objects());
            }
        }
        let latest = subscription.latest_invoice.as_ref().and_then(Expandable::as_object);
        let paid_lines = match latest {
            Some(invoice) if invoice.status == Some(InvoiceStatus::Paid) => {
                let Some(ends) = self.item_period_ends(invoice, &items, page).await? else {
                    tracing::warn!(subscription = %sub_id, "a line of the latest invoice does not decode, so what was paid is unknown: subscription skipped, its licenses left as they are");
                    return Ok(());
                };
                Some(ends)
            }
            _ => None,
        };
        let customer = customer_info(Some(&subscription.customer), customers, None, None);
        let where_ = format!("subscription {sub_id}");
        for item in items {
            let current_period_start = ts(item.current_period_start, "current_period_start", &where_)?;
            // §3: paid through the newest paid line of the item; an unpaid
            // latest invoice means the paid period ended where this one began.
            let paid_through = match (latest, &paid_lines) {
                (None, _) => None,
                (Some(_), Some(ends)) => match ends.get(item.id.as_str()) {
                    Some(end) => Some(ts(*end, "period.end", &where_)?),
                    None => Some(current_period_start),
                },
                (Some(_), None) => Some(current_period_start),
            };
            page.grants.push(GrantFact::Subscription(SubscriptionItemFact {
                item_id: item.id.as_str().to_owned(),
                subscription_id: sub_id.clone(),
                status: status.clone(),
                customer: customer.clone(),
                price_id: item.price.id.as_str().to_owned(),
                product_id: item.price.product.id().as_str().to_owned(),
                quantity: quantity(item.quantity),
                current_period_start,
                current_period_end: ts(item.current_period_end, "current_period_end", &where_)?,
                trial_end: subscription
                    .trial_end
                    .map(|t| ts(t, "trial_end", &where_))
                    .transpose()?,
                cancel_at_period_end: subscription.cancel_at_period_end,
                cancel_at: subscription
                    .cancel_at
                    .map(|t| ts(t, "cancel_at", &where_))
                    .transpose()?,
                ended_at: subscription.ended_at.map(|t| ts(t, "ended_at", &where_)).transpose()?,
                paid_through,
                // The item's own creation: an item added later was bought later.
                created: ts(item.created, "created", &where_)?,
                livemode: subscription.livemode,
            }));
        }
        if complete {
            page.complete_subscriptions.push(sub_id);
        } else {
            tracing::warn!(subscription = %sub_id, "an item does not decode: its subscription is not complete, so no license expires for an item missing from it");
        }
        Ok(())
    }

    /// The latest `period.end` of each subscription item's lines on a paid
    /// invoice; pages the invoice's lines only when an item has no line in
    /// the embedded first page. `None` when a paged line does not decode
    /// (its item, and so what was paid, is unknown).
    async fn item_period_ends(
        &self,
        invoice: &Invoice,
        items: &[SubscriptionItem],
        page: &mut GrantPage,
    ) -> Result<Option<HashMap<String, i64>>, StripeError> {
        let mut ends: HashMap<String, i64> = HashMap::new();
        let note = |line: &InvoiceLineItem, ends: &mut HashMap<String, i64>| {
            let item = line
                .parent
                .as_ref()
                .and_then(|p| p.subscription_item_details.as_ref())
                .map(|d| d.subscription_item.clone());
            if let Some(item) = item {
                let end = ends.entry(item).or_insert(line.period.end);
                *end = (*end).max(line.period.end);
            }
        };
        for line in &invoice.lines.data {
            note(line, &mut ends);
        }
        let missing = items.iter().any(|i| !ends.contains_key(i.id.as_str()));
        if let (true, true, Some(invoice_id)) = (invoice.lines.has_more, missing, invoice.id.as_ref()) {
            let request = ListInvoiceInvoiceLineItem::new(invoice_id.as_str()).limit(PAGE);
            let after = invoice.lines.data.last().map(|l| l.id.as_str().to_owned());
            let mut pages = std::pin::pin!(self.pages(&request, after));
            while let Some(list) = pages.try_next().await? {
                page.objects += list.len();
                if list.skipped().next().is_some() {
                    return Ok(None);
                }
                for line in list.objects() {
                    note(line, &mut ends);
                }
            }
        }
        Ok(Some(ends))
    }
}

#[cfg(test)]
mod tests {
    use stripe_client_core::StripeRequest;

    use super::*;

    #[test]
    fn list_requests_carry_expand_limit_and_status_as_stripe_expects() {
        let query = ListSubscription::new()
            .status(ListSubscriptionStatus::All)
            .limit(PAGE)
            .expand(vec!["data.customer".to_owned(), "data.latest_invoice".to_owned()])
            .build()
            .query
            .unwrap();
        let decoded = query.replace("%5B", "[").replace("%5D", "]");
        assert!(decoded.contains("status=all"), "{decoded}");
        assert!(decoded.contains("limit=100"), "{decoded}");
        assert!(
            decoded.contains("data.customer") && decoded.contains("data.latest_invoice"),
            "{decoded}"
        );
    }
}
