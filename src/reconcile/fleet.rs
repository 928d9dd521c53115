//! Several Stripe accounts in one `reconcile` (licensing-rules §9): each
//! account is a run of its own (its lock, cursor, run row, rate budget,
//! sender), run side by side up to `--account-concurrency`, and one
//! account's failure never stops another. This file holds what the
//! accounts' runs add up to: the combined report, its text and JSON forms,
//! and the exit code.
//!
//! Choices where the rules are silent, each with its test:
//! - an account another run holds (overlapping shards, a run by hand) is
//!   `locked`, not failed: the other run reconciles it. Exit 75 only when
//!   every account was locked, as for one account
//!   (`verdict_table`);
//! - any failed account makes the exit code 1 and the report names every
//!   failed account, whatever the others did (`verdict_table`);
//! - a shard with no account succeeds with nothing to do: with more pods
//!   than accounts some shards are empty (`verdict_table`).

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{Map, Value, json};

use super::policy::{Action, Outcome};
use super::report::{Report, render_text as render_account_text};
use crate::accounts::{Shard, label};
use crate::domain::RunOutcome;
use crate::error::Failure;

/// How one account's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::AsRefStr, strum::Display)]
#[strum(serialize_all = "snake_case")]
pub enum AccountOutcome {
    Succeeded,
    Failed,
    /// Another run holds the account's lock; nothing was done here.
    Locked,
}

/// One account's run.
#[derive(Debug)]
pub struct AccountRun {
    pub stripe_account: Option<String>,
    pub name: String,
    pub outcome: AccountOutcome,
    /// Why it failed or was locked.
    pub error: Option<anyhow::Error>,
    /// `None` when the run was refused before it read anything (locked, a
    /// mode mismatch, a configuration error).
    pub report: Option<Report>,
}

impl AccountRun {
    /// From the outcome of the account's run: its action decides.
    pub fn of(stripe_account: Option<String>, name: String, done: Outcome) -> AccountRun {
        let outcome = match done.action {
            Action::Requeue => AccountOutcome::Succeeded,
            Action::Locked => AccountOutcome::Locked,
            Action::Retry | Action::Stop | Action::Refuse => AccountOutcome::Failed,
        };
        AccountRun {
            stripe_account,
            name,
            outcome,
            error: done.error,
            report: done.report,
        }
    }

    pub fn label(&self) -> &str {
        label(self.stripe_account.as_deref())
    }

    fn error_text(&self) -> Option<String> {
        self.error.as_ref().map(|e| crate::secret::redact(&format!("{e:#}")))
    }
}

/// Every account's run of one `reconcile`.
#[derive(Debug)]
pub struct Fleet {
    /// In the order the accounts are configured.
    pub runs: Vec<AccountRun>,
    pub dry_run: bool,
    pub shard: Option<Shard>,
    /// Accounts configured, before the shard kept its own.
    pub configured: usize,
    pub duration_ms: u64,
}

/// What the accounts' outcomes add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    /// Exit 1; the failed accounts' labels.
    Failed(Vec<String>),
    /// Exit 75: every account was locked by another run.
    Locked,
}

/// The verdict of `(label, outcome)` pairs (pure).
pub fn verdict(outcomes: &[(&str, AccountOutcome)]) -> Verdict {
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| *o == AccountOutcome::Failed)
        .map(|(l, _)| (*l).to_owned())
        .collect();
    if !failed.is_empty() {
        Verdict::Failed(failed)
    } else if !outcomes.is_empty() && outcomes.iter().all(|(_, o)| *o == AccountOutcome::Locked) {
        Verdict::Locked
    } else {
        Verdict::Succeeded
    }
}

impl Fleet {
    pub fn verdict(&self) -> Verdict {
        let outcomes: Vec<(&str, AccountOutcome)> = self.runs.iter().map(|r| (r.label(), r.outcome)).collect();
        verdict(&outcomes)
    }

