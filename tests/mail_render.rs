//! What the license email says: expiry variants, limits, escaping, the
//! support footer, the sender setting, and template overrides.

mod mail_support;

use chrono::{TimeZone, Utc};
use licensync::domain::ExpirationStart;
use licensync::mail::{LicenseEmail, MailService, MailSettings, MailUrl, message_id, parse_from, parse_mailbox};
use mail_support::*;

struct Rendered {
    subject: String,
    text: String,
    html: String,
    raw: Vec<u8>,
}

fn render_with(settings: MailSettings, email: &LicenseEmail) -> Rendered {
    let mail = MailService::in_memory(settings).unwrap();
    let raw = mail.render(email).unwrap().formatted();
    let message = parse(&raw);
    Rendered {
        subject: message.subject().unwrap().to_owned(),
        text: message.body_text(0).unwrap().into_owned(),
        html: message.body_html(0).unwrap().into_owned(),
        raw: raw.clone(),
    }
}

fn render(email: &LicenseEmail) -> Rendered {
    render_with(settings(MailUrl::None), email)
}

#[test]
fn a_license_with_an_expiry_date_shows_the_date_in_both_parts() {
    let email = LicenseEmail {
        expires_at: Some(Utc.with_ymd_and_hms(2026, 11, 22, 23, 59, 0).unwrap()),
        ..sample_email(1)
    };
    let r = render(&email);
    assert!(r.text.contains("Valid until: 22 November 2026 (UTC)"), "{}", r.text);
    assert!(r.html.contains("22 November 2026 (UTC)"), "{}", r.html);
    assert!(!r.text.contains("does not expire"));
}

#[test]
fn a_perpetual_license_says_it_does_not_expire() {
    let email = LicenseEmail {
        expires_at: None,
        expiration_days: None,
        expiration_start: None,
        ..sample_email(1)
    };
    let r = render(&email);
    assert!(r.text.contains("Valid: for good (it does not expire)"), "{}", r.text);
    assert!(r.html.contains("does not expire"), "{}", r.html);
    assert!(!r.text.contains("Valid until"));
}

#[test]
fn an_activation_license_says_its_days_start_at_first_activation() {
    let email = LicenseEmail {
        expires_at: None,
        expiration_days: Some(30),
        expiration_start: Some(ExpirationStart::Activation),
        ..sample_email(1)
    };
    let r = render(&email);
    let expected = "30 days from the day you first activate it";
    assert!(r.text.contains(expected), "{}", r.text);
    assert!(r.html.contains(expected), "{}", r.html);
}

#[test]
fn days_from_creation_without_an_expiry_date_are_refused_rather_than_misstated() {
    let mail = MailService::in_memory(settings(MailUrl::None)).unwrap();
    let email = LicenseEmail {
        expires_at: None,
        expiration_days: Some(30),
        expiration_start: Some(ExpirationStart::Creation),
        ..sample_email(12)
    };
    let err = mail.render(&email).expect_err("inconsistent expiry").to_string();
    assert!(err.contains("outbox row 12") && err.contains("expires_at"), "{err}");
}

#[test]
fn the_email_names_the_stripe_product_and_words_its_limits() {
    let one = LicenseEmail {
        product_ids: vec!["acme-pro".to_owned()],
        product_name: Some("Acme Pro".to_owned()),
        ..sample_email(1)
    };
    let r = render(&one);
    assert_eq!(r.subject, "Your license key for Acme Pro");
    assert!(
        r.text.lines().any(|l| l.trim_end() == "Product: Acme Pro"),
        "{}",
        r.text
    );
    // The license product id is for the license server, not the customer.
    assert!(!r.text.contains("acme-pro"), "{}", r.text);
    assert!(r.text.contains("Devices: up to 6 at a time"), "{}", r.text);
    assert!(
        r.text.contains("IP addresses: up to 5 different addresses"),
        "{}",
        r.text
    );
    assert!(r.text.contains("Quantity: 3"), "{}", r.text);
    assert!(r.html.contains("<td>Acme Pro</td>"), "{}", r.html);
    assert!(r.html.contains("up to 6 at a time"), "{}", r.html);

    // No name kept (a license issued before names were): the ids stand in.
    let unnamed = LicenseEmail {
        product_ids: vec!["a".to_owned(), "b".to_owned(), "c".to_owned()],
        product_name: None,
        ..sample_email(1)
    };
    assert_eq!(render(&unnamed).subject, "Your license key for a, b and c");
    let blank = LicenseEmail {
        product_ids: vec!["acme-pro".to_owned()],
        product_name: Some("  ".to_owned()),
        ..sample_email(1)
    };
    assert_eq!(render(&blank).subject, "Your license key for acme-pro");
}

