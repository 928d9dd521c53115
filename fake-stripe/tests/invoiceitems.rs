//! `GET /v1/invoiceitems`: the invoice items behind the lines of one-off
//! invoices, listed as Stripe lists them (newest first, cursors, `created`
//! ranges, `invoice=`), so a reader can find one-off purchases without
//! paging every renewal invoice.

mod common;

use common::{get, ids, try_get};
use fake_stripe::{FakeStripe, InvoiceSpec, SubscriptionSpec};
use serde_json::Value;

const DAY: i64 = 86_400;

struct Account {
    fake: FakeStripe,
    customer: String,
    once: String,
    other_once: String,
    /// One-off invoices, oldest first, each with its line ids.
    invoices: Vec<(String, Vec<String>)>,
}

/// A subscription with a history and four one-off invoices a day apart,
/// the second with two lines.
async fn account() -> Account {
    let fake = FakeStripe::start().await;
    let customer = fake.create_customer(Some("o@example.com"), Some("Olga"));
    let product = fake.create_product("Pro", &[("product_id", "pro")]);
    let monthly = fake.create_price(&product, Some("month"), 1_000, &[]);
    let once = fake.create_price(&product, None, 5_000, &[]);
    let other = fake.create_product("Add-on", &[]);
    let other_once = fake.create_price(&other, None, 700, &[]);
    fake.create_subscription(SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly.clone(), 1)],
        current_period_start: Some(fake.now() - 2 * DAY),
        current_period_end: Some(fake.now() + 28 * DAY),
        past_periods: 4,
        ..SubscriptionSpec::default()
    });
    let mut invoices = Vec::new();
    for i in 0..4 {
        fake.advance(DAY);
        let lines = if i == 1 {
            vec![(once.clone(), 2), (other_once.clone(), 1)]
        } else {
            vec![(once.clone(), 1)]
        };
        let inv = fake.create_invoice(InvoiceSpec {
            customer: customer.clone(),
            lines,
            ..InvoiceSpec::default()
        });
        invoices.push((inv.id, inv.line_ids));
    }
    Account {
        fake,
        customer,
        once,
        other_once,
        invoices,
    }
}

/// The invoice item id behind an invoice line.
fn item_of(line: &str) -> String {
    format!("ii_{}", &line[3..])
}

#[tokio::test]
async fn one_item_per_one_off_line_newest_first_and_none_for_subscription_invoices() {
    let a = account().await;
    let list = get(&a.fake, "/v1/invoiceitems?limit=100").await;
    assert_eq!(list["url"], "/v1/invoiceitems");
    assert_eq!(list["has_more"], false);
    let data = list["data"].as_array().unwrap();
    assert_eq!(
        data.len(),
        5,
        "one per one-off line; the subscription's 5 invoices have none"
    );
    // Newest first: the newest invoice's item, then the two of the second
    // invoice (same second: id descending), then the oldest.
    let expected: Vec<String> = a
        .invoices
        .iter()
        .rev()
        .flat_map(|(_, lines)| lines.iter().rev().map(|l| item_of(l)))
        .collect();
    assert_eq!(ids(&list), expected);
    let (second, second_lines) = &a.invoices[1];
    let item = data.iter().find(|i| i["id"] == item_of(&second_lines[0])).unwrap();
    assert_eq!(item["object"], "invoiceitem");
    assert_eq!(item["invoice"], second.as_str());
    assert_eq!(item["customer"], a.customer.as_str());
    assert_eq!(item["quantity"], 2);
    assert_eq!(item["amount"], 10_000);
    assert_eq!(item["pricing"]["type"], "price_details");
    assert_eq!(item["pricing"]["price_details"]["price"], a.once.as_str());
    assert!(item["parent"].is_null(), "a one-off invoice's item has no parent");
    let invoice = get(&a.fake, &format!("/v1/invoices/{second}")).await;
    assert_eq!(item["date"], invoice["created"]);
    // The line points at the item, as Stripe's lines do.
    assert_eq!(
        invoice["lines"]["data"][0]["parent"]["invoice_item_details"]["invoice_item"],
        item["id"]
    );
    let other = data.iter().find(|i| i["id"] == item_of(&second_lines[1])).unwrap();
    assert_eq!(other["pricing"]["price_details"]["price"], a.other_once.as_str());
    // Retrieve by id.
    let one = get(&a.fake, &format!("/v1/invoiceitems/{}", item["id"].as_str().unwrap())).await;
    assert_eq!(&one, item);
    assert_eq!(try_get(&a.fake, "/v1/invoiceitems/ii_nope").await.status, 404);
}

