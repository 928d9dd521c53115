//! One-off invoices and their invoice items: one grant per line.

use std::collections::{BTreeSet, HashMap};

use stripe_billing::InvoiceItem;
use stripe_billing::invoice::{ListInvoice, RetrieveInvoice};
use stripe_billing::invoice_item::ListInvoiceItem;
use stripe_billing::invoice_line_item::ListInvoiceInvoiceLineItem;
use stripe_checkout::checkout_session::ListCheckoutSession;
use stripe_shared::{Invoice, InvoiceStatus};
use stripe_types::Expandable;

use super::checkout::skipped_session_invoice;
use super::error::StripeError;
use super::source::{
    CreatedRange, Customers, GrantPage, PAGE, Page, StripeSource, customer_info, expand, quantity, ts,
};
use crate::domain::{GrantFact, GrantKey, OneTimeLineFact};

/// An item of a one-off invoice (`GET /v1/invoiceitems`), as far as it can
/// point at a license: the invoice it was billed on and its price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceItemFact {
    pub id: String,
    /// `None` while the item is pending (not on an invoice yet).
    pub invoice: Option<String>,
    pub price: Option<String>,
    /// Created by a subscription (a proration): its subscription grants.
    pub of_subscription: bool,
}

impl InvoiceItemFact {
    /// Whether this item can make its invoice grant: it is no proration of
    /// a subscription and its price is one of `one_time` (the one-time
    /// prices of licensed products).
    pub fn can_grant(&self, one_time: &BTreeSet<String>) -> bool {
        !self.of_subscription && self.price.as_ref().is_some_and(|p| one_time.contains(p))
    }
}

/// A page of invoice items with the invoices that can grant, each already
/// read into its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceItemsPage {
    pub items: Page<InvoiceItemFact>,
    /// By invoice id, every invoice that an item of this page able to grant
    /// ([`InvoiceItemFact::can_grant`]) names and that Stripe expanded. Such
    /// an item whose invoice is missing here names one that was not
    /// expanded: read it with [`StripeSource::one_off_invoice`].
    pub invoices: HashMap<String, GrantPage>,
}

impl StripeSource {
    /// One page of paid invoices with customer and payments expanded.
    /// Invoices of subscriptions are skipped here (their subscription grants);
    /// invoices created by Checkout Sessions are NOT recognisable from the
    /// invoice and must be dropped by the caller using the `session_invoices`
    /// of `checkout_sessions_page`.
    pub async fn invoices_page(&self, after: Option<&str>, created: &CreatedRange) -> Result<GrantPage, StripeError> {
        let request = |with_customer| {
            let mut request = ListInvoice::new()
                .status(InvoiceStatus::Paid)
                .limit(PAGE)
                .expand(expand("data.customer", &["data.payments"], with_customer));
            if let Some(range) = created.query() {
                request = request.created(range);
            }
            request
        };
        let (list, customers) = self.page_with_customers(request, after, invoice_customer).await?;
        let mut page = GrantPage {
            next: list.next(),
            objects: list.len() + customers.len(),
            span: list.span(|i| i.created),
            ..GrantPage::default()
        };
        for invoice in list.into_objects() {
            self.add_invoice(invoice, &customers, &mut page).await?;
        }
        Ok(page)
    }

    /// One page of invoice items already billed on an invoice
    /// (`pending=false`), created in `created`, newest first, each with the
    /// invoice it was billed on expanded (its customer and payments too).
    /// One-off invoices are made of invoice items and subscription renewals
    /// are not, so a full scan finds the one-off invoices that can grant
    /// here, read whole with their items, instead of paging every renewal
    /// invoice or retrieving each one-off invoice (see `reconcile::read`).
    pub async fn invoice_items_page(
        &self,
        after: Option<&str>,
        created: &CreatedRange,
        one_time: &BTreeSet<String>,
    ) -> Result<InvoiceItemsPage, StripeError> {
        let request = |with_customer| {
            let mut request = ListInvoiceItem::new().pending(false).limit(PAGE).expand(expand(
                "data.invoice.customer",
                &["data.invoice", "data.invoice.payments"],
                with_customer,
            ));
            if let Some(range) = created.query() {
                request = request.created(range);
            }
            request
        };
        let expanded_customer = |item: &InvoiceItem| match &item.invoice {
            Some(Expandable::Object(invoice)) => invoice_customer(invoice),
            _ => None,
        };
        let (list, customers) = self.page_with_customers(request, after, expanded_customer).await?;
        let next = list.next();
        let span = list.span(|i| i.date);
        let mut items = Vec::with_capacity(list.len());
        let mut invoices = HashMap::new();
        for item in list.into_objects() {
            let (invoice_id, expanded) = match item.invoice {
                Some(Expandable::Object(invoice)) => {
                    (invoice.id.as_ref().map(|id| id.as_str().to_owned()), Some(invoice))
                }
                Some(Expandable::Id(id)) => (id.as_ref().map(|id| id.as_str().to_owned()), None),
                None => (None, None),
            };
            let fact = InvoiceItemFact {
                id: item.id.as_str().to_owned(),
                invoice: invoice_id,
                price: item
                    .pricing
                    .as_ref()
                    .and_then(|p| p.price_details.as_ref())
                    .map(|d| d.price.id().as_str().to_owned()),
                of_subscription: item.parent.as_ref().is_some_and(|p| p.subscription_details.is_some()),
            };
            // Only an invoice that can grant is read (its lines may take
            // more requests); the others are skipped by the caller anyway.
            if let (Some(id), Some(invoice)) = (&fact.invoice, expanded)
                && fact.can_grant(one_time)
                && !invoices.contains_key(id)
            {
                let mut page = GrantPage {
                    objects: 1,
                    ..GrantPage::default()
                };
                self.add_invoice(*invoice, &customers, &mut page).await?;
                invoices.insert(id.clone(), page);
            }
            items.push(fact);
        }
        Ok(InvoiceItemsPage {
            items: Page { items, next, span },
            invoices,
        })
    }

