//! Several accounts on one server: a Connect platform's connected accounts,
//! reached with the platform's key and `Stripe-Account`, and top-level
//! accounts with their own keys. Each account's objects, ids, events,
//! faults, rate limits and request log are its own.

mod common;

use common::{get, get_with_headers, ids, try_get};
use fake_stripe::{
    DEFAULT_API_KEY, DEFAULT_NOW, FakeStripe, Fault, FaultKind, GeneratedAccount, Latency, RateLimits, SubscriptionSpec,
};

/// GET with a key and a `Stripe-Account` header, whatever the handles say.
async fn get_as(fake: &FakeStripe, key: &str, account: Option<&str>, path: &str) -> common::Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(account) = account {
        headers.push(("stripe-account", account));
    }
    get_with_headers(&fake.base_url(), &headers, path).await.unwrap()
}

/// A customer with a monthly subscription: the same steps make the same ids in every account.
fn subscriber(fake: &FakeStripe, email: &str) -> (String, String) {
    let customer = fake.create_customer(Some(email), None);
    let product = fake.create_product("Editor", &[]);
    let price = fake.create_price(&product, Some("month"), 900, &[]);
    let sub = fake.create_subscription(SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(price, 1)],
        ..SubscriptionSpec::default()
    });
    (customer, sub.id)
}

fn fault(path_prefix: &str, kind: FaultKind, times: usize) -> Fault {
    Fault {
        path_prefix: path_prefix.into(),
        kind,
        times,
    }
}

const MASKED_DEFAULT_KEY: &str = "sk_test_***********6789";

#[tokio::test]
async fn handles_name_their_accounts_and_connected_ones_use_the_platform_key() {
    let platform = FakeStripe::start().await;
    let a = platform.connect_account();
    let b = platform.connect_account();
    assert_eq!(platform.stripe_account_id(), "acct_1Fake00000000001");
    assert_eq!(platform.account_id(), None, "the platform's key alone reaches it");
    assert_eq!(platform.platform_account_id(), None);
    assert_eq!(a.account_id().as_deref(), Some("acct_1Fake00000000002"));
    assert_eq!(a.account_id(), Some(a.stripe_account_id()));
    assert_eq!(b.stripe_account_id(), "acct_1Fake00000000003");
    assert_eq!(a.platform_account_id(), Some(platform.stripe_account_id()));
    assert_eq!(a.api_key(), DEFAULT_API_KEY, "Connect uses the platform's key");
    assert_eq!(a.base_url(), platform.base_url());
    assert!(!a.livemode());
    let listed: Vec<String> = platform
        .connected_accounts()
        .iter()
        .map(|c| c.stripe_account_id())
        .collect();
    assert_eq!(listed, [a.stripe_account_id(), b.stripe_account_id()]);
    assert!(a.connected_accounts().is_empty());
    // The latency is the server's; set through any handle, every account has it.
    a.set_latency(Some(Latency::ms(0, 1)));
    assert_eq!(platform.latency(), Some(Latency::ms(0, 1)));
}

#[tokio::test]
#[should_panic(expected = "only a platform (top-level) account has connected accounts")]
async fn a_connected_account_has_no_connected_accounts_of_its_own() {
    let platform = FakeStripe::start().await;
    platform.connect_account().connect_account();
}

#[tokio::test]
#[should_panic(expected = "already reaches an account")]
async fn each_added_account_needs_its_own_key() {
    let platform = FakeStripe::start().await;
    platform.add_account(DEFAULT_API_KEY);
}

#[tokio::test]
async fn objects_of_a_connected_account_are_invisible_to_the_platform_and_its_siblings() {
    let platform = FakeStripe::start().await;
    let a = platform.connect_account();
    let b = platform.connect_account();
    let platform_customer = platform.create_customer(Some("platform@example.com"), None);
    let product = a.create_product("Connected editor", &[]);
    let a_customer = a.create_customer(Some("a@example.com"), None);

    assert_eq!(
        ids(&get(&platform, "/v1/customers").await),
        [platform_customer.as_str()]
    );
    assert!(ids(&get(&platform, "/v1/products").await).is_empty());
    assert_eq!(ids(&get(&a, "/v1/customers").await), [a_customer.as_str()]);
    assert_eq!(ids(&get(&a, "/v1/products").await), [product.as_str()]);
    assert!(ids(&get(&b, "/v1/customers").await).is_empty());
    assert!(ids(&get(&b, "/v1/products").await).is_empty());

    let missing = try_get(&platform, &format!("/v1/products/{product}")).await;
    assert_eq!(missing.status, 404, "{}", missing.text);
    assert_eq!(missing.body["error"]["code"], "resource_missing");
    assert_eq!(try_get(&b, &format!("/v1/products/{product}")).await.status, 404);
    assert_eq!(
        get(&a, &format!("/v1/products/{product}")).await["name"],
        "Connected editor"
    );
    assert!(platform.get(&product).is_none() && b.get(&product).is_none());
    assert!(a.get(&product).is_some());
}