    /// The outcome as the exit code sees it.
    pub fn outcome(&self) -> Result<()> {
        match self.verdict() {
            Verdict::Succeeded => Ok(()),
            Verdict::Failed(accounts) => Err(anyhow::anyhow!(
                "{} of {} accounts failed: {}; the others were applied in full, and the next run converges",
                accounts.len(),
                self.runs.len(),
                accounts.join(", ")
            )),
            Verdict::Locked => Err(Failure::Locked(
                "other licensync runs hold the lock of every account; nothing was done".into(),
            )
            .into()),
        }
    }

    /// The accounts' counts added up.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for report in self.runs.iter().filter_map(|r| r.report.as_ref()) {
            for (k, v) in &report.counts {
                *counts.entry(*k).or_default() += v;
            }
        }
        counts
    }

    fn sum(&self, f: impl Fn(&Report) -> u64) -> u64 {
        self.runs.iter().filter_map(|r| r.report.as_ref()).map(f).sum()
    }

    /// The labels of the accounts whose run ended with `outcome`.
    pub fn labels_of(&self, outcome: AccountOutcome) -> Vec<&str> {
        self.runs
            .iter()
            .filter(|r| r.outcome == outcome)
            .map(AccountRun::label)
            .collect()
    }

    pub fn stripe_requests(&self) -> u64 {
        self.sum(|r| r.stripe_requests)
    }

    pub fn emails_sent(&self) -> u64 {
        self.sum(|r| r.emails_sent as u64)
    }
}

