//! The Stripe source against the fake Stripe: every fact is read through
//! async-stripe's types from objects built like Stripe's own examples, with
//! the request log proving paging, expansions and the absence of
//! per-object requests.

use std::time::Duration;

use chrono::DateTime;
use fake_stripe::{CheckoutSpec, FakeStripe, Fault, FaultKind, InvoiceSpec, Options, SubscriptionSpec};
use licensync::domain::{
    GrantFact, GrantKey, OneTimeLineFact, ReversalKind, SubscriptionItemFact, SubscriptionStatus, Timestamp,
};
use licensync::stripe::{ApiKey, CreatedRange, GrantPage, StripeConfig, StripeError, StripeSource};

fn config(fake: &FakeStripe) -> StripeConfig {
    let mut config = StripeConfig::new(ApiKey::parse(&fake.api_key()).unwrap());
    config.base_url = fake.base_url();
    config.rps = Some(1000);
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    config
}

fn source(fake: &FakeStripe) -> StripeSource {
    StripeSource::new(config(fake)).unwrap()
}

fn at(secs: i64) -> Timestamp {
    DateTime::from_timestamp(secs, 0).unwrap()
}

fn subscription_facts(page: &GrantPage) -> Vec<&SubscriptionItemFact> {
    page.grants
        .iter()
        .map(|g| match g {
            GrantFact::Subscription(s) => s,
            other => panic!("expected a subscription item, got {other:?}"),
        })
        .collect()
}

fn one_time_facts(page: &GrantPage) -> Vec<&OneTimeLineFact> {
    page.grants
        .iter()
        .map(|g| match g {
            GrantFact::OneTime(o) => o,
            other => panic!("expected a one-time line, got {other:?}"),
        })
        .collect()
}

/// A licensed product with one recurring and one one-time price.
fn catalog(fake: &FakeStripe) -> (String, String, String) {
    let product = fake.create_product("Pro", &[("product_id", "pro")]);
    let monthly = fake.create_price(&product, Some("month"), 1000, &[]);
    let once = fake.create_price(&product, None, 5000, &[]);
    (product, monthly, once)
}

#[tokio::test]
async fn two_hundred_fifty_subscriptions_take_three_list_requests_and_nothing_per_object() {
    let fake = FakeStripe::start().await;
    let (product, monthly, _) = catalog(&fake);
    let customer = fake.create_customer(Some("ann@example.com"), Some("Ann"));
    for _ in 0..250 {
        fake.create_subscription(SubscriptionSpec {
            customer: customer.clone(),
            items: vec![(monthly.clone(), 1)],
            ..Default::default()
        });
    }
    let source = source(&fake);
    fake.clear_requests();

    let mut after: Option<String> = None;
    let mut facts = Vec::new();
    let mut pages = 0;
    loop {
        let page = source
            .subscriptions_page(after.as_deref(), &CreatedRange::default())
            .await
            .unwrap();
        pages += 1;
        facts.extend(subscription_facts(&page).into_iter().cloned());
        assert_eq!(page.complete_subscriptions.len(), page.grants.len());
        after = page.next;
        if after.is_none() {
            break;
        }
    }

    assert_eq!(pages, 3);
    assert_eq!(facts.len(), 250);
    let mut ids: Vec<_> = facts.iter().map(|f| f.item_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 250, "no item twice, none missed");
    let log = fake.requests();
    assert_eq!(source.requests(), 3);
    assert_eq!(log.len(), 3, "{log:#?}");
    for request in &log {
        assert_eq!(request.path, "/v1/subscriptions");
        let query = request.query.replace("%5B", "[").replace("%5D", "]");
        assert!(query.contains("limit=100"), "{query}");
        assert!(query.contains("status=all"), "{query}");
        assert!(query.contains("=data.customer"), "{query}");
        assert!(query.contains("=data.latest_invoice"), "{query}");
    }
    let fact = &facts[0];
    assert_eq!(
        fact.customer.email.as_deref(),
        Some("ann@example.com"),
        "from the expanded customer"
    );
    assert_eq!(fact.customer.name.as_deref(), Some("Ann"));
    assert_eq!(fact.customer.id.as_deref(), Some(customer.as_str()));
    assert_eq!(fact.product_id, product);
    assert_eq!(fact.price_id, monthly);
    assert_eq!(fact.status, SubscriptionStatus::Active);
    assert!(!fact.livemode);
}

