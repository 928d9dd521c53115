//! Delivering the email outbox after a commit (licensing-rules §6): claim
//! due rows (a lease, `SKIP LOCKED`), render and send each through the
//! configured transport, then mark it sent, or record the error and the next
//! attempt with capped exponential backoff, or give it up as `failed`.
//!
//! The claim counts the attempt before anything is sent, so an attempt whose
//! sender died mid-way still counts: a crash between "server accepted" and
//! "marked sent" repeats the message once, with the same Message-ID, after
//! the lease; a message that kills its sender every time is given up after
//! `max_attempts` like any other. Every outcome but "sent" is recorded only
//! while this sender's claim is the row's latest (the store fences it), so a
//! sender whose lease ran out cannot undo what the next one recorded.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::domain::EmailKind;
use crate::mail::{Delivery, LicenseEmail, MailService, MailUrl};
use crate::store::{OutboxJob, Store, blocking};

/// How long a claimed row is left alone before another sender may take it:
/// longer than any SMTP exchange, short enough to retry after a crash.
pub const CLAIM_LEASE: Duration = Duration::from_secs(10 * 60);
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(6 * 60 * 60);
/// Rows claimed at once by the `none` transport. It sends nothing, so a
/// batch cannot outlive its lease; a sending transport claims one row at a
/// time, so that the lease covers one SMTP exchange however slow the server
/// was with the rows before it.
const QUEUE_ONLY_BATCH: i64 = 50;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryCounts {
    pub sent: usize,
    /// Transport `none`: left pending, not sent.
    pub queued: usize,
    /// Failed this time, retried later.
    pub retrying: usize,
    /// Given up: permanent error or attempts exhausted.
    pub failed: usize,
    /// Pending rows found without a usable address, now `no_recipient`.
    pub no_recipient: usize,
}

/// Backoff after `attempts` failed attempts: 1 min, 2 min, 4 min, ... capped at 6 h.
pub fn retry_delay(attempts: i32) -> Duration {
    let exp = attempts.saturating_sub(1).clamp(0, 20) as u32;
    FIRST_RETRY.saturating_mul(2u32.saturating_pow(exp)).min(MAX_RETRY)
}

/// The email one claimed row asks for, or `None` when the row has no
/// usable recipient (none, or blank).
pub fn license_email(job: &OutboxJob) -> Option<LicenseEmail> {
    let l = &job.license;
    let to_email = job.outbox.recipient.as_deref().filter(|r| !r.trim().is_empty())?;
    Some(LicenseEmail {
        outbox_id: job.outbox.id,
        to_email: to_email.to_owned(),
        to_name: l.customer_name.clone(),
        license_key: l.key.clone(),
        product_ids: l.product_ids.clone(),
        product_name: l.product_name.clone(),
        quantity: l.quantity,
        ip_limit: l.ip_limit,
        hwid_limit: l.hwid_limit,
        expires_at: l.expires_at,
        expiration_days: l.expiration_days,
        expiration_start: l.expiration_start,
        resend: job.outbox.kind.starts_with("resend"),
        reissued: EmailKind::of(&job.outbox.kind) == Some(EmailKind::KeyReissued),
        subscription: l.stripe_subscription_id.is_some(),
    })
}

