//! licensync's Stripe reader against a generated fake account (purchases
//! computed from their index, not stored): it decodes every page through
//! async-stripe's types, and reads exactly the facts it reads from the
//! stored twin of the same account.

use std::time::Duration;

use chrono::DateTime;
use fake_stripe::{FakeStripe, GeneratedAccount};
use licensync::domain::{GrantFact, SubscriptionStatus};
use licensync::stripe::{ApiKey, CreatedRange, GrantPage, StripeConfig, StripeSource};

fn source(fake: &FakeStripe) -> StripeSource {
    let mut config = StripeConfig::new(ApiKey::parse(&fake.api_key()).unwrap());
    config.base_url = fake.base_url();
    config.rps = Some(1000);
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(50);
    StripeSource::new(config).unwrap()
}

fn account() -> GeneratedAccount {
    GeneratedAccount {
        subscriptions: 170,
        sessions: 28,
        one_off_invoices: 4,
        max_past_periods: 12,
        seed: 3,
    }
}

#[derive(Clone, Copy)]
enum Scan {
    Subscriptions,
    Sessions,
    Invoices,
}

/// Every page of one scan, as the full run reads them.
async fn scan(source: &StripeSource, what: Scan, created: &CreatedRange) -> Vec<GrantPage> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = match what {
            Scan::Subscriptions => source.subscriptions_page(after.as_deref(), created).await,
            Scan::Sessions => source.checkout_sessions_page(after.as_deref(), created).await,
            Scan::Invoices => source.invoices_page(after.as_deref(), created).await,
        }
        .expect("the page decodes");
        after = page.next.clone();
        pages.push(page);
        if after.is_none() {
            return pages;
        }
    }
}

fn grants(pages: &[GrantPage]) -> Vec<&GrantFact> {
    pages.iter().flat_map(|p| &p.grants).collect()
}

#[tokio::test]
async fn the_reader_decodes_a_generated_account_and_reads_what_the_stored_twin_gives() {
    let generated = FakeStripe::generated(account()).await;
    let stored = FakeStripe::start().await;
    stored.set_record_events(false);
    let summary = stored.load_generated(account());
    let (g_source, s_source) = (source(&generated), source(&stored));
    let whole = CreatedRange::default();
    let mid = DateTime::from_timestamp((summary.oldest + summary.newest) / 2, 0).unwrap();
    // Newest first, as the lists are.
    let halves = [
        CreatedRange {
            gte: Some(mid),
            lt: None,
        },
        CreatedRange {
            gte: None,
            lt: Some(mid),
        },
    ];
    generated.clear_requests();
    for what in [Scan::Subscriptions, Scan::Sessions, Scan::Invoices] {
        let pages = scan(&g_source, what, &whole).await;
        assert_eq!(
            pages,
            scan(&s_source, what, &whole).await,
            "the same facts, page by page"
        );
        // Split by `created`, the two halves hold the same facts.
        let mut split = Vec::new();
        for half in &halves {
            let half_pages = scan(&g_source, what, half).await;
            assert_eq!(half_pages, scan(&s_source, what, half).await);
            split.extend(grants(&half_pages).into_iter().cloned());
        }
        let whole_facts: Vec<GrantFact> = grants(&pages).into_iter().cloned().collect();
        assert!(split == whole_facts, "the halves hold the whole scan's facts in order");
        let facts = grants(&pages);
        match what {
            Scan::Subscriptions => {
                assert_eq!(facts.len(), summary.subscription_items);
                let complete: usize = pages.iter().map(|p| p.complete_subscriptions.len()).sum();
                assert_eq!(complete, summary.subscriptions);
                for fact in facts {
                    let GrantFact::Subscription(s) = fact else {
                        panic!("{fact:?}")
                    };
                    assert_eq!(s.status, SubscriptionStatus::Active);
                    assert_eq!(s.paid_through, Some(s.current_period_end), "the latest invoice is paid");
                    assert!(s.current_period_start.timestamp() <= generated.now());
                    assert!(generated.now() < s.current_period_end.timestamp());
                    assert!(s.customer.email.as_deref().unwrap().starts_with("buyer"));
                }
            }
            Scan::Sessions => {
                assert_eq!(facts.len(), summary.session_lines);
                let guests = facts
                    .iter()
                    .filter(|f| matches!(f, GrantFact::OneTime(o) if o.customer.id.is_none()))
                    .filter(|f| matches!(f, GrantFact::OneTime(o) if o.customer.email.as_deref().unwrap().starts_with("guest")))
                    .count();
                assert!(guests > 0, "guest checkouts carry their email");
            }
            Scan::Invoices => {
                // Subscription invoices are read and skipped: only one-off lines grant.
                assert_eq!(facts.len(), summary.one_off_lines);
                let read: usize = pages.iter().map(|p| p.objects).sum();
                assert!(
                    read >= summary.invoices,
                    "{read} objects read for {} invoices",
                    summary.invoices
                );
            }
        }
    }
    // Only list requests: every related object came through expand[].
    for request in generated.requests() {
        assert!(
            ["/v1/subscriptions", "/v1/checkout/sessions", "/v1/invoices"].contains(&request.path.as_str()),
            "{request:?}"
        );
    }
    // Re-reading single objects (incremental runs) works on generated ids too.
    let first = grants(&scan(&g_source, Scan::Subscriptions, &whole).await[..1])[0].clone();
    let GrantFact::Subscription(sub) = first else {
        unreachable!()
    };
    assert_eq!(
        g_source.subscription(&sub.subscription_id).await.unwrap(),
        s_source.subscription(&sub.subscription_id).await.unwrap()
    );
    let invoice_pages = scan(&g_source, Scan::Invoices, &whole).await;
    let one_off = grants(&invoice_pages)
        .into_iter()
        .find_map(|g| match g {
            GrantFact::OneTime(o) => Some(o.purchase_id.clone()),
            _ => None,
        })
        .unwrap();
    let again = g_source.invoice(&one_off).await.unwrap();
    assert_eq!(again, s_source.invoice(&one_off).await.unwrap());
    assert!(!again.grants.is_empty());
}
