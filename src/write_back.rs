//! Sending the write-back queue (`--stripe-write-back`) after a run's pages
//! committed: each queued Stripe object gets its licenses' keys as metadata
//! (`domain::metadata_for`), through the run's own Stripe client, so the
//! writes share its rate ceiling and its `Stripe-Account` header.
//!
//! A write never fails a run, and never holds one up for long:
//! - skipped, with no request, when Stripe already confirmed the same
//!   metadata (a rerun, or a line whose purchase was written already);
//! - the idempotency key is a hash of the account, the object and the
//!   metadata, so a write repeated after a crash (sent, not yet recorded)
//!   is answered by Stripe from the first one instead of made twice;
//! - the first write of a pass goes alone; a failure that another attempt
//!   may get past (network, 5xx, 429 after the transport's own retries)
//!   ends the pass and the write is retried by a later run with backoff, so
//!   an outage costs one attempt per run, not one per write;
//! - a key without write permission (401/403) ends the pass with one message
//!   naming the permission to grant; every write stays queued for the run
//!   after the permission is granted;
//! - any other refusal (the object is gone, its metadata is full) marks
//!   that write `refused`, logged, and the others go on;
//! - a pass starts no write after [`PASS_BUDGET`]: a first import of a large
//!   account spreads its writes over the next runs instead of delaying this
//!   one's end by minutes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use futures::stream::{self, StreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::delivery::retry_delay;
use crate::domain::{WriteTarget, metadata_for};
use crate::store::{Store, StripeWriteJob, WriteOutcome, blocking};
use crate::stripe::{StripeError, StripeSource};

