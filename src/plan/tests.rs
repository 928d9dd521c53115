//! The planner against licensing-rules §1–5, one rule per test, plus
//! property tests of idempotence over random Stripe states.

use std::time::Duration;

use super::*;
use crate::catalog::Catalog;
use crate::domain::ExpirationStart;
use crate::domain::{ActionKind as K, CustomerInfo, LicenseStatus as L, ReversalKind as R, SubscriptionStatus as S};
use crate::tests::fixtures::*;

fn plan_with(world: &World, config: &PlanConfig, now: Timestamp) -> Plan {
    plan(&world.facts(), &[], config, now)
}

/// The only action of a plan.
fn only(plan: &Plan) -> &Action {
    assert_eq!(
        plan.actions.len(),
        1,
        "expected exactly one action: {:#?}",
        plan.actions
    );
    &plan.actions[0]
}

/// Re-planning the same Stripe state against the applied table changes nothing.
fn assert_converged(world: &World, licenses: &[License], now: Timestamp) {
    let again = world.plan(licenses, now);
    assert!(again.is_empty(), "second plan should be empty: {:#?}", again.actions);
    assert_eq!(again.unchanged, licenses.len());
}

/// The table after item `si_1` was issued as a plain active subscription on day 1.
fn issued_subscription() -> Vec<License> {
    let licenses = issued(&World::new(vec![sub_item().fact()]), day(1));
    assert_eq!(licenses.len(), 1);
    licenses
}

// ---- §3: the subscription status table, row by row ----------------------

#[test]
fn every_subscription_status_row_gives_the_status_and_expiry_of_the_table() {
    let grace = hours(24);
    let past_due_grace = chrono::Duration::days(7);
    let now = day(10);
    // (row, fact, expected status and expiry of si_1's license afterwards)
    let rows: Vec<(&str, SubItem, L, Timestamp)> = vec![
        (
            "trialing",
            sub_item().status(S::Trialing).trial_end(day(14)),
            L::Active,
            day(14) + grace,
        ),
        ("active", sub_item(), L::Active, day(30) + grace),
        (
            "active, cancel at period end",
            sub_item().cancel_at_period_end(),
            L::Active,
            day(30),
        ),
        (
            "active, cancel_at before period end",
            sub_item().cancel_at(day(20)),
            L::Active,
            day(20),
        ),
        (
            "active, cancel_at exactly at period end (Stripe's cancel at period end)",
            sub_item().cancel_at(day(30)),
            L::Active,
            day(30),
        ),
        (
            "active, cancel_at after period end",
            sub_item().cancel_at(day(45)),
            L::Active,
            day(30) + grace,
        ),
        (
            "active, both cancel flags",
            sub_item().cancel_at_period_end().cancel_at(day(20)),
            L::Active,
            day(20),
        ),
        (
            "past_due",
            sub_item()
                .status(S::PastDue)
                .period(day(5), day(35))
                .paid_through(Some(day(5))),
            L::Active,
            day(5) + past_due_grace,
        ),
        (
            "past_due without a paid invoice",
            sub_item().status(S::PastDue).period(day(8), day(38)).paid_through(None),
            L::Active,
            day(8) + past_due_grace,
        ),
        (
            "paused",
            sub_item().status(S::Paused).paid_through(Some(day(9))),
            L::Suspended,
            day(9),
        ),
        (
            "unpaid",
            sub_item().status(S::Unpaid).paid_through(Some(day(9))),
            L::Expired,
            day(9),
        ),
        (
            "unpaid without a paid invoice",
            sub_item().status(S::Unpaid).paid_through(None),
            L::Expired,
            day(0),
        ),
        (
            "canceled",
            sub_item().status(S::Canceled).ended_at(Some(day(8))),
            L::Expired,
            day(8),
        ),
        (
            "canceled without ended_at",
            sub_item().status(S::Canceled),
            L::Expired,
            now,
        ),
        (
            "incomplete_expired",
            sub_item().status(S::IncompleteExpired).ended_at(Some(day(2))),
            L::Expired,
            day(2),
        ),
        (
            "incomplete_expired without ended_at",
            sub_item().status(S::IncompleteExpired),
            L::Expired,
            now,
        ),
    ];
    for (row, fact, status, expires_at) in rows {
        let world = World::new(vec![fact.fact()]);
        let (_, licenses) = run(&world, &issued_subscription(), now);
        assert_eq!(licenses.len(), 1, "{row}: still one license");
        assert_eq!(
            (licenses[0].state.status, licenses[0].state.expires_at),
            (status, Some(expires_at)),
            "{row}"
        );
        assert_converged(&world, &licenses, now);
    }
}

#[test]
fn a_trial_without_trial_end_runs_to_the_period_end_plus_grace() {
    let world = World::new(vec![sub_item().status(S::Trialing).fact()]);
    let plan = world.plan(&[], day(1));
    assert_eq!(only(&plan).after.expires_at, Some(day(30) + hours(24)));
}

#[test]
fn new_subscriptions_in_good_standing_are_issued_an_active_license() {
    let now = day(10);
    for (row, fact) in [
        ("trialing", sub_item().status(S::Trialing).trial_end(day(14))),
        ("active", sub_item()),
        ("past_due", sub_item().status(S::PastDue).paid_through(Some(day(5)))),
    ] {
        let world = World::new(vec![fact.fact()]);
        let plan = world.plan(&[], now);
        let action = only(&plan);
        assert_eq!(
            (action.kind, action.after.status, action.license_id),
            (K::Issue, L::Active, None),
            "{row}"
        );
        assert_eq!(action.cause, "sub_1");
        assert_converged(&world, &apply(&[], &plan, now), now);
    }
}

#[test]
fn an_incomplete_subscription_gets_no_license_yet() {
    let world = World::new(vec![sub_item().status(S::Incomplete).fact()]);
    let plan = world.plan(&[], day(1));
    assert!(plan.is_empty() && plan.skipped.is_empty(), "{plan:#?}");
}

#[test]
fn an_incomplete_subscription_leaves_an_existing_license_untouched() {
    let licenses = issued_subscription();
    let world = World::new(vec![
        sub_item()
            .status(S::Incomplete)
            .price("price_pro_yearly", "prod_pro")
            .fact(),
    ]);
    let plan = world.plan(&licenses, day(10));
    assert!(plan.is_empty(), "{plan:#?}");
    assert_eq!(plan.unchanged, 1);
}

