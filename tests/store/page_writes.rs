//! A page's write: its rows travel to the server as one array per column
//! (`store::page`) and every column arrives as it was written, at any page
//! size; and each index it pays for on `licenses` serves a query. A module
//! of `tests/store.rs`.

use diesel::prelude::*;

use super::common::TestDb;
use super::{catalog_names, write};
use licensync::store::LicenseFilter;

/// A large page, product ids that need quoting in an array's text, and the
/// same page again as a later run finds it.
#[test]
fn a_large_page_lands_whole_and_lands_again_as_an_update() {
    let db = TestDb::new();
    let n = 1_000;
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let mut w = write(&format!("KEY-{i:05}"), &format!("si_{i}"), Some("buyer@example.com"));
            w.license.state.product_ids = vec![format!("prod_{i}"), "a \"quoted\", \\ id".into()];
            w
        })
        .collect();
    let written = db.store.write_page(None, &writes).unwrap();
    assert_eq!(written.len(), n);

    let licenses = db.store.list_licenses(&LicenseFilter::default()).unwrap();
    assert_eq!(licenses.len(), n);
    let first = licenses.iter().find(|l| l.grant.source_id == "si_17").unwrap();
    assert_eq!(first.key, "KEY-00017");
    assert_eq!(first.state.product_ids, ["prod_17", "a \"quoted\", \\ id"]);
    assert_eq!(first.state.quantity, 2);
    assert_eq!(first.state.hwid_limit, Some(4));
    assert_eq!(db.store.outbox_counts().unwrap().pending, n as i64);
    let ledger = db.store.ledger(first.id).unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].entry.after["key"], "KEY-00017");

    // Again, as a run that finds the same grants: updated in place, the
    // keys kept, no second email.
    let again: Vec<_> = writes
        .iter()
        .map(|w| {
            let mut w = w.clone();
            w.license.key = format!("NEW-{}", w.license.key);
            w.license.state.quantity = 5;
            w.email = Some(licensync::domain::EmailStatus::Pending);
            w
        })
        .collect();
    let rewritten = db.store.write_page(None, &again).unwrap();
    assert_eq!(rewritten.len(), n);
    assert!(
        rewritten.iter().all(|w| w.key.starts_with("KEY-")),
        "a key never changes"
    );
    let licenses = db.store.list_licenses(&LicenseFilter::default()).unwrap();
    assert!(licenses.iter().all(|l| l.state.quantity == 5));
    assert_eq!(db.store.outbox_counts().unwrap().pending, n as i64);

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.conn();
    let ledger_rows: Count = diesel::sql_query("SELECT count(*) AS n FROM license_ledger")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(ledger_rows.n, 2 * n as i64);
}

/// Each index of `licenses` is another entry for every license a page
/// writes, and the license upsert is a first import's largest statement.
/// Each one here is read by a query; an index added without one fails.
#[test]
fn every_index_of_licenses_serves_a_query() {
    let db = TestDb::new();
    let found = catalog_names(
        &db,
        "SELECT indexname::text AS name FROM pg_indexes WHERE tablename = 'licenses'",
    );
    let mut expected = [
        // A license by id: the ledger, the outbox, the key API's tables.
        "licenses_pkey",
        // A license by key (the key API, `licenses show`); one key, one license.
        "licenses_key_key",
        // A page's grants by natural key, and the upsert's conflict target.
        "licenses_grant_key",
        // A page's licenses by subscription and by reversed payment.
        "licenses_subscription_account_idx",
        "licenses_payment_intent_account_idx",
        // The licenses of one purchase, for the write-back.
        "licenses_purchase_idx",
        // `licenses list --email`.
        "licenses_customer_email_idx",
        // The clock sweep: active licenses whose time ran out.
        "licenses_active_expiry_idx",
        // `status` and the metrics: licenses per account and status.
        "licenses_account_status_idx",
        // `status`: the licenses under an operator override.
        "licenses_operator_override_idx",
    ];
    expected.sort();
    assert_eq!(found, expected);
}
