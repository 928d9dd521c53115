//! The write-back queue (`--stripe-write-back`): one row per Stripe object
//! whose metadata should show its licenses' keys, queued in the caller's
//! transaction (the page that issues a license, the operator's reissue)
//! and sent after the commit by `crate::write_back`.
//!
//! Only the run of an account sends its rows, under the account's run lock,
//! so a row needs no claim: a run killed mid-send leaves it pending, and the
//! next run sends it again with the same idempotency key (Stripe answers the
//! first write again instead of making a second).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use diesel::upsert::excluded;

use super::Store;
use crate::domain::{SourceKind, WriteStatus, WriteTarget, WriteTo};
use crate::schema::stripe_writes;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = stripe_writes)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct StripeWriteRow {
    pub id: i64,
    pub account_key: String,
    pub target_kind: WriteTarget,
    pub target_id: String,
    pub source_kind: SourceKind,
    pub purchase: String,
    pub status: WriteStatus,
    /// What Stripe last confirmed holding.
    pub sent_metadata: Option<serde_json::Value>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = stripe_writes)]
struct NewStripeWrite<'a> {
    account_key: &'a str,
    target_kind: WriteTarget,
    target_id: &'a str,
    source_kind: SourceKind,
    purchase: &'a str,
}

/// One queued write with the licenses `(id, key)` of its purchase, oldest
/// first, from which its metadata is made.
#[derive(Debug, Clone)]
pub struct StripeWriteJob {
    pub row: StripeWriteRow,
    pub licenses: Vec<(i64, String)>,
}

