//! A generated account ([`crate::FakeStripe::generate`]): a real account's
//! mix of purchases at any size, at no memory per object.
//!
//! The catalog is stored as usual. Each purchase (a subscription with its
//! customer, items and an invoice per billing period; a payment-mode
//! Checkout Session, half of them guest checkouts; a one-off invoice with
//! its invoice items) is a function of its index `i` and the seed: when a
//! request needs it, it is built by the stored mode's own builders into a
//! scratch [`State`] that holds only the catalog and that purchase, served
//! from there, and dropped. So a generated object is exactly what the stored
//! mode serves for the same purchase ([`crate::FakeStripe::load_generated`]
//! stores them, for comparison).
//!
//! Layout, chosen so that every list is arithmetic:
//! - ids: purchase `i` numbers its ids from `ID_BASE + i * STRIDE + 1` in
//!   the order the builders create them, so an id names its purchase and a
//!   retrieve builds just that one;
//! - time: purchase `i` is created at `now - (n - 1 - i) * step`, the `n`
//!   purchases evenly over `(max_past_periods + 1) * 30` days up to now, and
//!   purchase kinds are interleaved evenly (85 / 14 / 1 stays 85 / 14 / 1 in
//!   any window);
//! - a subscription is as old as its index says: its current period holds
//!   now, so it has `floor((now - created) / period)` past periods, and its
//!   invoice for period `m` is created at `created + m * period`. For a
//!   given interval and `m` those invoices form an arithmetic sequence in
//!   `i`, so `/v1/invoices` is a merge of a few such streams (one per
//!   interval and `m`, plus the one-off invoices), each entered at the index
//!   its cursor or `created` bound gives: a page costs its own objects.
//!
//! Served: the lists of customers, subscriptions, Checkout Sessions,
//! invoices and invoice items (cursors both ways, `created` ranges, every
//! filter; a filter on an id of a purchase, e.g. `customer=` or
//! `subscription=`, is answered from that purchase alone), retrieval of every
//! purchase object by id, `expand[]`, and the sub-lists (invoice lines,
//! session line items, `subscription_items?subscription=`). Refunds,
//! disputes and events are stored lists and stay empty unless a test adds
//! to them; listing payment intents or charges without a `customer=` or
//! `payment_intent=` filter is refused (400).
//!
//! Layering: the top of the account's modules; uses `api`, `state` and `wire`,
//! and is reached from them only as the [`Computed`] a [`State`] holds. Its
//! child `streams` lays out the lists and uses only this module.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::api::{self, ListRequest};
use crate::conditions::mix;
use crate::state::{Computed, State};
use crate::wire::{ApiError, Catalog, DAY, created_of, list_value, str_of};
use crate::{CheckoutSpec, GeneratedAccount, GeneratedSummary, InvoiceSpec, SubscriptionSpec};

mod streams;

use streams::{Elem, Walk};

/// Generated ids start above anything a stored counter reaches.
pub(crate) const ID_BASE: u64 = 10_000_000_000;
/// Ids per purchase: a subscription of 2 items with 48 past periods uses 249.
pub(crate) const STRIDE: u64 = 256;
/// The most past periods the id stride leaves room for.
pub const MAX_PAST_PERIODS: u32 = 48;
const MONTH: i64 = 30 * DAY;
const YEAR: i64 = 365 * DAY;

/// How much of a purchase a scratch build makes (the ids are always the whole purchase's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Part {
    /// Everything.
    Whole,
    /// Only its customer.
    Customer,
    /// All but a subscription's past invoices.
    Purchase,
    /// A subscription with only its invoice of past period `m` (the latest
    /// invoice when `m` is the current period).
    PastInvoice(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Subscription,
    Session,
    Invoice,
}

struct Prices {
    editor_monthly: String,
    editor_yearly: String,
    suite_monthly: String,
    suite_yearly: String,
    editor_once: String,
    suite_once: String,
}

pub(crate) struct Generated {
    account: GeneratedAccount,
    n: u64,
    now: i64,
    step: i64,
    prices: Prices,
}

fn id_number(id: &str) -> Option<u64> {
    id.rsplit_once('_')?.1.parse().ok()
}

