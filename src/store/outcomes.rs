//! What became of the emails a sender claimed: each [`Outcome`] states its
//! effect on the row, and a batch of them is recorded in one statement,
//! each fenced by the claim that made it (licensing-rules §6).

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz};

use super::Store;
use crate::domain::EmailStatus;
use crate::secret::redact;

/// What became of one claimed row, recorded with the others of its batch
/// by [`Store::record_outcomes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the server, or written as a file: `sent`. Not fenced by
    /// the claim: a message the server accepted is sent, even when this
    /// sender's lease ran out meanwhile and another claim holds the row.
    Sent,
    /// Handed back untouched (the `none` transport queues without sending,
    /// or the sender stopped before starting it): the attempt is not
    /// counted and the row is due again at once.
    Released,
    /// Failed this time: tried again at `at`.
    Retry { error: String, at: DateTime<Utc> },
    /// Given up for good: `failed`.
    Failed { error: String },
    /// No usable address: `no_recipient`, never sent (the attempt is not counted).
    NoRecipient,
}

/// One claimed row's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub outbox_id: i64,
    /// The row's `attempts` as its claim returned it: the fence (unused for
    /// [`Outcome::Sent`]).
    pub attempt: i32,
    pub outcome: Outcome,
}

/// What an [`Outcome`] writes into its row: a status when it ends the row's
/// tries, the error to keep, when the row is due again, and whether the
/// attempt counts.
struct Effect {
    status: Option<EmailStatus>,
    /// Not fenced by the claim (see [`Outcome::Sent`]).
    sent: bool,
    /// `Some`: `last_error` becomes this (a send clears it).
    error: Option<Option<String>>,
    retry_at: Option<DateTime<Utc>>,
    due_now: bool,
    uncounted: bool,
}

impl Outcome {
    fn effect(&self) -> Effect {
        let keep = Effect {
            status: None,
            sent: false,
            error: None,
            retry_at: None,
            due_now: false,
            uncounted: false,
        };
        match self {
            Outcome::Sent => Effect {
                status: Some(EmailStatus::Sent),
                sent: true,
                error: Some(None),
                ..keep
            },
            Outcome::Released => Effect {
                due_now: true,
                uncounted: true,
                ..keep
            },
            Outcome::Retry { error, at } => Effect {
                error: Some(Some(redact(error))),
                retry_at: Some(*at),
                ..keep
            },
            Outcome::Failed { error } => Effect {
                status: Some(EmailStatus::Failed),
                error: Some(Some(redact(error))),
                ..keep
            },
            Outcome::NoRecipient => Effect {
                status: Some(EmailStatus::NoRecipient),
                uncounted: true,
                ..keep
            },
        }
    }
}

/// [`Store::record_outcomes`]: one UPDATE for a whole batch of marks, each
/// row fenced by its own (id, attempt) pair (`$9`: the pending status)
/// unless it was sent. The columns of `m` are the marks' [`Effect`]s.
const RECORD_OUTCOMES: &str = "\
    UPDATE email_outbox AS o SET \
        status = COALESCE(m.status, o.status), \
        sent_at = CASE WHEN m.sent THEN now() ELSE o.sent_at END, \
        last_error = CASE WHEN m.set_error THEN m.error ELSE o.last_error END, \
        next_attempt_at = CASE WHEN m.due_now THEN now() ELSE COALESCE(m.retry_at, o.next_attempt_at) END, \
        attempts = CASE WHEN m.uncounted THEN o.attempts - 1 ELSE o.attempts END, \
        claimed_by = NULL \
    FROM unnest($1::bigint[], $2::int4[], $3::text[], $4::bool[], $5::bool[], $6::text[], \
                $7::timestamptz[], $8::bool[], $10::bool[]) \
        AS m(id, attempt, status, sent, set_error, error, retry_at, due_now, uncounted) \
    WHERE o.id = m.id \
        AND (m.sent OR (o.status = $9 AND o.attempts = m.attempt)) \
    RETURNING o.id";

