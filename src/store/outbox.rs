//! The store's side of the email outbox (licensing-rules §6): claiming due
//! rows for a sender (a lease, `SKIP LOCKED`, the sender's session), and
//! recording each outcome only while the claim that made it is the row's
//! latest. Sending itself is `crate::delivery`'s.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz};

use super::Store;
use super::license::LicenseRow;
use crate::domain::{EmailKind, EmailStatus, License, OutboxKind};
use crate::schema::{email_outbox, licenses};
use crate::secret::ExposeSecret;
use crate::secret::redact;
use serde::Serialize;

/// First key of the advisory locks that tell which outbox senders are alive
/// (`pg_advisory_lock(SENDER_LOCK_CLASS, sender id)`); the two-key form keeps
/// them apart from the run lock's one-key form in `pg_locks`.
pub(super) const SENDER_LOCK_CLASS: i32 = 0x6c73_6d6c; // "lsml"

/// One sender of the outbox, alive as long as this value: its own database
/// session holds the advisory lock `(SENDER_LOCK_CLASS, id)`, and the rows it
/// claims carry `claimed_by = id`. When the process dies the session ends
/// and the lock with it, so the next sender takes those rows at once
/// instead of waiting out their lease; a live sender's claims keep their
/// lease (two senders never take one row).
pub struct SenderSession {
    _conn: PgConnection,
    id: i32,
}

impl SenderSession {
    pub fn id(&self) -> i32 {
        self.id
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = email_outbox)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct OutboxRow {
    pub id: i64,
    pub license_id: i64,
    pub kind: OutboxKind,
    pub recipient: Option<String>,
    pub status: EmailStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub message_id: String,
    pub created_at: DateTime<Utc>,
    /// The sender session holding the row's claim, while one does.
    pub claimed_by: Option<i32>,
    /// The account of its license: its sender and templates send it.
    pub stripe_account: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = email_outbox)]
pub struct NewOutboxRow {
    pub license_id: i64,
    pub kind: OutboxKind,
    pub recipient: Option<String>,
    pub status: EmailStatus,
    pub stripe_account: Option<String>,
}

/// SQL that is true for an outbox row claimed by a sender whose session has
/// ended (crashed, killed): its advisory lock is gone with its connection.
fn claimer_gone() -> String {
    format!(
        "email_outbox.claimed_by IS NOT NULL AND NOT EXISTS (\
         SELECT 1 FROM pg_locks l \
         WHERE l.locktype = 'advisory' \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND l.classid = {SENDER_LOCK_CLASS} AND l.objsubid = 2 \
         AND l.objid = email_outbox.claimed_by::oid AND l.granted)"
    )
}

/// Queues the next email of `kind` about a license, with the caller's
/// connection so that it lands in the caller's transaction (as crates.io
/// enqueues its jobs): support's resends and the new key of a reissue.
/// `license_issued` rows are written with their page ([`Store::write_page`]).
pub(super) fn enqueue_email(
    conn: &mut PgConnection,
    license_id: i64,
    stripe_account: Option<&str>,
    recipient: Option<&str>,
    kind: EmailKind,
) -> QueryResult<i64> {
    let kinds: Vec<OutboxKind> = email_outbox::table
        .filter(email_outbox::license_id.eq(license_id))
        .select(email_outbox::kind)
        .load(conn)?;
    let previous = kinds.iter().filter(|k| k.email() == Some(kind)).count() as i64;
    diesel::insert_into(email_outbox::table)
        .values(NewOutboxRow {
            license_id,
            kind: OutboxKind::new(kind, previous + 1),
            status: if recipient.is_some() {
                EmailStatus::Pending
            } else {
                EmailStatus::NoRecipient
            },
            recipient: recipient.map(str::to_owned),
            stripe_account: stripe_account.map(str::to_owned),
        })
        .returning(email_outbox::id)
        .get_result(conn)
}

/// One email to send, claimed for this sender.
#[derive(Debug, Clone)]
pub struct OutboxJob {
    pub outbox: OutboxRow,
    pub license: License,
}

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

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxCounts {
    pub pending: i64,
    pub sent: i64,
    pub failed: i64,
    pub no_recipient: i64,
    /// Issued silently under `--mail-since`; `mail resend` can still send them.
    pub skipped: i64,
}

