//! What comes after one account's run, decided in one place, as kube-rs's
//! controllers do with `reconcile -> Action` and a single `error_policy`:
//! the fleet, the `reconcile` command and the daemon all branch on the
//! [`Action`] of an [`Outcome`], never on an error's type of their own.

use super::Report;
use crate::error::{EXIT_LOCKED, EXIT_USAGE, exit_status};

/// What the scheduler of a run does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconciled: the next tick runs again.
    Requeue,
    /// Failed part-way or before it began, in a way the next tick may not
    /// repeat (Stripe or the database down, a lost lock): committed pages
    /// stay, and the next tick converges.
    Retry,
    /// Another run holds the account's lock and reconciles it; nothing was
    /// done here.
    Locked,
    /// Stopped by SIGTERM/SIGINT between pages: stop scheduling.
    Stop,
    /// Every tick would fail the same way (a mode mismatch, a key Stripe
    /// rejects, a configuration error): stop until someone fixes it.
    Refuse,
}

/// The one mapping from an error that ended a run to what comes next.
pub fn error_policy(error: &anyhow::Error) -> Action {
    if error.chain().any(|c| c.is::<Interrupted>()) {
        return Action::Stop;
    }
    match exit_status(error) {
        EXIT_LOCKED => Action::Locked,
        EXIT_USAGE => Action::Refuse,
        _ => Action::Retry,
    }
}

/// Raised when SIGTERM/SIGINT asked the run to stop between pages.
#[derive(Debug, thiserror::Error)]
#[error("stopped by a signal after the page in progress; committed pages stay, the next run converges")]
pub struct Interrupted;

/// How one account's run ended.
#[derive(Debug)]
pub struct Outcome {
    /// What the run did; `None` when it was refused before it read anything
    /// (locked, a mode mismatch, a configuration error).
    pub report: Option<Report>,
    /// Why it did not succeed.
    pub error: Option<anyhow::Error>,
    pub action: Action,
}

impl Outcome {
    /// From what a run returned: its report (if it got that far) and its result.
    pub fn of(report: Option<Report>, result: anyhow::Result<()>) -> Outcome {
        match result {
            Ok(()) => Outcome {
                report,
                error: None,
                action: Action::Requeue,
            },
            Err(error) => Outcome {
                report,
                action: error_policy(&error),
                error: Some(error),
            },
        }
    }

    /// The result the exit code is taken from.
    pub fn into_result(self) -> (Option<Report>, anyhow::Result<()>) {
        (self.report, self.error.map_or(Ok(()), Err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Failure, usage};
    use crate::stripe::StripeError;

    #[test]
    fn each_error_has_one_next_step() {
        let table: Vec<(anyhow::Error, Action)> = vec![
            (anyhow::anyhow!("connection refused"), Action::Retry),
            (anyhow::Error::new(Interrupted).context("page 3"), Action::Stop),
            (Failure::Locked("held".into()).into(), Action::Locked),
            (usage(anyhow::anyhow!("mode mismatch")), Action::Refuse),
            (
                anyhow::Error::new(StripeError::Auth {
                    key: "rk_test_…abcd".into(),
                    method: "GET".into(),
                    path: "/v1/products".into(),
                    status: 401,
                    request_id: None,
                    message: "bad key".into(),
                }),
                Action::Refuse,
            ),
        ];
        for (error, action) in table {
            assert_eq!(error_policy(&error), action, "{error:#}");
        }
        assert_eq!(Outcome::of(None, Ok(())).action, Action::Requeue);
    }
}
