//! Scenario steps through the Rust API, observed over HTTP: renewals, status
//! changes, refunds, disputes, updates, and the events each records.

mod common;

use common::{get, ids};
use fake_stripe::{CheckoutSpec, DEFAULT_NOW, FakeStripe, SubscriptionSpec};
use serde_json::Value;

const DAY: i64 = 86_400;

struct Shop {
    fake: FakeStripe,
    customer: String,
    monthly: String,
    yearly: String,
    once: String,
}

async fn shop() -> Shop {
    let fake = FakeStripe::start().await;
    let customer = fake.create_customer(Some("ann@example.com"), Some("Ann"));
    let product = fake.create_product("Editor", &[("product_id", "editor"), ("hwid_limit", "2")]);
    let monthly = fake.create_price(&product, Some("month"), 900, &[]);
    let yearly = fake.create_price(&product, Some("year"), 9000, &[("hwid_limit", "4")]);
    let once = fake.create_price(&product, None, 5000, &[]);
    Shop {
        fake,
        customer,
        monthly,
        yearly,
        once,
    }
}

fn event_types(fake: &FakeStripe, since: usize) -> Vec<String> {
    fake.events()[since..]
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_clock_is_deterministic_and_stamps_created() {
    let s = shop().await;
    assert_eq!(s.fake.now(), DEFAULT_NOW);
    s.fake.advance(60);
    let later = s.fake.create_customer(None, None);
    assert_eq!(s.fake.get(&later).unwrap()["created"], DEFAULT_NOW + 60);
    s.fake.set_now(1_800_000_000);
    assert_eq!(s.fake.now(), 1_800_000_000);
}

#[tokio::test]
async fn a_new_subscription_has_item_periods_and_a_paid_latest_invoice() {
    let s = shop().await;
    let start = s.fake.now() - 5 * DAY;
    let sub = s.fake.create_subscription(SubscriptionSpec {
        customer: s.customer.clone(),
        items: vec![(s.monthly.clone(), 1), (s.yearly.clone(), 2)],
        current_period_start: Some(start),
        ..SubscriptionSpec::default()
    });
    let served = get(
        &s.fake,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", sub.id),
    )
    .await;
    assert_eq!(served["status"], "active");
    assert_eq!(ids(&served["items"]), sub.item_ids);
    let item = &served["items"]["data"][1];
    assert_eq!(item["current_period_start"], start);
    assert_eq!(item["current_period_end"], start + 30 * DAY);
    assert_eq!(item["quantity"], 2);
    assert_eq!(item["price"]["id"], s.yearly.as_str());
    assert_eq!(item["price"]["metadata"]["hwid_limit"], "4");
    let invoice = &served["latest_invoice"];
    assert_eq!(invoice["id"], sub.latest_invoice.as_str());
    assert_eq!(invoice["status"], "paid");
    assert_eq!(invoice["amount_paid"], 900 + 2 * 9000);
    assert_eq!(
        invoice["lines"]["data"][1]["parent"]["subscription_item_details"]["subscription_item"],
        sub.item_ids[1].as_str()
    );
    let items = get(&s.fake, &format!("/v1/subscription_items?subscription={}", sub.id)).await;
    assert_eq!(ids(&items), [sub.item_ids[1].clone(), sub.item_ids[0].clone()]);
}

#[tokio::test]
async fn renewal_moves_each_item_period_by_its_interval_and_replaces_the_latest_invoice() {
    let s = shop().await;
    let start = s.fake.now();
    let sub = s.fake.create_subscription(SubscriptionSpec {
        customer: s.customer.clone(),
        items: vec![(s.monthly.clone(), 1), (s.yearly.clone(), 1)],
        current_period_start: Some(start),
        current_period_end: Some(start + 10 * DAY),
        ..SubscriptionSpec::default()
    });
    let before = s.fake.events().len();
    s.fake.renew_subscription(&sub.id, true);
    let renewed = get(
        &s.fake,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", sub.id),
    )
    .await;
    let items = &renewed["items"]["data"];
    assert_eq!(items[0]["current_period_start"], start + 10 * DAY);
    assert_eq!(items[0]["current_period_end"], start + 40 * DAY);
    assert_eq!(items[1]["current_period_end"], start + 10 * DAY + 365 * DAY);
    assert_eq!(renewed["status"], "active");
    let invoice = &renewed["latest_invoice"];
    assert_ne!(invoice["id"], sub.latest_invoice.as_str());
    assert_eq!(invoice["status"], "paid");
    assert_eq!(invoice["billing_reason"], "subscription_cycle");
    assert_eq!(invoice["lines"]["data"][0]["period"]["end"], start + 40 * DAY);
    assert_eq!(
        event_types(&s.fake, before),
        ["invoice.created", "invoice.paid", "customer.subscription.updated"]
    );

    let before = s.fake.events().len();
    s.fake.renew_subscription(&sub.id, false);
    let failed = get(
        &s.fake,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", sub.id),
    )
    .await;
    assert_eq!(failed["status"], "past_due");
    assert_eq!(failed["latest_invoice"]["status"], "open");
    assert_eq!(failed["latest_invoice"]["amount_paid"], 0);
    assert_eq!(failed["items"]["data"][0]["current_period_start"], start + 40 * DAY);
    assert_eq!(
        event_types(&s.fake, before),
        [
            "invoice.created",
            "invoice.payment_failed",
            "customer.subscription.updated"
        ]
    );
    // The first invoice is still there, paid, for its own period.
    let first = get(&s.fake, &format!("/v1/invoices/{}", sub.latest_invoice)).await;
    assert_eq!(first["lines"]["data"][0]["period"]["end"], start + 10 * DAY);
}

#[tokio::test]
async fn cancelling_sets_ended_at_and_records_deleted() {
    let s = shop().await;
    let sub = s.fake.create_subscription(SubscriptionSpec {
        customer: s.customer.clone(),
        items: vec![(s.monthly.clone(), 1)],
        ..SubscriptionSpec::default()
    });
    s.fake.advance(3 * DAY);
    let before = s.fake.events().len();
    s.fake.set_subscription_status(&sub.id, "canceled");
    let canceled = get(&s.fake, &format!("/v1/subscriptions/{}", sub.id)).await;
    assert_eq!(canceled["status"], "canceled");
    assert_eq!(canceled["ended_at"], s.fake.now());
    assert_eq!(canceled["canceled_at"], s.fake.now());
    assert_eq!(
        event_types(&s.fake, before),
        ["customer.subscription.updated", "customer.subscription.deleted"]
    );
    let deleted = s.fake.events().last().unwrap().clone();
    assert_eq!(deleted["data"]["object"]["status"], "canceled");
    assert_eq!(deleted["created"], s.fake.now());
}

#[tokio::test]
async fn pausing_and_resuming_record_their_events() {
    let s = shop().await;
    let sub = s.fake.create_subscription(SubscriptionSpec {
        customer: s.customer.clone(),
        items: vec![(s.monthly.clone(), 1)],
        ..SubscriptionSpec::default()
    });
    let before = s.fake.events().len();
    s.fake.set_subscription_status(&sub.id, "paused");
    s.fake.set_subscription_status(&sub.id, "active");
    assert_eq!(
        event_types(&s.fake, before),
        [
            "customer.subscription.updated",
            "customer.subscription.paused",
            "customer.subscription.updated",
            "customer.subscription.resumed"
        ]
    );
}

#[tokio::test]
async fn cancel_at_period_end_also_sets_cancel_at_like_stripe() {
    let s = shop().await;
    let sub = s.fake.create_subscription(SubscriptionSpec {
        customer: s.customer.clone(),
        items: vec![(s.monthly.clone(), 1)],
        cancel_at_period_end: true,
        ..SubscriptionSpec::default()
    });
    let served = s.fake.get(&sub.id).unwrap();
    assert_eq!(served["cancel_at_period_end"], true);
    assert_eq!(served["cancel_at"], served["items"]["data"][0]["current_period_end"]);
    assert!(served["ended_at"].is_null());
}

#[tokio::test]
async fn a_one_time_checkout_has_a_paid_payment_intent_and_charge() {
    let s = shop().await;
    let before = s.fake.events().len();
    let session = s.fake.create_checkout_session(CheckoutSpec {
        customer: Some(s.customer.clone()),
        lines: vec![(s.once.clone(), 3)],
        ..CheckoutSpec::default()
    });
    assert_eq!(event_types(&s.fake, before), ["checkout.session.completed"]);
    let served = get(
        &s.fake,
        &format!("/v1/checkout/sessions/{}?expand[]=payment_intent", session.id),
    )
    .await;
    assert_eq!(served["mode"], "payment");
    assert_eq!(served["status"], "complete");
    assert_eq!(served["payment_status"], "paid");
    assert_eq!(served["amount_total"], 15_000);
    assert_eq!(served["customer_details"]["email"], "ann@example.com");
    assert!(served["invoice"].is_null());
    let pi = &served["payment_intent"];
    assert_eq!(pi["status"], "succeeded");
    let charge = get(
        &s.fake,
        &format!("/v1/charges/{}", pi["latest_charge"].as_str().unwrap()),
    )
    .await;
    assert_eq!(charge["payment_intent"], pi["id"]);
    assert_eq!(charge["amount"], 15_000);
    assert_eq!(charge["refunded"], false);
}

#[tokio::test]
async fn a_session_paid_later_records_async_payment_succeeded_and_gets_its_charge() {
    let s = shop().await;
    let session = s.fake.create_checkout_session(CheckoutSpec {
        customer_email: Some("guest@example.com".into()),
        lines: vec![(s.once.clone(), 1)],
        payment_status: Some("unpaid".into()),
        ..CheckoutSpec::default()
    });
    let pi = session.payment_intent.clone().unwrap();
    assert!(s.fake.get(&pi).unwrap()["latest_charge"].is_null());
    let served = s.fake.get(&session.id).unwrap();
    assert_eq!(served["customer_details"]["email"], "guest@example.com");
    assert!(served["customer"].is_null());
    let before = s.fake.events().len();
    s.fake.update(&session.id, |cs| cs["payment_status"] = "paid".into());
    assert_eq!(
        event_types(&s.fake, before),
        ["checkout.session.updated", "checkout.session.async_payment_succeeded"]
    );
    assert_eq!(s.fake.get(&pi).unwrap()["status"], "succeeded");
    assert!(s.fake.get(&pi).unwrap()["latest_charge"].is_string());
}

#[tokio::test]
async fn a_session_invoice_is_paid_by_the_sessions_own_payment() {
    let s = shop().await;
    let session = s.fake.create_checkout_session(CheckoutSpec {
        customer: Some(s.customer.clone()),
        lines: vec![(s.once.clone(), 1)],
        create_invoice: true,
        ..CheckoutSpec::default()
    });
    let invoice = get(
        &s.fake,
        &format!("/v1/invoices/{}?expand[]=payments", session.invoice.clone().unwrap()),
    )
    .await;
    assert_eq!(invoice["status"], "paid");
    assert!(
        invoice["parent"].is_null(),
        "a checkout invoice belongs to no subscription"
    );
    assert_eq!(
        invoice["payments"]["data"][0]["payment"]["payment_intent"],
        session.payment_intent.clone().unwrap().as_str()
    );
    let intents = s.fake.events().iter().filter(|e| e["type"] == "invoice.paid").count();
    assert_eq!(intents, 1);
}

#[tokio::test]
async fn a_subscription_mode_session_points_at_its_subscription_and_first_invoice() {
    let s = shop().await;
    let sub = s.fake.create_subscription(SubscriptionSpec {
        customer: s.customer.clone(),
        items: vec![(s.monthly.clone(), 2)],
        ..SubscriptionSpec::default()
    });
    let session = s.fake.create_checkout_session(CheckoutSpec {
        customer: Some(s.customer.clone()),
        mode: Some("subscription".into()),
        subscription: Some(sub.id.clone()),
        ..CheckoutSpec::default()
    });
    assert_eq!(session.payment_intent, None);
    assert_eq!(session.invoice.as_deref(), Some(sub.latest_invoice.as_str()));
    let served = get(&s.fake, &format!("/v1/checkout/sessions/{}/line_items", session.id)).await;
    assert_eq!(served["data"][0]["quantity"], 2);
    assert_eq!(served["data"][0]["price"]["id"], s.monthly.as_str());
}

#[tokio::test]
async fn partial_then_full_refunds_keep_the_charge_consistent() {
    let s = shop().await;
    let session = s.fake.create_checkout_session(CheckoutSpec {
        customer: Some(s.customer.clone()),
        lines: vec![(s.once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    let pi = session.payment_intent.unwrap();
    let before = s.fake.events().len();
    let partial = s.fake.refund(&pi, Some(1000));
    let charge_id = s.fake.get(&pi).unwrap()["latest_charge"].as_str().unwrap().to_owned();
    let charge = get(&s.fake, &format!("/v1/charges/{charge_id}")).await;
    assert_eq!(charge["amount_refunded"], 1000);
    assert_eq!(charge["refunded"], false);
    let rest = s.fake.refund(&pi, None);
    let charge = get(&s.fake, &format!("/v1/charges/{charge_id}")).await;
    assert_eq!(charge["amount_refunded"], 5000);
    assert_eq!(charge["refunded"], true);
    assert_eq!(ids(&charge["refunds"]), [rest.clone(), partial.clone()]);
    let refunds = get(&s.fake, &format!("/v1/refunds?payment_intent={pi}")).await;
    assert_eq!(ids(&refunds), [rest.clone(), partial]);
    let last = &refunds["data"][0];
    assert_eq!(last["amount"], 4000);
    assert_eq!(last["charge"], charge_id.as_str());
    assert_eq!(last["status"], "succeeded");
    assert_eq!(
        event_types(&s.fake, before),
        ["charge.refunded", "refund.created", "charge.refunded", "refund.created"]
    );
    let refunded: &Value = &s.fake.events()[before + 2]["data"]["object"];
    assert_eq!(refunded["refunded"], true);
}

#[tokio::test]
async fn a_dispute_moves_through_its_statuses_on_one_object() {
    let s = shop().await;
    let session = s.fake.create_checkout_session(CheckoutSpec {
        customer: Some(s.customer.clone()),
        lines: vec![(s.once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    let pi = session.payment_intent.unwrap();
    let before = s.fake.events().len();
    let opened = s.fake.dispute(&pi, "needs_response");
    let lost = s.fake.dispute(&pi, "lost");
    assert_eq!(opened, lost, "a charge has one dispute");
    let disputes = get(&s.fake, &format!("/v1/disputes?payment_intent={pi}")).await;
    assert_eq!(ids(&disputes), [lost.as_str()]);
    assert_eq!(disputes["data"][0]["status"], "lost");
    let charge = s.fake.get(disputes["data"][0]["charge"].as_str().unwrap()).unwrap();
    assert_eq!(charge["disputed"], true);
    assert_eq!(
        event_types(&s.fake, before),
        [
            "charge.dispute.created",
            "charge.dispute.updated",
            "charge.dispute.closed"
        ]
    );
}

#[tokio::test]
async fn a_price_change_shows_in_every_subscription_item_and_records_price_updated() {
    let s = shop().await;
    let sub = s.fake.create_subscription(SubscriptionSpec {
        customer: s.customer.clone(),
        items: vec![(s.monthly.clone(), 1)],
        ..SubscriptionSpec::default()
    });
    let before = s.fake.events().len();
    s.fake.update(&s.monthly, |p| p["metadata"]["hwid_limit"] = "9".into());
    assert_eq!(event_types(&s.fake, before), ["price.updated"]);
    let served = get(&s.fake, &format!("/v1/subscriptions/{}", sub.id)).await;
    assert_eq!(served["items"]["data"][0]["price"]["metadata"]["hwid_limit"], "9");
    assert_eq!(served["items"]["data"][0]["plan"]["metadata"]["hwid_limit"], "9");
}

#[tokio::test]
async fn an_in_place_upgrade_through_the_subscription_keeps_the_item_id() {
    let s = shop().await;
    let sub = s.fake.create_subscription(SubscriptionSpec {
        customer: s.customer.clone(),
        items: vec![(s.monthly.clone(), 1)],
        ..SubscriptionSpec::default()
    });
    let yearly = s.fake.get(&s.yearly).unwrap();
    s.fake.update(&sub.id, |sub| sub["items"]["data"][0]["price"] = yearly);
    let item = get(&s.fake, &format!("/v1/subscription_items/{}", sub.item_ids[0])).await;
    assert_eq!(item["price"]["id"], s.yearly.as_str());
    assert_eq!(item["id"], sub.item_ids[0].as_str());
    let event = s.fake.events().last().unwrap().clone();
    assert_eq!(event["type"], "customer.subscription.updated");
    assert_eq!(
        event["data"]["object"]["items"]["data"][0]["price"]["id"],
        s.yearly.as_str()
    );
}

#[tokio::test]
async fn events_are_served_newest_first_and_recorded_oldest_first() {
    let s = shop().await;
    let recorded: Vec<String> = s
        .fake
        .events()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let types = event_types(&s.fake, 0);
    assert_eq!(
        types,
        [
            "customer.created",
            "product.created",
            "price.created",
            "price.created",
            "price.created"
        ]
    );
    let mut served = ids(&get(&s.fake, "/v1/events").await);
    served.reverse();
    assert_eq!(served, recorded);
    let one = get(&s.fake, &format!("/v1/events/{}", recorded[0])).await;
    assert_eq!(one["data"]["object"]["email"], "ann@example.com");
}

#[tokio::test]
async fn the_sample_account_covers_every_grant_kind_and_status() {
    let fake = FakeStripe::start().await;
    fake.seed_sample();
    let products = get(&fake, "/v1/products").await;
    let licensed: Vec<&Value> = products["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["product_id"].is_string())
        .collect();
    assert_eq!(licensed.len(), 3);
    assert!(licensed.iter().any(|p| p["metadata"]["expiration_days"] == "30"));
    assert_eq!(
        products["data"].as_array().unwrap().len(),
        4,
        "one product is not licensed"
    );
    let subs = get(&fake, "/v1/subscriptions?status=all").await;
    let mut statuses: Vec<&str> = subs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    statuses.sort();
    assert_eq!(statuses, ["active", "active", "canceled", "past_due", "trialing"]);
    let sessions = get(&fake, "/v1/checkout/sessions?expand[]=data.line_items").await;
    let paid: Vec<&Value> = sessions["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["payment_status"] == "paid")
        .collect();
    assert!(paid.len() >= 2);
    assert!(paid.iter().any(|s| {
        let lines = s["line_items"]["data"].as_array().unwrap();
        lines.len() == 2 && lines.iter().any(|l| l["quantity"] == 3)
    }));
    let one_off = get(&fake, "/v1/invoices?status=paid&limit=100").await;
    let session_invoices: Vec<&Value> = sessions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["invoice"])
        .collect();
    assert!(
        one_off["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["parent"].is_null() && !session_invoices.contains(&&i["id"]))
    );
}

#[tokio::test]
async fn a_bulk_load_with_events_off_records_none_and_serves_the_same_objects() {
    let s = shop().await;
    let before = s.fake.events().len();
    s.fake.set_record_events(false);
    let quiet = s.fake.create_subscription(SubscriptionSpec {
        customer: s.customer.clone(),
        items: vec![(s.monthly.clone(), 1)],
        ..SubscriptionSpec::default()
    });
    s.fake.create_checkout_session(CheckoutSpec {
        customer: Some(s.customer.clone()),
        lines: vec![(s.once.clone(), 1)],
        ..CheckoutSpec::default()
    });
    assert_eq!(s.fake.events().len(), before);
    let listed = get(&s.fake, "/v1/subscriptions?status=all").await;
    assert_eq!(ids(&listed), std::slice::from_ref(&quiet.id));
    s.fake.set_record_events(true);
    s.fake.set_subscription_status(&quiet.id, "canceled");
    assert!(event_types(&s.fake, before).contains(&"customer.subscription.deleted".to_owned()));
}
