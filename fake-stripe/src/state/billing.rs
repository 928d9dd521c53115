//! Scenario steps for what is billed: invoices with their lines, payments and
//! invoice items, and subscriptions with their items and billing history.

use serde_json::{Value, json};

use super::{State, set, template};
use crate::wire::{DAY, id_of, list_value, str_of};
use crate::{CreatedInvoice, CreatedSubscription, InvoiceSpec, SubscriptionSpec};

/// One line to put on an invoice.
pub(super) struct LinePart {
    pub(super) price: String,
    pub(super) quantity: i64,
    pub(super) period: (i64, i64),
    pub(super) subscription_item: Option<String>,
}

/// A recurring price's billing period in seconds (month = 30 days, year = 365 days).
fn interval_secs(price: &Value) -> i64 {
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

impl State {
    // ---- invoices -------------------------------------------------------------

    /// Creates an invoice and its lines; a paid one gets a payment (or `payment_intent`).
    pub(super) fn build_invoice(
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
    pub(super) fn record_invoice_events(&mut self, id: &str) {
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
}
