//! The license store on a real PostgreSQL server: migrations, the
//! constraints the rules rely on, and the transactional page write.

mod common;

// Page and write-back queries held to their own rows by EXPLAIN.
#[path = "store/explain.rs"]
mod explain;

// The outbox claim's cost: its rows rewritten in place.
#[path = "store/claims.rs"]
mod claims;

// A page's write: every value as written at any size, and the indexes it pays for.
#[path = "store/page_writes.rs"]
mod page_writes;

// What ledger and outbox rows name: checked once a statement, and kept.
#[path = "store/references.rs"]
mod references;

use chrono::{TimeZone, Utc};
use common::TestDb;
use diesel::prelude::*;
use licensync::domain::{ActionKind, EmailStatus, GrantKey, LicenseState, LicenseStatus};
use licensync::store::models::NewLicenseRow;
use licensync::store::{LicenseFilter, LicenseWrite};

fn state(email: Option<&str>) -> LicenseState {
    LicenseState {
        status: LicenseStatus::Active,
        product_ids: vec!["pro".into(), "addon".into()],
        product_name: Some("Pro with add-on".into()),
        stripe_customer_id: Some("cus_1".into()),
        stripe_subscription_id: Some("sub_1".into()),
        stripe_payment_intent: None,
        customer_email: email.map(str::to_owned),
        customer_name: Some("Ada".into()),
        quantity: 2,
        ip_limit: Some(3),
        hwid_limit: Some(4),
        expiration_days: None,
        expiration_start: None,
        expires_at: Some(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()),
        livemode: false,
    }
}

fn write(key: &str, item: &str, email: Option<&str>) -> LicenseWrite {
    let grant = GrantKey::subscription_item(item);
    let state = state(email);
    LicenseWrite {
        license: NewLicenseRow::new(key.into(), &grant, &state),
        action: ActionKind::Issue,
        before: None,
        after: serde_json::to_value(&state).unwrap(),
        stripe_object: "sub_1".into(),
        email: Some(if email.is_some() {
            EmailStatus::Pending
        } else {
            EmailStatus::NoRecipient
        }),
        write_back: None,
    }
}

/// The names a catalog query returns (its one column `name`), sorted.
fn catalog_names(db: &TestDb, sql: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let mut conn = db.conn();
    let mut names: Vec<String> = diesel::sql_query(sql)
        .load::<Name>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    names.sort();
    names
}

fn table_names(db: &TestDb) -> Vec<String> {
    catalog_names(
        db,
        "SELECT tablename::text AS name FROM pg_tables \
         WHERE schemaname = 'public' AND tablename <> '__diesel_schema_migrations'",
    )
}

#[test]
fn migrations_apply_and_roll_back_on_a_real_server() {
    let db = TestDb::empty();
    assert!(table_names(&db).is_empty());
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert_eq!(db.store.migrate().unwrap().len(), migrations);
    assert_eq!(
        table_names(&db),
        [
            "email_outbox",
            "license_addresses",
            "license_clocks",
            "license_key_history",
            "license_ledger",
            "licenses",
            "machine_activations",
            "runs",
            "stripe_writes",
            "sync_state"
        ]
    );
    db.store.revert_all_migrations().unwrap();
    assert!(table_names(&db).is_empty(), "down.sql leaves nothing behind");
    assert_eq!(
        db.store.migrate().unwrap().len(),
        migrations,
        "and the migrations apply again after a rollback"
    );
    assert!(
        db.store.migrate().unwrap().is_empty(),
        "a second migrate has nothing to do"
    );
}

