//! The run report (`reconcile --output json`, cli.md) and its text form.
//! Its memory does not grow with the account: it keeps the first
//! `--report-actions` actions and skips and counts the rest, and the
//! licenses looked at and changed are compressed id bitmaps.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use roaring::RoaringTreemap;
use serde::Serialize;
use serde_json::{Map, Value};

use super::scope::RunMode;
use crate::apply::{Applied, write_back_of};
use crate::domain::{ActionKind, RunOutcome, WriteTo};
use crate::plan::{Action, Held, Plan};
use crate::write_back::{PlannedWrite, WriteBackCounts};

/// One entry of the report's `actions` (cli.md JSON shape).
#[derive(Debug, Clone, Serialize)]
pub struct ReportAction {
    pub action: ActionKind,
    pub source_kind: &'static str,
    pub source_id: String,
    pub license_key: Option<String>,
    pub before: Map<String, Value>,
    pub after: Map<String, Value>,
    pub stripe_object: String,
    /// Where an operator override kept a value Stripe asked to change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportSkip {
    pub stripe_object: String,
    pub reason: String,
}

/// What `--stripe-write-back` did in a run (the report's `stripe_writes`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteBackReport {
    /// Stripe objects the run's new licenses queued (a dry run: would queue).
    pub queued: usize,
    /// The pass after the pages: sent, unchanged, retrying, refused, stopped.
    #[serde(flatten)]
    pub pass: WriteBackCounts,
    /// Writes still queued after the run; a later run sends them.
    pub pending: i64,
    /// A dry run: the writes it would make (queued earlier, then those of
    /// the licenses it would issue, whose keys do not exist yet), at most
    /// `--report-actions`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<PlannedWrite>,
}

impl WriteBackReport {
    fn record(&mut self, plan: &Plan, dry_run: bool, limit: usize) {
        let objects: BTreeSet<WriteTo> = plan.actions.iter().filter_map(|a| write_back_of(a, true)).collect();
        self.queued += objects.len();
        if dry_run {
            let room = limit.saturating_sub(self.planned.len());
            self.planned
                .extend(objects.into_iter().take(room).map(|to| PlannedWrite {
                    target: to.target,
                    object: to.target_id,
                    metadata: None,
                }));
        }
    }
}

/// The run report (`reconcile --output json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: Option<String>,
    pub mode: RunMode,
    pub dry_run: bool,
    pub outcome: RunOutcome,
    pub counts: BTreeMap<&'static str, usize>,
    /// The first `--report-actions` skips; `counts.skipped` counts them all.
    pub skipped: Vec<ReportSkip>,
    /// Skips past `--report-actions`, counted but not listed.
    pub skipped_omitted: usize,
    /// The first `--report-actions` actions; every action is in the ledger.
    pub actions: Vec<ReportAction>,
    /// Actions past `--report-actions`, counted but not listed.
    pub actions_omitted: usize,
    pub stripe_requests: u64,
    /// Of `stripe_requests`, those Stripe answered 429 (rate limited).
    pub stripe_rate_limited: u64,
    /// License emails this run queued for customers with an address (a dry
    /// run: would queue). Sent after the commit, so `emails_sent` also
    /// counts retries of earlier runs.
    pub emails_to_send: usize,
    /// Licenses issued without an email because their purchase predates
    /// `--mail-since` (outbox rows `skipped`, sendable by `mail resend`).
    pub emails_skipped: usize,
    pub emails_sent: usize,
    pub duration_ms: u64,
    /// Why the run read what it read (e.g. "no event cursor: full scan").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `--stripe-write-back` only: the keys written onto Stripe objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stripe_writes: Option<WriteBackReport>,
    /// Licenses some page looked at, and those some page changed: a license
    /// can be in several pages of one run (its purchase's page, then the
    /// refunds page), and `unchanged` counts it once, only if no page changed it.
    #[serde(skip)]
    seen: RoaringTreemap,
    #[serde(skip)]
    changed: RoaringTreemap,
    #[serde(skip)]
    action_limit: usize,
}

