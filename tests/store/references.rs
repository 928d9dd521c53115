//! What a ledger or outbox row names exists and stays: checked once per
//! insert statement instead of row by row, and licenses and runs never go
//! away. A module of `tests/store.rs`.

use diesel::prelude::*;

use super::common::TestDb;
use super::{catalog_names, write};

/// Runs `sql` and returns the server's error with its SQLSTATE.
fn refused(db: &TestDb, sql: &str) -> String {
    let mut conn = db.conn();
    match diesel::sql_query(sql).execute(&mut conn) {
        Ok(n) => panic!("accepted ({n} rows): {sql}"),
        Err(diesel::result::Error::DatabaseError(kind, info)) => format!("{kind:?}: {}", info.message()),
        Err(e) => panic!("{sql}: {e}"),
    }
}

fn one_license(db: &TestDb) -> i64 {
    let written = db
        .store
        .write_page(
            None,
            &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", Some("a@x.test"))],
        )
        .unwrap();
    written[0].license_id
}

#[test]
fn a_ledger_or_outbox_row_that_names_nothing_is_refused_with_the_whole_statement() {
    let db = TestDb::new();
    let id = one_license(&db);
    let missing = id + 1_000;
    // One good row beside one bad one: the statement fails whole.
    let err = refused(
        &db,
        &format!(
            "INSERT INTO license_ledger (license_id, action, after, stripe_object) \
             VALUES ({id}, 'extend', '{{}}', 'sub_1'), ({missing}, 'extend', '{{}}', 'sub_1')"
        ),
    );
    assert!(
        err.starts_with("ForeignKeyViolation")
            && err.contains(&format!("license_ledger.license_id {missing} names no license")),
        "{err}"
    );
    let err = refused(
        &db,
        &format!(
            "INSERT INTO license_ledger (license_id, run_id, action, after, stripe_object) \
             VALUES ({id}, 424242, 'extend', '{{}}', 'sub_1')"
        ),
    );
    assert!(err.contains("license_ledger.run_id 424242 names no run"), "{err}");
    let err = refused(
        &db,
        &format!("INSERT INTO email_outbox (license_id, kind) VALUES ({missing}, 'resend:1')"),
    );
    assert!(
        err.starts_with("ForeignKeyViolation") && err.contains("names no license"),
        "{err}"
    );
    let err = refused(&db, &format!("UPDATE email_outbox SET license_id = {missing}"));
    assert!(err.contains("never changes"), "{err}");
    assert_eq!(db.store.ledger(id).unwrap().len(), 1, "nothing was written");
    assert_eq!(db.store.outbox_for_license(id).unwrap().len(), 1);
}

#[test]
fn licenses_and_runs_are_never_deleted_truncated_or_renumbered() {
    let db = TestDb::new();
    one_license(&db);
    let mut conn = db.conn();
    diesel::sql_query("INSERT INTO runs (mode) VALUES ('full')")
        .execute(&mut conn)
        .unwrap();
    for table in ["licenses", "runs"] {
        for sql in [
            format!("DELETE FROM {table}"),
            format!("TRUNCATE {table} CASCADE"),
            format!("UPDATE {table} SET id = id + 1000"),
        ] {
            let err = refused(&db, &sql);
            assert!(err.contains("never deleted, truncated or renumbered"), "{sql}: {err}");
        }
    }
    assert_eq!(catalog_names(&db, "SELECT count(*)::text AS name FROM licenses"), ["1"]);
}

/// A foreign key on a page's tables checks and locks each row's license on
/// its own: about two thirds of the ledger insert's time at a first
/// import. One added back fails here.
#[test]
fn the_tables_a_page_inserts_into_check_their_references_once_a_statement() {
    let db = TestDb::new();
    let row_checks = catalog_names(
        &db,
        "SELECT conrelid::regclass::text || ' ' || conname AS name FROM pg_constraint \
         WHERE contype = 'f' AND conrelid IN ('license_ledger'::regclass, 'email_outbox'::regclass)",
    );
    assert!(row_checks.is_empty(), "{row_checks:?}");
    let statement_checks = catalog_names(
        &db,
        "SELECT tgrelid::regclass::text || ' ' || tgname AS name FROM pg_trigger \
         WHERE NOT tgisinternal AND tgname LIKE '%names%' \
         AND tgtype & 1 = 0", // TRIGGER_TYPE_ROW unset: once per statement
    );
    assert_eq!(
        statement_checks,
        [
            "email_outbox email_outbox_names_licenses",
            "license_ledger license_ledger_names_licenses",
            "license_ledger license_ledger_names_runs",
        ]
    );
}
