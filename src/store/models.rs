//! The row types of the license database, each defined in the file of its
//! entity with its queries, gathered here under one path.

pub use super::ledger::{KeyHistoryRow, LedgerRow, NewKeyHistoryRow, NewLedgerRow};
pub use super::license::{LicenseRow, NewLicenseRow};
pub use super::outbox::{NewOutboxRow, OutboxRow};
pub use super::run::RunRow;
