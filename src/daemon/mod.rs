//! What a daemon keeps between its runs: the accounts webhooks woke
//! ([`Wakeups`]), whether its runs still succeed ([`Health`]), and, in
//! `http`, the endpoint that Stripe's webhooks, probes and Prometheus call.
//!
//! A webhook is a wake-up, never data: it names an account, and the run it
//! starts reads the Events API as every run does.

mod http;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::Notify;

pub use http::{Endpoint, serve};

/// The accounts woken since the last run took them (`None`: the key's own
/// account). A set, so that a flood of webhooks for one account while its
/// run goes on leaves one run waiting, not a queue.
#[derive(Debug, Clone, Default)]
pub struct Wakeups(Arc<Pending>);

#[derive(Debug, Default)]
struct Pending {
    accounts: Mutex<BTreeSet<Option<String>>>,
    notify: Notify,
}

impl Wakeups {
    pub fn wake(&self, account: Option<String>) {
        self.0
            .accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(account);
        // Stores a permit when nobody waits, so a wake-up between a check
        // and the wait is not lost.
        self.0.notify.notify_one();
    }

    /// Waits until an account is woken, then takes every woken account.
    /// Dropping the future loses nothing: the accounts stay pending.
    pub async fn next(&self) -> BTreeSet<Option<String>> {
        loop {
            let taken = std::mem::take(&mut *self.0.accounts.lock().unwrap_or_else(PoisonError::into_inner));
            if !taken.is_empty() {
                return taken;
            }
            self.0.notify.notified().await;
        }
    }

    /// Forgets every pending wake-up: a run of every account covers them.
    pub fn clear(&self) {
        self.0.accounts.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}

/// A daemon is healthy while a run succeeded within two schedule periods
/// (counted from its start until its first success).
#[derive(Debug, Clone)]
pub struct Health(Arc<Mutex<DateTime<Utc>>>);

impl Health {
    pub fn new(started: DateTime<Utc>) -> Health {
        Health(Arc::new(Mutex::new(started)))
    }

    pub fn succeeded(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    /// `Err` with the time since the last success once it is over two
    /// periods.
    pub fn check(&self, now: DateTime<Utc>, period: Duration) -> Result<(), Duration> {
        let since = now - *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if since > period * 2 { Err(since) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_of_wake_ups_leaves_each_account_once() {
        let wakeups = Wakeups::default();
        for _ in 0..100 {
            wakeups.wake(Some("acct_a".into()));
        }
        wakeups.wake(None);
        let taken = wakeups.next().await;
        assert_eq!(taken, BTreeSet::from([None, Some("acct_a".to_owned())]));
        // Nothing is left, though 101 permits were asked for.
        let again = tokio::time::timeout(std::time::Duration::from_millis(50), wakeups.next()).await;
        assert!(again.is_err(), "no second run without a new wake-up");
    }

    #[tokio::test]
    async fn a_wake_up_reaches_a_waiter_and_a_cleared_one_does_not() {
        let wakeups = Wakeups::default();
        let waiter = tokio::spawn({
            let wakeups = wakeups.clone();
            async move { wakeups.next().await }
        });
        tokio::task::yield_now().await;
        wakeups.wake(Some("acct_b".into()));
        let taken = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(taken, BTreeSet::from([Some("acct_b".to_owned())]));
        wakeups.wake(Some("acct_c".into()));
        wakeups.clear();
        let after = tokio::time::timeout(std::time::Duration::from_millis(50), wakeups.next()).await;
        assert!(after.is_err(), "a cleared wake-up starts nothing");
    }

    #[test]
    fn health_turns_after_two_periods_without_success() {
        let start = DateTime::from_timestamp(1_765_000_000, 0).unwrap();
        let health = Health::new(start);
        let period = Duration::minutes(15);
        assert!(health.check(start + Duration::minutes(30), period).is_ok());
        assert_eq!(
            health.check(start + Duration::minutes(31), period),
            Err(Duration::minutes(31))
        );
        health.succeeded(start + Duration::minutes(31));
        assert!(health.check(start + Duration::minutes(32), period).is_ok());
    }
}
