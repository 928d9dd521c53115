//! Every answer code, in the contract's order, and what each answer writes.

use chrono::{Duration, TimeZone, Utc};

use super::*;
use crate::domain::{GrantKey, License, LicenseState};

const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn now() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn facts(edit: impl FnOnce(&mut LicenseState)) -> KeyFacts {
    let mut state = LicenseState {
        status: LicenseStatus::Active,
        product_ids: vec!["app".into()],
        product_name: None,
        stripe_customer_id: None,
        stripe_subscription_id: None,
        stripe_payment_intent: Some("pi_1".into()),
        customer_email: None,
        customer_name: None,
        quantity: 1,
        ip_limit: None,
        hwid_limit: None,
        expiration_days: None,
        expiration_start: None,
        expires_at: Some(now() + Duration::days(30)),
        livemode: false,
    };
    edit(&mut state);
    KeyFacts {
        license: License {
            id: 7,
            key: "KEY".into(),
            grant: GrantKey::checkout_line("cs_1", "li_1"),
            stripe_account: None,
            state,
            created_at: now() - Duration::days(3),
            updated_at: now() - Duration::days(3),
            operator_override: None,
            activated_at: None,
        },
        clock_started: None,
        machines: 0,
        machine_seen: None,
        other_addresses: 0,
        address_seen: None,
    }
}

fn validate<'a>(machine: Option<&'a str>, product: Option<&'a str>) -> Question<'a> {
    Question {
        ask: Ask::Validate,
        product,
        machine_hash: machine,
        address: "203.0.113.9",
        now: now(),
    }
}

fn activate(machine: &str) -> Question<'_> {
    Question {
        ask: Ask::Activate {
            name: Some("laptop".into()),
        },
        product: None,
        machine_hash: Some(machine),
        address: "203.0.113.9",
        now: now(),
    }
}

#[test]
fn the_first_code_that_applies_is_the_answer() {
    let seen = Some(now() - Duration::hours(1));
    #[allow(clippy::type_complexity)]
    let table: Vec<(&str, Box<dyn Fn(&mut KeyFacts)>, Question, Code)> = vec![
        ("a plain license", Box::new(|_| {}), validate(None, None), Code::Valid),
        (
            "revoked before anything else",
            Box::new(|f| {
                f.license.state.status = LicenseStatus::Revoked;
                f.license.state.product_ids = vec!["other".into()];
            }),
            validate(None, Some("app")),
            Code::Revoked,
        ),
        (
            "suspended",
            Box::new(|f| f.license.state.status = LicenseStatus::Suspended),
            validate(None, None),
            Code::Suspended,
        ),
        (
            "expired by its row",
            Box::new(|f| f.license.state.status = LicenseStatus::Expired),
            validate(None, None),
            Code::Expired,
        ),
        (
            "active but its time passed: expired at once",
            Box::new(|f| f.license.state.expires_at = Some(now())),
            validate(None, Some("other")),
            Code::Expired,
        ),
        (
            "another product",
            Box::new(|f| f.license.state.hwid_limit = Some(2)),
            validate(None, Some("other")),
            Code::ProductMismatch,
        ),
        (
            "its own product",
            Box::new(|_| {}),
            validate(None, Some("app")),
            Code::Valid,
        ),
        (
            "seats and no machine",
            Box::new(|f| {
                f.license.state.hwid_limit = Some(2);
                f.other_addresses = 5;
                f.license.state.ip_limit = Some(1);
            }),
            validate(None, None),
            Code::NoMachine,
        ),
        (
            "seats and a machine not activated",
            Box::new(|f| f.license.state.hwid_limit = Some(2)),
            validate(Some(HASH_A), None),
            Code::MachineNotActivated,
        ),
        (
            "seats and an activated machine",
            Box::new(move |f| {
                f.license.state.hwid_limit = Some(2);
                f.machine_seen = seen;
                f.machines = 2;
            }),
            validate(Some(HASH_A), None),
            Code::Valid,
        ),
        (
            "a limit of 0 is no limit",
            Box::new(|f| f.license.state.hwid_limit = Some(0)),
            validate(None, None),
            Code::Valid,
        ),
        (
            "too many addresses",
            Box::new(|f| {
                f.license.state.ip_limit = Some(2);
                f.other_addresses = 2;
            }),
            validate(None, None),
            Code::IpLimit,
        ),
        (
            "an address within the limit",
            Box::new(|f| {
                f.license.state.ip_limit = Some(2);
                f.other_addresses = 1;
            }),
            validate(None, None),
            Code::Valid,
        ),
        (
            "activation beyond the seats",
            Box::new(|f| {
                f.license.state.hwid_limit = Some(2);
                f.machines = 2;
                f.license.state.ip_limit = Some(1);
                f.other_addresses = 3;
            }),
            activate(HASH_A),
            Code::HwidLimit,
        ),
        (
            "an activated machine activates again when the seats are full",
            Box::new(move |f| {
                f.license.state.hwid_limit = Some(2);
                f.machines = 2;
                f.machine_seen = seen;
            }),
            activate(HASH_A),
            Code::Valid,
        ),
        (
            "an activation within the seats, too many addresses",
            Box::new(|f| {
                f.license.state.hwid_limit = Some(2);
                f.license.state.ip_limit = Some(1);
                f.other_addresses = 1;
            }),
            activate(HASH_A),
            Code::IpLimit,
        ),
    ];
    for (name, edit, question, code) in table {
        let mut f = facts(|_| {});
        edit(&mut f);
        let decision = decide(&f, &question);
        assert_eq!(decision.code, code, "{name}");
        if code != Code::Valid {
            assert!(decision.writes.is_empty(), "{name}: a refused answer writes nothing");
        }
    }
}