impl Report {
    pub(super) fn new(mode: RunMode, dry_run: bool, action_limit: usize) -> Report {
        let counts = ActionKind::ALL
            .iter()
            .map(|k| (k.count_key(), 0))
            .chain([("unchanged", 0), ("skipped", 0)])
            .collect();
        Report {
            run_id: None,
            mode,
            dry_run,
            outcome: RunOutcome::Succeeded,
            counts,
            skipped: Vec::new(),
            skipped_omitted: 0,
            actions: Vec::new(),
            actions_omitted: 0,
            stripe_requests: 0,
            stripe_rate_limited: 0,
            emails_to_send: 0,
            emails_skipped: 0,
            emails_sent: 0,
            duration_ms: 0,
            note: None,
            error: None,
            stripe_writes: None,
            seen: RoaringTreemap::new(),
            changed: RoaringTreemap::new(),
            action_limit,
        }
    }

    pub(super) fn record(&mut self, plan: &Plan, applied: Option<&[Applied]>, looked_at: &[i64]) {
        for (key, n) in plan.counts() {
            if key != "unchanged" {
                *self.counts.entry(key).or_default() += n;
            }
        }
        self.seen.extend(looked_at.iter().map(|&id| id as u64));
        let (mailed, silent) = plan.emails();
        self.emails_to_send += mailed;
        self.emails_skipped += silent;
        if let Some(writes) = &mut self.stripe_writes {
            writes.record(plan, self.dry_run, self.action_limit);
        }
        for s in &plan.skipped {
            if self.skipped.len() < self.action_limit {
                self.skipped.push(ReportSkip {
                    stripe_object: s.stripe_object.clone(),
                    reason: s.reason.clone(),
                });
            } else {
                // Past the report's limit, the log is where a skip is named.
                tracing::warn!(stripe_object = %s.stripe_object, reason = %s.reason, "grant skipped");
                self.skipped_omitted += 1;
            }
        }
        for (i, action) in plan.actions.iter().enumerate() {
            let key = applied
                .map(|a| a[i].license_key.clone())
                .or_else(|| action.license_key.clone());
            if let Some(id) = applied.map(|a| a[i].license_id).or(action.license_id) {
                self.changed.insert(id as u64);
            }
            if self.actions.len() < self.action_limit {
                self.actions.push(report_action(action, key));
            } else {
                self.actions_omitted += 1;
            }
        }
    }
}

impl Report {
    /// Licenses some page looked at that no page changed; once, at the end.
    pub(super) fn count_unchanged(&mut self) {
        let unchanged = (&self.seen - &self.changed).len() as usize;
        self.counts.insert("unchanged", unchanged);
    }
}

fn report_action(action: &Action, license_key: Option<String>) -> ReportAction {
    let mut before = Map::new();
    let mut after = Map::new();
    for change in action.changes() {
        if let Some(b) = change.before {
            before.insert(change.field.clone(), b);
        }
        after.insert(change.field, change.after);
    }
    ReportAction {
        action: action.kind,
        source_kind: action.grant.source_kind.as_str(),
        source_id: action.grant.source_id.clone(),
        license_key,
        before,
        after,
        stripe_object: action.cause.clone(),
        held: action.held.clone(),
    }
}

/// The fields an `issue` line shows (the JSON report has them all).
const ISSUE_FIELDS: [&str; 6] = [
    "product_ids",
    "customer_email",
    "quantity",
    "hwid_limit",
    "ip_limit",
    "expires_at",
];

/// Action lines the text output shows; the rest are summed up with where
/// to find them, so a first import of thousands of purchases stays readable.
pub const TEXT_ACTIONS: usize = 20;

