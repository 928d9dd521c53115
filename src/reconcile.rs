//! One reconcile run (licensing-rules §7): take the run lock, read Stripe
//! page by page through the adapter, plan each page against the licenses it
//! can touch, apply it in one transaction, sweep what the clock expired, and
//! record the run. Memory stays bounded by a page; a run that fails part-way
//! leaves every committed page consistent and the next run converges.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use chrono::Utc;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::apply::{Applied, apply_page};
use crate::catalog::Catalog;
use crate::delivery::deliver_due;
use crate::domain::{ActionKind, GrantFact, License, PaymentReversal, Timestamp};
use crate::error::{Failure, usage};
use crate::mail::MailService;
use crate::plan::{Action, Facts, Plan, PlanConfig, plan};
use crate::store::Store;
use crate::stripe::{CreatedRange, GrantPage, StripeError, StripeSource};

/// How much of Stripe a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every subscription, completed payment-mode session and paid invoice.
    Full,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Full => "full",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scope: Scope,
    pub dry_run: bool,
    pub allow_mode_mismatch: bool,
    pub plan: PlanConfig,
    /// Attempts before an undeliverable email is given up.
    pub mail_max_attempts: u32,
}

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
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportSkip {
    pub stripe_object: String,
    pub reason: String,
}

/// The run report (`reconcile --output json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run_id: Option<String>,
    pub mode: &'static str,
    pub dry_run: bool,
    pub outcome: &'static str,
    pub counts: BTreeMap<&'static str, usize>,
    pub skipped: Vec<ReportSkip>,
    pub actions: Vec<ReportAction>,
    pub stripe_requests: u64,
    pub emails_sent: usize,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    fn new(mode: &'static str, dry_run: bool) -> Report {
        let counts = ActionKind::ALL
            .iter()
            .map(|k| (k.count_key(), 0))
            .chain([("unchanged", 0), ("skipped", 0)])
            .collect();
        Report {
            run_id: None,
            mode,
            dry_run,
            outcome: "succeeded",
            counts,
            skipped: Vec::new(),
            actions: Vec::new(),
            stripe_requests: 0,
            emails_sent: 0,
            duration_ms: 0,
            error: None,
        }
    }

    fn record(&mut self, plan: &Plan, applied: Option<&[Applied]>) {
        for (key, n) in plan.counts() {
            *self.counts.entry(key).or_default() += n;
        }
        for s in &plan.skipped {
            self.skipped.push(ReportSkip {
                stripe_object: s.stripe_object.clone(),
                reason: s.reason.clone(),
            });
        }
        for (i, action) in plan.actions.iter().enumerate() {
            let key = applied
                .map(|a| a[i].license_key.clone())
                .or_else(|| action.license_key.clone());
            self.actions.push(report_action(action, key));
        }
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
    }
}

/// What every page needs, shared with the blocking database work.
struct PageContext {
    store: Store,
    catalog: Catalog,
    options: RunOptions,
    now: Timestamp,
    run_id: Option<i64>,
}

/// Plans one slice of facts against the licenses it can touch and, unless
/// dry, applies it in one transaction.
fn plan_and_apply(
    ctx: &PageContext,
    grants: &[GrantFact],
    complete_subscriptions: &[String],
    reversals: &[PaymentReversal],
    extra: Vec<License>,
) -> Result<(Plan, Option<Vec<Applied>>)> {
    let source_ids: Vec<String> = grants.iter().map(|g| g.key().source_id).collect();
    let payment_intents: Vec<String> = reversals.iter().map(|r| r.payment_intent.clone()).collect();
    let mut current = ctx
        .store
        .licenses_for(&source_ids, complete_subscriptions, &payment_intents)?;
    let known: HashSet<i64> = current.iter().map(|l| l.id).collect();
    current.extend(extra.into_iter().filter(|l| !known.contains(&l.id)));
    let facts = Facts {
        catalog: &ctx.catalog,
        grants,
        reversals,
        complete_subscriptions,
    };
    let plan = plan(&facts, &current, &ctx.options.plan, ctx.now);
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    if ctx.options.dry_run || plan.actions.is_empty() {
        return Ok((plan, None));
    }
    let applied = apply_page(&ctx.store, ctx.run_id, &plan.actions)?;
    Ok((plan, Some(applied)))
}

