//! The metadata writes of licensync's write-back: `POST` to a subscription
//! item, a payment intent or an invoice with `metadata[KEY]=VALUE` pairs,
//! merged as Stripe merges them, idempotent, permission-checked and recorded.

mod common;

use std::collections::BTreeMap;

use common::{get, try_get, try_post};
use fake_stripe::{
    CreatedInvoice, CreatedSubscription, FakeStripe, Fault, FaultKind, GeneratedAccount, InvoiceSpec, MetadataWrite,
    SubscriptionSpec,
};
use serde_json::{Value, json};

/// A customer with a monthly subscription and a paid one-off invoice: the
/// same steps make the same ids in every account.
fn purchases(fake: &FakeStripe) -> (CreatedSubscription, CreatedInvoice) {
    let customer = fake.create_customer(Some("ada@example.com"), None);
    let product = fake.create_product("Editor", &[]);
    let monthly = fake.create_price(&product, Some("month"), 900, &[]);
    let once = fake.create_price(&product, None, 4900, &[]);
    let sub = fake.create_subscription(SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly, 1)],
        ..SubscriptionSpec::default()
    });
    let invoice = fake.create_invoice(InvoiceSpec {
        customer,
        lines: vec![(once, 1)],
        ..InvoiceSpec::default()
    });
    (sub, invoice)
}

fn events_of(fake: &FakeStripe, ty: &str) -> Vec<Value> {
    fake.events().into_iter().filter(|e| e["type"] == ty).collect()
}

