//! The license ledger (append-only: "why did this license change?") and
//! the history of keys a reissue replaced.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use super::Store;
use crate::domain::LedgerAction;
use crate::schema::{license_key_history, license_ledger};

/// A ledger row as stored: its entry, numbered and dated.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = license_ledger)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct LedgerRow {
    pub id: i64,
    #[diesel(embed)]
    #[serde(flatten)]
    pub entry: NewLedgerRow,
    pub created_at: DateTime<Utc>,
}

/// One entry of the ledger: why a license changed, written in the same
/// transaction as the change.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = license_ledger)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct NewLedgerRow {
    pub license_id: i64,
    pub run_id: Option<i64>,
    pub action: LedgerAction,
    pub before: Option<serde_json::Value>,
    pub after: serde_json::Value,
    pub stripe_object: String,
    /// Operator rows only: why, and who.
    pub reason: Option<String>,
    pub operator: Option<String>,
}

/// A key a reissue replaced: no longer valid.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = license_key_history)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct KeyHistoryRow {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub license_id: i64,
    pub key: String,
    pub replaced_at: DateTime<Utc>,
    pub reason: String,
    #[serde(rename = "by")]
    pub replaced_by: String,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = license_key_history)]
pub struct NewKeyHistoryRow {
    pub license_id: i64,
    pub key: String,
    pub reason: String,
    pub replaced_by: String,
}

impl Store {
    pub fn ledger(&self, license_id: i64) -> Result<Vec<LedgerRow>> {
        let mut conn = self.conn()?;
        license_ledger::table
            .filter(license_ledger::license_id.eq(license_id))
            .order(license_ledger::id.asc())
            .select(LedgerRow::as_select())
            .load(&mut conn)
            .context("reading the license ledger")
    }
}