#[tokio::test]
async fn invoice_items_page_with_cursors_both_ways() {
    let a = account().await;
    let all = ids(&get(&a.fake, "/v1/invoiceitems?limit=100").await);
    let first = get(&a.fake, "/v1/invoiceitems?limit=2").await;
    assert_eq!(ids(&first), all[0..2]);
    assert_eq!(first["has_more"], true);
    let next = get(&a.fake, &format!("/v1/invoiceitems?limit=2&starting_after={}", all[1])).await;
    assert_eq!(ids(&next), all[2..4]);
    assert_eq!(next["has_more"], true);
    let last = get(&a.fake, &format!("/v1/invoiceitems?limit=2&starting_after={}", all[3])).await;
    assert_eq!(ids(&last), all[4..5]);
    assert_eq!(last["has_more"], false);
    let back = get(&a.fake, &format!("/v1/invoiceitems?limit=2&ending_before={}", all[4])).await;
    assert_eq!(ids(&back), all[2..4]);
    assert_eq!(back["has_more"], true);
}

#[tokio::test]
async fn invoice_items_filter_by_invoice_customer_created_and_pending() {
    let a = account().await;
    let (second, lines) = &a.invoices[1];
    let of_second = get(&a.fake, &format!("/v1/invoiceitems?invoice={second}")).await;
    let mut expected: Vec<String> = lines.iter().map(|l| item_of(l)).collect();
    expected.reverse();
    assert_eq!(ids(&of_second), expected);
    let created = |inv: &str| {
        let a = &a;
        let inv = inv.to_owned();
        async move {
            get(&a.fake, &format!("/v1/invoices/{inv}")).await["created"]
                .as_i64()
                .unwrap()
        }
    };
    let (t1, t2) = (created(&a.invoices[1].0).await, created(&a.invoices[2].0).await);
    let window = get(&a.fake, &format!("/v1/invoiceitems?created[gte]={t1}&created[lt]={t2}")).await;
    assert_eq!(ids(&window), expected, "the second invoice's day only");
    let after = get(&a.fake, &format!("/v1/invoiceitems?created%5Bgt%5D={t1}")).await;
    assert_eq!(after["data"].as_array().unwrap().len(), 2);
    let up_to = get(&a.fake, &format!("/v1/invoiceitems?created[lte]={t1}")).await;
    assert_eq!(up_to["data"].as_array().unwrap().len(), 3);
    let mine = get(&a.fake, &format!("/v1/invoiceitems?customer={}&limit=100", a.customer)).await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 5);
    let pending = get(&a.fake, "/v1/invoiceitems?pending=true").await;
    assert_eq!(pending["data"], Value::Array(vec![]), "every item is on an invoice");
    let bad = try_get(&a.fake, "/v1/invoiceitems?subscription=sub_1").await;
    assert_eq!(bad.status, 400, "not a parameter of this list");
}

#[tokio::test]
async fn invoice_items_expand_their_invoice_and_customer() {
    let a = account().await;
    let list = get(
        &a.fake,
        "/v1/invoiceitems?limit=1&expand[]=data.invoice&expand[]=data.customer&expand[]=data.invoice.payments",
    )
    .await;
    let item = &list["data"][0];
    assert_eq!(item["invoice"]["id"], a.invoices[3].0.as_str());
    assert_eq!(item["invoice"]["status"], "paid");
    assert!(item["invoice"]["parent"].is_null());
    assert_eq!(item["customer"]["email"], "o@example.com");
    let pi = &item["invoice"]["payments"]["data"][0]["payment"]["payment_intent"];
    assert!(pi.as_str().unwrap().starts_with("pi_"));
    let bad = try_get(&a.fake, "/v1/invoiceitems?expand[]=data.price").await;
    assert_eq!(bad.status, 400);
}
