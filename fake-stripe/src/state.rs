//! The fake account: every object by type and id, built from Stripe's examples in
//! fixtures3.json, how it is read and changed, and the events it records. The
//! scenario steps that create objects are `impl State` blocks in the child
//! modules `payments` (customers, catalog, payments, refunds, disputes),
//! `billing` (invoices, subscriptions) and `checkout` (Checkout Sessions).
//!
//! Embedded objects (a subscription's items, an item's price and plan, an
//! invoice's lines, a charge's refunds) are stored once and assembled when an
//! object is read ([`State::render`]), so a changed price shows up everywhere at
//! once, as it does in Stripe.
//!
//! Layering: uses `wire` only (and the crate root's public types). A
//! generated account's purchases are computed by `generated`, which the
//! store reaches only through the [`Computed`] trait.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value, json};

use crate::wire::{ApiError, Catalog, ListKey, id_of, list_key, list_value, str_of};
use crate::{Fault, FaultKind, GeneratedSummary};

mod billing;
mod checkout;
mod payments;

const FIXTURES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/vendor/stripe-openapi/fixtures3.json"
));

/// Where the account clock starts: 2026-01-01T00:00:00Z.
pub const DEFAULT_NOW: i64 = 1_767_225_600;
/// The API version async-stripe 1.0.0-rc.10 speaks; events carry it.
const API_VERSION: &str = "2026-09-30.endive";
/// Stripe embeds at most this many lines of an invoice or session.
const EMBEDDED_LINES: usize = 10;

/// Stripe's example object of a type (`resources[ty]` in fixtures3.json).
pub(crate) fn template(ty: &str) -> Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    let all = PARSED.get_or_init(|| serde_json::from_str(FIXTURES).expect("fixtures3.json is valid JSON"));
    all["resources"]
        .get(ty)
        .cloned()
        .unwrap_or_else(|| panic!("fixtures3.json has no example of `{ty}`"))
}

/// Overwrites fields of a template. Only fields the template has may be set, so
/// every served object keeps exactly Stripe's field set.
fn set(obj: &mut Value, fields: Value) {
    let Value::Object(fields) = fields else {
        unreachable!("set() takes an object literal")
    };
    for (key, value) in fields {
        assert!(
            obj.get(&key).is_some(),
            "fake-stripe bug: `{key}` is not a field of Stripe's `{}`",
            obj["object"]
        );
        obj[key.as_str()] = value;
    }
}

fn metadata(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect::<Map<_, _>>(),
    )
}

/// Event names use `customer.subscription` and `charge.dispute` for these types.
fn event_prefix(ty: &str) -> &str {
    match ty {
        "subscription" => "customer.subscription",
        "dispute" => "charge.dispute",
        other => other,
    }
}

/// The legacy `plan` view of a price that subscription items still carry.
fn plan_of(price: &Value) -> Value {
    let mut plan = template("plan");
    set(
        &mut plan,
        json!({
            "id": price["id"], "active": price["active"], "amount": price["unit_amount"],
            "amount_decimal": price["unit_amount_decimal"], "billing_scheme": "per_unit",
            "created": price["created"], "currency": price["currency"],
            "interval": price["recurring"]["interval"],
            "interval_count": price["recurring"]["interval_count"],
            "livemode": price["livemode"], "metadata": price["metadata"], "meter": null,
            "nickname": price["nickname"], "product": price["product"], "tiers_mode": null,
            "transform_usage": null, "trial_period_days": null, "usage_type": "licensed",
        }),
    );
    plan
}

/// A generated account's purchases, computed on demand instead of stored
/// (`generated::Generated` implements it). The store holds them behind this
/// trait so that it never depends on the module that computes them.
pub(crate) trait Computed: Send + Sync {
    /// `GET /v1/<collection>` of a computed type; `None` for stored types.
    fn list(&self, st: &State, ty: &str, url: &str, raw: Option<&str>) -> Option<Result<Value, ApiError>>;

