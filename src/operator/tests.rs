//! The operator commands' decisions, one choice of the module doc per test.

use super::*;
use crate::domain::HeldStatus;
use crate::error::Failure;
use crate::tests::fixtures::*;

/// `si_1`'s license as the first run issued it on day 1 (2 seats, day 30 + 24 h).
fn license() -> License {
    issued(&World::new(vec![sub_item().fact()]), day(1)).remove(0)
}

fn request(command: Command) -> Request {
    Request {
        command,
        reason: Some("ticket 12".to_owned()),
        by: "alice".to_owned(),
        now: day(2),
        write_back: false,
    }
}

fn refusal(license: &License, request: &Request) -> String {
    let error = decide(license, request).expect_err("refused");
    assert!(
        matches!(error.downcast_ref::<Failure>(), Some(Failure::Usage(_))),
        "a refusal is a usage error (exit 2): {error:#}"
    );
    format!("{error:#}")
}

#[test]
fn each_command_writes_the_row_a_run_would_write_and_a_ledger_row_with_reason_and_operator() {
    let pin = Command::Pin {
        hwid_limit: Some(50),
        ip_limit: None,
        expires_at: Some(day(90)),
    };
    for (command, status, seats, expiry) in [
        (Command::Revoke, LicenseStatus::Revoked, Some(2), day(30) + hours(24)),
        (Command::Suspend, LicenseStatus::Suspended, Some(2), day(30) + hours(24)),
        (pin, LicenseStatus::Active, Some(50), day(90)),
    ] {
        let write = decide(&license(), &request(command.clone())).unwrap();
        assert_eq!(
            (write.state.status, write.state.hwid_limit, write.state.expires_at),
            (status, seats, Some(expiry)),
            "{command:?}"
        );
        let o = write.operator_override.as_ref().unwrap();
        assert_eq!((o.reason.as_str(), o.by.as_str(), o.at), ("ticket 12", "alice", day(2)));
        assert_eq!(o.stripe, HeldValues::of(&license().state()), "Stripe's side as it was");
        assert_eq!(
            (write.reason.as_deref(), write.operator.as_str()),
            (Some("ticket 12"), "alice")
        );
        assert_eq!(write.after["override"]["reason"], "ticket 12");
        // The next run on the same Stripe state changes nothing.
        let mut held = license();
        operate(&mut held, command, day(2)).unwrap();
        assert!(
            World::new(vec![sub_item().fact()]).plan(&[held], day(2)).is_empty(),
            "{:?}",
            write.action
        );
    }
}

#[test]
fn overrides_add_up_and_take_the_latest_reason() {
    let mut l = license();
    operate(&mut l, Command::Suspend, day(2)).unwrap();
    let mut request = request(pin_seats(9));
    request.reason = Some("enterprise deal".into());
    let write = decide(&l, &request).unwrap();
    let o = write.operator_override.unwrap();
    assert_eq!((o.status, o.hwid_limit), (Some(HeldStatus::Suspended), Some(9)));
    assert_eq!(o.reason, "enterprise deal");
    assert_eq!(write.state.status, LicenseStatus::Suspended);
    assert_eq!(
        o.stripe.status,
        LicenseStatus::Active,
        "the first override's view of Stripe stays"
    );
}

#[test]
fn a_revoked_license_cannot_be_suspended_pinned_or_reissued() {
    let mut l = license();
    operate(&mut l, Command::Revoke, day(2)).unwrap();
    for command in [
        Command::Suspend,
        pin_seats(5),
        Command::Reissue {
            new_key: "NEWKY-AAAAA-BBBBB-CCCCC-DDDDD".into(),
        },
    ] {
        let message = refusal(&l, &request(command));
        assert!(
            message.contains("revoked") && message.contains("nothing was changed"),
            "{message}"
        );
    }
    assert!(refusal(&l, &request(pin_seats(5))).contains("licenses release"));
}

