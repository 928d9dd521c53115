//! `licensync licenses machines|deactivate` (key-api.md "Operators"): the
//! machines that hold a license's seats in the key API, and an operator
//! freeing them with a ledger row. A machine is shown by the first 12 hex
//! digits of its fingerprint's hash ([`MachineRow::prefix`]), never by the
//! whole hash; `licenses show` lists them the same way.
//!
//! Choices where the contract is silent:
//! - `--machine` takes the fingerprint itself (matched by its hash) or a
//!   prefix of the hash of at least [`MIN_PREFIX`] lowercase hex digits; it
//!   must name exactly one machine, else exit 2 and nothing is freed.
//! - `--all` on a license without machines frees nothing, writes no ledger
//!   row and exits 0: no seat is taken, which is what was asked.

use std::io::Write;

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args};
use licensync_verify::sha256_hex;
use serde::Serialize;
use serde_json::json;

use super::overrides::{OperatorArgs, non_empty};
use super::{Output, open_migrated};
use crate::config::Config;
use crate::domain::License;
use crate::error::usage;
use crate::operator;
use crate::store::{MachineRow, Store};

/// The shortest hash prefix `--machine` takes: shorter ones would too
/// easily name a machine by chance.
pub const MIN_PREFIX: usize = 8;

#[derive(Debug, Args, Clone)]
pub struct MachinesArgs {
    /// The license key or its numeric id.
    pub key_or_id: String,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args, Clone)]
#[command(group(ArgGroup::new("which").required(true).args(["machine", "all"])))]
pub struct DeactivateArgs {
    /// The license key or its numeric id.
    pub key_or_id: String,
    /// The machine to free: its fingerprint, or at least 8 hex digits of its hash as `licenses machines` shows it.
    #[arg(long, value_name = "M")]
    pub machine: Option<String>,
    /// Free every machine of the license.
    #[arg(long)]
    pub all: bool,
    /// Why, for the ledger.
    #[arg(long, value_name = "TEXT", value_parser = non_empty)]
    pub reason: String,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

/// A machine in JSON output (cli.md): its hash prefix, never the whole hash.
#[derive(Debug, Serialize)]
pub struct MachineView<'a> {
    pub machine: &'a str,
    pub name: Option<&'a str>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

pub fn views(machines: &[MachineRow]) -> Vec<MachineView<'_>> {
    machines
        .iter()
        .map(|m| MachineView {
            machine: m.prefix(),
            name: m.name.as_deref(),
            first_seen: m.first_seen,
            last_seen: m.last_seen,
        })
        .collect()
}

