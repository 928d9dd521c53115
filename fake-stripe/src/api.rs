//! The read API over the account: query-string parsing in Stripe's bracket syntax,
//! list filters, cursor pagination and expansion. Everything here is a pure
//! function of the [`State`] and the request.
//!
//! Layering: uses `state` and `wire` only. A generated account answers through
//! [`crate::state::Computed`], whose implementation (in `generated`) calls back
//! into these functions on a scratch [`State`].

use std::collections::HashMap;

use serde_json::Value;

use crate::state::State;
use crate::wire::{ApiError, created_of, list_value};

/// A parsed query string: `a=1`, `a[]=1&a[]=2` or `a[0]=1` (arrays), `created[gte]=1`.
#[derive(Default)]
struct Query {
    scalars: HashMap<String, String>,
    arrays: HashMap<String, Vec<String>>,
    created: Vec<(String, i64)>,
}

impl Query {
    fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut q = Query::default();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let (name, sub) = match key.split_once('[') {
                Some((name, rest)) => {
                    let sub = rest
                        .strip_suffix(']')
                        .ok_or_else(|| ApiError::invalid(format!("Invalid parameter name: {key}"), Some(&key)))?;
                    (name, Some(sub))
                }
                None => (&*key, None),
            };
            if !allowed.contains(&name) {
                return Err(ApiError::invalid(
                    format!("Received unknown parameter: {name}"),
                    Some(name),
                ));
            }
            match sub {
                None if name == "created" => q.created.push(("eq".into(), int(name, &value)?)),
                None => {
                    q.scalars.insert(name.to_owned(), value.into_owned());
                }
                Some(sub) if sub.is_empty() || sub.bytes().all(|b| b.is_ascii_digit()) => {
                    q.arrays.entry(name.to_owned()).or_default().push(value.into_owned());
                }
                Some(op) if name == "created" && matches!(op, "gt" | "gte" | "lt" | "lte") => {
                    q.created.push((op.to_owned(), int(&key, &value)?));
                }
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!("Received unknown parameter: {key}"),
                        Some(&key),
                    ));
                }
            }
        }
        Ok(q)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.scalars.get(name).map(String::as_str)
    }

    fn expand(&self) -> &[String] {
        self.arrays.get("expand").map_or(&[], Vec::as_slice)
    }

    fn limit(&self) -> Result<usize, ApiError> {
        let Some(raw) = self.get("limit") else {
            return Ok(10);
        };
        let n = int("limit", raw)?;
        if !(1..=100).contains(&n) {
            let bound = if n < 1 {
                "greater than or equal to 1"
            } else {
                "less than or equal to 100"
            };
            return Err(ApiError::invalid(format!("This value must be {bound}."), Some("limit")));
        }
        Ok(n as usize)
    }
}

fn int(param: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::invalid(format!("Invalid integer: {raw}"), Some(param)))
}

// ---- filters -------------------------------------------------------------------

