//! The benchmark's throwaway PostgreSQL cluster and what it reads from it:
//! statement counts and times, the `COPY` floor, the backends' CPU.

use super::*;

/// How statements are counted.
pub(crate) enum Counter {
    /// `pg_stat_statements` (postgresql-contrib): every statement executed, BEGIN/COMMIT included.
    Statements,
    /// `pg_stat_database`: only transactions (commits + rollbacks) can be counted.
    Transactions,
}

impl Counter {
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Counter::Statements => "pg_stat_statements (every statement, BEGIN/COMMIT included)",
            Counter::Transactions => {
                "pg_stat_database xact_commit+xact_rollback (pg_stat_statements is not installed: transactions, not statements)"
            }
        }
    }
}

pub(crate) struct BenchDb {
    pub(crate) cluster: Cluster,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) admin_url: String,
    pub(crate) url: String,
    pub(crate) counter: Counter,
}

#[derive(QueryableByName)]
pub(crate) struct Row {
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

#[derive(QueryableByName)]
pub(crate) struct Millis {
    #[diesel(sql_type = Double)]
    pub(crate) ms: f64,
}

pub(crate) struct CopyFigures {
    pub(crate) rows: i64,
    pub(crate) out: Duration,
    pub(crate) into: Duration,
}

#[derive(QueryableByName)]
pub(crate) struct TopStatement {
    #[diesel(sql_type = BigInt)]
    pub(crate) calls: i64,
    #[diesel(sql_type = Double)]
    pub(crate) ms: f64,
    #[diesel(sql_type = Text)]
    pub(crate) query: String,
}

impl BenchDb {
    pub(crate) fn start(durable: bool) -> Result<BenchDb> {
        let binaries = Binaries::discover()?;
        // /tmp, not the target dir: the postgres user must be able to reach it.
        let dir = tempfile::Builder::new()
            .prefix("licensync-bench-pg-")
            .tempdir_in("/tmp")
            .context("creating the cluster's temporary directory")?;
        let cluster = Cluster::new(binaries.clone(), dir.path())?;
        let tuning = Tuning { unsafe_fast: !durable };
        let counter = if stat_statements_installed(&binaries) {
            Counter::Statements
        } else {
            Counter::Transactions
        };
        let db = BenchDb {
            admin_url: cluster.url("postgres"),
            url: cluster.url("bench"),
            cluster,
            dir,
            counter,
        };
        // From here on, dropping `db` stops the server on any error path.
        db.cluster
            .ensure_running(tuning)
            .context("starting the bench cluster")?;
        let mut admin = PgConnection::establish(&db.admin_url).context("connecting to the bench cluster")?;
        if let Counter::Statements = db.counter {
            // The module must be preloaded: set it and restart the server.
            diesel::sql_query("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
                .execute(&mut admin)?;
            drop(admin);
            db.cluster.stop(false)?;
            db.cluster
                .ensure_running(tuning)
                .context("restarting the bench cluster")?;
            admin = PgConnection::establish(&db.admin_url)?;
        }
        diesel::sql_query("CREATE DATABASE bench").execute(&mut admin)?;
        if let Counter::Statements = db.counter {
            let mut conn = db.conn()?;
            diesel::sql_query("CREATE EXTENSION pg_stat_statements").execute(&mut conn)?;
        }
        Ok(db)
    }

    pub(crate) fn conn(&self) -> Result<PgConnection> {
        PgConnection::establish(&self.url).context("connecting to the bench database")
    }

    pub(crate) fn reset_counts(&self) -> Result<()> {
        if let Counter::Statements = self.counter {
            diesel::sql_query("SELECT pg_stat_statements_reset()").execute(&mut self.conn()?)?;
        }
        Ok(())
    }

    /// Statements (or transactions) since the last reset; for transactions a
    /// running total the caller subtracts.
    pub(crate) fn count(&self) -> Result<i64> {
        let sql = match self.counter {
            Counter::Statements => {
                "SELECT coalesce(sum(s.calls), 0)::bigint AS n FROM pg_stat_statements s \
                 JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = 'bench' AND s.query NOT ILIKE '%pg_stat_statements%'"
            }
            Counter::Transactions => {
                "SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database WHERE datname = 'bench'"
            }
        };
        // The view lives where the extension was created; pg_stat_database is
        // read from another database, so this session's own transactions do not count.
        let mut conn = match self.counter {
            Counter::Statements => self.conn()?,
            Counter::Transactions => PgConnection::establish(&self.admin_url)?,
        };
        Ok(diesel::sql_query(sql).get_result::<Row>(&mut conn)?.n)
    }

    /// Milliseconds the server spent executing the bench database's
    /// statements since the last reset (COMMITs and their WAL flushes
    /// included); `None` without pg_stat_statements.
    pub(crate) fn exec_ms(&self) -> Result<Option<f64>> {
        if let Counter::Transactions = self.counter {
            return Ok(None);
        }
        let sql = "SELECT coalesce(sum(s.total_exec_time), 0)::float8 AS ms FROM pg_stat_statements s \
                   JOIN pg_database d ON d.oid = s.dbid \
                   WHERE d.datname = 'bench' AND s.query NOT ILIKE '%pg_stat_statements%'";
        Ok(Some(diesel::sql_query(sql).get_result::<Millis>(&mut self.conn()?)?.ms))
    }

    /// `COPY` of the licenses table out to a file and back into a copy of
    /// the table with the same indexes and constraints: what writing the
    /// same rows costs the server in bulk.
    pub(crate) fn copy_licenses(&self) -> Result<CopyFigures> {
        let mut conn = self.conn()?;
        // In the data directory: the server (the postgres user) writes and reads it.
        let file = self.cluster.data_dir().join("bench-licenses.copy");
        let file = file.display().to_string().replace('\'', "''");
        let rows = diesel::sql_query("SELECT count(*)::bigint AS n FROM licenses")
            .get_result::<Row>(&mut conn)?
            .n;
        let started = Instant::now();
        diesel::sql_query(format!("COPY licenses TO '{file}' (FORMAT binary)")).execute(&mut conn)?;
        let out = started.elapsed();
        diesel::sql_query("CREATE TABLE bench_licenses_copy (LIKE licenses INCLUDING ALL)").execute(&mut conn)?;
        let started = Instant::now();
        diesel::sql_query(format!("COPY bench_licenses_copy FROM '{file}' (FORMAT binary)")).execute(&mut conn)?;
        let into = started.elapsed();
        diesel::sql_query("DROP TABLE bench_licenses_copy").execute(&mut conn)?;
        std::fs::remove_file(self.cluster.data_dir().join("bench-licenses.copy")).ok();
        Ok(CopyFigures { rows, out, into })
    }

    pub(crate) fn top_statements(&self) -> Result<Vec<TopStatement>> {
        if let Counter::Transactions = self.counter {
            return Ok(Vec::new());
        }
        // Grouped by the statement's first 60 characters: a multi-row
        // INSERT is a different statement for every row count.
        let sql = "SELECT sum(s.calls)::bigint AS calls, sum(s.total_exec_time)::float8 AS ms, \
                   left(regexp_replace(s.query, '\\s+', ' ', 'g'), 60) AS query \
                   FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                   WHERE d.datname = 'bench' AND s.query NOT ILIKE '%pg_stat_statements%' \
                   GROUP BY 3 ORDER BY 2 DESC LIMIT 10";
        Ok(diesel::sql_query(sql).load(&mut self.conn()?)?)
    }

    /// CPU seconds of the server's exited children (the backends of
    /// finished sessions), from the postmaster's `cutime + cstime`.
    pub(crate) fn backends_cpu(&self) -> Option<f64> {
        let pid_file = std::fs::read_to_string(self.cluster.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; cutime and cstime are fields 16 and 17.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields.get(13)?.parse::<f64>().ok()? + fields.get(14)?.parse::<f64>().ok()?;
        Some(ticks / clock_ticks())
    }

    pub(crate) fn stop(&self) {
        if let Err(e) = self.cluster.stop(false) {
            eprintln!("could not stop the bench cluster: {e:#}");
        }
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        // Stops a server left running by an error path; a second stop just fails quietly.
        let _ = self.cluster.stop(true);
    }
}

/// The contrib module ships a control file in the server's share directory.
pub(crate) fn stat_statements_installed(binaries: &Binaries) -> bool {
    let sharedir = Command::new(binaries.bindir.join("pg_config"))
        .arg("--sharedir")
        .output()
        .or_else(|_| Command::new("pg_config").arg("--sharedir").output())
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    sharedir.is_some_and(|dir| dir.join("extension/pg_stat_statements.control").is_file())
}

pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
