//! licensync: turns Stripe purchases into software licenses without webhooks.
//!
//! The layers, outside in: `cmd` holds the command line and runs a command
//! (one file each); `settings` are the flags every command shares, typed by
//! the parsers of `values`, and `config` builds the configuration from them;
//! `stripe` pages Stripe into plain `domain` facts; `plan` decides (pure);
//! `apply` writes a plan through `store`; `mail` delivers keys. `pg` runs
//! the embedded database; `shutdown` carries SIGTERM/SIGINT to a run.

pub mod accounts;
pub mod apply;
pub mod catalog;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod keyapi;
pub mod keys;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod operator;
pub mod pg;
pub mod plan;
pub mod reconcile;
#[rustfmt::skip]
pub mod schema;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod stripe;
#[cfg(test)]
mod tests;
pub mod values;
pub mod write_back;
