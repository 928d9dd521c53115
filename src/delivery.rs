//! Delivering the email outbox after a commit (licensing-rules §6): claim
//! due rows in batches (a lease, `SKIP LOCKED`), render and send them
//! through the configured transport with a bounded number in flight, then
//! record the outcomes in batches: sent, or the error and the next attempt
//! with capped exponential backoff, or given up as `failed`.
//!
//! The claim counts the attempt before anything is sent, so an attempt whose
//! sender died mid-way still counts: a crash between "server accepted" and
//! "marked sent" repeats the message once, with the same Message-ID, after
//! the lease (at once when the sender's session is gone); a message that
//! kills its sender every time is given up after `max_attempts` like any
//! other. Outcomes are recorded while sending goes on, one statement at a
//! time, as soon as [`FLUSH_ROWS`] wait or the oldest has waited
//! [`FLUSH_AFTER`]: that bounds what a killed sender repeats.
//! Every outcome but "sent" is recorded only while this sender's claim is
//! the row's latest (the store fences each row by its attempt), so a sender
//! whose lease ran out cannot undo what the next one recorded.
//!
//! A batch is claimed under one lease, so a message is started only during
//! the lease's first half: each exchange then has at least half the lease
//! to finish, however slow the server was with the rows before it. Rows
//! not started by then (or when a transient failure stops the pass) are
//! handed back uncharged.

mod pending;
mod queued;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use crate::domain::EmailKind;
use crate::mail::{Delivery, LicenseEmail, MailService, SendError};
use crate::store::{OutboxJob, Outcome, Store, blocking};
use pending::{Marks, Pending, Recording, Tally};
pub use queued::{GATHER, Queued};

/// How long a claimed row is left alone before another sender may take it:
/// longer than any SMTP exchange, short enough to retry after a crash.
pub const CLAIM_LEASE: Duration = Duration::from_secs(10 * 60);
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(6 * 60 * 60);
/// Rows one claim takes (one statement claims them all). Each is charged an
/// attempt by the claim, so a sender killed mid-batch charges the rows it
/// never started too; they are due again at once (its session is gone).
pub const CLAIM_BATCH: i64 = 500;
/// Outcomes are recorded (one statement, while sending goes on) once this
/// many are waiting...
pub const FLUSH_ROWS: usize = 32;
/// ... or once the oldest has waited this long. Together they bound what a
/// sender killed mid-batch leaves sent and not marked (plus the messages
/// in flight and those of the statement under way), each sent again with
/// the same Message-ID, while keeping the statements per email well under
/// one for any transport fast enough for it to matter.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

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
        to_name: l.state.customer_name.clone(),
        license_key: l.key.clone(),
        product_ids: l.state.product_ids.clone(),
        product_name: l.state.product_name.clone(),
        quantity: l.state.quantity,
        ip_limit: l.state.ip_limit,
        hwid_limit: l.state.hwid_limit,
        expires_at: l.state.expires_at,
        expiration_days: l.state.expiration_days,
        expiration_start: l.state.expiration_start,
        resend: job.outbox.kind.email() == Some(EmailKind::Resend),
        reissued: job.outbox.kind.email() == Some(EmailKind::KeyReissued),
        subscription: l.state.stripe_subscription_id.is_some(),
    })
}

/// Sends every email due at `now`, each at most once per call, up to
/// [`MailService::concurrency`] at a time. A permanent failure of one email
/// never stops the others; a transient one ends the pass (the server is
/// likely down), so an outage costs one attempt per run instead of one per
/// email: the pass claims and sends one message alone until one has gone
/// through, and only then claims [`CLAIM_BATCH`] rows at a time and sends
/// as many at once as the transport allows. Only database errors are
/// returned.
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
    deliver(store, mail, max_attempts, now, None).await
}