fn pairs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn error_message(reply: &common::Reply) -> &str {
    reply.body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn pairs_merge_into_the_metadata_and_an_empty_value_unsets_a_key() {
    let fake = FakeStripe::start().await;
    let (sub, _) = purchases(&fake);
    let item = &sub.item_ids[0];
    fake.update(item, |v| v["metadata"] = json!({"seat": "ops"}));
    let path = format!("/v1/subscription_items/{item}");

    let reply = try_post(&fake, &path, "metadata[license_key]=LK-1&metadata[note]=a+b%26c", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body["metadata"],
        json!({"seat": "ops", "license_key": "LK-1", "note": "a b&c"})
    );
    assert_eq!(
        reply.body,
        get(&fake, &path).await,
        "the answer is the object as GET serves it"
    );
    assert!(reply.body["price"].is_object() && reply.body["plan"].is_object());

    let reply = try_post(&fake, &path, "metadata[note]=", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["metadata"], json!({"seat": "ops", "license_key": "LK-1"}));
    assert_eq!(fake.get(item).unwrap()["metadata"], reply.body["metadata"]);
    let sub_items = &get(&fake, &format!("/v1/subscriptions/{}", sub.id)).await["items"]["data"];
    assert_eq!(
        sub_items[0]["metadata"], reply.body["metadata"],
        "the subscription embeds it"
    );

    assert_eq!(
        fake.metadata_writes(),
        vec![
            MetadataWrite {
                object: item.clone(),
                metadata: pairs(&[("license_key", "LK-1"), ("note", "a b&c")]),
                idempotency_key: None,
            },
            MetadataWrite {
                object: item.clone(),
                metadata: pairs(&[("note", "")]),
                idempotency_key: None,
            },
        ]
    );
    fake.clear_metadata_writes();
    assert!(fake.metadata_writes().is_empty());
}

#[tokio::test]
async fn a_write_records_its_event_once_and_a_no_op_records_none() {
    let fake = FakeStripe::start().await;
    let (sub, invoice) = purchases(&fake);
    let pi = invoice.payment_intent.clone().expect("a paid invoice has a payment");
    let targets = [
        (
            format!("/v1/subscription_items/{}", sub.item_ids[0]),
            "customer.subscription.updated",
        ),
        (format!("/v1/payment_intents/{pi}"), "payment_intent.updated"),
        (format!("/v1/invoices/{}", invoice.id), "invoice.updated"),
    ];
    for (path, event_type) in &targets {
        let before = events_of(&fake, event_type).len();
        let total = fake.events().len();
        let reply = try_post(&fake, path, "metadata[license_key]=LK-9", Some(&format!("key-{path}"))).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        let events = events_of(&fake, event_type);
        assert_eq!(events.len(), before + 1, "{path}: one {event_type}");
        assert_eq!(fake.events().len(), total + 1, "{path}: no other event");
        let event = events.last().unwrap();
        let object = &event["data"]["object"];
        let changed = if object["object"] == "subscription" {
            &object["items"]["data"][0]
        } else {
            object
        };
        assert_eq!(
            changed["metadata"]["license_key"], "LK-9",
            "{path}: the event shows the change"
        );
        assert_eq!(event["request"]["id"], reply.headers["request-id"].to_str().unwrap());
        assert_eq!(event["request"]["idempotency_key"], format!("key-{path}"));

        let again = try_post(&fake, path, "metadata[license_key]=LK-9", None).await;
        assert_eq!(again.status, 200, "a no-op still answers the object");
        assert_eq!(again.body["metadata"], reply.body["metadata"]);
        assert_eq!(fake.events().len(), total + 1, "{path}: a no-op records no event");
    }
    assert_eq!(fake.metadata_writes().len(), 6, "no-ops are accepted writes too");
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_changes_nothing() {
    let fake = FakeStripe::start().await;
    let (_, invoice) = purchases(&fake);
    let path = format!("/v1/invoices/{}", invoice.id);
    let first = try_post(&fake, &path, "metadata[license_key]=LK-1", Some("wb-1")).await;
    assert_eq!(first.status, 200);
    assert!(first.headers.get("idempotent-replayed").is_none());
    assert_eq!(first.headers["idempotency-key"], "wb-1");
    let events = fake.events().len();
    // Changed since, so that a replay shows the remembered answer, not the object now.
    fake.update(&invoice.id, |v| v["metadata"]["license_key"] = "changed".into());
    let events_after_update = fake.events().len();
    assert_eq!(events_after_update, events + 1);

    let replay = try_post(&fake, &path, "metadata[license_key]=LK-1", Some("wb-1")).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.text, first.text, "the same body");
    assert_eq!(fake.get(&invoice.id).unwrap()["metadata"]["license_key"], "changed");
    assert_eq!(fake.events().len(), events_after_update, "a replay records no event");
    assert_eq!(fake.metadata_writes().len(), 1, "a replay is not a second write");
    assert_eq!(fake.metadata_writes()[0].idempotency_key.as_deref(), Some("wb-1"));

    // A 4xx of the endpoint is remembered too.
    let missing = try_post(&fake, "/v1/invoices/in_nope", "metadata[a]=1", Some("wb-2")).await;
    assert_eq!(missing.status, 404);
    let replay = try_post(&fake, "/v1/invoices/in_nope", "metadata[a]=1", Some("wb-2")).await;
    assert_eq!((replay.status, replay.text.as_str()), (404, missing.text.as_str()));
    assert_eq!(replay.headers["idempotent-replayed"], "true");
}

#[tokio::test]
async fn an_idempotency_key_reused_for_another_request_is_an_idempotency_error() {
    let fake = FakeStripe::start().await;
    let (sub, invoice) = purchases(&fake);
    let path = format!("/v1/invoices/{}", invoice.id);
    assert_eq!(
        try_post(&fake, &path, "metadata[license_key]=LK-1", Some("wb-1"))
            .await
            .status,
        200
    );
    let events = fake.events().len();
    let other_path = format!("/v1/subscription_items/{}", sub.item_ids[0]);
    for (path, body) in [
        (&path, "metadata[license_key]=LK-2"),
        (&other_path, "metadata[license_key]=LK-1"),
    ] {
        let reply = try_post(&fake, path, body, Some("wb-1")).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.body["error"]["type"], "idempotency_error");
        assert_eq!(
            error_message(&reply),
            "Keys for idempotent requests can only be used with the same parameters they were first used with. \
             Try using a key other than 'wb-1' if you meant to execute a different request."
        );
        assert!(reply.headers.get("idempotent-replayed").is_none());
    }
    assert_eq!(fake.get(&invoice.id).unwrap()["metadata"]["license_key"], "LK-1");
    assert!(fake.get(&sub.item_ids[0]).unwrap()["metadata"]["license_key"].is_null());
    assert_eq!(fake.events().len(), events);
    assert_eq!(fake.metadata_writes().len(), 1);
}

