//! Helpers shared by the crate's own property tests.

use proptest::test_runner::Config as ProptestConfig;

/// `default` cases unless `PROPTEST_CASES` says otherwise, and no regression
/// files: each suite picks a default that keeps CI bounded, and the variable
/// runs more of every one.
pub(crate) fn proptest_config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