#[tokio::test]
async fn ids_coincide_across_accounts_and_each_serves_its_own_object() {
    let platform = FakeStripe::start().await;
    let connected = platform.connect_account();
    let (platform_customer, platform_sub) = subscriber(&platform, "platform@example.com");
    let (connected_customer, connected_sub) = subscriber(&connected, "connected@example.com");
    assert_eq!(platform_sub, connected_sub, "each account counts its ids from 1");
    assert_eq!(platform_customer, connected_customer);
    let path = format!("/v1/subscriptions/{platform_sub}?expand[]=customer");
    assert_eq!(get(&platform, &path).await["customer"]["email"], "platform@example.com");
    assert_eq!(
        get(&connected, &path).await["customer"]["email"],
        "connected@example.com"
    );
    // A change in one account leaves the other's object with the same id alone.
    connected.set_subscription_status(&connected_sub, "canceled");
    assert_eq!(get(&connected, &path).await["status"], "canceled");
    assert_eq!(get(&platform, &path).await["status"], "active");
}

#[tokio::test]
async fn seeded_and_generated_connected_accounts_serve_their_own_purchases() {
    let platform = FakeStripe::start().await;
    let seeded = platform.connect_account();
    let generated = platform.connect_account();
    seeded.seed_sample();
    generated.generate(GeneratedAccount::real_mix(100, 1));
    assert!(ids(&get(&platform, "/v1/subscriptions").await).is_empty());
    assert!(!ids(&get(&seeded, "/v1/subscriptions").await).is_empty());
    let page = get(&generated, "/v1/subscriptions?limit=100").await;
    assert_eq!(ids(&page).len(), 85);
    assert_eq!(generated.generated_summary().unwrap().subscriptions, 85);
    assert!(seeded.generated_summary().is_none() && platform.generated_summary().is_none());
}