enum Filter {
    /// The string at a JSON pointer equals the parameter.
    Eq(&'static str),
    /// The boolean at a JSON pointer equals the parameter (`true`/`false`).
    Bool(&'static str),
    Custom(fn(&State, &Value, &str) -> bool),
}

/// The filters each list endpoint accepts besides the common parameters.
fn filters(ty: &str) -> Vec<(&'static str, Filter)> {
    use Filter::*;
    match ty {
        "product" => vec![("active", Bool("/active"))],
        "price" => vec![
            ("active", Bool("/active")),
            ("product", Eq("/product")),
            ("type", Eq("/type")),
            ("currency", Eq("/currency")),
        ],
        "customer" => vec![("email", Eq("/email"))],
        "subscription" => vec![
            ("customer", Eq("/customer")),
            ("status", Custom(subscription_status)),
            ("price", Custom(subscription_has_price)),
        ],
        "subscription_item" => vec![("subscription", Eq("/subscription"))],
        "checkout.session" => vec![
            ("status", Eq("/status")),
            ("customer", Eq("/customer")),
            ("payment_intent", Eq("/payment_intent")),
            ("subscription", Eq("/subscription")),
        ],
        "invoice" => vec![
            ("status", Eq("/status")),
            ("customer", Eq("/customer")),
            ("subscription", Eq("/parent/subscription_details/subscription")),
        ],
        "invoiceitem" => vec![
            ("invoice", Eq("/invoice")),
            ("customer", Eq("/customer")),
            ("pending", Custom(invoice_item_pending)),
        ],
        "refund" | "dispute" => vec![("payment_intent", Eq("/payment_intent")), ("charge", Eq("/charge"))],
        "charge" => vec![("customer", Eq("/customer")), ("payment_intent", Eq("/payment_intent"))],
        "payment_intent" => vec![("customer", Eq("/customer"))],
        "event" => vec![
            ("type", Custom(event_type_matches)),
            ("types", Custom(event_type_matches)),
        ],
        _ => vec![],
    }
}

fn subscription_status(_: &State, sub: &Value, status: &str) -> bool {
    match status {
        "all" => true,
        "ended" => sub["status"] == "canceled" || sub["status"] == "incomplete_expired",
        status => sub["status"] == status,
    }
}

/// `pending=true`: not yet on an invoice; `false`: on one.
fn invoice_item_pending(_: &State, item: &Value, pending: &str) -> bool {
    item["invoice"].is_null() == (pending == "true")
}

fn subscription_has_price(st: &State, sub: &Value, price: &str) -> bool {
    let id = sub["id"].as_str().unwrap_or_default();
    st.children_of(id, "subscription_item")
        .iter()
        .any(|item| item["price"] == price || item["price"]["id"] == price)
}

/// `type=customer.subscription.*` matches by prefix, as Stripe's wildcard does.
fn event_type_matches(_: &State, event: &Value, pattern: &str) -> bool {
    let ty = event["type"].as_str().unwrap_or_default();
    match pattern.strip_suffix('*') {
        Some(prefix) => ty.starts_with(prefix),
        None => ty == pattern,
    }
}

fn matches(st: &State, obj: &Value, param: &str, filter: &Filter, value: &str) -> Result<bool, ApiError> {
    Ok(match filter {
        Filter::Eq(ptr) => obj.pointer(ptr).and_then(Value::as_str) == Some(value),
        Filter::Bool(ptr) => {
            let want = match value {
                "true" => true,
                "false" => false,
                other => {
                    return Err(ApiError::invalid(format!("Invalid boolean: {other}"), Some(param)));
                }
            };
            obj.pointer(ptr).and_then(Value::as_bool) == Some(want)
        }
        Filter::Custom(f) => f(st, obj, value),
    })
}

fn created_ok(obj: &Value, created: &[(String, i64)]) -> bool {
    let at = created_of(obj);
    created.iter().all(|(op, bound)| match op.as_str() {
        "gt" => at > *bound,
        "gte" => at >= *bound,
        "lt" => at < *bound,
        "lte" => at <= *bound,
        _ => at == *bound,
    })
}

// ---- endpoints ------------------------------------------------------------------

const COMMON: [&str; 5] = ["limit", "starting_after", "ending_before", "expand", "created"];

/// A parsed, validated list request: its filters, expansions, page size and cursor.
pub(crate) struct ListRequest {
    ty: String,
    q: Query,
    filters: Vec<(&'static str, Filter)>,
    pub expand: Vec<Vec<String>>,
    pub limit: usize,
    /// `(id, param)` of `starting_after` or `ending_before`.
    pub cursor: Option<(String, &'static str)>,
    /// Paging back (`ending_before`).
    pub backwards: bool,
}

impl ListRequest {
    pub fn parse(ty: &str, raw: Option<&str>) -> Result<ListRequest, ApiError> {
        let filters = filters(ty);
        let allowed: Vec<&str> = COMMON.iter().copied().chain(filters.iter().map(|(p, _)| *p)).collect();
        let q = Query::parse(raw, &allowed)?;
        if ty == "subscription_item" && q.get("subscription").is_none() {
            return Err(ApiError::invalid(
                "Missing required param: subscription.".into(),
                Some("subscription"),
            ));
        }
        let expand = validate_expansions(ty, q.expand(), true)?;
        let limit = q.limit()?;
        let (cursor, backwards) = match (q.get("starting_after"), q.get("ending_before")) {
            (Some(_), Some(_)) => return Err(only_one_cursor()),
            (Some(after), None) => (Some((after.to_owned(), "starting_after")), false),
            (None, Some(before)) => (Some((before.to_owned(), "ending_before")), true),
            (None, None) => (None, false),
        };
        Ok(ListRequest {
            ty: ty.to_owned(),
            q,
            filters,
            expand,
            limit,
            cursor,
            backwards,
        })
    }

    /// The value of a scalar filter parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.q.get(name)
    }

    /// The `created` bounds as an inclusive range.
    pub fn created_range(&self) -> (i64, i64) {
        self.q
            .created
            .iter()
            .fold((i64::MIN, i64::MAX), |(lo, hi), (op, bound)| match op.as_str() {
                "gt" => (lo.max(bound.saturating_add(1)), hi),
                "gte" => (lo.max(*bound), hi),
                "lt" => (lo, hi.min(bound.saturating_sub(1))),
                "lte" => (lo, hi.min(*bound)),
                _ => (lo.max(*bound), hi.min(*bound)),
            })
    }

    /// Whether an object passes the `created` range and every filter.
    pub fn keep(&self, st: &State, obj: &Value) -> Result<bool, ApiError> {
        if !created_ok(obj, &self.q.created) {
            return Ok(false);
        }
        let mut keep = true;
        for (param, filter) in &self.filters {
            if let Some(value) = self.q.get(param) {
                keep &= matches(st, obj, param, filter, value)?;
            }
            if let Some(values) = self.q.arrays.get(*param) {
                let mut any = false;
                for value in values {
                    any |= matches(st, obj, param, filter, value)?;
                }
                keep &= any;
            }
        }
        if self.ty == "subscription" && self.q.get("status").is_none() {
            keep &= !subscription_status(st, obj, "ended");
        }
        Ok(keep)
    }
}

/// `GET /v1/<collection>`: newest first (created, then id, descending).
pub(crate) fn list(st: &State, ty: &str, url: &str, raw: Option<&str>) -> Result<Value, ApiError> {
    if let Some(answer) = st.generated().and_then(|g| g.list(st, ty, url, raw)) {
        return answer;
    }
    let req = ListRequest::parse(ty, raw)?;
    let from = match &req.cursor {
        Some((id, param)) => Some(st.raw(ty, id).ok_or_else(|| ApiError::no_such(400, ty, id, param))?),
        None => None,
    };
    // Walk the kept order from the cursor and stop one past the page (to
    // know `has_more`): a page costs its own size, not the collection's
    // (BENCHMARKS.md: sorting 100k objects per request dominated full runs).
    let mut picked = Vec::with_capacity(req.limit + 1);
    for obj in st.ordered(ty, from, req.backwards) {
        if req.keep(st, obj)? {
            picked.push(obj);
            if picked.len() > req.limit {
                break;
            }
        }
    }
    let has_more = picked.len() > req.limit;
    picked.truncate(req.limit);
    if req.backwards {
        picked.reverse();
    }
    let data = picked.iter().map(|obj| render_one(st, obj, &req.expand)).collect();
    Ok(list_value(data, has_more, url))
}

fn only_one_cursor() -> ApiError {
    ApiError::invalid(
        "You may only specify one of these parameters: ending_before, starting_after.".into(),
        Some("ending_before"),
    )
}

/// `GET /v1/checkout/sessions/{id}/line_items` and `GET /v1/invoices/{id}/lines`,
/// in the parent's order.
pub(crate) fn list_children(
    st: &State,
    parent_ty: &str,
    parent: &str,
    child_ty: &str,
    url: &str,
    raw: Option<&str>,
) -> Result<Value, ApiError> {
    if let Some(answer) = st
        .generated()
        .and_then(|g| g.list_children(st, parent_ty, parent, child_ty, url, raw))
    {
        return answer;
    }
    let q = Query::parse(raw, &["limit", "starting_after", "ending_before", "expand"])?;
    if st.raw(parent_ty, parent).is_none() {
        return Err(ApiError::no_such(404, parent_ty, parent, "id"));
    }
    let expand = validate_expansions(child_ty, q.expand(), true)?;
    let items = st.children_of(parent, child_ty);
    let cursor = |id: &str, param: &str| {
        items
            .iter()
            .position(|v| v["id"] == id)
            .map(|i| (i, i + 1))
            .ok_or_else(|| ApiError::no_such(400, child_ty, id, param))
    };
    page(st, &items, &q, cursor, &expand, url)
}

/// One page of an ordered list. `cursor(id)` is `(lo, hi)`: the items before the
/// cursor are `..lo`, the items after it `hi..`.
fn page(
    st: &State,
    items: &[&Value],
    q: &Query,
    cursor: impl Fn(&str, &str) -> Result<(usize, usize), ApiError>,
    expand: &[Vec<String>],
    url: &str,
) -> Result<Value, ApiError> {
    let limit = q.limit()?;
    let (slice, has_more) = match (q.get("starting_after"), q.get("ending_before")) {
        (Some(_), Some(_)) => return Err(only_one_cursor()),
        (Some(after), None) => {
            let rest = &items[cursor(after, "starting_after")?.1..];
            (&rest[..rest.len().min(limit)], rest.len() > limit)
        }
        (None, Some(before)) => {
            let head = &items[..cursor(before, "ending_before")?.0];
            (&head[head.len().saturating_sub(limit)..], head.len() > limit)
        }
        (None, None) => (&items[..items.len().min(limit)], items.len() > limit),
    };
    Ok(render_list(st, slice, has_more, expand, url))
}

/// A served list: each object rendered and expanded.
fn render_list(st: &State, slice: &[&Value], has_more: bool, expand: &[Vec<String>], url: &str) -> Value {
    let data = slice.iter().map(|obj| render_one(st, obj, expand)).collect();
    list_value(data, has_more, url)
}

/// One listed object as served: rendered, then each `data.` path expanded.
pub(crate) fn render_one(st: &State, obj: &Value, expand: &[Vec<String>]) -> Value {
    let mut v = st.render(obj);
    for path in expand {
        apply_expansion(st, &mut v, &path[1..]);
    }
    v
}

/// `GET /v1/<collection>/{id}`.
pub(crate) fn retrieve(st: &State, ty: &str, id: &str, raw: Option<&str>) -> Result<Value, ApiError> {
    if let Some(answer) = st.generated().and_then(|g| g.retrieve(st, ty, id, raw)) {
        return answer;
    }
    let q = Query::parse(raw, &["expand"])?;
    let expand = validate_expansions(ty, q.expand(), false)?;
    let obj = st.raw(ty, id).ok_or_else(|| ApiError::no_such(404, ty, id, "id"))?;
    let mut v = st.render(obj);
    for path in &expand {
        apply_expansion(st, &mut v, path);
    }
    Ok(v)
}

// ---- expansion -----------------------------------------------------------------

/// What a field of an object type leads to, for `expand[]`.
enum Link {
    /// An id that expands into the object.
    Id(&'static str),
    /// A list that is only present when expanded (`line_items`, `payments`).
    Includable(&'static str),
    /// An embedded object that can be walked into.
    Embedded(&'static str),
    /// An embedded list that can be walked into through `data`.
    EmbeddedList(&'static str),
}

fn link(ty: &str, field: &str) -> Option<Link> {
    use Link::*;
    Some(match (ty, field) {
        ("subscription" | "invoice" | "checkout.session" | "charge" | "payment_intent" | "invoiceitem", "customer") => {
            Id("customer")
        }
        ("subscription", "latest_invoice") | ("checkout.session" | "invoiceitem", "invoice") => Id("invoice"),
        ("subscription", "items") => EmbeddedList("subscription_item"),
        ("subscription_item" | "item", "price") => Embedded("price"),
        ("price", "product") => Id("product"),
        ("product", "default_price") => Id("price"),
        ("invoice", "lines") => EmbeddedList("line_item"),
        ("invoice", "payments") => Includable("invoice_payment"),
        ("checkout.session", "line_items") => Includable("item"),
        ("checkout.session", "subscription") => Id("subscription"),
        ("checkout.session" | "charge" | "refund" | "dispute", "payment_intent") => Id("payment_intent"),
        ("refund" | "dispute", "charge") | ("payment_intent", "latest_charge") => Id("charge"),
        ("charge", "refunds") => EmbeddedList("refund"),
        _ => return None,
    })
}

/// Checks every `expand[]` path against the object types, as Stripe does before
/// reading anything; list paths must start with `data.`.
fn validate_expansions(ty: &str, paths: &[String], in_list: bool) -> Result<Vec<Vec<String>>, ApiError> {
    paths
        .iter()
        .map(|path| {
            let segs: Vec<String> = path.split('.').map(str::to_owned).collect();
            let fields = if in_list {
                segs.strip_prefix(&["data".to_owned()]).unwrap_or(&[])
            } else {
                &segs[..]
            };
            if fields.is_empty() || !path_ok(ty, fields) {
                let message = format!("This property cannot be expanded ({path}).");
                return Err(ApiError::invalid(message, Some("expand")));
            }
            Ok(segs)
        })
        .collect()
}

fn path_ok(ty: &str, segs: &[String]) -> bool {
    let Some((field, rest)) = segs.split_first() else {
        return false;
    };
    let through_data = |t: &str| match rest.split_first() {
        Some((data, more)) if data == "data" => path_ok(t, more),
        _ => false,
    };
    match link(ty, field) {
        Some(Link::Id(t)) => rest.is_empty() || path_ok(t, rest),
        Some(Link::Includable(t)) => rest.is_empty() || through_data(t),
        Some(Link::Embedded(t)) => path_ok(t, rest),
        Some(Link::EmbeddedList(t)) => through_data(t),
        None => false,
    }
}

/// Expands one validated path (without the list's `data.`) in a served object.
fn apply_expansion(st: &State, v: &mut Value, segs: &[String]) {
    let Some((field, rest)) = segs.split_first() else {
        return;
    };
    let ty = v["object"].as_str().unwrap_or_default().to_owned();
    let walk_list = |list: &mut Value, rest: &[String]| {
        if let Some(items) = list["data"].as_array_mut() {
            for item in items {
                apply_expansion(st, item, rest.get(1..).unwrap_or(&[]));
            }
        }
    };
    match link(&ty, field) {
        Some(Link::Id(target)) => {
            if let Some(obj) = v[field.as_str()].as_str().and_then(|id| st.raw(target, id)) {
                v[field.as_str()] = st.render(obj);
            }
            if v[field.as_str()].is_object() {
                apply_expansion(st, &mut v[field.as_str()], rest);
            }
        }
        Some(Link::Includable(_)) => {
            let id = v["id"].as_str().unwrap_or_default().to_owned();
            let mut list = match field.as_str() {
                "line_items" => st.lines_list(&id, "item", format!("/v1/checkout/sessions/{id}/line_items")),
                _ => st.invoice_payments_list(&id),
            };
            walk_list(&mut list, rest);
            v[field.as_str()] = list;
        }
        Some(Link::Embedded(_)) => apply_expansion(st, &mut v[field.as_str()], rest),
        Some(Link::EmbeddedList(_)) => walk_list(&mut v[field.as_str()], rest),
        None => {}
    }
}
