//! A page of a plan written in one transaction: its licenses, their ledger
//! rows, their `license_issued` emails and their write-backs.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use diesel::prelude::*;
use diesel::upsert::excluded;

use super::Store;
use super::ledger::NewLedgerRow;
use super::license::NewLicenseRow;
use super::outbox::NewOutboxRow;
use super::run::LOST_LOCK;
use super::stripe_write::enqueue_writes;
use crate::domain::{ActionKind, EmailKind, EmailStatus, GrantKey, LedgerAction, OutboxKind, SourceKind, WriteTo};
use crate::schema::{email_outbox, license_ledger, licenses};

/// One write of the applier: a license row (new or existing, by natural
/// key), its ledger entry and, for new licenses, its outbox row.
#[derive(Debug, Clone)]
pub struct LicenseWrite {
    pub license: NewLicenseRow,
    pub action: ActionKind,
    pub before: Option<serde_json::Value>,
    pub after: serde_json::Value,
    pub stripe_object: String,
    /// Queues the license's `license_issued` email (once per license), in
    /// the state the applier decides.
    pub email: Option<EmailStatus>,
    /// `--stripe-write-back`: the Stripe object that shows the license's
    /// key, queued in the same transaction.
    pub write_back: Option<WriteTo>,
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub license_id: i64,
    pub key: String,
    pub grant: GrantKey,
}

impl Store {
    /// Writes one page of a plan in one transaction: one multi-row upsert of
    /// the licenses on their natural key, one multi-row insert into the
    /// ledger and one into the outbox. A page either lands whole or not at
    /// all, but for licenses whose operator override changed after the page
    /// was planned: those are left alone and missing from the result.
    pub fn write_page(&self, run_id: Option<i64>, writes: &[LicenseWrite]) -> Result<Vec<Written>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            if !self.fence_held(conn)? {
                return Err(diesel::result::Error::QueryBuilderError(LOST_LOCK.into()));
            }
            let rows: Vec<NewLicenseRow> = writes
                .iter()
                .map(|w| NewLicenseRow {
                    stripe_account: self.account.clone(),
                    ..w.license.clone()
                })
                .collect();
            // The key is never in the update set: a key never changes once issued.
            let upsert = diesel::insert_into(licenses::table)
                .values(rows)
                .on_conflict((licenses::source_kind, licenses::source_id, licenses::account_key))
                .do_update()
                .set((
                    licenses::status.eq(excluded(licenses::status)),
                    licenses::product_ids.eq(excluded(licenses::product_ids)),
                    licenses::stripe_customer_id.eq(excluded(licenses::stripe_customer_id)),
                    licenses::stripe_subscription_id.eq(excluded(licenses::stripe_subscription_id)),
                    licenses::stripe_payment_intent.eq(excluded(licenses::stripe_payment_intent)),
                    licenses::customer_email.eq(excluded(licenses::customer_email)),
                    licenses::customer_name.eq(excluded(licenses::customer_name)),
                    licenses::quantity.eq(excluded(licenses::quantity)),
                    licenses::ip_limit.eq(excluded(licenses::ip_limit)),
                    licenses::hwid_limit.eq(excluded(licenses::hwid_limit)),
                    licenses::expiration_days.eq(excluded(licenses::expiration_days)),
                    licenses::expiration_start.eq(excluded(licenses::expiration_start)),
                    licenses::expires_at.eq(excluded(licenses::expires_at)),
                    licenses::livemode.eq(excluded(licenses::livemode)),
                    // Equal to the stored override but for its Stripe side (the filter below).
                    licenses::operator_override.eq(excluded(licenses::operator_override)),
                    licenses::product_name.eq(excluded(licenses::product_name)),
                    licenses::updated_at.eq(diesel::dsl::now),
                ));
            // A run never creates, clears or changes an override: when an
            // operator changed this license's override after the page was
            // planned, the row is left alone (and not returned); the next run
            // plans it with the override as it is now.
            let same_override = diesel::dsl::sql::<diesel::sql_types::Bool>(
                "(licenses.operator_override - 'stripe') IS NOT DISTINCT FROM (excluded.operator_override - 'stripe')",
            );
            let saved: Vec<(i64, String, SourceKind, String)> =
                diesel::query_dsl::methods::FilterDsl::filter(upsert, same_override)
                    .returning((licenses::id, licenses::key, licenses::source_kind, licenses::source_id))
                    .get_results(conn)?;
            let by_grant: BTreeMap<(SourceKind, String), (i64, String)> = saved
                .into_iter()
                .map(|(id, key, kind, sid)| ((kind, sid), (id, key)))
                .collect();
            let mut written = Vec::with_capacity(writes.len());
            let mut ledger = Vec::with_capacity(writes.len());
            let mut outbox = Vec::new();
            let mut write_back = Vec::new();
            for w in writes {
                let grant = (w.license.grant.source_kind, w.license.grant.source_id.clone());
                let Some((license_id, key)) = by_grant.get(&grant).cloned() else {
                    // Left alone: an operator changed its override meanwhile.
                    continue;
                };
                let mut after = w.after.clone();
                if let Some(obj) = after.as_object_mut() {
                    obj.insert("key".into(), serde_json::Value::String(key.clone()));
                }
                ledger.push(NewLedgerRow {
                    license_id,
                    run_id,
                    action: LedgerAction::Run(w.action),
                    before: w.before.clone(),
                    after,
                    stripe_object: w.stripe_object.clone(),
                    reason: None,
                    operator: None,
                });
                if let Some(status) = w.email {
                    outbox.push(NewOutboxRow {
                        license_id,
                        kind: OutboxKind::new(EmailKind::LicenseIssued, 1),
                        status,
                        recipient: w.license.state.customer_email.clone(),
                        stripe_account: self.account.clone(),
                    });
                }
                write_back.extend(w.write_back.clone());
                let source_kind = grant.0;
                written.push(Written {
                    license_id,
                    key,
                    grant: GrantKey {
                        source_kind,
                        source_id: grant.1,
                    },
                });
            }
            if !ledger.is_empty() {
                diesel::insert_into(license_ledger::table)
                    .values(&ledger)
                    .execute(conn)?;
            }
            if !outbox.is_empty() {
                diesel::insert_into(email_outbox::table)
                    .values(&outbox)
                    .on_conflict((email_outbox::license_id, email_outbox::kind))
                    .do_nothing()
                    .execute(conn)?;
            }
            enqueue_writes(conn, self.account_key(), &write_back)?;
            Ok::<_, diesel::result::Error>(written)
        })
        .context("writing a page of license changes")
    }
}