/// One machine for people. The name comes from the application: control
/// characters in it are shown as `?`, so it cannot drive the terminal.
pub fn machine_line(m: &MachineRow) -> String {
    let name: String = m
        .name
        .as_deref()
        .unwrap_or("-")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    format!(
        "{}  {name:<24}  first seen {}  last seen {}",
        m.prefix(),
        m.first_seen.format("%Y-%m-%d %H:%M:%S UTC"),
        m.last_seen.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

fn find(store: &Store, key_or_id: &str) -> Result<License> {
    store.find_license(key_or_id)?.ok_or_else(|| {
        usage(anyhow!(
            "no license with key or id `{}`; find it with `licensync licenses list --customer EMAIL`",
            key_or_id.trim()
        ))
    })
}

fn seats(license: &License) -> String {
    match crate::keyapi::limit(license.state.hwid_limit) {
        Some(n) => format!("hwid_limit {n}"),
        None => "no seat limit".to_owned(),
    }
}

/// `licenses machines`: the activated machines, first activated first.
pub fn list(config: &Config, args: MachinesArgs) -> Result<()> {
    let db = open_migrated(config)?;
    let license = find(&db.store, &args.key_or_id)?;
    let machines = db.store.machines(license.id)?;
    match args.output {
        Output::Json => {
            let value = json!({ "license_id": license.id, "machines": views(&machines) });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "license {} ({}): {} machine{} activated, {}",
                license.id,
                license.key,
                machines.len(),
                if machines.len() == 1 { "" } else { "s" },
                seats(&license)
            )?;
            for m in &machines {
                writeln!(out, "  {}", machine_line(m))?;
            }
        }
    }
    Ok(())
}

/// Whether `given` has the form of a hash prefix as `licenses machines` shows it.
fn is_prefix(given: &str) -> bool {
    (MIN_PREFIX..=64).contains(&given.len()) && given.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The one machine `--machine` names: the machine whose hash is the hash of
/// `given` (a fingerprint), or whose hash starts with `given` (a prefix).
/// The error says why not, without repeating a fingerprint.
pub fn resolve<'a>(machines: &'a [MachineRow], given: &str) -> Result<&'a MachineRow, String> {
    let hash = sha256_hex(given);
    let prefix = is_prefix(given).then_some(given);
    let matching: Vec<&MachineRow> = machines
        .iter()
        .filter(|m| m.machine_hash == hash || prefix.is_some_and(|p| m.machine_hash.starts_with(p)))
        .collect();
    let short = given.len() < MIN_PREFIX && given.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let shown = if prefix.is_some() || short {
        format!("`{given}`")
    } else {
        format!("the fingerprint given (hash {}...)", &hash[..12])
    };
    match matching.as_slice() {
        [one] => Ok(one),
        [] if machines.is_empty() => Err("no machine is activated".to_owned()),
        [] if short => Err(format!(
            "{shown} is too short a hash prefix: give at least {MIN_PREFIX} hex digits, \
             as `licensync licenses machines` shows them, or the machine's fingerprint"
        )),
        [] => Err(format!(
            "no machine matches {shown} (--machine takes the machine's fingerprint, or at least \
             {MIN_PREFIX} lowercase hex digits of its hash as `licensync licenses machines` shows them)"
        )),
        many => Err(format!(
            "{shown} matches {} machines ({}): give more digits of the hash, or the fingerprint",
            many.len(),
            many.iter().map(|m| m.prefix()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// `licenses deactivate`: frees one machine's seat or all of them, with a
/// ledger row naming the reason and the operator.
pub fn deactivate(config: &Config, args: DeactivateArgs) -> Result<()> {
    let by = operator::operator_name(args.operator.by.as_deref())?;
    let db = open_migrated(config)?;
    let license = find(&db.store, &args.key_or_id)?;
    let refuse = |why: String| {
        usage(anyhow!(
            "license {} ({}): {why}; nothing was changed",
            license.id,
            license.key
        ))
    };
    let target = match args.machine.as_deref() {
        Some(given) => {
            let machines = db.store.machines(license.id)?;
            Some(resolve(&machines, given).map_err(refuse)?.machine_hash.clone())
        }
        None => None,
    };
    // The whole hash: a machine activated meanwhile is never freed by a prefix.
    let (freed, kept) = db
        .store
        .operator_deactivate(license.id, target.as_deref(), &args.reason, &by)?;
    if let (Some(hash), true) = (&target, freed.is_empty()) {
        return Err(refuse(format!(
            "machine {} no longer holds a seat (freed meanwhile)",
            &hash[..12]
        )));
    }
    match args.operator.output {
        Output::Json => {
            let value = json!({
                "command": "deactivate",
                "license_id": license.id,
                "key": license.key,
                "by": by,
                "reason": args.reason,
                "freed": views(&freed),
                "machines": views(&kept),
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            if freed.is_empty() {
                writeln!(
                    out,
                    "license {} ({}) has no activated machines; nothing was freed",
                    license.id, license.key
                )?;
                return Ok(());
            }
            writeln!(
                out,
                "deactivate: license {} ({}) by {by}, reason: {}",
                license.id, license.key, args.reason
            )?;
            for m in &freed {
                writeln!(out, "  freed {}", machine_line(m))?;
            }
            writeln!(
                out,
                "{} machine{} still activated, {}",
                kept.len(),
                if kept.len() == 1 { "" } else { "s" },
                seats(&license)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: i64, fingerprint: &str) -> MachineRow {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        MachineRow {
            id,
            license_id: 1,
            machine_hash: sha256_hex(fingerprint),
            name: Some(format!("machine {id}")),
            first_seen: at,
            last_seen: at,
        }
    }

    #[test]
    fn a_fingerprint_or_a_prefix_of_eight_or_more_digits_names_one_machine() {
        let machines = [machine(1, "laptop"), machine(2, "desktop")];
        let desktop = &machines[1];
        assert_eq!(resolve(&machines, "desktop").unwrap().id, 2);
        assert_eq!(resolve(&machines, desktop.prefix()).unwrap().id, 2);
        assert_eq!(resolve(&machines, &desktop.machine_hash[..8]).unwrap().id, 2);
        assert_eq!(resolve(&machines, &desktop.machine_hash).unwrap().id, 2);
        let short = resolve(&machines, &desktop.machine_hash[..7]).unwrap_err();
        assert!(short.contains("too short"), "{short}");
        let upper = resolve(&machines, &desktop.prefix().to_uppercase()).unwrap_err();
        assert!(upper.contains("no machine"), "{upper}");
    }

    #[test]
    fn an_ambiguous_prefix_or_an_unknown_machine_names_none_and_never_repeats_a_fingerprint() {
        let mut twins = [machine(1, "a"), machine(2, "b")];
        twins[0].machine_hash = format!("abcdef01{}", "1".repeat(56));
        twins[1].machine_hash = format!("abcdef01{}", "2".repeat(56));
        let ambiguous = resolve(&twins, "abcdef01").unwrap_err();
        assert!(ambiguous.contains("matches 2 machines"), "{ambiguous}");
        assert_eq!(resolve(&twins, "abcdef011").unwrap().id, 1);
        let unknown = resolve(&twins, "secret-fingerprint").unwrap_err();
        assert!(unknown.contains("no machine"), "{unknown}");
        assert!(!unknown.contains("secret-fingerprint"), "{unknown}");
        assert!(resolve(&[], "laptop").unwrap_err().contains("no machine is activated"));
    }

    #[test]
    fn a_machine_line_shows_the_prefix_never_the_whole_hash_nor_control_characters() {
        let mut m = machine(1, "laptop");
        m.name = Some("evil\u{1b}[2Jname".into());
        let line = machine_line(&m);
        assert!(line.starts_with(m.prefix()), "{line}");
        assert!(!line.contains(&m.machine_hash), "{line}");
        assert!(line.contains("evil?[2Jname"), "{line}");
    }
}