/// Text form of a plan, like `terraform plan`: the first actions, the skips,
/// then the totals and the emails the run sends.
pub fn render_text(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for a in report.actions.iter().take(TEXT_ACTIONS) {
        let key = a.license_key.as_deref().unwrap_or("(new key)");
        let changes: Vec<String> = a
            .after
            .iter()
            // A new license lists every field: show the ones a person reads.
            .filter(|(field, new)| {
                a.action != ActionKind::Issue || (ISSUE_FIELDS.contains(&field.as_str()) && !new.is_null())
            })
            .map(|(field, new)| match a.before.get(field) {
                Some(old) => format!("{field} {} -> {}", short(old), short(new)),
                None => format!("{field} {}", short(new)),
            })
            .collect();
        let held = a.held.as_ref().map(|h| {
            let fields: Vec<String> = h
                .fields
                .iter()
                .map(|f| format!("{} {} (Stripe: {})", f.field, short(&f.kept), short(&f.stripe)))
                .collect();
            format!("  held by override ({}): {}", h.reason, fields.join(", "))
        });
        let _ = writeln!(
            out,
            "  {:<9} {} {}  {}  [{}]  because of {}{}",
            a.action.as_str(),
            a.source_kind,
            a.source_id,
            key,
            changes.join(", "),
            a.stripe_object,
            held.unwrap_or_default()
        );
    }
    let total: usize = ActionKind::ALL
        .iter()
        .map(|k| report.counts.get(k.count_key()).copied().unwrap_or(0))
        .sum();
    let shown = report.actions.len().min(TEXT_ACTIONS);
    if total > shown {
        let _ = writeln!(
            out,
            "  ... and {} more actions, not shown: `--output json` lists up to --report-actions of them, \
             `licenses list` shows every license and `licenses show KEY` its ledger",
            total - shown
        );
    }
    for s in &report.skipped {
        let _ = writeln!(out, "  {:<9} {}  {}", "skip", s.stripe_object, s.reason);
    }
    if report.skipped_omitted > 0 {
        let _ = writeln!(
            out,
            "  ... and {} more skips, not shown (the run's log names each one)",
            report.skipped_omitted
        );
    }
    let counts: Vec<String> = report
        .counts
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let counts = if counts.is_empty() {
        "nothing to do".to_owned()
    } else {
        counts.join(", ")
    };
    let _ = writeln!(
        out,
        "{}{} run{}: {}; {} Stripe requests, {} ms",
        if report.dry_run {
            "Plan (dry run, nothing written) of a "
        } else {
            ""
        },
        report.mode,
        report.run_id.as_deref().map(|id| format!(" #{id}")).unwrap_or_default(),
        counts,
        report.stripe_requests,
        report.duration_ms
    );
    let silent = if report.emails_skipped > 0 {
        format!(
            ", {} new licenses issued silently (purchased before --mail-since; `mail resend` sends one)",
            report.emails_skipped
        )
    } else {
        String::new()
    };
    if report.dry_run {
        let _ = writeln!(
            out,
            "Emails: this run would email {} customers their new license key{silent}",
            report.emails_to_send
        );
    } else {
        let _ = writeln!(
            out,
            "Emails: {} new license emails queued{silent}; {} emails sent",
            report.emails_to_send, report.emails_sent
        );
    }
    if let Some(writes) = &report.stripe_writes {
        render_writes(&mut out, writes, report.dry_run);
    }
    if let Some(e) = &report.error {
        let _ = writeln!(out, "run failed: {e}");
    }
    out
}

fn render_writes(out: &mut String, writes: &WriteBackReport, dry_run: bool) {
    use std::fmt::Write;
    if dry_run {
        let _ = writeln!(
            out,
            "Stripe write-back: this run would write keys onto {} objects",
            writes.planned.len().max(writes.queued)
        );
        for w in writes.planned.iter().take(TEXT_ACTIONS) {
            let what = match &w.metadata {
                // Keys are not shown: the text goes to terminals and logs.
                Some(m) => m.keys().cloned().collect::<Vec<_>>().join(", "),
                None => "the key this run would issue".into(),
            };
            let _ = writeln!(out, "  {:<9} {} {}  {what}", "write", w.target, w.object);
        }
        return;
    }
    let p = &writes.pass;
    let _ = writeln!(
        out,
        "Stripe write-back: {} objects queued; {} written, {} already held their keys, {} to retry, {} refused; {} pending",
        writes.queued, p.sent, p.unchanged, p.retrying, p.refused, writes.pending
    );
    if let Some(stopped) = &p.stopped {
        let _ = writeln!(out, "Stripe write-back stopped: {stopped}");
    }
}

