//! The applier: executes one page of a plan in one transaction. New
//! licenses get their key here (the planner is pure and has no randomness);
//! every action writes its ledger row, and every issued license its outbox
//! row, in the same transaction as the license itself. Sending happens after
//! the commit, elsewhere.

use anyhow::Result;

use crate::domain::EmailStatus;
use crate::keys::new_license_key;
use crate::plan::{Action, IssueEmail};
use crate::store::models::NewLicenseRow;
use crate::store::{LicenseWrite, QueuedEmail, Store};

/// The outbox kind of the email announcing a new license.
pub const EMAIL_LICENSE_ISSUED: &str = "license_issued";

/// An action as it landed: with the key of the license it created or changed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub action: Action,
    pub license_id: i64,
    pub license_key: String,
}

/// Writes `actions` (one page) in one transaction; returns them with their
/// license ids and keys, in the same order.
pub fn apply_page(store: &Store, run_id: Option<i64>, actions: &[Action]) -> Result<Vec<Applied>> {
    if actions.is_empty() {
        return Ok(Vec::new());
    }
    let writes: Vec<LicenseWrite> = actions
        .iter()
        .map(|action| {
            let key = action.license_key.clone().unwrap_or_else(new_license_key);
            LicenseWrite {
                license: NewLicenseRow::new(key, &action.grant, &action.after),
                action: action.kind,
                before: action
                    .before
                    .as_ref()
                    .map(|b| serde_json::to_value(b).expect("license state serializes")),
                after: serde_json::to_value(&action.after).expect("license state serializes"),
                stripe_object: action.cause.clone(),
                email: action.email.map(|email| QueuedEmail {
                    kind: EMAIL_LICENSE_ISSUED.to_owned(),
                    status: match (email, &action.after.customer_email) {
                        (_, None) => EmailStatus::NoRecipient,
                        (IssueEmail::Silent, Some(_)) => EmailStatus::Skipped,
                        (IssueEmail::Send, Some(_)) => EmailStatus::Pending,
                    },
                }),
            }
        })
        .collect();
    let written = store.write_page(run_id, &writes)?;
    Ok(actions
        .iter()
        .zip(written)
        .map(|(action, w)| Applied {
            action: action.clone(),
            license_id: w.license_id,
            license_key: w.key,
        })
        .collect())
}
