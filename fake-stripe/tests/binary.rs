//! The `fake-stripe` binary as the quick start uses it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{get_with_headers, ids};

#[test]
fn exec_runs_the_command_with_the_fakes_address_and_key_and_exits_with_its_code() {
    let check = r#"case "$STRIPE_API_BASE" in http://127.0.0.1:*) ;; *) exit 90;; esac
                   test "$STRIPE_API_KEY" = sk_test_fake_0123456789 || exit 91
                   echo "ran with $1"; exit 7"#;
    let out = Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--sample",
            "--exec",
            "sh",
            "-c",
            check,
            "sh",
            "--flag-for-cmd",
        ])
        .output()
        .expect("the binary runs");
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran with --flag-for-cmd");
}

#[test]
fn a_busy_address_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
        .args(["--addr", &addr, "--exec", "true"])
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&addr) && stderr.contains("--addr"), "{stderr}");
}

#[test]
fn latency_and_rate_limit_flags_are_documented_checked_and_reported() {
    let help = Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
        .arg("--help")
        .output()
        .expect("the binary runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--latency-ms",
        "--rate-limits",
        "--endpoint-rps",
        "--global-rps",
        "Retry-After",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}: {help}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
        .args(["--addr", "127.0.0.1:0", "--latency-ms", "300..50", "--exec", "true"])
        .output()
        .expect("the binary runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("above the maximum"));
    let ok = Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--latency-ms",
            "5..10",
            "--endpoint-rps",
            "3",
            "--exec",
            "true",
        ])
        .output()
        .expect("the binary runs");
    assert!(ok.status.success());
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(stderr.contains("answered 0 requests 429"), "{stderr}");
}

#[test]
fn generate_serves_a_computed_account_of_n_purchases() {
    let out = Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--generate",
            "1000",
            "--max-past-periods",
            "3",
            "--exec",
            "true",
        ])
        .output()
        .expect("the binary runs");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("generated 850 subscriptions") && stderr.contains("10 one-off invoices"),
        "{stderr}"
    );
    let both = Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--generate",
            "10",
            "--sample",
            "--exec",
            "true",
        ])
        .output()
        .expect("the binary runs");
    assert!(!both.status.success(), "--generate makes its own account");
}

#[test]
fn connected_accounts_are_seeded_like_the_platform_printed_and_exported() {
    let check = r#"test -n "$FAKE_STRIPE_ACCOUNTS" || exit 90
                   echo "$FAKE_STRIPE_ACCOUNTS""#;
    let out = Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--generate",
            "100",
            "--connected",
            "2",
            "--rate-limits",
            "--exec",
            "sh",
            "-c",
            check,
        ])
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let exported: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(exported, ["acct_1Fake00000000002", "acct_1Fake00000000003"]);
    for id in &exported {
        assert!(stderr.contains(&format!("connected account {id}")), "{stderr}");
    }
    assert!(
        stderr.contains("generated 85 subscriptions") && stderr.contains("in each account"),
        "{stderr}"
    );
    assert!(stderr.contains("answered 0 requests 429"), "{stderr}");

    // Without --connected the variable is there, empty, so that a stale one cannot leak in.
    let none = Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--exec",
            "sh",
            "-c",
            r#"test "${FAKE_STRIPE_ACCOUNTS-unset}" = """#,
        ])
        .env("FAKE_STRIPE_ACCOUNTS", "acct_stale")
        .output()
        .expect("the binary runs");
    assert!(none.status.success(), "{}", String::from_utf8_lossy(&none.stderr));
}

/// A server started without --exec, stopped when the test ends, failed or not.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn connected_accounts_print_their_ids_and_serve_their_own_seeded_purchases() {
    let mut serving = Serving(
        Command::new(env!("CARGO_BIN_EXE_fake-stripe"))
            .args(["--addr", "127.0.0.1:0", "--sample", "--connected", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the binary runs"),
    );
    let mut lines = BufReader::new(serving.0.stdout.take().unwrap()).lines();
    let mut startup = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        startup.push(line);
        if done {
            break;
        }
    }
    let value = |prefix: &str| {
        startup
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {startup:?}"))
            .to_owned()
    };
    let (base, key) = (value("STRIPE_API_BASE="), value("STRIPE_API_KEY="));
    let connected = value("connected account ");
    assert_eq!(connected, "acct_1Fake00000000002");
    assert_eq!(value("FAKE_STRIPE_ACCOUNTS="), connected);

    let auth = format!("Bearer {key}");
    let platform = get_with_headers(&base, &[("authorization", &auth)], "/v1/subscriptions").await;
    let seeded = get_with_headers(
        &base,
        &[("authorization", &auth), ("stripe-account", &connected)],
        "/v1/subscriptions",
    )
    .await;
    let (platform, seeded) = (platform.unwrap(), seeded.unwrap());
    assert_eq!(seeded.status, 200, "{}", seeded.text);
    assert!(!ids(&seeded.body).is_empty(), "the connected account is seeded too");
    assert_eq!(
        ids(&seeded.body),
        ids(&platform.body),
        "seeded alike, with the same ids"
    );
}
