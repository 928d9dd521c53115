//! The operator overrides of licensing-rules §8 (`licensync licenses
//! revoke|suspend|pin|release|reissue`): decided and written on the locked
//! license row in one transaction, recorded in the ledger with the reason
//! and the operator; a reissue's email is sent at once.

use std::io::Write;

use anyhow::Result;
use chrono::Utc;
use clap::Args;
use serde_json::json;

use super::{Output, account_mail, open_migrated};
use crate::config::Config;
use crate::delivery::deliver_due;
use crate::domain::OperatorAction;
use crate::error::usage;
use crate::operator;
use crate::values::parse_timestamp;

/// Who runs an operator command (recorded in the ledger).
#[derive(Debug, Args, Clone)]
pub struct OperatorArgs {
    /// Who does this, for the ledger (default: the OS user name).
    #[arg(long, env = "LICENSYNC_OPERATOR", value_name = "NAME")]
    pub by: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args, Clone)]
pub struct OverrideArgs {
    /// The license key or its numeric id.
    pub key_or_id: String,
    /// Why, for the ledger and for whoever looks at the license next.
    #[arg(long, value_name = "TEXT", value_parser = non_empty)]
    pub reason: String,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

#[derive(Debug, Args, Clone)]
pub struct PinArgs {
    /// The license key or its numeric id.
    pub key_or_id: String,
    /// Seats (devices) to keep whatever the quantity bought.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub hwid_limit: Option<i32>,
    /// Distinct IP addresses to keep.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub ip_limit: Option<i32>,
    /// Expiry to keep (RFC 3339 or YYYY-MM-DD, midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = expires_at)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why, for the ledger and for whoever looks at the license next.
    #[arg(long, value_name = "TEXT", value_parser = non_empty)]
    pub reason: String,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ReleaseArgs {
    /// The license key or its numeric id.
    pub key_or_id: String,
    /// Why (optional), for the ledger.
    #[arg(long, value_name = "TEXT", value_parser = non_empty)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

pub(super) fn non_empty(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty: say why, e.g. \"chargeback abuse, ticket 4711\"".into());
    }
    Ok(value.to_owned())
}

fn expires_at(value: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    parse_timestamp(value, "--expires-at")
}

/// Revoked now and on every later run, whatever Stripe says.
pub async fn revoke(config: &Config, args: OverrideArgs) -> Result<()> {
    let command = operator::Command::Revoke;
    operate(config, &args.key_or_id, command, Some(args.reason), &args.operator).await
}

/// Suspended now and on every later run.
pub async fn suspend(config: &Config, args: OverrideArgs) -> Result<()> {
    let command = operator::Command::Suspend;
    operate(config, &args.key_or_id, command, Some(args.reason), &args.operator).await
}

/// These fields keep the pinned values; the rest follows Stripe.
pub async fn pin(config: &Config, args: PinArgs) -> Result<()> {
    let command = operator::Command::Pin {
        hwid_limit: args.hwid_limit,
        ip_limit: args.ip_limit,
        expires_at: args.expires_at,
    };
    operate(config, &args.key_or_id, command, Some(args.reason), &args.operator).await
}

/// Clears the override: the license follows Stripe again.
pub async fn release(config: &Config, args: ReleaseArgs) -> Result<()> {
    let command = operator::Command::Release;
    operate(config, &args.key_or_id, command, args.reason, &args.operator).await
}

/// A new key for the same license, mailed at once.
pub async fn reissue(config: &Config, args: OverrideArgs) -> Result<()> {
    let command = operator::Command::Reissue {
        new_key: crate::keys::new_license_key(),
    };
    operate(config, &args.key_or_id, command, Some(args.reason), &args.operator).await
}

/// An operator command (licensing-rules §8): decided and written on the
/// locked license row in one transaction; a reissue's email is sent at once.
async fn operate(
    config: &Config,
    key_or_id: &str,
    command: operator::Command,
    reason: Option<String>,
    who: &OperatorArgs,
) -> Result<()> {
    let request = operator::Request {
        command,
        reason,
        by: operator::operator_name(who.by.as_deref())?,
        now: Utc::now(),
        write_back: config.stripe_write_back,
    };
    let db = open_migrated(config)?;
    let done = db
        .store
        .operate(key_or_id, |license| operator::decide(license, &request))?
        .ok_or_else(|| {
            usage(anyhow::anyhow!(
                "no license with key or id `{}`; find it with `licensync licenses list --customer EMAIL`",
                key_or_id.trim()
            ))
        })?;
    let mut email = None;
    if let Some(outbox_id) = done.outbox_id {
        let account = done.after.stripe_account.as_deref();
        let (mail, store) = (account_mail(config, account)?, db.store.for_account(account));
        if let Err(e) = deliver_due(&store, &mail, config.mail_max_attempts, Utc::now()).await {
            tracing::warn!(error = %format!("{e:#}"), "could not deliver the new key; the next reconcile retries");
        }
        email = db
            .store
            .outbox_for_license(done.after.id)?
            .into_iter()
            .find(|o| o.id == outbox_id);
    }
    let changes = operator::changes(&done.before, &done.after);
    let command = done.write.action.command();
    match who.output {
        Output::Json => {
            let value = json!({
                "command": command,
                "license_id": done.after.id,
                "key": done.after.key,
                "by": done.write.operator,
                "reason": done.write.reason,
                "changes": changes,
                "override": done.after.operator_override,
                "email": email,
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{command}: license {} ({}) by {}{}",
                done.after.id,
                done.before.key,
                done.write.operator,
                done.write
                    .reason
                    .as_deref()
                    .map(|r| format!(", reason: {r}"))
                    .unwrap_or_default()
            )?;
            for c in &changes {
                let (before, after) = match c.field {
                    "override" => (
                        operator::summary(done.before.operator_override.as_ref()),
                        operator::summary(done.after.operator_override.as_ref()),
                    ),
                    _ => (brief(&c.before), brief(&c.after)),
                };
                writeln!(out, "  {:<11} {before} -> {after}", c.field)?;
            }
            match (&done.after.operator_override, done.write.action) {
                (_, OperatorAction::Reissue) => {}
                (Some(_), _) => writeln!(
                    out,
                    "Every later run keeps what the override holds; `licensync licenses release {}` hands it back to Stripe.",
                    done.after.key
                )?,
                (None, _) => writeln!(
                    out,
                    "No override: the license follows Stripe (fully from the next run that reads its purchase)."
                )?,
            }
            if let Some(row) = &email {
                writeln!(
                    out,
                    "New key email to {}: {}",
                    row.recipient.as_deref().unwrap_or("-"),
                    row.status
                )?;
            }
        }
    }
    Ok(())
}

fn brief(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