#[tokio::test]
async fn a_subscription_fact_carries_the_item_period_and_the_subscription_state() {
    let fake = FakeStripe::start().await;
    let (_, monthly, _) = catalog(&fake);
    let other = fake.create_price(&fake.create_product("Addon", &[]), Some("year"), 100, &[]);
    let customer = fake.create_customer(Some("bo@example.com"), None);
    let now = fake.now();
    let created = fake.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(monthly.clone(), 3), (other.clone(), 1)],
        current_period_start: Some(now - 86_400),
        current_period_end: Some(now + 29 * 86_400),
        cancel_at_period_end: true,
        ..Default::default()
    });
    let source = source(&fake);
    let page = source.subscription(&created.id).await.unwrap();
    let facts = subscription_facts(&page);
    assert_eq!(facts.len(), 2, "every item counts, not only the first");
    assert_eq!(page.complete_subscriptions, vec![created.id.clone()]);
    let first = facts.iter().find(|f| f.item_id == created.item_ids[0]).unwrap();
    assert_eq!(first.subscription_id, created.id);
    assert_eq!(first.price_id, monthly);
    assert_eq!(first.quantity, 3);
    assert_eq!(first.current_period_start, at(now - 86_400));
    assert_eq!(first.current_period_end, at(now + 29 * 86_400));
    assert!(first.cancel_at_period_end);
    assert_eq!(first.cancel_at, Some(at(now + 29 * 86_400)));
    assert_eq!(first.ended_at, None);
    let second = facts.iter().find(|f| f.item_id == created.item_ids[1]).unwrap();
    assert_eq!(second.price_id, other);
    assert_eq!(second.quantity, 1);
    assert_eq!(page.grants[0].key(), GrantKey::subscription_item(&facts[0].item_id));
}

#[tokio::test]
async fn paid_through_is_the_paid_line_end_or_the_period_start_when_the_latest_invoice_is_unpaid() {
    let fake = FakeStripe::start().await;
    let (_, monthly, _) = catalog(&fake);
    let customer = fake.create_customer(Some("cy@example.com"), None);
    let now = fake.now();
    let paid = fake.create_subscription(SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly.clone(), 1)],
        current_period_start: Some(now),
        current_period_end: Some(now + 30 * 86_400),
        ..Default::default()
    });
    let unpaid = fake.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(monthly, 1)],
        current_period_start: Some(now),
        current_period_end: Some(now + 30 * 86_400),
        status: Some("past_due".into()),
        latest_invoice_paid: Some(false),
        ..Default::default()
    });
    let source = source(&fake);

    let fact = subscription_facts(&source.subscription(&paid.id).await.unwrap())[0].clone();
    assert_eq!(fact.paid_through, Some(at(now + 30 * 86_400)));

    let fact = subscription_facts(&source.subscription(&unpaid.id).await.unwrap())[0].clone();
    assert_eq!(fact.status, SubscriptionStatus::PastDue);
    assert_eq!(fact.paid_through, Some(at(now)));

    // A failed renewal: the new period started at the old end, and only the old period was paid.
    fake.renew_subscription(&paid.id, false);
    let fact = subscription_facts(&source.subscription(&paid.id).await.unwrap())[0].clone();
    assert_eq!(fact.status, SubscriptionStatus::PastDue);
    assert_eq!(fact.current_period_start, at(now + 30 * 86_400));
    assert_eq!(fact.paid_through, Some(at(now + 30 * 86_400)));
    // Paid on the next renewal: paid through the end of the new period.
    fake.renew_subscription(&paid.id, true);
    let fact = subscription_facts(&source.subscription(&paid.id).await.unwrap())[0].clone();
    assert_eq!(fact.status, SubscriptionStatus::Active);
    assert_eq!(fact.paid_through, Some(fact.current_period_end));
}

