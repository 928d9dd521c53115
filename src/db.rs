//! Opening the license database a command works on: `DATABASE_URL`, or the
//! embedded server under `<data-dir>/pg`, started on demand and stopped when
//! the command is done. A file lock on the data directory keeps two
//! licensync commands from starting or stopping the same embedded server.

use std::fs::File;

use anyhow::{Context, Result};
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use fs4::fs_std::FileExt;

use crate::config::Database;
use crate::error::Failure;
use crate::pg::{Binaries, Cluster, Tuning};
use crate::secret::{Secret, redact};
use crate::store::Store;

/// The database name inside the embedded cluster.
const EMBEDDED_DB: &str = "licensync";

/// An open database; for the embedded one, also the running server, which
/// is stopped on drop.
pub struct OpenDatabase {
    pub store: Store,
    embedded: Option<Embedded>,
}

struct Embedded {
    cluster: Cluster,
    _lock: File,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.stop(false) {
            tracing::warn!(error = %format!("{e:#}"), "could not stop the embedded PostgreSQL server");
        }
    }
}

impl OpenDatabase {
    pub fn open(database: &Database) -> Result<OpenDatabase> {
        match database {
            Database::Url(url) => Ok(OpenDatabase {
                store: Store::connect(url)?,
                embedded: None,
            }),
            Database::Embedded { dir } => {
                let binaries = Binaries::discover().map_err(|e| Failure::Usage(e.into()))?;
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the data directory {}", dir.display()))?;
                let lock_path = dir.with_extension("lock");
                let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
                if !lock.try_lock_exclusive().unwrap_or(false) {
                    return Err(Failure::Locked(format!(
                        "another licensync command is using the embedded database in {}; retry when it is done",
                        dir.display()
                    ))
                    .into());
                }
                let cluster = Cluster::new(binaries, dir)?;
                // From here on, dropping `embedded` stops the server even if setup fails.
                let embedded = Embedded { cluster, _lock: lock };
                embedded.cluster.ensure_running(Tuning::default())?;
                create_database_if_missing(&embedded.cluster.url("postgres"), EMBEDDED_DB)?;
                let store = Store::connect(&Secret::from(embedded.cluster.url(EMBEDDED_DB)))?;
                tracing::debug!(dir = %dir.display(), "embedded PostgreSQL started");
                Ok(OpenDatabase {
                    store,
                    embedded: Some(embedded),
                })
            }
        }
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }
}

/// Creates `name` through a connection to the maintenance database `url`.
pub fn create_database_if_missing(url: &str, name: &str) -> Result<()> {
    let mut conn = PgConnection::establish(url)
        .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {}", redact(&e.to_string())))?;
    let exists: bool = diesel::select(
        diesel::dsl::sql::<Bool>("EXISTS (SELECT 1 FROM pg_database WHERE datname = ")
            .bind::<Text, _>(name)
            .sql(")"),
    )
    .get_result(&mut conn)
    .context("checking for the licensync database")?;
    if !exists {
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .context("creating the licensync database")?;
    }
    Ok(())
}