impl Generated {
    /// Creates the catalog in `st` (stored, as usual) and lays the purchases out from `st.now`.
    pub fn new(st: &mut State, account: GeneratedAccount) -> Generated {
        assert!(
            account.max_past_periods <= MAX_PAST_PERIODS,
            "fake-stripe: max_past_periods is at most {MAX_PAST_PERIODS}"
        );
        let n = (account.subscriptions + account.sessions + account.one_off_invoices) as u64;
        let span = i64::from(account.max_past_periods + 1) * MONTH - 1;
        assert!(
            n as i64 <= span,
            "fake-stripe: {n} purchases do not fit one per second into {span} s"
        );
        let step = if n > 1 { span / (n as i64 - 1) } else { 1 };
        // No events: they would take ids, and a generated account has none.
        let events = std::mem::replace(&mut st.record_events, false);
        // The catalog predates the first purchase, as a price must in
        // Stripe: a day before it.
        let now = st.now;
        st.now = now - (n.max(1) - 1) as i64 * step - DAY;
        let prices = create_catalog(st);
        st.now = now;
        st.record_events = events;
        Generated {
            account,
            n,
            now: st.now,
            step,
            prices,
        }
    }

    // ---- the purchases, from their index ---------------------------------------

    fn kind(&self, i: u64) -> Kind {
        let (s, c, o) = (
            self.account.subscriptions as u128,
            self.account.sessions as u128,
            self.account.one_off_invoices as u128,
        );
        let (i, n) = (u128::from(i), s + c + o);
        let subs_before = i * s / n;
        if (i + 1) * s / n > subs_before {
            return Kind::Subscription;
        }
        let r = i - subs_before;
        let m = c + o;
        if (r + 1) * c / m > r * c / m {
            Kind::Session
        } else {
            Kind::Invoice
        }
    }

    fn hash(&self, i: u64) -> u64 {
        mix(self.account.seed ^ mix(i))
    }

    pub fn created(&self, i: u64) -> i64 {
        self.now - (self.n - 1 - i) as i64 * self.step
    }

    /// One subscription in four is yearly.
    fn period(&self, i: u64) -> i64 {
        if self.hash(i).is_multiple_of(4) { YEAR } else { MONTH }
    }

    /// Every third subscription has a second item, on the other product.
    fn items(&self, i: u64) -> u64 {
        if (self.hash(i) >> 8).is_multiple_of(3) { 2 } else { 1 }
    }

    fn past(&self, i: u64) -> i64 {
        (self.now - self.created(i)) / self.period(i)
    }

    /// One session or one-off invoice in five has two lines.
    fn lines(&self, i: u64) -> u64 {
        if (self.hash(i) >> 24).is_multiple_of(5) { 2 } else { 1 }
    }

    /// Half the sessions are guest checkouts that carry only an email.
    fn guest(&self, i: u64) -> bool {
        (self.hash(i) >> 32) % 2 == 1
    }

    fn one_time_lines(&self, i: u64) -> Vec<(String, i64)> {
        let h = self.hash(i);
        let (first, second) = if (h >> 40).is_multiple_of(2) {
            (&self.prices.editor_once, &self.prices.suite_once)
        } else {
            (&self.prices.suite_once, &self.prices.editor_once)
        };
        let mut lines = vec![(first.clone(), 1 + ((h >> 48) % 2) as i64)];
        if self.lines(i) == 2 {
            lines.push((second.clone(), 1));
        }
        lines
    }