#[tokio::test]
async fn every_subscription_status_is_reported_including_incomplete_and_canceled() {
    let fake = FakeStripe::start().await;
    let (_, monthly, _) = catalog(&fake);
    let customer = fake.create_customer(None, None);
    let statuses = [
        "incomplete",
        "trialing",
        "active",
        "past_due",
        "paused",
        "unpaid",
        "canceled",
        "incomplete_expired",
        // A value Stripe may add without a version change: reported, not an error.
        "on_hold",
    ];
    for status in statuses {
        fake.create_subscription(SubscriptionSpec {
            customer: customer.clone(),
            items: vec![(monthly.clone(), 1)],
            status: Some(status.into()),
            ..Default::default()
        });
    }
    let source = source(&fake);
    let page = source.subscriptions_page(None, &CreatedRange::default()).await.unwrap();
    let mut seen: Vec<SubscriptionStatus> = subscription_facts(&page).iter().map(|f| f.status.clone()).collect();
    seen.sort_by_key(|s| format!("{s:?}"));
    let mut expected: Vec<SubscriptionStatus> = statuses.iter().map(|s| SubscriptionStatus::parse(s)).collect();
    expected.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(seen, expected);
    let trialing = subscription_facts(&page)
        .into_iter()
        .find(|f| f.status == SubscriptionStatus::Trialing)
        .unwrap();
    assert!(trialing.trial_end.is_some());
    let canceled = subscription_facts(&page)
        .into_iter()
        .find(|f| f.status == SubscriptionStatus::Canceled)
        .unwrap();
    assert!(canceled.ended_at.is_some());
    assert_eq!(page.complete_subscriptions.len(), statuses.len());
}

#[tokio::test]
async fn the_created_range_filters_subscriptions() {
    let fake = FakeStripe::start().await;
    let (_, monthly, _) = catalog(&fake);
    let customer = fake.create_customer(None, None);
    let spec = || SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly.clone(), 1)],
        ..Default::default()
    };
    let older = fake.create_subscription(spec());
    fake.advance(3600);
    let cutoff = fake.now();
    let newer = fake.create_subscription(spec());
    let source = source(&fake);
    let range = CreatedRange {
        gte: Some(at(cutoff)),
        lt: None,
    };
    let page = source.subscriptions_page(None, &range).await.unwrap();
    assert_eq!(page.complete_subscriptions, vec![newer.id]);
    let range = CreatedRange {
        gte: None,
        lt: Some(at(cutoff)),
    };
    let page = source.subscriptions_page(None, &range).await.unwrap();
    assert_eq!(page.complete_subscriptions, vec![older.id]);
}

#[tokio::test]
async fn the_catalog_includes_archived_products_and_prices_with_metadata_untouched() {
    let fake = FakeStripe::start().await;
    let metadata = [
        ("product_id", " a, b ,a"),
        ("ip_limit", "x"),
        ("expiration_start", "activation"),
        ("note", ""),
    ];
    let archived = fake.create_product("Old", &metadata);
    let old_price = fake.create_price(&archived, Some("month"), 100, &[("hwid_limit", "7")]);
    let once = fake.create_price(&archived, None, 100, &[]);
    fake.update(&archived, |p| p["active"] = false.into());
    fake.update(&old_price, |p| p["active"] = false.into());
    for i in 0..120 {
        fake.create_product(&format!("P{i}"), &[]);
    }
    let source = source(&fake);
    fake.clear_requests();
    let (products, prices) = source.catalog().await.unwrap();

    assert_eq!(products.len(), 121);
    let log = fake.requests();
    let product_requests = log.iter().filter(|r| r.path == "/v1/products").count();
    let price_requests = log.iter().filter(|r| r.path == "/v1/prices").count();
    assert_eq!((product_requests, price_requests, log.len()), (2, 1, 3), "{log:#?}");
    assert!(
        log.iter().all(|r| !r.query.contains("active")),
        "archived objects are not filtered out"
    );

    let record = products.iter().find(|p| p.id == archived).unwrap();
    assert!(!record.active);
    assert_eq!(record.name, "Old");
    let expected: std::collections::BTreeMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(record.metadata, expected);
    let price = prices.iter().find(|p| p.id == old_price).unwrap();
    assert!(!price.active);
    assert!(price.recurring);
    assert_eq!(price.product, archived);
    assert_eq!(price.metadata.get("hwid_limit").map(String::as_str), Some("7"));
    let once = prices.iter().find(|p| p.id == once).unwrap();
    assert!(once.active && !once.recurring);
}