#[test]
fn incomplete_expired_without_a_license_issues_nothing() {
    let world = World::new(vec![sub_item().status(S::IncompleteExpired).fact()]);
    assert!(world.plan(&[], day(1)).is_empty());
}

#[test]
fn subscriptions_first_seen_ended_or_paused_issue_no_dead_key() {
    for status in [S::Paused, S::Unpaid, S::Canceled, S::IncompleteExpired] {
        let world = World::new(vec![sub_item().status(status.clone()).ended_at(Some(day(3))).fact()]);
        let plan = world.plan(&[], day(10));
        assert!(plan.is_empty(), "{status:?}: {plan:#?}");
    }
}

#[test]
fn a_past_due_subscription_keeps_access_for_the_grace_period() {
    let renewal_failed = World::new(vec![
        sub_item()
            .status(S::PastDue)
            .period(day(30), day(60))
            .paid_through(Some(day(30)))
            .fact(),
    ]);
    let (plan, licenses) = run(&renewal_failed, &issued_subscription(), day(31));
    let action = only(&plan);
    // Was day 31 (period end + grace); now what was paid plus the past-due grace.
    assert_eq!(action.kind, K::Extend);
    assert_eq!(licenses[0].state.status, L::Active);
    assert_eq!(licenses[0].state.expires_at, Some(day(37)));

    let (plan, licenses) = run(&renewal_failed, &licenses, day(37));
    let action = only(&plan);
    assert_eq!((action.kind, action.cause.as_str()), (K::Expire, "sub_1"));
    assert_eq!(licenses[0].state.status, L::Expired);
    assert_converged(&renewal_failed, &licenses, day(40));
}

#[test]
fn a_renewal_extends_to_the_new_period_end_plus_grace() {
    let renewed = World::new(vec![
        sub_item().period(day(30), day(60)).paid_through(Some(day(60))).fact(),
    ]);
    let (plan, licenses) = run(&renewed, &issued_subscription(), day(30));
    let action = only(&plan);
    assert_eq!(action.kind, K::Extend);
    assert_eq!(action.before.as_ref().unwrap().expires_at, Some(day(30) + hours(24)));
    assert_eq!(licenses[0].state.expires_at, Some(day(60) + hours(24)));
}

#[test]
fn an_active_subscription_never_gets_a_duration_added_on_replay() {
    let world = World::new(vec![sub_item().fact()]);
    let licenses = issued(&world, day(1));
    for now in [day(2), day(5), day(29)] {
        assert_converged(&world, &licenses, now);
    }
}

#[test]
fn a_paused_subscription_suspends_and_a_resumed_one_reinstates_the_same_key() {
    let licenses = issued_subscription();
    let key = licenses[0].key.clone();
    let paused = World::new(vec![sub_item().status(S::Paused).paid_through(Some(day(30))).fact()]);
    let (plan, licenses) = run(&paused, &licenses, day(10));
    assert_eq!(only(&plan).kind, K::Suspend);
    assert_eq!(licenses[0].state.status, L::Suspended);

    // Suspended stays suspended even when its expiry passes.
    assert_converged(&paused, &licenses, day(40));

    let resumed = World::new(vec![sub_item().period(day(40), day(70)).fact()]);
    let (plan, licenses) = run(&resumed, &licenses, day(40));
    let action = only(&plan);
    assert_eq!(action.kind, K::Reinstate);
    assert_eq!(action.license_key.as_deref(), Some(key.as_str()));
    assert_eq!(
        (licenses[0].state.status, licenses[0].state.expires_at),
        (L::Active, Some(day(70) + hours(24)))
    );
    assert_eq!(licenses[0].key, key);
}

#[test]
fn a_subscription_paid_after_unpaid_is_reinstated() {
    let unpaid = World::new(vec![sub_item().status(S::Unpaid).paid_through(Some(day(30))).fact()]);
    let (_, licenses) = run(&unpaid, &issued_subscription(), day(45));
    assert_eq!(licenses[0].state.status, L::Expired);
    let paid = World::new(vec![sub_item().period(day(30), day(60)).fact()]);
    let (plan, licenses) = run(&paid, &licenses, day(46));
    assert_eq!(only(&plan).kind, K::Reinstate);
    assert_eq!(licenses[0].state.status, L::Active);
}

#[test]
fn immediate_cancellation_moves_the_expiry_backward_and_expires() {
    let canceled = World::new(vec![sub_item().status(S::Canceled).ended_at(Some(day(10))).fact()]);
    let (plan, licenses) = run(&canceled, &issued_subscription(), day(10));
    let action = only(&plan);
    assert_eq!(action.kind, K::Expire);
    assert_eq!(action.before.as_ref().unwrap().expires_at, Some(day(30) + hours(24)));
    assert_eq!(licenses[0].state.expires_at, Some(day(10)));
    assert!(licenses[0].state.expires_at < action.before.as_ref().unwrap().expires_at);
}

#[test]
fn mail_since_issues_older_purchases_silently_and_mails_the_rest() {
    let world = World::new(vec![
        // Bought on day 2: before the cut-off.
        sub_item().id("si_old").created(day(2)).fact(),
        // An item added to that subscription exactly at the cut-off: mailed.
        sub_item().id("si_new").created(day(5)).fact(),
        one_time().checkout("cs_old", "li_1").purchased_at(day(4)).fact(),
        one_time().checkout("cs_new", "li_1").purchased_at(day(6)).fact(),
    ]);
    let config = PlanConfig {
        mail_since: Some(day(5)),
        ..PlanConfig::default()
    };
    let plan = plan(&world.facts(), &[], &config, day(7));
    let email_of = |source_id: &str| {
        plan.actions
            .iter()
            .find(|a| a.grant.source_id == source_id)
            .unwrap_or_else(|| panic!("no action for {source_id}: {:#?}", plan.actions))
            .email
    };
    // Every grant is issued; only the email differs.
    assert_eq!(kinds(&plan), vec![K::Issue; 4]);
    assert_eq!(email_of("si_old"), Some(IssueEmail::Silent));
    assert_eq!(email_of("si_new"), Some(IssueEmail::Send));
    assert_eq!(email_of("cs_old/li_1"), Some(IssueEmail::Silent));
    assert_eq!(email_of("cs_new/li_1"), Some(IssueEmail::Send));
    assert_eq!(plan.emails(), (2, 2));

    // Without the setting every new license is mailed.
    let everyone = world.plan(&[], day(7));
    assert!(everyone.actions.iter().all(|a| a.email == Some(IssueEmail::Send)));
    assert_eq!(everyone.emails(), (4, 0));
}

