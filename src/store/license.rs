//! The license: its row, its insertable, and the queries a run and the
//! operator commands make of it, among them a page's lookup and its write.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;

use super::ledger::NewLedgerRow;
use super::outbox::NewOutboxRow;
use super::run::LOST_LOCK;
use super::schema::{email_outbox, license_ledger, licenses};
use super::{Store, overrides};
use crate::domain::{
    ActionKind, EmailKind, EmailStatus, ExpirationStart, GrantKey, LedgerAction, License, LicenseState, LicenseStatus,
    SourceKind,
};

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = licenses)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct LicenseRow {
    pub id: i64,
    pub key: String,
    pub status: LicenseStatus,
    pub product_ids: Vec<Option<String>>,
    pub source_kind: SourceKind,
    pub source_id: String,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub stripe_payment_intent: Option<String>,
    pub customer_email: Option<String>,
    pub customer_name: Option<String>,
    pub quantity: i32,
    pub ip_limit: Option<i32>,
    pub hwid_limit: Option<i32>,
    pub expiration_days: Option<i32>,
    pub expiration_start: Option<ExpirationStart>,
    pub expires_at: Option<DateTime<Utc>>,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub operator_override: Option<serde_json::Value>,
    pub product_name: Option<String>,
    pub stripe_account: Option<String>,
}