/// [`deliver_due`] beside a reconcile run, so that a buyer's key goes out
/// as its page commits and not after the whole account was read: whenever
/// nothing is due, the pass waits for the run's next [`Queued::committed`]
/// instead of ending. It is one pass all along, so a transient failure
/// ends it for the rest of the run and an outage still costs one attempt
/// per run. Once nothing is due after [`Queued::over`], it sweeps the
/// outbox once more from its first row, as a pass after the run would, and
/// ends: a row it could not take while the run went on is sent then (one
/// still claimed by the sender of a run killed just before, whose session
/// the database had not seen end yet).
pub async fn deliver_during(
    store: &Store,
    mail: &MailService,
    max_attempts: u32,
    now: DateTime<Utc>,
    queued: &Queued,
) -> Result<DeliveryCounts> {
    deliver(store, mail, max_attempts, now, Some(queued)).await
}

async fn deliver(
    store: &Store,
    mail: &MailService,
    max_attempts: u32,
    now: DateTime<Utc>,
    queued: Option<&Queued>,
) -> Result<DeliveryCounts> {
    // `now` is this instant: the pass's clock runs from here, not from
    // when the sender's session was open.
    let started = Instant::now();
    let lease = chrono::Duration::from_std(CLAIM_LEASE).expect("the lease fits a chrono duration");
    // Alive until this call returns: were the process to die mid-pass, the
    // rows it claimed would be due again at once for the next sender.
    let session_store = store.clone();
    let session = blocking(move || session_store.sender_session()).await?;
    let sender_id = session.id();
    let mut pass = Pass {
        store,
        mail,
        max_attempts: i32::try_from(max_attempts).unwrap_or(i32::MAX),
        width: mail.concurrency().max(1),
        proven: false,
        now,
        started,
        counts: DeliveryCounts::default(),
    };
    // Keyset over the ids: a row handed back as due (`none`) or retried
    // within this call's clock is not taken again by the same call. Beside
    // a run, the run's pages commit one after another, so the ids of the
    // rows each queues are above those of every row committed before it.
    let mut after_id = 0;
    // The sweep from the first row that ends every pass.
    let mut sweeping = queued.is_none();
    loop {
        // Read before the claim: a claim that finds nothing after the run
        // was over has seen every row the run committed.
        let last_call = queued.is_none_or(Queued::is_over);
        let claimed_at = pass.clock();
        let start_by = Instant::now() + CLAIM_LEASE / 2;
        // Until a message has gone through, claim only the one about to be
        // tried: a claim charges every row it takes an attempt, and a sender
        // that hangs on (or is killed during) its first message must not
        // have charged the rows it would never have sent.
        let limit = if pass.proven { CLAIM_BATCH } else { 1 };
        let claim_store = store.clone();
        let jobs = blocking(move || {
            claim_store.claim_due_emails_after(sender_id, after_id, claimed_at, claimed_at + lease, limit)
        })
        .await?;
        let Some(last) = jobs.last() else {
            match queued {
                Some(queued) if !last_call => {
                    queued.next_pages().await;
                    continue;
                }
                _ if !sweeping => {
                    sweeping = true;
                    after_id = 0;
                    continue;
                }
                _ => return Ok(pass.counts),
            }
        };
        let last_id = last.outbox.id;
        match pass.batch(jobs, start_by).await? {
            Next::Continue => after_id = last_id,
            // Handed back unstarted from here on: claimed again, under a new lease.
            Next::ResumeBefore(id) => after_id = id - 1,
            Next::Stop => return Ok(pass.counts),
        }
    }
}

/// What the pass does after a batch.
enum Next {
    Continue,
    /// The lease's first half ran out; the rows from this id on were handed back.
    ResumeBefore(i64),
    /// A transient failure: the server is likely down, try again next run.
    Stop,
}

/// One message in flight.
struct Sending {
    outbox_id: i64,
    attempt: i32,
    result: Result<Delivery, SendError>,
}

