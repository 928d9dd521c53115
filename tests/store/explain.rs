//! Every query a page (and a write-back pass) runs reads its own rows
//! through an index: `EXPLAIN ANALYZE` on large tables, before and after
//! PostgreSQL has statistics. A module of `tests/store.rs`.

use chrono::Utc;
use licensync::domain::GrantKey;

use super::common::TestDb;

/// Rows of `table` the scans of an `EXPLAIN (ANALYZE, FORMAT JSON)` plan
/// read (what each returned plus what its filters removed, over all its
/// loops), and the kinds of scan that read them.
fn rows_read(plan: &serde_json::Value, table: &str) -> (f64, Vec<String>) {
    fn walk(node: &serde_json::Value, table: &str, rows: &mut f64, scans: &mut Vec<String>) {
        if node["Relation Name"] == table {
            let n = |key: &str| node[key].as_f64().unwrap_or(0.0);
            *rows += (n("Actual Rows") + n("Rows Removed by Filter") + n("Rows Removed by Index Recheck"))
                * n("Actual Loops");
            scans.push(node["Node Type"].as_str().unwrap_or("?").to_owned());
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, table, rows, scans);
        }
    }
    let (mut rows, mut scans) = (0.0, Vec::new());
    walk(&plan[0]["Plan"], table, &mut rows, &mut scans);
    (rows, scans)
}

/// Holds a query to reading, through indexes alone, at most `most` rows of
/// `table`; `what` names the query in the failure.
fn assert_reads_at_most(plan: &serde_json::Value, table: &str, most: f64, what: &str) {
    let (read, scans) = rows_read(plan, table);
    assert!(
        read <= most && !scans.iter().any(|s| s == "Seq Scan"),
        "{what} read {read} rows through {scans:?}: {plan:#}"
    );
}

/// A first import must stay linear: every query a page runs reads the
/// page's own rows through an index, never the whole account, both before
/// PostgreSQL has statistics of the table (a first import's pages) and after.
#[test]
fn page_queries_read_the_pages_own_rows_with_and_without_statistics() {
    use licensync::store::PageQuery;
    let db = TestDb::new();
    // 60,000 licenses of the key's own account and 40,000 of a connected
    // one with the same Stripe ids; every own license has an outbox row, all
    // sent but the last 300.
    db.store
        .batch_execute(
            "ALTER TABLE licenses SET (autovacuum_enabled = false);
             ALTER TABLE email_outbox SET (autovacuum_enabled = false);
             INSERT INTO licenses (key, status, product_ids, source_kind, source_id,
                                   stripe_subscription_id, stripe_payment_intent, livemode, stripe_account)
             SELECT 'K-' || i, 'active', '{pro}', 'subscription_item', 'si_' || (i % 60000),
                    'sub_' || (i % 60000), CASE WHEN i % 7 = 0 THEN 'pi_' || (i % 60000) END, false,
                    CASE WHEN i >= 60000 THEN 'acct_B' END
             FROM generate_series(0, 99999) AS i;
             INSERT INTO email_outbox (license_id, kind, recipient, status)
             SELECT id, 'license_issued', 'a@example.com', CASE WHEN id > 59700 THEN 'pending' ELSE 'sent' END
             FROM licenses WHERE stripe_account IS NULL;",
        )
        .unwrap();
    // A page: 130 grants (10 of them new), 100 subscriptions, 3 reversals.
    let grants: Vec<GrantKey> = (20_000..20_130)
        .map(|i| GrantKey::subscription_item(&format!("si_{}", if i < 20_120 { i } else { i + 100_000 })))
        .collect();
    let subscriptions: Vec<String> = (30_000..30_100).map(|i| format!("sub_{i}")).collect();
    let payment_intents: Vec<String> = ["pi_7", "pi_14", "pi_none"].map(String::from).to_vec();
    let page_keys = (grants.len() + subscriptions.len() + payment_intents.len()) as f64;

    for statistics in ["none yet", "analyzed"] {
        if statistics == "analyzed" {
            db.store
                .batch_execute("ANALYZE licenses; ANALYZE email_outbox;")
                .unwrap();
        }
        for account in [None, Some("acct_B")] {
            let store = db.store.for_account(account);
            let found = store.licenses_for(&grants, &subscriptions, &payment_intents).unwrap();
            // Account B holds the same grants and subscriptions, and neither
            // payment intent (its licenses with one have other numbers).
            let expected = if account.is_none() { 120 + 100 + 2 } else { 120 + 100 };
            assert_eq!(found.len(), expected, "{account:?}, statistics {statistics}");
            assert!(found.iter().all(|l| l.stripe_account.as_deref() == account));

            let plan = store
                .explain(PageQuery::Licenses {
                    grants: &grants,
                    subscription_ids: &subscriptions,
                    payment_intents: &payment_intents,
                })
                .unwrap();
            assert_reads_at_most(
                &plan,
                "licenses",
                2.0 * page_keys,
                &format!("the page's licenses ({account:?}, statistics {statistics})"),
            );
        }
        let plan = db
            .store
            .for_account(None)
            .explain(PageQuery::DueEmails {
                after_id: 0,
                now: Utc::now(),
                limit: 100,
            })
            .unwrap();
        assert_reads_at_most(
            &plan,
            "email_outbox",
            110.0,
            &format!("claiming 100 due emails (statistics {statistics})"),
        );
    }
}