#[tokio::test]
async fn a_multi_line_payment_session_gives_one_grant_per_line_from_one_request() {
    let fake = FakeStripe::start().await;
    let (product, _, once) = catalog(&fake);
    let second = fake.create_price(&fake.create_product("Extra", &[("product_id", "extra")]), None, 10, &[]);
    let customer = fake.create_customer(Some("dee@example.com"), Some("Dee"));
    let session = fake.create_checkout_session(CheckoutSpec {
        customer: Some(customer.clone()),
        lines: vec![(once.clone(), 3), (second.clone(), 1)],
        ..Default::default()
    });
    let source = source(&fake);
    fake.clear_requests();
    let page = source
        .checkout_sessions_page(None, &CreatedRange::default())
        .await
        .unwrap();

    let log = fake.requests();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0].path, "/v1/checkout/sessions");
    let query = log[0].query.replace("%5B", "[").replace("%5D", "]");
    assert!(
        query.contains("status=complete") && query.contains("=data.line_items") && query.contains("=data.customer"),
        "{query}"
    );
    let facts = one_time_facts(&page);
    assert_eq!(facts.len(), 2);
    for (fact, line) in facts.iter().zip(&session.line_ids) {
        assert_eq!(fact.key, GrantKey::checkout_line(&session.id, line));
        assert_eq!(fact.purchase_id, session.id);
        assert!(fact.paid);
        assert_eq!(fact.payment_intent, session.payment_intent);
        assert_eq!(fact.customer.email.as_deref(), Some("dee@example.com"));
        assert_eq!(fact.customer.id.as_deref(), Some(customer.as_str()));
    }
    let first = facts.iter().find(|f| f.price_id == once).unwrap();
    assert_eq!((first.product_id.as_str(), first.quantity), (product.as_str(), 3));
    assert!(facts.iter().any(|f| f.price_id == second && f.quantity == 1));
    assert_eq!(page.next, None);
}

#[tokio::test]
async fn a_session_with_more_lines_than_stripe_embeds_pages_only_its_line_items() {
    let fake = FakeStripe::start().await;
    let (_, _, once) = catalog(&fake);
    let lines: Vec<(String, i64)> = (0..23).map(|_| (once.clone(), 1)).collect();
    let session = fake.create_checkout_session(CheckoutSpec {
        customer_email: Some("e@example.com".into()),
        lines,
        ..Default::default()
    });
    let source = source(&fake);
    fake.clear_requests();
    let page = source
        .checkout_sessions_page(None, &CreatedRange::default())
        .await
        .unwrap();
    assert_eq!(page.grants.len(), 23);
    let line_requests: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == format!("/v1/checkout/sessions/{}/line_items", session.id))
        .collect();
    assert_eq!(line_requests.len(), 1, "ten embedded, thirteen more in one page of 100");
    assert_eq!(source.requests(), 2);
    let mut keys: Vec<_> = page.grants.iter().map(GrantFact::key).collect();
    keys.dedup();
    assert_eq!(keys.len(), 23);
    assert_eq!(
        one_time_facts(&page)[0].customer.email.as_deref(),
        Some("e@example.com"),
        "customer_details.email without a customer"
    );
}

#[tokio::test]
async fn subscription_mode_sessions_grant_nothing_and_session_invoices_are_reported() {
    let fake = FakeStripe::start().await;
    let (_, monthly, once) = catalog(&fake);
    let customer = fake.create_customer(Some("f@example.com"), None);
    let sub = fake.create_subscription(SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly, 1)],
        ..Default::default()
    });
    let sub_session = fake.create_checkout_session(CheckoutSpec {
        customer: Some(customer.clone()),
        mode: Some("subscription".into()),
        subscription: Some(sub.id.clone()),
        ..Default::default()
    });
    let with_invoice = fake.create_checkout_session(CheckoutSpec {
        customer: Some(customer.clone()),
        lines: vec![(once.clone(), 1)],
        create_invoice: true,
        ..Default::default()
    });
    let source = source(&fake);
    let page = source
        .checkout_sessions_page(None, &CreatedRange::default())
        .await
        .unwrap();

    let facts = one_time_facts(&page);
    assert_eq!(facts.len(), 1, "the subscription-mode session yields nothing");
    assert_eq!(facts[0].purchase_id, with_invoice.id);
    let session_invoice = with_invoice.invoice.clone().unwrap();
    assert!(
        page.session_invoices.contains(&session_invoice),
        "{:?}",
        page.session_invoices
    );
    assert!(
        source
            .checkout_session(&sub_session.id)
            .await
            .unwrap()
            .grants
            .is_empty()
    );

    // The session's invoice is a paid invoice without subscription: the page
    // scan cannot tell, the single re-fetch can.
    let invoices = source.invoices_page(None, &CreatedRange::default()).await.unwrap();
    assert!(
        invoices
            .grants
            .iter()
            .any(|g| g.key().source_id.starts_with(&session_invoice))
    );
    let single = source.invoice(&session_invoice).await.unwrap();
    assert!(single.grants.is_empty());
    assert_eq!(single.session_invoices, vec![session_invoice]);
}