#[tokio::test]
async fn a_key_without_write_permission_is_refused_with_the_permission_it_needs() {
    let fake = FakeStripe::start().await;
    let (sub, invoice) = purchases(&fake);
    let pi = invoice.payment_intent.clone().unwrap();
    fake.deny_writes(true);
    let events = fake.events().len();
    let cases = [
        (
            format!("/v1/subscription_items/{}", sub.item_ids[0]),
            "rak_subscription_write",
        ),
        (format!("/v1/payment_intents/{pi}"), "rak_payment_intent_write"),
        (format!("/v1/invoices/{}", invoice.id), "rak_invoice_write"),
    ];
    for (path, permission) in &cases {
        let reply = try_post(&fake, path, "metadata[license_key]=LK-1", Some("wb-denied")).await;
        assert_eq!(reply.status, 403, "{}", reply.text);
        assert_eq!(reply.body["error"]["type"], "invalid_request_error");
        assert_eq!(
            error_message(&reply),
            format!(
                "The provided key 'sk_test_***********6789' does not have the required permissions for this \
                 endpoint on account 'acct_1Fake00000000001'. Having the '{permission}' permission would allow \
                 this request to continue."
            )
        );
        assert!(!reply.text.contains(&fake.api_key()), "the key is masked");
        assert_eq!(try_get(&fake, path).await.status, 200, "reads are still served");
    }
    assert_eq!(fake.events().len(), events);
    assert!(fake.metadata_writes().is_empty());

    fake.deny_writes(false);
    let (path, _) = &cases[2];
    let reply = try_post(&fake, path, "metadata[license_key]=LK-1", Some("wb-denied")).await;
    assert_eq!(reply.status, 200, "a refusal is not remembered: {}", reply.text);
    assert!(reply.headers.get("idempotent-replayed").is_none());
    assert_eq!(fake.metadata_writes().len(), 1);
}

#[tokio::test]
async fn metadata_over_stripes_limits_is_400_and_changes_nothing() {
    let fake = FakeStripe::start().await;
    let (_, invoice) = purchases(&fake);
    let pi = invoice.payment_intent.unwrap();
    let path = format!("/v1/payment_intents/{pi}");
    let existing: Vec<String> = (0..49).map(|i| format!("metadata[k{i:02}]=v")).collect();
    assert_eq!(try_post(&fake, &path, &existing.join("&"), None).await.status, 200);
    fake.clear_metadata_writes();
    let before = fake.get(&pi).unwrap();
    let events = fake.events().len();

    let long_value = "x".repeat(612);
    let long_key = "k".repeat(41);
    let cases = [
        (
            "metadata[k49]=v&metadata[k50]=v".to_owned(),
            "Invalid metadata: metadata can have up to 50 keys, but you have passed in 51 keys.".to_owned(),
        ),
        (
            format!("metadata[license_key]={long_value}"),
            format!(
                "Metadata values can have up to 500 characters, but you passed in a value that is 612 characters. \
                 Invalid value: {long_value}"
            ),
        ),
        (
            format!("metadata[k00]=&metadata[{long_key}]=v"),
            format!(
                "Metadata keys can have up to 40 characters, but you passed in a key that is 41 characters. \
                 Invalid key: {long_key}"
            ),
        ),
    ];
    for (body, message) in &cases {
        let reply = try_post(&fake, &path, body, None).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert_eq!(reply.body["error"]["type"], "invalid_request_error");
        assert_eq!(reply.body["error"]["param"], "metadata");
        assert_eq!(error_message(&reply), message);
    }
    assert_eq!(fake.get(&pi).unwrap(), before, "nothing changed");
    assert_eq!(fake.events().len(), events);
    assert!(fake.metadata_writes().is_empty());

    // Limits are checked on the merged metadata: unsetting one key makes room for another.
    let reply = try_post(&fake, &path, "metadata[k00]=&metadata[k49]=v&metadata[k50]=v", None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["metadata"].as_object().unwrap().len(), 50);
    let exactly = format!("metadata[k01]={}&metadata[{}]=v", "y".repeat(500), "z".repeat(40));
    let reply = try_post(&fake, &path, &exactly, None).await;
    assert_eq!(reply.status, 400, "51 keys again: {}", reply.text);
    let exactly = format!(
        "metadata[k01]={}&metadata[k02]=&metadata[{}]=v",
        "y".repeat(500),
        "z".repeat(40)
    );
    assert_eq!(
        try_post(&fake, &path, &exactly, None).await.status,
        200,
        "the limits are inclusive"
    );
}

#[tokio::test]
async fn an_unknown_id_is_404_and_an_unknown_parameter_400() {
    let fake = FakeStripe::start().await;
    let (sub, _) = purchases(&fake);
    let reply = try_post(&fake, "/v1/subscription_items/si_x", "metadata[a]=1", None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body["error"]["code"], "resource_missing");
    assert_eq!(error_message(&reply), "No such subscription_item: 'si_x'");
    // An id of another type is not one of this endpoint's.
    let reply = try_post(
        &fake,
        &format!("/v1/invoices/{}", sub.item_ids[0]),
        "metadata[a]=1",
        None,
    )
    .await;
    assert_eq!(reply.status, 404);

    let path = format!("/v1/subscription_items/{}", sub.item_ids[0]);
    let reply = try_post(&fake, &path, "metadata[a]=1&quantity=2", None).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["error"]["code"], "parameter_unknown");
    assert_eq!(error_message(&reply), "Received unknown parameter: quantity");
    assert!(fake.metadata_writes().is_empty());

    let reply = try_post(&fake, &format!("/v1/customers/{}", sub.id), "metadata[a]=1", None).await;
    assert_eq!(reply.status, 404, "no other object takes writes");
    assert!(error_message(&reply).contains("metadata writes"), "{}", reply.text);
}