#[tokio::test]
async fn events_are_per_account() {
    let platform = FakeStripe::start().await;
    let connected = platform.connect_account();
    platform.create_customer(Some("platform@example.com"), None);
    let (_, sub) = subscriber(&connected, "connected@example.com");
    connected.set_subscription_status(&sub, "canceled");

    let types = |events: &serde_json::Value| -> Vec<String> {
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    let platform_events = get(&platform, "/v1/events").await;
    assert_eq!(types(&platform_events), ["customer.created"]);
    assert_eq!(
        platform_events["data"][0]["data"]["object"]["email"],
        "platform@example.com"
    );
    let connected_types = types(&get(&connected, "/v1/events").await);
    assert!(
        connected_types.contains(&"customer.subscription.deleted".to_owned()),
        "{connected_types:?}"
    );
    assert!(connected_types.contains(&"customer.created".to_owned()));
    assert_eq!(platform.events().len(), 1);
    assert_eq!(connected.events().len(), connected_types.len());
    let filtered = get(&platform, "/v1/events?type=customer.subscription.*").await;
    assert!(ids(&filtered).is_empty());
}

#[tokio::test]
async fn the_clock_is_the_servers_and_moves_every_account() {
    let platform = FakeStripe::start().await;
    let connected = platform.connect_account();
    let brand = platform.add_account("sk_test_brand_two_000000");
    connected.advance(3_600);
    assert_eq!(platform.now(), DEFAULT_NOW + 3_600);
    assert_eq!(brand.now(), DEFAULT_NOW + 3_600);
    let customer = platform.create_customer(None, None);
    assert_eq!(platform.get(&customer).unwrap()["created"], DEFAULT_NOW + 3_600);
    brand.set_now(DEFAULT_NOW + 7 * 86_400);
    let later = connected.create_customer(None, None);
    assert_eq!(connected.get(&later).unwrap()["created"], DEFAULT_NOW + 7 * 86_400);
    assert_eq!(platform.now(), DEFAULT_NOW + 7 * 86_400);
}

#[tokio::test]
async fn a_stripe_account_header_the_key_cannot_reach_is_403_account_invalid() {
    let platform = FakeStripe::start().await;
    let connected = platform.connect_account();
    let brand = platform.add_account("sk_test_brand_two_000000");
    let brand_connected = brand.connect_account();
    let key = platform.api_key();

    for named in [
        "acct_1NoSuchAccount00".to_owned(),
        brand_connected.stripe_account_id(),
        brand.stripe_account_id(),
    ] {
        let reply = get_as(&platform, &key, Some(&named), "/v1/customers").await;
        assert_eq!(reply.status, 403, "{named}: {}", reply.text);
        let error = &reply.body["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], "account_invalid");
        assert_eq!(
            error["message"],
            format!(
                "The provided key '{MASKED_DEFAULT_KEY}' does not have access to account '{named}' \
                 (or that account does not exist). Application access may have been revoked."
            )
        );
        assert!(!reply.text.contains(&key), "the key is masked: {}", reply.text);
        assert!(reply.headers.contains_key("request-id"));
    }
    // A platform's own id in the header is the platform itself.
    let customer = platform.create_customer(Some("platform@example.com"), None);
    let own = get_as(&platform, &key, Some(&platform.stripe_account_id()), "/v1/customers").await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(ids(&own.body), [customer]);
    // The brand's key reaches its own connected account, not the platform's.
    assert_eq!(try_get(&brand_connected, "/v1/customers").await.status, 200);
    let foreign = get_as(
        &brand,
        &brand.api_key(),
        connected.account_id().as_deref(),
        "/v1/customers",
    )
    .await;
    assert_eq!(foreign.status, 403);
    assert!(
        foreign.body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The provided key 'sk_test_************0000' does not have access"),
        "{}",
        foreign.text
    );
}

#[tokio::test]
async fn an_added_account_answers_to_its_own_key_and_sees_only_its_objects() {
    let platform = FakeStripe::start().await;
    let brand = platform.add_account("sk_live_brand_two_000000");
    assert_eq!(brand.api_key(), "sk_live_brand_two_000000");
    assert_eq!(brand.account_id(), None, "its key alone reaches it");
    assert_eq!(brand.stripe_account_id(), "acct_1Fake00000000002");
    assert!(brand.livemode() && !platform.livemode(), "the mode follows each key");
    brand.seed_sample();
    let sessions = get(&brand, "/v1/checkout/sessions").await;
    assert!(ids(&sessions).iter().all(|id| id.starts_with("cs_live_")), "{sessions}");
    assert!(ids(&get(&platform, "/v1/checkout/sessions").await).is_empty());
    // Its own id in `Stripe-Account` is itself, with its own key.
    let own = get_as(
        &brand,
        &brand.api_key(),
        Some(&brand.stripe_account_id()),
        "/v1/checkout/sessions",
    )
    .await;
    assert_eq!(ids(&own.body), ids(&sessions));
    // The platform's key does not reach it.
    let via_platform = get_as(
        &platform,
        &platform.api_key(),
        Some(&brand.stripe_account_id()),
        "/v1/checkout/sessions",
    )
    .await;
    assert_eq!(via_platform.status, 403);
}

#[tokio::test]
async fn a_fault_injected_into_one_account_is_neither_seen_nor_consumed_by_another() {
    let platform = FakeStripe::start().await;
    let connected = platform.connect_account();
    let brand = platform.add_account("sk_test_brand_two_000000");
    platform.inject_fault(fault("/v1/customers", FaultKind::ServerError(500), 1));
    connected.inject_fault(fault("/v1/", FaultKind::ServerError(503), 2));

    assert_eq!(try_get(&brand, "/v1/customers").await.status, 200);
    assert_eq!(try_get(&connected, "/v1/customers").await.status, 503);
    assert_eq!(
        platform.faults_left(),
        1,
        "the connected account's request left it alone"
    );
    assert_eq!(try_get(&platform, "/v1/customers").await.status, 500);
    assert_eq!(try_get(&platform, "/v1/customers").await.status, 200);
    assert_eq!(connected.faults_left(), 1);
    assert_eq!(try_get(&connected, "/v1/invoices").await.status, 503);
    assert_eq!(try_get(&connected, "/v1/invoices").await.status, 200);
    assert_eq!(brand.faults_left(), 0);
}

#[tokio::test]
async fn rate_limits_are_per_account() {
    let platform = FakeStripe::start().await;
    let connected = platform.connect_account();
    connected.set_rate_limits(Some(RateLimits {
        per_endpoint_rps: 2,
        global_rps: 1000,
    }));
    let mut connected_codes = Vec::new();
    for _ in 0..6 {
        connected_codes.push(try_get(&connected, "/v1/customers").await.status);
        assert_eq!(try_get(&platform, "/v1/customers").await.status, 200);
    }
    let limited = connected_codes.iter().filter(|s| **s == 429).count();
    // A bucket of 2 refilling at 2/s; the 12 requests take far less than a second.
    assert!(limited >= 3, "{connected_codes:?}");
    assert_eq!(
        connected.rate_limited().get("/v1/customers").copied(),
        Some(limited as u64)
    );
    assert!(platform.rate_limited().is_empty());
    // The platform's own limits have their own buckets, full.
    platform.set_rate_limits(Some(RateLimits {
        per_endpoint_rps: 2,
        global_rps: 1000,
    }));
    assert_eq!(try_get(&platform, "/v1/customers").await.status, 200);
}

#[tokio::test]
async fn a_revoked_connection_answers_401_and_leaves_the_platform_and_siblings_alone() {
    let platform = FakeStripe::start().await;
    let revoked = platform.connect_account();
    let sibling = platform.connect_account();
    revoked.create_customer(None, None);
    assert_eq!(try_get(&revoked, "/v1/customers").await.status, 200);
    assert!(!revoked.revoked());
    revoked.revoke();
    assert!(revoked.revoked() && !platform.revoked());
    let reply = try_get(&revoked, "/v1/customers").await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    assert_eq!(
        reply.body,
        serde_json::json!({"error": {
            "type": "invalid_request_error",
            "message": format!(
                "The provided key '{MASKED_DEFAULT_KEY}' does not have access to account '{}' \
                 (or that account does not exist). Application access may have been revoked.",
                revoked.stripe_account_id()
            ),
        }})
    );
    assert_eq!(try_get(&platform, "/v1/customers").await.status, 200);
    assert_eq!(try_get(&sibling, "/v1/customers").await.status, 200);
    assert_eq!(revoked.get("cus_00000000000001").unwrap()["object"], "customer");
    let statuses: Vec<u16> = revoked.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401], "the refused request is the connected account's");
}