struct Pass<'a> {
    store: &'a Store,
    mail: &'a MailService,
    max_attempts: i32,
    /// Messages in flight at most, once one went through.
    width: usize,
    /// Whether a message went through in this pass (until then one at a time).
    proven: bool,
    now: DateTime<Utc>,
    started: Instant,
    counts: DeliveryCounts,
}

impl Pass<'_> {
    /// `now` advanced by the time this pass has taken.
    fn clock(&self) -> DateTime<Utc> {
        self.now + chrono::Duration::from_std(self.started.elapsed()).unwrap_or_default()
    }

    /// One claimed batch, from rendering to its recorded outcomes.
    async fn batch(&mut self, jobs: Vec<OutboxJob>, start_by: Instant) -> Result<Next> {
        let mut pending = Pending::default();
        let mut to_send = VecDeque::with_capacity(jobs.len());
        for job in &jobs {
            let (id, attempt) = (job.outbox.id, job.outbox.attempts);
            match license_email(job) {
                None => {
                    tracing::warn!(
                        outbox_id = id,
                        "license email without a recipient address; nothing to send"
                    );
                    pending.push(id, attempt, Outcome::NoRecipient, Tally::NoRecipient);
                }
                Some(_) if attempt > self.max_attempts => {
                    // Failures give up at `max_attempts`, so the attempts beyond it
                    // ended without an outcome: their sender stopped mid-way.
                    let error = format!(
                        "outbox row {id}: given up after {} attempts; the last ended before its outcome was recorded \
                         (the sender stopped), so the message may have arrived",
                        attempt - 1
                    );
                    tracing::warn!(outbox_id = id, attempts = attempt - 1, "license email given up");
                    pending.push(id, attempt, Outcome::Failed { error }, Tally::Failed);
                }
                Some(email) => to_send.push_back((id, attempt, email)),
            }
        }
        drop(jobs);

        let mut in_flight: JoinSet<Sending> = JoinSet::new();
        let mut recording = Recording::default();
        let mut next = Next::Continue;
        let mut panicked = None;
        loop {
            let width = if self.proven { self.width } else { 1 };
            while matches!(next, Next::Continue) && in_flight.len() < width {
                let Some(&(first_left, ..)) = to_send.front() else {
                    break;
                };
                if Instant::now() >= start_by {
                    tracing::info!(
                        outbox_id = first_left,
                        "half the claim's lease has gone by; handing the rest of the batch back to claim it anew"
                    );
                    next = Next::ResumeBefore(first_left);
                    break;
                }
                let (outbox_id, attempt, email) = to_send.pop_front().expect("a row is left");
                let mail = self.mail.clone();
                in_flight.spawn(async move {
                    let result = mail.send(&email).await;
                    Sending {
                        outbox_id,
                        attempt,
                        result,
                    }
                });
            }
            if in_flight.is_empty() {
                break;
            }
            // Sends go on while outcomes are recorded: one statement in
            // progress at a time, the next one started as soon as enough
            // outcomes wait.
            let deadline = pending.deadline().filter(|_| !recording.busy());
            tokio::select! {
                done = in_flight.join_next() => match done {
                    Some(Ok(sending)) => {
                        if self.outcome(sending, &mut pending) {
                            // A transient failure is most often the server itself (down,
                            // refusing, wrong password): start nothing more, so the rows
                            // behind it are not each charged an attempt. They are due
                            // again at the next run; the failed row waits out its backoff.
                            next = Next::Stop;
                        }
                    }
                    Some(Err(e)) if e.is_panic() => {
                        // Its row stays claimed, like a crash's; the others are recorded first.
                        next = Next::Stop;
                        panicked.get_or_insert(e.into_panic());
                    }
                    Some(Err(_)) | None => {}
                },
                recorded = recording.finished(), if recording.busy() => self.count(recorded?),
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {}
            }
            if !recording.busy() && pending.due() {
                recording.start(self.store, &mut pending);
            }
        }
        if recording.busy() {
            let recorded = recording.finished().await?;
            self.count(recorded);
        }
        // Never started: handed back untouched, not charged, due again.
        for (outbox_id, attempt, _) in to_send {
            pending.push(outbox_id, attempt, Outcome::Released, Tally::Nothing);
        }
        recording.start(self.store, &mut pending);
        if recording.busy() {
            let recorded = recording.finished().await?;
            self.count(recorded);
        }
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        Ok(next)
    }

    /// Queues the outcome of one message; true for a failure worth retrying.
    fn outcome(&mut self, sending: Sending, pending: &mut Pending) -> bool {
        let Sending {
            outbox_id: id,
            attempt,
            result,
        } = sending;
        match result {
            Ok(Delivery::Sent) => {
                self.proven = true;
                pending.push(id, attempt, Outcome::Sent, Tally::Sent);
                false
            }
            Ok(Delivery::Queued) => {
                // Not sent: give the attempt back so it is retried when a transport is configured.
                self.proven = true;
                pending.push(id, attempt, Outcome::Released, Tally::Queued);
                false
            }
            Err(e) => {
                let give_up = e.permanent || attempt >= self.max_attempts;
                tracing::warn!(outbox_id = id, attempts = attempt, give_up, error = %e.message, "license email not delivered");
                let error = e.message;
                if give_up {
                    pending.push(id, attempt, Outcome::Failed { error }, Tally::Failed);
                } else {
                    let at = self.clock()
                        + chrono::Duration::from_std(retry_delay(attempt)).expect("the backoff fits a chrono duration");
                    pending.push(id, attempt, Outcome::Retry { error, at }, Tally::Retrying);
                }
                !give_up
            }
        }
    }

    /// Counts the outcomes that one recording statement held.
    fn count(&mut self, (marks, recorded): (Marks, HashSet<i64>)) {
        for (mark, tally) in &marks {
            if !recorded.contains(&mark.outbox_id) {
                if !matches!(tally, Tally::Nothing) {
                    tracing::info!(
                        outbox_id = mark.outbox_id,
                        "another sender took the email over; its outcome stands"
                    );
                }
                continue;
            }
            match tally {
                Tally::Sent => self.counts.sent += 1,
                Tally::Queued => self.counts.queued += 1,
                Tally::Retrying => self.counts.retrying += 1,
                Tally::Failed => self.counts.failed += 1,
                Tally::NoRecipient => self.counts.no_recipient += 1,
                Tally::Nothing => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_kinds_read_back_from_their_column() {
        use crate::domain::OutboxKind;
        for (kind, n, column) in [
            (EmailKind::LicenseIssued, 1, "license_issued"),
            (EmailKind::Resend, 2, "resend:2"),
            (EmailKind::KeyReissued, 3, "key_reissued:3"),
        ] {
            assert_eq!(OutboxKind::new(kind, n).to_string(), column);
            assert_eq!(column.parse::<OutboxKind>().unwrap(), OutboxKind::new(kind, n));
        }
        for unknown in ["key_reissued", "license_issued:1", "resend:x", "welcome", ""] {
            let kind: OutboxKind = unknown.parse().unwrap();
            assert_eq!(kind, OutboxKind::Unknown(unknown.to_owned()));
            assert_eq!(kind.to_string(), unknown, "shown as it is");
        }
        assert_eq!(format!("{:<8}|", OutboxKind::new(EmailKind::Resend, 1)), "resend:1|");
        assert_eq!(
            format!("{:<16}|", OutboxKind::new(EmailKind::Resend, 1)),
            "resend:1        |"
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_six_hours() {
        assert_eq!(retry_delay(1), Duration::from_secs(60));
        assert_eq!(retry_delay(2), Duration::from_secs(120));
        assert_eq!(retry_delay(4), Duration::from_secs(480));
        assert_eq!(retry_delay(30), MAX_RETRY);
    }
}
