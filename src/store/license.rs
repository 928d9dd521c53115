//! The license: its row, its insertable, and the queries a run and the
//! operator commands make of it, among them a page's lookup and its write.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::Store;
use crate::domain::{ExpirationStart, GrantKey, License, LicenseState, LicenseStatus};
use crate::schema::{license_clocks, license_key_history, licenses};

/// A license as its row holds it: the domain's [`GrantKey`] and
/// [`LicenseState`] embedded, with the override as stored JSON.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = licenses)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct LicenseRow {
    pub id: i64,
    pub key: String,
    #[diesel(embed)]
    pub grant: GrantKey,
    pub stripe_account: Option<String>,
    #[diesel(embed)]
    pub state: LicenseState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub operator_override: Option<serde_json::Value>,
}

impl LicenseRow {
    pub fn into_domain(self) -> Result<License> {
        let operator_override = match self.operator_override {
            None => None,
            Some(value) => Some(
                serde_json::from_value(value)
                    .map_err(|e| anyhow!("license {} has an unreadable operator_override: {e}", self.id))?,
            ),
        };
        Ok(License {
            id: self.id,
            key: self.key,
            grant: self.grant,
            stripe_account: self.stripe_account,
            state: self.state,
            created_at: self.created_at,
            updated_at: self.updated_at,
            operator_override,
            activated_at: None,
        })
    }
}

/// A license row to upsert on its natural key.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = licenses)]
pub struct NewLicenseRow {
    pub key: String,
    #[diesel(embed)]
    pub grant: GrantKey,
    #[diesel(embed)]
    pub state: LicenseState,
    /// Never creates or clears an override: on an existing row with one, its
    /// `stripe` member replaces the stored one (see `Store::write_page`).
    pub operator_override: Option<serde_json::Value>,
    /// Set by the store from the account it is scoped to (`Store::for_account`).
    pub stripe_account: Option<String>,
}

impl NewLicenseRow {
    pub fn new(key: String, grant: &GrantKey, state: &LicenseState) -> NewLicenseRow {
        NewLicenseRow {
            key,
            grant: grant.clone(),
            state: state.clone(),
            operator_override: None,
            stripe_account: None,
        }
    }
}

/// The licenses a page can touch ([`Store::licenses_for`]): its grants by
/// natural key (`$1` kinds, `$2` ids), licenses of its subscriptions (`$3`)
/// and of its reversed payments (`$4`), in one account (`$5`).
///
/// Each key is looked up on its own, through the index that holds the key
/// and the account, whatever PostgreSQL knows of the table:
/// - The account is joined as part of each key list, never given as a
///   condition of its own. A first import writes a table that has no
///   statistics yet, and with a condition `account_key = $5` PostgreSQL
///   then guesses the account to be rare and reads all of it through any
///   index that mentions it, for every page: a first import turned
///   quadratic (BENCHMARKS.md).
/// - Each list's lookup is a `LATERAL` subquery behind `OFFSET 0`, which
///   PostgreSQL cannot merge into a plain join. Merged, a table of a few
///   thousand rows (the first minutes of a first import) was read whole
///   and hashed for every page, 10-25 ms a page; as it is, the only plan
///   is one index probe per key.
///
/// `tests/store.rs` checks every size and both states of the statistics.
const PAGE_LICENSES: &str = "\
    SELECT DISTINCT ON (l.id) l.* FROM (\
        SELECT l.* FROM unnest($1::text[], $2::text[], array_fill($5::text, ARRAY[cardinality($1::text[])])) \
            AS g(kind, id, account) \
            CROSS JOIN LATERAL (SELECT * FROM licenses l \
                WHERE l.source_kind = g.kind AND l.source_id = g.id AND l.account_key = g.account OFFSET 0) l \
        UNION ALL \
        SELECT l.* FROM unnest($3::text[], array_fill($5::text, ARRAY[cardinality($3::text[])])) AS s(id, account) \
            CROSS JOIN LATERAL (SELECT * FROM licenses l \
                WHERE l.stripe_subscription_id = s.id AND l.account_key = s.account OFFSET 0) l \
        UNION ALL \
        SELECT l.* FROM unnest($4::text[], array_fill($5::text, ARRAY[cardinality($4::text[])])) AS p(id, account) \
            CROSS JOIN LATERAL (SELECT * FROM licenses l \
                WHERE l.stripe_payment_intent = p.id AND l.account_key = p.account OFFSET 0) l \
    ) AS l ORDER BY l.id";

