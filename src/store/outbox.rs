//! The store's side of the email outbox (licensing-rules §6): claiming due
//! rows for a sender (a lease, `SKIP LOCKED`, the sender's session), and
//! recording each outcome only while the claim that made it is the row's
//! latest. Sending itself is `crate::delivery`'s.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;

use super::Store;
use super::license::{LicenseRow, licenses_by_id_query};
use crate::domain::{EmailKind, EmailStatus, License, OutboxKind};
use crate::schema::email_outbox;
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

/// The time up to which a row is due: the sender's clock, or the
/// database's when that is later. A row is queued at the database's
/// `now()`, and a sender beside the run claims it as its page commits: a
/// sender whose clock lags the database's must not take that row for one
/// of the future, wait for the next page, and leave it to the end of the run.
fn due_by(
    now: DateTime<Utc>,
) -> diesel::expression::SqlLiteral<
    diesel::sql_types::Timestamptz,
    impl diesel::query_builder::QueryFragment<diesel::pg::Pg>,
> {
    diesel::dsl::sql::<diesel::sql_types::Timestamptz>("GREATEST(")
        .bind::<diesel::sql_types::Timestamptz, _>(now)
        .sql(", now())")
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
            let claimed = self.claim(conn, sender, after_id, now, lease_until, limit)?;
            let license_ids: Vec<i64> = claimed.iter().map(|o| o.license_id).collect();
            let rows: Vec<LicenseRow> = licenses_by_id_query(license_ids).load(conn)?;
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

    /// The claim itself: takes the due rows and charges each an attempt
    /// under `sender`'s lease. It writes no indexed column, so PostgreSQL
    /// rewrites each row in place on its page (a HOT update) and touches no
    /// index: see the migration `outbox_claims_in_place`.
    fn claim(
        &self,
        conn: &mut PgConnection,
        sender: i32,
        after_id: i64,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> QueryResult<Vec<OutboxRow>> {
        let ids: Vec<i64> = self.due_emails_query(after_id, now, limit).load(conn)?;
        diesel::update(email_outbox::table.filter(email_outbox::id.eq_any(&ids)))
            .set((
                email_outbox::attempts.eq(email_outbox::attempts + 1),
                email_outbox::next_attempt_at.eq(lease_until),
                email_outbox::claimed_by.eq(Some(sender)),
            ))
            .returning(OutboxRow::as_returning())
            .get_results(conn)
    }

    /// For the store tests: claims like [`Store::claim_due_emails`] in a
    /// transaction that is rolled back, and returns how many rows it
    /// claimed and how many of those PostgreSQL updated in place (HOT).
    #[doc(hidden)]
    pub fn claim_in_place(&self, now: DateTime<Utc>, limit: i64) -> Result<(usize, i64)> {
        #[derive(QueryableByName)]
        struct Hot {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.conn()?;
        let mut counts = (0, 0);
        let outcome = conn.transaction::<(), _, _>(|conn| {
            let claimed = self.claim(conn, 1, 0, now, now + chrono::Duration::minutes(10), limit)?;
            // This transaction's own counts, not yet in `pg_stat_user_tables`.
            let hot: Hot = diesel::sql_query(
                "SELECT coalesce(sum(n_tup_hot_upd), 0)::bigint AS n FROM pg_stat_xact_user_tables \
                 WHERE relname = 'email_outbox'",
            )
            .get_result(conn)?;
            counts = (claimed.len(), hot.n);
            Err(diesel::result::Error::RollbackTransaction)
        });
        match outcome {
            Err(diesel::result::Error::RollbackTransaction) => Ok(counts),
            other => other
                .map(|()| counts)
                .context("claiming emails in a rolled-back transaction"),
        }
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
                    .le(due_by(now))
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