/// The combined report as one JSON object: the totals, the failed and
/// locked accounts, and each account's own report (the single-account
/// shape, with `stripe_account`, `name`, `outcome` and `error`).
pub fn render_json(fleet: &Fleet) -> Result<String> {
    let mut accounts = Vec::with_capacity(fleet.runs.len());
    for run in &fleet.runs {
        let mut entry = match &run.report {
            Some(report) => match serde_json::to_value(report)? {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        entry.insert("stripe_account".into(), json!(run.stripe_account));
        entry.insert("name".into(), json!(run.name));
        entry.insert("outcome".into(), json!(run.outcome.as_ref()));
        entry.insert("error".into(), json!(run.error_text()));
        accounts.push(Value::Object(entry));
    }
    let value = json!({
        "outcome": if matches!(fleet.verdict(), Verdict::Failed(_)) { RunOutcome::Failed } else { RunOutcome::Succeeded },
        "dry_run": fleet.dry_run,
        "shard": fleet.shard.map(|s| s.to_string()),
        "accounts_configured": fleet.configured,
        "counts": fleet.counts(),
        "failed_accounts": fleet.labels_of(AccountOutcome::Failed),
        "locked_accounts": fleet.labels_of(AccountOutcome::Locked),
        "stripe_requests": fleet.stripe_requests(),
        "emails_sent": fleet.emails_sent(),
        "duration_ms": fleet.duration_ms,
        "accounts": accounts,
    });
    Ok(serde_json::to_string(&value)?)
}

/// Each account's plan under a heading of its own, then a line per outcome.
pub fn render_text(fleet: &Fleet) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for run in &fleet.runs {
        let name = if run.name != run.label() {
            format!(" ({})", run.name)
        } else {
            String::new()
        };
        let _ = writeln!(out, "== account {}{name}: {} ==", run.label(), run.outcome);
        match (&run.report, run.outcome) {
            (Some(report), _) => out.push_str(&render_account_text(report)),
            (None, _) => {
                let _ = writeln!(out, "  {}", run.error_text().unwrap_or_default());
            }
        }
    }
    let shard = match fleet.shard {
        Some(shard) => format!(
            " (shard {shard}: {} of {} configured)",
            fleet.runs.len(),
            fleet.configured
        ),
        None => String::new(),
    };
    let _ = write!(
        out,
        "Accounts{shard}: {} succeeded",
        fleet.labels_of(AccountOutcome::Succeeded).len()
    );
    for (outcome, what) in [
        (AccountOutcome::Failed, "failed"),
        (AccountOutcome::Locked, "locked by another run"),
    ] {
        let accounts = fleet.labels_of(outcome);
        if !accounts.is_empty() {
            let _ = write!(out, ", {} {what} ({})", accounts.len(), accounts.join(", "));
        }
    }
    if fleet.runs.is_empty() {
        let _ = write!(out, "; no account in this shard, nothing to do");
    }
    let _ = writeln!(
        out,
        "; {} Stripe requests, {} emails sent, {} ms",
        fleet.stripe_requests(),
        fleet.emails_sent(),
        fleet.duration_ms
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::exit_status;
    use AccountOutcome::*;

    #[test]
    fn verdict_table() {
        let failed = |l: &[&str]| Verdict::Failed(l.iter().map(|s| (*s).to_owned()).collect());
        let cases: Vec<(Vec<(&str, AccountOutcome)>, Verdict)> = vec![
            (vec![], Verdict::Succeeded),
            (vec![("own", Succeeded)], Verdict::Succeeded),
            (vec![("a", Succeeded), ("b", Failed)], failed(&["b"])),
            (vec![("a", Failed), ("b", Locked), ("c", Failed)], failed(&["a", "c"])),
            (vec![("a", Locked), ("b", Succeeded)], Verdict::Succeeded),
            (vec![("a", Locked), ("b", Locked)], Verdict::Locked),
            (vec![("a", Locked)], Verdict::Locked),
        ];
        for (outcomes, expected) in cases {
            assert_eq!(verdict(&outcomes), expected, "{outcomes:?}");
        }
    }

    fn fleet(runs: Vec<AccountRun>) -> Fleet {
        Fleet {
            configured: runs.len() + 1,
            runs,
            dry_run: false,
            shard: Some(Shard { index: 1, count: 2 }),
            duration_ms: 7,
        }
    }

    fn run(account: Option<&str>, outcome: AccountOutcome, error: Option<&str>) -> AccountRun {
        AccountRun {
            stripe_account: account.map(str::to_owned),
            name: account.map(|a| format!("shop {a}")).unwrap_or_else(|| "own".into()),
            outcome,
            error: error.map(|e| anyhow::anyhow!("{e}")),
            report: None,
        }
    }

    #[test]
    fn the_report_names_failed_and_locked_accounts() {
        let fleet = fleet(vec![
            run(None, Succeeded, None),
            run(
                Some("acct_B"),
                Failed,
                Some("Stripe answered 401 with sk_test_abcdefghijklmnop"),
            ),
            run(Some("acct_C"), Locked, Some("another run holds it")),
        ]);
        let json: Value = serde_json::from_str(&render_json(&fleet).unwrap()).unwrap();
        assert_eq!(json["outcome"], "failed");
        assert_eq!(json["failed_accounts"], json!(["acct_B"]));
        assert_eq!(json["locked_accounts"], json!(["acct_C"]));
        assert_eq!(json["shard"], "1/2");
        assert_eq!(json["accounts"][0]["stripe_account"], Value::Null);
        assert_eq!(json["accounts"][1]["name"], "shop acct_B");
        let error = json["accounts"][1]["error"].as_str().unwrap();
        assert!(!error.contains("abcdefghijklmnop"), "keys are redacted: {error}");
        let text = render_text(&fleet);
        assert!(text.contains("== account acct_B (shop acct_B): failed =="), "{text}");
        assert!(
            text.contains("Accounts (shard 1/2: 3 of 4 configured): 1 succeeded, 1 failed (acct_B), 1 locked by another run (acct_C)"),
            "{text}"
        );
        let err = fleet.outcome().unwrap_err();
        assert!(err.to_string().contains("1 of 3 accounts failed: acct_B"), "{err}");
        assert_eq!(exit_status(&err), crate::error::EXIT_FAILED);
    }

    #[test]
    fn every_account_locked_is_exit_75_and_an_empty_shard_succeeds() {
        let locked = fleet(vec![run(Some("acct_B"), Locked, Some("held"))]);
        assert_eq!(exit_status(&locked.outcome().unwrap_err()), crate::error::EXIT_LOCKED);
        let empty = fleet(vec![]);
        assert!(empty.outcome().is_ok());
        assert!(render_text(&empty).contains("no account in this shard, nothing to do"));
    }
}