/// Sends every email due at `now`, each at most once per call. A permanent
/// failure of one email never stops the others; a transient one ends the
/// pass (the server is likely down), so an outage costs one attempt per run
/// instead of one per email. Only database errors are returned.
///
/// `now` is the clock at the start of the call (tests pass a later one to
/// step over leases and backoff). Leases and retry times follow the wall
/// time spent since, so that a long pass never hands out a lease that has
/// already run out.
pub async fn deliver_due(
    store: &Store,
    mail: &MailService,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Result<DeliveryCounts> {
    let started = Instant::now();
    let clock = move || now + chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
    let lease = chrono::Duration::from_std(CLAIM_LEASE).expect("the lease fits a chrono duration");
    let batch = if matches!(mail.settings().url, MailUrl::None) {
        QUEUE_ONLY_BATCH
    } else {
        1
    };
    let sender = Sender {
        store,
        mail,
        max_attempts: i32::try_from(max_attempts).unwrap_or(i32::MAX),
    };
    // Alive until this call returns: were the process to die mid-pass, the
    // rows it claimed would be due again at once for the next sender.
    let session_store = store.clone();
    let session = blocking(move || session_store.sender_session()).await?;
    let sender_id = session.id();
    let mut counts = DeliveryCounts::default();
    // Keyset over the ids: a row handed back as due (`none`) or retried
    // within this call's clock is not taken again by the same call.
    let mut after_id = 0;
    loop {
        let claimed_at = clock();
        let claim_store = store.clone();
        let jobs = blocking(move || {
            claim_store.claim_due_emails_after(sender_id, after_id, claimed_at, claimed_at + lease, batch)
        })
        .await?;
        let Some(last) = jobs.last() else {
            return Ok(counts);
        };
        after_id = last.outbox.id;
        for job in &jobs {
            let retrying = counts.retrying;
            sender.deliver(job, clock(), &mut counts).await?;
            if counts.retrying > retrying {
                // A transient failure is most often the server itself (down,
                // refusing, wrong password): stop this pass so the rows behind
                // it are not each charged an attempt. They are due again at the
                // next run; the failed row waits out its backoff.
                return Ok(counts);
            }
        }
    }
}

struct Sender<'a> {
    store: &'a Store,
    mail: &'a MailService,
    max_attempts: i32,
}

impl Sender<'_> {
    /// One claimed row, from rendering to its recorded outcome.
    async fn deliver(&self, job: &OutboxJob, now: DateTime<Utc>, counts: &mut DeliveryCounts) -> Result<()> {
        let (id, attempt) = (job.outbox.id, job.outbox.attempts);
        let store = self.store.clone();
        let Some(email) = license_email(job) else {
            tracing::warn!(
                outbox_id = id,
                "license email without a recipient address; nothing to send"
            );
            if blocking(move || store.mark_email_no_recipient(id, attempt)).await? {
                counts.no_recipient += 1;
            }
            return Ok(());
        };
        if attempt > self.max_attempts {
            // Failures give up at `max_attempts`, so the attempts beyond it
            // ended without an outcome: their sender stopped mid-way.
            let message = format!(
                "outbox row {id}: given up after {} attempts; the last ended before its outcome was recorded \
                 (the sender stopped), so the message may have arrived",
                attempt - 1
            );
            tracing::warn!(outbox_id = id, attempts = attempt - 1, "license email given up");
            if blocking(move || store.mark_email_failed(id, attempt, &message, None)).await? {
                counts.failed += 1;
            }
            return Ok(());
        }
        match self.mail.send(&email).await {
            Ok(Delivery::Sent) => {
                blocking(move || store.mark_email_sent(id)).await?;
                counts.sent += 1;
            }
            Ok(Delivery::Queued) => {
                // Not sent: give the attempt back so it is retried when a transport is configured.
                if blocking(move || store.release_email(id, attempt)).await? {
                    counts.queued += 1;
                }
            }
            Err(e) => {
                let give_up = e.permanent || attempt >= self.max_attempts;
                let retry_at = (!give_up).then(|| {
                    now + chrono::Duration::from_std(retry_delay(attempt)).expect("the backoff fits a chrono duration")
                });
                tracing::warn!(outbox_id = id, attempts = attempt, give_up, error = %e.message, "license email not delivered");
                let message = e.message;
                let recorded = blocking(move || store.mark_email_failed(id, attempt, &message, retry_at)).await?;
                match (recorded, give_up) {
                    (false, _) => {
                        tracing::info!(outbox_id = id, "another sender took the email over; its outcome stands")
                    }
                    (true, true) => counts.failed += 1,
                    (true, false) => counts.retrying += 1,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_kinds_read_back_from_their_column() {
        for (kind, n, column) in [
            (EmailKind::LicenseIssued, 1, "license_issued"),
            (EmailKind::Resend, 2, "resend:2"),
            (EmailKind::KeyReissued, 3, "key_reissued:3"),
        ] {
            assert_eq!(kind.column(n), column);
            assert_eq!(EmailKind::of(column), Some(kind));
        }
        for unknown in ["key_reissued", "license_issued:1", "welcome", ""] {
            assert_eq!(EmailKind::of(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn retries_back_off_exponentially_up_to_six_hours() {
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(2), Duration::from_secs(120));
        assert_eq!(retry_delay(4), Duration::from_secs(480));
        assert_eq!(retry_delay(30), MAX_RETRY);
    }
}
