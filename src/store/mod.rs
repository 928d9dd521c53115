//! The license store on PostgreSQL: embedded migrations, the connection
//! pool, and every query licensync makes, a file per entity (its row, its
//! insertable and its queries): `license`, `ledger`, `run`, `cursor`,
//! `outbox`, `stripe_write` (the write-back queue), with the `page` write, operator `overrides` and the `explain`
//! of page queries.
//! The rest of the code calls the typed functions here and never writes
//! SQL or touches `schema`.

mod activation;
mod cursor;
mod enums;
mod explain;
mod ledger;
mod license;
pub mod models;
mod outbox;
mod outcomes;
mod overrides;
mod page;
mod run;
mod stripe_write;

use anyhow::{Context, Result, anyhow};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::secret::ExposeSecret;
use crate::secret::redact;
use run::RunFence;

pub use activation::{KeyFacts, KeyQuery, KeyWrites, MachineRow};
pub use explain::PageQuery;
pub use license::LicenseFilter;
pub use outbox::{OutboxCounts, OutboxJob, SenderSession};
pub use outcomes::{Mark, Outcome};
pub use overrides::{Operated, OperatorWrite};
pub use page::{LicenseWrite, Written};
pub use run::RunLock;
pub use stripe_write::{StripeWriteJob, StripeWriteRow, WriteCounts, WriteOutcome};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

type PgPool = Pool<ConnectionManager<PgConnection>>;

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

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Connects, checking one connection first so that a bad or unreachable
    /// database fails at once with libpq's own message (the pool would only
    /// say it timed out).
    pub fn connect(url: &crate::secret::Secret) -> Result<Store> {
        PgConnection::establish(url.expose_secret())
            .map_err(|e| anyhow!("connecting to the license database: {}", redact(&e.to_string())))?;
        let manager = ConnectionManager::<PgConnection>::new(url.expose_secret());
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

    /// This store with a pool for a request server (the key API): more
    /// connections, and no `SELECT 1` before each checkout. Every request
    /// is one or two statements; a connection the server closed fails its
    /// one request (a 503 the client retries) and is dropped, instead of
    /// costing every request a round trip. Idle connections are closed
    /// after a minute.
    pub fn serving(&self, connections: u32) -> Store {
        let manager = ConnectionManager::<PgConnection>::new(self.url.expose_secret());
        let pool = Pool::builder()
            .max_size(connections.max(1))
            .min_idle(Some(0))
            .test_on_check_out(false)
            .idle_timeout(Some(std::time::Duration::from_secs(60)))
            .connection_timeout(std::time::Duration::from_secs(5))
            .build_unchecked(manager);
        Store {
            pool,
            fence: None,
            ..self.clone()
        }
    }

    /// The most connections this store's pool opens.
    pub fn pool_size(&self) -> u32 {
        self.pool.max_size()
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

    /// Raw SQL for test setup and benchmarks that count statements.
    pub fn batch_execute(&self, sql: &str) -> Result<()> {
        let mut conn = self.conn()?;
        conn.batch_execute(sql).context("executing SQL")
    }
}