    /// Purchase `i` (or the `part` of it a list element needs), made with
    /// the stored mode's builders into `st`.
    pub fn build_into(&self, st: &mut State, i: u64, part: Part) {
        st.history_only = match part {
            Part::Whole | Part::Customer => None,
            Part::Purchase => Some(-1),
            Part::PastInvoice(m) => Some(m),
        };
        st.now = self.created(i);
        st.seq = ID_BASE + i * STRIDE;
        let h = self.hash(i);
        let email = format!("buyer{i}@example.com");
        let name = format!("Buyer {i}");
        if part == Part::Customer {
            st.create_customer(Some(&email), Some(&name));
            return;
        }
        match self.kind(i) {
            Kind::Subscription => {
                let customer = st.create_customer(Some(&email), Some(&name));
                let period = self.period(i);
                let past = self.past(i);
                let start = self.created(i) + past * period;
                let (first, second) = if period == YEAR {
                    (&self.prices.editor_yearly, &self.prices.suite_yearly)
                } else {
                    (&self.prices.editor_monthly, &self.prices.suite_monthly)
                };
                let mut items = vec![(first.clone(), 1 + ((h >> 16) % 3) as i64)];
                if self.items(i) == 2 {
                    items.push((second.clone(), 1));
                }
                st.create_subscription(SubscriptionSpec {
                    customer,
                    items,
                    current_period_start: Some(start),
                    current_period_end: Some(start + period),
                    past_periods: past as u32,
                    ..SubscriptionSpec::default()
                });
            }
            Kind::Session => {
                let (customer, customer_email) = if self.guest(i) {
                    (None, Some(format!("guest{i}@example.com")))
                } else {
                    (Some(st.create_customer(Some(&email), Some(&name))), None)
                };
                st.create_checkout_session(CheckoutSpec {
                    customer,
                    customer_email,
                    lines: self.one_time_lines(i),
                    ..CheckoutSpec::default()
                });
            }
            Kind::Invoice => {
                let customer = st.create_customer(Some(&email), Some(&name));
                st.create_invoice(InvoiceSpec {
                    customer,
                    lines: self.one_time_lines(i),
                    ..InvoiceSpec::default()
                });
            }
        }
        st.history_only = None;
        debug_assert!(
            st.seq < ID_BASE + (i + 1) * STRIDE,
            "purchase {i} used more than {STRIDE} ids"
        );
    }

    /// The account's current catalog, to share between the builds of one request.
    fn catalog(st: &State) -> Arc<Catalog> {
        let mut catalog = Catalog::new();
        for ty in ["product", "price"] {
            catalog.insert(
                ty.to_owned(),
                st.all(ty).map(|o| (str_of(o, "id").to_owned(), o.clone())).collect(),
            );
        }
        Arc::new(catalog)
    }

    /// A state with the catalog and nothing else.
    fn catalog_only(&self, st: &State, catalog: &Arc<Catalog>) -> State {
        let mut scratch = State::new(st.api_key.clone());
        scratch.record_events = false;
        scratch.catalog = Some(catalog.clone());
        scratch
    }

    /// The catalog and purchase `i`, built.
    fn purchase(&self, st: &State, catalog: &Arc<Catalog>, i: u64) -> State {
        let mut scratch = self.catalog_only(st, catalog);
        self.build_into(&mut scratch, i, Part::Whole);
        scratch
    }

    /// The catalog and the part of purchase `i` that one list element
    /// needs; the ids are those of the whole purchase.
    fn purchase_part(&self, st: &State, catalog: &Arc<Catalog>, i: u64, part: Part) -> State {
        let mut scratch = self.catalog_only(st, catalog);
        self.build_into(&mut scratch, i, part);
        scratch
    }

    /// The purchase an id of one of its objects names.
    fn index_of(&self, id: &str) -> Option<u64> {
        let number = id_number(id)?;
        let i = number.checked_sub(ID_BASE)? / STRIDE;
        (i < self.n).then_some(i)
    }

    fn id(&self, ty: &str, livemode: bool, seq: u64) -> String {
        let prefix = match ty {
            "customer" => "cus",
            "subscription" => "sub",
            "checkout.session" if livemode => "cs_live",
            "checkout.session" => "cs_test",
            "invoice" => "in",
            "invoiceitem" => "ii",
            other => unreachable!("no generated list of {other}"),
        };
        format!("{prefix}_{seq:014}")
    }
}

/// The generated types each read endpoint serves.
const LISTED: [&str; 5] = ["customer", "subscription", "checkout.session", "invoice", "invoiceitem"];
const PINNED_ONLY: [&str; 3] = ["subscription_item", "payment_intent", "charge"];
const RETRIEVED: [&str; 8] = [
    "customer",
    "subscription",
    "subscription_item",
    "checkout.session",
    "invoice",
    "invoiceitem",
    "payment_intent",
    "charge",
];
/// Filter parameters whose value names one purchase's object.
const PINNING: [&str; 5] = ["customer", "subscription", "payment_intent", "invoice", "charge"];

impl Generated {
    /// `Some(Some(i))`: a filter names an object of purchase `i`, which alone
    /// can match; `Some(None)`: it names nothing generated, so nothing matches.
    fn pinned(&self, req: &ListRequest) -> Option<Option<u64>> {
        for param in PINNING {
            if let Some(value) = req.param(param) {
                return Some(self.index_of(value));
            }
        }
        let email = req.param("email")?;
        let i = email
            .strip_prefix("buyer")
            .and_then(|rest| rest.strip_suffix("@example.com"))
            .and_then(|i| i.parse::<u64>().ok())
            .filter(|i| *i < self.n);
        Some(i)
    }