impl LicenseRow {
    pub fn into_domain(self) -> Result<License> {
        Ok(License {
            id: self.id,
            status: self.status,
            source_kind: self.source_kind,
            expiration_start: self.expiration_start,
            operator_override: match self.operator_override {
                None => None,
                Some(value) => Some(
                    serde_json::from_value(value)
                        .map_err(|e| anyhow!("license {} has an unreadable operator_override: {e}", self.id))?,
                ),
            },
            product_ids: self.product_ids.into_iter().flatten().collect(),
            product_name: self.product_name,
            stripe_account: self.stripe_account,
            key: self.key,
            source_id: self.source_id,
            stripe_customer_id: self.stripe_customer_id,
            stripe_subscription_id: self.stripe_subscription_id,
            stripe_payment_intent: self.stripe_payment_intent,
            customer_email: self.customer_email,
            customer_name: self.customer_name,
            quantity: self.quantity,
            ip_limit: self.ip_limit,
            hwid_limit: self.hwid_limit,
            expiration_days: self.expiration_days,
            expires_at: self.expires_at,
            livemode: self.livemode,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// A license row to upsert on its natural key.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = licenses)]
pub struct NewLicenseRow {
    pub key: String,
    pub status: LicenseStatus,
    pub product_ids: Vec<Option<String>>,
    pub source_kind: SourceKind,
    pub source_id: String,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub stripe_payment_intent: Option<String>,
    pub customer_email: Option<String>,
    pub customer_name: Option<String>,
    pub quantity: i32,
    pub ip_limit: Option<i32>,
    pub hwid_limit: Option<i32>,
    pub expiration_days: Option<i32>,
    pub expiration_start: Option<ExpirationStart>,
    pub expires_at: Option<DateTime<Utc>>,
    pub livemode: bool,
    /// Never creates or clears an override: on an existing row with one, its
    /// `stripe` member replaces the stored one (see `Store::write_page`).
    pub operator_override: Option<serde_json::Value>,
    pub product_name: Option<String>,
    /// Set by the store from the account it is scoped to (`Store::for_account`).
    pub stripe_account: Option<String>,
}

impl NewLicenseRow {
    pub fn new(key: String, grant: &GrantKey, state: &LicenseState) -> NewLicenseRow {
        NewLicenseRow {
            key,
            status: state.status,
            product_ids: state.product_ids.iter().cloned().map(Some).collect(),
            source_kind: grant.source_kind,
            source_id: grant.source_id.clone(),
            stripe_customer_id: state.stripe_customer_id.clone(),
            stripe_subscription_id: state.stripe_subscription_id.clone(),
            stripe_payment_intent: state.stripe_payment_intent.clone(),
            customer_email: state.customer_email.clone(),
            customer_name: state.customer_name.clone(),
            quantity: state.quantity,
            ip_limit: state.ip_limit,
            hwid_limit: state.hwid_limit,
            expiration_days: state.expiration_days,
            expiration_start: state.expiration_start,
            expires_at: state.expires_at,
            livemode: state.livemode,
            operator_override: None,
            product_name: state.product_name.clone(),
            stripe_account: None,
        }
    }
}

/// The licenses a page can touch ([`Store::licenses_for`]): its grants by
/// natural key (`$1` kinds, `$2` ids), licenses of its subscriptions (`$3`)
/// and of its reversed payments (`$4`), in one account (`$5`).
///
/// The account is joined as part of each key list, never given as a
/// condition of its own. A first import writes a table that has no
/// statistics yet, and with a condition `account_key = $5` PostgreSQL then
/// guesses the account to be rare and reads all of it through any index
/// that mentions it, for every page: a first import turned quadratic
/// (BENCHMARKS.md). Joined, the only cheap way in is one lookup per key on
/// the index that holds the key and the account, with or without
/// statistics; `tests/store.rs` checks both.
const PAGE_LICENSES: &str = "\
    SELECT DISTINCT ON (l.id) l.* FROM (\
        SELECT l.* FROM unnest($1::text[], $2::text[], array_fill($5::text, ARRAY[cardinality($1::text[])])) \
            AS g(kind, id, account) \
            JOIN licenses l ON l.source_kind = g.kind AND l.source_id = g.id AND l.account_key = g.account \
        UNION ALL \
        SELECT l.* FROM unnest($3::text[], array_fill($5::text, ARRAY[cardinality($3::text[])])) AS s(id, account) \
            JOIN licenses l ON l.stripe_subscription_id = s.id AND l.account_key = s.account \
        UNION ALL \
        SELECT l.* FROM unnest($4::text[], array_fill($5::text, ARRAY[cardinality($4::text[])])) AS p(id, account) \
            JOIN licenses l ON l.stripe_payment_intent = p.id AND l.account_key = p.account \
    ) AS l ORDER BY l.id";

/// A filter for `licenses list`.
#[derive(Debug, Default, Clone)]
pub struct LicenseFilter {
    pub status: Option<LicenseStatus>,
    pub customer_email: Option<String>,
    /// One account's licenses (`Some(None)`: the key's own account's).
    pub stripe_account: Option<Option<String>>,
}

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
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub license_id: i64,
    pub key: String,
    pub grant: GrantKey,
}

impl Store {
    // ---- licenses ----------------------------------------------------------

    pub fn list_licenses(&self, filter: &LicenseFilter) -> Result<Vec<License>> {
        let mut conn = self.conn()?;
        let mut query = licenses::table.select(LicenseRow::as_select()).into_boxed();
        if let Some(account) = &filter.stripe_account {
            query = query.filter(licenses::account_key.eq(account.as_deref().unwrap_or("")));
        }
        if let Some(status) = filter.status {
            query = query.filter(licenses::status.eq(status));
        }
        if let Some(email) = &filter.customer_email {
            query = query.filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("lower(customer_email) = ")
                    .bind::<diesel::sql_types::Text, _>(email.to_lowercase()),
            );
        }
        let rows = query
            .order(licenses::id.desc())
            .load(&mut conn)
            .context("listing licenses")?;
        rows.into_iter().map(LicenseRow::into_domain).collect()
    }

    /// A license by key, by a key a reissue replaced, or by numeric id.
    pub fn find_license(&self, key_or_id: &str) -> Result<Option<License>> {
        let mut conn = self.conn()?;
        let row = overrides::find_row(&mut conn, key_or_id, false).context("looking up a license")?;
        row.map(LicenseRow::into_domain).transpose()
    }

    /// The licenses a slice of facts can touch, in one query: by natural
    /// key, by subscription (items removed from it) and by payment intent
    /// (refunds and disputes). Reads the page's own rows through their
    /// indexes, at any size of the account ([`PAGE_LICENSES`]).
    pub fn licenses_for(
        &self,
        grants: &[GrantKey],
        subscription_ids: &[String],
        payment_intents: &[String],
    ) -> Result<Vec<License>> {
        if grants.is_empty() && subscription_ids.is_empty() && payment_intents.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let rows: Vec<LicenseRow> = self
            .page_licenses_query(grants, subscription_ids, payment_intents)
            .load(&mut conn)
            .context("loading the licenses of a page")?;
        rows.into_iter().map(LicenseRow::into_domain).collect()
    }

    /// [`PAGE_LICENSES`] with its binds; [`Store::explain`] runs the same.
    pub(super) fn page_licenses_query<'a>(
        &self,
        grants: &[GrantKey],
        subscription_ids: &[String],
        payment_intents: &[String],
    ) -> diesel::query_builder::BoxedSqlQuery<'a, diesel::pg::Pg, diesel::query_builder::SqlQuery> {
        use diesel::sql_types::{Array, Text};
        let kinds: Vec<&'static str> = grants.iter().map(|g| g.source_kind.as_str()).collect();
        let ids: Vec<String> = grants.iter().map(|g| g.source_id.clone()).collect();
        diesel::sql_query(PAGE_LICENSES)
            .into_boxed()
            .bind::<Array<Text>, _>(kinds)
            .bind::<Array<Text>, _>(ids)
            .bind::<Array<Text>, _>(subscription_ids.to_vec())
            .bind::<Array<Text>, _>(payment_intents.to_vec())
            .bind::<Text, _>(self.account_key().to_owned())
    }