#[test]
fn the_database_refuses_two_licenses_with_one_key() {
    let db = TestDb::new();
    db.store
        .write_page(None, &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", None)])
        .unwrap();
    let err = db
        .store
        .write_page(None, &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_2", None)])
        .unwrap_err();
    assert!(format!("{err:#}").contains("licenses_key_key"), "{err:#}");
}

#[test]
fn the_database_refuses_two_licenses_for_one_grant() {
    let db = TestDb::new();
    db.store
        .write_page(None, &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", None)])
        .unwrap();
    let mut conn = db.conn();
    let err = diesel::sql_query(
        "INSERT INTO licenses (key, status, product_ids, source_kind, source_id, livemode) \
         VALUES ('BBBBB-BBBBB-BBBBB-BBBBB-BBBBB', 'active', '{pro}', 'subscription_item', 'si_1', false)",
    )
    .execute(&mut conn)
    .unwrap_err();
    assert!(err.to_string().contains("licenses_grant_key"), "{err}");
}

#[test]
fn an_upsert_on_the_natural_key_keeps_the_issued_key() {
    let db = TestDb::new();
    let first = db
        .store
        .write_page(
            None,
            &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", Some("a@x.test"))],
        )
        .unwrap();
    let mut again = write("ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ-ZZZZZ", "si_1", Some("a@x.test"));
    again.action = ActionKind::Extend;
    again.license.state.status = licensync::domain::LicenseStatus::Expired;
    let second = db.store.write_page(None, &[again]).unwrap();
    assert_eq!(first[0].license_id, second[0].license_id);
    assert_eq!(second[0].key, "AAAAA-AAAAA-AAAAA-AAAAA-AAAAA");
    let all = db.store.list_licenses(&LicenseFilter::default()).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state.status, LicenseStatus::Expired);
    let ledger = db.store.ledger(all[0].id).unwrap();
    assert_eq!(
        ledger.iter().map(|l| l.entry.action.as_str()).collect::<Vec<_>>(),
        ["issue", "extend"]
    );
    assert_eq!(ledger[0].entry.after["key"], "AAAAA-AAAAA-AAAAA-AAAAA-AAAAA");
    let emails = db.store.outbox_for_license(all[0].id).unwrap();
    assert_eq!(emails.len(), 1, "one email per license and kind, even when asked twice");
}

#[test]
fn the_ledger_is_append_only() {
    let db = TestDb::new();
    db.store
        .write_page(None, &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", None)])
        .unwrap();
    let mut conn = db.conn();
    let err = diesel::sql_query("UPDATE license_ledger SET action = 'forged'")
        .execute(&mut conn)
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = diesel::sql_query("DELETE FROM license_ledger")
        .execute(&mut conn)
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[test]
fn a_license_without_recipient_gets_an_outbox_row_marked_no_recipient() {
    let db = TestDb::new();
    let written = db
        .store
        .write_page(None, &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", None)])
        .unwrap();
    let emails = db.store.outbox_for_license(written[0].license_id).unwrap();
    assert_eq!(emails[0].status, EmailStatus::NoRecipient);
    assert_eq!(db.store.outbox_counts().unwrap().no_recipient, 1);
}

#[test]
fn a_page_that_fails_writes_nothing() {
    let db = TestDb::new();
    let good = write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", None);
    let mut bad = write("BBBBB-BBBBB-BBBBB-BBBBB-BBBBB", "si_2", None);
    // PostgreSQL text cannot hold NUL: the second row of the page fails.
    bad.license.state.customer_email = Some("nul\0@example.test".into());
    assert!(db.store.write_page(None, &[good, bad]).is_err());
    assert!(db.store.list_licenses(&LicenseFilter::default()).unwrap().is_empty());
}

#[test]
fn only_one_run_holds_the_lock() {
    let db = TestDb::new();
    let first = db.store.try_lock_run().unwrap();
    assert!(first.is_some());
    assert!(db.store.try_lock_run().unwrap().is_none());
    drop(first);
    assert!(
        db.store.try_lock_run().unwrap().is_some(),
        "released when the holder goes away"
    );
}

#[test]
fn a_fenced_page_write_fails_once_its_run_lock_is_gone_and_a_killed_runs_row_is_closed() {
    let db = TestDb::new();
    let lock = db.store.try_lock_run().unwrap().unwrap();
    let fenced = db.store.fenced(&lock);
    fenced
        .write_page(None, &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", None)])
        .expect("written while the lock is held");
    // The lock's session ends (a server restart ends them all) and another
    // run takes the lock: this run's next page must not land.
    drop(lock);
    let other = db.store.try_lock_run().unwrap().expect("the lock is free again");
    let err = fenced
        .write_page(None, &[write("BBBBB-BBBBB-BBBBB-BBBBB-BBBBB", "si_2", None)])
        .unwrap_err();
    assert!(format!("{err:#}").contains("no longer holds the run lock"), "{err:#}");
    assert!(fenced.check_fence().is_err(), "nor may it record success");
    assert!(db.store.fenced(&other).check_fence().is_ok());
    assert_eq!(db.store.list_licenses(&LicenseFilter::default()).unwrap().len(), 1);

    // A run killed mid-way left its row `running`; the run holding the lock
    // closes it as failed, and leaves finished runs alone.
    let killed = db
        .store
        .start_run(licensync::domain::RunMode::Full, Some(false))
        .unwrap();
    assert_eq!(db.store.fenced(&other).abandon_unfinished_runs().unwrap(), 1);
    let row = db
        .store
        .recent_runs(5)
        .unwrap()
        .into_iter()
        .find(|r| r.id == killed)
        .unwrap();
    assert_eq!(row.outcome, licensync::domain::RunOutcome::Failed);
    assert!(row.finished_at.is_some() && row.error.is_some(), "{row:?}");
    assert_eq!(db.store.abandon_unfinished_runs().unwrap(), 0);
}

#[test]
fn a_page_refreshes_the_stripe_side_of_an_override_and_leaves_alone_a_license_an_operator_changed_meanwhile() {
    use licensync::operator::{Command, Request, decide};
    let db = TestDb::new();
    db.store
        .write_page(None, &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", None)])
        .unwrap();
    db.store
        .write_page(None, &[write("BBBBB-BBBBB-BBBBB-BBBBB-BBBBB", "si_2", None)])
        .unwrap();
    let request = Request {
        command: Command::Pin {
            hwid_limit: Some(50),
            ip_limit: None,
            expires_at: None,
        },
        reason: Some("enterprise deal".into()),
        by: "alice".into(),
        now: Utc::now(),
        write_back: false,
    };
    let pinned = db
        .store
        .operate("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", |l| decide(l, &request))
        .unwrap()
        .expect("the license exists");
    let mut o = pinned.after.operator_override.clone().unwrap();
    assert_eq!(
        (o.stripe.hwid_limit, pinned.after.state.hwid_limit),
        (Some(4), Some(50))
    );
    let ledger = db.store.ledger(pinned.after.id).unwrap().len();

    // A page planned before the pin (it knows no override) leaves the license alone.
    let mut stale = write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", None);
    stale.action = ActionKind::Update;
    stale.email = None;
    assert!(db.store.write_page(None, &[stale.clone()]).unwrap().is_empty());
    let found = db.store.find_license("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA").unwrap().unwrap();
    assert_eq!(
        (found.state.hwid_limit, found.operator_override.as_ref()),
        (Some(50), Some(&o))
    );
    assert_eq!(db.store.ledger(found.id).unwrap().len(), ledger, "no ledger row either");

    // A page planned with the override refreshes what Stripe asks, and the
    // other licenses of a page are written as usual.
    o.stripe.hwid_limit = Some(8);
    let mut refresh = stale;
    refresh.license.state.hwid_limit = Some(50);
    refresh.license.operator_override = Some(serde_json::to_value(&o).unwrap());
    let mut other = write("BBBBB-BBBBB-BBBBB-BBBBB-BBBBB", "si_2", None);
    other.action = ActionKind::Update;
    other.email = None;
    other.license.state.quantity = 7;
    let written = db.store.write_page(None, &[refresh, other]).unwrap();
    assert_eq!(written.len(), 2);
    let found = db.store.find_license("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA").unwrap().unwrap();
    assert_eq!(found.operator_override.unwrap().stripe.hwid_limit, Some(8));
    let other = db.store.find_license("BBBBB-BBBBB-BBBBB-BBBBB-BBBBB").unwrap().unwrap();
    assert_eq!((other.state.quantity, other.operator_override), (7, None));
}

#[test]
fn a_single_account_database_migrates_in_place_and_its_rows_stay_the_keys_own() {
    use diesel::connection::SimpleConnection;
    use diesel_migrations::MigrationHarness;
    let db = TestDb::empty();
    let all = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    let mut conn = db.conn();
    // The database as the release before accounts left it.
    for _ in 0..all - 1 {
        conn.run_next_migration(licensync::store::MIGRATIONS).unwrap();
    }
    conn.batch_execute(
        "INSERT INTO licenses (key, status, product_ids, source_kind, source_id, stripe_subscription_id, livemode) \
             VALUES ('AAAAA-AAAAA-AAAAA-AAAAA-AAAAA', 'active', '{pro}', 'subscription_item', 'si_1', 'sub_1', false); \
         INSERT INTO email_outbox (license_id, kind, recipient) \
             SELECT id, 'license_issued', 'ada@example.test' FROM licenses; \
         INSERT INTO runs (mode, outcome) VALUES ('full', 'succeeded'); \
         INSERT INTO sync_state (name, value) VALUES ('events', '{}');",
    )
    .unwrap();
    assert_eq!(db.store.migrate().unwrap().len(), 1);

    // Everything belongs to the key's own account, as it did.
    let own = db.store.for_account(None);
    let found = own
        .licenses_for(&[GrantKey::subscription_item("si_1")], &[], &[])
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].stripe_account, None);
    assert!(own.cursor("events").unwrap().is_some());
    assert_eq!(own.recent_runs(5).unwrap().len(), 1);
    assert_eq!(own.outbox_counts().unwrap().pending, 1);
    // A connected account sees none of it.
    let other = db.store.for_account(Some("acct_1Other"));
    assert!(
        other
            .licenses_for(&[GrantKey::subscription_item("si_1")], &["sub_1".into()], &[])
            .unwrap()
            .is_empty()
    );
    assert!(other.cursor("events").unwrap().is_none());
    assert!(other.recent_runs(5).unwrap().is_empty());
    assert_eq!(other.outbox_counts().unwrap().pending, 0);
    assert_eq!(other.license_counts().unwrap()["active"], 0);
    assert_eq!(
        db.store.license_counts().unwrap()["active"],
        1,
        "unscoped: the whole database"
    );
}

#[test]
fn two_accounts_hold_grants_with_the_same_id_their_own_locks_and_cursors() {
    let db = TestDb::new();
    let (a, b) = (db.store.for_account(None), db.store.for_account(Some("acct_1B")));
    let written_a = a
        .write_page(
            None,
            &[write("AAAAA-AAAAA-AAAAA-AAAAA-AAAAA", "si_1", Some("a@example.test"))],
        )
        .unwrap();
    let written_b = b
        .write_page(
            None,
            &[write("BBBBB-BBBBB-BBBBB-BBBBB-BBBBB", "si_1", Some("b@example.test"))],
        )
        .unwrap();
    assert_ne!(
        written_a[0].license_id, written_b[0].license_id,
        "two licenses for one Stripe id"
    );
    let of_b = b
        .licenses_for(&[GrantKey::subscription_item("si_1")], &[], &[])
        .unwrap();
    assert_eq!(of_b.len(), 1);
    assert_eq!(of_b[0].stripe_account.as_deref(), Some("acct_1B"));
    assert_eq!(of_b[0].state.customer_email.as_deref(), Some("b@example.test"));
    // Re-writing one account's grant leaves the other's alone.
    b.write_page(
        None,
        &[write("CCCCC-CCCCC-CCCCC-CCCCC-CCCCC", "si_1", Some("b2@example.test"))],
    )
    .unwrap();
    let of_a = a
        .licenses_for(&[GrantKey::subscription_item("si_1")], &[], &[])
        .unwrap();
    assert_eq!(of_a[0].state.customer_email.as_deref(), Some("a@example.test"));
    assert_eq!(of_a[0].key, "AAAAA-AAAAA-AAAAA-AAAAA-AAAAA");
    // Each account's outbox row is its own (its sender sends it).
    let outbox_b = b.outbox_for_license(of_b[0].id).unwrap();
    assert_eq!(outbox_b[0].stripe_account.as_deref(), Some("acct_1B"));
    assert_eq!(b.outbox_counts().unwrap().pending, 1);

    // One run per account at a time; accounts do not wait for each other.
    let lock_a = a.try_lock_run().unwrap().expect("a's lock");
    let lock_b = b.try_lock_run().unwrap().expect("b's lock, while a holds its own");
    assert!(b.try_lock_run().unwrap().is_none(), "b's lock is taken");
    assert!(db.store.for_account(None).try_lock_run().unwrap().is_none());
    // Each fence follows its own lock.
    let (fenced_a, fenced_b) = (a.fenced(&lock_a), b.fenced(&lock_b));
    drop(lock_a);
    // The server ends the closed session, and releases its lock, on its own time.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fenced_a.check_fence().is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(fenced_a.check_fence().is_err());
    assert!(fenced_b.check_fence().is_ok());
    // Cursors are per account.
    a.set_cursor("events", "a").unwrap();
    b.set_cursor("events", "b").unwrap();
    assert_eq!(a.cursor("events").unwrap().unwrap().0, "a");
    assert_eq!(b.cursor("events").unwrap().unwrap().0, "b");
    let accounts = db.store.known_accounts().unwrap();
    assert_eq!(accounts, vec![None, Some("acct_1B".to_owned())]);
}