/// A reconcile run in progress.
pub struct Run {
    ctx: Arc<PageContext>,
    source: Arc<StripeSource>,
    pub report: Report,
}

impl Run {
    async fn page(
        &mut self,
        grants: Vec<GrantFact>,
        complete_subscriptions: Vec<String>,
        reversals: Vec<PaymentReversal>,
        extra: Vec<License>,
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        let (plan, applied) = tokio::task::spawn_blocking(move || {
            plan_and_apply(&ctx, &grants, &complete_subscriptions, &reversals, extra)
        })
        .await
        .context("the page worker stopped")??;
        self.report.record(&plan, applied.as_deref());
        Ok(())
    }

    async fn grant_pages<F, Fut>(
        &mut self,
        what: &str,
        mut fetch: F,
        skip_invoices: Option<&HashSet<String>>,
    ) -> Result<Vec<String>>
    where
        F: FnMut(Arc<StripeSource>, Option<String>) -> Fut,
        Fut: std::future::Future<Output = Result<GrantPage, StripeError>>,
    {
        let mut after: Option<String> = None;
        let mut session_invoices = Vec::new();
        loop {
            let page = fetch(self.source.clone(), after.clone())
                .await
                .with_context(|| format!("reading {what}"))?;
            let grants: Vec<GrantFact> = match skip_invoices {
                Some(skip) => page
                    .grants
                    .into_iter()
                    .filter(|g| !skip.contains(g.key().source_id.split('/').next().unwrap_or_default()))
                    .collect(),
                None => page.grants,
            };
            session_invoices.extend(page.session_invoices);
            self.page(grants, page.complete_subscriptions, Vec::new(), Vec::new())
                .await?;
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(session_invoices),
            }
        }
    }

    async fn full_scan(&mut self) -> Result<()> {
        let all = CreatedRange::default();
        self.grant_pages(
            "subscriptions",
            |s, after| async move { s.subscriptions_page(after.as_deref(), &all).await },
            None,
        )
        .await?;
        let session_invoices: HashSet<String> = self
            .grant_pages(
                "checkout sessions",
                |s, after| async move { s.checkout_sessions_page(after.as_deref(), &all).await },
                None,
            )
            .await?
            .into_iter()
            .collect();
        self.grant_pages(
            "invoices",
            |s, after| async move { s.invoices_page(after.as_deref(), &all).await },
            Some(&session_invoices),
        )
        .await?;
        self.reversal_pages().await
    }

    async fn reversal_pages(&mut self) -> Result<()> {
        for disputes in [false, true] {
            let mut after: Option<String> = None;
            loop {
                let page = if disputes {
                    self.source
                        .disputes_page(after.as_deref())
                        .await
                        .context("reading disputes")?
                } else {
                    self.source
                        .reversals_page(after.as_deref())
                        .await
                        .context("reading refunds")?
                };
                self.page(Vec::new(), Vec::new(), page.items, Vec::new()).await?;
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Ok(())
    }

    /// Expires active licenses whose time ran out and that no Stripe page
    /// touched (e.g. a 30-day one-time license on day 31).
    async fn clock_sweep(&mut self) -> Result<()> {
        const BATCH: i64 = 500;
        let mut after_id = 0;
        loop {
            let (store, now) = (self.ctx.store.clone(), self.ctx.now);
            let due = tokio::task::spawn_blocking(move || store.licenses_expired_by_clock(now, after_id, BATCH))
                .await
                .context("the sweep worker stopped")??;
            let Some(last) = due.last() else { return Ok(()) };
            after_id = last.id;
            let full = due.len() as i64 == BATCH;
            self.page(Vec::new(), Vec::new(), Vec::new(), due).await?;
            if !full {
                return Ok(());
            }
        }
    }
}

/// Runs one reconcile; the report says what happened, also when it failed
/// part-way (`outcome: failed`, with the error), in which case the error is
/// returned too so the exit code is 1.
pub async fn reconcile(
    store: &Store,
    source: StripeSource,
    mail: Option<&MailService>,
    options: RunOptions,
) -> Result<(Report, Result<()>)> {
    let started = Instant::now();
    let now = Utc::now();
    let scope = options.scope;
    let dry_run = options.dry_run;
    let options_max_attempts = options.mail_max_attempts;
    let _lock = if options.dry_run {
        None
    } else {
        let lock = store.try_lock_run()?;
        if lock.is_none() {
            return Err(Failure::Locked(
                "another licensync run holds the lock on this database; nothing was done".into(),
            )
            .into());
        }
        lock
    };
    check_mode(store, source.livemode(), options.allow_mode_mismatch)?;
    let run_id = if options.dry_run {
        None
    } else {
        Some(store.start_run(scope.as_str(), Some(source.livemode()))?)
    };
    let source = Arc::new(source);
    let mut report = Report::new(scope.as_str(), options.dry_run);
    report.run_id = run_id.map(|id| id.to_string());

    let result = async {
        let (products, prices) = source.catalog().await.context("reading the product catalog")?;
        let catalog = Catalog::new(products, prices);
        let ctx = Arc::new(PageContext {
            store: store.clone(),
            catalog,
            options,
            now,
            run_id,
        });
        let mut run = Run {
            ctx,
            source: source.clone(),
            report,
        };
        let outcome = async {
            match scope {
                Scope::Full => run.full_scan().await?,
            }
            run.clock_sweep().await
        }
        .await;
        Ok::<_, anyhow::Error>((run.report, outcome))
    }
    .await;
    let (mut report, outcome) = match result {
        Ok(pair) => pair,
        Err(e) => (Report::new(scope.as_str(), dry_run), Err(e)),
    };
    report.run_id = run_id.map(|id| id.to_string());
    report.stripe_requests = source.requests();
    report.duration_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = &outcome {
        report.outcome = "failed";
        report.error = Some(crate::secret::redact(&format!("{e:#}")));
    }
    // Sending happens after the pages committed; an email that fails stays
    // pending for the next run and never fails this one.
    if let (Some(mail), false) = (mail, dry_run) {
        match deliver_due(store, mail, options_max_attempts, Utc::now()).await {
            Ok(sent) => report.emails_sent = sent.sent,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not deliver license emails; the next run retries")
            }
        }
    }
    if let Some(id) = run_id {
        let counts = serde_json::to_value(&report.counts)?;
        store.finish_run(
            id,
            outcome.is_ok(),
            &counts,
            report.stripe_requests,
            report.emails_sent as i32,
            None,
            report.error.as_deref(),
        )?;
    }
    Ok((report, outcome))
}