/// What became of one write.
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// Stripe holds `metadata` now (or already did).
    Sent(serde_json::Value),
    /// A failure another attempt may get past, at `retry_at`.
    Retry { error: String, retry_at: DateTime<Utc> },
    /// Stripe refused it for good.
    Refused(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriteCounts {
    pub pending: i64,
    pub sent: i64,
    pub refused: i64,
    /// Why the write updated last among those still pending failed (e.g.
    /// the key lacks write permission).
    pub last_error: Option<String>,
}

/// Queues the writes `to` of one account with the caller's connection, so
/// that they land in the caller's transaction. An object already queued or
/// written is queued again: its licenses changed (a new line's key, a
/// reissued key), and the sender skips it when Stripe holds the value.
pub(super) fn enqueue_writes(conn: &mut PgConnection, account_key: &str, to: &[WriteTo]) -> QueryResult<usize> {
    // One row per object: ON CONFLICT DO UPDATE may not meet a row twice.
    let unique: BTreeSet<&WriteTo> = to.iter().collect();
    if unique.is_empty() {
        return Ok(0);
    }
    let rows: Vec<NewStripeWrite<'_>> = unique
        .into_iter()
        .map(|w| NewStripeWrite {
            account_key,
            target_kind: w.target,
            target_id: &w.target_id,
            source_kind: w.source_kind,
            purchase: &w.purchase,
        })
        .collect();
    diesel::insert_into(stripe_writes::table)
        .values(rows)
        .on_conflict((
            stripe_writes::account_key,
            stripe_writes::target_kind,
            stripe_writes::target_id,
        ))
        .do_update()
        .set((
            stripe_writes::status.eq(WriteStatus::Pending),
            stripe_writes::source_kind.eq(excluded(stripe_writes::source_kind)),
            stripe_writes::purchase.eq(excluded(stripe_writes::purchase)),
            stripe_writes::next_attempt_at.eq(diesel::dsl::now),
            stripe_writes::last_error.eq(None::<String>),
            stripe_writes::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
}

/// The licenses of the purchases `$2` (kinds) / `$3` (purchase ids) in the
/// account `$1`, through `licenses_purchase_idx`; the account is joined as
/// part of each key, as in the page query (see `PAGE_LICENSES`).
const PURCHASE_LICENSES: &str = "\
    SELECT l.id, l.key, l.source_kind, split_part(l.source_id, '/', 1) AS purchase \
    FROM unnest($2::text[], $3::text[], array_fill($1::text, ARRAY[cardinality($2::text[])])) AS p(kind, purchase, account) \
    JOIN licenses l ON l.account_key = p.account AND l.source_kind = p.kind \
        AND split_part(l.source_id, '/', 1) = p.purchase \
    ORDER BY l.id";

#[derive(QueryableByName)]
pub(super) struct PurchaseLicense {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Text)]
    source_kind: SourceKind,
    #[diesel(sql_type = Text)]
    purchase: String,
}

impl Store {
    /// This account's pending writes due now (by the database's clock, the
    /// one that stamped them when they were queued) with an id above
    /// `after_id`, oldest first, at most `limit`, each with its licenses.
    pub fn due_stripe_writes(&self, after_id: i64, limit: i64) -> Result<Vec<StripeWriteJob>> {
        let mut conn = self.conn()?;
        let rows: Vec<StripeWriteRow> = self
            .due_writes_query(after_id, limit)
            .load(&mut conn)
            .context("reading the write-back queue")?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let purchases: Vec<(SourceKind, String)> = rows.iter().map(|r| (r.source_kind, r.purchase.clone())).collect();
        let found: Vec<PurchaseLicense> = self
            .purchase_licenses_query(&purchases)
            .load(&mut conn)
            .context("reading the licenses of queued writes")?;
        let mut by_purchase: BTreeMap<(SourceKind, String), Vec<(i64, String)>> = BTreeMap::new();
        for l in found {
            by_purchase
                .entry((l.source_kind, l.purchase))
                .or_default()
                .push((l.id, l.key));
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let licenses = by_purchase
                    .get(&(row.source_kind, row.purchase.clone()))
                    .cloned()
                    .unwrap_or_default();
                StripeWriteJob { row, licenses }
            })
            .collect())
    }

    /// The rows [`Store::due_stripe_writes`] reads: this account's pending
    /// writes due now after `after_id`, oldest first, through
    /// `stripe_writes_pending_idx`.
    pub(super) fn due_writes_query(
        &self,
        after_id: i64,
        limit: i64,
    ) -> stripe_writes::BoxedQuery<
        'static,
        diesel::pg::Pg,
        diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<StripeWriteRow, diesel::pg::Pg>>,
    > {
        stripe_writes::table
            .filter(stripe_writes::account_key.eq(self.account_key().to_owned()))
            .filter(stripe_writes::status.eq(WriteStatus::Pending))
            .filter(stripe_writes::id.gt(after_id))
            .filter(stripe_writes::next_attempt_at.le(diesel::dsl::now))
            .order(stripe_writes::id.asc())
            .limit(limit)
            .select(StripeWriteRow::as_select())
            .into_boxed()
    }

    /// The licenses of `purchases` in this account ([`PURCHASE_LICENSES`]).
    pub(super) fn purchase_licenses_query(
        &self,
        purchases: &[(SourceKind, String)],
    ) -> diesel::query_builder::BoxedSqlQuery<'static, diesel::pg::Pg, diesel::query_builder::SqlQuery> {
        let kinds: Vec<String> = purchases.iter().map(|(k, _)| k.as_str().to_owned()).collect();
        let ids: Vec<String> = purchases.iter().map(|(_, p)| p.clone()).collect();
        diesel::sql_query(PURCHASE_LICENSES)
            .into_boxed()
            .bind::<Text, _>(self.account_key().to_owned())
            .bind::<Array<Text>, _>(kinds)
            .bind::<Array<Text>, _>(ids)
    }

    /// Records what became of writes `(id, outcome, attempted)`, in one
    /// transaction; `attempted`: a request was made (a skipped write counts
    /// no attempt).
    pub fn record_stripe_writes(&self, outcomes: &[(i64, WriteOutcome, bool)]) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            for (id, outcome, attempted) in outcomes {
                record_one(conn, *id, outcome, *attempted)?;
            }
            Ok::<_, diesel::result::Error>(())
        })
        .context("recording write-backs")
    }

    /// The queue's rows by status (this account's, when scoped).
    pub fn stripe_write_counts(&self) -> Result<WriteCounts> {
        let mut conn = self.conn()?;
        let mut query = stripe_writes::table
            .group_by(stripe_writes::status)
            .select((stripe_writes::status, diesel::dsl::count_star()))
            .into_boxed();
        if self.scoped {
            query = query.filter(stripe_writes::account_key.eq(self.account_key().to_owned()));
        }
        let rows: Vec<(WriteStatus, i64)> = query.load(&mut conn).context("counting write-backs")?;
        let mut last_error = stripe_writes::table
            .filter(stripe_writes::status.eq(WriteStatus::Pending))
            .filter(stripe_writes::last_error.is_not_null())
            .order(stripe_writes::updated_at.desc())
            .select(stripe_writes::last_error)
            .into_boxed();
        if self.scoped {
            last_error = last_error.filter(stripe_writes::account_key.eq(self.account_key().to_owned()));
        }
        let mut counts = WriteCounts {
            last_error: last_error
                .first::<Option<String>>(&mut conn)
                .optional()
                .context("reading the last write-back error")?
                .flatten(),
            ..WriteCounts::default()
        };
        for (status, n) in rows {
            match status {
                WriteStatus::Pending => counts.pending = n,
                WriteStatus::Sent => counts.sent = n,
                WriteStatus::Refused => counts.refused = n,
            }
        }
        Ok(counts)
    }
}

/// One write's outcome (see [`Store::record_stripe_writes`]).
fn record_one(conn: &mut PgConnection, id: i64, outcome: &WriteOutcome, attempted: bool) -> QueryResult<usize> {
    let attempts = stripe_writes::attempts + i32::from(attempted);
    let target = stripe_writes::table.find(id);
    match outcome {
        WriteOutcome::Sent(metadata) => diesel::update(target)
            .set((
                stripe_writes::status.eq(WriteStatus::Sent),
                stripe_writes::sent_metadata.eq(Some(metadata)),
                stripe_writes::attempts.eq(attempts),
                stripe_writes::last_error.eq(None::<String>),
                stripe_writes::sent_at.eq(Some(Utc::now())),
                stripe_writes::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn),
        WriteOutcome::Retry { error, retry_at } => diesel::update(target)
            .set((
                stripe_writes::attempts.eq(attempts),
                stripe_writes::last_error.eq(Some(error)),
                stripe_writes::next_attempt_at.eq(retry_at),
                stripe_writes::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn),
        WriteOutcome::Refused(error) => diesel::update(target)
            .set((
                stripe_writes::status.eq(WriteStatus::Refused),
                stripe_writes::attempts.eq(attempts),
                stripe_writes::last_error.eq(Some(error)),
                stripe_writes::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn),
    }
}
