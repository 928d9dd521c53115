//! What a claim of the email outbox costs the server: it rewrites each
//! claimed row in place (a HOT update) and adds no index entry. A module of
//! `tests/store.rs`.

use chrono::Utc;

use super::common::TestDb;

/// Every email is claimed once before it is sent. With an index on a column
/// the claim writes (as `email_outbox_pending_idx` was on `next_attempt_at`),
/// or with no room left on the rows' pages, each claimed row costs a new
/// entry in every index of the table; the claim then cost twice as much.
#[test]
fn a_claim_rewrites_its_rows_in_place() {
    let db = TestDb::new();
    // Queued as pages queue them: a few hundred licenses and their emails,
    // written after the migrations, in statements of 130 rows.
    for page in 0..5 {
        db.store
            .batch_execute(&format!(
                "INSERT INTO licenses (key, status, product_ids, source_kind, source_id, livemode)
                 SELECT 'K-' || i, 'active', '{{pro}}', 'subscription_item', 'si_' || i, false
                 FROM generate_series({lo}, {hi}) AS i;
                 INSERT INTO email_outbox (license_id, kind, recipient, status)
                 SELECT id, 'license_issued', 'buyer' || id || '@example.com', 'pending'
                 FROM licenses WHERE source_id IN (SELECT 'si_' || i FROM generate_series({lo}, {hi}) AS i);",
                lo = page * 130,
                hi = page * 130 + 129
            ))
            .unwrap();
    }
    let (claimed, in_place) = db.store.claim_in_place(Utc::now(), 500).unwrap();
    assert_eq!(claimed, 500);
    assert_eq!(
        in_place, 500,
        "claimed rows PostgreSQL updated in place (HOT), of {claimed}"
    );
}
