//! The binary as deployments script it: commands, JSON shapes, exit codes,
//! the embedded database, and secrets that never reach the output.

mod common;

use std::process::Output;

use common::{TestDb, licensync};
use licensync::domain::{ActionKind, GrantKey, LicenseState, LicenseStatus};
use licensync::store::LicenseWrite;
use licensync::store::models::NewLicenseRow;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn embedded_dir() -> tempfile::TempDir {
    // Under /tmp: when tests run as root the server runs as `postgres`, which must reach it.
    tempfile::Builder::new()
        .prefix("licensync-cli-")
        .tempdir_in("/tmp")
        .unwrap()
}

#[test]
fn licenses_list_prints_an_empty_json_array_on_an_empty_store() {
    let db = TestDb::new();
    let out = licensync()
        .args(["licenses", "list", "--output", "json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn licenses_list_json_has_every_field_of_the_contract() {
    let db = TestDb::new();
    let grant = GrantKey::checkout_line("cs_1", "li_1");
    let state = LicenseState {
        status: LicenseStatus::Active,
        product_ids: vec!["pro".into(), "addon".into()],
        product_name: Some("Pro with add-on".into()),
        stripe_customer_id: Some("cus_1".into()),
        stripe_subscription_id: None,
        stripe_payment_intent: Some("pi_1".into()),
        customer_email: Some("ada@example.test".into()),
        customer_name: Some("Ada".into()),
        quantity: 3,
        ip_limit: Some(2),
        hwid_limit: Some(6),
        expiration_days: Some(30),
        expiration_start: Some(licensync::domain::ExpirationStart::Creation),
        expires_at: Some("2026-12-22T10:00:00Z".parse().unwrap()),
        livemode: false,
    };
    db.store
        .write_page(
            None,
            &[LicenseWrite {
                license: NewLicenseRow::new("ABCDE-FGHJK-MNPQR-STUVW-XYZ23".into(), &grant, &state),
                action: ActionKind::Issue,
                before: None,
                after: serde_json::to_value(&state).unwrap(),
                stripe_object: "cs_1".into(),
                email: None,
                write_back: None,
            }],
        )
        .unwrap();
    let out = licensync()
        .args(["licenses", "list", "--output", "json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let l = &list[0];
    for field in [
        "id",
        "key",
        "status",
        "product_ids",
        "source_kind",
        "source_id",
        "stripe_customer_id",
        "stripe_subscription_id",
        "customer_email",
        "quantity",
        "ip_limit",
        "hwid_limit",
        "expiration_days",
        "expiration_start",
        "expires_at",
        "livemode",
        "created_at",
        "updated_at",
    ] {
        assert!(l.get(field).is_some(), "field {field} missing in {l}");
    }
    assert_eq!(l["key"], "ABCDE-FGHJK-MNPQR-STUVW-XYZ23");
    assert_eq!(l["status"], "active");
    assert_eq!(l["product_ids"], serde_json::json!(["pro", "addon"]));
    assert_eq!(l["source_kind"], "checkout_line");
    assert_eq!(l["source_id"], "cs_1/li_1");
    assert_eq!(l["stripe_subscription_id"], serde_json::Value::Null);
    assert_eq!(l["quantity"], 3);
    assert_eq!(l["hwid_limit"], 6);
    assert_eq!(l["expiration_start"], "CREATION");
    assert_eq!(l["expires_at"], "2026-12-22T10:00:00Z");
    assert_eq!(l["livemode"], false);

    let filtered = licensync()
        .args(["licenses", "list", "--status", "expired", "--output", "json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&filtered.stdout).unwrap(),
        serde_json::json!([])
    );
    let by_customer = licensync()
        .args(["licenses", "list", "--customer", "ADA@example.test", "--output", "json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&by_customer.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let show = licensync()
        .args(["licenses", "show", "abcde-fghjk-mnpqr-stuvw-xyz23", "--output", "json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(show.status.success(), "{}", text(&show));
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["ledger"][0]["action"], "issue");
    assert_eq!(shown["ledger"][0]["stripe_object"], "cs_1");
}

#[test]
fn migrate_then_status_in_embedded_mode_persists_and_stops_the_server() {
    let dir = embedded_dir();
    let run = |args: &[&str]| {
        licensync()
            .args(args)
            .env("LICENSYNC_DATA_DIR", dir.path())
            .output()
            .unwrap()
    };
    let migrate = run(&["migrate"]);
    assert!(migrate.status.success(), "{}", text(&migrate));
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .count();
    assert!(
        text(&migrate).contains(&format!("applied {migrations} migration")),
        "{}",
        text(&migrate)
    );
    let pid_file = dir.path().join("pg/data/postmaster.pid");
    assert!(dir.path().join("pg/data/PG_VERSION").exists());
    assert!(!pid_file.exists(), "the server is stopped when the command exits");

    let again = run(&["migrate"]);
    assert!(
        text(&again).contains("up to date"),
        "the second invocation sees the first one's work: {}",
        text(&again)
    );
    let status = run(&["status", "--output", "json"]);
    assert!(status.status.success(), "{}", text(&status));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["licenses"]["active"], 0);
    assert_eq!(report["emails"]["pending"], 0);
    assert!(!pid_file.exists(), "no server is left running");
}

#[test]
fn a_second_command_on_a_busy_embedded_database_exits_75() {
    let dir = embedded_dir();
    std::fs::create_dir_all(dir.path()).unwrap();
    let lock = std::fs::File::create(dir.path().join("pg.lock")).unwrap();
    fs4::fs_std::FileExt::lock_exclusive(&lock).unwrap();
    let out = licensync()
        .args(["status"])
        .env("LICENSYNC_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out));
    assert!(text(&out).contains("another licensync command"), "{}", text(&out));
}

#[test]
fn a_bad_database_url_exits_2_naming_the_setting() {
    let out = licensync()
        .args(["status"])
        .env("DATABASE_URL", "mysql://app:hunter2@db/licenses")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("DATABASE_URL"), "{}", text(&out));
    assert!(!text(&out).contains("hunter2"), "{}", text(&out));
}

#[test]
fn an_unknown_flag_exits_2_naming_the_flag() {
    let out = licensync().args(["status", "--colour"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--colour"), "{}", text(&out));
}

#[test]
fn a_malformed_duration_exits_2_naming_the_setting() {
    let out = licensync()
        .args(["status"])
        .env("LICENSYNC_PAST_DUE_GRACE", "a week")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("LICENSYNC_PAST_DUE_GRACE"), "{}", text(&out));
}

#[test]
fn configured_secrets_never_reach_the_output() {
    let secret_key = "sk_test_51SuperSecretValue";
    let secret_password = "pw-Very-Secret";
    let url = format!("postgres://app:{secret_password}@127.0.0.1:1/licenses?connect_timeout=2");
    let runs = [
        licensync()
            .args(["status"])
            .env("STRIPE_API_KEY", secret_key)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap(),
        licensync()
            .args(["--help"])
            .env("STRIPE_API_KEY", secret_key)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap(),
        licensync()
            .args(["status"])
            .env("STRIPE_API_KEY", "pk_live_NotASecretKeyButWrong")
            .output()
            .unwrap(),
        licensync()
            .args(["status", "--mail-url", &format!("smtp://u:{secret_password}@mail:587")])
            .env("DATABASE_URL", &url)
            .output()
            .unwrap(),
    ];
    for out in &runs {
        let all = text(out);
        assert!(!all.contains("SuperSecretValue"), "{all}");
        assert!(!all.contains(secret_password), "{all}");
    }
    assert_eq!(
        runs[0].status.code(),
        Some(1),
        "an unreachable database is a failed run: {}",
        text(&runs[0])
    );
    assert_eq!(
        runs[2].status.code(),
        Some(2),
        "a key that is not sk_/rk_ is a configuration error"
    );
}

#[test]
fn a_malformed_mail_since_is_a_usage_error_from_the_flag_and_the_variable() {
    let db = TestDb::new();
    let by_flag = licensync()
        .args(["reconcile", "--mail-since", "last tuesday"])
        .env("DATABASE_URL", &db.url)
        .env("STRIPE_API_KEY", "rk_test_123")
        .output()
        .unwrap();
    assert_eq!(by_flag.status.code(), Some(2), "{}", text(&by_flag));
    assert!(
        text(&by_flag).contains("--mail-since") && text(&by_flag).contains("2026-11-01"),
        "names the flag and a valid form: {}",
        text(&by_flag)
    );
    let by_variable = licensync()
        .args(["reconcile"])
        .env("LICENSYNC_MAIL_SINCE", "2026-13-45")
        .env("DATABASE_URL", &db.url)
        .env("STRIPE_API_KEY", "rk_test_123")
        .output()
        .unwrap();
    assert_eq!(by_variable.status.code(), Some(2), "{}", text(&by_variable));
    assert!(text(&by_variable).contains("--mail-since"), "{}", text(&by_variable));
}

#[test]
fn reconcile_help_lists_its_own_flags_apart_from_the_global_settings() {
    let out = licensync().args(["reconcile", "--help"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    let global = help
        .find("Global options")
        .unwrap_or_else(|| panic!("no global heading: {help}"));
    let (own, settings) = help.split_at(global);
    for flag in ["--full", "--since", "--dry-run", "--report-actions"] {
        assert!(own.contains(flag), "{flag} is reconcile's own: {help}");
        assert!(
            !settings.contains(&format!("{flag} ")),
            "{flag} among the globals: {help}"
        );
    }
    for setting in ["--stripe-api-key-file", "--database-url", "--mail-since", "--grace"] {
        assert!(settings.contains(setting), "{setting} is global: {help}");
        assert!(!own.contains(setting), "{setting} among reconcile's own: {help}");
    }
}