    /// Filters no generated object can pass (every generated subscription is
    /// active, every session complete, every invoice paid, every invoice item
    /// invoiced), answered without a walk through the whole account.
    fn matches_nothing(&self, ty: &str, req: &ListRequest) -> bool {
        let status = req.param("status");
        match ty {
            "subscription" => {
                let price_known = req.param("price").is_none_or(|p| {
                    [
                        &self.prices.editor_monthly,
                        &self.prices.editor_yearly,
                        &self.prices.suite_monthly,
                        &self.prices.suite_yearly,
                    ]
                    .iter()
                    .any(|known| *known == p)
                });
                status.is_some_and(|s| !matches!(s, "all" | "active")) || !price_known
            }
            "checkout.session" => status.is_some_and(|s| s != "complete"),
            "invoice" => status.is_some_and(|s| s != "paid"),
            "invoiceitem" => req.param("pending") == Some("true"),
            _ => false,
        }
    }

    fn walk_list(&self, st: &State, ty: &str, url: &str, req: &ListRequest) -> Result<Value, ApiError> {
        if self.matches_nothing(ty, req) {
            return Ok(list_value(vec![], false, url));
        }
        // The purchases built for this page, by index and the part built.
        let mut built: HashMap<(u64, Part), State> = HashMap::new();
        let catalog = Self::catalog(st);
        let (lo, hi) = req.created_range();
        let cursor = match &req.cursor {
            Some((id, param)) => {
                let missing = || ApiError::no_such(400, ty, id, param);
                let i = self.index_of(id).ok_or_else(missing)?;
                let scratch = self.purchase(st, &catalog, i);
                let obj = scratch.raw(ty, id).ok_or_else(missing)?;
                Some((created_of(obj), id_number(id).ok_or_else(missing)?))
            }
            None => None,
        };
        let desc = !req.backwards;
        // The exclusive bound where the page starts: the cursor, or just past the created range.
        let bound = match (desc, cursor) {
            (true, Some(c)) => c.min((hi, u64::MAX)),
            (true, None) => (hi, u64::MAX),
            (false, Some(c)) => c.max((lo.saturating_sub(1), u64::MAX)),
            (false, None) => (lo.saturating_sub(1), u64::MAX),
        };
        let stop = if desc { lo } else { hi };
        let mut walks: Vec<Walk<'_>> = self
            .sources(ty)
            .into_iter()
            .map(|src| Walk::new(self, src, desc, bound, stop))
            .collect();
        let mut heads: Vec<Option<Elem>> = walks.iter_mut().map(Iterator::next).collect();
        let mut picked: Vec<Elem> = Vec::with_capacity(req.limit + 1);
        while picked.len() <= req.limit {
            let best = heads
                .iter()
                .enumerate()
                .filter_map(|(k, h)| h.map(|e| (k, e)))
                .reduce(|a, b| {
                    let b_first = if desc {
                        (b.1.time, b.1.seq) > (a.1.time, a.1.seq)
                    } else {
                        (b.1.time, b.1.seq) < (a.1.time, a.1.seq)
                    };
                    if b_first { b } else { a }
                });
            let Some((k, elem)) = best else { break };
            heads[k] = walks[k].next();
            let scratch = built
                .entry((elem.i, elem.part))
                .or_insert_with(|| self.purchase_part(st, &catalog, elem.i, elem.part));
            let id = self.id(ty, scratch.livemode, elem.seq);
            let obj = scratch
                .raw(ty, &id)
                .unwrap_or_else(|| panic!("fake-stripe bug: generated purchase {} has no {ty} {id}", elem.i));
            debug_assert_eq!(created_of(obj), elem.time, "{id}");
            if req.keep(scratch, obj)? {
                picked.push(elem);
            }
        }
        let has_more = picked.len() > req.limit;
        picked.truncate(req.limit);
        if !desc {
            picked.reverse();
        }
        let data = picked
            .iter()
            .map(|elem| {
                let scratch = &built[&(elem.i, elem.part)];
                let id = self.id(ty, scratch.livemode, elem.seq);
                api::render_one(scratch, scratch.raw(ty, &id).expect("picked above"), &req.expand)
            })
            .collect();
        Ok(list_value(data, has_more, url))
    }
}

