//! What the key API keeps (`licensync serve`): the machines that hold a
//! license's seats, the client addresses seen for its IP window, and the
//! clock of a license whose expiry starts at activation. Licenses are only
//! read here; the batch job stays their one writer.
//!
//! A request that may write (take a seat, record an address, start the
//! clock) reads its facts under a transaction-scoped advisory lock on the
//! license's key, so concurrent requests of one license are decided one
//! after the other: two activations never take the same last seat. Requests of
//! different licenses never wait for each other, and the batch job never
//! waits for the service (an advisory lock is not a row lock).

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;

use super::Store;
use super::ledger::NewLedgerRow;
use super::license::LicenseRow;
use crate::domain::{LedgerAction, License, OperatorAction};
use crate::schema::{license_addresses, license_clocks, machine_activations};

/// The advisory lock class of a license's key API requests (the run lock
/// and the senders use classes of their own).
const SEAT_LOCK_CLASS: i32 = 0x6c73_6b61; // "lska"

/// What one request needs to know of a license, read in one statement.
#[derive(Debug, Clone)]
pub struct KeyFacts {
    pub license: License,
    /// When its activation clock started, if it has one.
    pub clock_started: Option<DateTime<Utc>>,
    /// Machines activated.
    pub machines: i64,
    /// When the request's machine was last seen, if it is activated.
    pub machine_seen: Option<DateTime<Utc>>,
    /// Distinct client addresses other than the request's seen since the
    /// start of the IP window.
    pub other_addresses: i64,
    /// When the request's address was last seen, if ever.
    pub address_seen: Option<DateTime<Utc>>,
}

/// The question a request asks of [`Store::key_facts`].
#[derive(Debug, Clone, Copy)]
pub struct KeyQuery<'a> {
    pub key: &'a str,
    /// SHA-256 of the machine fingerprint, lowercase hex.
    pub machine_hash: Option<&'a str>,
    pub address: &'a str,
    /// Addresses seen before this do not count.
    pub window_start: DateTime<Utc>,
}

/// What a request decided to write, under the license's lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyWrites {
    /// Take a seat for this machine (or refresh its `last_seen`).
    pub activate: Option<(String, Option<String>)>,
    /// Refresh an activated machine's `last_seen`.
    pub touch_machine: Option<String>,
    /// Record this client address as seen now.
    pub record_address: Option<String>,
    /// Start the activation clock now (never moves a started one).
    pub start_clock: bool,
}

impl KeyWrites {
    pub fn is_empty(&self) -> bool {
        *self == KeyWrites::default()
    }
}

/// An activated machine, as operators see it.
#[derive(Debug, Clone, Queryable, Selectable, serde::Serialize)]
#[diesel(table_name = machine_activations)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct MachineRow {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub license_id: i64,
    /// Never shown whole: see [`MachineRow::prefix`].
    #[serde(skip)]
    pub machine_hash: String,
    pub name: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

impl MachineRow {
    /// The first 12 hex digits of the fingerprint's hash: enough to tell
    /// machines apart, too few to find the fingerprint.
    pub fn prefix(&self) -> &str {
        &self.machine_hash[..12.min(self.machine_hash.len())]
    }
}

/// One statement: the license by its key (a replaced key is no key), with
/// everything a request decides on, each count a subquery on an index. Built
/// with diesel's query builder, so each connection prepares it once.
fn read_facts(conn: &mut PgConnection, query: &KeyQuery<'_>) -> Result<Option<KeyFacts>> {
    use crate::schema::licenses;
    let machines = machine_activations::table
        .filter(machine_activations::license_id.eq(licenses::id))
        .count()
        .single_value();
    let machine_seen = machine_activations::table
        .filter(machine_activations::license_id.eq(licenses::id))
        // No hash matches the empty string (the column holds 64 hex digits).
        .filter(machine_activations::machine_hash.eq(query.machine_hash.unwrap_or("")))
        .select(machine_activations::last_seen)
        .single_value();
    let other_addresses = license_addresses::table
        .filter(license_addresses::license_id.eq(licenses::id))
        .filter(license_addresses::last_seen.ge(query.window_start))
        .filter(license_addresses::address.ne(query.address))
        .count()
        .single_value();
    let address_seen = license_addresses::table
        .filter(license_addresses::license_id.eq(licenses::id))
        .filter(license_addresses::address.eq(query.address))
        .select(license_addresses::last_seen)
        .single_value();
    #[allow(clippy::type_complexity)]
    let row: Option<(
        LicenseRow,
        Option<DateTime<Utc>>,
        Option<i64>,
        Option<DateTime<Utc>>,
        Option<i64>,
        Option<DateTime<Utc>>,
    )> = licenses::table
        .left_join(license_clocks::table)
        .filter(licenses::key.eq(query.key))
        .select((
            LicenseRow::as_select(),
            license_clocks::started_at.nullable(),
            machines,
            machine_seen,
            other_addresses,
            address_seen,
        ))
        .first(conn)
        .optional()
        .context("reading a license for the key API")?;
    row.map(
        |(license, clock_started, machines, machine_seen, other_addresses, address_seen)| {
            Ok(KeyFacts {
                license: license.into_domain()?,
                clock_started,
                machines: machines.unwrap_or(0),
                machine_seen,
                other_addresses: other_addresses.unwrap_or(0),
                address_seen,
            })
        },
    )
    .transpose()
}

