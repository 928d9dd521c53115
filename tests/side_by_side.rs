//! A full scan reads its Checkout Sessions and its invoice items side by
//! side (issue 18), and still never licenses an invoice a session created:
//! the invoices the items name wait until every session was read. The real
//! binary against the fake Stripe.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Ran, TestDb, first_request_at, hold_next_request, reconcile_json};
use fake_stripe::{CheckoutSpec, FakeStripe, InvoiceSpec};

/// How long the fake holds the first Checkout Session page.
const HELD: Duration = Duration::from_secs(3);

#[tokio::test]
async fn invoice_items_are_read_while_the_sessions_are_and_a_sessions_invoice_still_grants_once() {
    let fake = FakeStripe::start().await;
    let now = Utc::now().timestamp();
    fake.set_now(now - 3600);
    let product = fake.create_product("Editor", &[("product_id", "editor")]);
    let once = fake.create_price(&product, None, 4900, &[]);
    let customer = fake.create_customer(Some("ada@example.test"), Some("Ada"));
    // A Checkout Session that made an invoice of its own, paid by the same
    // payment: its invoice item is listed like a one-off invoice's.
    let session = fake.create_checkout_session(CheckoutSpec {
        customer: Some(customer.clone()),
        lines: vec![(once.clone(), 1)],
        create_invoice: true,
        ..CheckoutSpec::default()
    });
    let session_invoice = session.invoice.clone().expect("the session made an invoice");
    let invoice = fake.create_invoice(InvoiceSpec {
        customer,
        lines: vec![(once, 1)],
        ..InvoiceSpec::default()
    });
    fake.set_now(now);
    hold_next_request(&fake, "/v1/checkout/sessions", HELD);

    let db = TestDb::new();
    let mail = tempfile::tempdir().unwrap();
    let cmd = reconcile_json(&db, &fake, &format!("file://{}", mail.path().display()));
    let ran = Ran::new(&tokio::process::Command::from(cmd).output().await.unwrap());
    let report = ran.ok_json();
    assert_eq!(report["outcome"], "succeeded", "{report:#}\n{}", ran.all());

    // One license per purchase: the session's line and the invoice's line,
    // none for the session's own invoice, though its item was read before
    // the session was.
    let sources: Vec<String> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["source_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sources.len(), 2, "{report:#}");
    assert!(
        sources.iter().any(|s| s.starts_with(&format!("{}/", session.id))),
        "{sources:?}"
    );
    assert!(
        sources.iter().any(|s| s.starts_with(&format!("{}/", invoice.id))),
        "{sources:?}"
    );
    assert!(!sources.iter().any(|s| s.starts_with(&session_invoice)), "{sources:?}");

    // The invoice items were asked for while the sessions' page was held.
    let first = |path: &str| first_request_at(&fake, path);
    let (sessions, items) = (first("/v1/checkout/sessions"), first("/v1/invoiceitems"));
    assert!(
        items < sessions + HELD,
        "the invoice items were read only after the sessions: {:?} after the sessions' request",
        items.saturating_duration_since(sessions)
    );
}

/// A run's first reads go side by side too: the catalog (products beside
/// prices) beside the refunds and disputes, all after the event listing.
#[tokio::test]
async fn the_catalog_is_read_beside_the_refunds_and_disputes() {
    let fake = FakeStripe::start().await;
    let product = fake.create_product("Editor", &[("product_id", "editor")]);
    fake.create_price(&product, None, 4900, &[]);
    hold_next_request(&fake, "/v1/refunds", HELD);
    let db = TestDb::new();
    let cmd = reconcile_json(&db, &fake, "none");
    let ran = Ran::new(&tokio::process::Command::from(cmd).output().await.unwrap());
    assert_eq!(ran.ok_json()["outcome"], "succeeded", "{}", ran.all());

    let first = |path: &str| first_request_at(&fake, path);
    let (events, refunds) = (first("/v1/events"), first("/v1/refunds"));
    for path in ["/v1/disputes", "/v1/products", "/v1/prices"] {
        let at = first(path);
        assert!(
            at >= events && at < refunds + HELD,
            "{path} was not read after the event listing and beside the refunds: {:?} after the refunds' request",
            at.saturating_duration_since(refunds)
        );
    }
}