impl Computed for Generated {
    fn list(&self, st: &State, ty: &str, url: &str, raw: Option<&str>) -> Option<Result<Value, ApiError>> {
        if !LISTED.contains(&ty) && !PINNED_ONLY.contains(&ty) {
            return None;
        }
        let req = match ListRequest::parse(ty, raw) {
            Ok(req) => req,
            Err(e) => return Some(Err(e)),
        };
        if let Some(i) = self.pinned(&req) {
            let scratch = match i {
                Some(i) => self.purchase(st, &Self::catalog(st), i),
                None => self.catalog_only(st, &Self::catalog(st)),
            };
            return Some(api::list(&scratch, ty, url, raw));
        }
        if PINNED_ONLY.contains(&ty) {
            let message = format!(
                "fake-stripe: a generated account lists {ty} objects only for one customer= or payment_intent= \
                 (retrieve them by id)"
            );
            return Some(Err(ApiError::new(400, "invalid_request_error", None, message, None)));
        }
        Some(self.walk_list(st, ty, url, &req))
    }

    fn retrieve(&self, st: &State, ty: &str, id: &str, raw: Option<&str>) -> Option<Result<Value, ApiError>> {
        if !RETRIEVED.contains(&ty) {
            return None;
        }
        let scratch = match self.index_of(id) {
            Some(i) => self.purchase(st, &Self::catalog(st), i),
            None => self.catalog_only(st, &Self::catalog(st)),
        };
        Some(api::retrieve(&scratch, ty, id, raw))
    }

    fn list_children(
        &self,
        st: &State,
        parent_ty: &str,
        parent: &str,
        child_ty: &str,
        url: &str,
        raw: Option<&str>,
    ) -> Option<Result<Value, ApiError>> {
        let scratch = match self.index_of(parent) {
            Some(i) => self.purchase(st, &Self::catalog(st), i),
            None => self.catalog_only(st, &Self::catalog(st)),
        };
        Some(api::list_children(&scratch, parent_ty, parent, child_ty, url, raw))
    }

    fn owns(&self, id: &str) -> bool {
        self.index_of(id).is_some()
    }

    fn get(&self, st: &State, id: &str) -> Option<Option<Value>> {
        let i = self.index_of(id)?;
        Some(self.purchase(st, &Self::catalog(st), i).get(id))
    }

    fn summary(&self) -> GeneratedSummary {
        let mut s = GeneratedSummary {
            oldest: if self.n > 0 { self.created(0) } else { self.now },
            newest: self.now,
            ..GeneratedSummary::default()
        };
        for i in 0..self.n {
            match self.kind(i) {
                Kind::Subscription => {
                    s.subscriptions += 1;
                    s.subscription_items += self.items(i) as usize;
                    s.customers += 1;
                    s.invoices += self.past(i) as usize + 1;
                }
                Kind::Session => {
                    s.sessions += 1;
                    s.session_lines += self.lines(i) as usize;
                    if self.guest(i) {
                        s.guest_sessions += 1;
                    } else {
                        s.customers += 1;
                    }
                }
                Kind::Invoice => {
                    s.one_off_invoices += 1;
                    s.one_off_lines += self.lines(i) as usize;
                    s.customers += 1;
                    s.invoices += 1;
                }
            }
        }
        s
    }
}

/// The catalog of a generated account: two licensed products, each with a
/// monthly, a yearly and a one-time price (all perpetual licenses).
fn create_catalog(st: &mut State) -> Prices {
    let editor = st.create_product(
        "Acme Editor",
        &[("product_id", "acme-editor"), ("hwid_limit", "3"), ("ip_limit", "5")],
    );
    let suite = st.create_product(
        "Acme Pro Suite",
        &[("product_id", "acme-pro,acme-cli"), ("hwid_limit", "10")],
    );
    Prices {
        editor_monthly: st.create_price(&editor, Some("month"), 900, &[]),
        editor_yearly: st.create_price(&editor, Some("year"), 9_000, &[("hwid_limit", "5")]),
        suite_monthly: st.create_price(&suite, Some("month"), 2_900, &[]),
        suite_yearly: st.create_price(&suite, Some("year"), 29_000, &[]),
        editor_once: st.create_price(&editor, None, 4_900, &[]),
        suite_once: st.create_price(&suite, None, 29_900, &[]),
    }
}

