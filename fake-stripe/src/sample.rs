//! The sample account of the quick start: a catalog with licensed products
//! (metadata per licensing-rules §2), an unlicensed one, customers, and
//! purchases covering each grant kind and the statuses the reconciler handles.

use crate::state::State;
use crate::wire::DAY;
use crate::{CheckoutSpec, InvoiceSpec, SubscriptionSpec};

impl State {
    pub fn seed_sample(&mut self) {
        let editor = self.create_product(
            "Acme Editor",
            &[("product_id", "acme-editor"), ("hwid_limit", "3"), ("ip_limit", "5")],
        );
        let editor_monthly = self.create_price(&editor, Some("month"), 900, &[]);
        // Yearly buyers get more seats: price metadata overrides the product's.
        let editor_yearly = self.create_price(&editor, Some("year"), 9_000, &[("hwid_limit", "5")]);

        let suite = self.create_product(
            "Acme Pro Suite",
            &[
                ("product_id", "acme-pro,acme-cli"),
                ("hwid_limit", "10"),
                ("ip_limit", "0"),
            ],
        );
        let suite_monthly = self.create_price(&suite, Some("month"), 2_900, &[]);
        let suite_once = self.create_price(&suite, None, 29_900, &[]);

        let pass = self.create_product(
            "Acme 30-day Pass",
            &[
                ("product_id", "acme-pass"),
                ("hwid_limit", "1"),
                ("expiration_days", "30"),
            ],
        );
        let pass_once = self.create_price(&pass, None, 1_500, &[]);

        let shirt = self.create_product("Acme T-shirt", &[]);
        let shirt_once = self.create_price(&shirt, None, 2_500, &[]);

        let alice = self.create_customer(Some("alice@example.com"), Some("Alice Example"));
        let bob = self.create_customer(Some("bob@example.com"), Some("Bob Example"));
        let carol = self.create_customer(Some("carol@example.com"), Some("Carol Example"));
        let dave = self.create_customer(Some("dave@example.com"), None);
        let erin = self.create_customer(Some("erin@example.com"), Some("Erin Example"));

        let sub = |customer: &str, items: Vec<(&str, i64)>| SubscriptionSpec {
            customer: customer.to_owned(),
            items: items.into_iter().map(|(p, q)| (p.to_owned(), q)).collect(),
            ..SubscriptionSpec::default()
        };
        self.create_subscription(sub(&alice, vec![(&editor_monthly, 1)]));
        self.create_subscription(SubscriptionSpec {
            status: Some("trialing".into()),
            trial_end: Some(self.now + 14 * DAY),
            ..sub(&bob, vec![(&editor_yearly, 1)])
        });
        self.create_subscription(SubscriptionSpec {
            status: Some("past_due".into()),
            current_period_start: Some(self.now - 3 * DAY),
            current_period_end: Some(self.now + 27 * DAY),
            latest_invoice_paid: Some(false),
            ..sub(&carol, vec![(&suite_monthly, 1)])
        });
        let canceled = self.create_subscription(sub(&dave, vec![(&editor_monthly, 1)]));
        self.set_subscription_status(&canceled.id, "canceled");
        self.create_subscription(SubscriptionSpec {
            cancel_at_period_end: true,
            ..sub(&erin, vec![(&editor_monthly, 1), (&suite_monthly, 2)])
        });

        let lines = |l: Vec<(&str, i64)>| l.into_iter().map(|(p, q)| (p.to_owned(), q)).collect();
        self.create_checkout_session(CheckoutSpec {
            customer: Some(erin.clone()),
            lines: lines(vec![(&pass_once, 1)]),
            ..CheckoutSpec::default()
        });
        self.create_checkout_session(CheckoutSpec {
            customer: Some(bob.clone()),
            lines: lines(vec![(&suite_once, 3), (&shirt_once, 1)]),
            create_invoice: true,
            ..CheckoutSpec::default()
        });
        // A guest checkout paid by bank debit: complete, not yet paid.
        self.create_checkout_session(CheckoutSpec {
            customer_email: Some("frank@example.com".into()),
            lines: lines(vec![(&pass_once, 1)]),
            payment_status: Some("unpaid".into()),
            ..CheckoutSpec::default()
        });
        self.create_invoice(InvoiceSpec {
            customer: dave,
            lines: lines(vec![(&suite_once, 1)]),
            ..InvoiceSpec::default()
        });
    }

    /// The sample catalog and `n` more purchases spread over the past year,
    /// as an account that has sold for a while looks: about 85% monthly or
    /// yearly subscriptions (still current), the rest paid one-time
    /// checkouts, each with its own customer and its purchase date. For
    /// trying a first import (`--mail-since`) on a realistic scale.
    pub fn seed_purchases(&mut self, n: usize) {
        let wall = self.now;
        let editor = self.create_product(
            "Acme Editor",
            &[("product_id", "acme-editor"), ("hwid_limit", "3"), ("ip_limit", "5")],
        );
        let editor_monthly = self.create_price(&editor, Some("month"), 900, &[]);
        let editor_yearly = self.create_price(&editor, Some("year"), 9_000, &[("hwid_limit", "5")]);
        let suite = self.create_product(
            "Acme Pro Suite",
            &[("product_id", "acme-pro,acme-cli"), ("hwid_limit", "10")],
        );
        let suite_once = self.create_price(&suite, None, 29_900, &[]);
        for i in 0..n {
            // Purchase dates step back through the year, newest last.
            let age_days = ((n - i) as i64 * 365) / n.max(1) as i64;
            let bought = wall - age_days * DAY;
            self.now = bought;
            let customer = self.create_customer(
                Some(&format!("customer{i}@example.com")),
                Some(&format!("Customer {i}")),
            );
            if i % 20 < 17 {
                let yearly = i % 4 == 0;
                let length = if yearly { 365 } else { 30 };
                // The period that contains today.
                let start = bought + ((wall - bought) / (length * DAY)) * length * DAY;
                self.create_subscription(SubscriptionSpec {
                    customer,
                    items: vec![(
                        if yearly {
                            editor_yearly.clone()
                        } else {
                            editor_monthly.clone()
                        },
                        1 + (i % 3) as i64,
                    )],
                    current_period_start: Some(start),
                    current_period_end: Some(start + length * DAY),
                    ..SubscriptionSpec::default()
                });
            } else {
                self.create_checkout_session(CheckoutSpec {
                    customer: Some(customer),
                    lines: vec![(suite_once.clone(), 1)],
                    ..CheckoutSpec::default()
                });
            }
        }
        self.now = wall;
    }
}
