//! The store's side of operator overrides (licensing-rules §8): one locked
//! read-decide-write of one license, the key history of reissued keys, and
//! the counts `status` shows. What to write is decided by the caller
//! (`crate::overrides`); this module only makes it one transaction.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::Store;
use super::license::find_row;
use super::models::{KeyHistoryRow, LicenseRow, NewKeyHistoryRow, NewLedgerRow};
use super::outbox::enqueue_email;
use super::stripe_write::enqueue_writes;
use crate::domain::{EmailKind, LedgerAction, License, LicenseState, OperatorAction, Override, WriteTo};
use crate::schema::{license_key_history, license_ledger, licenses};

/// The stripe_object of operator ledger rows: no Stripe object caused them.
pub const OPERATOR_CAUSE: &str = "operator";

/// What an operator command writes to one license, decided on the locked row.
#[derive(Debug, Clone)]
pub struct OperatorWrite {
    pub action: OperatorAction,
    /// The license's new state.
    pub state: LicenseState,
    /// The license's override afterwards (`None`: it follows Stripe).
    pub operator_override: Option<Override>,
    /// A reissue's new key; the old one goes to the key history.
    pub new_key: Option<String>,
    /// The ledger row's `before`/`after`.
    pub before: serde_json::Value,
    pub after: serde_json::Value,
    pub reason: Option<String>,
    pub operator: String,
    /// Queues the `n`-th email of this kind (`key_reissued:<n>`), one per command.
    pub email: Option<EmailKind>,
    /// `--stripe-write-back`: the Stripe object that shows the new key,
    /// queued in the same transaction.
    pub write_back: Option<WriteTo>,
}

/// What an operator command did.
#[derive(Debug, Clone)]
pub struct Operated {
    pub before: License,
    pub after: License,
    pub write: OperatorWrite,
    pub outbox_id: Option<i64>,
}

impl Store {
    /// Locks the license `key_or_id`, lets `decide` choose what to write
    /// from its current row, and writes it with its ledger row (and key
    /// history row, and outbox row) in the same transaction. `None`: no
    /// such license. When `decide` fails, nothing is written and its error
    /// comes back as it is.
    pub fn operate(
        &self,
        key_or_id: &str,
        decide: impl FnOnce(&License) -> Result<OperatorWrite>,
    ) -> Result<Option<Operated>> {
        let mut conn = self.conn()?;
        conn.transaction::<_, anyhow::Error, _>(|conn| {
            let Some(row) = find_row(conn, key_or_id, true).context("looking up a license")? else {
                return Ok(None);
            };
            let before = row.into_domain()?;
            let write = decide(&before)?;
            write_change(conn, before, write)
                .context("writing an operator change")
                .map(Some)
        })
    }

    /// The replaced keys of these licenses, oldest first.
    pub fn key_history(&self, license_ids: &[i64]) -> Result<BTreeMap<i64, Vec<KeyHistoryRow>>> {
        let mut conn = self.conn()?;
        let rows: Vec<KeyHistoryRow> = license_key_history::table
            .filter(license_key_history::license_id.eq_any(license_ids))
            .order(license_key_history::id.asc())
            .select(KeyHistoryRow::as_select())
            .load(&mut conn)
            .context("reading the key history")?;
        let mut by_license: BTreeMap<i64, Vec<KeyHistoryRow>> = BTreeMap::new();
        for row in rows {
            by_license.entry(row.license_id).or_default().push(row);
        }
        Ok(by_license)
    }

    /// How many licenses are under an operator override.
    pub fn override_count(&self) -> Result<i64> {
        let mut conn = self.conn()?;
        licenses::table
            .filter(licenses::operator_override.is_not_null())
            .count()
            .get_result(&mut conn)
            .context("counting licenses under override")
    }
}

fn write_change(conn: &mut PgConnection, before: License, write: OperatorWrite) -> Result<Operated> {
    let state = &write.state;
    let key = write.new_key.clone().unwrap_or_else(|| before.key.clone());
    let override_json = write.operator_override.as_ref().map(serde_json::to_value).transpose()?;
    let after: LicenseRow = diesel::update(licenses::table.find(before.id))
        .set((
            licenses::key.eq(&key),
            licenses::status.eq(state.status),
            licenses::ip_limit.eq(state.ip_limit),
            licenses::hwid_limit.eq(state.hwid_limit),
            licenses::expires_at.eq(state.expires_at),
            licenses::operator_override.eq(override_json),
            licenses::updated_at.eq(diesel::dsl::now),
        ))
        .returning(LicenseRow::as_returning())
        .get_result(conn)?;
    if write.new_key.is_some() {
        diesel::insert_into(license_key_history::table)
            .values(NewKeyHistoryRow {
                license_id: before.id,
                key: before.key.clone(),
                reason: write.reason.clone().unwrap_or_default(),
                replaced_by: write.operator.clone(),
            })
            .execute(conn)?;
    }
    let mut after_json = write.after.clone();
    if let Some(obj) = after_json.as_object_mut() {
        obj.insert("key".into(), serde_json::Value::String(key));
    }
    diesel::insert_into(license_ledger::table)
        .values(NewLedgerRow {
            license_id: before.id,
            run_id: None,
            action: LedgerAction::Operator(write.action),
            before: Some(write.before.clone()),
            after: after_json,
            stripe_object: OPERATOR_CAUSE.to_owned(),
            reason: write.reason.clone(),
            operator: Some(write.operator.clone()),
        })
        .execute(conn)?;
    let outbox_id = match write.email {
        None => None,
        Some(kind) => Some(enqueue_email(
            conn,
            before.id,
            before.stripe_account.as_deref(),
            before.state.customer_email.as_deref(),
            kind,
        )?),
    };
    if let Some(to) = &write.write_back {
        let account_key = before.stripe_account.as_deref().unwrap_or("");
        enqueue_writes(conn, account_key, std::slice::from_ref(to))?;
    }
    Ok(Operated {
        before,
        after: after.into_domain()?,
        write,
        outbox_id,
    })
}