#[test]
fn only_an_issue_carries_an_email_and_a_customer_without_address_is_not_counted() {
    let licenses = issued_subscription();
    let renewed = World::new(vec![sub_item().period(day(30), day(60)).fact()]);
    let plan = renewed.plan(&licenses, day(31));
    assert_eq!(only(&plan).kind, K::Extend);
    assert_eq!(only(&plan).email, None);
    assert_eq!(plan.emails(), (0, 0));

    let anonymous = World::new(vec![sub_item().customer(CustomerInfo::default()).fact()]);
    let plan = anonymous.plan(&[], day(1));
    assert_eq!(only(&plan).email, Some(IssueEmail::Send));
    assert_eq!(plan.emails(), (0, 0), "no address: nothing will be sent");
    // Kept back by --mail-since or not, an issue without an address is
    // neither mailed nor skipped: its outbox row is `no_recipient`.
    let config = PlanConfig {
        mail_since: Some(day(5)),
        ..PlanConfig::default()
    };
    let plan = plan_with(&anonymous, &config, day(6));
    assert_eq!(only(&plan).email, Some(IssueEmail::Silent));
    assert_eq!(plan.emails(), (0, 0));
}

#[test]
fn a_license_keeps_its_stripe_product_name() {
    let plan = World::new(vec![sub_item().fact()]).plan(&[], day(1));
    let name = only(&plan).after.product_name.clone();
    assert!(name.as_deref().is_some_and(|n| !n.is_empty()), "{name:?}");
    assert_eq!(
        name.as_deref(),
        catalog().product_name("prod_pro"),
        "the name of the product the item's price belongs to"
    );
}

#[test]
fn an_unknown_subscription_status_skips_the_grant_and_keeps_its_license() {
    let unknown = || S::Unknown("on_hold".into());
    // First seen with a status Stripe added later: nothing issued, one skip
    // naming the subscription and the value.
    let world = World::new(vec![sub_item().status(unknown()).fact()]);
    let plan = world.plan(&[], day(1));
    assert!(plan.actions.is_empty(), "{:#?}", plan.actions);
    assert_eq!(plan.skipped.len(), 1, "{:#?}", plan.skipped);
    let skip = &plan.skipped[0];
    assert_eq!(skip.stripe_object, "sub_1");
    assert!(
        skip.reason.contains("sub_1") && skip.reason.contains("`on_hold`"),
        "{}",
        skip.reason
    );
    assert_eq!(skip.grant, Some(GrantKey::subscription_item("si_1")));

    // An existing license of it stays exactly as it was, however its other
    // fields moved in Stripe.
    let licenses = issued_subscription();
    let moved = World::new(vec![
        sub_item().status(unknown()).quantity(7).period(day(30), day(60)).fact(),
    ]);
    let plan = moved.plan(&licenses, day(5));
    assert!(plan.actions.is_empty(), "{:#?}", plan.actions);
    assert_eq!(plan.skipped.len(), 1);
    assert_eq!(plan.unchanged, 1);
}

#[test]
fn cancel_at_period_end_shortens_to_the_period_end_without_grace() {
    let ending = World::new(vec![sub_item().cancel_at_period_end().fact()]);
    let (plan, licenses) = run(&ending, &issued_subscription(), day(10));
    assert_eq!(only(&plan).kind, K::Shorten);
    assert_eq!(
        (licenses[0].state.status, licenses[0].state.expires_at),
        (L::Active, Some(day(30)))
    );
    // Undoing the cancellation extends again.
    let (plan, _) = run(&World::new(vec![sub_item().fact()]), &licenses, day(11));
    assert_eq!(only(&plan).kind, K::Extend);
}

#[test]
fn a_canceled_subscription_without_ended_at_keeps_its_first_expiry_on_later_runs() {
    let canceled = World::new(vec![sub_item().status(S::Canceled).fact()]);
    let (_, licenses) = run(&canceled, &issued_subscription(), day(10));
    assert_eq!(licenses[0].state.expires_at, Some(day(10)));
    assert_converged(&canceled, &licenses, day(20));
}

// ---- time -----------------------------------------------------------------

#[test]
fn a_thirty_day_one_time_license_expires_on_day_thirty_one() {
    let world = World::new(vec![one_time().price("price_tool_30d", "prod_tool").fact()]);
    let licenses = issued(&world, day(0));
    assert_eq!(licenses[0].state.expires_at, Some(day(30)));
    assert_converged(&world, &licenses, day(29));

    // The clock alone expires it, also when no fact of this slice names it.
    for slice in [world.clone(), World::new(vec![])] {
        let (plan, after) = run(&slice, &licenses, day(31));
        let action = only(&plan);
        assert_eq!((action.kind, action.cause.as_str()), (K::Expire, "cs_1"));
        assert_eq!(after[0].state.status, L::Expired);
        assert_eq!(
            after[0].state.expires_at,
            Some(day(30)),
            "expiring does not move the expiry"
        );
        assert_converged(&slice, &after, day(32));
    }
}

#[test]
fn a_clock_expiry_without_a_fact_names_the_subscription_as_cause() {
    let licenses = issued_subscription();
    let plan = World::new(vec![]).plan(&licenses, day(40));
    let action = only(&plan);
    assert_eq!((action.kind, action.cause.as_str()), (K::Expire, "sub_1"));
}

#[test]
fn a_clock_expiry_of_an_invoice_license_names_the_invoice() {
    let world = World::new(vec![
        one_time()
            .invoice("in_7", "il_1")
            .price("price_tool_30d", "prod_tool")
            .fact(),
    ]);
    let licenses = issued(&world, day(1));
    let plan = World::new(vec![]).plan(&licenses, day(31));
    assert_eq!(only(&plan).cause, "in_7");
}

