//! `licensync mail resend`: queue the license email again and send it.

use anyhow::Result;
use chrono::Utc;
use clap::Subcommand;

use super::{account_mail, open_migrated};
use crate::config::Config;
use crate::delivery::deliver_due;
use crate::domain::EmailStatus;
use crate::error::usage;
use crate::mail::MailUrl;

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Queue the license email again and send it ("customer lost the email").
    Resend {
        /// The license key or its numeric id.
        key_or_id: String,
    },
}

pub async fn run(config: &Config, command: MailCommand) -> Result<()> {
    match command {
        MailCommand::Resend { key_or_id } => resend(config, &key_or_id).await,
    }
}

/// Queues the license email again and sends it at once.
async fn resend(config: &Config, key_or_id: &str) -> Result<()> {
    let db = open_migrated(config)?;
    let license = db
        .store
        .find_license(key_or_id)?
        .ok_or_else(|| usage(anyhow::anyhow!("no license with key or id `{key_or_id}`")))?;
    // Sent as its account sends (its sender and templates), by a
    // sender that claims only its account's emails.
    let mail = account_mail(config, license.stripe_account.as_deref())?;
    let store = db.store.for_account(license.stripe_account.as_deref());
    if license.state.customer_email.is_none() {
        return Err(usage(anyhow::anyhow!(
            "license {} has no customer email (Stripe had none); nothing to send",
            license.key
        )));
    }
    let outbox_id = store.queue_resend(&license)?;
    deliver_due(&store, &mail, config.mail_max_attempts, Utc::now()).await?;
    let row = store
        .outbox_for_license(license.id)?
        .into_iter()
        .find(|o| o.id == outbox_id);
    match row {
        Some(row) if row.status == EmailStatus::Sent => {
            println!(
                "sent the license email for {} to {}",
                license.key,
                row.recipient.unwrap_or_default()
            );
            Ok(())
        }
        Some(row) if row.status == EmailStatus::Pending && matches!(config.mail.url, MailUrl::None) => {
            println!(
                "queued the license email for {} (mail transport `none`: not sent)",
                license.key
            );
            Ok(())
        }
        Some(row) if row.status == EmailStatus::Failed => Err(anyhow::anyhow!(
            "the license email for {} could not be delivered and was given up: {}",
            license.key,
            row.last_error.unwrap_or_else(|| row.status.to_string())
        )),
        Some(row) => Err(anyhow::anyhow!(
            "the license email for {} was queued but not delivered yet ({}): the next reconcile retries it",
            license.key,
            row.last_error.unwrap_or_else(|| row.status.to_string())
        )),
        None => Err(anyhow::anyhow!("the queued email for {} disappeared", license.key)),
    }
}
