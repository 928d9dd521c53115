//! licensync: turns Stripe purchases into software licenses without webhooks.
//!
//! The layers, outside in: `cli` parses configuration; `reconcile` runs one
//! job; `stripe` pages Stripe into plain `domain` facts; `plan` decides
//! (pure); `apply` writes a plan through `store`; `mail` delivers keys.

pub mod catalog;
pub mod domain;
pub mod plan;
pub mod stripe;