#[test]
fn a_purchase_first_seen_after_its_expiry_issues_nothing() {
    let world = World::new(vec![one_time().price("price_tool_30d", "prod_tool").fact()]);
    assert!(world.plan(&[], day(31)).is_empty());
}

// ---- §4: one-time purchases ---------------------------------------------

#[test]
fn a_paid_one_time_purchase_gets_a_perpetual_license() {
    let world = World::new(vec![one_time().fact()]);
    let plan = world.plan(&[], day(3));
    let action = only(&plan);
    assert_eq!((action.kind, action.cause.as_str()), (K::Issue, "cs_1"));
    assert_eq!(action.grant, GrantKey::checkout_line("cs_1", "li_1"));
    let after = &action.after;
    assert_eq!(after.status, L::Active);
    assert_eq!(after.expires_at, None);
    assert_eq!((after.expiration_days, after.expiration_start), (None, None));
    assert_eq!(after.product_ids, vec!["tool".to_string()]);
    assert_eq!(after.stripe_payment_intent.as_deref(), Some("pi_1"));
    assert_eq!(after.stripe_subscription_id, None);
}

#[test]
fn creation_expiry_counts_from_the_purchase() {
    let world = World::new(vec![
        one_time()
            .price("price_tool_30d", "prod_tool")
            .purchased_at(day(4))
            .fact(),
    ]);
    let plan = world.plan(&[], day(5));
    let after = &only(&plan).after;
    assert_eq!(after.expires_at, Some(day(34)));
    assert_eq!(
        (after.expiration_days, after.expiration_start),
        (Some(30), Some(ExpirationStart::Creation))
    );
}

#[test]
fn activation_expiry_stores_the_days_and_no_expiry() {
    let world = World::new(vec![one_time().price("price_tool_activation", "prod_tool").fact()]);
    let plan = world.plan(&[], day(400));
    let after = &only(&plan).after;
    assert_eq!(after.expires_at, None);
    assert_eq!(
        (after.expiration_days, after.expiration_start),
        (Some(30), Some(ExpirationStart::Activation))
    );
}

#[test]
fn an_unpaid_session_grants_nothing_until_it_is_paid() {
    let unpaid = World::new(vec![one_time().unpaid().fact()]);
    let plan = unpaid.plan(&[], day(1));
    assert!(plan.is_empty() && plan.skipped.is_empty(), "{plan:#?}");
    let paid = World::new(vec![one_time().fact()]);
    assert_eq!(only(&paid.plan(&[], day(3))).kind, K::Issue);
}

#[test]
fn an_unpaid_fact_leaves_an_existing_license_as_it_is() {
    let licenses = issued(&World::new(vec![one_time().fact()]), day(1));
    let world = World::new(vec![one_time().unpaid().customer(customer("cus_other")).fact()]);
    assert_converged(&world, &licenses, day(2));
}

#[test]
fn every_line_of_a_multi_line_purchase_gets_its_own_license() {
    let world = World::new(vec![
        one_time().checkout("cs_9", "li_a").fact(),
        one_time()
            .checkout("cs_9", "li_b")
            .price("price_tool_30d", "prod_tool")
            .fact(),
        one_time()
            .checkout("cs_9", "li_c")
            .price("price_shirt", "prod_shirt")
            .fact(),
    ]);
    let plan = world.plan(&[], day(1));
    let grants: Vec<&str> = plan.actions.iter().map(|a| a.grant.source_id.as_str()).collect();
    assert_eq!(
        grants,
        ["cs_9/li_a", "cs_9/li_b"],
        "the unlicensed shirt line is ignored"
    );
    assert!(plan.actions.iter().all(|a| a.kind == K::Issue));
    assert!(plan.skipped.is_empty());
}

#[test]
fn a_paid_one_off_invoice_line_is_a_grant() {
    let world = World::new(vec![one_time().invoice("in_1", "il_1").fact()]);
    let plan = world.plan(&[], day(1));
    let action = only(&plan);
    assert_eq!(action.grant, GrantKey::invoice_line("in_1", "il_1"));
    assert_eq!(action.cause, "in_1");
}

// ---- quantity -------------------------------------------------------------

#[test]
fn quantity_multiplies_seats_but_not_ip_limit() {
    let world = World::new(vec![sub_item().quantity(5).fact()]);
    let plan = world.plan(&[], day(1));
    let after = &only(&plan).after;
    assert_eq!(
        (after.quantity, after.hwid_limit, after.ip_limit),
        (5, Some(10), Some(5))
    );
}

#[test]
fn quantity_without_a_hwid_limit_keeps_it_unlimited() {
    let world = World::new(vec![one_time().quantity(3).fact()]);
    let plan = world.plan(&[], day(1));
    let after = &only(&plan).after;
    assert_eq!((after.quantity, after.hwid_limit), (3, None));
}

#[test]
fn adding_seats_updates_the_license() {
    let world = World::new(vec![sub_item().quantity(3).fact()]);
    let (plan, licenses) = run(&world, &issued_subscription(), day(2));
    assert_eq!(only(&plan).kind, K::Update);
    assert_eq!((licenses[0].state.quantity, licenses[0].state.hwid_limit), (3, Some(6)));
}

#[test]
fn a_zero_quantity_is_skipped_and_leaves_the_license_as_it_is() {
    let world = World::new(vec![sub_item().quantity(0).fact()]);
    let plan = world.plan(&issued_subscription(), day(2));
    assert!(plan.is_empty());
    assert_eq!(plan.skipped.len(), 1);
    assert_eq!(plan.skipped[0].stripe_object, "si_1");
    assert!(plan.skipped[0].reason.contains("quantity 0"), "{:?}", plan.skipped);
}

#[test]
fn seats_that_overflow_the_table_are_skipped_not_wrapped() {
    let world = World::new(vec![sub_item().quantity(i64::from(i32::MAX)).fact()]);
    let plan = world.plan(&[], day(2));
    assert!(plan.is_empty());
    assert!(plan.skipped[0].reason.contains("hwid_limit"), "{:?}", plan.skipped);
}

// ---- §1: identity, upgrades, duplicates ------------------------------------

