//! What licensync reads from Stripe, one page (up to 100 objects) at a
//! time, as plain domain facts: the catalog, the grants of subscriptions,
//! Checkout Sessions and one-off invoices, refunds and lost disputes, and
//! events. Every call goes through an async-stripe request builder and is
//! decoded into async-stripe's own types; related objects come through
//! `expand[]`, never one request per object. Memory stays bounded by the
//! page: nothing is accumulated across pages here (except the catalog,
//! which the planner needs whole).

use std::collections::{BTreeMap, HashMap};

use chrono::DateTime;
use miniserde::json::Value;
use stripe_billing::invoice::{ListInvoice, RetrieveInvoice};
use stripe_billing::invoice_item::ListInvoiceItem;
use stripe_billing::invoice_line_item::ListInvoiceInvoiceLineItem;
use stripe_billing::subscription::{ListSubscription, ListSubscriptionStatus, RetrieveSubscription};
use stripe_billing::subscription_item::ListSubscriptionItem;
use stripe_checkout::checkout_session::{ListCheckoutSession, ListLineItemsCheckoutSession, RetrieveCheckoutSession};
use stripe_client_core::StripeRequest;
use stripe_core::customer::{RetrieveCustomer, RetrieveCustomerReturned};
use stripe_core::dispute::ListDispute;
use stripe_core::event::ListEvent;
use stripe_core::refund::ListRefund;
use stripe_product::price::ListPrice;
use stripe_product::product::ListProduct;
use stripe_shared::{
    CheckoutSession, CheckoutSessionItem, CheckoutSessionMode, CheckoutSessionPaymentStatus, CheckoutSessionStatus,
    Customer, DisputeStatus, Invoice, InvoiceLineItem, InvoiceStatus, Subscription, SubscriptionItem,
};
use stripe_types::{Expandable, List, RangeBoundsTs, RangeQueryTs};

use super::error::StripeError;
use super::transport::{StripeConfig, Transport};
use crate::catalog::{PriceRecord, ProductRecord};
use crate::domain::{
    CustomerInfo, GrantFact, GrantKey, OneTimeLineFact, PaymentReversal, ReversalKind, SubscriptionItemFact,
    SubscriptionStatus, Timestamp,
};

/// Stripe's maximum page size.
const PAGE: i64 = 100;

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

/// Where a page sits in its list: the `created` of its first (newest) and
/// last (oldest) top-level object, as Stripe ordered them. The engine
/// splits the rest of a list into `created` segments from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub newest: Option<i64>,
    pub oldest: Option<i64>,
    /// Top-level objects Stripe listed on the page (before any filtering).
    pub listed: usize,
}

impl Span {
    fn of<T>(list: &List<T>, created: impl Fn(&T) -> i64) -> Span {
        Span {
            newest: list.data.first().map(&created),
            oldest: list.data.last().map(&created),
            listed: list.data.len(),
        }
    }
}

/// One page of a plain list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `starting_after` cursor of the next page; `None` on the last page.
    pub next: Option<String>,
    pub span: Span,
}

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

/// A page of invoice items with the invoices they were billed on, each
/// already read into its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceItemsPage {
    pub items: Page<InvoiceItemFact>,
    /// By invoice id, every invoice an item of this page names and Stripe
    /// expanded. An item whose invoice is missing here names one that was
    /// not expanded: read it with [`StripeSource::one_off_invoice`].
    pub invoices: HashMap<String, GrantPage>,
    /// Customers looked up one by one (the page was read without the
    /// customer expansion; see `fetch_with_customers`).
    pub customers: usize,
}

/// One page of purchases turned into grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantPage {
    pub grants: Vec<GrantFact>,
    /// Subscriptions whose every item is in `grants` (items were paged to the
    /// end), so a license of an item missing from them was removed in Stripe.
    pub complete_subscriptions: Vec<String>,
    /// Invoices created by the Checkout Sessions of this page (the session's
    /// `invoice`). They belong to the session's purchase: the caller must not
    /// count them again when it meets them in `invoices_page`. An invoice
    /// does not say which session created it, so the full scan collects
    /// these from the sessions; `invoice(id)` checks it itself.
    pub session_invoices: Vec<String>,
    /// The `starting_after` cursor of the next page; `None` on the last page.
    pub next: Option<String>,
    /// Stripe objects read to build this page (top-level and sub-paged).
    pub objects: usize,
    pub span: Span,
}

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

