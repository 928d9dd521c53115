//! A stop request, as mini-redis's `Shutdown`: the binary makes one from
//! SIGTERM/SIGINT ([`Shutdown::on_signal`]), tests from a [`Trigger`]. A
//! run that holds one finishes the page in progress and stops cleanly.

use tokio::sync::watch;

/// Listens for the stop request. Cloned freely: every clone sees it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    notify: watch::Receiver<bool>,
}

/// Requests the stop of every [`Shutdown`] of its [`channel`].
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// A [`Shutdown`] and the [`Trigger`] that fires it.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown { notify: rx })
}

impl Trigger {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Stops on SIGTERM or SIGINT. Call it inside the runtime; only the
    /// commands that stop cleanly should, since it replaces the default
    /// action of both signals (ending the process).
    pub fn on_signal() -> Shutdown {
        let (trigger, shutdown) = channel();
        tokio::spawn(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!(
                "stop requested: finishing the work in progress (a run: its page; the key API: its requests)"
            );
            trigger.shutdown();
        });
        shutdown
    }

    /// A stop that never comes (the commands that keep the default signals).
    pub fn never() -> Shutdown {
        channel().1
    }

    /// Whether the stop was requested.
    pub fn is_shutdown(&self) -> bool {
        *self.notify.borrow()
    }

    /// Waits for the stop request; returns at once if it came already,
    /// never if it cannot come any more (its trigger is gone).
    pub async fn recv(&mut self) {
        while !*self.notify.borrow_and_update() {
            if self.notify.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_trigger_reaches_every_clone() {
        let (trigger, mut shutdown) = channel();
        let clone = shutdown.clone();
        assert!(!shutdown.is_shutdown());
        trigger.shutdown();
        tokio::time::timeout(Duration::from_secs(5), shutdown.recv())
            .await
            .expect("recv returns once triggered");
        assert!(shutdown.is_shutdown() && clone.is_shutdown());
        // Asked again, it still answers at once.
        tokio::time::timeout(Duration::from_secs(5), shutdown.recv())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn without_a_trigger_it_never_comes() {
        let mut shutdown = Shutdown::never();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), shutdown.recv())
                .await
                .is_err()
        );
        assert!(!shutdown.is_shutdown());
    }
}