#[test]
fn an_upgrade_in_place_keeps_the_license_and_its_key() {
    let licenses = issued_subscription();
    let upgraded = World::new(vec![sub_item().price("price_team_monthly", "prod_team").fact()]);
    let (plan, after) = run(&upgraded, &licenses, day(5));
    let action = only(&plan);
    assert_eq!(action.kind, K::Update);
    assert_eq!(action.license_id, Some(licenses[0].id));
    assert_eq!(action.before.as_ref().unwrap().product_ids, vec!["pro".to_string()]);
    assert_eq!(action.after.product_ids, vec!["pro".to_string(), "team".to_string()]);
    assert_eq!((after[0].id, &after[0].key), (licenses[0].id, &licenses[0].key));
    assert_eq!((after[0].state.hwid_limit, after[0].state.ip_limit), (Some(1), None));
}

#[test]
fn an_upgrade_that_also_moves_the_period_is_an_extend_carrying_all_fields() {
    let upgraded = World::new(vec![
        sub_item()
            .price("price_pro_yearly", "prod_pro")
            .period(day(5), day(370))
            .fact(),
    ]);
    let (plan, _) = run(&upgraded, &issued_subscription(), day(5));
    let action = only(&plan);
    assert_eq!(action.kind, K::Extend);
    assert_eq!(action.after.hwid_limit, Some(4));
    assert_eq!(action.before.as_ref().unwrap().hwid_limit, Some(2));
}

#[test]
fn a_grant_listed_twice_is_planned_once_with_the_last_fact() {
    let world = World::new(vec![
        sub_item().fact(),
        one_time().fact(),
        sub_item().quantity(2).fact(),
        sub_item().quantity(3).fact(),
    ]);
    let plan = world.plan(&[], day(1));
    assert_eq!(plan.actions.len(), 2, "{:#?}", plan.actions);
    assert_eq!(
        plan.actions[0].grant,
        GrantKey::subscription_item("si_1"),
        "first position orders the output"
    );
    assert_eq!(plan.actions[0].after.quantity, 3);
}

#[test]
fn each_item_of_a_subscription_gets_its_own_license() {
    let world = World::new(vec![
        sub_item().id("si_a").fact(),
        sub_item().id("si_b").price("price_team_monthly", "prod_team").fact(),
    ]);
    let plan = world.plan(&[], day(1));
    assert_eq!(plan.actions.len(), 2);
    assert!(
        plan.actions
            .iter()
            .all(|a| a.after.stripe_subscription_id.as_deref() == Some("sub_1"))
    );
}

#[test]
fn a_removed_item_of_a_completely_listed_subscription_expires() {
    let both = World::new(vec![sub_item().id("si_a").fact(), sub_item().id("si_b").fact()]);
    let licenses = issued(&both, day(1));
    let mut only_a = World::new(vec![sub_item().id("si_a").fact()]);

    // Without the promise that the list is complete, si_b is left alone.
    assert_converged(&only_a, &licenses, day(5));

    only_a.complete_subscriptions = vec!["sub_1".to_owned()];
    let (plan, after) = run(&only_a, &licenses, day(5));
    let action = only(&plan);
    assert_eq!(action.grant, GrantKey::subscription_item("si_b"));
    assert_eq!((action.kind, action.cause.as_str()), (K::Expire, "sub_1"));
    assert_eq!(after[1].state.expires_at, Some(day(5)));
    assert_converged(&only_a, &after, day(9));
}

#[test]
fn output_follows_grant_order_then_license_id() {
    let world = World::new(vec![
        sub_item().id("si_a").fact(),
        sub_item().id("si_b").fact(),
        sub_item().id("si_c").fact(),
    ]);
    let licenses = issued(&world, day(1));
    // si_c and si_a have no fact in the next slice; si_b comes first.
    let slice = World::new(vec![
        sub_item().id("si_b").status(S::Canceled).ended_at(Some(day(40))).fact(),
    ]);
    let plan = slice.plan(&licenses, day(40));
    let order: Vec<&str> = plan.actions.iter().map(|a| a.grant.source_id.as_str()).collect();
    assert_eq!(order, ["si_b", "si_a", "si_c"]);
}

// ---- customer data ----------------------------------------------------------

#[test]
fn customer_details_flow_from_stripe_into_the_license() {
    let world = World::new(vec![sub_item().livemode(true).fact()]);
    let plan = world.plan(&[], day(1));
    let after = &only(&plan).after;
    assert_eq!(after.stripe_customer_id.as_deref(), Some("cus_1"));
    assert_eq!(after.customer_email.as_deref(), Some("cus_1@example.com"));
    assert_eq!(after.customer_name.as_deref(), Some("Customer cus_1"));
    assert_eq!(after.stripe_subscription_id.as_deref(), Some("sub_1"));
    assert!(after.livemode);
}

#[test]
fn a_changed_customer_email_is_an_update() {
    let mut moved = customer("cus_1");
    moved.email = Some("new@example.com".to_owned());
    let world = World::new(vec![sub_item().customer(moved).fact()]);
    let (plan, licenses) = run(&world, &issued_subscription(), day(2));
    assert_eq!(only(&plan).kind, K::Update);
    assert_eq!(licenses[0].state.customer_email.as_deref(), Some("new@example.com"));
}

#[test]
fn a_purchase_without_email_is_still_licensed() {
    let world = World::new(vec![one_time().customer(CustomerInfo::default()).fact()]);
    let plan = world.plan(&[], day(1));
    assert_eq!(only(&plan).after.customer_email, None);
}

// ---- §2 in the plan: misconfigured and unlicensed products -----------------

#[test]
fn a_misconfigured_product_is_skipped_with_a_reason_naming_product_and_key() {
    let world = World::new(vec![sub_item().price("price_broken", "prod_broken").fact()]);
    let plan = world.plan(&[], day(1));
    assert!(plan.is_empty());
    assert_eq!(plan.skipped.len(), 1);
    let skipped = &plan.skipped[0];
    assert_eq!(skipped.stripe_object, "prod_broken");
    assert_eq!(skipped.grant, Some(GrantKey::subscription_item("si_1")));
    assert!(
        skipped
            .reason
            .starts_with("prod_broken (prod_broken name) `ip_limit`: `abc` is not"),
        "{}",
        skipped.reason
    );
    assert_eq!(plan.counts()["skipped"], 1);
}