/// A pass starts no write after this long.
pub const PASS_BUDGET: Duration = Duration::from_secs(60);
/// Rows read from the queue at a time.
const BATCH: i64 = 100;
/// Writes in flight at once, once the first of the pass went through; the
/// transport's rate ceiling paces them.
const IN_FLIGHT: usize = 8;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WriteBackCounts {
    /// Objects Stripe now shows the keys on.
    pub sent: usize,
    /// Objects that already showed them: no request made.
    pub unchanged: usize,
    /// Writes that failed this time and are retried by a later run.
    pub retrying: usize,
    /// Writes Stripe refused for good.
    pub refused: usize,
    /// Why the pass stopped writing (the key lacks write permission); the
    /// writes stay queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// One write the queue asks for (a dry run's list), with the metadata it
/// sets; `metadata` is `None` for a license the run would issue (its key
/// does not exist yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedWrite {
    pub target: WriteTarget,
    pub object: String,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// What a job asks Stripe for: its metadata, that metadata as the queue
/// stores it once Stripe holds it, and whether Stripe holds it already (or
/// there is nothing to write: no license left).
struct Wanted {
    metadata: BTreeMap<String, String>,
    value: serde_json::Value,
    held: bool,
}

fn wanted(job: &StripeWriteJob) -> Wanted {
    let metadata = metadata_for(job.row.target_kind, &job.licenses);
    let value = serde_json::to_value(&metadata).expect("a string map serializes");
    let held = metadata.is_empty() || job.row.sent_metadata.as_ref() == Some(&value);
    Wanted { metadata, value, held }
}

/// The same key for the same write of the same account; another for
/// anything else (Stripe refuses a key reused with other parameters).
fn idempotency_key(account_key: &str, job: &StripeWriteJob, metadata: &BTreeMap<String, String>) -> String {
    let mut hash = Sha256::new();
    for part in [account_key, job.row.target_kind.as_ref(), &job.row.target_id] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.update(serde_json::to_vec(metadata).expect("a string map serializes"));
    let digest = hash.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("licensync-write-back-{hex}")
}

/// Stripe's words, without the keys they may quote (a refusal of a value
/// over the limit repeats it): logs and the queue never show a key.
fn without_keys(text: &str, job: &StripeWriteJob) -> String {
    job.licenses
        .iter()
        .fold(text.to_owned(), |text, (_, key)| text.replace(key.as_str(), "[key]"))
}

/// How one attempted write ended: its outcome (a `Retry` ends the pass),
/// or `Err` with why the key may not write at all (the pass ends, and the
/// write is due again at the next run).
fn classify(job: &StripeWriteJob, wanted: Wanted, result: Result<(), StripeError>) -> Result<WriteOutcome, String> {
    let error = match result {
        Ok(()) => return Ok(WriteOutcome::Sent(wanted.value)),
        Err(e) => e,
    };
    let (target, id) = (job.row.target_kind, &job.row.target_id);
    match &error {
        StripeError::Auth {
            status: 401, message, ..
        } => Err(format!(
            "Stripe rejected the API key writing license keys onto {target} {id} (HTTP 401: {}); \
             check STRIPE_API_KEY. The writes stay queued; licenses are not affected",
            without_keys(message, job)
        )),
        StripeError::Auth { status, message, .. } => {
            let (permission, dashboard) = target.permission();
            Err(format!(
                "Stripe refused to write license keys onto {target} {id} (HTTP {status}: {}). \
                 --stripe-write-back needs write permission: grant the restricted key \"{dashboard}\" \
                 ({permission}), and the same for the other objects written (Subscriptions, PaymentIntents, \
                 Invoices), or turn write-back off. The writes stay queued; licenses are not affected",
                without_keys(message, job)
            ))
        }
        StripeError::Api { status, .. } if *status != 429 && (400..500).contains(status) && *status != 409 => {
            Ok(WriteOutcome::Refused(without_keys(&error.to_string(), job)))
        }
        _ => Ok(WriteOutcome::Retry {
            error: without_keys(&error.to_string(), job),
            retry_at: Utc::now()
                + chrono::Duration::from_std(retry_delay(job.row.attempts + 1)).expect("the backoff fits"),
        }),
    }
}

/// What became of one job in a pass.
enum Done {
    /// Stripe held its metadata already: recorded as sent, no request made.
    Held(serde_json::Value),
    /// A request was made: its outcome, or why the key may not write.
    Attempted(Result<WriteOutcome, String>),
}

/// Sends one job, unless Stripe holds its metadata already, or the pass
/// has stopped (`None`: left pending).
async fn send_one(
    source: &StripeSource,
    account_key: &str,
    job: &StripeWriteJob,
    stop: &AtomicBool,
    started: Instant,
) -> Option<Done> {
    let wanted = wanted(job);
    if wanted.held {
        return Some(Done::Held(wanted.value));
    }
    if stop.load(Ordering::Relaxed) || started.elapsed() >= PASS_BUDGET {
        return None;
    }
    let key = idempotency_key(account_key, job, &wanted.metadata);
    let result = source
        .set_metadata(job.row.target_kind, &job.row.target_id, &wanted.metadata, &key)
        .await;
    let outcome = classify(job, wanted, result);
    if matches!(outcome, Err(_) | Ok(WriteOutcome::Retry { .. })) {
        stop.store(true, Ordering::Relaxed);
    }
    Some(Done::Attempted(outcome))
}

/// Sends every write of the store's account that is due, within
/// [`PASS_BUDGET`] (see the module's notes). Only database errors are
/// returned.
pub async fn write_back_due(store: &Store, source: &StripeSource) -> Result<WriteBackCounts> {
    let started = Instant::now();
    let account_key = store.account().unwrap_or("").to_owned();
    let mut counts = WriteBackCounts::default();
    let mut after_id = 0;
    // The first write goes alone (a batch of one): an outage or a missing
    // permission then costs one request.
    let mut batch = 1;
    while started.elapsed() < PASS_BUDGET {
        let batch_store = store.clone();
        let jobs = blocking(move || batch_store.due_stripe_writes(after_id, batch)).await?;
        let Some(last) = jobs.last() else { break };
        after_id = last.row.id;
        let stop = AtomicBool::new(false);
        let done: Vec<(StripeWriteJob, Option<Done>)> = stream::iter(jobs)
            .map(|job| {
                let (stop, account_key) = (&stop, account_key.as_str());
                async move {
                    let done = send_one(source, account_key, &job, stop, started).await;
                    (job, done)
                }
            })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        let mut outcomes = Vec::with_capacity(done.len());
        for (job, done) in done {
            let (target, object) = (job.row.target_kind, &job.row.target_id);
            let (outcome, attempted) = match done {
                None => continue,
                Some(Done::Held(value)) => {
                    counts.unchanged += 1;
                    (WriteOutcome::Sent(value), false)
                }
                Some(Done::Attempted(Err(message))) => {
                    tracing::warn!("{message}");
                    counts.stopped = Some(message.clone());
                    // Due again at once: the next run tries once more, and
                    // `status` shows why it waits.
                    let retry_at = Utc::now();
                    (
                        WriteOutcome::Retry {
                            error: message,
                            retry_at,
                        },
                        true,
                    )
                }
                Some(Done::Attempted(Ok(outcome))) => {
                    match &outcome {
                        WriteOutcome::Sent(_) => counts.sent += 1,
                        WriteOutcome::Refused(error) => {
                            tracing::warn!(%target, %object, %error, "Stripe refused to write license keys onto this object; not retried");
                            counts.refused += 1;
                        }
                        WriteOutcome::Retry { error, .. } => {
                            tracing::warn!(%target, %object, %error, "could not write license keys onto this object; a later run retries");
                            counts.retrying += 1;
                        }
                    }
                    (outcome, true)
                }
            };
            outcomes.push((job.row.id, outcome, attempted));
        }
        let record_store = store.clone();
        blocking(move || record_store.record_stripe_writes(&outcomes)).await?;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        batch = BATCH;
    }
    Ok(counts)
}

/// What a pass would send now (a dry run's list), at most `limit`.
pub fn planned_writes(store: &Store, limit: usize) -> Result<Vec<PlannedWrite>> {
    let jobs = store.due_stripe_writes(0, i64::try_from(limit).unwrap_or(i64::MAX))?;
    Ok(jobs
        .iter()
        .filter_map(|job| {
            let wanted = wanted(job);
            (!wanted.held).then(|| PlannedWrite {
                target: job.row.target_kind,
                object: job.row.target_id.clone(),
                metadata: Some(wanted.metadata),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SourceKind, WriteStatus};
    use crate::store::StripeWriteRow;

    fn job(sent: Option<serde_json::Value>) -> StripeWriteJob {
        StripeWriteJob {
            row: StripeWriteRow {
                id: 1,
                account_key: String::new(),
                target_kind: WriteTarget::PaymentIntent,
                target_id: "pi_1".into(),
                source_kind: SourceKind::CheckoutLine,
                purchase: "cs_1".into(),
                status: WriteStatus::Pending,
                sent_metadata: sent,
                attempts: 0,
                last_error: None,
                next_attempt_at: Utc::now(),
                sent_at: None,
            },
            licenses: vec![(7, "AAAAA-BBBBB-CCCCC-DDDDD-EEEEE".into())],
        }
    }

    #[test]
    fn a_write_stripe_confirmed_is_not_sent_again() {
        let fresh = wanted(&job(None));
        assert!(!fresh.held, "never written: sent");
        let confirmed = job(Some(serde_json::to_value(&fresh.metadata).unwrap()));
        assert!(wanted(&confirmed).held);
        let mut reissued = confirmed.clone();
        reissued.licenses[0].1 = "NEWKY-BBBBB-CCCCC-DDDDD-EEEEE".into();
        assert!(!wanted(&reissued).held, "a new key is written");
    }

    #[test]
    fn the_idempotency_key_follows_the_write_not_the_attempt() {
        let one = job(None);
        let metadata = wanted(&one).metadata;
        assert_eq!(
            idempotency_key("", &one, &metadata),
            idempotency_key("", &one, &metadata)
        );
        assert_ne!(
            idempotency_key("", &one, &metadata),
            idempotency_key("acct_1", &one, &metadata)
        );
        let mut other = metadata.clone();
        other.insert("licensync_keys".into(), "NEWKY".into());
        assert_ne!(idempotency_key("", &one, &metadata), idempotency_key("", &one, &other));
        assert!(idempotency_key("", &one, &metadata).len() <= 255, "Stripe's limit");
    }

    #[test]
    fn refusals_never_quote_a_key() {
        let one = job(None);
        let message = "Invalid value: AAAAA-BBBBB-CCCCC-DDDDD-EEEEE is too long";
        assert_eq!(without_keys(message, &one), "Invalid value: [key] is too long");
    }
}