    /// `GET /v1/<collection>/{id}` of a computed type; `None` for stored types.
    fn retrieve(&self, st: &State, ty: &str, id: &str, raw: Option<&str>) -> Option<Result<Value, ApiError>>;

    /// The line items of a computed session or the lines of a computed invoice.
    fn list_children(
        &self,
        st: &State,
        parent_ty: &str,
        parent: &str,
        child_ty: &str,
        url: &str,
        raw: Option<&str>,
    ) -> Option<Result<Value, ApiError>>;

    /// Any computed object by id, as served unexpanded; `None` when the id is not computed.
    fn get(&self, st: &State, id: &str) -> Option<Option<Value>>;

    /// Whether an id is one of a computed purchase's.
    fn owns(&self, id: &str) -> bool;

    /// What the account holds, counted from its layout.
    fn summary(&self) -> GeneratedSummary;
}

pub(crate) struct State {
    pub api_key: String,
    pub livemode: bool,
    /// The clock as this step sees it: set from the server's clock (shared
    /// by every account) whenever the account is locked, and moved only for
    /// the length of a step (dating a purchase in the past), never kept.
    pub now: i64,
    /// The id counter: the next id is `seq + 1`.
    pub seq: u64,
    /// object type -> id -> stored object
    store: HashMap<String, BTreeMap<String, Value>>,
    /// object type -> the list order (newest first: `created`, then id,
    /// descending), kept by `put`, so that a page is read from its cursor
    /// on instead of sorting the whole collection on every request.
    order: HashMap<String, BTreeSet<ListKey>>,
    /// parent id -> embedded children in creation order (items, lines)
    children: HashMap<String, Vec<String>>,
    /// invoice id -> the payment intent that paid it
    invoice_payments: HashMap<String, String>,
    /// Faults for this account's requests, consumed in order.
    pub faults: Vec<Fault>,
    /// Off for bulk loads (benchmarks): each event holds a full snapshot,
    /// which at 100k purchases is most of the fake's memory and load time.
    pub record_events: bool,
    /// Where each recorded event is delivered as a webhook, if anywhere.
    pub webhooks: Option<tokio::sync::mpsc::UnboundedSender<Value>>,
    /// A generated account: its purchases are built on demand, not stored.
    pub generated: Option<Arc<dyn Computed>>,
    /// Scratch builds of a generated purchase that serve one object: of a
    /// subscription's invoices build only the past period's `Some(k)` (and
    /// the latest only when `k` is its period or negative), reserving the
    /// ids of the others so that every id stays what a full build gives it.
    /// `None` (always, outside such builds): every invoice.
    pub history_only: Option<i64>,
    /// A scratch build's read-only catalog (products and prices by id),
    /// shared by the builds of one request instead of copied into each.
    pub catalog: Option<Arc<Catalog>>,
    /// The API request (its `Request-Id` and `Idempotency-Key`) whose change
    /// is being recorded, set by a metadata write for the length of its
    /// change: its events name it in `request`, as Stripe's events of API
    /// changes do. `None` for scenario steps, whose events name none.
    pub api_request: Option<(String, Option<String>)>,
}