impl Store {
    /// Not fenced by the claim like the other outcomes: a message the server
    /// accepted is sent, even when this sender's lease ran out meanwhile.
    pub fn mark_email_sent(&self, outbox_id: i64) -> Result<()> {
        self.record_outcomes(&[Mark {
            outbox_id,
            attempt: 0,
            outcome: Outcome::Sent,
        }])?;
        Ok(())
    }

    /// Hands a claimed row back untouched (the `none` transport queues
    /// without sending): the attempt is not counted and it is due again.
    /// `attempt` is the row's `attempts` as its claim returned it; when
    /// another claim has taken the row since (this one's lease ran out)
    /// nothing changes and `false` comes back.
    pub fn release_email(&self, outbox_id: i64, attempt: i32) -> Result<bool> {
        self.record_one(outbox_id, attempt, Outcome::Released)
    }

    /// Records a failed attempt: retried at `retry_at`, or `failed` for good.
    /// Like [`Store::release_email`], only while the claim that made
    /// `attempt` is still the row's latest and the row is still pending: a
    /// sender whose lease ran out must not undo what the next one recorded.
    pub fn mark_email_failed(
        &self,
        outbox_id: i64,
        attempt: i32,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let error = error.to_owned();
        let outcome = match retry_at {
            Some(at) => Outcome::Retry { error, at },
            None => Outcome::Failed { error },
        };
        self.record_one(outbox_id, attempt, outcome)
    }

    /// A pending row with no usable address: nothing to send, ever.
    pub fn mark_email_no_recipient(&self, outbox_id: i64, attempt: i32) -> Result<bool> {
        self.record_one(outbox_id, attempt, Outcome::NoRecipient)
    }

    fn record_one(&self, outbox_id: i64, attempt: i32, outcome: Outcome) -> Result<bool> {
        let recorded = self.record_outcomes(&[Mark {
            outbox_id,
            attempt,
            outcome,
        }])?;
        Ok(!recorded.is_empty())
    }

    /// Records the outcomes of many claimed rows in one statement (one mark
    /// per row) and returns the ids of the rows it changed. Every outcome
    /// but [`Outcome::Sent`] is fenced by its own claim: recorded only while
    /// the row is still `pending` with the `attempts` that claim counted, so
    /// a stale mark (its sender's lease ran out and another claim took the
    /// row) leaves that row alone and the others of the batch are recorded.
    pub fn record_outcomes(&self, marks: &[Mark]) -> Result<Vec<i64>> {
        if marks.is_empty() {
            return Ok(Vec::new());
        }
        let n = marks.len();
        let (mut ids, mut attempts, mut statuses, mut sent) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut set_error, mut errors, mut retry_at, mut due_now, mut uncounted) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for mark in marks {
            let effect = mark.outcome.effect();
            ids.push(mark.outbox_id);
            attempts.push(mark.attempt);
            statuses.push(effect.status);
            sent.push(effect.sent);
            set_error.push(effect.error.is_some());
            errors.push(effect.error.flatten());
            retry_at.push(effect.retry_at);
            due_now.push(effect.due_now);
            uncounted.push(effect.uncounted);
        }

        #[derive(QueryableByName)]
        struct Recorded {
            #[diesel(sql_type = BigInt)]
            id: i64,
        }
        let mut conn = self.conn()?;
        let recorded: Vec<Recorded> = diesel::sql_query(RECORD_OUTCOMES)
            .bind::<Array<BigInt>, _>(ids)
            .bind::<Array<Integer>, _>(attempts)
            .bind::<Array<Nullable<Text>>, _>(statuses)
            .bind::<Array<Bool>, _>(sent)
            .bind::<Array<Bool>, _>(set_error)
            .bind::<Array<Nullable<Text>>, _>(errors)
            .bind::<Array<Nullable<Timestamptz>>, _>(retry_at)
            .bind::<Array<Bool>, _>(due_now)
            .bind::<Text, _>(EmailStatus::Pending)
            .bind::<Array<Bool>, _>(uncounted)
            .load(&mut conn)
            .context("recording the outcomes of sent emails")?;
        Ok(recorded.into_iter().map(|r| r.id).collect())
    }
}