    /// Active licenses whose time ran out (the clock sweep), by id after
    /// `after_id` (keyset paging: a dry run changes nothing, so an offset-free
    /// "first N" query would return the same rows forever).
    pub fn licenses_expired_by_clock(&self, now: DateTime<Utc>, after_id: i64, limit: i64) -> Result<Vec<License>> {
        let mut conn = self.conn()?;
        let rows = licenses::table
            .filter(licenses::status.eq(LicenseStatus::Active))
            .filter(licenses::account_key.eq(self.account_key()))
            .filter(licenses::id.gt(after_id))
            .filter(licenses::expires_at.le(now))
            .order(licenses::id.asc())
            .limit(limit)
            .select(LicenseRow::as_select())
            .load(&mut conn)
            .context("finding licenses whose time ran out")?;
        rows.into_iter().map(LicenseRow::into_domain).collect()
    }

    /// The modes (test/live) of this account's stored licenses.
    pub fn stored_modes(&self) -> Result<Vec<bool>> {
        let mut conn = self.conn()?;
        licenses::table
            .filter(licenses::account_key.eq(self.account_key()))
            .select(licenses::livemode)
            .distinct()
            .load(&mut conn)
            .context("reading the mode of stored licenses")
    }

    /// Licenses by status: this account's when the store is scoped to one,
    /// else the whole database's.
    pub fn license_counts(&self) -> Result<BTreeMap<String, i64>> {
        let mut conn = self.conn()?;
        let mut query = licenses::table
            .group_by(licenses::status)
            .select((licenses::status, diesel::dsl::count_star()))
            .into_boxed();
        if self.scoped {
            query = query.filter(licenses::account_key.eq(self.account_key()));
        }
        let rows: Vec<(LicenseStatus, i64)> = query.load(&mut conn).context("counting licenses")?;
        let mut counts: BTreeMap<String, i64> = LicenseStatus::ALL.iter().map(|s| (s.to_string(), 0)).collect();
        counts.extend(rows.into_iter().map(|(status, n)| (status.to_string(), n)));
        Ok(counts)
    }

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
            for w in writes {
                let grant = (w.license.source_kind, w.license.source_id.clone());
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
                        kind: EmailKind::LicenseIssued.column(1),
                        status,
                        recipient: w.license.customer_email.clone(),
                        stripe_account: self.account.clone(),
                    });
                }
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
            Ok::<_, diesel::result::Error>(written)
        })
        .context("writing a page of license changes")
    }
}
