//! `daemon --listen --stripe-write-back`: each key written onto a
//! subscription item makes Stripe send `customer.subscription.updated`,
//! which wakes the daemon; that run finds nothing changed and writes
//! nothing, so the wake-ups stop there. The real binary, the fake Stripe's
//! signed deliveries, and a real PostgreSQL.

use std::time::Duration;

use fake_stripe::SubscriptionSpec;

use super::webhooks::{NEW_SECRET, YEARLY, all_runs, settled, start, until};
use super::world;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhooks_of_our_own_writes_wake_one_run_that_writes_nothing() {
    let w = world().await;
    let daemon = start(
        &w.db.url,
        &w.fake,
        YEARLY,
        &[
            ("LICENSYNC_WEBHOOK_SECRET", NEW_SECRET),
            ("LICENSYNC_STRIPE_WRITE_BACK", "true"),
        ],
        None,
    );
    w.fake.send_webhooks(&daemon.url(), NEW_SECRET);
    // A sale wakes the first run, which issues the three subscriptions'
    // licenses and writes their keys onto the three items.
    w.fake.set_now(chrono::Utc::now().timestamp());
    let price = w.fake.get(&w.sub).unwrap()["items"]["data"][0]["price"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    w.fake.create_subscription(SubscriptionSpec {
        customer: w.customer.clone(),
        items: vec![(price, 1)],
        ..Default::default()
    });
    until("three keys written", || w.fake.metadata_writes().len() >= 3).await;
    // Stripe's `customer.subscription.updated` for each write reaches the daemon...
    until("the writes' webhooks delivered", || {
        w.fake
            .webhook_deliveries()
            .iter()
            .filter(|d| d.event_type == "customer.subscription.updated" && d.status == Some(200))
            .count()
            >= 3
    })
    .await;
    settled(&w.db).await;
    let runs = all_runs(&w.db);
    assert!(runs >= 2, "the writes' webhooks woke a run: {runs} runs");
    // ... and nothing more happens: no write, no run, for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    settled(&w.db).await;
    assert_eq!(all_runs(&w.db), runs, "the wake-ups stopped");
    let writes = w.fake.metadata_writes();
    assert_eq!(writes.len(), 3, "one write per item, never repeated: {writes:?}");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}
