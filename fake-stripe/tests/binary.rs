//! The `fake-stripe` binary as the quick start uses it.

use std::process::Command;

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
