//! The scenario step for Checkout Sessions: their line items and, in payment
//! mode, their payment and (on request) their invoice.

use serde_json::{Value, json};

use super::billing::LinePart;
use super::{State, set, template};
use crate::wire::{DAY, str_of};
use crate::{CheckoutSpec, CreatedSession};

impl State {
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
}
