//! Lists and retrieval over HTTP: order, cursors, filters, expansion, and the
//! errors Stripe gives for bad parameters.

mod common;

use common::{get, ids, try_get};
use fake_stripe::{CheckoutSpec, FakeStripe, InvoiceSpec, SubscriptionSpec};

async fn customers(n: usize) -> (FakeStripe, Vec<String>) {
    let fake = FakeStripe::start().await;
    let ids = (0..n)
        .map(|i| {
            fake.advance(10);
            fake.create_customer(Some(&format!("c{i}@example.com")), None)
        })
        .collect();
    (fake, ids)
}

#[tokio::test]
async fn lists_page_newest_first_with_starting_after_and_ending_before() {
    let (fake, mut made) = customers(5).await;
    made.reverse(); // newest first
    let first = get(&fake, "/v1/customers?limit=2").await;
    assert_eq!(ids(&first), made[0..2]);
    assert_eq!(first["has_more"], true);
    assert_eq!(first["url"], "/v1/customers");
    let second = get(&fake, &format!("/v1/customers?limit=2&starting_after={}", made[1])).await;
    assert_eq!(ids(&second), made[2..4]);
    assert_eq!(second["has_more"], true);
    let last = get(&fake, &format!("/v1/customers?limit=2&starting_after={}", made[3])).await;
    assert_eq!(ids(&last), made[4..5]);
    assert_eq!(last["has_more"], false);
    // Paging back: the two objects just before the cursor, still newest first.
    let back = get(&fake, &format!("/v1/customers?limit=2&ending_before={}", made[4])).await;
    assert_eq!(ids(&back), made[2..4]);
    assert_eq!(back["has_more"], true);
    let front = get(&fake, &format!("/v1/customers?limit=2&ending_before={}", made[2])).await;
    assert_eq!(ids(&front), made[0..2]);
    assert_eq!(front["has_more"], false);
    let all = get(&fake, "/v1/customers").await;
    assert_eq!(ids(&all), made);
    assert_eq!(all["has_more"], false);
}

#[tokio::test]
async fn objects_created_in_the_same_second_are_ordered_by_id_descending() {
    let fake = FakeStripe::start().await;
    let a = fake.create_customer(None, None);
    let b = fake.create_customer(None, None);
    assert_eq!(ids(&get(&fake, "/v1/customers").await), [b, a]);
}

#[tokio::test]
async fn limit_outside_1_to_100_and_both_cursors_are_rejected() {
    let (fake, made) = customers(1).await;
    for query in ["limit=0", "limit=101", "limit=ten"] {
        let reply = try_get(&fake, &format!("/v1/customers?{query}")).await;
        assert_eq!(reply.status, 400, "{query}");
        assert_eq!(reply.body["error"]["type"], "invalid_request_error");
        assert_eq!(reply.body["error"]["param"], "limit");
    }
    let both = format!("/v1/customers?starting_after={0}&ending_before={0}", made[0]);
    assert_eq!(try_get(&fake, &both).await.status, 400);
    let unknown = try_get(&fake, "/v1/customers?starting_after=cus_nope").await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.body["error"]["code"], "resource_missing");
}

#[tokio::test]
async fn unknown_parameters_are_rejected_like_stripe_does() {
    let fake = FakeStripe::start().await;
    let reply = try_get(&fake, "/v1/customers?colour=blue").await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["message"], "Received unknown parameter: colour");
    let reply = try_get(&fake, "/v1/subscription_items").await;
    assert_eq!(reply.status, 400, "subscription is required");
    assert_eq!(reply.body["error"]["param"], "subscription");
}

#[tokio::test]
async fn created_filters_bound_the_list_on_both_sides() {
    let (fake, made) = customers(4).await;
    let created: Vec<i64> = made
        .iter()
        .map(|id| fake.get(id).unwrap()["created"].as_i64().unwrap())
        .collect();
    let gte = get(&fake, &format!("/v1/customers?created[gte]={}", created[1])).await;
    assert_eq!(ids(&gte), [made[3].clone(), made[2].clone(), made[1].clone()]);
    let window = format!(
        "/v1/customers?created%5Bgt%5D={}&created%5Blte%5D={}",
        created[0], created[2]
    );
    assert_eq!(ids(&get(&fake, &window).await), [made[2].clone(), made[1].clone()]);
    let exact = get(&fake, &format!("/v1/customers?created={}", created[3])).await;
    assert_eq!(ids(&exact), [made[3].as_str()]);
}

