//! `licensync mail resend` through the binary ("customer lost the email",
//! licensing-rules §6): a new message for the license, with a Message-ID of
//! its own, through the `.eml` file transport, against a real PostgreSQL
//! database.

mod common;
mod mail_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::Utc;
use common::{TestDb, issue_license, licensync};
use licensync::delivery::deliver_due;
use licensync::mail::{MailService, MailUrl};
use mail_support::*;

fn eml_files(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect()
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn resend(db: &TestDb, mail_url: &str, key_or_id: &str) -> std::process::Output {
    licensync()
        .args(["mail", "resend", key_or_id])
        .env("DATABASE_URL", &db.url)
        .env("LICENSYNC_MAIL_URL", mail_url)
        .env("LICENSYNC_MAIL_FROM", FROM)
        .output()
        .unwrap()
}

#[tokio::test]
async fn mail_resend_writes_a_new_message_for_the_license_with_a_message_id_of_its_own() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let mail_url = format!("file://{}", dir.path().display());
    let license = issue_license(&db.store, 1, Some("ada@customer.test"));
    // The original email, delivered as a reconcile run would after its commit.
    let mail = MailService::new(settings(mail_url.parse::<MailUrl>().unwrap())).unwrap();
    assert_eq!(deliver_due(&db.store, &mail, 8, Utc::now()).await.unwrap().sent, 1);
    let original_files = eml_files(dir.path());
    assert_eq!(original_files.len(), 1);
    let original_raw = std::fs::read(original_files.first().unwrap()).unwrap();
    let original_id = parse(&original_raw).message_id().unwrap().to_owned();

    let out = resend(&db, &mail_url, &license.key);

    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&license.key),
        "{}",
        output_text(&out)
    );
    let files = eml_files(dir.path());
    let new: Vec<&PathBuf> = files.difference(&original_files).collect();
    assert_eq!(new.len(), 1, "one new .eml: {files:?}");
    let raw = std::fs::read(new[0]).unwrap();
    let message = parse(&raw);
    let message_id = message.message_id().expect("a Message-ID");
    assert_ne!(message_id, original_id);
    assert!(message_id.ends_with("@acme.test"), "{message_id}");
    assert_eq!(
        message.to().and_then(|t| t.first()).and_then(|a| a.address()),
        Some("ada@customer.test")
    );
    assert!(message.body_text(0).unwrap().contains(&license.key));
    assert!(message.body_html(0).unwrap().contains(&license.key));

    let rows = db.store.outbox_for_license(license.license_id).unwrap();
    let summary: Vec<(String, &str)> = rows.iter().map(|r| (r.kind.to_string(), r.status.as_str())).collect();
    assert_eq!(
        summary,
        [("license_issued".to_owned(), "sent"), ("resend:1".to_owned(), "sent")]
    );
    assert_eq!(message_id, format!("{}@acme.test", rows[1].message_id));
}

#[test]
fn mail_resend_of_an_unknown_key_is_a_usage_error() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    issue_license(&db.store, 1, Some("ada@customer.test"));

    let out = resend(
        &db,
        &format!("file://{}", dir.path().display()),
        "NOPE2-NOPE3-NOPE4-NOPE5-NOPE6",
    );

    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOPE2-NOPE3-NOPE4-NOPE5-NOPE6"),
        "{}",
        output_text(&out)
    );
    assert!(eml_files(dir.path()).is_empty());
}

#[test]
fn mail_resend_of_a_license_without_customer_email_says_so_and_sends_nothing() {
    let db = TestDb::new();
    let dir = tempfile::tempdir().unwrap();
    let license = issue_license(&db.store, 1, None);

    let out = resend(&db, &format!("file://{}", dir.path().display()), &license.key);

    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no customer email"),
        "{}",
        output_text(&out)
    );
    assert!(eml_files(dir.path()).is_empty());
    assert_eq!(db.store.outbox_for_license(license.license_id).unwrap().len(), 1);
}
