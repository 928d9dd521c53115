//! Fidelity: every object the fake serves has exactly the top-level fields of
//! Stripe's official example of its type in fixtures3.json.

mod common;

use std::collections::BTreeSet;

use common::get;
use fake_stripe::FakeStripe;
use serde_json::Value;

fn fixtures() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vendor/stripe-openapi/fixtures3.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the vendored fixtures3.json"))
        .expect("fixtures3.json is JSON")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn assert_shape(fixtures: &Value, ty: &str, obj: &Value, where_: &str) {
    let expected = keys(&fixtures["resources"][ty]);
    let got = keys(obj);
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{ty} from {where_}: missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(obj["object"], ty, "{where_} serves a {ty}");
}

/// A sample account plus a refund and a dispute, so every type exists.
async fn full_account() -> (FakeStripe, String) {
    let fake = FakeStripe::start().await;
    fake.seed_sample();
    let session = fake
        .events()
        .into_iter()
        .find(|e| e["type"] == "checkout.session.completed" && e["data"]["object"]["payment_intent"].is_string())
        .expect("the sample has a paid checkout");
    let pi = session["data"]["object"]["payment_intent"].as_str().unwrap().to_owned();
    fake.refund(&pi, Some(100));
    fake.dispute(&pi, "needs_response");
    (fake, pi)
}

#[tokio::test]
async fn every_retrieved_object_has_the_fields_of_stripes_example() {
    let fx = fixtures();
    let (fake, pi) = full_account().await;
    let sub = &get(&fake, "/v1/subscriptions?limit=1").await["data"][0];
    let session = &get(&fake, &format!("/v1/checkout/sessions?payment_intent={pi}")).await["data"][0];
    let charge_id = get(&fake, &format!("/v1/payment_intents/{pi}")).await["latest_charge"].clone();
    let refund = &get(&fake, "/v1/refunds").await["data"][0];
    let dispute = &get(&fake, "/v1/disputes").await["data"][0];
    let invoice_id = sub["latest_invoice"].as_str().unwrap();
    let one_off = &get(&fake, "/v1/invoices?limit=100").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["parent"].is_null())
        .expect("the sample has a one-off invoice")
        .clone();
    let cases = [
        (
            "product",
            format!(
                "/v1/products/{}",
                sub["items"]["data"][0]["price"]["product"].as_str().unwrap()
            ),
        ),
        (
            "price",
            format!(
                "/v1/prices/{}",
                sub["items"]["data"][0]["price"]["id"].as_str().unwrap()
            ),
        ),
        (
            "customer",
            format!("/v1/customers/{}", sub["customer"].as_str().unwrap()),
        ),
        (
            "subscription",
            format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
        ),
        (
            "subscription_item",
            format!(
                "/v1/subscription_items/{}",
                sub["items"]["data"][0]["id"].as_str().unwrap()
            ),
        ),
        ("invoice", format!("/v1/invoices/{invoice_id}")),
        ("invoice", format!("/v1/invoices/{}", one_off["id"].as_str().unwrap())),
        (
            "checkout.session",
            format!("/v1/checkout/sessions/{}", session["id"].as_str().unwrap()),
        ),
        ("charge", format!("/v1/charges/{}", charge_id.as_str().unwrap())),
        ("refund", format!("/v1/refunds/{}", refund["id"].as_str().unwrap())),
        ("dispute", format!("/v1/disputes/{}", dispute["id"].as_str().unwrap())),
        ("payment_intent", format!("/v1/payment_intents/{pi}")),
        (
            "event",
            format!("/v1/events/{}", fake.events()[0]["id"].as_str().unwrap()),
        ),
        (
            "invoiceitem",
            format!(
                "/v1/invoiceitems/{}",
                get(&fake, "/v1/invoiceitems?limit=1").await["data"][0]["id"]
                    .as_str()
                    .unwrap()
            ),
        ),
    ];
    for (ty, path) in &cases {
        assert_shape(&fx, ty, &get(&fake, path).await, path);
    }
    // Lines are served by their parents' line endpoints.
    for inv in [invoice_id, one_off["id"].as_str().unwrap()] {
        let path = format!("/v1/invoices/{inv}/lines");
        for line in get(&fake, &path).await["data"].as_array().unwrap() {
            assert_shape(&fx, "line_item", line, &path);
        }
    }
    let path = format!("/v1/checkout/sessions/{}/line_items", session["id"].as_str().unwrap());
    let lines = get(&fake, &path).await;
    assert!(!lines["data"].as_array().unwrap().is_empty());
    for line in lines["data"].as_array().unwrap() {
        assert_shape(&fx, "item", line, &path);
    }
}