fn write(conn: &mut PgConnection, license_id: i64, writes: &KeyWrites, now: DateTime<Utc>) -> QueryResult<()> {
    if let Some((hash, name)) = &writes.activate {
        diesel::insert_into(machine_activations::table)
            .values((
                machine_activations::license_id.eq(license_id),
                machine_activations::machine_hash.eq(hash),
                machine_activations::name.eq(name),
                machine_activations::first_seen.eq(now),
                machine_activations::last_seen.eq(now),
            ))
            .on_conflict((machine_activations::license_id, machine_activations::machine_hash))
            .do_update()
            .set(machine_activations::last_seen.eq(now))
            .execute(conn)?;
    }
    if let Some(hash) = &writes.touch_machine {
        diesel::update(machine_activations::table)
            .filter(machine_activations::license_id.eq(license_id))
            .filter(machine_activations::machine_hash.eq(hash))
            .set(machine_activations::last_seen.eq(now))
            .execute(conn)?;
    }
    if let Some(address) = &writes.record_address {
        diesel::insert_into(license_addresses::table)
            .values((
                license_addresses::license_id.eq(license_id),
                license_addresses::address.eq(address),
                license_addresses::last_seen.eq(now),
            ))
            .on_conflict((license_addresses::license_id, license_addresses::address))
            .do_update()
            .set(license_addresses::last_seen.eq(now))
            .execute(conn)?;
    }
    if writes.start_clock {
        diesel::insert_into(license_clocks::table)
            .values((
                license_clocks::license_id.eq(license_id),
                license_clocks::started_at.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
    }
    Ok(())
}

/// The seat lock of a key: the first four bytes of its SHA-256. Computed
/// here rather than by the database, so the lock can be taken in the same
/// round trip as `BEGIN` with nothing from the request spliced into SQL.
fn seat_lock(key: &str) -> i32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Runs `f` in a transaction that holds the key's seat lock from its first
/// statement: `BEGIN` and the lock travel in one round trip (an activation
/// is a handful of round trips, and each costs both processes a wake-up).
fn locked_transaction<T>(
    conn: &mut PgConnection,
    key: &str,
    f: impl FnOnce(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    let begin = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({SEAT_LOCK_CLASS}, {})",
        seat_lock(key)
    );
    AnsiTransactionManager::begin_transaction_sql(conn, &begin).context("locking a license's seats")?;
    match f(conn) {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn).context("committing a key API answer")?;
            Ok(value)
        }
        Err(error) => {
            // The error is the one to report; a failed rollback leaves the
            // connection broken, and the pool discards it.
            let _ = AnsiTransactionManager::rollback_transaction(conn);
            Err(error)
        }
    }
}

impl Store {
    /// A request's facts, read without a lock: enough for every answer
    /// that writes nothing.
    pub fn key_facts(&self, query: &KeyQuery<'_>) -> Result<Option<KeyFacts>> {
        let mut conn = self.conn()?;
        read_facts(&mut conn, query)
    }

