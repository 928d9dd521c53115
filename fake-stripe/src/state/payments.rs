//! Scenario steps for customers, the catalog and money: customers, products,
//! prices, payment intents with their charges, refunds and disputes.

use serde_json::{Value, json};

use super::{State, metadata, set, template};
use crate::wire::{DAY, list_value, str_of};

impl State {
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

    pub(super) fn unit_amount(&self, price: &str) -> i64 {
        self.must("price", price)["unit_amount"].as_i64().unwrap_or(0)
    }

    // ---- payments -------------------------------------------------------------

    /// A payment intent, and its charge when it succeeded.
    pub(super) fn create_payment(
        &mut self,
        customer: Option<&str>,
        amount: i64,
        succeeded: bool,
    ) -> (String, Option<String>) {
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
    pub(super) fn succeed_payment(&mut self, pi: &str) -> String {
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
}