#[test]
fn a_zero_limit_reads_no_limit_and_one_reads_naturally() {
    let email = LicenseEmail {
        hwid_limit: Some(0),
        ip_limit: Some(0),
        ..sample_email(1)
    };
    let r = render(&email);
    assert!(r.text.contains("Devices: no limit"), "{}", r.text);
    assert!(r.text.contains("IP addresses: no limit"), "{}", r.text);
    assert!(!r.text.contains(": 0"), "{}", r.text);
    let single = render(&LicenseEmail {
        hwid_limit: Some(1),
        ip_limit: Some(1),
        ..sample_email(1)
    });
    assert!(single.text.contains("Devices: 1 at a time"), "{}", single.text);
    assert!(single.text.contains("IP addresses: 1 address"), "{}", single.text);
}

#[test]
fn a_subscription_email_says_the_key_renews_with_it_and_stays_the_same() {
    let r = render(&LicenseEmail {
        subscription: true,
        ..sample_email(1)
    });
    assert!(
        r.text
            .contains("Valid until: 22 November 2026 (UTC), and renewed with your subscription"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("the same key stays valid for the new period"),
        "{}",
        r.text
    );
    assert!(
        r.html.contains("the same key stays valid for the new period"),
        "{}",
        r.html
    );
    let one_time = render(&sample_email(1));
    assert!(!one_time.text.contains("subscription"), "{}", one_time.text);
}

#[test]
fn limits_that_are_not_set_are_left_out() {
    let email = LicenseEmail {
        ip_limit: None,
        hwid_limit: None,
        quantity: 1,
        ..sample_email(1)
    };
    let r = render(&email);
    for absent in ["Devices", "IP addresses", "Quantity"] {
        assert!(!r.text.contains(absent), "{absent} in {}", r.text);
        assert!(!r.html.contains(absent), "{absent} in {}", r.html);
    }
    assert!(r.text.contains(KEY));
}

#[test]
fn a_resend_says_it_was_requested() {
    let r = render(&LicenseEmail {
        resend: true,
        ..sample_email(1)
    });
    assert!(r.text.contains("As requested, here is your license key"), "{}", r.text);
    assert!(!render(&sample_email(1)).text.contains("As requested"));
}

#[test]
fn a_reissued_key_says_it_replaces_the_old_one_which_no_longer_works() {
    let r = render(&LicenseEmail {
        reissued: true,
        ..sample_email(1)
    });
    for part in [&r.text, &r.html] {
        assert!(part.contains("has been replaced"), "{part}");
        assert!(part.contains("old key no longer works"), "{part}");
        assert!(part.contains(KEY), "{part}");
    }
    assert!(r.subject.starts_with("Your new license key"), "{}", r.subject);
    let plain = render(&sample_email(1));
    assert!(!plain.text.contains("replaced") && !plain.subject.contains("new license key"));
}

#[test]
fn the_customer_name_is_html_escaped_in_the_html_part_and_kept_verbatim_in_the_text() {
    let email = LicenseEmail {
        to_name: Some("<script>alert(1)</script> & Co".to_owned()),
        ..sample_email(1)
    };
    let r = render(&email);
    assert!(
        r.html
            .contains("Hello &lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; Co,"),
        "{}",
        r.html
    );
    assert!(!r.html.contains("<script>"), "{}", r.html);
    assert!(r.text.contains("Hello <script>alert(1)</script> & Co,"), "{}", r.text);
}

#[test]
fn the_support_address_is_the_reply_to_and_appears_in_the_footer() {
    let mut with_support = settings(MailUrl::None);
    with_support.support = Some(parse_mailbox("LICENSYNC_MAIL_SUPPORT", "Acme Support <help@acme.test>").unwrap());
    let r = render_with(with_support, &sample_email(1));
    let message = parse(&r.raw);
    let reply_to = message.reply_to().and_then(|a| a.first()).expect("a Reply-To header");
    assert_eq!(reply_to.address(), Some("help@acme.test"));
    assert!(
        r.text.contains("Questions? Write to Acme Support <help@acme.test>"),
        "{}",
        r.text
    );
    assert!(r.html.contains("mailto:help@acme.test"), "{}", r.html);
    assert!(
        r.text.contains("Acme Licenses"),
        "the sender name signs the email: {}",
        r.text
    );

    let without = render(&sample_email(1));
    assert!(parse(&without.raw).reply_to().is_none());
    assert!(!without.text.contains("Questions?"), "{}", without.text);
}

#[test]
fn the_from_setting_accepts_a_named_mailbox_and_a_bad_one_names_the_setting() {
    let from = parse_from("Acme Licenses <licenses@acme.test>").unwrap();
    assert_eq!(from.name.as_deref(), Some("Acme Licenses"));
    assert_eq!(from.email.to_string(), "licenses@acme.test");
    assert_eq!(parse_from("licenses@localhost").unwrap().email.domain(), "localhost");

    let err = parse_from("Acme Licenses").unwrap_err().to_string();
    assert!(err.contains("LICENSYNC_MAIL_FROM / --mail-from"), "{err}");
    assert!(err.contains("Name <address@example.com>"), "{err}");
}

#[test]
fn the_message_id_depends_only_on_the_outbox_row_and_the_sender_domain() {
    assert_eq!(message_id(42, "acme.test"), "<licensync-outbox-42@acme.test>");
    let mail = MailService::in_memory(settings(MailUrl::None)).unwrap();
    let first = mail.render(&sample_email(42)).unwrap();
    let again = mail
        .render(&LicenseEmail {
            resend: true,
            ..sample_email(42)
        })
        .unwrap();
    let id = |m: &lettre::Message| parse(&m.formatted()).message_id().map(str::to_owned);
    assert_eq!(id(&first).as_deref(), Some("licensync-outbox-42@acme.test"));
    assert_eq!(id(&first), id(&again));
    assert_ne!(id(&first), id(&mail.render(&sample_email(43)).unwrap()));
}

#[test]
fn templates_in_the_override_directory_replace_the_defaults_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("license.subject.j2"),
        "[{{ products_display }}] key for {{ customer_email }}",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("license.txt.j2"),
        "KEY={{ license_key }} / {{ expiry.kind }}\n",
    )
    .unwrap();
    let mut overridden = settings(MailUrl::None);
    overridden.templates_dir = Some(dir.path().to_owned());

    let r = render_with(overridden, &sample_email(1));

    assert_eq!(r.subject, "[Acme Pro Suite] key for ada@customer.test");
    assert_eq!(r.text.trim_end(), format!("KEY={KEY} / date"));
    // No license.html.j2 in the directory: the built-in one is used.
    assert!(r.html.contains("<code") && r.html.contains(KEY), "{}", r.html);
}

