//! The license store on PostgreSQL: embedded migrations, the connection
//! pool, the run lock, and every query licensync makes. The rest of the code
//! calls the typed functions here and never writes SQL or touches `schema`.

mod enums;
pub mod models;
mod outbox;
mod overrides;
#[rustfmt::skip]
pub mod schema;

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel::upsert::excluded;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::domain::{ActionKind, EmailStatus, GrantKey, License, LicenseStatus, RunMode, RunOutcome, SourceKind};
use crate::secret::redact;
use models::{LedgerRow, LicenseRow, NewLedgerRow, NewLicenseRow, NewOutboxRow, RunRow};
use schema::{email_outbox, license_ledger, licenses, runs, sync_state};

pub use outbox::{Mark, OutboxCounts, OutboxJob, Outcome};
pub use overrides::{Operated, OperatorWrite};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The advisory lock key of "a run is in progress" (one run per database).
const RUN_LOCK_KEY: i64 = 0x6c69_6365_6e73_796e; // "licensyn"
/// First key of the advisory locks that tell which outbox senders are alive
/// (`pg_advisory_lock(SENDER_LOCK_CLASS, sender id)`); the two-key form keeps
/// them apart from the run lock's one-key form in `pg_locks`.
const SENDER_LOCK_CLASS: i32 = 0x6c73_6d6c; // "lsml"

type PgPool = Pool<ConnectionManager<PgConnection>>;

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

