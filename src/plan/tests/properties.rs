//! Property tests: for random Stripe states, applying a plan and planning
//! again changes nothing, and a plan never touches one grant twice; under
//! random operator overrides, no plan changes what an override holds.

use std::collections::HashSet;

use proptest::prelude::*;

use crate::domain::HeldStatus;
use crate::domain::{
    ActionKind, GrantFact, License, LicenseStatus, PaymentReversal, ReversalKind, SubscriptionStatus, Timestamp,
};
use crate::operator::Command;
use crate::plan::{Plan, kind_of_change};
use crate::tests::fixtures::*;

/// Every status of the rules, plus one Stripe may add later.
fn statuses() -> Vec<SubscriptionStatus> {
    vec![
        SubscriptionStatus::Incomplete,
        SubscriptionStatus::IncompleteExpired,
        SubscriptionStatus::Trialing,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Canceled,
        SubscriptionStatus::Unpaid,
        SubscriptionStatus::Paused,
        SubscriptionStatus::Unknown("on_hold".to_owned()),
    ]
}

/// Licensed, multi-product, misconfigured, unlicensed and unknown prices.
const SUBSCRIPTION_PRICES: [(&str, &str); 6] = [
    ("price_pro_monthly", "prod_pro"),
    ("price_pro_yearly", "prod_pro"),
    ("price_team_monthly", "prod_team"),
    ("price_broken", "prod_broken"),
    ("price_shirt", "prod_shirt"),
    ("price_gone", "prod_pro"),
];

const ONE_TIME_PRICES: [(&str, &str); 6] = [
    ("price_tool", "prod_tool"),
    ("price_tool_30d", "prod_tool"),
    ("price_tool_activation", "prod_tool"),
    ("price_broken", "prod_broken"),
    ("price_shirt", "prod_shirt"),
    ("price_gone", "prod_tool"),
];

fn at(days: i64) -> Timestamp {
    day(days)
}

fn optional_day() -> impl Strategy<Value = Option<i64>> {
    prop::option::of(0i64..120)
}

prop_compose! {
    fn subscription_item()(
        item in 0u8..5,
        subscription in 0u8..3,
        status in prop::sample::select(statuses()),
        price in prop::sample::select(SUBSCRIPTION_PRICES.to_vec()),
        quantity in 0i64..4,
        start in 0i64..100,
        length in 1i64..40,
        trial_end in optional_day(),
        cancel_at_period_end in any::<bool>(),
        cancel_at in optional_day(),
        ended_at in optional_day(),
        paid_through in optional_day(),
        customer_no in 0u8..3,
        livemode in any::<bool>(),
    ) -> GrantFact {
        let mut fact = sub_item()
            .id(&format!("si_{item}"))
            .subscription(&format!("sub_{subscription}"))
            .status(status)
            .price(price.0, price.1)
            .quantity(quantity)
            .period(at(start), at(start + length))
            .ended_at(ended_at.map(at))
            .paid_through(paid_through.map(at))
            .customer(customer(&format!("cus_{customer_no}")))
            .livemode(livemode);
        if let Some(t) = trial_end {
            fact = fact.trial_end(at(t));
        }
        if cancel_at_period_end {
            fact = fact.cancel_at_period_end();
        }
        if let Some(t) = cancel_at {
            fact = fact.cancel_at(at(t));
        }
        fact.fact()
    }
}

prop_compose! {
    fn one_time_line()(
        purchase in 0u8..3,
        line in 0u8..2,
        invoice in any::<bool>(),
        price in prop::sample::select(ONE_TIME_PRICES.to_vec()),
        quantity in 0i64..4,
        purchased in 0i64..100,
        paid in prop::bool::weighted(0.8),
        payment_intent in prop::option::of(0u8..3),
        customer_no in 0u8..3,
    ) -> GrantFact {
        let line_id = format!("li_{line}");
        let mut fact = if invoice {
            one_time().invoice(&format!("in_{purchase}"), &line_id)
        } else {
            one_time().checkout(&format!("cs_{purchase}"), &line_id)
        }
        .price(price.0, price.1)
        .quantity(quantity)
        .purchased_at(at(purchased))
        .payment_intent(payment_intent.map(|n| format!("pi_{n}")).as_deref())
        .customer(customer(&format!("cus_{customer_no}")));
        if !paid {
            fact = fact.unpaid();
        }
        fact.fact()
    }
}

prop_compose! {
    fn payment_reversal()(
        payment_intent in 0u8..3,
        kind in prop::sample::select(vec![ReversalKind::FullRefund, ReversalKind::PartialRefund, ReversalKind::DisputeLost]),
        n in 0u8..4,
    ) -> PaymentReversal {
        reversal(&format!("pi_{payment_intent}"), kind, &format!("re_{n}"))
    }
}

prop_compose! {
    /// One slice of Stripe: grants (duplicates included), reversals and the
    /// subscriptions it lists completely.
    fn world()(
        subscriptions in prop::collection::vec(subscription_item(), 0..8),
        one_times in prop::collection::vec(one_time_line(), 0..6),
        reversals in prop::collection::vec(payment_reversal(), 0..2),
        complete in prop::collection::vec(0u8..3, 0..3),
        interleave in any::<bool>(),
    ) -> World {
        let mut grants = subscriptions;
        if interleave {
            grants.splice(0..0, one_times);
        } else {
            grants.extend(one_times);
        }
        let mut world = World::new(grants);
        world.reversals = reversals;
        world.complete_subscriptions = complete.into_iter().map(|n| format!("sub_{n}")).collect();
        world
    }
}