async fn subscriptions_in_every_status() -> (FakeStripe, Vec<(String, &'static str)>) {
    let fake = FakeStripe::start().await;
    let customer = fake.create_customer(Some("s@example.com"), None);
    let product = fake.create_product("P", &[("product_id", "p")]);
    let price = fake.create_price(&product, Some("month"), 500, &[]);
    let mut subs = Vec::new();
    for status in [
        "active",
        "trialing",
        "past_due",
        "canceled",
        "incomplete_expired",
        "unpaid",
        "paused",
    ] {
        let sub = fake.create_subscription(SubscriptionSpec {
            customer: customer.clone(),
            items: vec![(price.clone(), 1)],
            status: Some(status.into()),
            ..SubscriptionSpec::default()
        });
        subs.push((sub.id, status));
    }
    (fake, subs)
}

#[tokio::test]
async fn subscription_lists_hide_ended_ones_unless_status_asks_for_them() {
    let (fake, subs) = subscriptions_in_every_status().await;
    let ids_with = |pred: &dyn Fn(&str) -> bool| -> Vec<String> {
        subs.iter()
            .rev()
            .filter(|(_, s)| pred(s))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let default = get(&fake, "/v1/subscriptions").await;
    assert_eq!(
        ids(&default),
        ids_with(&|s| s != "canceled" && s != "incomplete_expired")
    );
    let all = get(&fake, "/v1/subscriptions?status=all&limit=100").await;
    assert_eq!(ids(&all), ids_with(&|_| true));
    let canceled = get(&fake, "/v1/subscriptions?status=canceled").await;
    assert_eq!(ids(&canceled), ids_with(&|s| s == "canceled"));
    let past_due = get(&fake, "/v1/subscriptions?status=past_due").await;
    assert_eq!(ids(&past_due), ids_with(&|s| s == "past_due"));
}

#[tokio::test]
async fn products_prices_invoices_and_sessions_filter_by_their_parameters() {
    let fake = FakeStripe::start().await;
    let customer = fake.create_customer(Some("f@example.com"), None);
    let kept = fake.create_product("Kept", &[]);
    let archived = fake.create_product("Archived", &[]);
    fake.update(&archived, |p| p["active"] = false.into());
    let price = fake.create_price(&kept, None, 700, &[]);
    let other_price = fake.create_price(&archived, None, 800, &[]);
    assert_eq!(ids(&get(&fake, "/v1/products?active=true").await), [kept.as_str()]);
    assert_eq!(ids(&get(&fake, "/v1/products?active=false").await), [archived.as_str()]);
    assert_eq!(try_get(&fake, "/v1/products?active=maybe").await.status, 400);
    assert_eq!(
        ids(&get(&fake, &format!("/v1/prices?product={kept}")).await),
        [price.as_str()]
    );

    let paid = fake.create_invoice(InvoiceSpec {
        customer: customer.clone(),
        lines: vec![(price.clone(), 1)],
        ..InvoiceSpec::default()
    });
    let open = fake.create_invoice(InvoiceSpec {
        customer: customer.clone(),
        lines: vec![(other_price.clone(), 1)],
        status: Some("open".into()),
        ..InvoiceSpec::default()
    });
    assert_eq!(ids(&get(&fake, "/v1/invoices?status=paid").await), [paid.id.as_str()]);
    assert_eq!(ids(&get(&fake, "/v1/invoices?status=open").await), [open.id.as_str()]);

    let complete = fake.create_checkout_session(CheckoutSpec {
        customer: Some(customer.clone()),
        lines: vec![(price.clone(), 1)],
        ..CheckoutSpec::default()
    });
    let pending = fake.create_checkout_session(CheckoutSpec {
        customer: Some(customer.clone()),
        lines: vec![(price.clone(), 1)],
        status: Some("open".into()),
        payment_status: Some("unpaid".into()),
        ..CheckoutSpec::default()
    });
    assert_eq!(
        ids(&get(&fake, "/v1/checkout/sessions?status=complete").await),
        [complete.id.as_str()]
    );
    assert_eq!(
        ids(&get(&fake, "/v1/checkout/sessions?status=open").await),
        [pending.id.as_str()]
    );
    let by_pi = format!(
        "/v1/checkout/sessions?payment_intent={}",
        complete.payment_intent.clone().unwrap()
    );
    assert_eq!(ids(&get(&fake, &by_pi).await), [complete.id.as_str()]);
}

#[tokio::test]
async fn invoices_filter_by_subscription_through_their_parent() {
    let (fake, subs) = subscriptions_in_every_status().await;
    let (sub, _) = &subs[0];
    let latest = fake.get(sub).unwrap()["latest_invoice"].clone();
    let list = get(&fake, &format!("/v1/invoices?subscription={sub}")).await;
    assert_eq!(ids(&list), [latest.as_str().unwrap().to_owned()]);
}

async fn one_purchase() -> (FakeStripe, fake_stripe::CreatedSession) {
    let fake = FakeStripe::start().await;
    let customer = fake.create_customer(Some("buyer@example.com"), Some("Buyer"));
    let product = fake.create_product("Tool", &[("product_id", "tool")]);
    let price = fake.create_price(&product, None, 1000, &[]);
    let session = fake.create_checkout_session(CheckoutSpec {
        customer: Some(customer),
        lines: vec![(price, 3)],
        create_invoice: true,
        ..CheckoutSpec::default()
    });
    (fake, session)
}

#[tokio::test]
async fn expansions_appear_only_when_asked_for() {
    let (fake, session) = one_purchase().await;
    let plain = get(&fake, "/v1/checkout/sessions").await;
    let s = &plain["data"][0];
    assert!(
        s.get("line_items").is_none(),
        "line_items is includable, absent unless expanded"
    );
    assert!(s["customer"].is_string());
    assert!(s["payment_intent"].is_string());
    assert!(s["invoice"].is_string());

    let path = "/v1/checkout/sessions?expand[]=data.line_items&expand[]=data.customer\
                &expand[]=data.payment_intent&expand[]=data.invoice&expand[]=data.line_items.data.price.product";
    let expanded = get(&fake, path).await;
    let s = &expanded["data"][0];
    assert_eq!(s["line_items"]["object"], "list");
    assert_eq!(s["line_items"]["has_more"], false);
    assert_eq!(
        s["line_items"]["url"],
        format!("/v1/checkout/sessions/{}/line_items", session.id)
    );
    let item = &s["line_items"]["data"][0];
    assert_eq!(item["id"], session.line_ids[0].as_str());
    assert_eq!(item["quantity"], 3);
    assert_eq!(item["amount_total"], 3000);
    assert_eq!(item["price"]["product"]["object"], "product");
    assert_eq!(s["customer"]["email"], "buyer@example.com");
    assert_eq!(s["payment_intent"]["object"], "payment_intent");
    assert_eq!(s["invoice"]["object"], "invoice");

    // Retrieval takes paths without `data.`; indexed arrays work like `[]`.
    let one = get(
        &fake,
        &format!(
            "/v1/checkout/sessions/{}?expand[0]=line_items&expand[1]=customer",
            session.id
        ),
    )
    .await;
    assert_eq!(one["line_items"]["data"][0]["id"], session.line_ids[0].as_str());
    assert_eq!(one["customer"]["object"], "customer");
}

#[tokio::test]
async fn subscriptions_expand_customer_and_latest_invoice() {
    let (fake, subs) = subscriptions_in_every_status().await;
    let list = get(
        &fake,
        "/v1/subscriptions?limit=1&expand[]=data.customer&expand[]=data.latest_invoice",
    )
    .await;
    let sub = &list["data"][0];
    assert_eq!(sub["customer"]["object"], "customer");
    assert_eq!(sub["latest_invoice"]["object"], "invoice");
    let one = get(
        &fake,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", subs[0].0),
    )
    .await;
    assert_eq!(one["latest_invoice"]["lines"]["data"][0]["object"], "line_item");
    assert!(one["customer"].is_string());
}

#[tokio::test]
async fn refunds_expand_their_charge_and_paid_invoices_their_payments() {
    let (fake, session) = one_purchase().await;
    let pi = session.payment_intent.clone().unwrap();
    fake.refund(&pi, None);
    let refunds = get(&fake, "/v1/refunds?expand[]=data.charge").await;
    assert_eq!(refunds["data"][0]["charge"]["object"], "charge");
    assert_eq!(refunds["data"][0]["charge"]["payment_intent"], pi.as_str());
    let inv = session.invoice.unwrap();
    let invoice = get(&fake, &format!("/v1/invoices/{inv}?expand[]=payments")).await;
    assert_eq!(invoice["payments"]["data"][0]["payment"]["payment_intent"], pi.as_str());
    assert!(
        get(&fake, &format!("/v1/invoices/{inv}"))
            .await
            .get("payments")
            .is_none()
    );
}

#[tokio::test]
async fn unknown_expansions_are_a_400_in_stripes_envelope() {
    let (fake, session) = one_purchase().await;
    for path in [
        "/v1/checkout/sessions?expand[]=data.wings".to_owned(),
        "/v1/checkout/sessions?expand[]=line_items".to_owned(), // lists need `data.`
        format!("/v1/checkout/sessions/{}?expand[]=mode", session.id),
        "/v1/customers?expand[]=data.subscriptions".to_owned(),
    ] {
        let reply = try_get(&fake, &path).await;
        assert_eq!(reply.status, 400, "{path}");
        assert_eq!(reply.body["error"]["type"], "invalid_request_error");
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("This property cannot be expanded ("), "{message}");
    }
}

#[tokio::test]
async fn child_lists_page_lines_in_their_parents_order() {
    let fake = FakeStripe::start().await;
    let customer = fake.create_customer(None, None);
    let product = fake.create_product("Bulk", &[]);
    let prices: Vec<String> = (0..12)
        .map(|i| fake.create_price(&product, None, 100 + i, &[]))
        .collect();
    let invoice = fake.create_invoice(InvoiceSpec {
        customer,
        lines: prices.iter().map(|p| (p.clone(), 1)).collect(),
        ..InvoiceSpec::default()
    });
    let embedded = &fake.get(&invoice.id).unwrap()["lines"];
    assert_eq!(
        embedded["data"].as_array().unwrap().len(),
        10,
        "Stripe embeds ten lines"
    );
    assert_eq!(embedded["has_more"], true);
    let path = format!("/v1/invoices/{}/lines", invoice.id);
    let first = get(&fake, &format!("{path}?limit=5")).await;
    assert_eq!(ids(&first), invoice.line_ids[..5]);
    let rest = get(
        &fake,
        &format!("{path}?limit=100&starting_after={}", invoice.line_ids[4]),
    )
    .await;
    assert_eq!(ids(&rest), invoice.line_ids[5..]);
    assert_eq!(rest["has_more"], false);
    assert_eq!(try_get(&fake, "/v1/invoices/in_nope/lines").await.status, 404);
}

#[tokio::test]
async fn retrieving_a_missing_or_mistyped_id_is_resource_missing() {
    let (fake, session) = one_purchase().await;
    for path in [
        "/v1/customers/cus_nope".to_owned(),
        format!("/v1/customers/{}", session.id),
    ] {
        let reply = try_get(&fake, &path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.body["error"]["code"], "resource_missing");
    }
    let reply = try_get(&fake, "/v1/nothing_here").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn events_filter_by_type_wildcard_and_types_array() {
    let (fake, subs) = subscriptions_in_every_status().await;
    let created = get(&fake, "/v1/events?type=customer.subscription.created&limit=100").await;
    assert_eq!(created["data"].as_array().unwrap().len(), subs.len());
    let wildcard = get(&fake, "/v1/events?type=customer.subscription.*&limit=100").await;
    assert!(
        wildcard["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| { e["type"].as_str().unwrap().starts_with("customer.subscription.") })
    );
    let both = get(
        &fake,
        "/v1/events?types[]=customer.created&types[]=price.created&limit=100",
    )
    .await;
    let types: Vec<&str> = both["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["price.created", "customer.created"]);
}