#[tokio::test]
async fn unpaid_sessions_are_reported_as_not_paid() {
    let fake = FakeStripe::start().await;
    let (_, _, once) = catalog(&fake);
    let session = fake.create_checkout_session(CheckoutSpec {
        customer_email: Some("g@example.com".into()),
        lines: vec![(once.clone(), 1)],
        payment_status: Some("unpaid".into()),
        ..Default::default()
    });
    let free = fake.create_checkout_session(CheckoutSpec {
        customer_email: Some("g@example.com".into()),
        lines: vec![(once, 1)],
        payment_status: Some("no_payment_required".into()),
        ..Default::default()
    });
    let source = source(&fake);
    let page = source.checkout_session(&session.id).await.unwrap();
    assert!(!one_time_facts(&page)[0].paid);
    let page = source.checkout_session(&free.id).await.unwrap();
    assert!(one_time_facts(&page)[0].paid);
}

#[tokio::test]
async fn one_off_paid_invoices_grant_per_line_and_subscription_invoices_do_not() {
    let fake = FakeStripe::start().await;
    let (product, monthly, once) = catalog(&fake);
    let customer = fake.create_customer(Some("h@example.com"), Some("Hal"));
    let sub = fake.create_subscription(SubscriptionSpec {
        customer: customer.clone(),
        items: vec![(monthly, 1)],
        ..Default::default()
    });
    let invoice = fake.create_invoice(InvoiceSpec {
        customer: customer.clone(),
        lines: vec![(once.clone(), 2), (once.clone(), 1)],
        ..Default::default()
    });
    fake.create_invoice(InvoiceSpec {
        customer: customer.clone(),
        lines: vec![(once.clone(), 1)],
        status: Some("open".into()),
        ..Default::default()
    });
    let source = source(&fake);
    fake.clear_requests();
    let page = source.invoices_page(None, &CreatedRange::default()).await.unwrap();

    let log = fake.requests();
    assert_eq!(log.len(), 1, "{log:#?}");
    let query = log[0].query.replace("%5B", "[").replace("%5D", "]");
    assert!(
        query.contains("status=paid") && query.contains("=data.customer") && query.contains("=data.payments"),
        "{query}"
    );
    let facts = one_time_facts(&page);
    assert_eq!(
        facts.len(),
        2,
        "the subscription's paid invoice and the open invoice yield nothing"
    );
    assert!(facts.iter().all(|f| f.purchase_id == invoice.id));
    for (fact, line) in facts.iter().zip(&invoice.line_ids) {
        assert_eq!(fact.key, GrantKey::invoice_line(&invoice.id, line));
        assert_eq!(fact.product_id, product);
        assert_eq!(fact.price_id, once);
        assert_eq!(fact.payment_intent, invoice.payment_intent);
        assert_eq!(fact.customer.email.as_deref(), Some("h@example.com"));
        assert!(fact.paid);
    }
    assert_eq!(facts.iter().map(|f| f.quantity).sum::<i64>(), 3);
    assert_eq!(
        page.objects, 2,
        "two paid invoices listed; the subscription's is skipped"
    );
    assert_eq!(fake.get(&sub.latest_invoice).unwrap()["status"], "paid");
}

