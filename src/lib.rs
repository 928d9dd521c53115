//! licensync: turns Stripe purchases into software licenses without webhooks.
//!
//! The layers, outside in: `cli` and `config` read the settings; `app` runs
//! a command; `stripe` pages Stripe into plain `domain` facts; `plan`
//! decides (pure); `apply` writes a plan through `store`; `mail` delivers
//! keys. `pg` runs the embedded database.

pub mod accounts;
pub mod app;
pub mod apply;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod error;
#[cfg(test)]
pub mod fixtures;
pub mod keys;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod operator;
pub mod pg;
pub mod plan;
pub mod reconcile;
pub mod secret;
pub mod store;
pub mod stripe;
#[cfg(test)]
mod testing;