#[test]
fn licenses_of_a_product_that_becomes_misconfigured_are_left_exactly_as_they_are() {
    let licenses = issued_subscription();
    let mut world = World::new(vec![sub_item().status(S::Canceled).ended_at(Some(day(3))).fact()]);
    world.catalog = Catalog::new(
        [crate::tests::fixtures::product(
            "prod_pro",
            &[("product_id", "pro"), ("hwid_limit", "two")],
        )],
        [recurring_price("price_pro_monthly", "prod_pro", &[])],
    );
    let plan = world.plan(&licenses, day(5));
    assert!(plan.is_empty(), "{plan:#?}");
    assert_eq!(plan.unchanged, 1);
    assert_eq!(
        plan.skipped[0].reason,
        "prod_pro (prod_pro name) `hwid_limit`: `two` is not a whole number >= 0 (at most 2147483647); set it to e.g. `3` or remove the key"
    );
}

#[test]
fn a_license_of_a_misconfigured_product_still_follows_the_clock() {
    let mut world = World::new(vec![one_time().price("price_tool_30d", "prod_tool").fact()]);
    let licenses = issued(&world, day(0));
    world.catalog = Catalog::new(
        [crate::tests::fixtures::product("prod_tool", &[("product_id", "tool")])],
        [one_time_price(
            "price_tool_30d",
            "prod_tool",
            &[("expiration_days", "soon")],
        )],
    );
    let plan = world.plan(&licenses, day(31));
    let action = only(&plan);
    assert_eq!((action.kind, action.after.expires_at), (K::Expire, Some(day(30))));
    assert_eq!(plan.skipped[0].stripe_object, "price_tool_30d");
}

#[test]
fn a_price_missing_from_the_catalog_is_skipped_not_fatal() {
    let world = World::new(vec![
        one_time().price("price_gone", "prod_tool").fact(),
        one_time().checkout("cs_2", "li_1").fact(),
    ]);
    let plan = world.plan(&[], day(1));
    assert_eq!(only(&plan).grant.source_id, "cs_2/li_1");
    assert_eq!(plan.skipped[0].stripe_object, "price_gone");
    assert!(
        plan.skipped[0]
            .reason
            .contains("`price`: price not found in the catalog"),
        "{:?}",
        plan.skipped
    );
}

#[test]
fn an_unlicensed_product_is_ignored_silently() {
    let world = World::new(vec![one_time().price("price_shirt", "prod_shirt").fact()]);
    let plan = world.plan(&[], day(1));
    assert!(plan.is_empty() && plan.skipped.is_empty());
}

#[test]
fn a_product_that_loses_its_product_id_keeps_its_licenses() {
    let licenses = issued(&World::new(vec![one_time().fact()]), day(1));
    let mut world = World::new(vec![one_time().fact()]);
    world.catalog = Catalog::new(
        [crate::tests::fixtures::product("prod_tool", &[])],
        [one_time_price("price_tool", "prod_tool", &[])],
    );
    assert_converged(&world, &licenses, day(2));
}

#[test]
fn an_old_canceled_subscription_of_a_misconfigured_product_is_not_reported() {
    let world = World::new(vec![
        sub_item()
            .price("price_broken", "prod_broken")
            .status(S::Canceled)
            .fact(),
    ]);
    let plan = world.plan(&[], day(1));
    assert!(plan.is_empty() && plan.skipped.is_empty(), "{plan:#?}");
}

#[test]
fn catalog_warnings_reach_the_plan_once() {
    let mut world = World::new(vec![sub_item().id("si_a").fact(), sub_item().id("si_b").fact()]);
    world.catalog = Catalog::new(
        [crate::tests::fixtures::product(
            "prod_pro",
            &[("product_id", "pro"), ("expiration_days", "30")],
        )],
        [recurring_price("price_pro_monthly", "prod_pro", &[])],
    );
    let plan = world.plan(&[], day(1));
    assert_eq!(plan.actions.len(), 2);
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(plan.actions.iter().all(|a| a.after.expiration_days.is_none()));
}

// ---- reversals ---------------------------------------------------------------

/// Two purchases of one customer, paid by `pi_1` and `pi_2`.
fn two_purchases() -> (World, Vec<License>) {
    let world = World::new(vec![
        one_time().fact(),
        one_time().checkout("cs_2", "li_1").payment_intent(Some("pi_2")).fact(),
    ]);
    let licenses = issued(&world, day(1));
    assert_eq!(licenses.len(), 2);
    (world, licenses)
}

#[test]
fn a_full_refund_revokes_the_refunded_license_and_not_another_of_the_same_customer() {
    let (mut world, licenses) = two_purchases();
    world.reversals = vec![reversal("pi_2", R::FullRefund, "re_1")];
    let (plan, after) = run(&world, &licenses, day(5));
    let action = only(&plan);
    assert_eq!((action.kind, action.cause.as_str()), (K::Revoke, "re_1"));
    assert_eq!(action.grant.source_id, "cs_2/li_1");
    assert_eq!((after[0].state.status, after[1].state.status), (L::Active, L::Revoked));
    assert_converged(&world, &after, day(6));
}

#[test]
fn a_lost_dispute_revokes_the_license_even_without_its_purchase_in_the_slice() {
    let (_, licenses) = two_purchases();
    let mut world = World::new(vec![]);
    world.reversals = vec![reversal("pi_1", R::DisputeLost, "dp_1")];
    let (plan, after) = run(&world, &licenses, day(5));
    let action = only(&plan);
    assert_eq!((action.kind, action.cause.as_str()), (K::Revoke, "dp_1"));
    assert_eq!((after[0].state.status, after[1].state.status), (L::Revoked, L::Active));
}

#[test]
fn a_partial_refund_changes_nothing_and_is_logged() {
    let (mut world, licenses) = two_purchases();
    world.reversals = vec![reversal("pi_1", R::PartialRefund, "re_9")];
    let plan = world.plan(&licenses, day(5));
    assert!(plan.is_empty());
    assert_eq!(plan.unchanged, 2);
    assert_eq!(
        plan.skipped,
        vec![Skipped {
            stripe_object: "re_9".to_owned(),
            grant: Some(GrantKey::checkout_line("cs_1", "li_1")),
            reason: "partial refund re_9: license unchanged".to_owned(),
        }]
    );
}

