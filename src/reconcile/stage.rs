//! The planning and applying stage: one slice of facts is planned against
//! the licenses it can touch and, unless dry, applied in one transaction
//! (`apply` owns what a plan becomes in the table).

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Result;

use crate::apply::{Applied, apply_page};
use crate::catalog::Catalog;
use crate::domain::{GrantFact, GrantKey, License, PaymentReversal, Timestamp};
use crate::plan::{Action, Facts, Plan, PlanConfig, plan};
use crate::store::Store;

/// What every page needs, shared with the blocking database work.
pub(super) struct PageContext {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub plan: PlanConfig,
    pub dry_run: bool,
    pub now: Timestamp,
    pub run_id: Option<i64>,
    /// `--stripe-write-back`.
    pub write_back: bool,
}

/// The facts of one page.
#[derive(Debug, Default)]
pub(super) struct Slice {
    pub grants: Vec<GrantFact>,
    pub complete_subscriptions: Vec<String>,
    pub reversals: Vec<PaymentReversal>,
    /// Licenses no fact names that the page must look at (the clock sweep).
    pub extra: Vec<License>,
}

/// What a planned (and applied) page did, for the report.
pub(super) struct Staged {
    pub plan: Plan,
    pub applied: Option<Vec<Applied>>,
    pub looked_at: Vec<i64>,
}

/// Plans one slice against the licenses it can touch and, unless dry,
/// applies it in one transaction.
pub(super) fn plan_and_apply(ctx: &PageContext, slice: Slice) -> Result<Staged> {
    let Slice {
        grants,
        complete_subscriptions,
        reversals,
        extra,
    } = slice;
    let keys: Vec<GrantKey> = grants.iter().map(|g| g.key()).collect();
    let payment_intents: Vec<String> = reversals.iter().map(|r| r.payment_intent.clone()).collect();
    let mut current = ctx
        .store
        .licenses_for(&keys, &complete_subscriptions, &payment_intents)?;
    let known: HashSet<i64> = current.iter().map(|l| l.id).collect();
    current.extend(extra.into_iter().filter(|l| !known.contains(&l.id)));
    let facts = Facts {
        catalog: &ctx.catalog,
        grants: &grants,
        reversals: &reversals,
        complete_subscriptions: &complete_subscriptions,
    };
    let mut plan = plan(&facts, &current, &ctx.plan, ctx.now);
    let looked_at: Vec<i64> = current.iter().map(|l| l.id).collect();
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    if ctx.dry_run || plan.actions.is_empty() {
        return Ok(Staged {
            plan,
            applied: None,
            looked_at,
        });
    }
    // Actions an operator overtook (see `apply_page`) did not happen: the
    // report and the counts leave them out.
    let (actions, applied): (Vec<Action>, Vec<Applied>) = plan
        .actions
        .iter()
        .cloned()
        .zip(apply_page(&ctx.store, ctx.run_id, &plan.actions, ctx.write_back)?)
        .filter_map(|(action, applied)| applied.map(|a| (action, a)))
        .unzip();
    plan.actions = actions;
    Ok(Staged {
        plan,
        applied: Some(applied),
        looked_at,
    })
}