#[tokio::test]
async fn a_write_with_stripe_account_lands_on_the_connected_account() {
    let platform = FakeStripe::start().await;
    let connected = platform.connect_account();
    let (platform_sub, _) = purchases(&platform);
    let (sub, _) = purchases(&connected);
    assert_eq!(sub.item_ids, platform_sub.item_ids, "the same ids in both accounts");
    let item = &sub.item_ids[0];
    let events = platform.events().len();

    let reply = try_post(
        &connected,
        &format!("/v1/subscription_items/{item}"),
        "metadata[license_key]=LK-C",
        Some("k"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(connected.get(item).unwrap()["metadata"]["license_key"], "LK-C");
    assert!(platform.get(item).unwrap()["metadata"]["license_key"].is_null());
    assert_eq!(connected.metadata_writes().len(), 1);
    assert!(platform.metadata_writes().is_empty());
    assert_eq!(events_of(&connected, "customer.subscription.updated").len(), 1);
    assert_eq!(platform.events().len(), events);
    let logged = connected.requests();
    assert_eq!(logged.last().map(|r| r.method.as_str()), Some("POST"));

    // Idempotency keys are per account: the platform's first use of `k` is its own.
    let reply = try_post(
        &platform,
        &format!("/v1/subscription_items/{item}"),
        "metadata[license_key]=LK-P",
        Some("k"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("idempotent-replayed").is_none());

    connected.deny_writes(true);
    let reply = try_post(
        &connected,
        &format!("/v1/subscription_items/{item}"),
        "metadata[x]=1",
        None,
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(error_message(&reply).contains(&format!("on account '{}'", connected.stripe_account_id())));
    let reply = try_post(
        &platform,
        &format!("/v1/subscription_items/{item}"),
        "metadata[x]=1",
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "the platform may still write");
}

#[tokio::test]
async fn a_generated_object_cannot_be_written() {
    let fake = FakeStripe::generated(GeneratedAccount::real_mix(20, 7)).await;
    let subs = get(&fake, "/v1/subscriptions?limit=1").await;
    let item = subs["data"][0]["items"]["data"][0]["id"].as_str().unwrap().to_owned();
    let invoice = subs["data"][0]["latest_invoice"].as_str().unwrap().to_owned();
    for path in [
        format!("/v1/subscription_items/{item}"),
        format!("/v1/invoices/{invoice}"),
    ] {
        let reply = try_post(&fake, &path, "metadata[license_key]=LK-1", None).await;
        assert_eq!(reply.status, 400, "{}", reply.text);
        assert!(
            error_message(&reply).contains("cannot update generated objects"),
            "{}",
            reply.text
        );
    }
    let reply = try_post(&fake, "/v1/subscription_items/si_00000099999999", "metadata[a]=1", None).await;
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert!(fake.metadata_writes().is_empty());
}

#[tokio::test]
async fn faults_answer_writes_as_they_answer_reads_and_are_not_remembered() {
    let fake = FakeStripe::start().await;
    let (_, invoice) = purchases(&fake);
    let path = format!("/v1/invoices/{}", invoice.id);
    fake.inject_fault(Fault {
        path_prefix: "/v1/invoices".into(),
        kind: FaultKind::ServerError(500),
        times: 1,
    });
    let failed = try_post(&fake, &path, "metadata[license_key]=LK-1", Some("wb-1")).await;
    assert_eq!(failed.status, 500);
    assert!(fake.get(&invoice.id).unwrap()["metadata"]["license_key"].is_null());
    assert!(fake.metadata_writes().is_empty());

    let retried = try_post(&fake, &path, "metadata[license_key]=LK-1", Some("wb-1")).await;
    assert_eq!(retried.status, 200, "the retry is applied: {}", retried.text);
    assert!(retried.headers.get("idempotent-replayed").is_none());
    assert_eq!(fake.metadata_writes().len(), 1);
    let statuses: Vec<(String, u16)> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == path)
        .map(|r| (r.method, r.status))
        .collect();
    assert_eq!(statuses, [("POST".to_owned(), 500), ("POST".to_owned(), 200)]);
}