/// The first minutes of a first import: a table of a few thousand rows,
/// written while it is read. Merged into a plain join, the page query was
/// planned as a read of the whole table, hashed, for every page (cheaper on
/// paper than 200 index probes at this size, 10-25 ms a page in fact); so
/// was the load of the licenses of each claim of emails.
#[test]
fn a_page_query_on_a_young_table_probes_its_keys_instead_of_reading_the_table() {
    use licensync::store::PageQuery;
    let db = TestDb::new();
    db.store
        .batch_execute("ALTER TABLE licenses SET (autovacuum_enabled = false);")
        .unwrap();
    let grants: Vec<GrantKey> = (0..130)
        .map(|i| GrantKey::subscription_item(&format!("si_{}", i * 7)))
        .collect();
    let subscriptions: Vec<String> = (0..100).map(|i| format!("sub_{}", i * 11)).collect();
    let page_keys = (grants.len() + subscriptions.len()) as f64;
    let mut written = 0;
    for (size, statistics) in [(1_500, "none yet"), (12_000, "none yet"), (12_000, "analyzed")] {
        db.store
            .batch_execute(&format!(
                "INSERT INTO licenses (key, status, product_ids, source_kind, source_id, stripe_subscription_id, livemode)
                 SELECT 'K-' || i, 'active', '{{pro}}', 'subscription_item', 'si_' || i, 'sub_' || i, false
                 FROM generate_series({written}, {}) AS i;",
                size - 1
            ))
            .unwrap();
        written = size;
        if statistics == "analyzed" {
            db.store.batch_execute("ANALYZE licenses;").unwrap();
        }
        let plan = db
            .store
            .explain(PageQuery::Licenses {
                grants: &grants,
                subscription_ids: &subscriptions,
                payment_intents: &[],
            })
            .unwrap();
        assert_reads_at_most(
            &plan,
            "licenses",
            2.0 * page_keys,
            &format!("a page on {size} licenses (statistics {statistics})"),
        );
        // The licenses of 100 claimed emails, as the sender beside the run loads them.
        let ids: Vec<i64> = (1..=100).map(|i| i * 13).collect();
        let plan = db.store.explain(PageQuery::ClaimedLicenses { ids: &ids }).unwrap();
        assert_reads_at_most(
            &plan,
            "licenses",
            110.0,
            &format!("100 claimed licenses on {size} (statistics {statistics})"),
        );
    }
}

/// A write-back pass reads its queue rows and their purchases' licenses
/// through indexes, however many writes the queue has sent before and
/// however many licenses the account has.
#[test]
fn write_back_queries_read_their_own_rows_with_and_without_statistics() {
    use licensync::domain::SourceKind;
    use licensync::store::PageQuery;
    let db = TestDb::new();
    // 60,000 subscription licenses and 20,000 session lines (two per
    // session) of the key's own account, and the same of a connected one;
    // 60,000 writes sent, 300 pending.
    db.store
        .batch_execute(
            "ALTER TABLE licenses SET (autovacuum_enabled = false);
             ALTER TABLE stripe_writes SET (autovacuum_enabled = false);
             INSERT INTO licenses (key, status, product_ids, source_kind, source_id, livemode, stripe_account)
             SELECT 'K-' || i || '-' || a, 'active', '{pro}',
                    CASE WHEN i < 60000 THEN 'subscription_item' ELSE 'checkout_line' END,
                    CASE WHEN i < 60000 THEN 'si_' || i ELSE 'cs_' || (i / 2) || '/li_' || i END,
                    false, CASE WHEN a = 1 THEN 'acct_B' END
             FROM generate_series(0, 79999) AS i, generate_series(0, 1) AS a;
             INSERT INTO stripe_writes (account_key, target_kind, target_id, source_kind, purchase, status)
             SELECT '', 'subscription_item', 'si_' || i, 'subscription_item', 'si_' || i,
                    CASE WHEN i >= 59700 THEN 'pending' ELSE 'sent' END
             FROM generate_series(0, 59999) AS i;",
        )
        .unwrap();
    let purchases: Vec<(SourceKind, String)> = (0..50)
        .map(|i| (SourceKind::SubscriptionItem, format!("si_{}", 1000 + i)))
        .chain((0..50).map(|i| (SourceKind::CheckoutLine, format!("cs_{}", 30_000 + i))))
        .collect();
    for statistics in ["none yet", "analyzed"] {
        if statistics == "analyzed" {
            db.store
                .batch_execute("ANALYZE licenses; ANALYZE stripe_writes;")
                .unwrap();
        }
        let store = db.store.for_account(None);
        let jobs = store.due_stripe_writes(0, 100).unwrap();
        assert_eq!(jobs.len(), 100);
        assert!(jobs.iter().all(|j| j.licenses.len() == 1), "each item's own license");
        let plan = store
            .explain(PageQuery::DueWrites {
                after_id: 0,
                limit: 100,
            })
            .unwrap();
        assert_reads_at_most(
            &plan,
            "stripe_writes",
            110.0,
            &format!("100 due writes (statistics {statistics})"),
        );
        let plan = store
            .explain(PageQuery::PurchaseLicenses { purchases: &purchases })
            .unwrap();
        assert_reads_at_most(
            &plan,
            "licenses",
            2.0 * 150.0,
            &format!("the licenses of 100 purchases (statistics {statistics})"),
        );
    }
}
