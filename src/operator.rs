//! Operator overrides (licensing-rules §8): what `licenses revoke`,
//! `suspend`, `pin`, `release` and `reissue` do to one license. The
//! decision is pure (the store runs it on the locked row, in the transaction
//! that writes it); a refusal is a usage error (exit 2) that says what to do,
//! and nothing is written.
//!
//! Choices where the rules are silent (each one has a test below):
//! - Overrides add up: a pin on a suspended license keeps the suspension, a
//!   revoke keeps the pins. Reason, operator and time are the latest
//!   command's; the ledger keeps every one.
//! - A revoked license (by Stripe or by override) cannot be suspended,
//!   pinned or reissued: none of these would let its key work again.
//! - Revoking or suspending twice, and releasing a license without
//!   override, are refused: they would change nothing.
//! - The license row gets what the next run would write: Stripe's last
//!   known state with the override on top, so the next run (Stripe
//!   unchanged) changes nothing.
//! - `release` restores what Stripe last asked for (the override's `stripe`
//!   values, refreshed by every run that re-plans the license), and the
//!   clock; the next run that sees the purchase brings everything else up
//!   to date.
//! - A reissue keeps the override and mails the new key as its own email
//!   (`key_reissued:<n>`, one per reissue, resendable like any outbox row).

use anyhow::{Result, anyhow};
use serde::Serialize;
use serde_json::{Value, json};

use crate::domain::{
    EmailKind, HeldStatus, HeldValues, License, LicenseState, LicenseStatus, OperatorAction, Override, Timestamp,
    WriteTo,
};
use crate::error::usage;
use crate::plan::apply_override;
use crate::store::OperatorWrite;

/// One operator command on one license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Revoke,
    Suspend,
    Pin {
        hwid_limit: Option<i32>,
        ip_limit: Option<i32>,
        expires_at: Option<Timestamp>,
    },
    Release,
    /// The new key comes from the caller (`keys::new_license_key`): this module has no randomness.
    Reissue {
        new_key: String,
    },
}

impl Command {
    pub fn action(&self) -> OperatorAction {
        match self {
            Command::Revoke => OperatorAction::Revoke,
            Command::Suspend => OperatorAction::Suspend,
            Command::Pin { .. } => OperatorAction::Pin,
            Command::Release => OperatorAction::Release,
            Command::Reissue { .. } => OperatorAction::Reissue,
        }
    }
}

/// Who asks, why and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    /// Required by every command but `release`.
    pub reason: Option<String>,
    pub by: String,
    pub now: Timestamp,
    /// `--stripe-write-back`: a reissued key is written onto the license's
    /// Stripe object too.
    pub write_back: bool,
}

/// What `command` writes to `license`, or a usage error saying why not.
pub fn decide(license: &License, request: &Request) -> Result<OperatorWrite> {
    let action = request.command.action();
    let reason = request.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    if reason.is_none() && action != OperatorAction::Release {
        return Err(usage(anyhow!(
            "licenses {}: --reason is required; say why, e.g. --reason \"chargeback abuse, ticket 4711\"",
            action.command()
        )));
    }
    let name = describe(license);
    let current = license.operator_override.as_ref();
    let revoked = license.state.status == LicenseStatus::Revoked;
    let refuse = |why: String| Err(usage(anyhow!("{why}; nothing was changed")));
    let merged = |status: Option<HeldStatus>| Override {
        status: status.or(current.and_then(|o| o.status)),
        hwid_limit: current.and_then(|o| o.hwid_limit),
        ip_limit: current.and_then(|o| o.ip_limit),
        expires_at: current.and_then(|o| o.expires_at),
        reason: reason.unwrap_or_default().to_owned(),
        by: request.by.clone(),
        at: request.now,
        stripe: current.map_or_else(|| HeldValues::of(&license.state()), |o| o.stripe.clone()),
    };
    let (operator_override, new_key, email) = match &request.command {
        Command::Revoke => {
            if current.is_some_and(|o| o.status == Some(HeldStatus::Revoked)) {
                return refuse(format!(
                    "{name} is already revoked by an override ({})",
                    held_by(current)
                ));
            }
            (Some(merged(Some(HeldStatus::Revoked))), None, None)
        }
        Command::Suspend => {
            if revoked {
                return refuse(format!(
                    "{name} is revoked; a revoked license cannot be suspended (its key already does not work)"
                ));
            }
            if current.is_some_and(|o| o.status == Some(HeldStatus::Suspended)) {
                return refuse(format!(
                    "{name} is already suspended by an override ({})",
                    held_by(current)
                ));
            }
            (Some(merged(Some(HeldStatus::Suspended))), None, None)
        }
        Command::Pin {
            hwid_limit,
            ip_limit,
            expires_at,
        } => {
            if hwid_limit.is_none() && ip_limit.is_none() && expires_at.is_none() {
                return Err(usage(anyhow!(
                    "licenses pin: say what to pin with --hwid-limit N, --ip-limit N and/or --expires-at TIME"
                )));
            }
            if revoked {
                return refuse(format!(
                    "{name} is revoked, so pinning its limits or expiry would not make its key work; \
                     if the revocation was a mistake, run `licensync licenses release {}` first",
                    license.key
                ));
            }
            let mut pinned = merged(None);
            pinned.hwid_limit = hwid_limit.or(pinned.hwid_limit);
            pinned.ip_limit = ip_limit.or(pinned.ip_limit);
            pinned.expires_at = expires_at.or(pinned.expires_at);
            (Some(pinned), None, None)
        }
        Command::Release => {
            if current.is_none() {
                return refuse(format!("{name} has no override to release; it already follows Stripe"));
            }
            (None, None, None)
        }
        Command::Reissue { new_key } => {
            if revoked {
                return refuse(format!(
                    "{name} is revoked; a new key would not work either. \
                     If the revocation was a mistake, run `licensync licenses release {}` first",
                    license.key
                ));
            }
            (current.cloned(), Some(new_key.clone()), Some(EmailKind::KeyReissued))
        }
    };
    let state = match &request.command {
        Command::Reissue { .. } => license.state(),
        _ => held_state(license, operator_override.as_ref(), request.now),
    };
    let mut before = ledger_values(&license.state(), current);
    let mut after = ledger_values(&state, operator_override.as_ref());
    if let (Some(key), Some(obj), Some(old)) = (&new_key, after.as_object_mut(), before.as_object_mut()) {
        old.insert("key".into(), Value::String(license.key.clone()));
        obj.insert("key".into(), Value::String(key.clone()));
    }
    let write_back = new_key
        .as_ref()
        .filter(|_| request.write_back)
        .and_then(|_| WriteTo::for_grant(&license.grant, license.state.stripe_payment_intent.as_deref()));
    Ok(OperatorWrite {
        action,
        state,
        operator_override,
        new_key,
        before,
        after,
        reason: reason.map(str::to_owned),
        operator: request.by.clone(),
        email,
        write_back,
    })
}