impl Store {
    /// Opens a sender session (see [`SenderSession`]) under a fresh random id.
    pub fn sender_session(&self) -> Result<SenderSession> {
        let mut conn = PgConnection::establish(self.url.expose_secret())
            .map_err(|e| anyhow!("connecting to the license database: {}", redact(&e.to_string())))?;
        loop {
            let id: i32 = rand::random_range(1..i32::MAX);
            let locked: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
                "pg_try_advisory_lock({SENDER_LOCK_CLASS}, {id})"
            )))
            .get_result(&mut conn)
            .context("registering the email sender")?;
            if locked {
                return Ok(SenderSession { _conn: conn, id });
            }
        }
    }

    /// Claims up to `limit` due emails for this sender. The claim is a lease:
    /// it counts the attempt and pushes `next_attempt_at` past `lease_until`,
    /// so a sender that dies after the server accepted a message but before
    /// it was marked sent gets it retried once, with the same Message-ID.
    /// `SKIP LOCKED` keeps two concurrent senders off the same row.
    pub fn claim_due_emails(
        &self,
        sender: &SenderSession,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<OutboxJob>> {
        self.claim_due_emails_after(sender.id(), 0, now, lease_until, limit)
    }

    /// [`Store::claim_due_emails`] for rows with an id above `after_id`, so
    /// that one pass over the queue never takes a row twice, even one handed
    /// back as due again ([`Store::release_email`]).
    pub fn claim_due_emails_after(
        &self,
        sender: i32,
        after_id: i64,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<OutboxJob>> {
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            let ids: Vec<i64> = self.due_emails_query(after_id, now, limit).load(conn)?;
            let claimed: Vec<OutboxRow> = diesel::update(email_outbox::table.filter(email_outbox::id.eq_any(&ids)))
                .set((
                    email_outbox::attempts.eq(email_outbox::attempts + 1),
                    email_outbox::next_attempt_at.eq(lease_until),
                    email_outbox::claimed_by.eq(Some(sender)),
                ))
                .returning(OutboxRow::as_returning())
                .get_results(conn)?;
            let license_ids: Vec<i64> = claimed.iter().map(|o| o.license_id).collect();
            let rows: Vec<LicenseRow> = licenses::table
                .filter(licenses::id.eq_any(&license_ids))
                .select(LicenseRow::as_select())
                .load(conn)?;
            Ok::<_, diesel::result::Error>((claimed, rows))
        })
        .context("claiming due emails")
        .and_then(|(claimed, rows)| {
            let mut by_id = BTreeMap::new();
            for row in rows {
                let license = row.into_domain()?;
                by_id.insert(license.id, license);
            }
            let mut jobs: Vec<OutboxJob> = claimed
                .into_iter()
                .filter_map(|outbox| {
                    by_id
                        .get(&outbox.license_id)
                        .cloned()
                        .map(|license| OutboxJob { outbox, license })
                })
                .collect();
            jobs.sort_by_key(|j| j.outbox.id);
            Ok(jobs)
        })
    }

    /// The ids [`Store::claim_due_emails_after`] claims: this account's due
    /// rows after `after_id`, oldest first, skipping rows another sender has
    /// locked. It walks `email_outbox_pending_account_idx` (the account's
    /// pending rows in id order), so a claim reads about `limit` rows however
    /// many the outbox has sent before.
    pub(super) fn due_emails_query(
        &self,
        after_id: i64,
        now: DateTime<Utc>,
        limit: i64,
    ) -> impl for<'a> diesel::query_dsl::LoadQuery<'a, PgConnection, i64>
    + diesel::query_builder::QueryFragment<diesel::pg::Pg>
    + diesel::query_builder::QueryId
    + use<> {
        email_outbox::table
            .filter(email_outbox::status.eq(EmailStatus::Pending))
            .filter(
                email_outbox::next_attempt_at
                    .le(now)
                    .or(diesel::dsl::sql::<diesel::sql_types::Bool>(&claimer_gone())),
            )
            .filter(email_outbox::id.gt(after_id))
            // The index's expression, so that the index serves the account.
            .filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("COALESCE(email_outbox.stripe_account, '') = ")
                    .bind::<Text, _>(self.account_key().to_owned()),
            )
            .order(email_outbox::id.asc())
            .limit(limit)
            .select(email_outbox::id)
            .for_update()
            .skip_locked()
    }

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

    /// Queues another copy of a license's email (support's resend); the kind
    /// `resend:<n>` keeps the one-per-kind rule while allowing many resends.
    pub fn queue_resend(&self, license: &License) -> Result<i64> {
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            enqueue_email(
                conn,
                license.id,
                license.stripe_account.as_deref(),
                license.state.customer_email.as_deref(),
                EmailKind::Resend,
            )
        })
        .context("queueing a resend")
    }

    pub fn outbox_counts(&self) -> Result<OutboxCounts> {
        let mut conn = self.conn()?;
        let mut query = email_outbox::table
            .group_by(email_outbox::status)
            .select((email_outbox::status, diesel::dsl::count_star()))
            .into_boxed();
        if self.scoped {
            query = query.filter(email_outbox::stripe_account.is_not_distinct_from(self.account.clone()));
        }
        let rows: Vec<(String, i64)> = query.load(&mut conn).context("counting emails")?;
        let mut counts = OutboxCounts::default();
        for (status, n) in rows {
            match status.parse::<EmailStatus>() {
                Ok(EmailStatus::Pending) => counts.pending = n,
                Ok(EmailStatus::Sent) => counts.sent = n,
                Ok(EmailStatus::Failed) => counts.failed = n,
                Ok(EmailStatus::NoRecipient) => counts.no_recipient = n,
                Ok(EmailStatus::Skipped) => counts.skipped = n,
                Err(_) => {}
            }
        }
        Ok(counts)
    }

    /// When the oldest email still `pending` was queued (`None`: none is),
    /// retries in backoff included: the customer is waiting for it either way.
    pub fn oldest_pending_email(&self) -> Result<Option<DateTime<Utc>>> {
        let mut conn = self.conn()?;
        let mut query = email_outbox::table.into_boxed();
        if self.scoped {
            query = query.filter(email_outbox::stripe_account.is_not_distinct_from(self.account.clone()));
        }
        query
            .filter(email_outbox::status.eq(EmailStatus::Pending))
            .select(diesel::dsl::min(email_outbox::created_at))
            .first(&mut conn)
            .context("reading the oldest pending email")
    }

    pub fn outbox_for_license(&self, license_id: i64) -> Result<Vec<OutboxRow>> {
        let mut conn = self.conn()?;
        email_outbox::table
            .filter(email_outbox::license_id.eq(license_id))
            .order(email_outbox::id.asc())
            .select(OutboxRow::as_select())
            .load(&mut conn)
            .context("reading a license's emails")
    }
}