#[test]
fn commands_that_would_change_nothing_are_refused() {
    let mut l = license();
    assert!(refusal(&l, &request(Command::Release)).contains("no override to release"));
    operate(&mut l, Command::Revoke, day(2)).unwrap();
    assert!(refusal(&l, &request(Command::Revoke)).contains("already revoked"));
    let mut s = license();
    operate(&mut s, Command::Suspend, day(2)).unwrap();
    assert!(refusal(&s, &request(Command::Suspend)).contains("already suspended"));
}

#[test]
fn a_reason_is_required_but_for_release_and_a_pin_must_pin_something() {
    let mut no_reason = request(Command::Revoke);
    no_reason.reason = Some("   ".into());
    assert!(refusal(&license(), &no_reason).contains("--reason"));
    let nothing = Command::Pin {
        hwid_limit: None,
        ip_limit: None,
        expires_at: None,
    };
    assert!(refusal(&license(), &request(nothing)).contains("--hwid-limit"));
    let mut l = license();
    operate(&mut l, Command::Suspend, day(2)).unwrap();
    let mut release = request(Command::Release);
    release.reason = None;
    assert!(decide(&l, &release).is_ok());
}

#[test]
fn release_restores_what_stripe_last_asked_and_the_clock() {
    let mut l = license();
    operate(&mut l, pin_seats(50), day(2)).unwrap();
    let mut later = request(Command::Release);
    later.now = day(45);
    let write = decide(&l, &later).unwrap();
    assert_eq!(write.operator_override, None);
    assert_eq!(write.state.hwid_limit, Some(2));
    assert_eq!(
        write.state.status,
        LicenseStatus::Expired,
        "Stripe's expiry passed meanwhile"
    );
}

#[test]
fn a_reissue_changes_only_the_key_keeps_the_override_and_mails_the_new_key() {
    let mut l = license();
    operate(&mut l, pin_seats(50), day(2)).unwrap();
    let write = decide(
        &l,
        &request(Command::Reissue {
            new_key: "NEWKY-AAAAA-BBBBB-CCCCC-DDDDD".into(),
        }),
    )
    .unwrap();
    assert_eq!(write.state, l.state());
    assert_eq!(write.operator_override, l.operator_override);
    assert_eq!(write.new_key.as_deref(), Some("NEWKY-AAAAA-BBBBB-CCCCC-DDDDD"));
    assert_eq!(write.email, Some(crate::domain::EmailKind::KeyReissued));
    assert_eq!(write.before["key"], l.key.as_str());
    assert_eq!(write.write_back, None, "write-back is off");
    let on = Request {
        write_back: true,
        ..request(Command::Reissue {
            new_key: "NEWKY-AAAAA-BBBBB-CCCCC-DDDDD".into(),
        })
    };
    let to = decide(&l, &on)
        .unwrap()
        .write_back
        .expect("the new key is written back");
    assert_eq!(to.target_id, l.grant.source_id, "onto the subscription item");
    let suspend = Request {
        write_back: true,
        ..request(Command::Suspend)
    };
    assert_eq!(
        decide(&l, &suspend).unwrap().write_back,
        None,
        "only a new key is written"
    );
}

#[test]
fn changes_lists_the_fields_that_moved_in_a_fixed_order() {
    let before = license();
    let mut after = before.clone();
    operate(&mut after, Command::Revoke, day(2)).unwrap();
    let fields: Vec<&str> = changes(&before, &after).iter().map(|c| c.field).collect();
    assert_eq!(fields, ["status", "override"]);
}

#[test]
fn the_operator_is_the_flag_else_the_os_user() {
    assert_eq!(operator_name(Some(" bob ")).unwrap(), "bob");
    assert!(!operator_name(None).unwrap().is_empty());
}

#[test]
fn a_summary_says_what_an_override_holds_why_and_by_whom() {
    let mut l = license();
    assert_eq!(summary(l.operator_override.as_ref()), "none");
    operate(&mut l, Command::Suspend, day(2)).unwrap();
    operate(&mut l, pin_seats(50), day(2)).unwrap();
    assert_eq!(
        summary(l.operator_override.as_ref()),
        "suspended, hwid_limit 50 (\"support ticket 7\", by alice)"
    );
}
