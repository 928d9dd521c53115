//! The generated account of `fake-stripe --purchases N`: a year of sales,
//! mostly subscriptions that are still current, each purchase its own
//! customer and its own date.

mod common;

use common::get;
use fake_stripe::FakeStripe;
use serde_json::Value;

const DAY: i64 = 86_400;

/// Every object of a list, paged as a client would.
async fn all(fake: &FakeStripe, path: &str) -> Vec<Value> {
    let mut objects = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let page_path = match &after {
            Some(id) => format!("{path}{sep}limit=100&starting_after={id}"),
            None => format!("{path}{sep}limit=100"),
        };
        let page = get(fake, &page_path).await;
        let data = page["data"].as_array().unwrap().clone();
        after = data.last().map(|o| o["id"].as_str().unwrap().to_owned());
        objects.extend(data);
        if page["has_more"] != true {
            return objects;
        }
    }
}

#[tokio::test]
async fn a_year_of_purchases_mostly_current_subscriptions_each_its_own_customer_and_date() {
    let fake = FakeStripe::start().await;
    let now = fake.now();
    fake.seed_purchases(200);

    let subscriptions = all(&fake, "/v1/subscriptions?status=all").await;
    let sessions = all(&fake, "/v1/checkout/sessions").await;
    assert_eq!(subscriptions.len() + sessions.len(), 200);
    assert_eq!(subscriptions.len(), 170, "85% subscriptions");
    for s in &subscriptions {
        assert_eq!(s["status"], "active");
        let item = &s["items"]["data"][0];
        let (start, end) = (
            item["current_period_start"].as_i64().unwrap(),
            item["current_period_end"].as_i64().unwrap(),
        );
        assert!(
            start <= now && now < end,
            "the period contains today: {start} {end} {now}"
        );
        assert!(s["created"].as_i64().unwrap() <= now);
    }
    let created: Vec<i64> = subscriptions
        .iter()
        .chain(&sessions)
        .map(|o| o["created"].as_i64().unwrap())
        .collect();
    let oldest = *created.iter().min().unwrap();
    assert!(
        oldest <= now - 360 * DAY && oldest >= now - 366 * DAY,
        "spread over a year: {oldest}"
    );
    assert!(created.iter().any(|c| *c >= now - 2 * DAY), "and up to today");
    let customers: std::collections::BTreeSet<&str> =
        subscriptions.iter().map(|s| s["customer"].as_str().unwrap()).collect();
    assert_eq!(customers.len(), subscriptions.len(), "each purchase its own customer");
    assert_eq!(fake.now(), now, "the clock is back at now");
}