#[test]
fn a_full_refund_revokes_every_line_of_the_refunded_purchase() {
    let mut world = World::new(vec![one_time().fact(), one_time().checkout("cs_1", "li_2").fact()]);
    let licenses = issued(&world, day(1));
    world.reversals = vec![reversal("pi_1", R::FullRefund, "re_1")];
    let (plan, _) = run(&world, &licenses, day(2));
    assert_eq!(kinds(&plan), [K::Revoke, K::Revoke]);
}

#[test]
fn revoked_is_final() {
    let (mut world, licenses) = two_purchases();
    world.reversals = vec![reversal("pi_1", R::FullRefund, "re_1")];
    let (_, revoked) = run(&world, &licenses, day(2));
    // The refund is out of the slice; the purchase still says paid; time passes.
    for slice in [World::new(vec![one_time().quantity(4).fact()]), World::new(vec![])] {
        let plan = slice.plan(&revoked, day(900));
        assert!(plan.is_empty(), "{plan:#?}");
        assert_eq!(plan.unchanged, 2);
    }
}

#[test]
fn a_purchase_refunded_before_its_first_run_issues_nothing_and_says_so() {
    let mut world = World::new(vec![one_time().fact()]);
    world.reversals = vec![reversal("pi_1", R::FullRefund, "re_1")];
    let plan = world.plan(&[], day(1));
    assert!(plan.is_empty());
    assert_eq!(plan.skipped[0].stripe_object, "re_1");
    assert!(plan.skipped[0].reason.contains("no license issued"));
}

#[test]
fn refunds_of_subscription_payments_do_not_revoke() {
    let mut licenses = issued_subscription();
    // Even a subscription license that remembers a payment (an import, an
    // older version) is not one-time: the subscription decides it.
    licenses[0].state.stripe_payment_intent = Some("pi_1".to_owned());
    let mut world = World::new(vec![]);
    world.reversals = vec![reversal("pi_1", R::FullRefund, "re_1")];
    assert_converged(&world, &licenses, day(2));
}

#[test]
fn an_expired_one_time_license_can_still_be_revoked() {
    let world = World::new(vec![one_time().price("price_tool_30d", "prod_tool").fact()]);
    let (_, licenses) = run(&world, &issued(&world, day(0)), day(40));
    assert_eq!(licenses[0].state.status, L::Expired);
    let mut refunded = World::new(vec![]);
    refunded.reversals = vec![reversal("pi_1", R::DisputeLost, "dp_3")];
    assert_eq!(only(&refunded.plan(&licenses, day(41))).kind, K::Revoke);
}

// ---- counts -----------------------------------------------------------------

#[test]
fn counts_name_every_report_key_including_zeros() {
    let plan = World::new(vec![sub_item().fact()]).plan(&[], day(1));
    let counts = plan.counts();
    let keys: Vec<&str> = counts.keys().copied().collect();
    let mut expected = [
        "issued",
        "extended",
        "shortened",
        "suspended",
        "reinstated",
        "expired",
        "revoked",
        "updated",
        "unchanged",
        "skipped",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(counts["issued"], 1);
    assert_eq!(counts.values().sum::<usize>(), 1);
}

#[test]
fn counts_add_up_actions_unchanged_and_skipped() {
    let world = World::new(vec![sub_item().id("si_a").fact(), sub_item().id("si_b").fact()]);
    let licenses = issued(&world, day(1));
    let next = World::new(vec![
        sub_item().id("si_a").fact(),
        sub_item().id("si_b").cancel_at_period_end().fact(),
        sub_item().id("si_c").price("price_broken", "prod_broken").fact(),
        one_time().fact(),
    ]);
    let counts = next.plan(&licenses, day(2)).counts();
    assert_eq!(
        (
            counts["unchanged"],
            counts["shortened"],
            counts["skipped"],
            counts["issued"]
        ),
        (1, 1, 1, 1)
    );
}

#[test]
fn the_default_config_is_the_documented_grace() {
    let config = PlanConfig::default();
    assert_eq!(config.grace, Duration::from_secs(86_400));
    assert_eq!(config.past_due_grace, Duration::from_secs(7 * 86_400));
}

#[test]
fn an_absurd_grace_saturates_instead_of_panicking() {
    let world = World::new(vec![sub_item().fact()]);
    let config = PlanConfig {
        grace: Duration::MAX,
        past_due_grace: Duration::MAX,
        mail_since: None,
    };
    let plan = plan(&world.facts(), &[], &config, day(1));
    assert_eq!(only(&plan).after.expires_at, Some(latest()));
}

#[test]
fn an_action_lists_exactly_the_fields_it_changes() {
    let world = World::new(vec![sub_item().quantity(2).cancel_at_period_end().fact()]);
    let plan = world.plan(&issued_subscription(), day(3));
    let changes: Vec<(String, Option<serde_json::Value>, serde_json::Value)> = only(&plan)
        .changes()
        .into_iter()
        .map(|c| (c.field, c.before, c.after))
        .collect();
    assert_eq!(
        changes,
        vec![
            (
                "expires_at".to_owned(),
                Some(serde_json::json!("2025-02-01T00:00:00Z")),
                serde_json::json!("2025-01-31T00:00:00Z")
            ),
            (
                "hwid_limit".to_owned(),
                Some(serde_json::json!(2)),
                serde_json::json!(4)
            ),
            ("quantity".to_owned(), Some(serde_json::json!(1)), serde_json::json!(2)),
        ]
    );
}

#[test]
fn an_issue_lists_every_field_as_new() {
    let plan = World::new(vec![one_time().fact()]).plan(&[], day(1));
    let changes = only(&plan).changes();
    assert_eq!(changes.len(), 15);
    assert!(changes.iter().all(|c| c.before.is_none()));
    let status = changes.iter().find(|c| c.field == "status").unwrap();
    assert_eq!(status.after, serde_json::json!("active"));
}

mod properties;

// ---- §8: operator overrides ---------------------------------------------

use crate::operator::Command as Op;

/// `si_1`'s license (2 seats, day 30 + grace) under `command` set on day 2.
fn held(command: Op) -> Vec<License> {
    let mut licenses = issued_subscription();
    operate(&mut licenses[0], command, day(2)).unwrap();
    licenses
}

#[test]
fn an_override_holds_what_it_pins_while_the_rest_follows_stripe() {
    let renewed = || sub_item().quantity(3).period(day(30), day(60));
    // (case, override, Stripe afterwards, when, expected status, seats, expiry, held fields)
    type Row = (
        &'static str,
        Op,
        SubItem,
        Timestamp,
        L,
        Option<i32>,
        Timestamp,
        Vec<&'static str>,
    );
    let rows: Vec<Row> = vec![
        (
            "revoke wins over a renewal",
            Op::Revoke,
            renewed(),
            day(31),
            L::Revoked,
            Some(6),
            day(60) + hours(24),
            vec!["status"],
        ),
        (
            "suspend holds a paid subscription suspended",
            Op::Suspend,
            renewed(),
            day(31),
            L::Suspended,
            Some(6),
            day(60) + hours(24),
            vec!["status"],
        ),
        (
            "pinned seats stay, quantity and expiry follow",
            pin_seats(50),
            renewed(),
            day(31),
            L::Active,
            Some(50),
            day(60) + hours(24),
            vec!["hwid_limit"],
        ),
        (
            "a pinned expiry outlives a canceled subscription (goodwill)",
            Op::Pin {
                hwid_limit: None,
                ip_limit: None,
                expires_at: Some(day(90)),
            },
            sub_item().status(S::Canceled).ended_at(Some(day(20))),
            day(31),
            L::Active,
            Some(2),
            day(90),
            vec!["expires_at", "status"],
        ),
        (
            "a pinned expiry that passed expires a paid subscription",
            Op::Pin {
                hwid_limit: None,
                ip_limit: None,
                expires_at: Some(day(10)),
            },
            sub_item(),
            day(11),
            L::Expired,
            Some(2),
            day(10),
            vec!["expires_at", "status"],
        ),
    ];
    for (case, op, stripe, now, status, seats, expires, held_fields) in rows {
        let licenses = held(op);
        let world = World::new(vec![stripe.fact()]);
        let (plan, after) = run(&world, &licenses, now);
        let action = only(&plan);
        assert_eq!(
            (
                after[0].state.status,
                after[0].state.hwid_limit,
                after[0].state.expires_at
            ),
            (status, seats, Some(expires)),
            "{case}"
        );
        let held = action.held.as_ref().unwrap_or_else(|| panic!("{case}: nothing held"));
        assert_eq!(held.reason, "support ticket 7", "{case}");
        let fields: Vec<&str> = held.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, held_fields, "{case}");
        assert!(after[0].operator_override.is_some(), "{case}: the override stays");
        assert_converged(&world, &after, now);
    }
}

