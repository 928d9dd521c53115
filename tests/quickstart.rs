//! The README's quick start: `cargo quickstart` starts the fake Stripe with
//! its sample account and runs `licensync reconcile` on the embedded
//! database and the file outbox. This test does the same with the binaries
//! of this build (the `--exec` wrapper itself is tested in fake-stripe).

mod common;

use common::licensync;
use fake_stripe::FakeStripe;

#[test]
fn the_alias_runs_the_sample_through_reconcile() {
    let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.cargo/config.toml")).unwrap();
    assert!(
        config.contains(
            r#"quickstart = "run -q -p fake-stripe -- --sample --exec cargo run -q --bin licensync -- reconcile""#
        ),
        "{config}"
    );
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("cargo quickstart"), "the README shows the quick start");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quick_start_issues_the_sample_licenses_and_writes_their_emails() {
    let fake = FakeStripe::start().await;
    fake.set_now(chrono::Utc::now().timestamp());
    fake.seed_sample();
    // A fresh working directory, as after a clone; under /tmp so that the
    // embedded server (run as `postgres` when we are root) can reach it.
    let dir = tempfile::Builder::new()
        .prefix("licensync-quickstart-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut cmd = licensync();
    cmd.arg("reconcile")
        .current_dir(dir.path())
        .env("STRIPE_API_BASE", fake.base_url())
        .env("STRIPE_API_KEY", fake.api_key());
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let issued = stdout.lines().filter(|l| l.trim_start().starts_with("issue ")).count();
    assert!(issued >= 5, "the plan shows the issued licenses: {stdout}");
    assert!(stdout.contains("License emails are written to"), "{stdout}");
    let outbox = dir.path().join("licensync-data/outbox");
    let emails = std::fs::read_dir(&outbox)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "eml"))
        .count();
    assert_eq!(
        emails, issued,
        "one email per issued license with an address in the sample"
    );
    assert!(
        !dir.path().join("licensync-data/pg/data/postmaster.pid").exists(),
        "the embedded server is stopped"
    );
}
