//! The key API's answer, decided from a license's facts: pure, like the
//! planner, so every code and its order are table-tested without a server.
//!
//! The codes, first that applies: `NOT_FOUND` (decided before this: no
//! facts), the license's status (`REVOKED`, `SUSPENDED`, `EXPIRED`, an
//! active license whose expiry passed being `EXPIRED` at once),
//! `PRODUCT_MISMATCH`, the machine's (`NO_MACHINE`,
//! `MACHINE_NOT_ACTIVATED` for a validation; `HWID_LIMIT` for an
//! activation that would take one seat too many), `IP_LIMIT`, `VALID`.
//!
//! Choices where the contract is silent:
//! - Only a `VALID` answer writes: a refused activation takes no seat, and
//!   a refused answer starts no clock and records no address.
//! - Client addresses are recorded only for a license with an `ip_limit`:
//!   without one, nothing needs them.
//! - An activated machine's `last_seen` and a recorded address's are
//!   refreshed at most once a minute, so a busy application does not turn
//!   every check into a write.

use chrono::{Duration, TimeDelta};
use serde::Serialize;

use crate::domain::{ExpirationStart, LicenseStatus, Timestamp};
use crate::store::{KeyFacts, KeyWrites};

/// An answer's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::AsRefStr, strum::EnumIter)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Valid,
    NotFound,
    Revoked,
    Suspended,
    Expired,
    ProductMismatch,
    NoMachine,
    MachineNotActivated,
    HwidLimit,
    IpLimit,
    Deactivated,
}

impl Code {
    /// The answer's `detail`: what happened, for a person reading a log.
    pub fn detail(self) -> &'static str {
        match self {
            Code::Valid => "the license is valid",
            Code::NotFound => "no license has this key",
            Code::Revoked => "the license was revoked",
            Code::Suspended => "the license is suspended",
            Code::Expired => "the license has expired",
            Code::ProductMismatch => "the license does not cover this product",
            Code::NoMachine => "this license is bound to machines: send the machine's fingerprint",
            Code::MachineNotActivated => "this machine is not activated for the license",
            Code::HwidLimit => "every seat of the license is taken: deactivate a machine first",
            Code::IpLimit => "the license is used from too many addresses",
            Code::Deactivated => "the machine's seat was freed",
        }
    }
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Validate,
    /// Take a seat for the machine (required), with an optional name.
    Activate {
        name: Option<String>,
    },
}

/// One request, as the decision needs it.
#[derive(Debug, Clone)]
pub struct Question<'a> {
    pub ask: Ask,
    pub product: Option<&'a str>,
    /// SHA-256 of the machine fingerprint, lowercase hex.
    pub machine_hash: Option<&'a str>,
    pub address: &'a str,
    pub now: Timestamp,
}

/// The answer and what it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub code: Code,
    pub writes: KeyWrites,
    /// The license's status as the answer shows it (`expired` once its
    /// time passed, before the next run writes it).
    pub status: LicenseStatus,
    /// The expiry the answer shows and the token carries: the row's, or the
    /// one the activation clock implies.
    pub expires_at: Option<Timestamp>,
    /// Machines activated once the answer's writes are made.
    pub machines: i64,
}

/// How stale a `last_seen` may get before a check refreshes it.
const REFRESH: TimeDelta = TimeDelta::minutes(1);

/// A limit of 0 (or none) is no limit.
pub fn limit(value: Option<i32>) -> Option<i64> {
    value.filter(|&v| v > 0).map(i64::from)
}

pub fn decide(facts: &KeyFacts, question: &Question<'_>) -> Decision {
    let state = &facts.license.state;
    let now = question.now;
    let clock_waits = state.expiration_start == Some(ExpirationStart::Activation) && state.expires_at.is_none();
    let days = state.expiration_days.map(|d| Duration::days(i64::from(d)));
    let mut expires_at = match (state.expires_at, clock_waits, facts.clock_started, days) {
        (Some(at), ..) => Some(at),
        (None, true, Some(started), Some(days)) => Some(started + days),
        _ => None,
    };
    let mut decision = Decision {
        code: Code::Valid,
        writes: KeyWrites::default(),
        status: state.status,
        expires_at,
        machines: facts.machines,
    };
    let refused = |mut decision: Decision, code: Code| {
        decision.code = code;
        decision
    };

    match state.status {
        LicenseStatus::Revoked => return refused(decision, Code::Revoked),
        LicenseStatus::Suspended => return refused(decision, Code::Suspended),
        LicenseStatus::Expired => return refused(decision, Code::Expired),
        LicenseStatus::Active if expires_at.is_some_and(|at| at <= now) => {
            decision.status = LicenseStatus::Expired;
            return refused(decision, Code::Expired);
        }
        LicenseStatus::Active => {}
    }
    if let Some(product) = question.product
        && !state.product_ids.iter().any(|p| p == product)
    {
        return refused(decision, Code::ProductMismatch);
    }

    let seats = limit(state.hwid_limit);
    let activated = facts.machine_seen.is_some();
    let mut writes = KeyWrites::default();
    match (&question.ask, question.machine_hash) {
        (Ask::Validate, None) if seats.is_some() => return refused(decision, Code::NoMachine),
        (Ask::Validate, Some(_)) if seats.is_some() && !activated => {
            return refused(decision, Code::MachineNotActivated);
        }
        (Ask::Validate, Some(hash)) if facts.machine_seen.is_some_and(|seen| seen + REFRESH <= now) => {
            writes.touch_machine = Some(hash.to_owned());
        }
        // The request layer refuses an activation without a machine (400).
        (Ask::Activate { .. }, None) => return refused(decision, Code::NoMachine),
        (Ask::Activate { .. }, Some(_)) if !activated && seats.is_some_and(|s| facts.machines >= s) => {
            return refused(decision, Code::HwidLimit);
        }
        (Ask::Activate { name }, Some(hash)) if !activated => {
            writes.activate = Some((hash.to_owned(), name.clone()));
            decision.machines += 1;
        }
        (Ask::Activate { .. }, Some(hash)) if facts.machine_seen.is_some_and(|seen| seen + REFRESH <= now) => {
            writes.touch_machine = Some(hash.to_owned());
        }
        _ => {}
    }

    if let Some(addresses) = limit(state.ip_limit) {
        // This address counts too, seen before or not.
        if facts.other_addresses + 1 > addresses {
            decision.machines = facts.machines;
            return refused(decision, Code::IpLimit);
        }
        if facts.address_seen.is_none_or(|seen| seen + REFRESH <= now) {
            writes.record_address = Some(question.address.to_owned());
        }
    }

    if clock_waits && facts.clock_started.is_none() {
        writes.start_clock = true;
        expires_at = days.map(|days| now + days);
    }
    decision.expires_at = expires_at;
    decision.writes = writes;
    decision
}

#[cfg(test)]
mod tests;
