//! Subscriptions created with a history: one paid invoice per past billing
//! period, as an account that has billed for a while has them.

mod common;

use common::{get, ids};
use fake_stripe::{FakeStripe, SubscriptionSpec};
use serde_json::Value;

const DAY: i64 = 86_400;

#[tokio::test]
async fn each_past_period_has_its_paid_invoice_one_period_apart() {
    let fake = FakeStripe::start().await;
    let now = fake.now();
    let customer = fake.create_customer(Some("h@example.com"), Some("Hal"));
    let product = fake.create_product("P", &[("product_id", "p")]);
    let monthly = fake.create_price(&product, Some("month"), 700, &[]);
    let start = now - 5 * DAY;
    let sub = fake.create_subscription(SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly.clone(), 2)],
        current_period_start: Some(start),
        current_period_end: Some(start + 30 * DAY),
        past_periods: 3,
        ..SubscriptionSpec::default()
    });
    let began = start - 3 * 30 * DAY;

    let s = get(&fake, &format!("/v1/subscriptions/{}", sub.id)).await;
    assert_eq!(s["created"], began);
    assert_eq!(s["start_date"], began);
    assert_eq!(s["billing_cycle_anchor"], began);
    assert_eq!(s["latest_invoice"], sub.latest_invoice);
    let item = &s["items"]["data"][0];
    assert_eq!(item["current_period_start"], start, "the current period is the latest");
    assert_eq!(item["current_period_end"], start + 30 * DAY);
    assert_eq!(item["created"], began);

    let list = get(
        &fake,
        &format!("/v1/invoices?subscription={}&limit=100&expand[]=data.payments", sub.id),
    )
    .await;
    let invoices = list["data"].as_array().unwrap();
    assert_eq!(invoices.len(), 4, "three past periods and the current one");
    assert_eq!(ids(&list)[0], sub.latest_invoice, "newest first");
    let reasons: Vec<&str> = invoices.iter().map(|i| i["billing_reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            "subscription_cycle",
            "subscription_cycle",
            "subscription_cycle",
            "subscription_create"
        ]
    );
    for (k, inv) in invoices.iter().rev().enumerate() {
        let period_start = began + k as i64 * 30 * DAY;
        assert_eq!(inv["created"], period_start, "invoice {k} one period after the last");
        assert_eq!(inv["status"], "paid");
        assert_eq!(inv["amount_paid"], 1400);
        assert_eq!(inv["status_transitions"]["paid_at"], period_start);
        assert_eq!(inv["parent"]["subscription_details"]["subscription"], sub.id);
        let line = &inv["lines"]["data"][0];
        assert_eq!(line["period"]["start"], period_start);
        assert_eq!(line["period"]["end"], period_start + 30 * DAY);
        assert_eq!(
            line["parent"]["subscription_item_details"]["subscription_item"],
            sub.item_ids[0]
        );
        assert_eq!(line["quantity"], 2);
        // Paid as the existing invoices are: a payment intent with its charge.
        let payment = &inv["payments"]["data"][0];
        assert_eq!(payment["status"], "paid");
        let pi = payment["payment"]["payment_intent"].as_str().unwrap();
        let intent = get(&fake, &format!("/v1/payment_intents/{pi}?expand[]=latest_charge")).await;
        assert_eq!(intent["status"], "succeeded");
        assert_eq!(intent["created"], period_start);
        assert_eq!(intent["latest_charge"]["amount"], 1400);
        assert_eq!(intent["latest_charge"]["customer"], Value::from(customer.clone()));
    }
    // They are paid invoices of the account like any other.
    let paid = get(&fake, "/v1/invoices?status=paid&limit=100").await;
    assert_eq!(paid["data"].as_array().unwrap().len(), 4);
    assert_eq!(fake.now(), now, "the clock is back at now");
}

#[tokio::test]
async fn without_a_history_the_subscription_starts_now_with_one_invoice() {
    let fake = FakeStripe::start().await;
    let customer = fake.create_customer(None, None);
    let product = fake.create_product("P", &[]);
    let yearly = fake.create_price(&product, Some("year"), 9_000, &[]);
    let start = fake.now() - 10 * DAY;
    let sub = fake.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(yearly, 1)],
        current_period_start: Some(start),
        current_period_end: Some(start + 365 * DAY),
        ..SubscriptionSpec::default()
    });
    let s = get(&fake, &format!("/v1/subscriptions/{}", sub.id)).await;
    assert_eq!(s["created"], fake.now());
    assert_eq!(s["start_date"], start);
    let list = get(&fake, &format!("/v1/invoices?subscription={}", sub.id)).await;
    assert_eq!(ids(&list), [sub.latest_invoice]);
    assert_eq!(list["data"][0]["billing_reason"], "subscription_create");
}

#[tokio::test]
async fn yearly_histories_step_a_year_and_an_unpaid_latest_stays_open() {
    let fake = FakeStripe::start().await;
    let customer = fake.create_customer(None, None);
    let product = fake.create_product("P", &[]);
    let yearly = fake.create_price(&product, Some("year"), 9_000, &[]);
    let start = fake.now() - DAY;
    let sub = fake.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(yearly, 1)],
        status: Some("past_due".into()),
        current_period_start: Some(start),
        current_period_end: Some(start + 365 * DAY),
        latest_invoice_paid: Some(false),
        past_periods: 2,
        ..SubscriptionSpec::default()
    });
    let list = get(&fake, &format!("/v1/invoices?subscription={}", sub.id)).await;
    let created: Vec<i64> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["created"].as_i64().unwrap())
        .collect();
    assert_eq!(created, [start, start - 365 * DAY, start - 730 * DAY]);
    let statuses: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["open", "paid", "paid"]);
}