/// A query a page runs, for [`Store::explain`].
#[doc(hidden)]
pub enum PageQuery<'a> {
    /// [`Store::licenses_for`].
    Licenses {
        grants: &'a [GrantKey],
        subscription_ids: &'a [String],
        payment_intents: &'a [String],
    },
    /// The select of [`Store::claim_due_emails_after`].
    DueEmails {
        after_id: i64,
        now: DateTime<Utc>,
        limit: i64,
    },
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` in front of a query, keeping its binds.
struct Explain<Q>(Q);

impl<Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>> diesel::query_builder::QueryFragment<diesel::pg::Pg>
    for Explain<Q>
{
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        out.push_sql("EXPLAIN (ANALYZE, FORMAT JSON) ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q> diesel::query_builder::QueryId for Explain<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q> diesel::query_builder::Query for Explain<Q> {
    type SqlType = diesel::sql_types::Json;
}

impl<Q> RunQueryDsl<PgConnection> for Explain<Q> {}

/// Runs a store call off the async worker threads: diesel is synchronous,
/// and a blocked worker would stall the transport's retries and the signal
/// handling of a run.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a database task stopped")?
}

/// A pool of connections to the license database.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    url: crate::secret::Secret,
    /// Set by [`Store::fenced`]: page writes first check that this run still
    /// holds the run lock.
    fence: Option<RunFence>,
    /// The Stripe account a run's operations are scoped to ([`Store::for_account`]):
    /// `None`, the key's own account. Commands that read every account
    /// (`licenses list`, `status`) say so in their own queries.
    account: Option<String>,
    /// Set by [`Store::for_account`]: the counts (licenses, emails) are this
    /// account's too, not the whole database's.
    scoped: bool,
}

const LOST_LOCK: &str = "this run no longer holds the run lock (its session ended: the database restarted?); \
    stopping without writing, committed pages stay and the next run converges";

/// Which database session holds the run lock: its backend pid and start, so
/// that a pid reused after a server restart is not mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunFence {
    pid: i32,
    backend_start: DateTime<Utc>,
    /// The advisory lock key held.
    key: i64,
}

/// The run lock of an account: the one-run-per-database key for the key's
/// own account (as before accounts existed, so an older licensync and this
/// one still exclude each other), and a key from the account id's stable
/// hash for every other account. Two accounts whose hashes collide (about
/// one chance in 2^64 per pair) only wait for each other.
fn run_lock_key(account: Option<&str>) -> i64 {
    match account {
        None => RUN_LOCK_KEY,
        Some(_) => crate::accounts::stable_hash(account) as i64,
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

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

/// Held while a run is in progress; dropping it closes the session that
/// holds the advisory lock, which releases it.
pub struct RunLock {
    _conn: PgConnection,
    fence: RunFence,
}

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
    /// Queues an email about this license.
    pub email: Option<QueuedEmail>,
}

/// An outbox row written with its license: the kind (one per license) and
/// the state it starts in, which the applier decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEmail {
    pub kind: String,
    pub status: EmailStatus,
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub license_id: i64,
    pub key: String,
    pub grant: GrantKey,
}

impl Store {
    /// Connects, checking one connection first so that a bad or unreachable
    /// database fails at once with libpq's own message (the pool would only
    /// say it timed out).
    pub fn connect(url: &crate::secret::Secret) -> Result<Store> {
        PgConnection::establish(url.expose())
            .map_err(|e| anyhow!("connecting to the license database: {}", redact(&e.to_string())))?;
        let manager = ConnectionManager::<PgConnection>::new(url.expose());
        let pool = Pool::builder()
            // One run per account side by side (`--account-concurrency`),
            // each mostly on one connection at a time.
            .max_size(16)
            .min_idle(Some(0))
            .connection_timeout(std::time::Duration::from_secs(30))
            .build_unchecked(manager);
        Ok(Store {
            pool,
            url: url.clone(),
            fence: None,
            account: None,
            scoped: false,
        })
    }

    fn conn(&self) -> Result<PooledConnection<ConnectionManager<PgConnection>>> {
        self.pool
            .get()
            .map_err(|e| anyhow!("connecting to the license database: {}", redact(&e.to_string())))
    }

    /// Applies pending migrations; returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<String>> {
        let mut conn = self.conn()?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow!("applying database migrations: {e}"))?;
        Ok(applied.iter().map(|v| v.to_string()).collect())
    }

    pub fn has_pending_migrations(&self) -> Result<bool> {
        let mut conn = self.conn()?;
        conn.has_pending_migration(MIGRATIONS)
            .map_err(|e| anyhow!("checking database migrations: {e}"))
    }

    /// Rolls every migration back (tests of the `down.sql` files).
    pub fn revert_all_migrations(&self) -> Result<()> {
        let mut conn = self.conn()?;
        conn.revert_all_migrations(MIGRATIONS)
            .map_err(|e| anyhow!("reverting migrations: {e}"))?;
        Ok(())
    }

    /// Opens a sender session (see [`SenderSession`]) under a fresh random id.
    pub fn sender_session(&self) -> Result<SenderSession> {
        let mut conn = PgConnection::establish(self.url.expose())
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

    /// This store, its run operations (licenses a page reads and writes,
    /// the clock sweep, runs, the cursor, the run lock, the outbox a sender
    /// claims) scoped to one Stripe account; `None`: the key's own account.
    pub fn for_account(&self, account: Option<&str>) -> Store {
        Store {
            account: account.map(str::to_owned),
            scoped: true,
            ..self.clone()
        }
    }

    /// The account this store is scoped to.
    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    /// The value of `licenses.account_key` for this store's account.
    fn account_key(&self) -> &str {
        self.account.as_deref().unwrap_or("")
    }

    /// Takes the run lock of this store's account (one run per account at a
    /// time), or `None` when another run has it.
    pub fn try_lock_run(&self) -> Result<Option<RunLock>> {
        let key = run_lock_key(self.account.as_deref());
        let mut conn = PgConnection::establish(self.url.expose())
            .map_err(|e| anyhow!("connecting to the license database: {}", redact(&e.to_string())))?;
        let locked: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "pg_try_advisory_lock({key})"
        )))
        .get_result(&mut conn)
        .context("taking the run lock")?;
        if !locked {
            return Ok(None);
        }
        let (pid, backend_start): (i32, DateTime<Utc>) = diesel::select((
            diesel::dsl::sql::<diesel::sql_types::Integer>("pg_backend_pid()"),
            diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())",
            ),
        ))
        .get_result(&mut conn)
        .context("reading the run lock's session")?;
        Ok(Some(RunLock {
            _conn: conn,
            fence: RunFence {
                pid,
                backend_start,
                key,
            },
        }))
    }

    /// This store, whose page writes are fenced by `lock`: a write made
    /// after the run lost its lock (its session ended, e.g. in a server
    /// restart, and another run may have taken it) fails instead of
    /// overlapping the other run.
    pub fn fenced(&self, lock: &RunLock) -> Store {
        Store {
            fence: Some(lock.fence.clone()),
            ..self.clone()
        }
    }

    /// Whether this store's run still holds the run lock (always true for an
    /// unfenced store).
    fn fence_held(&self, conn: &mut PgConnection) -> QueryResult<bool> {
        let Some(fence) = &self.fence else { return Ok(true) };
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
             AND l.classid = {} AND l.objid = {} AND l.pid = {} AND a.backend_start = '{}')",
            (fence.key >> 32) as u32,
            fence.key as u32,
            fence.pid,
            fence.backend_start.to_rfc3339(),
        )))
        .get_result(conn)
    }

    /// Fails when this store's run lost its lock: a run checks it before it
    /// records success, so two overlapping runs never both succeed.
    pub fn check_fence(&self) -> Result<()> {
        let mut conn = self.conn()?;
        if self.fence_held(&mut conn).context("checking the run lock")? {
            Ok(())
        } else {
            Err(anyhow!(LOST_LOCK))
        }
    }

    /// This account's runs recorded as `running` whose process is gone
    /// (killed, or the database restarted under it) become `failed`: the
    /// caller holds the account's run lock, so no other run of it is alive.
    /// Returns how many.
    pub fn abandon_unfinished_runs(&self) -> Result<usize> {
        let mut conn = self.conn()?;
        diesel::update(
            runs::table
                .filter(runs::outcome.eq(RunOutcome::Running))
                .filter(runs::stripe_account.is_not_distinct_from(self.account.clone())),
        )
        .set((
            runs::outcome.eq(RunOutcome::Failed),
            runs::finished_at.eq(diesel::dsl::now),
            runs::error.eq(
                "the run ended without finishing (its process was killed or lost the database); \
                     its committed pages stay and a later run converged",
            ),
        ))
        .execute(&mut conn)
        .context("closing runs that never finished")
    }

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

    pub fn ledger(&self, license_id: i64) -> Result<Vec<LedgerRow>> {
        let mut conn = self.conn()?;
        license_ledger::table
            .filter(license_ledger::license_id.eq(license_id))
            .order(license_ledger::id.asc())
            .select(LedgerRow::as_select())
            .load(&mut conn)
            .context("reading the license ledger")
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
    fn page_licenses_query<'a>(
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

    /// `EXPLAIN (ANALYZE, FORMAT JSON)` of a query a page runs, with the
    /// binds production gives it: the store tests hold every page query to
    /// reading the page's own rows.
    #[doc(hidden)]
    pub fn explain(&self, query: PageQuery<'_>) -> Result<serde_json::Value> {
        let mut conn = self.conn()?;
        let plan = match query {
            PageQuery::Licenses {
                grants,
                subscription_ids,
                payment_intents,
            } => Explain(self.page_licenses_query(grants, subscription_ids, payment_intents)).get_result(&mut conn),
            PageQuery::DueEmails { after_id, now, limit } => {
                Explain(self.due_emails_query(after_id, now, limit)).get_result(&mut conn)
            }
        };
        plan.context("explaining a page query")
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
                    action: w.action.as_str().to_owned(),
                    before: w.before.clone(),
                    after,
                    stripe_object: w.stripe_object.clone(),
                    reason: None,
                    operator: None,
                });
                if let Some(email) = &w.email {
                    outbox.push(NewOutboxRow {
                        license_id,
                        kind: email.kind.clone(),
                        status: email.status.as_str().to_owned(),
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

    // ---- runs and cursors --------------------------------------------------

    pub fn start_run(&self, mode: RunMode, livemode: Option<bool>) -> Result<i64> {
        let mut conn = self.conn()?;
        diesel::insert_into(runs::table)
            .values((
                runs::mode.eq(mode),
                runs::livemode.eq(livemode),
                runs::stripe_account.eq(self.account.clone()),
            ))
            .returning(runs::id)
            .get_result(&mut conn)
            .context("recording the start of the run")
    }

    #[allow(clippy::too_many_arguments)]
    pub fn finish_run(
        &self,
        run_id: i64,
        succeeded: bool,
        counts: &serde_json::Value,
        stripe_requests: u64,
        emails_sent: i32,
        mode: RunMode,
        note: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        diesel::update(runs::table.find(run_id))
            .set((
                runs::finished_at.eq(diesel::dsl::now),
                // An incremental run that fell back to a full scan says so.
                runs::mode.eq(mode),
                runs::outcome.eq(if succeeded {
                    RunOutcome::Succeeded
                } else {
                    RunOutcome::Failed
                }),
                runs::counts.eq(counts),
                runs::stripe_requests.eq(i64::try_from(stripe_requests).unwrap_or(i64::MAX)),
                runs::emails_sent.eq(emails_sent),
                runs::note.eq(note),
                runs::error.eq(error.map(redact)),
            ))
            .execute(&mut conn)
            .context("recording the end of the run")?;
        Ok(())
    }

    /// When this account's last successful run finished.
    pub fn last_success(&self) -> Result<Option<DateTime<Utc>>> {
        let mut conn = self.conn()?;
        let finished: Option<Option<DateTime<Utc>>> = runs::table
            .filter(runs::outcome.eq(RunOutcome::Succeeded))
            .filter(runs::stripe_account.is_not_distinct_from(self.account.clone()))
            .order(runs::id.desc())
            .select(runs::finished_at)
            .first(&mut conn)
            .optional()
            .context("reading the last successful run")?;
        Ok(finished.flatten())
    }

    /// The accounts the database holds licenses or runs of, the key's own
    /// account (`None`) first.
    pub fn known_accounts(&self) -> Result<Vec<Option<String>>> {
        let mut conn = self.conn()?;
        let mut accounts: std::collections::BTreeSet<Option<String>> = licenses::table
            .select(licenses::stripe_account)
            .distinct()
            .load(&mut conn)
            .context("reading the accounts of the licenses")?
            .into_iter()
            .collect();
        accounts.extend(
            runs::table
                .select(runs::stripe_account)
                .distinct()
                .load::<Option<String>>(&mut conn)
                .context("reading the accounts of the runs")?,
        );
        Ok(accounts.into_iter().collect())
    }

    /// The last `limit` runs: this account's when the store is scoped to
    /// one, else every account's.
    pub fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>> {
        let mut conn = self.conn()?;
        let mut query = runs::table.into_boxed();
        if self.scoped {
            query = query.filter(runs::stripe_account.is_not_distinct_from(self.account.clone()));
        }
        query
            .order(runs::id.desc())
            .limit(limit)
            .select(RunRow::as_select())
            .load(&mut conn)
            .context("reading recent runs")
    }

    /// The name a cursor is stored under: `name` for the key's own account,
    /// `name:acct_...` for another.
    fn cursor_name(&self, name: &str) -> String {
        match &self.account {
            None => name.to_owned(),
            Some(account) => format!("{name}:{account}"),
        }
    }

    /// This account's cursor `name`.
    pub fn cursor(&self, name: &str) -> Result<Option<(String, DateTime<Utc>)>> {
        let mut conn = self.conn()?;
        sync_state::table
            .find(self.cursor_name(name))
            .select((sync_state::value, sync_state::updated_at))
            .first(&mut conn)
            .optional()
            .context("reading the sync cursor")
    }

    pub fn set_cursor(&self, name: &str, value: &str) -> Result<()> {
        let mut conn = self.conn()?;
        diesel::insert_into(sync_state::table)
            .values((sync_state::name.eq(self.cursor_name(name)), sync_state::value.eq(value)))
            .on_conflict(sync_state::name)
            .do_update()
            .set((sync_state::value.eq(value), sync_state::updated_at.eq(diesel::dsl::now)))
            .execute(&mut conn)
            .context("storing the sync cursor")?;
        Ok(())
    }

    /// Raw SQL for test setup and benchmarks that count statements.
    pub fn batch_execute(&self, sql: &str) -> Result<()> {
        let mut conn = self.conn()?;
        conn.batch_execute(sql).context("executing SQL")
    }
}
