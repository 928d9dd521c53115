//! `licensync licenses ...`: look at licenses (`list`, `show`), the
//! operator overrides, whose arguments and run are in `overrides`, and the
//! key API's machines (`machines`, `deactivate`), in `machines`.

use std::io::Write;

use anyhow::{Context, Result};
use clap::{ArgGroup, Subcommand};

use super::machines::{self, DeactivateArgs, MachinesArgs};
use super::overrides::{self, OverrideArgs, PinArgs, ReleaseArgs};
use super::{Output, open_migrated};
use crate::accounts::{self, ConnectedAccount};
use crate::config::Config;
use crate::domain::{License, LicenseStatus};
use crate::error::usage;
use crate::store::{LicenseFilter, Store};
use crate::values::{self, Setting};

#[derive(Debug, Subcommand)]
pub enum LicensesCommand {
    /// List licenses, newest first.
    List {
        /// Only licenses with this status (active, suspended, expired, revoked).
        #[arg(long, value_name = "STATUS", value_parser = Setting::new("--status", values::parse_status))]
        status: Option<LicenseStatus>,
        /// Only licenses of this customer email (case-insensitive).
        #[arg(long, value_name = "EMAIL")]
        customer: Option<String>,
        /// Only licenses of this Stripe account (acct_..., or `self` for the key's own account).
        #[arg(long = "account", value_name = "ACCT", value_parser = accounts::account_arg)]
        account: Option<ConnectedAccount>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// One license with its machines, ledger and key history (a replaced key finds its license).
    Show {
        /// The license key or its numeric id.
        key_or_id: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Operator override: revoked now and on every later run, whatever Stripe says.
    Revoke(OverrideArgs),
    /// Operator override: suspended now and on every later run.
    Suspend(OverrideArgs),
    /// Operator override: these fields keep the pinned values; the rest follows Stripe.
    #[command(group(ArgGroup::new("pins").required(true).multiple(true).args(["hwid_limit", "ip_limit", "expires_at"])))]
    Pin(PinArgs),
    /// Clear the license's override: it follows Stripe again (now from the stored state, fully on the next run).
    Release(ReleaseArgs),
    /// A new key for the same license, mailed; the old key is kept in its history and no longer valid.
    Reissue(OverrideArgs),
    /// The machines holding the license's seats in the key API (hash prefix, name, first and last seen).
    Machines(MachinesArgs),
    /// Free one machine's seat (--machine) or every seat (--all), with a ledger row.
    Deactivate(DeactivateArgs),
}

pub async fn run(config: &Config, command: LicensesCommand) -> Result<()> {
    match command {
        LicensesCommand::List {
            status,
            customer,
            account,
            output,
        } => {
            let db = open_migrated(config)?;
            let licenses = db.store.list_licenses(&LicenseFilter {
                status,
                customer_email: customer,
                stripe_account: account.map(|a| a.0),
            })?;
            print_licenses(&db.store, &licenses, output)
        }
        LicensesCommand::Show { key_or_id, output } => {
            let db = open_migrated(config)?;
            show_license(&db.store, &key_or_id, output)
        }
        LicensesCommand::Revoke(args) => overrides::revoke(config, args).await,
        LicensesCommand::Suspend(args) => overrides::suspend(config, args).await,
        LicensesCommand::Pin(args) => overrides::pin(config, args).await,
        LicensesCommand::Release(args) => overrides::release(config, args).await,
        LicensesCommand::Reissue(args) => overrides::reissue(config, args).await,
        LicensesCommand::Machines(args) => machines::list(config, args),
        LicensesCommand::Deactivate(args) => machines::deactivate(config, args),
    }
}

fn print_licenses(store: &Store, licenses: &[License], output: Output) -> Result<()> {
    match output {
        Output::Json => {
            let ids: Vec<i64> = licenses.iter().map(|l| l.id).collect();
            let mut history = store.key_history(&ids)?;
            let mut rows = Vec::with_capacity(licenses.len());
            for l in licenses {
                let mut value = serde_json::to_value(l).context("serializing a license")?;
                value["key_history"] = serde_json::to_value(history.remove(&l.id).unwrap_or_default())?;
                rows.push(value);
            }
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            if licenses.is_empty() {
                writeln!(out, "no licenses")?;
            }
            for l in licenses {
                writeln!(
                    out,
                    "{:<6} {}  {:<9} {:<24} {:<32} expires {}  {}:{}{}",
                    l.id,
                    l.key,
                    l.state.status.as_str(),
                    l.state.product_ids.join(","),
                    l.state.customer_email.as_deref().unwrap_or("-"),
                    l.state
                        .expires_at
                        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                        .unwrap_or_else(|| "never".into()),
                    l.grant.source_kind.as_str(),
                    l.grant.source_id,
                    l.operator_override
                        .as_ref()
                        .map(|o| format!("  [override: {}]", o.reason))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}

fn show_license(store: &Store, key_or_id: &str, output: Output) -> Result<()> {
    let license = store
        .find_license(key_or_id)?
        .ok_or_else(|| usage(anyhow::anyhow!("no license with key or id `{key_or_id}`")))?;
    let ledger = store.ledger(license.id)?;
    let activated = store.machines(license.id)?;
    let emails = store.outbox_for_license(license.id)?;
    let history = store
        .key_history(&[license.id])?
        .remove(&license.id)
        .unwrap_or_default();
    // Looked up by a key a reissue replaced: that key no longer works.
    let asked = key_or_id.trim().to_ascii_uppercase();
    let replaced = history.iter().find(|h| h.key == asked);
    match output {
        Output::Json => {
            let mut value = serde_json::to_value(&license).context("serializing the license")?;
            value["key_history"] = serde_json::to_value(&history)?;
            value["replaced_key"] = serde_json::to_value(replaced)?;
            value["machines"] = serde_json::to_value(machines::views(&activated))?;
            value["ledger"] = serde_json::to_value(&ledger)?;
            value["emails"] = serde_json::to_value(&emails)?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            if let Some(h) = replaced {
                writeln!(
                    out,
                    "Key {} was replaced on {} by {} ({}) and no longer works; the license's key is now {}.",
                    h.key,
                    h.replaced_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    h.replaced_by,
                    h.reason,
                    license.key
                )?;
            }
            let pretty = serde_json::to_string_pretty(&license)?;
            writeln!(out, "{pretty}")?;
            if !history.is_empty() {
                writeln!(out, "Replaced keys (no longer valid):")?;
                for h in &history {
                    writeln!(
                        out,
                        "  {}  replaced {} by {}: {}",
                        h.key,
                        h.replaced_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        h.replaced_by,
                        h.reason
                    )?;
                }
            }
            writeln!(out, "Machines:")?;
            if activated.is_empty() {
                writeln!(out, "  none activated")?;
            }
            for m in &activated {
                writeln!(out, "  {}", machines::machine_line(m))?;
            }
            writeln!(out, "Ledger:")?;
            for e in &ledger {
                let operator = match (&e.entry.operator, &e.entry.reason) {
                    (Some(by), Some(reason)) => format!(" by {by}: {reason}"),
                    (Some(by), None) => format!(" by {by}"),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "  {}  {:<9} run {:<5} because of {}{operator}",
                    e.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    e.entry.action,
                    e.entry.run_id.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                    e.entry.stripe_object
                )?;
            }
            writeln!(out, "Emails:")?;
            for m in &emails {
                writeln!(
                    out,
                    "  {:<12} {:<12} to {}  attempts {}{}",
                    m.kind,
                    m.status,
                    m.recipient.as_deref().unwrap_or("-"),
                    m.attempts,
                    m.last_error
                        .as_deref()
                        .map(|e| format!("  last error: {e}"))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}
