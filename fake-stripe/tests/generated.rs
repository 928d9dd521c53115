//! A generated account (purchases computed from their index) serves exactly
//! what a stored account loaded with the same purchases serves: every list
//! page, cursor, `created` range, filter, expansion, retrieval and sub-list,
//! compared as JSON over HTTP.

mod common;

use common::{get, ids, try_get};
use fake_stripe::{FakeStripe, GeneratedAccount};
use serde_json::Value;

const DAY: i64 = 86_400;

fn account() -> GeneratedAccount {
    GeneratedAccount {
        subscriptions: 150,
        sessions: 40,
        one_off_invoices: 6,
        max_past_periods: 12,
        seed: 42,
    }
}

async fn twins() -> (FakeStripe, FakeStripe) {
    let generated = FakeStripe::generated(account()).await;
    let stored = FakeStripe::start().await;
    stored.set_record_events(false);
    let summary = stored.load_generated(account());
    assert_eq!(generated.generated_summary(), Some(summary));
    (generated, stored)
}

/// Both answers, status and body, must be the same.
async fn same(generated: &FakeStripe, stored: &FakeStripe, path: &str) -> Value {
    let (g, s) = (try_get(generated, path).await, try_get(stored, path).await);
    assert_eq!(
        g.status, s.status,
        "GET {path}: generated {} / stored {}",
        g.text, s.text
    );
    if g.body != s.body {
        let (gd, sd) = (g.body["data"].as_array(), s.body["data"].as_array());
        if let (Some(gd), Some(sd)) = (gd, sd) {
            let gi: Vec<_> = gd.iter().map(|o| o["id"].clone()).collect();
            let si: Vec<_> = sd.iter().map(|o| o["id"].clone()).collect();
            assert_eq!(gi, si, "GET {path}: ids differ");
        }
        panic!("GET {path}: bodies differ:\ngenerated {}\nstored    {}", g.text, s.text);
    }
    g.body
}

/// Pages a list on both, `limit` at a time, to the end or `max_pages`; every page must agree.
async fn same_pages(
    generated: &FakeStripe,
    stored: &FakeStripe,
    path: &str,
    limit: usize,
    max_pages: usize,
) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page_path = match &after {
            Some(id) => format!("{path}{sep}limit={limit}&starting_after={id}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let page = same(generated, stored, &page_path).await;
        let data = page["data"].as_array().unwrap().clone();
        after = data.last().map(|o| o["id"].as_str().unwrap().to_owned());
        all.extend(data);
        if page["has_more"] != true || all.len() >= max_pages.saturating_mul(limit) {
            return all;
        }
    }
}

