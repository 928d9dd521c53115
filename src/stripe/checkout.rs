//! Checkout Sessions in `payment` mode: one grant per line.

use stripe_checkout::checkout_session::{ListCheckoutSession, ListLineItemsCheckoutSession, RetrieveCheckoutSession};
use stripe_shared::{
    CheckoutSession, CheckoutSessionItem, CheckoutSessionMode, CheckoutSessionPaymentStatus, CheckoutSessionStatus,
};
use stripe_types::List;

use super::error::StripeError;
use super::pages::Skipped;
use super::source::{CreatedRange, Customers, GrantPage, PAGE, StripeSource, customer_info, expand, quantity, ts};
use crate::domain::{GrantFact, GrantKey, OneTimeLineFact};

impl StripeSource {
    /// One page of complete Checkout Sessions with line items and customer
    /// expanded. Only `payment` mode grants (a `subscription`-mode session's
    /// subscription does); every session's invoice goes to `session_invoices`,
    /// a skipped session's too (read from what Stripe sent), so that its
    /// invoice is never counted as a purchase of its own.
    pub async fn checkout_sessions_page(
        &self,
        after: Option<&str>,
        created: &CreatedRange,
    ) -> Result<GrantPage, StripeError> {
        let request = |with_customer| {
            let mut request = ListCheckoutSession::new()
                .status(CheckoutSessionStatus::Complete)
                .limit(PAGE)
                .expand(expand("data.customer", &["data.line_items"], with_customer));
            if let Some(range) = created.query() {
                request = request.created(range);
            }
            request
        };
        let (list, customers) = self.page_with_customers(request, after, session_customer).await?;
        let mut page = GrantPage {
            next: list.next(),
            objects: list.len() + customers.len(),
            span: list.span(|s| s.created),
            ..GrantPage::default()
        };
        let skipped = list.skipped().filter_map(skipped_session_invoice);
        page.session_invoices.extend(skipped.map(str::to_owned));
        for session in list.into_objects() {
            self.add_session(session, &customers, &mut page).await?;
        }
        Ok(page)
    }

    /// One Checkout Session, re-fetched with the same expansions.
    pub async fn checkout_session(&self, id: &str) -> Result<GrantPage, StripeError> {
        let request =
            |with_customer| RetrieveCheckoutSession::new(id).expand(expand("customer", &["line_items"], with_customer));
        let (session, customers) = self
            .retrieve_with_customer(request, |s| session_customer(s).into_iter().collect())
            .await?;
        let mut page = GrantPage {
            objects: 1 + customers.len(),
            ..GrantPage::default()
        };
        self.add_session(session, &customers, &mut page).await?;
        Ok(page)
    }

    async fn add_session(
        &self,
        session: CheckoutSession,
        customers: &Customers,
        page: &mut GrantPage,
    ) -> Result<(), StripeError> {
        if let Some(invoice) = session.invoice.as_ref().and_then(|i| i.id().as_ref()) {
            page.session_invoices.push(invoice.as_str().to_owned());
        }
        if session.mode != CheckoutSessionMode::Payment || session.status != Some(CheckoutSessionStatus::Complete) {
            return Ok(());
        }
        let session_id = session.id.as_str().to_owned();
        let lines = self.session_lines(&session_id, session.line_items, page).await?;
        let paid = matches!(
            session.payment_status,
            CheckoutSessionPaymentStatus::Paid | CheckoutSessionPaymentStatus::NoPaymentRequired
        );
        let details = session.customer_details.as_ref();
        let customer = customer_info(
            session.customer.as_ref(),
            customers,
            // A blank `customer_details.email` must not hide `customer_email`.
            details
                .and_then(|d| d.email.as_ref())
                .filter(|e| !e.trim().is_empty())
                .or(session.customer_email.as_ref()),
            details.and_then(|d| d.name.as_ref()),
        );
        let purchased_at = ts(session.created, "created", &format!("checkout session {session_id}"))?;
        let payment_intent = session.payment_intent.as_ref().map(|p| p.id().as_str().to_owned());
        for line in lines {
            let Some(price) = line.price else {
                tracing::warn!(session = %session_id, line = %line.id.as_str(), "Checkout line without a price: no license can be derived from it");
                continue;
            };
            page.grants.push(GrantFact::OneTime(OneTimeLineFact {
                key: GrantKey::checkout_line(&session_id, line.id.as_str()),
                purchase_id: session_id.clone(),
                customer: customer.clone(),
                price_id: price.id.as_str().to_owned(),
                product_id: price.product.id().as_str().to_owned(),
                quantity: quantity(line.quantity),
                purchased_at,
                paid,
                payment_intent: payment_intent.clone(),
                livemode: session.livemode,
            }));
        }
        Ok(())
    }

    /// All line items of one session: the expanded first page, then
    /// `/v1/checkout/sessions/{id}/line_items` only if it has more (or from
    /// the start if it was not expanded, which should not happen).
    async fn session_lines(
        &self,
        session_id: &str,
        embedded: Option<List<CheckoutSessionItem>>,
        page: &mut GrantPage,
    ) -> Result<Vec<CheckoutSessionItem>, StripeError> {
        let (mut lines, after) = match embedded {
            Some(list) if !list.has_more => return Ok(list.data),
            Some(list) => {
                let after = list.data.last().map(|l| l.id.as_str().to_owned());
                (list.data, after)
            }
            None => (Vec::new(), None),
        };
        let request = ListLineItemsCheckoutSession::new(session_id).limit(PAGE);
        let (more, held) = self.rest_of_list(&request, after).await?;
        page.objects += held;
        lines.extend(more);
        Ok(lines)
    }
}

fn session_customer(session: &CheckoutSession) -> Option<String> {
    session.customer.as_ref().map(|c| c.id().as_str().to_owned())
}

/// The `invoice` of a session that did not decode, as Stripe sent it.
pub(super) fn skipped_session_invoice(session: &Skipped) -> Option<&str> {
    let invoice = &session.raw["invoice"];
    invoice.as_str().or_else(|| invoice["id"].as_str())
}