#[test]
fn an_override_template_that_fails_to_render_is_an_error_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("license.html.j2");
    std::fs::write(&file, "<p>{{ licence_key }}</p>").unwrap(); // misspelt
    let mut overridden = settings(MailUrl::None);
    overridden.templates_dir = Some(dir.path().to_owned());
    let mail = MailService::in_memory(overridden).unwrap();

    let err = mail
        .render(&sample_email(1))
        .expect_err("undefined variable")
        .to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("failed to render"), "{err}");
}

#[test]
fn an_override_template_that_does_not_parse_is_refused_at_startup_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("license.txt.j2");
    std::fs::write(&file, "{% if license_key %}unclosed").unwrap();
    let mut overridden = settings(MailUrl::None);
    overridden.templates_dir = Some(dir.path().to_owned());

    let err = format!("{:#}", MailService::new(overridden).err().expect("a syntax error"));
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn a_templates_directory_that_does_not_exist_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let mut overridden = settings(MailUrl::None);
    overridden.templates_dir = Some(dir.path().join("missing"));

    let err = format!("{:#}", MailService::new(overridden).err().expect("missing directory"));
    assert!(
        err.contains("mail templates directory") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn the_default_sender_parses() {
    let from = parse_from(licensync::mail::DEFAULT_FROM).unwrap();
    let email = render_with(MailSettings::new(MailUrl::None, from), &sample_email(3));
    assert_eq!(parse(&email.raw).message_id(), Some("licensync-outbox-3@localhost"));
}
