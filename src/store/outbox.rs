//! The store's side of the email outbox (licensing-rules §6): claiming due
//! rows for a sender (a lease, `SKIP LOCKED`, the sender's session), and
//! recording each outcome only while the claim that made it is the row's
//! latest. Sending itself is `crate::delivery`'s.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::models::{LicenseRow, NewOutboxRow, OutboxRow};
use super::schema::{email_outbox, licenses};
use super::{SENDER_LOCK_CLASS, SenderSession, Store};
use crate::domain::{EmailStatus, License};
use crate::secret::redact;

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

/// An outbox row still held by one claim (see `Store::claimed`).
type ClaimedRow = diesel::dsl::Filter<
    diesel::dsl::Find<email_outbox::table, i64>,
    diesel::dsl::And<diesel::dsl::Eq<email_outbox::status, &'static str>, diesel::dsl::Eq<email_outbox::attempts, i32>>,
>;

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
            let ids: Vec<i64> = email_outbox::table
                .filter(email_outbox::status.eq("pending"))
                .filter(
                    email_outbox::next_attempt_at
                        .le(now)
                        .or(diesel::dsl::sql::<diesel::sql_types::Bool>(&claimer_gone())),
                )
                .filter(email_outbox::id.gt(after_id))
                .order(email_outbox::id.asc())
                .limit(limit)
                .select(email_outbox::id)
                .for_update()
                .skip_locked()
                .load(conn)?;
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

    /// Not fenced by the claim like the other outcomes: a message the server
    /// accepted is sent, even when this sender's lease ran out meanwhile.
    pub fn mark_email_sent(&self, outbox_id: i64) -> Result<()> {
        let mut conn = self.conn()?;
        diesel::update(email_outbox::table.find(outbox_id))
            .set((
                email_outbox::status.eq("sent"),
                email_outbox::sent_at.eq(diesel::dsl::now),
                email_outbox::last_error.eq(None::<String>),
                email_outbox::claimed_by.eq(None::<i32>),
            ))
            .execute(&mut conn)
            .context("marking an email sent")?;
        Ok(())
    }

    /// Hands a claimed row back untouched (the `none` transport queues
    /// without sending): the attempt is not counted and it is due again.
    /// `attempt` is the row's `attempts` as its claim returned it; when
    /// another claim has taken the row since (this one's lease ran out)
    /// nothing changes and `false` comes back.
    pub fn release_email(&self, outbox_id: i64, attempt: i32) -> Result<bool> {
        let mut conn = self.conn()?;
        let changed = diesel::update(Self::claimed(outbox_id, attempt))
            .set((
                email_outbox::attempts.eq(email_outbox::attempts - 1),
                email_outbox::next_attempt_at.eq(diesel::dsl::now),
                email_outbox::claimed_by.eq(None::<i32>),
            ))
            .execute(&mut conn)
            .context("releasing a queued email")?;
        Ok(changed == 1)
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
        let mut conn = self.conn()?;
        let error = redact(error);
        let row = Self::claimed(outbox_id, attempt);
        match retry_at {
            Some(at) => diesel::update(row)
                .set((
                    email_outbox::last_error.eq(error),
                    email_outbox::next_attempt_at.eq(at),
                    email_outbox::claimed_by.eq(None::<i32>),
                ))
                .execute(&mut conn),
            None => diesel::update(row)
                .set((
                    email_outbox::last_error.eq(error),
                    email_outbox::status.eq("failed"),
                    email_outbox::claimed_by.eq(None::<i32>),
                ))
                .execute(&mut conn),
        }
        .map(|changed| changed == 1)
        .context("recording a failed email")
    }

    /// A pending row with no usable address: nothing to send, ever.
    pub fn mark_email_no_recipient(&self, outbox_id: i64, attempt: i32) -> Result<bool> {
        let mut conn = self.conn()?;
        diesel::update(Self::claimed(outbox_id, attempt))
            .set((
                email_outbox::status.eq("no_recipient"),
                email_outbox::attempts.eq(email_outbox::attempts - 1),
                email_outbox::claimed_by.eq(None::<i32>),
            ))
            .execute(&mut conn)
            .map(|changed| changed == 1)
            .context("recording an email without recipient")
    }

    /// The row `outbox_id` while the claim that counted `attempt` still holds it.
    fn claimed(outbox_id: i64, attempt: i32) -> ClaimedRow {
        email_outbox::table.find(outbox_id).filter(
            email_outbox::status
                .eq("pending")
                .and(email_outbox::attempts.eq(attempt)),
        )
    }

    /// Queues another copy of a license's email (support's resend); the kind
    /// `resend:<n>` keeps the one-per-kind rule while allowing many resends.
    pub fn queue_resend(&self, license: &License) -> Result<i64> {
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            let previous: i64 = email_outbox::table
                .filter(email_outbox::license_id.eq(license.id))
                .filter(email_outbox::kind.like("resend:%"))
                .count()
                .get_result(conn)?;
            diesel::insert_into(email_outbox::table)
                .values(NewOutboxRow {
                    license_id: license.id,
                    kind: format!("resend:{}", previous + 1),
                    status: if license.customer_email.is_some() {
                        "pending"
                    } else {
                        "no_recipient"
                    }
                    .to_owned(),
                    recipient: license.customer_email.clone(),
                })
                .returning(email_outbox::id)
                .get_result(conn)
        })
        .context("queueing a resend")
    }

    pub fn outbox_counts(&self) -> Result<OutboxCounts> {
        let mut conn = self.conn()?;
        let rows: Vec<(String, i64)> = email_outbox::table
            .group_by(email_outbox::status)
            .select((email_outbox::status, diesel::dsl::count_star()))
            .load(&mut conn)
            .context("counting emails")?;
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
        email_outbox::table
            .filter(email_outbox::status.eq("pending"))
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