#[test]
fn a_held_suspension_gives_way_to_a_refund_and_a_release_keeps_stripes_revocation() {
    let (mut world, mut licenses) = two_purchases();
    operate(&mut licenses[1], Op::Suspend, day(2)).unwrap();
    world.reversals = vec![reversal("pi_2", R::FullRefund, "re_1")];
    let (plan, after) = run(&world, &licenses, day(3));
    assert_eq!(only(&plan).kind, K::Revoke);
    assert_eq!(after[1].state.status, L::Revoked);
    assert_eq!(after[1].operator_override.as_ref().unwrap().stripe.status, L::Revoked);
    // Released later, it stays revoked: Stripe's revocation is final.
    let mut released = after.clone();
    operate(&mut released[1], Op::Release, day(4)).unwrap();
    assert_eq!(released[1].state.status, L::Revoked);
    assert!(
        World::new(vec![
            one_time().checkout("cs_2", "li_1").payment_intent(Some("pi_2")).fact()
        ])
        .plan(&released, day(5))
        .is_empty()
    );
}

#[test]
fn when_stripe_moves_only_a_held_field_the_plan_records_it_once_and_changes_no_value() {
    let licenses = held(pin_seats(50));
    let world = World::new(vec![
        sub_item().quantity(1).price("price_pro_yearly", "prod_pro").fact(),
    ]);
    let (plan, after) = run(&world, &licenses, day(3));
    let action = only(&plan);
    assert_eq!(action.kind, K::Update);
    assert!(action.changes().is_empty(), "no value of the row moves: {action:#?}");
    let field = &action.held.as_ref().unwrap().fields[0];
    assert_eq!((field.stripe.clone(), field.kept.clone()), (4.into(), 50.into()));
    assert_eq!(after[0].operator_override.as_ref().unwrap().stripe.hwid_limit, Some(4));
    assert_converged(&world, &after, day(3));
    // A release now restores what Stripe asked last.
    let mut released = after;
    operate(&mut released[0], Op::Release, day(4)).unwrap();
    assert_eq!(
        (released[0].state.hwid_limit, released[0].operator_override.clone()),
        (Some(4), None)
    );
    assert_converged(&world, &released, day(4));
}

#[test]
fn a_license_no_fact_names_keeps_its_override_and_follows_the_clock_underneath() {
    let licenses = held(Op::Suspend);
    let nothing = World::new(vec![]);
    assert_converged(&nothing, &licenses, day(5));
    // Past Stripe's expiry the license stays suspended; what Stripe would say moves.
    let (plan, after) = run(&nothing, &licenses, day(40));
    let action = only(&plan);
    assert_eq!((action.kind, after[0].state.status), (K::Update, L::Suspended));
    assert_eq!(after[0].operator_override.as_ref().unwrap().stripe.status, L::Expired);
    let mut released = after;
    operate(&mut released[0], Op::Release, day(41)).unwrap();
    assert_eq!(
        released[0].state.status,
        L::Expired,
        "released into what Stripe says now"
    );
}

#[test]
fn a_removed_item_under_pinned_seats_expires_with_its_seats_still_pinned() {
    let licenses = held(pin_seats(9));
    let mut world = World::new(vec![]);
    world.complete_subscriptions = vec!["sub_1".to_owned()];
    let (plan, after) = run(&world, &licenses, day(5));
    assert_eq!(only(&plan).kind, K::Expire);
    assert_eq!(
        (after[0].state.status, after[0].state.hwid_limit),
        (L::Expired, Some(9))
    );
    assert_eq!(after[0].operator_override.as_ref().unwrap().stripe.hwid_limit, Some(2));
    assert_converged(&world, &after, day(5));
}
