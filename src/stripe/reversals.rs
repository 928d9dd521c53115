//! Refunds and lost disputes, which take a purchase back.

use stripe_core::dispute::ListDispute;
use stripe_core::refund::ListRefund;
use stripe_shared::DisputeStatus;
use stripe_types::Expandable;

use super::error::StripeError;
use super::source::{PAGE, Page, StripeSource};
use crate::domain::{PaymentReversal, ReversalKind};

impl StripeSource {
    /// One page of refunds with their charge expanded: a refund that leaves
    /// the charge fully refunded revokes, a partial one is only logged.
    /// Refunds without a payment intent or not `succeeded` are skipped.
    pub async fn reversals_page(&self, after: Option<&str>) -> Result<Page<PaymentReversal>, StripeError> {
        let request = ListRefund::new().limit(PAGE).expand(vec!["data.charge".to_owned()]);
        let list = self.page(&request, after, false).await?;
        let (next, span) = (list.next(), list.span(|r| r.created));
        let mut items = Vec::new();
        for refund in list.into_objects() {
            if refund.status.as_deref() != Some("succeeded") {
                continue;
            }
            let charge = refund.charge.as_ref().and_then(Expandable::as_object);
            let payment_intent = refund
                .payment_intent
                .as_ref()
                .or_else(|| charge.and_then(|c| c.payment_intent.as_ref()))
                .map(|p| p.id().as_str().to_owned());
            let Some(payment_intent) = payment_intent else {
                continue;
            };
            let kind = match charge {
                Some(c) if c.refunded || c.amount_refunded >= c.amount => ReversalKind::FullRefund,
                Some(_) => ReversalKind::PartialRefund,
                None => {
                    tracing::warn!(refund = %refund.id.as_str(), "refund without its charge: treated as partial (nothing revoked)");
                    ReversalKind::PartialRefund
                }
            };
            items.push(PaymentReversal {
                payment_intent,
                kind,
                stripe_object: refund.id.as_str().to_owned(),
            });
        }
        Ok(Page { items, next, span })
    }

    /// One page of disputes; only lost ones matter.
    pub async fn disputes_page(&self, after: Option<&str>) -> Result<Page<PaymentReversal>, StripeError> {
        let list = self.page(&ListDispute::new().limit(PAGE), after, false).await?;
        let (next, span) = (list.next(), list.span(|d| d.created));
        let items = list
            .into_objects()
            .filter(|d| d.status == DisputeStatus::Lost)
            .filter_map(|d| {
                let payment_intent = d.payment_intent.as_ref().map(|p| p.id().as_str().to_owned());
                if payment_intent.is_none() {
                    tracing::warn!(dispute = %d.id.as_str(), "lost dispute without a payment intent: cannot find its license");
                }
                Some(PaymentReversal {
                    payment_intent: payment_intent?,
                    kind: ReversalKind::DisputeLost,
                    stripe_object: d.id.as_str().to_owned(),
                })
            })
            .collect();
        Ok(Page { items, next, span })
    }
}
