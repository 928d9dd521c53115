//! Delivering the email outbox after a commit (licensing-rules §6): claim
//! due rows (a lease, `SKIP LOCKED`), render and send each through the
//! configured transport, then mark it sent, or record the error and the next
//! attempt with capped exponential backoff, or give it up as `failed`.

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::mail::{Delivery, LicenseEmail, MailService};
use crate::store::{OutboxJob, Store};

/// How long a claimed row is left alone before another sender may take it:
/// longer than any SMTP exchange, short enough to retry after a crash.
pub const CLAIM_LEASE: Duration = Duration::from_secs(10 * 60);
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(6 * 60 * 60);
const BATCH: i64 = 50;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryCounts {
    pub sent: usize,
    /// Transport `none`: left pending, not sent.
    pub queued: usize,
    /// Failed this time, retried later.
    pub retrying: usize,
    /// Given up: permanent error or attempts exhausted.
    pub failed: usize,
}

/// Backoff after `attempts` failed attempts: 1 min, 2 min, 4 min, ... capped at 6 h.
pub fn retry_delay(attempts: i32) -> Duration {
    let exp = attempts.saturating_sub(1).clamp(0, 20) as u32;
    FIRST_RETRY.saturating_mul(2u32.saturating_pow(exp)).min(MAX_RETRY)
}

fn email_for(job: &OutboxJob) -> Option<LicenseEmail> {
    let l = &job.license;
    Some(LicenseEmail {
        outbox_id: job.outbox.id,
        to_email: job.outbox.recipient.clone()?,
        to_name: l.customer_name.clone(),
        license_key: l.key.clone(),
        product_ids: l.product_ids.clone(),
        // The license stores product ids only; the templates show ids when names are missing.
        product_names: Vec::new(),
        quantity: l.quantity,
        ip_limit: l.ip_limit,
        hwid_limit: l.hwid_limit,
        expires_at: l.expires_at,
        expiration_days: l.expiration_days,
        expiration_start: l.expiration_start,
        resend: job.outbox.kind.starts_with("resend"),
    })
}

/// Sends every email due at `now`; a failure of one email never stops the
/// others, and only database errors are returned.
pub async fn deliver_due(
    store: &Store,
    mail: &MailService,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Result<DeliveryCounts> {
    let mut counts = DeliveryCounts::default();
    let lease_until = now + chrono::Duration::from_std(CLAIM_LEASE).expect("lease fits");
    loop {
        let (claim_store, batch_now) = (store.clone(), now);
        let jobs =
            tokio::task::spawn_blocking(move || claim_store.claim_due_emails(batch_now, lease_until, BATCH)).await??;
        if jobs.is_empty() {
            return Ok(counts);
        }
        for job in jobs {
            let Some(email) = email_for(&job) else { continue };
            let outcome = mail.send(&email).await;
            let store = store.clone();
            let id = job.outbox.id;
            let attempts = job.outbox.attempts;
            match outcome {
                Ok(Delivery::Sent) => {
                    tokio::task::spawn_blocking(move || store.mark_email_sent(id)).await??;
                    counts.sent += 1;
                }
                Ok(Delivery::Queued) => {
                    // Not sent: give the attempt back so it is retried when a transport is configured.
                    tokio::task::spawn_blocking(move || store.release_email(id)).await??;
                    counts.queued += 1;
                }
                Err(e) => {
                    let give_up = e.permanent || attempts >= max_attempts as i32;
                    let retry_at = (!give_up)
                        .then(|| now + chrono::Duration::from_std(retry_delay(attempts)).expect("delay fits"));
                    tracing::warn!(outbox_id = id, attempts, give_up, error = %e.message, "license email not delivered");
                    let message = e.message.clone();
                    tokio::task::spawn_blocking(move || store.mark_email_failed(id, &message, retry_at)).await??;
                    if give_up {
                        counts.failed += 1;
                    } else {
                        counts.retrying += 1;
                    }
                }
            }
        }
        if counts.queued > 0 {
            // The `none` transport leaves rows pending and due: do not claim them again in this call.
            return Ok(counts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_six_hours() {
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(2), Duration::from_secs(120));
        assert_eq!(retry_delay(4), Duration::from_secs(480));
        assert_eq!(retry_delay(30), MAX_RETRY);
    }
}