/// What a run would make of the license with `operator_override`: Stripe's
/// last known state, the clock, then the override.
fn held_state(license: &License, operator_override: Option<&Override>, now: Timestamp) -> LicenseState {
    let mut state = license.stripe_state();
    if state.status == LicenseStatus::Active && state.expires_at.is_some_and(|at| at <= now) {
        state.status = LicenseStatus::Expired;
    }
    if let Some(o) = operator_override {
        apply_override(&mut state, o, now);
    }
    state
}

fn ledger_values(state: &LicenseState, operator_override: Option<&Override>) -> Value {
    json!({
        "status": state.status,
        "hwid_limit": state.hwid_limit,
        "ip_limit": state.ip_limit,
        "expires_at": state.expires_at,
        "override": operator_override,
    })
}

fn describe(license: &License) -> String {
    format!("license {} ({})", license.id, license.key)
}

fn held_by(o: Option<&Override>) -> String {
    o.map(|o| format!("\"{}\", by {} at {}", o.reason, o.by, o.at.format("%Y-%m-%d %H:%M UTC")))
        .unwrap_or_default()
}

/// One field an operator command changed, for its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub field: &'static str,
    pub before: Value,
    pub after: Value,
}

/// The fields that differ between two versions of a license, in a fixed order.
pub fn changes(before: &License, after: &License) -> Vec<Change> {
    let fields = |l: &License| -> [(&'static str, Value); 6] {
        [
            ("key", json!(l.key)),
            ("status", json!(l.state.status)),
            ("hwid_limit", json!(l.state.hwid_limit)),
            ("ip_limit", json!(l.state.ip_limit)),
            ("expires_at", json!(l.state.expires_at)),
            ("override", json!(l.operator_override)),
        ]
    };
    fields(before)
        .into_iter()
        .zip(fields(after))
        .filter(|((_, old), (_, new))| old != new)
        .map(|((field, before), (_, after))| Change { field, before, after })
        .collect()
}

/// One line for people: what an override holds, why and by whom (`none` for no override).
pub fn summary(o: Option<&Override>) -> String {
    let Some(o) = o else { return "none".to_owned() };
    let mut holds = Vec::new();
    if let Some(status) = o.status {
        holds.push(status.status().as_str().to_owned());
    }
    if let Some(seats) = o.hwid_limit {
        holds.push(format!("hwid_limit {seats}"));
    }
    if let Some(ips) = o.ip_limit {
        holds.push(format!("ip_limit {ips}"));
    }
    if let Some(at) = o.expires_at {
        holds.push(format!("expires_at {}", at.format("%Y-%m-%d %H:%M UTC")));
    }
    format!("{} (\"{}\", by {})", holds.join(", "), o.reason, o.by)
}

/// The name of the person running a command: `--by` / `LICENSYNC_OPERATOR`,
/// else the OS user.
pub fn operator_name(by: Option<&str>) -> Result<String> {
    if let Some(by) = by.map(str::trim).filter(|b| !b.is_empty()) {
        return Ok(by.to_owned());
    }
    whoami::username().map_err(|e| {
        usage(anyhow!(
            "cannot tell who is running this ({e}); pass --by NAME or set LICENSYNC_OPERATOR"
        ))
    })
}

#[cfg(test)]
mod tests;