/// Test and live mode never mix (licensing-rules §5).
fn check_mode(store: &Store, livemode: bool, allowed: bool) -> Result<()> {
    let stored = store.stored_modes()?;
    if allowed || stored.iter().all(|&m| m == livemode) {
        return Ok(());
    }
    let (key, db) = if livemode { ("live", "test") } else { ("test", "live") };
    Err(usage(anyhow!(
        "the Stripe key is a {key}-mode key but the database holds {db}-mode licenses; refusing to mix them. \
         Use the matching key or database, or pass --allow-mode-mismatch if this is really intended"
    )))
}

/// Text form of a plan, like `terraform plan`.
pub fn render_text(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for a in &report.actions {
        let key = a.license_key.as_deref().unwrap_or("(new key)");
        let changes: Vec<String> = a
            .after
            .iter()
            .map(|(field, new)| match a.before.get(field) {
                Some(old) => format!("{field} {} -> {}", short(old), short(new)),
                None => format!("{field} {}", short(new)),
            })
            .collect();
        let _ = writeln!(
            out,
            "  {:<9} {} {}  {}  [{}]  because of {}",
            a.action.as_str(),
            a.source_kind,
            a.source_id,
            key,
            changes.join(", "),
            a.stripe_object
        );
    }
    for s in &report.skipped {
        let _ = writeln!(out, "  {:<9} {}  {}", "skip", s.stripe_object, s.reason);
    }
    let counts: Vec<String> = report.counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let _ = writeln!(
        out,
        "{}{} run{}: {}; {} Stripe requests, {} emails sent, {} ms",
        if report.dry_run {
            "Plan (dry run, nothing written) of a "
        } else {
            ""
        },
        report.mode,
        report.run_id.as_deref().map(|id| format!(" #{id}")).unwrap_or_default(),
        counts.join(", "),
        report.stripe_requests,
        report.emails_sent,
        report.duration_ms
    );
    if let Some(e) = &report.error {
        let _ = writeln!(out, "run failed: {e}");
    }
    out
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
    Ok(serde_json::to_string(&json!(report))?)
}
