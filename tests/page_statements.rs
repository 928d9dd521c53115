//! The statements a page's write sends: one per table, the same text
//! whatever the page holds, so that PostgreSQL prepares each once per
//! connection instead of parsing and planning a new statement for nearly
//! every page (BENCHMARKS.md, issue 18). Its own test binary: it watches
//! every statement diesel sends in this process.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;

use common::{TestDb, license_write};
use diesel::connection::{Instrumentation, InstrumentationEvent, set_default_instrumentation};
use licensync::store::LicenseWrite;

/// The text of every statement sent so far, without its binds.
static SENT: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn recorder() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(|event: InstrumentationEvent<'_>| {
        if let InstrumentationEvent::StartQuery { query, .. } = event {
            let text = query.to_string();
            let sql = text.split(" -- binds:").next().unwrap_or_default().to_owned();
            SENT.lock().unwrap().push(sql);
        }
    }))
}

#[test]
fn a_page_write_sends_the_same_three_statements_whatever_its_size() {
    set_default_instrumentation(recorder).unwrap();
    let db = TestDb::new();
    let mut n = 0;
    for size in [1, 2, 3, 17, 100] {
        let page: Vec<LicenseWrite> = (n..n + size)
            .map(|i| license_write(i, Some(&format!("buyer{i}@example.com"))))
            .collect();
        n += size;
        assert_eq!(db.store.write_page(None, &page).unwrap().len(), size);
    }
    assert_eq!(db.store.outbox_counts().unwrap().pending, n as i64);

    let writes: BTreeSet<String> = SENT
        .lock()
        .unwrap()
        .iter()
        .filter(|sql| {
            let sql = sql.replace('"', "");
            ["licenses", "license_ledger", "email_outbox"]
                .iter()
                .any(|table| sql.starts_with(&format!("INSERT INTO {table} ")))
        })
        .cloned()
        .collect();
    assert_eq!(
        writes.len(),
        3,
        "five pages of different sizes, one statement text per table: {writes:#?}"
    );
}
