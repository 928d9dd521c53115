//! The fake account: every object by type and id, built from Stripe's examples in
//! fixtures3.json, the scenario steps that change them, and the events they record.
//!
//! Embedded objects (a subscription's items, an item's price and plan, an
//! invoice's lines, a charge's refunds) are stored once and assembled when an
//! object is read ([`State::render`]), so a changed price shows up everywhere at
//! once, as it does in Stripe.
//!
//! Layering: uses `wire` only. A generated account's purchases are computed
//! by `generated`, which the store reaches only through the [`Computed`] trait.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value, json};

use crate::wire::{ApiError, Catalog, DAY, ListKey, id_of, list_key, list_value, str_of};
use crate::{
    CheckoutSpec, CreatedInvoice, CreatedSession, CreatedSubscription, Fault, FaultKind, GeneratedSummary, InvoiceSpec,
    SubscriptionSpec,
};

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

pub(crate) fn interval_secs(price: &Value) -> i64 {
    let recurring = &price["recurring"];
    let unit = match recurring["interval"].as_str() {
        Some("day") => DAY,
        Some("week") => 7 * DAY,
        Some("month") => 30 * DAY,
        Some("year") => 365 * DAY,
        _ => panic!(
            "fake-stripe: price {} is not recurring; a subscription item needs a recurring price",
            price["id"]
        ),
    };
    unit * recurring["interval_count"].as_i64().unwrap_or(1)
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

/// One line to put on an invoice.
struct LinePart {
    price: String,
    quantity: i64,
    period: (i64, i64),
    subscription_item: Option<String>,
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
            generated: None,
            history_only: None,
            catalog: None,
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
        let mut event = template("event");
        set(
            &mut event,
            json!({
                "id": id, "api_version": API_VERSION, "created": self.now,
                "data": {"object": object}, "livemode": self.livemode, "pending_webhooks": 0,
                "request": {"id": null, "idempotency_key": null}, "type": ty,
            }),
        );
        self.put(event);
    }

    fn record_for(&mut self, event_type: &str, ty: &str, id: &str) {
        if !self.record_events {
            return;
        }
        let snapshot = self.render(self.must(ty, id));
        self.record(event_type, snapshot);
    }

    // ---- catalog and customers ------------------------------------------------

    pub fn create_customer(&mut self, email: Option<&str>, name: Option<&str>) -> String {
        let id = self.next_id("cus");
        let mut c = template("customer");
        set(
            &mut c,
            json!({
                "id": id, "created": self.now, "email": email, "name": name, "discount": null,
                "address": null, "shipping": null, "currency": null, "balance": 0,
                "default_source": null, "delinquent": false, "description": null,
                "invoice_prefix": format!("F{}", &id[id.len() - 7..]), "livemode": self.livemode,
                "metadata": {}, "next_invoice_sequence": 1, "phone": null, "preferred_locales": [],
                "tax_exempt": "none", "test_clock": null,
            }),
        );
        self.put(c);
        self.record_for("customer.created", "customer", &id);
        id
    }

    pub fn create_product(&mut self, name: &str, meta: &[(&str, &str)]) -> String {
        let id = self.next_id("prod");
        let mut p = template("product");
        set(
            &mut p,
            json!({
                "id": id, "active": true, "created": self.now, "updated": self.now,
                "default_price": null, "description": null, "images": [], "livemode": self.livemode,
                "marketing_features": [], "metadata": metadata(meta), "name": name,
                "package_dimensions": null, "shippable": null, "statement_descriptor": null,
                "tax_code": null, "unit_label": null, "url": null, "type": "service",
            }),
        );
        self.put(p);
        self.record_for("product.created", "product", &id);
        id
    }

    pub fn create_price(
        &mut self,
        product: &str,
        interval: Option<&str>,
        unit_amount: i64,
        meta: &[(&str, &str)],
    ) -> String {
        self.must("product", product);
        if let Some(i) = interval {
            assert!(
                matches!(i, "day" | "week" | "month" | "year"),
                "fake-stripe: price interval `{i}` must be day, week, month or year"
            );
        }
        let id = self.next_id("price");
        let recurring = interval.map(|i| {
            json!({"interval": i, "interval_count": 1, "meter": null, "usage_type": "licensed", "trial_period_days": null})
        });
        let mut p = template("price");
        set(
            &mut p,
            json!({
                "id": id, "active": true, "billing_scheme": "per_unit", "created": self.now,
                "currency": "usd", "custom_unit_amount": null, "livemode": self.livemode,
                "lookup_key": null, "metadata": metadata(meta), "nickname": null, "product": product,
                "type": if recurring.is_some() { "recurring" } else { "one_time" },
                "recurring": recurring, "tax_behavior": "unspecified", "tiers_mode": null,
                "transform_quantity": null, "unit_amount": unit_amount,
                "unit_amount_decimal": unit_amount.to_string(),
            }),
        );
        self.put(p);
        self.record_for("price.created", "price", &id);
        id
    }

    fn unit_amount(&self, price: &str) -> i64 {
        self.must("price", price)["unit_amount"].as_i64().unwrap_or(0)
    }

    // ---- payments -------------------------------------------------------------

    /// A payment intent, and its charge when it succeeded.
    fn create_payment(&mut self, customer: Option<&str>, amount: i64, succeeded: bool) -> (String, Option<String>) {
        let pi = self.next_id("pi");
        let mut p = template("payment_intent");
        set(
            &mut p,
            json!({
                "id": pi, "amount": amount, "amount_capturable": 0, "amount_details": {"tip": {}},
                "amount_received": 0, "automatic_payment_methods": null, "canceled_at": null,
                "cancellation_reason": null, "capture_method": "automatic_async",
                "client_secret": format!("{pi}_secret_fake"), "created": self.now, "currency": "usd",
                "customer": customer, "description": null, "last_payment_error": null,
                "latest_charge": null, "livemode": self.livemode, "metadata": {}, "next_action": null,
                "payment_method": null, "payment_method_configuration_details": null,
                "processing": null, "shipping": null, "status": "processing", "transfer_data": null,
                "excluded_payment_method_types": null, "customer_account": null,
                "managed_payments": null,
            }),
        );
        self.put(p);
        let charge = succeeded.then(|| self.succeed_payment(&pi));
        (pi, charge)
    }

    /// Marks a payment intent succeeded and creates its charge.
    fn succeed_payment(&mut self, pi: &str) -> String {
        let intent = self.must("payment_intent", pi).clone();
        let ch = self.next_id("ch");
        let customer = intent["customer"].as_str().and_then(|c| self.raw("customer", c));
        let (email, name) = customer.map_or((Value::Null, Value::Null), |c| (c["email"].clone(), c["name"].clone()));
        let mut c = template("charge");
        let mut billing = c["billing_details"].clone();
        billing["email"] = email;
        billing["name"] = name;
        set(
            &mut c,
            json!({
                "id": ch, "amount": intent["amount"], "amount_captured": intent["amount"],
                "amount_refunded": 0, "balance_transaction": format!("txn_{}", &ch[3..]),
                "billing_details": billing, "captured": true, "created": self.now,
                "currency": intent["currency"], "customer": intent["customer"], "description": null,
                "disputed": false, "livemode": self.livemode, "metadata": {},
                "outcome": {"advice_code": null, "network_advice_code": null, "network_decline_code": null,
                    "network_status": "approved_by_network", "reason": null,
                    "seller_message": "Payment complete.", "type": "authorized"},
                "paid": true, "payment_intent": pi, "payment_method": format!("pm_{}", &ch[3..]),
                "receipt_url": null, "refunded": false,
                "refunds": list_value(vec![], false, &format!("/v1/charges/{ch}/refunds")),
                "shipping": null, "source": null, "status": "succeeded", "transfer_data": null,
            }),
        );
        self.put(c);
        let p = self.raw_mut("payment_intent", pi);
        p["status"] = "succeeded".into();
        p["amount_received"] = p["amount"].clone();
        p["latest_charge"] = ch.clone().into();
        ch
    }

    fn charge_of(&self, pi: &str) -> Value {
        let intent = self.must("payment_intent", pi);
        let ch = intent["latest_charge"].as_str().unwrap_or_else(|| {
            panic!("fake-stripe: payment intent `{pi}` has no charge (its payment has not succeeded)")
        });
        self.must("charge", ch).clone()
    }

    pub fn refund(&mut self, pi: &str, amount: Option<i64>) -> String {
        let charge = self.charge_of(pi);
        let ch = str_of(&charge, "id").to_owned();
        let left = charge["amount"].as_i64().unwrap_or(0) - charge["amount_refunded"].as_i64().unwrap_or(0);
        let amount = amount.unwrap_or(left);
        assert!(
            amount > 0 && amount <= left,
            "fake-stripe: refund of {amount} on charge {ch} exceeds the {left} left to refund"
        );
        let id = self.next_id("re");
        let mut r = template("refund");
        set(
            &mut r,
            json!({
                "id": id, "amount": amount, "balance_transaction": null, "charge": ch,
                "created": self.now, "currency": charge["currency"], "metadata": {},
                "payment_intent": pi, "reason": "requested_by_customer", "receipt_number": null,
                "source_transfer_reversal": null, "status": "succeeded", "transfer_reversal": null,
                "customer": charge["customer"], "customer_account": null,
                "payment_method": charge["payment_method"],
            }),
        );
        self.put(r);
        let c = self.raw_mut("charge", &ch);
        let refunded = c["amount_refunded"].as_i64().unwrap_or(0) + amount;
        c["amount_refunded"] = refunded.into();
        c["refunded"] = (refunded == c["amount"].as_i64().unwrap_or(0)).into();
        self.record_for("charge.refunded", "charge", &ch);
        self.record_for("refund.created", "refund", &id);
        id
    }

    pub fn dispute(&mut self, pi: &str, status: &str) -> String {
        let charge = self.charge_of(pi);
        let ch = str_of(&charge, "id").to_owned();
        let closed = matches!(status, "won" | "lost" | "warning_closed" | "prevented");
        let existing = self
            .all("dispute")
            .find(|d| d["charge"] == charge["id"])
            .map(|d| str_of(d, "id").to_owned());
        let id = match existing {
            Some(id) => {
                self.raw_mut("dispute", &id)["status"] = status.into();
                self.record_for("charge.dispute.updated", "dispute", &id);
                id
            }
            None => {
                let id = self.next_id("dp");
                let mut d = template("dispute");
                set(
                    &mut d,
                    json!({
                        "id": id, "amount": charge["amount"], "balance_transactions": [], "charge": ch,
                        "created": self.now, "currency": charge["currency"],
                        "evidence_details": {"due_by": self.now + 7 * DAY, "has_evidence": false,
                            "past_due": false, "submission_count": 0, "enhanced_eligibility": {}},
                        "is_charge_refundable": false, "livemode": self.livemode, "metadata": {},
                        "payment_intent": pi, "reason": "fraudulent", "status": status,
                        "enhanced_eligibility_types": [],
                    }),
                );
                self.put(d);
                self.raw_mut("charge", &ch)["disputed"] = true.into();
                self.record_for("charge.dispute.created", "dispute", &id);
                id
            }
        };
        if closed {
            self.record_for("charge.dispute.closed", "dispute", &id);
        }
        id
    }

    // ---- invoices -------------------------------------------------------------

    /// Creates an invoice and its lines; a paid one gets a payment (or `payment_intent`).
    fn build_invoice(
        &mut self,
        customer: Option<&str>,
        lines: Vec<LinePart>,
        status: &str,
        subscription: Option<&str>,
        billing_reason: &str,
        payment_intent: Option<String>,
    ) -> (String, Vec<String>) {
        assert!(
            matches!(status, "draft" | "open" | "paid" | "void" | "uncollectible"),
            "fake-stripe: invoice status `{status}` must be draft, open, paid, void or uncollectible"
        );
        let id = self.next_id("in");
        let mut line_ids = Vec::new();
        let mut total = 0;
        for part in &lines {
            let lid = self.next_id("il");
            let price = self.must("price", &part.price).clone();
            let product = self.must("product", str_of(&price, "product")).clone();
            let amount = price["unit_amount"].as_i64().unwrap_or(0) * part.quantity;
            total += amount;
            let parent = match &part.subscription_item {
                Some(si) => json!({
                    "type": "subscription_item_details", "invoice_item_details": null,
                    "subscription_item_details": {"invoice_item": null, "proration": false,
                        "proration_details": {"credited_items": null},
                        "subscription": subscription, "subscription_item": si},
                }),
                None => json!({
                    "type": "invoice_item_details", "subscription_item_details": null,
                    "invoice_item_details": {"invoice_item": format!("ii_{}", &lid[3..]),
                        "proration": false, "proration_details": {"credited_items": null},
                        "subscription": subscription},
                }),
            };
            let mut line = template("line_item");
            set(
                &mut line,
                json!({
                    "id": lid, "amount": amount, "currency": price["currency"],
                    "description": format!("{} × {}", part.quantity, str_of(&product, "name")),
                    "discount_amounts": [], "discountable": true, "discounts": [], "invoice": id,
                    "livemode": self.livemode, "metadata": {},
                    "period": {"start": part.period.0, "end": part.period.1},
                    "quantity": part.quantity, "subscription": null, "pretax_credit_amounts": [],
                    "taxes": [], "parent": parent,
                    "pricing": {"type": "price_details",
                        "price_details": {"price": price["id"], "product": product["id"]},
                        "unit_amount_decimal": price["unit_amount_decimal"]},
                    "subtotal": amount, "quantity_decimal": part.quantity.to_string(),
                }),
            );
            self.put(line);
            if part.subscription_item.is_none()
                && let Some(customer) = customer
            {
                let item = self.invoice_item(&lid, &id, customer, subscription, &price, &product, part);
                self.put(item);
            }
            line_ids.push(lid);
        }
        let (email, name) = customer
            .map(|c| self.must("customer", c))
            .map_or((Value::Null, Value::Null), |c| (c["email"].clone(), c["name"].clone()));
        let paid = status == "paid";
        let finalized = status != "draft";
        let at = |cond: bool| {
            if cond { Value::from(self.now) } else { Value::Null }
        };
        let parent = subscription.map(|s| {
            json!({"type": "subscription_details", "quote_details": null,
                "subscription_details": {"metadata": {}, "subscription": s}})
        });
        let (period_start, period_end) = lines.first().map_or((self.now, self.now), |l| l.period);
        let mut inv = template("invoice");
        set(
            &mut inv,
            json!({
                "id": id, "account_tax_ids": null, "amount_due": total, "amount_overpaid": 0,
                "amount_paid": if paid { total } else { 0 }, "amount_remaining": if paid { 0 } else { total },
                "amount_shipping": 0, "attempt_count": i64::from(finalized && subscription.is_some()),
                "attempted": finalized && subscription.is_some(), "auto_advance": !paid && finalized,
                "billing_reason": billing_reason, "collection_method": "charge_automatically",
                "created": self.now, "currency": "usd", "customer": customer,
                "customer_address": null, "customer_email": email, "customer_name": name,
                "customer_shipping": null, "customer_tax_ids": [], "discounts": [], "due_date": null,
                "effective_at": at(finalized), "ending_balance": if finalized { Value::from(0) } else { Value::Null },
                "from_invoice": null, "hosted_invoice_url": null, "invoice_pdf": null,
                "last_finalization_error": null, "latest_revision": null,
                "lines": list_value(vec![], false, &format!("/v1/invoices/{id}/lines")),
                "livemode": self.livemode, "metadata": {}, "next_payment_attempt": null,
                "number": if finalized { Value::from(format!("FAKE-{}", &id[3..])) } else { Value::Null },
                "parent": parent, "period_start": period_start, "period_end": period_end,
                "shipping_cost": null, "shipping_details": null, "status": status,
                "status_transitions": {"finalized_at": at(finalized), "paid_at": at(paid),
                    "marked_uncollectible_at": at(status == "uncollectible"), "voided_at": at(status == "void")},
                "subscription": null, "subtotal": total, "subtotal_excluding_tax": total,
                "test_clock": null, "total": total, "total_discount_amounts": [],
                "total_excluding_tax": total, "webhooks_delivered_at": at(finalized),
                "total_pretax_credit_amounts": [], "total_taxes": [], "customer_account": null,
            }),
        );
        self.put(inv);
        self.children.insert(id.clone(), line_ids.clone());
        if paid {
            let pi = payment_intent.unwrap_or_else(|| self.create_payment(customer, total, true).0);
            self.invoice_payments.insert(id.clone(), pi);
        }
        (id, line_ids)
    }

    /// The invoice item behind a line that is not a subscription item's
    /// (its `parent.invoice_item_details.invoice_item`): `ii_` and the line's number.
    #[allow(clippy::too_many_arguments)]
    fn invoice_item(
        &self,
        line: &str,
        invoice: &str,
        customer: &str,
        subscription: Option<&str>,
        price: &Value,
        product: &Value,
        part: &LinePart,
    ) -> Value {
        let amount = price["unit_amount"].as_i64().unwrap_or(0) * part.quantity;
        let parent =
            subscription.map(|s| json!({"type": "subscription_details", "subscription_details": {"subscription": s}}));
        let mut item = template("invoiceitem");
        set(
            &mut item,
            json!({
                "id": format!("ii_{}", &line[3..]), "amount": amount, "currency": price["currency"],
                "customer": customer, "date": self.now, "description": product["name"],
                "discountable": true, "discounts": [], "invoice": invoice, "livemode": self.livemode,
                "metadata": {}, "net_amount": null, "parent": parent,
                "period": {"start": part.period.0, "end": part.period.1},
                "pricing": {"type": "price_details",
                    "price_details": {"price": price["id"], "product": product["id"]},
                    "unit_amount_decimal": price["unit_amount_decimal"]},
                "proration": false, "quantity": part.quantity, "quantity_decimal": part.quantity.to_string(),
                "tax_rates": [], "test_clock": null, "customer_account": null,
            }),
        );
        item
    }

    /// The events of a new invoice; an open subscription invoice is a failed renewal.
    fn record_invoice_events(&mut self, id: &str) {
        self.record_for("invoice.created", "invoice", id);
        let inv = self.must("invoice", id);
        let follow = match str_of(inv, "status") {
            "paid" => Some("invoice.paid"),
            "open" if !inv["parent"].is_null() => Some("invoice.payment_failed"),
            "open" => Some("invoice.finalized"),
            "void" => Some("invoice.voided"),
            "uncollectible" => Some("invoice.marked_uncollectible"),
            _ => None,
        };
        if let Some(event) = follow {
            self.record_for(event, "invoice", id);
        }
    }

    pub fn create_invoice(&mut self, spec: InvoiceSpec) -> CreatedInvoice {
        self.must("customer", &spec.customer);
        assert!(
            !spec.lines.is_empty(),
            "fake-stripe: an invoice needs at least one line"
        );
        let items: Vec<Value> = spec
            .subscription
            .iter()
            .flat_map(|s| self.children_of(s, "subscription_item"))
            .cloned()
            .collect();
        let parts = spec
            .lines
            .iter()
            .map(|(price, quantity)| {
                let item = items.iter().find(|i| id_of(&i["price"]) == Some(price));
                LinePart {
                    price: price.clone(),
                    quantity: *quantity,
                    period: item.map_or((self.now, self.now), |i| {
                        (
                            i["current_period_start"].as_i64().unwrap_or(self.now),
                            i["current_period_end"].as_i64().unwrap_or(self.now),
                        )
                    }),
                    subscription_item: item.map(|i| str_of(i, "id").to_owned()),
                }
            })
            .collect();
        let status = spec.status.as_deref().unwrap_or("paid");
        let reason = if spec.subscription.is_some() {
            "subscription_update"
        } else {
            "manual"
        };
        let (id, line_ids) = self.build_invoice(
            Some(&spec.customer),
            parts,
            status,
            spec.subscription.as_deref(),
            reason,
            None,
        );
        self.record_invoice_events(&id);
        CreatedInvoice {
            payment_intent: self.invoice_payments.get(&id).cloned(),
            id,
            line_ids,
        }
    }

    // ---- subscriptions --------------------------------------------------------

    pub fn create_subscription(&mut self, spec: SubscriptionSpec) -> CreatedSubscription {
        self.must("customer", &spec.customer);
        assert!(
            !spec.items.is_empty(),
            "fake-stripe: a subscription needs at least one item"
        );
        let status = spec.status.as_deref().unwrap_or("active").to_owned();
        let start = spec.current_period_start.unwrap_or(self.now);
        let end = spec.current_period_end.unwrap_or(start + 30 * DAY);
        let past = i64::from(spec.past_periods);
        let step = if past > 0 {
            interval_secs(self.must("price", &spec.items[0].0))
        } else {
            0
        };
        // With a history the subscription began `past` periods ago.
        let began = start - past * step;
        let created = if past > 0 { began } else { self.now };
        let id = self.next_id("sub");
        let mut item_ids = Vec::new();
        for (price, quantity) in &spec.items {
            assert!(
                self.must("price", price)["recurring"].is_object(),
                "fake-stripe: price `{price}` is one-time; a subscription item needs a recurring price"
            );
            let si = self.next_id("si");
            let mut item = template("subscription_item");
            set(
                &mut item,
                json!({
                    "id": si, "created": created, "discounts": [], "metadata": {}, "price": price,
                    "quantity": quantity, "subscription": id, "tax_rates": [], "plan": null,
                    "current_period_start": start, "current_period_end": end, "billing_thresholds": null,
                }),
            );
            self.put(item);
            item_ids.push(si);
        }
        self.children.insert(id.clone(), item_ids.clone());
        let ended = matches!(status.as_str(), "canceled" | "incomplete_expired");
        let cancel_at = spec.cancel_at.or(spec.cancel_at_period_end.then_some(end));
        let trial_end = spec.trial_end.or((status == "trialing").then_some(end));
        let mut sub = template("subscription");
        set(
            &mut sub,
            json!({
                "id": id, "application": null, "application_fee_percent": null,
                "billing_cycle_anchor": began, "billing_cycle_anchor_config": null,
                "cancel_at": cancel_at, "cancel_at_period_end": spec.cancel_at_period_end,
                "canceled_at": if ended || cancel_at.is_some() { Value::from(self.now) } else { Value::Null },
                "collection_method": "charge_automatically", "created": created, "currency": "usd",
                "customer": spec.customer, "days_until_due": null, "default_payment_method": null,
                "default_source": null, "default_tax_rates": [], "description": null, "discounts": [],
                "ended_at": if ended { Value::from(self.now) } else { Value::Null },
                "items": list_value(vec![], false, &format!("/v1/subscription_items?subscription={id}")),
                "latest_invoice": null, "livemode": self.livemode, "metadata": {},
                "next_pending_invoice_item_invoice": null, "on_behalf_of": null,
                "pause_collection": null, "pending_invoice_item_interval": null,
                "pending_setup_intent": null, "pending_update": null, "schedule": null,
                "start_date": began, "status": status, "test_clock": null, "transfer_data": null,
                "trial_end": trial_end, "trial_start": trial_end.map(|_| start),
                "billing_thresholds": null, "customer_account": null, "managed_payments": null,
                "billing_schedules": [],
            }),
        );
        self.put(sub);
        let paid = spec.latest_invoice_paid.unwrap_or(true);
        let wall = self.now;
        let mut history = Vec::new();
        for k in 0..past {
            if self.history_only.is_some_and(|keep| keep != k) {
                // Reserve its ids (invoice, lines, payment intent, charge) unbuilt.
                self.reserve_ids("in", 3 + spec.items.len() as u64);
                continue;
            }
            let period = (began + k * step, began + (k + 1) * step);
            // Each past invoice was made, and paid, as its period began.
            self.now = period.0;
            let parts = self
                .item_lines(&id)
                .into_iter()
                .map(|part| LinePart { period, ..part })
                .collect();
            let reason = if k == 0 {
                "subscription_create"
            } else {
                "subscription_cycle"
            };
            history.push(
                self.build_invoice(Some(&spec.customer), parts, "paid", Some(&id), reason, None)
                    .0,
            );
        }
        if past > 0 {
            self.now = start;
        }
        let parts = self.item_lines(&id);
        // A scratch build for one past invoice does not need the latest one.
        let skip_latest = self.history_only.is_some_and(|keep| keep >= 0 && keep != past);
        let invoice = if skip_latest {
            // Its id, and the ids of its lines and payment, reserved unbuilt.
            let ids = 1 + spec.items.len() as u64 + if paid { 2 } else { 0 };
            self.reserve_ids("in", ids)
        } else {
            self.build_invoice(
                Some(&spec.customer),
                parts,
                if paid { "paid" } else { "open" },
                Some(&id),
                if past > 0 {
                    "subscription_cycle"
                } else {
                    "subscription_create"
                },
                None,
            )
            .0
        };
        self.now = wall;
        self.raw_mut("subscription", &id)["latest_invoice"] = invoice.clone().into();
        self.record_for("customer.subscription.created", "subscription", &id);
        for past_invoice in &history {
            self.record_invoice_events(past_invoice);
        }
        if !skip_latest {
            self.record_invoice_events(&invoice);
        }
        CreatedSubscription {
            id,
            item_ids,
            latest_invoice: invoice,
        }
    }

    /// One invoice line per item of a subscription, for its current period.
    fn item_lines(&self, sub: &str) -> Vec<LinePart> {
        self.children_of(sub, "subscription_item")
            .into_iter()
            .map(|i| LinePart {
                price: id_of(&i["price"]).unwrap_or_default().to_owned(),
                quantity: i["quantity"].as_i64().unwrap_or(1),
                period: (
                    i["current_period_start"].as_i64().unwrap_or(self.now),
                    i["current_period_end"].as_i64().unwrap_or(self.now),
                ),
                subscription_item: Some(str_of(i, "id").to_owned()),
            })
            .collect()
    }

    pub fn renew_subscription(&mut self, sub: &str, paid: bool) {
        let old = self.render(self.must("subscription", sub));
        let items: Vec<(String, Value)> = self
            .children_of(sub, "subscription_item")
            .into_iter()
            .map(|i| (str_of(i, "id").to_owned(), self.current(&i["price"], "price")))
            .collect();
        for (si, price) in items {
            let step = interval_secs(&price);
            let item = self.raw_mut("subscription_item", &si);
            let start = item["current_period_end"].as_i64().unwrap_or_default();
            item["current_period_start"] = start.into();
            item["current_period_end"] = (start + step).into();
        }
        let customer = str_of(&old, "customer").to_owned();
        let parts = self.item_lines(sub);
        let (invoice, _) = self.build_invoice(
            Some(&customer),
            parts,
            if paid { "paid" } else { "open" },
            Some(sub),
            "subscription_cycle",
            None,
        );
        let s = self.raw_mut("subscription", sub);
        s["latest_invoice"] = invoice.clone().into();
        s["status"] = if paid { "active" } else { "past_due" }.into();
        self.record_invoice_events(&invoice);
        self.after_change("subscription", sub, &old);
    }

    pub fn set_subscription_status(&mut self, sub: &str, status: &str) {
        self.update(sub, |s| s["status"] = status.into());
    }

    // ---- checkout -------------------------------------------------------------

    pub fn create_checkout_session(&mut self, spec: CheckoutSpec) -> CreatedSession {
        let mode = spec.mode.as_deref().unwrap_or("payment").to_owned();
        let status = spec.status.as_deref().unwrap_or("complete").to_owned();
        let payment_status = spec.payment_status.as_deref().unwrap_or("paid").to_owned();
        let customer = spec.customer.clone();
        let customer_obj = customer.as_deref().map(|c| self.must("customer", c).clone());
        let mut lines = spec.lines.clone();
        let mut invoice = None;
        if mode == "subscription" {
            let sub_id = spec
                .subscription
                .as_deref()
                .expect("fake-stripe: a subscription-mode session needs `subscription`");
            let sub = self.render(self.must("subscription", sub_id));
            invoice = sub["latest_invoice"].as_str().map(str::to_owned);
            if lines.is_empty() {
                lines = sub["items"]["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        (
                            str_of(&i["price"], "id").to_owned(),
                            i["quantity"].as_i64().unwrap_or(1),
                        )
                    })
                    .collect();
            }
        }
        assert!(
            !lines.is_empty(),
            "fake-stripe: a checkout session needs at least one line"
        );
        let id = self.next_id(if self.livemode { "cs_live" } else { "cs_test" });
        let mut line_ids = Vec::new();
        let mut total = 0;
        for (price, quantity) in &lines {
            let li = self.next_id("li");
            let amount = self.unit_amount(price) * quantity;
            total += amount;
            let product = str_of(self.must("price", price), "product").to_owned();
            let description = str_of(self.must("product", &product), "name").to_owned();
            let mut item = template("item");
            set(
                &mut item,
                json!({
                    "id": li, "amount_discount": 0, "amount_subtotal": amount, "amount_tax": 0,
                    "amount_total": amount, "currency": "usd", "description": description,
                    "price": price, "quantity": quantity, "metadata": {}, "adjustable_quantity": null,
                }),
            );
            self.put(item);
            line_ids.push(li);
        }
        self.children.insert(id.clone(), line_ids.clone());
        let paid = payment_status == "paid";
        let payment_intent = (mode == "payment" && payment_status != "no_payment_required")
            .then(|| self.create_payment(customer.as_deref(), total, paid).0);
        if mode == "payment" && spec.create_invoice {
            let parts = lines
                .iter()
                .map(|(price, quantity)| LinePart {
                    price: price.clone(),
                    quantity: *quantity,
                    period: (self.now, self.now),
                    subscription_item: None,
                })
                .collect();
            let status = if paid { "paid" } else { "open" };
            let pi = payment_intent.clone();
            invoice = Some(
                self.build_invoice(customer.as_deref(), parts, status, None, "manual", pi)
                    .0,
            );
        }
        let email = spec
            .customer_email
            .clone()
            .map(Value::from)
            .or_else(|| customer_obj.as_ref().map(|c| c["email"].clone()))
            .unwrap_or(Value::Null);
        let name = customer_obj.as_ref().map_or(Value::Null, |c| c["name"].clone());
        let done = status != "open";
        let details = (status == "complete").then(|| {
            json!({"address": null, "email": email, "name": name, "phone": null, "tax_exempt": "none",
                "tax_ids": [], "business_name": null, "individual_name": null})
        });
        let mut invoice_creation = template("checkout.session")["invoice_creation"].clone();
        invoice_creation["enabled"] = spec.create_invoice.into();
        let mut s = template("checkout.session");
        set(
            &mut s,
            json!({
                "id": id, "after_expiration": null, "allow_promotion_codes": null,
                "amount_subtotal": total, "amount_total": total, "billing_address_collection": null,
                "client_reference_id": null, "client_secret": null, "consent": null,
                "consent_collection": null, "created": self.now, "currency": "usd",
                "custom_fields": [], "custom_text": {"after_submit": null, "shipping_address": null,
                    "submit": null, "terms_of_service_acceptance": null},
                "customer": customer, "customer_creation": null, "customer_details": details,
                "customer_email": spec.customer_email, "expires_at": self.now + DAY,
                "invoice": invoice, "invoice_creation": if mode == "payment" { invoice_creation } else { Value::Null },
                "livemode": self.livemode, "locale": null, "metadata": {}, "mode": mode,
                "payment_intent": payment_intent, "payment_link": null,
                "payment_method_collection": if mode == "subscription" { Value::from("always") } else { Value::Null },
                "payment_method_configuration_details": null, "payment_method_options": {},
                "payment_method_types": ["card"], "payment_status": payment_status,
                "recovered_from": null, "saved_payment_method_options": null, "setup_intent": null,
                "shipping_address_collection": null, "shipping_cost": null, "shipping_options": [],
                "status": status, "submit_type": null, "subscription": spec.subscription,
                "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
                "ui_mode": "hosted_page",
                "url": if done { Value::Null } else { Value::from(format!("https://checkout.stripe.com/c/pay/{id}")) },
                "adaptive_pricing": {"enabled": false}, "discounts": [], "collected_information": null,
                "permissions": null, "wallet_options": null, "origin_context": null,
                "currency_conversion": null, "customer_account": null, "integration_identifier": null,
                "managed_payments": null,
            }),
        );
        self.put(s);
        if mode == "payment"
            && let Some(inv) = invoice.clone()
        {
            self.record_invoice_events(&inv);
        }
        match status.as_str() {
            "complete" => self.record_for("checkout.session.completed", "checkout.session", &id),
            "expired" => self.record_for("checkout.session.expired", "checkout.session", &id),
            _ => {}
        }
        CreatedSession {
            id,
            line_ids,
            payment_intent,
            invoice,
        }
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
