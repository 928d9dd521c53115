//! What licensync reads from Stripe, one page (up to 100 objects) at a
//! time, as plain domain facts: the catalog, the grants of subscriptions,
//! Checkout Sessions and one-off invoices, refunds and lost disputes, and
//! events, each kind in its own file (`catalog`, `subscriptions`,
//! `checkout`, `invoices`, `reversals`, `events`) over what this file
//! holds: the reader, its fetch helpers and the page types it hands out.
//! Every call goes through an async-stripe request builder and is decoded
//! into async-stripe's own types, lists through `pages` (object by object);
//! related objects come through `expand[]`, never one request per object.
//! Memory stays bounded by the page: nothing is accumulated across pages
//! here (except the catalog, which the planner needs whole).

use std::collections::HashMap;

use chrono::DateTime;
use stripe_client_core::StripeRequest;
use stripe_core::customer::{RetrieveCustomer, RetrieveCustomerReturned};
use stripe_shared::Customer;
use stripe_types::{Expandable, RangeBoundsTs, RangeQueryTs};

use super::config::StripeConfig;
use super::error::StripeError;
use super::transport::Transport;
use crate::domain::{CustomerInfo, GrantFact, Timestamp};

/// Stripe's maximum page size.
pub(super) const PAGE: i64 = 100;

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

/// One page of a plain list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `starting_after` cursor of the next page; `None` on the last page.
    pub next: Option<String>,
    pub span: Span,
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
/// A `created` filter; both ends open when unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreatedRange {
    pub gte: Option<Timestamp>,
    pub lt: Option<Timestamp>,
}

impl CreatedRange {
    pub(super) fn query(&self) -> Option<RangeQueryTs> {
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
    pub(super) transport: Transport,
    livemode: bool,
}

pub(super) fn ts(secs: i64, what: &str, object: &str) -> Result<Timestamp, StripeError> {
    DateTime::from_timestamp(secs, 0).ok_or_else(|| StripeError::Decode {
        path: object.to_owned(),
        message: format!("`{what}` = {secs} is not a valid unix timestamp"),
    })
}

pub(super) fn quantity(q: Option<u64>) -> i64 {
    i64::try_from(q.unwrap_or(1)).unwrap_or(i64::MAX)
}

/// Trimmed, blank as none, and without NUL, which PostgreSQL text cannot hold.
pub(super) fn non_empty(text: Option<&String>) -> Option<String> {
    text.map(|s| s.replace('\0', "").trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Customers looked up one by one, by id, when a page had to be read
/// without the customer expansion (see `fetch_with_customers`).
pub(super) type Customers = HashMap<String, CustomerInfo>;

/// §5: the expanded (or looked-up) customer's email, else the purchase's own email.
pub(super) fn customer_info(
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
    pub(super) async fn fetch<R>(&self, request: &R) -> Result<R::Output, StripeError>
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

    /// Reads an answer with its customers expanded (`read(true)`, every
    /// object decoded). A deleted customer expands to a stub
    /// (`{"id","object","deleted":true}`) that async-stripe's `Customer`
    /// cannot hold, which fails that; then the same request is read without
    /// the customer expansion (`read(false)`) and the customers it names are
    /// looked up one by one (`RetrieveCustomer` knows deleted customers),
    /// so one deleted customer cannot stop a full scan.
    pub(super) async fn fetch_with_customers<A, Fut>(
        &self,
        read: impl Fn(bool) -> Fut,
        customer_ids: impl Fn(&A) -> Vec<String>,
    ) -> Result<(A, Customers), StripeError>
    where
        Fut: Future<Output = Result<A, StripeError>>,
    {
        let first = match read(true).await {
            Err(StripeError::Decode { path, message }) => {
                tracing::warn!(%path, %message, "answer with expanded customers did not decode (a deleted customer?); reading it again without that expansion");
                read(false).await?
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

    /// One object, retrieved with its customer (see `fetch_with_customers`):
    /// `request(true)` expands the customer, `request(false)` does not.
    pub(super) async fn retrieve_with_customer<R>(
        &self,
        request: impl Fn(bool) -> R,
        customer_ids: impl Fn(&R::Output) -> Vec<String>,
    ) -> Result<(R::Output, Customers), StripeError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        let read = |with_customer| {
            let request = request(with_customer);
            async move { self.fetch(&request).await }
        };
        self.fetch_with_customers(read, customer_ids).await
    }
}

/// `expand[]`: `others`, then `customer` when read with the customer.
pub(super) fn expand(customer: &str, others: &[&str], with_customer: bool) -> Vec<String> {
    let customer = with_customer.then_some(customer);
    others.iter().copied().chain(customer).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use stripe_billing::subscription::ListSubscription;

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
}