fn short(value: &Value) -> String {
    match value {
        Value::Null => "none".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(short).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub fn render_json(report: &Report) -> Result<String> {
    // Straight from the struct: `json!` would first copy every action into a Value tree.
    Ok(serde_json::to_string(report)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::fixtures::{World, day, sub_item};

    /// A report of one plan issuing `n` subscription items.
    fn report_of(n: usize, limit: usize) -> Report {
        let grants = (0..n).map(|i| sub_item().id(&format!("si_{i}")).fact()).collect();
        let plan = World::new(grants).plan(&[], day(1));
        assert_eq!(plan.actions.len(), n);
        let mut report = Report::new(RunMode::Full, true, limit);
        report.record(&plan, None, &[]);
        report
    }

    #[test]
    fn the_report_keeps_the_first_report_actions_and_counts_the_rest() {
        let report = report_of(7, 3);
        assert_eq!(report.actions.len(), 3);
        assert_eq!(report.actions_omitted, 4);
        assert_eq!(report.counts["issued"], 7, "counts cover every action");
        let json: Value = serde_json::from_str(&render_json(&report).unwrap()).unwrap();
        assert_eq!(json["actions_omitted"], 4);
        assert_eq!(json["actions"].as_array().unwrap().len(), 3);
        assert_eq!(report_of(2, 3).actions_omitted, 0);
    }

    #[test]
    fn the_report_keeps_the_first_skips_and_counts_the_rest() {
        let grants = (0..5)
            .map(|i| sub_item().id(&format!("si_{i}")).quantity(0).fact())
            .collect();
        let plan = World::new(grants).plan(&[], day(1));
        assert_eq!(plan.skipped.len(), 5);
        let mut report = Report::new(RunMode::Full, true, 2);
        report.record(&plan, None, &[]);
        assert_eq!(report.skipped.len(), 2);
        assert_eq!(report.skipped_omitted, 3);
        assert_eq!(report.counts["skipped"], 5, "counts cover every skip");
        let text = render_text(&report);
        assert!(text.contains("... and 3 more skips"), "{text}");
    }

    #[test]
    fn unchanged_counts_licenses_looked_at_that_no_page_changed() {
        let mut report = report_of(0, 10);
        report.record(&World::new(vec![]).plan(&[], day(1)), None, &[1, 2, 3, 2]);
        report.record(&World::new(vec![]).plan(&[], day(1)), None, &[3, 4]);
        report.changed.insert(3);
        report.count_unchanged();
        assert_eq!(report.counts["unchanged"], 3, "1, 2 and 4; 3 changed");
    }

    #[test]
    fn a_large_text_plan_shows_the_first_actions_the_totals_and_the_emails() {
        let text = render_text(&report_of(TEXT_ACTIONS + 15, 1000));
        let action_lines = text.lines().filter(|l| l.trim_start().starts_with("issue ")).count();
        assert_eq!(action_lines, TEXT_ACTIONS, "{text}");
        assert!(text.contains("... and 15 more actions"), "{text}");
        assert!(
            text.contains("--output json") && text.contains("licenses list") && text.contains("licenses show"),
            "says where the rest are: {text}"
        );
        assert!(text.contains(&format!("{} issued", TEXT_ACTIONS + 15)), "{text}");
        assert!(
            text.contains(&format!("this run would email {} customers", TEXT_ACTIONS + 15)),
            "{text}"
        );

        // An issue line shows what a person reads, not every column.
        let first = text.lines().next().unwrap();
        assert!(
            first.contains("product_ids pro") && first.contains("expires_at"),
            "{first}"
        );
        assert!(
            !first.contains("customer_name") && !first.contains("livemode"),
            "{first}"
        );
        assert!(
            !text.contains("0 expired") && !text.contains("0 unchanged"),
            "zero counts are left out: {text}"
        );

        // A small plan shows every action and no "more" line.
        let small = render_text(&report_of(3, 1000));
        assert_eq!(
            small.lines().filter(|l| l.trim_start().starts_with("issue ")).count(),
            3
        );
        assert!(!small.contains("more actions"), "{small}");
        // Actions omitted from the report are still counted as not shown.
        let capped = render_text(&report_of(5, 2));
        assert!(capped.contains("... and 3 more actions"), "{capped}");
    }
}
