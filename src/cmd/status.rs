//! `licensync status`: last runs, cursor age, license counts by status,
//! pending or failed email, overall and by account.

use std::io::Write;

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::json;

use super::{Output, open_migrated};
use crate::config::Config;
use crate::reconcile::{EVENTS_CURSOR, EventCursor, OVERLAP};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn run(config: &Config, args: StatusArgs) -> Result<()> {
    let db = open_migrated(config)?;
    status(&db.store, args.output)
}

fn status(store: &Store, output: Output) -> Result<()> {
    let runs = store.recent_runs(5)?;
    let cursor = store.cursor(EVENTS_CURSOR)?;
    let licenses = store.license_counts()?;
    let under_override = store.override_count()?;
    let emails = store.outbox_counts()?;
    // Shown once write-back (`--stripe-write-back`) has queued anything.
    let writes = Some(store.stripe_write_counts()?).filter(|w| w.pending + w.sent + w.refused > 0);
    let now = Utc::now();
    let cursor_json = |cursor: &Option<(String, chrono::DateTime<Utc>)>| {
        cursor.as_ref().map(|(value, updated_at)| {
            json!({"value": value, "updated_at": updated_at, "age_seconds": (now - *updated_at).num_seconds()})
        })
    };
    // Each account's own figures (licensing-rules §9).
    let mut accounts = Vec::new();
    for account in store.known_accounts()? {
        let scoped = store.for_account(account.as_deref());
        accounts.push((
            account,
            scoped.recent_runs(1)?.into_iter().next(),
            scoped.cursor(EVENTS_CURSOR)?,
            scoped.license_counts()?,
            scoped.outbox_counts()?,
        ));
    }
    match output {
        Output::Json => {
            let by_account: Vec<serde_json::Value> = accounts
                .iter()
                .map(|(account, last_run, cursor, licenses, emails)| {
                    json!({
                        "stripe_account": account,
                        "last_run": last_run,
                        "cursor": cursor_json(cursor),
                        "licenses": licenses,
                        "emails": emails,
                    })
                })
                .collect();
            let mut report = json!({
                "runs": runs,
                "cursor": cursor_json(&cursor),
                "licenses": licenses,
                "licenses_under_override": under_override,
                "emails": emails,
                "accounts": by_account,
            });
            if let Some(writes) = &writes {
                report["stripe_writes"] = serde_json::to_value(writes)?;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "Last runs:")?;
            if runs.is_empty() {
                writeln!(out, "  none yet")?;
            }
            for r in &runs {
                let duration = r
                    .finished_at
                    .map(|f| format!("{:.1}s", (f - r.started_at).num_milliseconds() as f64 / 1000.0))
                    .unwrap_or_else(|| "still running".into());
                let account = match (&r.stripe_account, accounts.len() > 1) {
                    (_, false) => String::new(),
                    (account, true) => format!("{:<22}", crate::accounts::label(account.as_deref())),
                };
                writeln!(
                    out,
                    "  #{:<5} {account}{:<11} {:<9} started {}  {}  {} Stripe requests{}",
                    r.id,
                    r.mode,
                    r.outcome,
                    r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    duration,
                    r.stripe_requests,
                    r.error.as_deref().map(|e| format!("  error: {e}")).unwrap_or_default()
                )?;
            }
            writeln!(out, "Event cursor: {}", cursor_text(cursor.as_ref(), now))?;
            let counts: Vec<String> = licenses.iter().map(|(k, v)| format!("{k} {v}")).collect();
            writeln!(
                out,
                "Licenses: {} ({under_override} under operator override)",
                counts.join(", ")
            )?;
            writeln!(
                out,
                "Emails: {} pending, {} sent, {} failed, {} without recipient, {} skipped (before --mail-since)",
                emails.pending, emails.sent, emails.failed, emails.no_recipient, emails.skipped
            )?;
            if let Some(w) = &writes {
                writeln!(
                    out,
                    "Stripe write-back: {} pending, {} written, {} refused{}",
                    w.pending,
                    w.sent,
                    w.refused,
                    w.last_error
                        .as_deref()
                        .map(|e| format!("; waiting because: {e}"))
                        .unwrap_or_default()
                )?;
            }
            if accounts.len() > 1 {
                writeln!(out, "By account:")?;
                for (account, last_run, cursor, licenses, emails) in &accounts {
                    let counts: Vec<String> = licenses
                        .iter()
                        .filter(|(_, v)| **v > 0)
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect();
                    let run = last_run
                        .as_ref()
                        .map(|r| format!("last run #{} {} {}", r.id, r.mode, r.outcome))
                        .unwrap_or_else(|| "no run yet".into());
                    let cursor = cursor
                        .as_ref()
                        .map(|(_, at)| {
                            format!(
                                "cursor stored {} ago",
                                humantime::format_duration(std::time::Duration::from_secs(
                                    (now - *at).num_seconds().max(0) as u64
                                ))
                            )
                        })
                        .unwrap_or_else(|| "no cursor".into());
                    writeln!(
                        out,
                        "  {:<22} {run}; {cursor}; licenses {}; emails {} pending, {} failed",
                        crate::accounts::label(account.as_deref()),
                        if counts.is_empty() {
                            "none".into()
                        } else {
                            counts.join(", ")
                        },
                        emails.pending,
                        emails.failed
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// The event cursor as a person reads it: up to when events were read and
/// how long ago, not the stored JSON with its list of seen event ids (that
/// stays in `--output json`).
fn cursor_text(cursor: Option<&(String, DateTime<Utc>)>, now: DateTime<Utc>) -> String {
    let ago = |at: DateTime<Utc>| {
        humantime::format_duration(std::time::Duration::from_secs((now - at).num_seconds().max(0) as u64))
    };
    let Some((value, stored_at)) = cursor else {
        return "none (the next reconcile is a full scan)".to_owned();
    };
    match serde_json::from_str::<EventCursor>(value)
        .ok()
        .and_then(|c| DateTime::from_timestamp(c.created, 0))
    {
        Some(read_to) => format!(
            "events read up to {} ({} ago); the next run reads from {} before that",
            read_to.format("%Y-%m-%d %H:%M:%S UTC"),
            ago(read_to),
            humantime::format_duration(OVERLAP.to_std().unwrap_or_default()),
        ),
        None => format!("stored {} ago, in a form this version does not read", ago(*stored_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_reads_as_a_time_and_an_age() {
        let now = DateTime::from_timestamp(1_765_000_000, 0).unwrap();
        let stored = now - chrono::Duration::minutes(20);
        let json = format!(
            r#"{{"created":{},"seen":["evt_1","evt_2"]}}"#,
            (now - chrono::Duration::minutes(21)).timestamp()
        );
        let cases = [
            (None, "none (the next reconcile is a full scan)".to_owned()),
            (
                Some((json, stored)),
                "events read up to 2025-12-06 05:25:40 UTC (21m ago); the next run reads from 5m before that"
                    .to_owned(),
            ),
            (
                Some(("{not json".to_owned(), stored)),
                "stored 20m ago, in a form this version does not read".to_owned(),
            ),
        ];
        for (cursor, text) in cases {
            assert_eq!(cursor_text(cursor.as_ref(), now), text);
        }
    }
}