#[tokio::test]
async fn every_listed_and_embedded_object_has_the_fields_of_stripes_example() {
    let fx = fixtures();
    let (fake, _) = full_account().await;
    let collections = [
        ("/v1/products", "product"),
        ("/v1/prices", "price"),
        ("/v1/customers", "customer"),
        ("/v1/subscriptions?status=all", "subscription"),
        ("/v1/checkout/sessions", "checkout.session"),
        ("/v1/invoices", "invoice"),
        ("/v1/invoiceitems", "invoiceitem"),
        ("/v1/refunds", "refund"),
        ("/v1/disputes", "dispute"),
        ("/v1/events", "event"),
    ];
    for (path, ty) in collections {
        let sep = if path.contains('?') { '&' } else { '?' };
        let list = get(&fake, &format!("{path}{sep}limit=100")).await;
        let data = list["data"].as_array().unwrap();
        assert!(!data.is_empty(), "{path} lists something");
        for obj in data {
            assert_shape(&fx, ty, obj, path);
            match ty {
                "subscription" => {
                    for item in obj["items"]["data"].as_array().unwrap() {
                        assert_shape(&fx, "subscription_item", item, "subscription.items");
                        assert_shape(&fx, "price", &item["price"], "subscription_item.price");
                    }
                }
                "invoice" => {
                    for line in obj["lines"]["data"].as_array().unwrap() {
                        assert_shape(&fx, "line_item", line, "invoice.lines");
                    }
                }
                "event" => {
                    let inner = &obj["data"]["object"];
                    assert_shape(&fx, inner["object"].as_str().unwrap(), inner, "event.data.object");
                }
                _ => {}
            }
        }
    }
    let sessions = get(&fake, "/v1/checkout/sessions?limit=100&expand[]=data.line_items").await;
    for session in sessions["data"].as_array().unwrap() {
        for item in session["line_items"]["data"].as_array().unwrap() {
            assert_shape(&fx, "item", item, "checkout.session.line_items");
            assert_shape(&fx, "price", &item["price"], "item.price");
        }
    }
}

#[tokio::test]
async fn lines_use_the_current_apis_parent_and_pricing_shapes() {
    let (fake, _) = full_account().await;
    let sub = &get(&fake, "/v1/subscriptions?limit=1&expand[]=data.latest_invoice").await["data"][0];
    let item = &sub["items"]["data"][0];
    let invoice = &sub["latest_invoice"];
    assert_eq!(invoice["parent"]["type"], "subscription_details");
    assert_eq!(invoice["parent"]["subscription_details"]["subscription"], sub["id"]);
    let line = &invoice["lines"]["data"][0];
    assert_eq!(line["parent"]["type"], "subscription_item_details");
    assert_eq!(
        line["parent"]["subscription_item_details"]["subscription_item"],
        item["id"]
    );
    assert_eq!(line["pricing"]["type"], "price_details");
    assert_eq!(line["pricing"]["price_details"]["price"], item["price"]["id"]);
    assert_eq!(line["pricing"]["price_details"]["product"], item["price"]["product"]);
    assert_eq!(line["period"]["start"], item["current_period_start"]);
    assert_eq!(line["period"]["end"], item["current_period_end"]);
    assert!(item["current_period_end"].as_i64().unwrap() > item["current_period_start"].as_i64().unwrap());
    // Fields that would mislead a reader are reset, not copied from the example.
    assert!(sub["pause_collection"].is_null());
    assert!(sub["ended_at"].is_null());
    assert!(sub["pending_update"].is_null());
    let customer = get(&fake, &format!("/v1/customers/{}", sub["customer"].as_str().unwrap())).await;
    assert!(customer["discount"].is_null());
}