#[tokio::test]
async fn full_and_partial_refunds_and_lost_disputes_become_reversals() {
    let fake = FakeStripe::start().await;
    let (_, _, once) = catalog(&fake);
    let spec = || CheckoutSpec {
        customer_email: Some("i@example.com".into()),
        lines: vec![(once.clone(), 1)],
        ..Default::default()
    };
    let full = fake.create_checkout_session(spec()).payment_intent.unwrap();
    let partial = fake.create_checkout_session(spec()).payment_intent.unwrap();
    let lost = fake.create_checkout_session(spec()).payment_intent.unwrap();
    let won = fake.create_checkout_session(spec()).payment_intent.unwrap();
    let full_refund = fake.refund(&full, None);
    let partial_refund = fake.refund(&partial, Some(1));
    fake.dispute(&lost, "needs_response");
    let lost_dispute = fake.dispute(&lost, "lost");
    fake.dispute(&won, "won");
    let source = source(&fake);
    fake.clear_requests();

    let refunds = source.reversals_page(None).await.unwrap();
    assert_eq!(refunds.next, None);
    let kind_of = |pi: &str| {
        refunds
            .items
            .iter()
            .find(|r| r.payment_intent == pi)
            .map(|r| (r.kind, r.stripe_object.clone()))
    };
    assert_eq!(kind_of(&full), Some((ReversalKind::FullRefund, full_refund)));
    assert_eq!(kind_of(&partial), Some((ReversalKind::PartialRefund, partial_refund)));
    assert_eq!(refunds.items.len(), 2);

    let disputes = source.disputes_page(None).await.unwrap();
    assert_eq!(disputes.items.len(), 1, "{:?}", disputes.items);
    assert_eq!(disputes.items[0].payment_intent, lost);
    assert_eq!(disputes.items[0].kind, ReversalKind::DisputeLost);
    assert_eq!(disputes.items[0].stripe_object, lost_dispute);

    let log = fake.requests();
    assert_eq!(log.len(), 2, "{log:#?}");
    assert!(
        log[0]
            .query
            .replace("%5B", "[")
            .replace("%5D", "]")
            .contains("=data.charge")
    );
}

#[tokio::test]
async fn events_name_the_objects_to_refetch_and_only_relevant_types_are_asked_for() {
    let fake = FakeStripe::start().await;
    let start = fake.now();
    let (_, monthly, once) = catalog(&fake);
    let customer = fake.create_customer(Some("j@example.com"), None);
    fake.advance(10);
    let sub = fake.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(monthly, 1)],
        ..Default::default()
    });
    fake.advance(10);
    let session = fake.create_checkout_session(CheckoutSpec {
        customer_email: Some("j@example.com".into()),
        lines: vec![(once, 1)],
        ..Default::default()
    });
    let source = source(&fake);
    fake.clear_requests();

    let page = source.events_page(at(start), None).await.unwrap();
    assert_eq!(page.next, None);
    let log = fake.requests();
    assert_eq!(log.len(), 1);
    let query = log[0].query.replace("%5B", "[").replace("%5D", "]");
    assert!(
        query.contains("types[") && query.contains("=customer.subscription.updated"),
        "{query}"
    );
    assert!(query.contains(&format!("created[gte]={start}")), "{query}");
    let created = page
        .items
        .iter()
        .find(|e| e.event_type == "customer.subscription.created")
        .unwrap();
    assert_eq!(
        (created.object_id.as_str(), created.object_type.as_str()),
        (sub.id.as_str(), "subscription")
    );
    let completed = page
        .items
        .iter()
        .find(|e| e.event_type == "checkout.session.completed")
        .unwrap();
    assert_eq!(
        (completed.object_id.as_str(), completed.object_type.as_str()),
        (session.id.as_str(), "checkout.session")
    );
    assert!(
        page.items.windows(2).all(|w| w[0].created >= w[1].created),
        "newest first"
    );
    assert!(
        page.items.iter().all(|e| e.event_type != "customer.created"),
        "irrelevant types are filtered by Stripe"
    );

    let later = source.events_page(at(fake.now() + 1), None).await.unwrap();
    assert!(later.items.is_empty());
}