/// Licenses by id, one index probe per id. As a plain `id = ANY($1)`, a
/// young table (a first import's, while the sender beside the run claims
/// each page's emails) was read whole for every claim: 5 ms a claim at
/// 20,000 licenses. See [`PAGE_LICENSES`] for why `LATERAL ... OFFSET 0`.
const LICENSES_BY_ID: &str = "\
    SELECT l.* FROM unnest($1::bigint[]) AS c(id) \
        CROSS JOIN LATERAL (SELECT * FROM licenses l WHERE l.id = c.id OFFSET 0) l";

/// [`LICENSES_BY_ID`] with its bind; [`Store::explain`] runs the same.
pub(super) fn licenses_by_id_query<'a>(
    ids: Vec<i64>,
) -> diesel::query_builder::BoxedSqlQuery<'a, diesel::pg::Pg, diesel::query_builder::SqlQuery> {
    diesel::sql_query(LICENSES_BY_ID)
        .into_boxed()
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
}

/// The licenses of `rows`, each with its activation clock when the key API
/// started one (only licenses whose expiry starts at activation have one).
fn with_clocks(conn: &mut PgConnection, rows: Vec<LicenseRow>) -> Result<Vec<License>> {
    let mut licenses: Vec<License> = rows.into_iter().map(LicenseRow::into_domain).collect::<Result<_>>()?;
    let waiting: Vec<i64> = licenses
        .iter()
        .filter(|l| l.state.expiration_start == Some(ExpirationStart::Activation))
        .map(|l| l.id)
        .collect();
    if waiting.is_empty() {
        return Ok(licenses);
    }
    let clocks: BTreeMap<i64, DateTime<Utc>> = license_clocks::table
        .filter(license_clocks::license_id.eq_any(&waiting))
        .select((license_clocks::license_id, license_clocks::started_at))
        .load::<(i64, DateTime<Utc>)>(conn)
        .context("reading activation clocks")?
        .into_iter()
        .collect();
    for license in &mut licenses {
        license.activated_at = clocks.get(&license.id).copied();
    }
    Ok(licenses)
}

/// A filter for `licenses list`.
#[derive(Debug, Default, Clone)]
pub struct LicenseFilter {
    pub status: Option<LicenseStatus>,
    pub customer_email: Option<String>,
    /// One account's licenses (`Some(None)`: the key's own account's).
    pub stripe_account: Option<Option<String>>,
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
        let row = find_row(&mut conn, key_or_id, false).context("looking up a license")?;
        Ok(with_clocks(&mut conn, row.into_iter().collect())?.pop())
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
        with_clocks(&mut conn, rows)
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
        // An activation clock the key API started is due at once: the run
        // writes the expiry it implies.
        let clock_started = licenses::expires_at
            .is_null()
            .and(licenses::expiration_start.eq(ExpirationStart::Activation))
            .and(diesel::dsl::exists(
                license_clocks::table.filter(license_clocks::license_id.eq(licenses::id)),
            ));
        let rows = licenses::table
            .filter(licenses::status.eq(LicenseStatus::Active))
            .filter(licenses::account_key.eq(self.account_key()))
            .filter(licenses::id.gt(after_id))
            .filter(licenses::expires_at.le(now).or(clock_started))
            .order(licenses::id.asc())
            .limit(limit)
            .select(LicenseRow::as_select())
            .load(&mut conn)
            .context("finding licenses whose time ran out")?;
        with_clocks(&mut conn, rows)
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
}

/// The row of `key_or_id`: a numeric id, a current key or a replaced key
/// (whose license is returned), optionally locked `FOR UPDATE`.
pub(super) fn find_row(conn: &mut PgConnection, key_or_id: &str, lock: bool) -> QueryResult<Option<LicenseRow>> {
    let key_or_id = key_or_id.trim();
    let id = match key_or_id.parse::<i64>() {
        Ok(id) => Some(id),
        Err(_) => {
            let key = key_or_id.to_ascii_uppercase();
            let current: Option<i64> = licenses::table
                .filter(licenses::key.eq(&key))
                .select(licenses::id)
                .first(conn)
                .optional()?;
            match current {
                Some(id) => Some(id),
                None => license_key_history::table
                    .filter(license_key_history::key.eq(&key))
                    .select(license_key_history::license_id)
                    .first(conn)
                    .optional()?,
            }
        }
    };
    let Some(id) = id else { return Ok(None) };
    let query = licenses::table.find(id).select(LicenseRow::as_select());
    if lock {
        query.for_update().first(conn).optional()
    } else {
        query.first(conn).optional()
    }
}
