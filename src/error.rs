//! The failures whose kind decides the exit code (cli.md "Exit codes").
//! Everything else is an `anyhow::Error` and means "the run failed" (1).

use std::process::ExitCode;

use crate::stripe::StripeError;

/// A failure the caller branches on to pick the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Usage or configuration error: bad flag, missing key, malformed cron
    /// expression, mode mismatch, no PostgreSQL binaries (exit 2).
    #[error(transparent)]
    Usage(anyhow::Error),
    /// Another run holds the lock; nothing was done (exit 75, EX_TEMPFAIL).
    #[error("{0}")]
    Locked(String),
}

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_LOCKED: u8 = 75;

/// The exit code of an error chain, the one place an error becomes one:
/// the first `Failure` in it decides; a command line clap rejects is a
/// usage error (its help and version are not errors: 0); a key Stripe
/// rejects is a configuration error (fix STRIPE_API_KEY), not a failed run
/// that retrying would fix.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    ExitCode::from(exit_status(error))
}

/// [`exit_code`] as a number, for callers that branch on it (the daemon
/// stops on a configuration error instead of retrying it every tick).
pub fn exit_status(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(|e| {
            if let Some(e) = e.downcast_ref::<clap::Error>() {
                return Some(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
            }
            if let Some(f) = e.downcast_ref::<Failure>() {
                return Some(match f {
                    Failure::Usage(_) => EXIT_USAGE,
                    Failure::Locked(_) => EXIT_LOCKED,
                });
            }
            matches!(e.downcast_ref::<StripeError>(), Some(StripeError::Auth { .. })).then_some(EXIT_USAGE)
        })
        .unwrap_or(EXIT_FAILED)
}

/// Marks an error as a usage/configuration error (exit 2).
pub fn usage(error: impl Into<anyhow::Error>) -> anyhow::Error {
    Failure::Usage(error.into()).into()
}
