//! The statements a page's write sends: one per table, the same text
//! whatever the page holds, so that PostgreSQL prepares each once per
//! connection instead of parsing and planning a new statement for nearly
//! every page (BENCHMARKS.md, issue 18). Its own test binary: it watches
//! every statement diesel sends in this process.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;

use common::TestDb;
use diesel::connection::{Instrumentation, InstrumentationEvent, set_default_instrumentation};
use licensync::domain::{ActionKind, EmailStatus, GrantKey, LicenseState, LicenseStatus};
use licensync::store::LicenseWrite;
use licensync::store::models::NewLicenseRow;

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

fn write(n: usize) -> LicenseWrite {
    let grant = GrantKey::subscription_item(&format!("si_{n}"));
    let state = LicenseState {
        status: LicenseStatus::Active,
        product_ids: vec!["prod_pro".into()],
        product_name: Some("Pro".into()),
        stripe_customer_id: Some(format!("cus_{n}")),
        stripe_subscription_id: Some(format!("sub_{n}")),
        stripe_payment_intent: None,
        customer_email: Some(format!("buyer{n}@example.com")),
        customer_name: None,
        quantity: 1,
        ip_limit: None,
        hwid_limit: Some(10),
        expiration_days: None,
        expiration_start: None,
        expires_at: None,
        livemode: false,
    };
    LicenseWrite {
        license: NewLicenseRow::new(format!("KEY-{n:05}"), &grant, &state),
        action: ActionKind::Issue,
        before: None,
        after: serde_json::to_value(&state).unwrap(),
        stripe_object: format!("sub_{n}"),
        email: Some(EmailStatus::Pending),
        write_back: None,
    }
}

#[test]
fn a_page_write_sends_the_same_three_statements_whatever_its_size() {
    set_default_instrumentation(recorder).unwrap();
    let db = TestDb::new();
    let mut n = 0;
    for size in [1, 2, 3, 17, 100] {
        let page: Vec<LicenseWrite> = (n..n + size).map(write).collect();
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