#[tokio::test]
async fn every_list_pages_the_same_with_the_readers_expansions() {
    let (g, s) = twins().await;
    let summary = g.generated_summary().unwrap();
    let lists = [
        ("/v1/products", 2),
        ("/v1/prices", 6),
        ("/v1/customers", summary.customers),
        (
            "/v1/subscriptions?status=all&expand[]=data.customer&expand[]=data.latest_invoice",
            summary.subscriptions,
        ),
        (
            "/v1/checkout/sessions?status=complete&expand[]=data.line_items&expand[]=data.customer",
            summary.sessions,
        ),
        (
            "/v1/invoices?status=paid&expand[]=data.customer&expand[]=data.payments",
            summary.invoices,
        ),
        ("/v1/invoiceitems?expand[]=data.invoice", summary.one_off_lines),
    ];
    let mut invoices = Vec::new();
    for (path, count) in lists {
        let all = same_pages(&g, &s, path, 100, usize::MAX).await;
        assert_eq!(all.len(), count, "{path}");
        if path.starts_with("/v1/invoices?") {
            invoices = all;
        }
    }
    // Small pages cross many purchases and streams of invoices (the whole
    // list was compared above).
    same_pages(&g, &s, "/v1/invoices", 11, 25).await;
    let reasons: std::collections::BTreeSet<&str> =
        invoices.iter().map(|i| i["billing_reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons.into_iter().collect::<Vec<_>>(),
        ["manual", "subscription_create", "subscription_cycle"]
    );
    // A real account's shape: most invoices are subscription history.
    assert!(summary.invoices > 5 * summary.subscriptions, "{summary:?}");
    assert!(summary.guest_sessions > 0 && summary.guest_sessions < summary.sessions);
}

#[tokio::test]
async fn created_ranges_and_backward_paging_agree() {
    let (g, s) = twins().await;
    let summary = g.generated_summary().unwrap();
    let (oldest, newest) = (summary.oldest, summary.newest);
    let third = (newest - oldest) / 3;
    for list in [
        "/v1/subscriptions",
        "/v1/invoices",
        "/v1/checkout/sessions",
        "/v1/customers",
        "/v1/invoiceitems",
    ] {
        for range in [
            format!("created[gte]={}&created[lt]={}", oldest + third, oldest + 2 * third),
            format!("created[gt]={}", newest - 40 * DAY),
            format!("created[lte]={}", oldest + third),
            format!("created={}", oldest),
            format!("created[gte]={}", newest + 1),
        ] {
            same_pages(&g, &s, &format!("{list}?{range}"), 13, 6).await;
        }
        // Back from the oldest, 9 at a time, to the front.
        let all = ids(&same(&g, &s, &format!("{list}?limit=100")).await);
        let mut before = all.last().cloned();
        while let Some(id) = before {
            let page = same(&g, &s, &format!("{list}?limit=9&ending_before={id}")).await;
            before = (page["has_more"] == true).then(|| ids(&page)[0].clone());
        }
    }
    // Back from the middle, inside a created range.
    let all = ids(&same(&g, &s, "/v1/invoices?limit=100").await);
    let mid = &all[50];
    same(
        &g,
        &s,
        &format!(
            "/v1/invoices?limit=20&ending_before={mid}&created[lte]={}",
            newest - 20 * DAY
        ),
    )
    .await;
}

#[tokio::test]
async fn filters_retrievals_and_sub_lists_agree() {
    let (g, s) = twins().await;
    let subs = same(&g, &s, "/v1/subscriptions?limit=100").await;
    let sub = subs["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["items"]["data"].as_array().unwrap().len() == 2)
        .expect("a subscription with two items")
        .clone();
    let sub_id = sub["id"].as_str().unwrap();
    let customer = sub["customer"].as_str().unwrap();
    let price = sub["items"]["data"][0]["price"]["id"].as_str().unwrap();
    let sessions = same(&g, &s, "/v1/checkout/sessions?limit=100").await;
    let session = &sessions["data"][0];
    let pi = session["payment_intent"].as_str().unwrap();
    let one_off = same(&g, &s, "/v1/invoiceitems?limit=1").await["data"][0]["invoice"]
        .as_str()
        .unwrap()
        .to_owned();
    let invoice = sub["latest_invoice"].as_str().unwrap();
    let item = sub["items"]["data"][0]["id"].as_str().unwrap();
    let email = same(&g, &s, &format!("/v1/customers/{customer}")).await["email"]
        .as_str()
        .unwrap()
        .to_owned();
    let paths = [
        format!("/v1/subscriptions?price={price}&limit=100"),
        format!("/v1/subscriptions?customer={customer}"),
        "/v1/subscriptions?status=canceled".to_owned(),
        "/v1/subscriptions?status=active&limit=3".to_owned(),
        "/v1/subscriptions?price=price_nope".to_owned(),
        format!("/v1/invoices?subscription={sub_id}&limit=100&expand[]=data.payments"),
        format!("/v1/invoices?customer={customer}&status=paid"),
        "/v1/invoices?status=open".to_owned(),
        format!("/v1/checkout/sessions?payment_intent={pi}"),
        "/v1/checkout/sessions?status=open".to_owned(),
        format!("/v1/invoiceitems?invoice={one_off}"),
        "/v1/invoiceitems?pending=true".to_owned(),
        "/v1/invoiceitems?invoice=in_nope".to_owned(),
        format!("/v1/customers?email={email}"),
        "/v1/customers?email=nobody@example.com".to_owned(),
        format!("/v1/subscription_items?subscription={sub_id}&limit=1"),
        format!("/v1/subscriptions/{sub_id}?expand[]=customer&expand[]=latest_invoice"),
        format!("/v1/subscription_items/{item}"),
        format!("/v1/invoices/{invoice}?expand[]=payments&expand[]=customer"),
        format!("/v1/invoices/{invoice}/lines?limit=1"),
        format!("/v1/invoices/{one_off}"),
        format!(
            "/v1/checkout/sessions/{}?expand[]=line_items&expand[]=customer",
            session["id"].as_str().unwrap()
        ),
        format!("/v1/checkout/sessions/{}/line_items", session["id"].as_str().unwrap()),
        format!("/v1/payment_intents/{pi}?expand[]=latest_charge"),
        format!("/v1/charges?payment_intent={pi}"),
        format!("/v1/customers/{customer}"),
        // Errors agree too.
        "/v1/subscriptions/sub_00010000000000".to_owned(),
        "/v1/invoices/in_99999999999999".to_owned(),
        "/v1/subscriptions?starting_after=sub_nope".to_owned(),
        format!("/v1/subscriptions?starting_after={invoice}"),
        "/v1/invoices?limit=101".to_owned(),
        "/v1/subscriptions?expand[]=data.nope".to_owned(),
        "/v1/refunds".to_owned(),
        "/v1/disputes".to_owned(),
    ];
    for path in &paths {
        same(&g, &s, path).await;
    }
    // Every listed invoice can be retrieved as listed.
    for inv in same_pages(&g, &s, "/v1/invoices", 100, 3).await.iter().step_by(17) {
        let got = get(&g, &format!("/v1/invoices/{}", inv["id"].as_str().unwrap())).await;
        assert_eq!(&got, inv);
    }
    // `get` reads generated objects too.
    assert_eq!(g.get(sub_id), s.get(sub_id));
}

#[tokio::test]
async fn unfiltered_payment_lists_are_refused_and_scenario_steps_that_store_panic() {
    let g = FakeStripe::generated(account()).await;
    let reply = try_get(&g, "/v1/payment_intents").await;
    assert_eq!(reply.status, 400);
    assert!(reply.text.contains("generated account"), "{}", reply.text);
    let steps = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        g.create_customer(Some("x@example.com"), None);
    }));
    assert!(steps.is_err(), "a generated account stores no purchases");
    // The catalog is stored as usual and can still change.
    let product = get(&g, "/v1/products?limit=1").await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    g.update(&product, |p| p["name"] = "Renamed".into());
    let subs = get(&g, "/v1/subscriptions?limit=100&expand[]=data.items.data.price.product").await;
    let served: Vec<&Value> = subs["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["items"]["data"].as_array().unwrap())
        .map(|i| &i["price"]["product"])
        .filter(|p| p["id"] == product.as_str())
        .collect();
    assert!(!served.is_empty());
    assert!(
        served.iter().all(|p| p["name"] == "Renamed"),
        "generated objects show the change"
    );
}