impl State {
    /// Makes this (empty) account a generated one.
    pub fn generate(&mut self, account: GeneratedAccount) {
        self.assert_no_purchases();
        let generated = Generated::new(self, account);
        self.generated = Some(std::sync::Arc::new(generated));
    }

    /// Stores the purchases a generated account of the same settings serves.
    pub fn load_generated(&mut self, account: GeneratedAccount) -> GeneratedSummary {
        self.assert_no_purchases();
        let g = Generated::new(self, account);
        let (now, events) = (self.now, self.record_events);
        // Events would take ids from the purchases' ranges.
        self.record_events = false;
        for i in 0..g.n {
            g.build_into(self, i, Part::Whole);
        }
        self.now = now;
        self.record_events = events;
        g.summary()
    }

    fn assert_no_purchases(&self) {
        assert!(
            self.generated.is_none()
                && [
                    "customer",
                    "subscription",
                    "checkout.session",
                    "invoice",
                    "payment_intent"
                ]
                .iter()
                .all(|ty| self.all(ty).next().is_none()),
            "fake-stripe: generate or load a generated account into a new, empty account"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::streams::Source;
    use super::*;

    fn account(subs: usize, sessions: usize, invoices: usize) -> (State, GeneratedAccount) {
        let st = State::new("sk_test_x".into());
        let account = GeneratedAccount {
            subscriptions: subs,
            sessions,
            one_off_invoices: invoices,
            max_past_periods: 12,
            seed: 7,
        };
        (st, account)
    }

    #[test]
    fn kinds_are_interleaved_with_exact_counts() {
        let (mut st, a) = account(850, 140, 10);
        let g = Generated::new(&mut st, a);
        let kinds: Vec<Kind> = (0..g.n).map(|i| g.kind(i)).collect();
        let count = |k: Kind| kinds.iter().filter(|x| **x == k).count();
        assert_eq!(
            (count(Kind::Subscription), count(Kind::Session), count(Kind::Invoice)),
            (850, 140, 10)
        );
        // Evenly: every window of 100 has 85 subscriptions, give or take one.
        for w in kinds.windows(100).step_by(37) {
            let subs = w.iter().filter(|k| **k == Kind::Subscription).count();
            assert!((84..=86).contains(&subs), "{subs}");
        }
    }

    #[test]
    fn the_id_layout_matches_what_the_builders_make() {
        let (mut st, a) = account(60, 30, 10);
        let g = Generated::new(&mut st, a);
        for i in 0..g.n {
            let scratch = g.purchase(&st, &Generated::catalog(&st), i);
            for src in [
                Source::Customers,
                Source::Subscriptions,
                Source::Sessions,
                Source::OneOffInvoices,
                Source::InvoiceItems,
            ]
            .into_iter()
            .chain((0..=13).map(|m| Source::SubscriptionInvoices { period: MONTH, m }))
            .chain((0..=1).map(|m| Source::SubscriptionInvoices { period: YEAR, m }))
            {
                let ty = match src {
                    Source::Customers => "customer",
                    Source::Subscriptions => "subscription",
                    Source::Sessions => "checkout.session",
                    Source::OneOffInvoices | Source::SubscriptionInvoices { .. } => "invoice",
                    Source::InvoiceItems => "invoiceitem",
                };
                let expected: Vec<String> = if g.member(src, i) {
                    g.seqs(src, i).into_iter().map(|s| g.id(ty, false, s)).collect()
                } else {
                    vec![]
                };
                let time = g.created(i) + Generated::offset(src);
                let actual: Vec<String> = scratch
                    .all(ty)
                    .filter(|o| match src {
                        Source::OneOffInvoices => o["parent"].is_null(),
                        Source::SubscriptionInvoices { period, .. } => {
                            !o["parent"].is_null()
                                && created_of(o) == time
                                && o["period_end"].as_i64().unwrap() - o["period_start"].as_i64().unwrap() == period
                        }
                        _ => true,
                    })
                    .map(|o| {
                        assert_eq!(created_of(o), time, "{src:?} of {i}");
                        o["id"].as_str().unwrap().to_owned()
                    })
                    .collect();
                assert_eq!(actual, expected, "{src:?} of purchase {i} ({:?})", g.kind(i));
            }
        }
    }
}