#[test]
fn a_valid_activation_takes_a_seat_and_a_refused_one_takes_none() {
    let mut f = facts(|s| s.hwid_limit = Some(2));
    f.machines = 1;
    let d = decide(&f, &activate(HASH_A));
    assert_eq!(d.code, Code::Valid);
    assert_eq!(d.writes.activate, Some((HASH_A.to_owned(), Some("laptop".into()))));
    assert_eq!(d.machines, 2);

    f.machines = 2;
    let d = decide(&f, &activate(HASH_A));
    assert_eq!(d.code, Code::HwidLimit);
    assert_eq!(d.machines, 2);
}

#[test]
fn addresses_are_recorded_only_for_a_limited_license_and_at_most_once_a_minute() {
    let d = decide(&facts(|_| {}), &validate(None, None));
    assert_eq!(d.writes.record_address, None, "no ip_limit: no personal data kept");

    let mut f = facts(|s| s.ip_limit = Some(3));
    let d = decide(&f, &validate(None, None));
    assert_eq!(d.writes.record_address.as_deref(), Some("203.0.113.9"));
    f.address_seen = Some(now() - Duration::seconds(10));
    assert!(decide(&f, &validate(None, None)).writes.is_empty(), "seen just now");
    f.address_seen = Some(now() - Duration::minutes(5));
    assert!(decide(&f, &validate(None, None)).writes.record_address.is_some());
}

#[test]
fn the_activation_clock_starts_at_the_first_valid_answer_and_never_moves() {
    let waiting = |s: &mut LicenseState| {
        s.expires_at = None;
        s.expiration_days = Some(30);
        s.expiration_start = Some(ExpirationStart::Activation);
        s.hwid_limit = Some(1);
    };
    // A refused answer does not start it.
    let f = facts(waiting);
    let d = decide(&f, &validate(None, None));
    assert_eq!(d.code, Code::NoMachine);
    assert!(!d.writes.start_clock);
    assert_eq!(d.expires_at, None);

    // The first valid one does, and shows the expiry it implies.
    let d = decide(&f, &activate(HASH_A));
    assert_eq!(d.code, Code::Valid);
    assert!(d.writes.start_clock);
    assert_eq!(d.expires_at, Some(now() + Duration::days(30)));

    // Once started it is kept, whatever the machine.
    let mut f = facts(waiting);
    f.clock_started = Some(now() - Duration::days(10));
    let d = decide(&f, &activate("b".repeat(64).as_str()));
    assert!(!d.writes.start_clock);
    assert_eq!(d.expires_at, Some(now() + Duration::days(20)));

    // And its end is an expiry like any other.
    f.clock_started = Some(now() - Duration::days(30));
    f.machine_seen = Some(now());
    let d = decide(&f, &validate(Some(HASH_A), None));
    assert_eq!((d.code, d.status), (Code::Expired, LicenseStatus::Expired));
}

#[test]
fn an_activated_machine_is_refreshed_at_most_once_a_minute() {
    let mut f = facts(|s| s.hwid_limit = Some(1));
    f.machines = 1;
    f.machine_seen = Some(now() - Duration::seconds(5));
    assert!(decide(&f, &validate(Some(HASH_A), None)).writes.is_empty());
    f.machine_seen = Some(now() - Duration::minutes(2));
    assert_eq!(
        decide(&f, &validate(Some(HASH_A), None))
            .writes
            .touch_machine
            .as_deref(),
        Some(HASH_A)
    );
}
