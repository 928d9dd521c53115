//! Runs: the record of each, the run lock of an account (a Postgres
//! advisory lock) and the fence that keeps a run that lost it from writing.

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde::Serialize;

use super::Store;
use crate::domain::{RunMode, RunOutcome};
use crate::schema::{licenses, runs};
use crate::secret::ExposeSecret;
use crate::secret::redact;

/// The advisory lock key of "a run is in progress" (one run per database).
const RUN_LOCK_KEY: i64 = 0x6c69_6365_6e73_796e; // "licensyn"

pub(super) const LOST_LOCK: &str = "this run no longer holds the run lock (its session ended: the database restarted?); \
    stopping without writing, committed pages stay and the next run converges";

/// Which database session holds the run lock: its backend pid and start, so
/// that a pid reused after a server restart is not mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RunFence {
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

/// Held while a run is in progress; dropping it closes the session that
/// holds the advisory lock, which releases it.
pub struct RunLock {
    _conn: PgConnection,
    fence: RunFence,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = runs)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct RunRow {
    pub id: i64,
    pub mode: RunMode,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: RunOutcome,
    pub counts: serde_json::Value,
    pub stripe_requests: i64,
    pub emails_sent: i32,
    pub livemode: Option<bool>,
    pub note: Option<String>,
    pub error: Option<String>,
    pub stripe_account: Option<String>,
}

impl Store {
    /// Takes the run lock of this store's account (one run per account at a
    /// time), or `None` when another run has it.
    pub fn try_lock_run(&self) -> Result<Option<RunLock>> {
        let key = run_lock_key(self.account.as_deref());
        let mut conn = PgConnection::establish(self.url.expose_secret())
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
    pub(super) fn fence_held(&self, conn: &mut PgConnection) -> QueryResult<bool> {
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
}
