//! `licensync status`: last runs, cursor age, license counts by status,
//! pending or failed email, overall and by account.

use std::io::Write;

use anyhow::Result;
use chrono::Utc;
use clap::Args;
use serde_json::json;

use super::{Output, open_migrated};
use crate::config::Config;
use crate::reconcile::EVENTS_CURSOR;
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
            let report = json!({
                "runs": runs,
                "cursor": cursor_json(&cursor),
                "licenses": licenses,
                "licenses_under_override": under_override,
                "emails": emails,
                "accounts": by_account,
            });
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
            match &cursor {
                Some((value, at)) => writeln!(
                    out,
                    "Event cursor: {value} (stored {} ago)",
                    humantime::format_duration(std::time::Duration::from_secs((now - *at).num_seconds().max(0) as u64))
                )?,
                None => writeln!(out, "Event cursor: none (the next reconcile is a full scan)")?,
            }
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