/// What every plan must satisfy, whatever the input.
fn check_plan(plan: &Plan, current: &[License]) -> Result<(), TestCaseError> {
    let mut grants = HashSet::new();
    for action in &plan.actions {
        prop_assert!(
            grants.insert(action.grant.clone()),
            "two actions for {:?}",
            action.grant
        );
        match &action.before {
            None => {
                prop_assert_eq!(action.kind, ActionKind::Issue);
                prop_assert_eq!(action.after.status, LicenseStatus::Active, "issued keys are usable");
                prop_assert!(
                    current.iter().all(|l| l.grant_key() != action.grant),
                    "issue over an existing license"
                );
            }
            Some(before) => {
                prop_assert_ne!(before.status, LicenseStatus::Revoked, "revoked is final");
                prop_assert_ne!(before, &action.after, "an action changes something");
                prop_assert_eq!(action.kind, kind_of_change(before, &action.after));
            }
        }
        prop_assert!(!action.cause.is_empty());
    }
    prop_assert_eq!(
        plan.unchanged + plan.actions.iter().filter(|a| a.before.is_some()).count(),
        current.len()
    );
    Ok(())
}

/// Every action is the clock expiring an active license, nothing else moves.
fn only_clock_expiries(plan: &Plan) -> Result<(), TestCaseError> {
    for action in &plan.actions {
        prop_assert_eq!(action.kind, ActionKind::Expire, "{:#?}", action);
        let mut expected = action.before.clone().unwrap();
        prop_assert_eq!(expected.status, LicenseStatus::Active);
        expected.status = LicenseStatus::Expired;
        prop_assert_eq!(&expected, &action.after, "the clock changes the status only");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn applying_a_plan_then_planning_again_changes_nothing(
        first in world(),
        second in world(),
        first_now in 0i64..150,
        later in 0i64..60,
    ) {
        // A table shaped by an earlier Stripe state, then today's state.
        let (first_plan, earlier) = run(&first, &[], at(first_now));
        check_plan(&first_plan, &[])?;
        let now = at(first_now + later);
        let (plan, table) = run(&second, &earlier, now);
        check_plan(&plan, &earlier)?;

        let again = second.plan(&table, now);
        prop_assert!(again.is_empty(), "second plan not empty: {:#?}", again.actions);
        prop_assert_eq!(again.unchanged, table.len());

        // Time passing on the same Stripe state only lets licenses run out.
        let later_plan = second.plan(&table, at(first_now + later + 45));
        check_plan(&later_plan, &table)?;
        only_clock_expiries(&later_plan)?;
    }

    #[test]
    fn later_runs_on_unchanged_stripe_state_only_expire(
        world in world(),
        first_now in 0i64..150,
        later in 1i64..60,
    ) {
        let (_, table) = run(&world, &[], at(first_now));
        let plan = world.plan(&table, at(first_now + later));
        check_plan(&plan, &table)?;
        only_clock_expiries(&plan)?;
    }

    #[test]
    fn planning_is_deterministic_whatever_the_order_of_the_table(
        first in world(),
        second in world(),
        now in 0i64..150,
    ) {
        let table = issued(&first, at(now));
        let mut reversed = table.clone();
        reversed.reverse();
        prop_assert_eq!(second.plan(&table, at(now)), second.plan(&reversed, at(now)));
    }
}

/// An operator command with random pins (refused ones leave the license as it is).
fn operator_command() -> impl Strategy<Value = Command> {
    let pins = (
        prop::option::of(0i32..60),
        prop::option::of(0i32..60),
        prop::option::of(0i64..160),
    );
    prop_oneof![
        Just(Command::Revoke),
        Just(Command::Suspend),
        Just(Command::Release),
        pins.prop_map(|(hwid_limit, ip_limit, expires_at)| Command::Pin {
            hwid_limit,
            ip_limit,
            expires_at: expires_at.map(at),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_plan_changes_what_an_override_holds(
        first in world(),
        second in world(),
        commands in prop::collection::vec(prop::option::of(operator_command()), 8),
        first_now in 0i64..150,
        later in 0i64..60,
    ) {
        let mut table = issued(&first, at(first_now));
        for (license, command) in table.iter_mut().zip(commands) {
            if let Some(command) = command {
                let _ = operate(license, command, at(first_now));
            }
        }
        let now = at(first_now + later);
        let (plan, after) = run(&second, &table, now);
        for action in &plan.actions {
            prop_assert!(!action.cause.is_empty());
        }
        for license in &after {
            let Some(o) = &license.operator_override else { continue };
            if let Some(seats) = o.hwid_limit {
                prop_assert_eq!(license.state.hwid_limit, Some(seats));
            }
            if let Some(ips) = o.ip_limit {
                prop_assert_eq!(license.state.ip_limit, Some(ips));
            }
            if let Some(expiry) = o.expires_at {
                prop_assert_eq!(license.state.expires_at, Some(expiry));
            }
            match o.status {
                Some(HeldStatus::Revoked) => prop_assert_eq!(license.state.status, LicenseStatus::Revoked),
                Some(HeldStatus::Suspended) => prop_assert!(
                    matches!(license.state.status, LicenseStatus::Suspended | LicenseStatus::Revoked),
                    "{:?}", license
                ),
                None => {}
            }
        }
        let again = second.plan(&after, now);
        prop_assert!(again.is_empty(), "second plan not empty: {:#?}", again.actions);
        prop_assert_eq!(again.unchanged, after.len());
    }
}