    /// Reads the facts under the license's lock, lets `decide` choose the
    /// answer and its writes from them, and writes them in the same
    /// transaction. `None`: the key matches no license (any more).
    ///
    /// The lock is taken on the key's hash: a license has one key at a
    /// time, so its requests wait for each other, and the lock needs no read
    /// before it. Keys whose hashes collide only wait for each other.
    pub fn key_request<T>(
        &self,
        query: &KeyQuery<'_>,
        now: DateTime<Utc>,
        decide: impl FnOnce(&KeyFacts) -> (T, KeyWrites),
    ) -> Result<Option<T>> {
        let mut conn = self.conn()?;
        locked_transaction(&mut conn, query.key, |conn| {
            let Some(facts) = read_facts(conn, query)? else {
                return Ok(None);
            };
            let (answer, writes) = decide(&facts);
            write(conn, facts.license.id, &writes, now).context("recording a key API answer")?;
            Ok(Some(answer))
        })
    }

    /// Frees a machine's seat; whether it held one.
    pub fn deactivate_machine(&self, license_id: i64, machine_hash: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let n = diesel::delete(machine_activations::table)
            .filter(machine_activations::license_id.eq(license_id))
            .filter(machine_activations::machine_hash.eq(machine_hash))
            .execute(&mut conn)
            .context("deactivating a machine")?;
        Ok(n > 0)
    }

    /// A license's machines, first activated first.
    pub fn machines(&self, license_id: i64) -> Result<Vec<MachineRow>> {
        let mut conn = self.conn()?;
        machine_activations::table
            .filter(machine_activations::license_id.eq(license_id))
            .order(machine_activations::id.asc())
            .select(MachineRow::as_select())
            .load(&mut conn)
            .context("reading a license's machines")
    }

    /// An operator frees seats: `machine` (a hash or the start of one,
    /// unambiguous), or every machine; with a ledger row naming what was
    /// freed. Returns the machines freed and the machines kept, as the
    /// transaction saw them (the ledger row's before and after).
    pub fn operator_deactivate(
        &self,
        license_id: i64,
        machine_prefix: Option<&str>,
        reason: &str,
        operator: &str,
    ) -> Result<(Vec<MachineRow>, Vec<MachineRow>)> {
        let mut conn = self.conn()?;
        conn.transaction::<_, anyhow::Error, _>(|conn| {
            let machines: Vec<MachineRow> = machine_activations::table
                .filter(machine_activations::license_id.eq(license_id))
                .order(machine_activations::id.asc())
                .select(MachineRow::as_select())
                .for_update()
                .load(conn)
                .context("reading a license's machines")?;
            let before: Vec<String> = machines.iter().map(|m| m.prefix().to_owned()).collect();
            let (freed, kept): (Vec<MachineRow>, Vec<MachineRow>) = machines
                .into_iter()
                .partition(|m| machine_prefix.is_none_or(|prefix| m.machine_hash.starts_with(prefix)));
            if freed.is_empty() {
                return Ok((freed, kept));
            }
            let ids: Vec<i64> = freed.iter().map(|m| m.id).collect();
            diesel::delete(machine_activations::table)
                .filter(machine_activations::id.eq_any(&ids))
                .execute(conn)
                .context("freeing seats")?;
            let after: Vec<&str> = kept.iter().map(MachineRow::prefix).collect();
            diesel::insert_into(crate::schema::license_ledger::table)
                .values(NewLedgerRow {
                    license_id,
                    run_id: None,
                    action: LedgerAction::Operator(OperatorAction::Deactivate),
                    before: Some(serde_json::json!({ "machines": before })),
                    after: serde_json::json!({ "machines": after }),
                    stripe_object: super::overrides::OPERATOR_CAUSE.to_owned(),
                    reason: Some(reason.to_owned()),
                    operator: Some(operator.to_owned()),
                })
                .execute(conn)
                .context("writing the ledger row")?;
            Ok((freed, kept))
        })
    }

    /// Forgets client addresses no request has come from since `before`:
    /// they are personal data, kept only as long as the IP window needs.
    pub fn forget_addresses(&self, before: DateTime<Utc>) -> Result<usize> {
        let mut conn = self.conn()?;
        diesel::delete(license_addresses::table)
            .filter(license_addresses::last_seen.lt(before))
            .execute(&mut conn)
            .context("forgetting old client addresses")
    }

    /// Whether the database answers (the key API's `/healthz`).
    pub fn ping(&self) -> bool {
        self.conn()
            .and_then(|mut c| {
                diesel::sql_query("SELECT 1")
                    .execute(&mut c)
                    .context("pinging the database")
            })
            .is_ok()
    }
}