#[tokio::test]
async fn every_sample_object_the_fake_serves_decodes_through_async_stripe_types() {
    let fake = FakeStripe::start_with(Options {
        seed_sample: true,
        ..Options::default()
    })
    .await;
    let (_, _, once) = catalog(&fake);
    let pi = fake
        .create_checkout_session(CheckoutSpec {
            customer_email: Some("k@example.com".into()),
            lines: vec![(once, 1)],
            ..Default::default()
        })
        .payment_intent
        .unwrap();
    fake.refund(&pi, Some(1));
    fake.dispute(&pi, "lost");
    let source = source(&fake);
    let (products, prices) = source.catalog().await.unwrap();
    assert!(!products.is_empty() && !prices.is_empty());
    let range = CreatedRange::default();
    assert!(!source.subscriptions_page(None, &range).await.unwrap().grants.is_empty());
    assert!(
        !source
            .checkout_sessions_page(None, &range)
            .await
            .unwrap()
            .grants
            .is_empty()
    );
    assert!(!source.invoices_page(None, &range).await.unwrap().grants.is_empty());
    assert!(!source.reversals_page(None).await.unwrap().items.is_empty());
    assert!(!source.disputes_page(None).await.unwrap().items.is_empty());
    assert!(!source.events_page(at(0), None).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn a_429_from_the_fake_is_waited_out_and_the_page_still_arrives() {
    let fake = FakeStripe::start().await;
    catalog(&fake);
    let source = source(&fake);
    fake.inject_fault(Fault {
        path_prefix: "/v1/products".into(),
        kind: FaultKind::TooManyRequests { retry_after_secs: 1 },
        times: 2,
    });
    let (products, _) = source.catalog().await.unwrap();
    assert_eq!(products.len(), 1);
    let statuses: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/products")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![429, 429, 200]);
    assert_eq!(source.requests(), 4, "three product attempts and one price request");
}

#[tokio::test]
async fn persistent_server_errors_surface_with_the_path_and_request_id() {
    let fake = FakeStripe::start().await;
    let mut config = config(&fake);
    config.max_retries = 2;
    let source = StripeSource::new(config).unwrap();
    fake.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::ServerError(502),
        times: 3,
    });
    let err = source
        .subscriptions_page(None, &CreatedRange::default())
        .await
        .unwrap_err();
    assert_eq!(source.requests(), 3);
    match &err {
        StripeError::Api {
            status: 502,
            path,
            request_id: Some(id),
            attempts: 3,
            ..
        } => {
            assert_eq!(path, "/v1/subscriptions");
            assert!(id.starts_with("req_"), "{id}");
            assert!(err.to_string().contains(id.as_str()), "{err}");
        }
        other => panic!("expected a 502 API error, got {other:?}"),
    }
    assert!(err.to_string().contains("/v1/subscriptions"), "{err}");
}

#[tokio::test]
async fn a_dropped_connection_to_the_fake_is_retried() {
    let fake = FakeStripe::start().await;
    let (_, monthly, _) = catalog(&fake);
    let customer = fake.create_customer(None, None);
    fake.create_subscription(SubscriptionSpec {
        customer,
        items: vec![(monthly, 1)],
        ..Default::default()
    });
    let source = source(&fake);
    fake.inject_fault(Fault {
        path_prefix: "/v1/subscriptions".into(),
        kind: FaultKind::DropConnection,
        times: 1,
    });
    let page = source.subscriptions_page(None, &CreatedRange::default()).await.unwrap();
    assert_eq!(page.grants.len(), 1);
    assert_eq!(source.requests(), 2);
}

#[tokio::test]
async fn a_wrong_key_is_an_auth_error_that_does_not_contain_the_key() {
    let fake = FakeStripe::start().await;
    let mut config = config(&fake);
    let wrong = "rk_test_51WrongKeyWrongKeyWrongKey9876";
    config.api_key = ApiKey::parse(wrong).unwrap();
    let source = StripeSource::new(config).unwrap();
    let err = source.catalog().await.unwrap_err();
    assert!(matches!(err, StripeError::Auth { status: 401, .. }), "{err:?}");
    assert!(!err.to_string().contains(wrong), "{err}");
    assert!(!format!("{err:?}").contains(wrong), "{err:?}");
    assert!(err.to_string().contains("rk_test_…9876"), "{err}");
    // Products and prices are asked for side by side: each at most once,
    // neither retried after its 401.
    let logged = fake.requests();
    for path in ["/v1/products", "/v1/prices"] {
        assert!(logged.iter().filter(|r| r.path == path).count() <= 1, "{logged:#?}");
    }
    assert!((1..=2).contains(&source.requests()), "{}", source.requests());
}

