//! The crate's own tests that span modules, and what they share: fixture
//! builders (`fixtures`), the property tests of the catalog with the planner
//! (`catalog_properties`) and of the Stripe boundary (`stripe_properties`),
//! and the proptest configuration every property suite uses. Nothing here is
//! compiled into the binary; a module's own table tests stay beside it
//! (`plan/tests.rs`, `catalog/tests.rs`).

mod catalog_properties;
pub mod fixtures;
mod stripe_properties;

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
