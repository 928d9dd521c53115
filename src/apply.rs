//! The applier: executes one page of a plan in one transaction. New
//! licenses get their key here (the planner is pure and has no randomness);
//! every action writes its ledger row, and every issued license its outbox
//! row, in the same transaction as the license itself. Sending happens after
//! the commit, elsewhere.

use std::collections::HashMap;

use anyhow::Result;

use crate::domain::{ActionKind, EmailStatus, GrantKey, WriteTo};
use crate::keys::new_license_key;
use crate::plan::{Action, IssueEmail};
use crate::store::models::NewLicenseRow;
use crate::store::{LicenseWrite, Store, Written};

/// An action as it landed: with the key of the license it created or changed.
#[derive(Debug, Clone)]
pub struct Applied {
    pub action: Action,
    pub license_id: i64,
    pub license_key: String,
}

/// Writes `actions` (one page) in one transaction; returns them with their
/// license ids and keys, in the same order: `None` for an action left alone
/// because an operator changed the license's override after it was planned.
///
/// With `write_back` (`--stripe-write-back`), every issued license queues
/// the write of its key onto its Stripe object in the same transaction.
pub fn apply_page(
    store: &Store,
    run_id: Option<i64>,
    actions: &[Action],
    write_back: bool,
) -> Result<Vec<Option<Applied>>> {
    if actions.is_empty() {
        return Ok(Vec::new());
    }
    let writes: Vec<LicenseWrite> = actions
        .iter()
        .map(|action| {
            let key = action.license_key.clone().unwrap_or_else(new_license_key);
            let mut license = NewLicenseRow::new(key, &action.grant, &action.after);
            license.operator_override = action
                .override_after
                .as_ref()
                .map(|o| serde_json::to_value(o).expect("an override serializes"));
            let mut after = serde_json::to_value(&action.after).expect("license state serializes");
            if let (Some(held), Some(obj)) = (&action.held, after.as_object_mut()) {
                // The ledger says what Stripe asked and the override kept.
                obj.insert(
                    "held_by_override".into(),
                    serde_json::to_value(held).expect("held fields serialize"),
                );
            }
            LicenseWrite {
                license,
                action: action.kind,
                before: action
                    .before
                    .as_ref()
                    .map(|b| serde_json::to_value(b).expect("license state serializes")),
                after,
                stripe_object: action.cause.clone(),
                email: action.email.map(|email| match (email, &action.after.customer_email) {
                    (_, None) => EmailStatus::NoRecipient,
                    (IssueEmail::Silent, Some(_)) => EmailStatus::Skipped,
                    (IssueEmail::Send, Some(_)) => EmailStatus::Pending,
                }),
                write_back: write_back_of(action, write_back),
            }
        })
        .collect();
    let mut written: HashMap<GrantKey, Written> = store
        .write_page(run_id, &writes)?
        .into_iter()
        .map(|w| (w.grant.clone(), w))
        .collect();
    Ok(actions
        .iter()
        .map(|action| {
            let applied = written.remove(&action.grant).map(|w| Applied {
                action: action.clone(),
                license_id: w.license_id,
                license_key: w.key,
            });
            if applied.is_none() {
                tracing::warn!(
                    license_id = action.license_id,
                    "an operator changed this license's override while the run planned it; \
                     left as the operator made it, the next run plans it again"
                );
            }
            applied
        })
        .collect())
}

/// The Stripe object an action's key is written onto: only an issue makes
/// a key in a run (a reissue is an operator's, `crate::operator`).
pub fn write_back_of(action: &Action, write_back: bool) -> Option<WriteTo> {
    if !write_back || action.kind != ActionKind::Issue {
        return None;
    }
    WriteTo::for_grant(&action.grant, action.after.stripe_payment_intent.as_deref())
}