    /// One invoice found through its items in a full scan, whose caller
    /// already knows the invoices Checkout Sessions created (the sessions
    /// are read first), so unlike [`StripeSource::invoice`] it does not ask.
    pub async fn one_off_invoice(&self, id: &str) -> Result<GrantPage, StripeError> {
        let (invoice, customers) = self.retrieve_invoice(id).await?;
        let mut page = GrantPage {
            objects: 1 + customers.len(),
            ..GrantPage::default()
        };
        self.add_invoice(invoice, &customers, &mut page).await?;
        Ok(page)
    }

    async fn retrieve_invoice(&self, id: &str) -> Result<(Invoice, Customers), StripeError> {
        let request = |with_customer| RetrieveInvoice::new(id).expand(expand("customer", &["payments"], with_customer));
        self.retrieve_with_customer(request, |i| invoice_customer(i).into_iter().collect())
            .await
    }

    /// One invoice, re-fetched. Unlike the page scan it finds out itself
    /// whether a Checkout Session created the invoice (a session paid with
    /// the same payment intent whose `invoice` is this one): then it yields
    /// no grant and lists the invoice in `session_invoices`.
    pub async fn invoice(&self, id: &str) -> Result<GrantPage, StripeError> {
        let (invoice, customers) = self.retrieve_invoice(id).await?;
        let mut page = GrantPage {
            objects: 1 + customers.len(),
            ..GrantPage::default()
        };
        if let Some(pi) = invoice_payment_intent(&invoice) {
            let request = ListCheckoutSession::new().payment_intent(pi).limit(PAGE);
            let sessions = self.page(&request, None, false).await?;
            page.objects += sessions.len();
            let from_session = sessions.objects().any(|s| {
                s.invoice
                    .as_ref()
                    .and_then(|i| i.id().as_ref())
                    .is_some_and(|i| i.as_str() == id)
            }) || sessions.skipped().any(|s| skipped_session_invoice(s) == Some(id));
            if from_session {
                page.session_invoices.push(id.to_owned());
                return Ok(page);
            }
        }
        self.add_invoice(invoice, &customers, &mut page).await?;
        Ok(page)
    }

    async fn add_invoice(
        &self,
        invoice: Invoice,
        customers: &Customers,
        page: &mut GrantPage,
    ) -> Result<(), StripeError> {
        let Some(invoice_id) = invoice.id.as_ref().map(|id| id.as_str().to_owned()) else {
            return Ok(());
        };
        let of_subscription = invoice.subscription.is_some()
            || invoice
                .parent
                .as_ref()
                .is_some_and(|p| p.subscription_details.is_some());
        if of_subscription {
            return Ok(());
        }
        let paid = invoice.status == Some(InvoiceStatus::Paid);
        let customer = customer_info(
            invoice.customer.as_ref(),
            customers,
            invoice.customer_email.as_ref(),
            invoice.customer_name.as_ref(),
        );
        let purchased_at = ts(invoice.created, "created", &format!("invoice {invoice_id}"))?;
        let payment_intent = invoice_payment_intent(&invoice);
        let mut lines = invoice.lines.data;
        if invoice.lines.has_more {
            let request = ListInvoiceInvoiceLineItem::new(invoice_id.as_str()).limit(PAGE);
            let after = lines.last().map(|l| l.id.as_str().to_owned());
            let (more, held) = self.rest_of_list(&request, after).await?;
            page.objects += held;
            lines.extend(more);
        }
        for line in lines {
            let Some(details) = line.pricing.as_ref().and_then(|p| p.price_details.as_ref()) else {
                tracing::warn!(invoice = %invoice_id, line = %line.id.as_str(), "invoice line without a price: no license can be derived from it");
                continue;
            };
            page.grants.push(GrantFact::OneTime(OneTimeLineFact {
                key: GrantKey::invoice_line(&invoice_id, line.id.as_str()),
                purchase_id: invoice_id.clone(),
                customer: customer.clone(),
                price_id: details.price.id().as_str().to_owned(),
                product_id: details.product.clone(),
                quantity: quantity(line.quantity),
                purchased_at,
                paid,
                payment_intent: payment_intent.clone(),
                livemode: invoice.livemode,
            }));
        }
        Ok(())
    }
}

fn invoice_customer(invoice: &Invoice) -> Option<String> {
    invoice.customer.as_ref().map(|c| c.id().as_str().to_owned())
}

/// The payment intent that paid an invoice, from its expanded `payments`
/// (the invoice itself no longer names one since API 2025-03-31).
fn invoice_payment_intent(invoice: &Invoice) -> Option<String> {
    let payments = invoice.payments.as_ref()?;
    let with_intent = |p: &&stripe_shared::InvoicePayment| p.payment.payment_intent.is_some();
    payments
        .data
        .iter()
        .filter(with_intent)
        .find(|p| p.status == "paid")
        .or_else(|| payments.data.iter().find(with_intent))
        .and_then(|p| p.payment.payment_intent.as_ref())
        .map(|pi| pi.id().as_str().to_owned())
}