impl State {
    pub fn new(api_key: String) -> State {
        let livemode = api_key.starts_with("sk_live_") || api_key.starts_with("rk_live_");
        State {
            api_key,
            livemode,
            now: DEFAULT_NOW,
            seq: 0,
            store: HashMap::new(),
            order: HashMap::new(),
            children: HashMap::new(),
            invoice_payments: HashMap::new(),
            faults: Vec::new(),
            record_events: true,
            webhooks: None,
            generated: None,
            history_only: None,
            catalog: None,
            api_request: None,
        }
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}_{:014}", self.seq)
    }

    /// Takes `count` ids unbuilt; returns the first, as `next_id(prefix)` would have made it.
    fn reserve_ids(&mut self, prefix: &str, count: u64) -> String {
        let first = format!("{prefix}_{:014}", self.seq + 1);
        self.seq += count;
        first
    }

    /// The first injected fault that matches `path`, consumed once.
    pub fn take_fault(&mut self, path: &str) -> Option<FaultKind> {
        self.faults.retain(|f| f.times > 0);
        let fault = self.faults.iter_mut().find(|f| path.starts_with(&f.path_prefix))?;
        fault.times -= 1;
        Some(fault.kind.clone())
    }

    // ---- storage -------------------------------------------------------------

    pub fn generated(&self) -> Option<&dyn Computed> {
        self.generated.as_deref()
    }

    pub(crate) fn put(&mut self, obj: Value) {
        let ty = str_of(&obj, "object").to_owned();
        let id = str_of(&obj, "id").to_owned();
        let order = self.order.entry(ty.clone()).or_default();
        if let Some(old) = self.store.get(&ty).and_then(|m| m.get(&id)) {
            // `created` may have changed through `update`: drop the old place.
            order.remove(&list_key(old));
        }
        order.insert(list_key(&obj));
        self.store.entry(ty).or_default().insert(id, obj);
    }

    /// The objects of a type in list order, from just after `from` (or,
    /// with `before`, backwards from just before it); `from` keeps its place
    /// even when it would not pass the caller's filters.
    pub fn ordered<'a>(
        &'a self,
        ty: &str,
        from: Option<&Value>,
        before: bool,
    ) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        use std::ops::Bound::{Excluded, Unbounded};
        let (Some(order), Some(objects)) = (self.order.get(ty), self.store.get(ty)) else {
            return Box::new(std::iter::empty());
        };
        let keys: Box<dyn Iterator<Item = &ListKey>> = match (from.map(list_key), before) {
            (None, _) => Box::new(order.iter()),
            (Some(k), false) => Box::new(order.range((Excluded(k), Unbounded))),
            (Some(k), true) => Box::new(order.range((Unbounded, Excluded(k))).rev()),
        };
        Box::new(keys.filter_map(move |(_, Reverse(id))| objects.get(id)))
    }

    pub fn raw(&self, ty: &str, id: &str) -> Option<&Value> {
        match self.store.get(ty).and_then(|m| m.get(id)) {
            Some(v) => Some(v),
            None => self.catalog.as_ref()?.get(ty)?.get(id),
        }
    }

    /// Changes in place; must not change `created` (the list order is kept by `put`).
    fn raw_mut(&mut self, ty: &str, id: &str) -> &mut Value {
        self.store
            .get_mut(ty)
            .and_then(|m| m.get_mut(id))
            .unwrap_or_else(|| panic!("fake-stripe: no {ty} with id `{id}`"))
    }

    fn must(&self, ty: &str, id: &str) -> &Value {
        self.raw(ty, id)
            .unwrap_or_else(|| panic!("fake-stripe: no {ty} with id `{id}`; create it first"))
    }

    pub fn all(&self, ty: &str) -> impl Iterator<Item = &Value> {
        self.store.get(ty).into_iter().flat_map(|m| m.values())
    }

    fn type_of(&self, id: &str) -> Option<String> {
        self.store
            .iter()
            .find(|(_, m)| m.contains_key(id))
            .map(|(ty, _)| ty.clone())
    }

    pub fn children_of(&self, parent: &str, ty: &str) -> Vec<&Value> {
        self.children
            .get(parent)
            .into_iter()
            .flatten()
            .filter_map(|id| self.raw(ty, id))
            .collect()
    }

    fn parent_of(&self, child: &str) -> Option<String> {
        self.children
            .iter()
            .find(|(_, kids)| kids.iter().any(|k| k == child))
            .map(|(parent, _)| parent.clone())
    }

    /// The object as served unexpanded, embedded objects assembled.
    pub fn render(&self, v: &Value) -> Value {
        let mut out = v.clone();
        let id = str_of(v, "id");
        match str_of(v, "object") {
            "subscription" => {
                let items = self.children_of(id, "subscription_item");
                out["items"]["data"] = items.into_iter().map(|i| self.render(i)).collect();
            }
            "subscription_item" => {
                let price = self.current(&v["price"], "price");
                out["plan"] = plan_of(&price);
                out["price"] = price;
            }
            "item" => out["price"] = self.current(&v["price"], "price"),
            "invoice" => out["lines"] = self.lines_list(id, "line_item", self.lines_url(v)),
            "charge" => {
                let mut refunds: Vec<_> = self
                    .all("refund")
                    .filter(|r| r["charge"] == v["id"])
                    .map(|r| self.render(r))
                    .collect();
                refunds.reverse();
                out["refunds"]["data"] = Value::Array(refunds);
            }
            _ => {}
        }
        out
    }

    fn lines_url(&self, invoice: &Value) -> String {
        format!("/v1/invoices/{}/lines", str_of(invoice, "id"))
    }

    /// The embedded list of a parent's lines: the first ten, as Stripe embeds them.
    pub fn lines_list(&self, parent: &str, ty: &str, url: String) -> Value {
        let lines = self.children_of(parent, ty);
        let has_more = lines.len() > EMBEDDED_LINES;
        let data = lines.into_iter().take(EMBEDDED_LINES).map(|l| self.render(l)).collect();
        list_value(data, has_more, &url)
    }

    /// `expand[]=payments` on an invoice: the payment that paid it, if any.
    pub fn invoice_payments_list(&self, invoice: &str) -> Value {
        let url = format!("/v1/invoice_payments?invoice={invoice}");
        let Some((inv, pi)) = self.raw("invoice", invoice).zip(self.invoice_payments.get(invoice)) else {
            return list_value(vec![], false, &url);
        };
        let mut payment = template("invoice_payment");
        let paid = inv["status"] == "paid";
        set(
            &mut payment,
            json!({
                "id": format!("inpay_{}", &invoice[3..]), "amount_paid": if paid { inv["amount_paid"].clone() } else { Value::Null },
                "amount_requested": inv["amount_due"], "created": inv["created"], "currency": inv["currency"],
                "invoice": invoice, "is_default": true, "livemode": self.livemode,
                "payment": {"type": "payment_intent", "payment_intent": pi},
                "status": if paid { "paid" } else { "open" },
                "status_transitions": {"canceled_at": null, "paid_at": inv["status_transitions"]["paid_at"]},
            }),
        );
        list_value(vec![payment], false, &url)
    }

    /// The stored object a field points to (by id or embedded copy), or the field itself.
    fn current(&self, field: &Value, ty: &str) -> Value {
        id_of(field)
            .and_then(|id| self.raw(ty, id))
            .cloned()
            .unwrap_or_else(|| field.clone())
    }

    pub fn get(&self, id: &str) -> Option<Value> {
        if let Some(found) = self.generated().and_then(|g| g.get(self, id)) {
            return found;
        }
        let ty = self.type_of(id)?;
        Some(self.render(self.raw(&ty, id)?))
    }

    pub fn events(&self) -> Vec<Value> {
        // Event ids come from the account's counter, so id order is recording order.
        self.all("event").cloned().collect()
    }

    // ---- events --------------------------------------------------------------

    fn record(&mut self, ty: &str, object: Value) {
        if !self.record_events {
            return;
        }
        let id = self.next_id("evt");
        let request = match &self.api_request {
            Some((id, idempotency_key)) => json!({"id": id, "idempotency_key": idempotency_key}),
            None => json!({"id": null, "idempotency_key": null}),
        };
        let mut event = template("event");
        set(
            &mut event,
            json!({
                "id": id, "api_version": API_VERSION, "created": self.now,
                "data": {"object": object}, "livemode": self.livemode, "pending_webhooks": 0,
                "request": request, "type": ty,
            }),
        );
        if let Some(webhooks) = &self.webhooks {
            // The delivery task outlives nothing: a closed channel is a
            // server shutting down.
            let _ = webhooks.send(event.clone());
        }
        self.put(event);
    }

    fn record_for(&mut self, event_type: &str, ty: &str, id: &str) {
        if !self.record_events {
            return;
        }
        let snapshot = self.render(self.must(ty, id));
        self.record(event_type, snapshot);
    }

    // ---- changes --------------------------------------------------------------

    pub fn update(&mut self, id: &str, f: impl FnOnce(&mut Value)) {
        let ty = self
            .type_of(id)
            .unwrap_or_else(|| panic!("fake-stripe: update of unknown object `{id}`"));
        let old = self.render(self.must(&ty, id));
        let mut new = old.clone();
        f(&mut new);
        // Embedded children were edited through their parent's view: store them back.
        let embedded = match ty.as_str() {
            "subscription" => Some(("items", "subscription_item")),
            "invoice" => Some(("lines", "line_item")),
            _ => None,
        };
        if let Some((field, child_ty)) = embedded {
            let kids: Vec<Value> = new[field]["data"].as_array().cloned().unwrap_or_default();
            for kid in kids {
                if let Some(kid_id) = kid["id"].as_str()
                    && self.raw(child_ty, kid_id).is_some()
                {
                    self.put(kid);
                }
            }
        }
        self.put(new);
        match ty.as_str() {
            "subscription_item" | "line_item" | "item" => {
                if let Some(parent) = self.parent_of(id) {
                    let parent_ty = self.type_of(&parent).unwrap_or_default();
                    let event = format!("{}.updated", event_prefix(&parent_ty));
                    self.record_for(&event, &parent_ty, &parent);
                }
            }
            _ => self.after_change(&ty, id, &old),
        }
    }

    /// Keeps an object consistent after a change of status and records
    /// `<object>.updated` plus the events Stripe sends for the transition.
    fn after_change(&mut self, ty: &str, id: &str, old: &Value) {
        let new = self.must(ty, id).clone();
        let changed = |field: &str| old[field] != new[field];
        let is = |field: &str, value: &str| new[field] == value;
        let mut events = vec![format!("{}.updated", event_prefix(ty))];
        match ty {
            "subscription" if changed("status") => {
                if is("status", "canceled") || is("status", "incomplete_expired") {
                    let now = self.now;
                    let s = self.raw_mut(ty, id);
                    s["ended_at"] = now.into();
                    if s["canceled_at"].is_null() {
                        s["canceled_at"] = now.into();
                    }
                }
                if is("status", "canceled") {
                    events.push("customer.subscription.deleted".into());
                } else if is("status", "paused") {
                    events.push("customer.subscription.paused".into());
                } else if old["status"] == "paused" {
                    events.push("customer.subscription.resumed".into());
                }
            }
            "checkout.session" => {
                let newly_paid = changed("payment_status") && is("payment_status", "paid");
                if newly_paid
                    && let Some(pi) = new["payment_intent"].as_str()
                    && self.must("payment_intent", pi)["latest_charge"].is_null()
                {
                    self.succeed_payment(pi);
                }
                if changed("status") && is("status", "complete") {
                    events.push("checkout.session.completed".into());
                } else if newly_paid {
                    events.push("checkout.session.async_payment_succeeded".into());
                }
                if changed("status") && is("status", "expired") {
                    events.push("checkout.session.expired".into());
                }
            }
            "invoice" if changed("status") => {
                let now = self.now;
                let inv = self.raw_mut(ty, id);
                match str_of(&new, "status") {
                    "paid" => {
                        inv["amount_paid"] = inv["amount_due"].clone();
                        inv["amount_remaining"] = 0.into();
                        inv["status_transitions"]["paid_at"] = now.into();
                        events.push("invoice.paid".into());
                        if !self.invoice_payments.contains_key(id) {
                            let customer = new["customer"].as_str();
                            let total = new["amount_due"].as_i64().unwrap_or(0);
                            let pi = self.create_payment(customer, total, true).0;
                            self.invoice_payments.insert(id.to_owned(), pi);
                        }
                    }
                    "void" => {
                        inv["status_transitions"]["voided_at"] = now.into();
                        events.push("invoice.voided".into());
                    }
                    "uncollectible" => {
                        inv["status_transitions"]["marked_uncollectible_at"] = now.into();
                        events.push("invoice.marked_uncollectible".into());
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        for event in events {
            self.record_for(&event, ty, id);
        }
    }
}