/// A `created` filter; both ends open when unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreatedRange {
    pub gte: Option<Timestamp>,
    pub lt: Option<Timestamp>,
}

impl CreatedRange {
    fn query(&self) -> Option<RangeQueryTs> {
        if self.gte.is_none() && self.lt.is_none() {
            return None;
        }
        Some(RangeQueryTs::Bounds(RangeBoundsTs {
            gte: self.gte.map(|t| t.timestamp()),
            lt: self.lt.map(|t| t.timestamp()),
            ..Default::default()
        }))
    }
}

/// Reads Stripe for licensync.
#[derive(Debug)]
pub struct StripeSource {
    transport: Transport,
    livemode: bool,
}

fn ts(secs: i64, what: &str, object: &str) -> Result<Timestamp, StripeError> {
    DateTime::from_timestamp(secs, 0).ok_or_else(|| StripeError::Decode {
        path: object.to_owned(),
        message: format!("`{what}` = {secs} is not a valid unix timestamp"),
    })
}

fn quantity(q: Option<u64>) -> i64 {
    i64::try_from(q.unwrap_or(1)).unwrap_or(i64::MAX)
}

/// Trimmed, blank as none, and without NUL, which PostgreSQL text cannot hold.
fn non_empty(text: Option<&String>) -> Option<String> {
    text.map(|s| s.replace('\0', "").trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Customers looked up one by one, by id, when a page had to be read
/// without the customer expansion (see `fetch_with_customers`).
type Customers = HashMap<String, CustomerInfo>;

/// §5: the expanded (or looked-up) customer's email, else the purchase's own email.
fn customer_info(
    customer: Option<&Expandable<Customer>>,
    looked_up: &Customers,
    email_fallback: Option<&String>,
    name_fallback: Option<&String>,
) -> CustomerInfo {
    let (id, email, name) = match customer {
        Some(Expandable::Object(c)) => (
            Some(c.id.as_str().to_owned()),
            non_empty(c.email.as_ref()),
            non_empty(c.name.as_ref()),
        ),
        Some(Expandable::Id(id)) => match looked_up.get(id.as_str()) {
            Some(info) => (Some(id.as_str().to_owned()), info.email.clone(), info.name.clone()),
            None => (Some(id.as_str().to_owned()), None, None),
        },
        None => (None, None, None),
    };
    CustomerInfo {
        id,
        email: email.or_else(|| non_empty(email_fallback)),
        name: name.or_else(|| non_empty(name_fallback)),
    }
}

fn next_cursor<T>(list: &List<T>, id: impl Fn(&T) -> String) -> Option<String> {
    if list.has_more { list.data.last().map(id) } else { None }
}

impl StripeSource {
    pub fn new(config: StripeConfig) -> Result<StripeSource, StripeError> {
        let livemode = config.api_key.livemode();
        Ok(StripeSource {
            transport: Transport::new(&config)?,
            livemode,
        })
    }

    /// The key's mode: licenses of the other mode must never be touched.
    pub fn livemode(&self) -> bool {
        self.livemode
    }

    /// HTTP attempts made so far (retries included), for the run record.
    pub fn requests(&self) -> u64 {
        self.transport.requests()
    }

    /// Of those, the ones Stripe answered 429 (rate limited).
    pub fn rate_limited(&self) -> u64 {
        self.transport.rate_limited()
    }

    /// Sends one async-stripe request through the transport and decodes the
    /// answer with async-stripe's type for it.
    async fn fetch<R>(&self, request: &R) -> Result<R::Output, StripeError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        let path = format!("/v1{}", request.build().path);
        request
            .customize()
            .send(&self.transport)
            .await
            .map_err(|e| e.on_path(&path, std::any::type_name::<R::Output>()))
    }

    /// Fetches `with_customer` (customer expanded). A deleted customer
    /// expands to a stub (`{"id","object","deleted":true}`) that async-stripe's
    /// `Customer` cannot hold, which fails the whole answer; then the same
    /// request is sent `without_customer` and the customers it names are
    /// looked up one by one (`RetrieveCustomer` knows deleted customers),
    /// so one deleted customer cannot stop a full scan.
    async fn fetch_with_customers<R>(
        &self,
        with_customer: &R,
        without_customer: &R,
        customer_ids: impl Fn(&R::Output) -> Vec<String>,
    ) -> Result<(R::Output, Customers), StripeError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        let first = match self.fetch(with_customer).await {
            Err(StripeError::Decode { path, message }) => {
                tracing::warn!(%path, %message, "answer with expanded customers did not decode (a deleted customer?); reading it again without that expansion");
                self.fetch(without_customer).await?
            }
            other => return other.map(|answer| (answer, Customers::new())),
        };
        let mut ids = customer_ids(&first);
        ids.sort();
        ids.dedup();
        let mut customers = Customers::new();
        for id in ids {
            let info = match self.fetch(&RetrieveCustomer::new(id.as_str())).await? {
                RetrieveCustomerReturned::Customer(c) => CustomerInfo {
                    id: Some(id.clone()),
                    email: non_empty(c.email.as_ref()),
                    name: non_empty(c.name.as_ref()),
                },
                RetrieveCustomerReturned::DeletedCustomer(_) => CustomerInfo {
                    id: Some(id.clone()),
                    email: None,
                    name: None,
                },
            };
            customers.insert(id, info);
        }
        Ok((first, customers))
    }

    /// Every product and price, archived ones included (old subscriptions
    /// keep pointing at them), 100 per request.
    pub async fn catalog(&self) -> Result<(Vec<ProductRecord>, Vec<PriceRecord>), StripeError> {
        let mut products = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListProduct::new().limit(PAGE);
            if let Some(cursor) = &after {
                request = request.starting_after(cursor);
            }
            let list = self.fetch(&request).await?;
            after = next_cursor(&list, |p| p.id.as_str().to_owned());
            products.extend(list.data.into_iter().map(|p| ProductRecord {
                id: p.id.as_str().to_owned(),
                name: p.name.replace('\0', ""),
                active: p.active,
                metadata: p.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            }));
            if after.is_none() {
                break;
            }
        }
        let mut prices = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = ListPrice::new().limit(PAGE);
            if let Some(cursor) = &after {
                request = request.starting_after(cursor);
            }
            let list = self.fetch(&request).await?;
            after = next_cursor(&list, |p| p.id.as_str().to_owned());
            prices.extend(list.data.into_iter().map(|p| PriceRecord {
                id: p.id.as_str().to_owned(),
                product: p.product.id().as_str().to_owned(),
                active: p.active,
                recurring: p.recurring.is_some(),
                metadata: p.metadata.into_iter().collect::<BTreeMap<_, _>>(),
                created: p.created,
            }));
            if after.is_none() {
                break;
            }
        }
        Ok((products, prices))
    }

    /// One page of subscriptions of every status, with customer and latest
    /// invoice expanded; one fact per item (items of `incomplete`
    /// subscriptions too: the planner decides).
    pub async fn subscriptions_page(
        &self,
        after: Option<&str>,
        created: &CreatedRange,
    ) -> Result<GrantPage, StripeError> {
        let request = |expand: &[&str]| {
            let mut request = ListSubscription::new()
                .status(ListSubscriptionStatus::All)
                .limit(PAGE)
                .expand(expand.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>());
            if let Some(cursor) = after {
                request = request.starting_after(cursor);
            }
            if let Some(range) = created.query() {
                request = request.created(range);
            }
            request
        };
        let (list, customers) = self
            .fetch_with_customers(
                &request(&["data.customer", "data.latest_invoice"]),
                &request(&["data.latest_invoice"]),
                |list| list.data.iter().map(|s| s.customer.id().as_str().to_owned()).collect(),
            )
            .await?;
        let mut page = GrantPage {
            next: next_cursor(&list, |s| s.id.as_str().to_owned()),
            objects: list.data.len() + customers.len(),
            span: Span::of(&list, |s| s.created),
            ..GrantPage::default()
        };
        for subscription in list.data {
            self.add_subscription(subscription, &customers, &mut page).await?;
        }
        Ok(page)
    }

    /// One subscription, re-fetched with the same expansions (incremental runs).
    pub async fn subscription(&self, id: &str) -> Result<GrantPage, StripeError> {
        let request = |expand: &[&str]| {
            RetrieveSubscription::new(id).expand(expand.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
        };
        let (subscription, customers) = self
            .fetch_with_customers(
                &request(&["customer", "latest_invoice"]),
                &request(&["latest_invoice"]),
                |s| vec![s.customer.id().as_str().to_owned()],
            )
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
        if subscription.items.has_more {
            let mut after = items.last().map(|i| i.id.as_str().to_owned());
            while let Some(cursor) = after {
                let request = ListSubscriptionItem::new(sub_id.as_str())
                    .limit(PAGE)
                    .starting_after(cursor);
                let list = self.fetch(&request).await?;
                page.objects += list.data.len();
                after = next_cursor(&list, |i| i.id.as_str().to_owned());
                items.extend(list.data);
            }
        }
        let latest = subscription.latest_invoice.as_ref().and_then(Expandable::as_object);
        let paid_lines = match latest {
            Some(invoice) if invoice.status == Some(InvoiceStatus::Paid) => {
                Some(self.item_period_ends(invoice, &items, page).await?)
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
        page.complete_subscriptions.push(sub_id);
        Ok(())
    }

    /// The latest `period.end` of each subscription item's lines on a paid
    /// invoice; pages the invoice's lines only when an item has no line in
    /// the embedded first page.
    async fn item_period_ends(
        &self,
        invoice: &Invoice,
        items: &[SubscriptionItem],
        page: &mut GrantPage,
    ) -> Result<HashMap<String, i64>, StripeError> {
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
            let mut after = invoice.lines.data.last().map(|l| l.id.as_str().to_owned());
            while let Some(cursor) = after {
                let request = ListInvoiceInvoiceLineItem::new(invoice_id.as_str())
                    .limit(PAGE)
                    .starting_after(cursor);
                let list = self.fetch(&request).await?;
                page.objects += list.data.len();
                after = next_cursor(&list, |l| l.id.as_str().to_owned());
                for line in &list.data {
                    note(line, &mut ends);
                }
            }
        }
        Ok(ends)
    }

    /// One page of complete Checkout Sessions with line items and customer
    /// expanded. Only `payment` mode grants (a `subscription`-mode session's
    /// subscription does); every session's invoice goes to `session_invoices`.
    pub async fn checkout_sessions_page(
        &self,
        after: Option<&str>,
        created: &CreatedRange,
    ) -> Result<GrantPage, StripeError> {
        let request = |expand: &[&str]| {
            let mut request = ListCheckoutSession::new()
                .status(CheckoutSessionStatus::Complete)
                .limit(PAGE)
                .expand(expand.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>());
            if let Some(cursor) = after {
                request = request.starting_after(cursor);
            }
            if let Some(range) = created.query() {
                request = request.created(range);
            }
            request
        };
        let (list, customers) = self
            .fetch_with_customers(
                &request(&["data.line_items", "data.customer"]),
                &request(&["data.line_items"]),
                |list| list.data.iter().filter_map(session_customer).collect(),
            )
            .await?;
        let mut page = GrantPage {
            next: next_cursor(&list, |s| s.id.as_str().to_owned()),
            objects: list.data.len() + customers.len(),
            span: Span::of(&list, |s| s.created),
            ..GrantPage::default()
        };
        for session in list.data {
            self.add_session(session, &customers, &mut page).await?;
        }
        Ok(page)
    }

    /// One Checkout Session, re-fetched with the same expansions.
    pub async fn checkout_session(&self, id: &str) -> Result<GrantPage, StripeError> {
        let request = |expand: &[&str]| {
            RetrieveCheckoutSession::new(id).expand(expand.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
        };
        let (session, customers) = self
            .fetch_with_customers(&request(&["line_items", "customer"]), &request(&["line_items"]), |s| {
                session_customer(s).into_iter().collect()
            })
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
    /// `/v1/checkout/sessions/{id}/line_items` only if it has more.
    async fn session_lines(
        &self,
        session_id: &str,
        embedded: Option<List<CheckoutSessionItem>>,
        page: &mut GrantPage,
    ) -> Result<Vec<CheckoutSessionItem>, StripeError> {
        let (mut lines, mut after) = match embedded {
            Some(list) => {
                let after = next_cursor(&list, |l| l.id.as_str().to_owned());
                (list.data, after)
            }
            None => {
                // Not expanded (should not happen): read them from the start.
                let list = self
                    .fetch(&ListLineItemsCheckoutSession::new(session_id).limit(PAGE))
                    .await?;
                page.objects += list.data.len();
                let after = next_cursor(&list, |l| l.id.as_str().to_owned());
                (list.data, after)
            }
        };
        while let Some(cursor) = after {
            let request = ListLineItemsCheckoutSession::new(session_id)
                .limit(PAGE)
                .starting_after(cursor);
            let list = self.fetch(&request).await?;
            page.objects += list.data.len();
            after = next_cursor(&list, |l| l.id.as_str().to_owned());
            lines.extend(list.data);
        }
        Ok(lines)
    }

    /// One page of paid invoices with customer and payments expanded.
    /// Invoices of subscriptions are skipped here (their subscription grants);
    /// invoices created by Checkout Sessions are NOT recognisable from the
    /// invoice and must be dropped by the caller using the `session_invoices`
    /// of `checkout_sessions_page`.
    pub async fn invoices_page(&self, after: Option<&str>, created: &CreatedRange) -> Result<GrantPage, StripeError> {
        let request = |expand: &[&str]| {
            let mut request = ListInvoice::new()
                .status(InvoiceStatus::Paid)
                .limit(PAGE)
                .expand(expand.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>());
            if let Some(cursor) = after {
                request = request.starting_after(cursor);
            }
            if let Some(range) = created.query() {
                request = request.created(range);
            }
            request
        };
        let (list, customers) = self
            .fetch_with_customers(
                &request(&["data.customer", "data.payments"]),
                &request(&["data.payments"]),
                |list| list.data.iter().filter_map(invoice_customer).collect(),
            )
            .await?;
        let mut page = GrantPage {
            next: next_cursor(&list, |i| {
                i.id.as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default()
            }),
            objects: list.data.len() + customers.len(),
            span: Span::of(&list, |i| i.created),
            ..GrantPage::default()
        };
        for invoice in list.data {
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
    ) -> Result<InvoiceItemsPage, StripeError> {
        let request = |expand: &[&str]| {
            let mut request = ListInvoiceItem::new()
                .pending(false)
                .limit(PAGE)
                .expand(expand.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>());
            if let Some(cursor) = after {
                request = request.starting_after(cursor);
            }
            if let Some(range) = created.query() {
                request = request.created(range);
            }
            request
        };
        let (list, customers) = self
            .fetch_with_customers(
                &request(&["data.invoice", "data.invoice.customer", "data.invoice.payments"]),
                &request(&["data.invoice", "data.invoice.payments"]),
                |list| {
                    list.data
                        .iter()
                        .filter_map(|item| match &item.invoice {
                            Some(Expandable::Object(invoice)) => invoice_customer(invoice),
                            _ => None,
                        })
                        .collect()
                },
            )
            .await?;
        let next = next_cursor(&list, |i| i.id.as_str().to_owned());
        let span = Span::of(&list, |i| i.date);
        let mut items = Vec::with_capacity(list.data.len());
        let mut invoices = HashMap::new();
        for item in list.data {
            let (invoice_id, expanded) = match item.invoice {
                Some(Expandable::Object(invoice)) => {
                    (invoice.id.as_ref().map(|id| id.as_str().to_owned()), Some(invoice))
                }
                Some(Expandable::Id(id)) => (id.as_ref().map(|id| id.as_str().to_owned()), None),
                None => (None, None),
            };
            if let (Some(id), Some(invoice)) = (&invoice_id, expanded)
                && !invoices.contains_key(id)
            {
                let mut page = GrantPage {
                    objects: 1,
                    ..GrantPage::default()
                };
                self.add_invoice(*invoice, &customers, &mut page).await?;
                invoices.insert(id.clone(), page);
            }
            items.push(InvoiceItemFact {
                id: item.id.as_str().to_owned(),
                invoice: invoice_id,
                price: item
                    .pricing
                    .as_ref()
                    .and_then(|p| p.price_details.as_ref())
                    .map(|d| d.price.id().as_str().to_owned()),
                of_subscription: item.parent.as_ref().is_some_and(|p| p.subscription_details.is_some()),
            });
        }
        Ok(InvoiceItemsPage {
            items: Page { items, next, span },
            invoices,
            customers: customers.len(),
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
        let request = |expand: &[&str]| {
            RetrieveInvoice::new(id).expand(expand.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
        };
        self.fetch_with_customers(&request(&["customer", "payments"]), &request(&["payments"]), |i| {
            invoice_customer(i).into_iter().collect()
        })
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
            let sessions = self
                .fetch(&ListCheckoutSession::new().payment_intent(pi).limit(PAGE))
                .await?;
            page.objects += sessions.data.len();
            let from_session = sessions.data.iter().any(|s| {
                s.invoice
                    .as_ref()
                    .and_then(|i| i.id().as_ref())
                    .is_some_and(|i| i.as_str() == id)
            });
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
        let mut after = next_cursor_of(&lines, invoice.lines.has_more);
        while let Some(cursor) = after {
            let request = ListInvoiceInvoiceLineItem::new(invoice_id.as_str())
                .limit(PAGE)
                .starting_after(cursor);
            let list = self.fetch(&request).await?;
            page.objects += list.data.len();
            after = next_cursor(&list, |l| l.id.as_str().to_owned());
            lines.extend(list.data);
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

    /// One page of refunds with their charge expanded: a refund that leaves
    /// the charge fully refunded revokes, a partial one is only logged.
    /// Refunds without a payment intent or not `succeeded` are skipped.
    pub async fn reversals_page(&self, after: Option<&str>) -> Result<Page<PaymentReversal>, StripeError> {
        let mut request = ListRefund::new().limit(PAGE).expand(vec!["data.charge".to_owned()]);
        if let Some(cursor) = after {
            request = request.starting_after(cursor);
        }
        let list = self.fetch(&request).await?;
        let next = next_cursor(&list, |r| r.id.as_str().to_owned());
        let span = Span::of(&list, |r| r.created);
        let mut items = Vec::new();
        for refund in list.data {
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
        let mut request = ListDispute::new().limit(PAGE);
        if let Some(cursor) = after {
            request = request.starting_after(cursor);
        }
        let list = self.fetch(&request).await?;
        let next = next_cursor(&list, |d| d.id.as_str().to_owned());
        let span = Span::of(&list, |d| d.created);
        let items = list
            .data
            .into_iter()
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

fn session_customer(session: &CheckoutSession) -> Option<String> {
    session.customer.as_ref().map(|c| c.id().as_str().to_owned())
}

fn invoice_customer(invoice: &Invoice) -> Option<String> {
    invoice.customer.as_ref().map(|c| c.id().as_str().to_owned())
}

fn string_field(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn next_cursor_of(lines: &[InvoiceLineItem], has_more: bool) -> Option<String> {
    if has_more {
        lines.last().map(|l| l.id.as_str().to_owned())
    } else {
        None
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_ranges_become_stripe_bounds_only_when_set() {
        assert!(CreatedRange::default().query().is_none());
        let gte = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let query = ListSubscription::new()
            .created(
                CreatedRange {
                    gte: Some(gte),
                    lt: None,
                }
                .query()
                .unwrap(),
            )
            .build()
            .query
            .unwrap();
        assert!(
            query.contains("created%5Bgte%5D=1700000000") || query.contains("created[gte]=1700000000"),
            "{query}"
        );
        assert!(!query.contains("lt"), "{query}");
    }

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

    #[test]
    fn the_customer_email_wins_over_the_purchase_email_and_blanks_do_not_count() {
        let fallback = "buyer@example.com".to_owned();
        let blank = "  ".to_owned();
        let info = customer_info(None, &Customers::new(), Some(&fallback), None);
        assert_eq!(info.email.as_deref(), Some("buyer@example.com"));
        assert_eq!(info.id, None);
        let info = customer_info(
            Some(&Expandable::Id("cus_1".parse().unwrap())),
            &Customers::new(),
            Some(&blank),
            None,
        );
        assert_eq!(info.id.as_deref(), Some("cus_1"));
        assert_eq!(info.email, None);
    }

    #[test]
    fn at_most_twenty_event_types_are_asked_for() {
        assert!(RELEVANT_EVENT_TYPES.len() <= 20);
    }
}