#[tokio::test]
async fn the_rate_ceiling_holds_in_the_fake_request_log() {
    let fake = FakeStripe::start().await;
    let mut config = config(&fake);
    config.rps = Some(20);
    let source = std::sync::Arc::new(StripeSource::new(config).unwrap());
    fake.clear_requests();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let source = source.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                source.disputes_page(None).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let times: Vec<_> = fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 60);
    let busiest = times
        .iter()
        .map(|s| {
            times
                .iter()
                .filter(|t| **t >= *s && t.duration_since(*s) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    let allowed = 20 + licensync::stripe::RateCeiling::burst(20) as usize + 1;
    assert!(
        busiest <= allowed,
        "{busiest} requests in one second, ceiling {allowed}"
    );
}

#[tokio::test]
async fn an_invoice_with_more_lines_than_stripe_embeds_pages_its_lines_and_a_single_refetch_grants() {
    let fake = FakeStripe::start().await;
    let (_, _, once) = catalog(&fake);
    let customer = fake.create_customer(None, None);
    fake.update(&customer, |c| c["email"] = serde_json::Value::Null);
    let lines: Vec<(String, i64)> = (0..12).map(|_| (once.clone(), 1)).collect();
    let invoice = fake.create_invoice(InvoiceSpec {
        customer,
        lines,
        ..Default::default()
    });
    fake.update(&invoice.id, |i| i["customer_email"] = "billing@example.com".into());
    let source = source(&fake);
    fake.clear_requests();
    let page = source.invoices_page(None, &CreatedRange::default()).await.unwrap();
    assert_eq!(page.grants.len(), 12);
    let line_requests = fake
        .requests()
        .iter()
        .filter(|r| r.path == format!("/v1/invoices/{}/lines", invoice.id))
        .count();
    assert_eq!(line_requests, 1);
    assert_eq!(
        page.objects,
        1 + 2,
        "the invoice and the two lines beyond the embedded ten"
    );
    let fact = &one_time_facts(&page)[0];
    assert_eq!(
        fact.customer.email.as_deref(),
        Some("billing@example.com"),
        "invoice customer_email when the customer has none"
    );

    let single = source.invoice(&invoice.id).await.unwrap();
    assert_eq!(single.grants.len(), 12);
    assert!(single.session_invoices.is_empty());
}

#[tokio::test]
async fn a_deleted_customer_does_not_stop_the_scan_and_the_others_keep_their_email() {
    let fake = FakeStripe::start().await;
    let (_, monthly, _) = catalog(&fake);
    let gone = fake.create_customer(Some("gone@example.com"), None);
    let kept = fake.create_customer(Some("kept@example.com"), None);
    for customer in [&gone, &kept] {
        fake.create_subscription(SubscriptionSpec {
            customer: customer.clone(),
            items: vec![(monthly.clone(), 1)],
            status: Some("canceled".into()),
            ..Default::default()
        });
    }
    // What Stripe serves for a deleted customer, expanded or retrieved.
    let stub = serde_json::json!({"id": gone, "object": "customer", "deleted": true});
    fake.update(&gone, |c| *c = stub);
    let source = source(&fake);
    fake.clear_requests();
    let page = source.subscriptions_page(None, &CreatedRange::default()).await.unwrap();
    let facts = subscription_facts(&page);
    assert_eq!(facts.len(), 2);
    let email_of = |id: &str| {
        facts
            .iter()
            .find(|f| f.customer.id.as_deref() == Some(id))
            .unwrap()
            .customer
            .email
            .clone()
    };
    assert_eq!(email_of(&gone), None);
    assert_eq!(email_of(&kept).as_deref(), Some("kept@example.com"));
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths.iter().filter(|p| *p == "/v1/subscriptions").count(),
        2,
        "{paths:?}"
    );
    assert_eq!(
        paths.iter().filter(|p| p.starts_with("/v1/customers/")).count(),
        2,
        "{paths:?}"
    );
}
