//! An incremental run's round trips: the catalog is read beside the
//! objects its events name. A module of `tests/incremental.rs`.

use std::time::Duration;

use chrono::Utc;

use super::{count, paths, reconcile, world};

/// An incremental run plans the objects its events name with the catalog:
/// it asks for the catalog beside those objects, not a round trip after
/// them. With every answer 300 ms away, the products list is asked before
/// the subscription's answer could have arrived.
#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_run_reads_the_catalog_beside_the_objects_its_events_name() {
    let w = world().await;
    reconcile(&w, &[]).await;
    w.fake.set_now(Utc::now().timestamp());
    w.fake.renew_subscription(&w.sub, true);
    w.fake.clear_requests();
    let latency = Duration::from_millis(300);
    w.fake.set_latency(Some(fake_stripe::Latency {
        min: latency,
        max: latency,
    }));
    let report = reconcile(&w, &[]).await;
    assert_eq!(report["mode"], "incremental");
    assert_eq!(count(&report, "extended"), 1, "{report}");
    let requests = w.fake.requests();
    let asked = |path: &str| {
        requests
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no request to {path}: {:?}", paths(&w.fake)))
            .at
    };
    let (subscription, products) = (asked(&format!("/v1/subscriptions/{}", w.sub)), asked("/v1/products"));
    assert!(
        products < subscription + latency,
        "the products list was asked {:?} after the subscription",
        products.saturating_duration_since(subscription)
    );
    let quiet = {
        w.fake.clear_requests();
        reconcile(&w, &[]).await
    };
    assert_eq!(
        quiet["stripe_requests"], 1,
        "a run with no new events still reads no catalog"
    );
}
