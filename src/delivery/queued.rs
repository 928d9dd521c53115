//! The sender beside a reconcile run: what the run tells it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// How long the sender beside a run lets pages commit after the first one
/// that woke it, before it claims their emails: a first import commits a
/// page every few tens of milliseconds, and one claim per page made claims
/// of 70 rows, seven times the statements of the claims of 500 that a pass
/// after the run made (1M purchases: 18,409 claims, 30 s of database
/// time). A buyer's key waits this much longer, not a whole run.
pub const GATHER: Duration = Duration::from_millis(250);

/// What a reconcile run tells the sender that works beside it
/// ([`deliver_during`]): a page committed emails, or the run is over.
#[derive(Debug, Clone, Default)]
pub struct Queued(Arc<QueuedState>);

#[derive(Debug, Default)]
struct QueuedState {
    wake: Notify,
    /// Ends a [`GATHER`] wait at once when the run ends.
    ended: Notify,
    over: AtomicBool,
}

impl Queued {
    /// A page that queued emails has committed: they are due now.
    pub fn committed(&self) {
        self.0.wake.notify_one();
    }

    /// The run wrote its last page: the sender claims what is left and ends.
    pub fn over(&self) {
        self.0.over.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
        self.0.ended.notify_one();
    }

    pub(super) fn is_over(&self) -> bool {
        self.0.over.load(Ordering::SeqCst)
    }

    /// Waits for the next page that queued emails, then lets [`GATHER`] of
    /// pages commit (less when the run ends), so that one claim takes them.
    pub(super) async fn next_pages(&self) {
        self.0.wake.notified().await;
        if !self.is_over() {
            tokio::select! {
                () = tokio::time::sleep(GATHER) => {}
                () = self.0.ended.notified() => {}
            }
        }
    }
}
