//! The repository stands alone: nothing it tracks reaches outside it, and a
//! copy of it in an empty directory, with nothing beside it, builds every
//! target, runs the README's quick start and passes the tests that read the
//! vendored Stripe examples.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The files the repository is made of: what git tracks, or (outside a
/// checkout, e.g. an unpacked archive) every file but build output.
fn tracked_files() -> Vec<PathBuf> {
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(ROOT).output();
    if let Ok(out) = out
        && out.status.success()
        && !out.stdout.is_empty()
    {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            .collect();
    }
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(Path::new(ROOT).join(&dir)).unwrap() {
            let entry = entry.unwrap();
            let rel = dir.join(entry.file_name());
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                if !matches!(name.as_str(), ".git" | "target" | "licensync-data") {
                    dirs.push(rel);
                }
            } else {
                files.push(rel);
            }
        }
    }
    files
}

#[test]
fn no_tracked_file_reaches_outside_the_repository() {
    // Built from parts so that this file does not match itself.
    let outside = ["..", "shared"].join("/");
    let files = tracked_files();
    assert!(files.len() > 50, "the file list looks wrong: {files:?}");
    let offenders: Vec<String> = files
        .iter()
        .filter_map(|rel| {
            let text = std::fs::read(Path::new(ROOT).join(rel)).ok()?;
            let text = String::from_utf8_lossy(&text);
            let lines: Vec<String> = text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains(&outside))
                .map(|(n, l)| format!("{}:{}: {}", rel.display(), n + 1, l.trim()))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "these tracked files reach outside the repository; vendor what they need \
         (with its licence) or say it in docs/:\n{}",
        offenders.join("\n")
    );
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("fake-stripe/vendor/stripe-openapi/fixtures3.json")),
        "Stripe's example objects are vendored"
    );
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("fake-stripe/vendor/stripe-openapi/LICENSE")),
        "with their licence"
    );
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn a_copy_with_nothing_beside_it_builds_runs_the_quick_start_and_tests() {
    // An empty directory under /tmp (the embedded server runs as `postgres`
    // when we are root and must reach it), the repository inside it, and no
    // sibling at all.
    let outer = tempfile::Builder::new()
        .prefix("licensync-standalone-")
        .tempdir_in("/tmp")
        .unwrap();
    let repo = outer.path().join("licensync");
    for rel in tracked_files() {
        let to = repo.join(&rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(ROOT).join(&rel), &to).unwrap_or_else(|e| panic!("copying {}: {e}", rel.display()));
    }
    assert_eq!(
        std::fs::read_dir(outer.path()).unwrap().count(),
        1,
        "nothing beside the copy"
    );

    // The compiled dependencies of this build, hard-linked (no copy, no
    // download): the copy recompiles only its own crates, from its own paths.
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    // The copy's build output goes under this build's own target directory,
    // not beside the copy in /tmp: the hard links need one filesystem, and
    // /tmp may be a small tmpfs (a build of every target there once filled it).
    let target_dir = tempfile::Builder::new()
        .prefix("standalone-target-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let target = target_dir.path();
    let debug = target.join("debug");
    std::fs::create_dir_all(&debug).unwrap();
    for dir in ["deps", "build", ".fingerprint"] {
        run(
            Command::new("cp").arg("-al").arg(profile_dir.join(dir)).arg(&debug),
            "hard-linking the compiled dependencies",
        );
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_in_copy = |args: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.args(args)
            .current_dir(&repo)
            .env("CARGO_TARGET_DIR", target)
            .env("CARGO_NET_OFFLINE", "true")
            // A one-off build: incremental state would only take disk.
            .env("CARGO_INCREMENTAL", "0")
            .env_remove("DATABASE_URL")
            .env_remove("STRIPE_API_KEY")
            .env_remove("LICENSYNC_MAIL_URL");
        cmd
    };
    run(
        &mut cargo_in_copy(&["build", "--workspace", "--all-targets"]),
        "cargo build --workspace --all-targets in the copy",
    );
    // The README's quick start, verbatim.
    let quickstart = run(&mut cargo_in_copy(&["quickstart"]), "cargo quickstart in the copy");
    assert!(quickstart.contains("License emails are written to"), "{quickstart}");
    let emails = std::fs::read_dir(repo.join("licensync-data/outbox"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "eml"))
        .count();
    assert!(emails >= 5, "the quick start mailed the sample licenses: {quickstart}");
    // The tests that read the vendored Stripe examples.
    let fidelity = run(
        // --workspace: the features the build above resolved, so nothing recompiles.
        &mut cargo_in_copy(&["test", "--workspace", "--test", "fidelity"]),
        "the fidelity tests in the copy",
    );
    assert!(fidelity.contains("test result: ok"), "{fidelity}");
}