#[tokio::test]
async fn a_revoked_key_answers_401_invalid_api_key_for_it_and_its_connected_accounts() {
    let platform = FakeStripe::start().await;
    let brand = platform.add_account("sk_test_brand_two_12345678");
    let brand_connected = brand.connect_account();
    brand.revoke();
    for handle in [&brand, &brand_connected] {
        let reply = try_get(handle, "/v1/customers").await;
        assert_eq!(reply.status, 401, "{}", reply.text);
        assert_eq!(reply.body["error"]["type"], "invalid_request_error");
        assert_eq!(
            reply.body["error"]["message"],
            "Invalid API Key provided: sk_test_**************5678"
        );
    }
    assert_eq!(try_get(&platform, "/v1/customers").await.status, 200);
}

#[tokio::test]
async fn the_request_log_is_per_account_and_all_requests_has_every_one() {
    let platform = FakeStripe::start().await;
    let connected = platform.connect_account();
    let brand = platform.add_account("sk_test_brand_two_000000");
    try_get(&platform, "/v1/customers").await;
    try_get(&connected, "/v1/products").await;
    try_get(&brand, "/v1/prices").await;
    get_as(&platform, "sk_test_unknown_00000000", None, "/v1/invoices").await;
    get_as(
        &platform,
        &platform.api_key(),
        Some("acct_1NoSuchAccount00"),
        "/v1/events",
    )
    .await;
    try_get(&connected, "/v1/products/prod_nope").await;

    let summary = |log: Vec<fake_stripe::LoggedRequest>| -> Vec<(String, Option<String>, u16)> {
        log.into_iter().map(|r| (r.path, r.account, r.status)).collect()
    };
    let (p, c, b) = (
        Some(platform.stripe_account_id()),
        Some(connected.stripe_account_id()),
        Some(brand.stripe_account_id()),
    );
    assert_eq!(
        summary(platform.all_requests()),
        [
            ("/v1/customers".to_owned(), p.clone(), 200),
            ("/v1/products".to_owned(), c.clone(), 200),
            ("/v1/prices".to_owned(), b.clone(), 200),
            ("/v1/invoices".to_owned(), None, 401),
            ("/v1/events".to_owned(), p.clone(), 403),
            ("/v1/products/prod_nope".to_owned(), c.clone(), 404),
        ]
    );
    assert_eq!(summary(connected.all_requests()).len(), 6, "every handle sees them all");
    assert_eq!(
        summary(connected.requests()),
        [
            ("/v1/products".to_owned(), c.clone(), 200),
            ("/v1/products/prod_nope".to_owned(), c.clone(), 404),
        ]
    );
    assert_eq!(summary(brand.requests()), [("/v1/prices".to_owned(), b.clone(), 200)]);
    // The first account also has the requests whose key reached no account.
    assert_eq!(
        summary(platform.requests()),
        [
            ("/v1/customers".to_owned(), p.clone(), 200),
            ("/v1/invoices".to_owned(), None, 401),
            ("/v1/events".to_owned(), p.clone(), 403),
        ]
    );
    connected.clear_requests();
    assert!(connected.requests().is_empty());
    assert_eq!(platform.requests().len(), 3);
    assert_eq!(platform.all_requests().len(), 4);
    // Request ids are the server's: distinct across accounts.
    let first = try_get(&platform, "/v1/customers").await;
    let second = try_get(&connected, "/v1/customers").await;
    assert_ne!(first.headers["request-id"], second.headers["request-id"]);
}
