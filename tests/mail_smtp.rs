//! License email through the production SMTP transport to a real SMTP server
//! on loopback (see `mail_support/smtp_server.rs`): STARTTLS, AUTH,
//! what arrives, and how refusals are classified.

mod mail_support;

use licensync::mail::{Delivery, LicenseEmail, MailService, MailUrl};
use mail_parser::MimeHeaders;
use mail_support::*;

fn tls_url(sink: &SmtpSink, password_encoded: &str) -> MailUrl {
    let ca = &sink.tls.as_ref().expect("a TLS sink").ca_file;
    format!(
        "smtp://{SINK_USER}:{password_encoded}@127.0.0.1:{}?tls_ca={}",
        sink.port,
        ca.display()
    )
    .parse()
    .unwrap()
}

fn service(url: MailUrl) -> MailService {
    MailService::new(settings(url)).unwrap()
}

#[tokio::test]
async fn a_license_email_goes_through_starttls_and_auth_to_a_real_server_and_reads_back_intact() {
    let sink = SmtpSink::start_tls_with_auth();
    let mail = service(tls_url(&sink, SINK_PASSWORD_ENCODED));

    let delivery = mail.send(&sample_email(42)).await.expect("delivered");
    assert_eq!(delivery, Delivery::Sent);

    let received = sink.received();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.rcpt_tos, ["ada@customer.test"]);
    assert_eq!(got.mail_from, "licenses@acme.test");
    assert_eq!(
        got.login.as_deref(),
        Some(SINK_USER),
        "authenticated with the percent-decoded credentials"
    );
    assert!(got.tls, "the message travelled over STARTTLS");

    let message = parse(&got.raw);
    assert_eq!(message.subject(), Some("Your license key for Acme Pro Suite"));
    assert_eq!(message.message_id(), Some("licensync-outbox-42@acme.test"));
    let to = message.to().and_then(|to| to.first()).expect("a To header");
    assert_eq!(to.address(), Some("ada@customer.test"));
    assert_eq!(to.name(), Some("Ada Lovelace"));
    let from = message.from().and_then(|f| f.first()).expect("a From header");
    assert_eq!(
        (from.name(), from.address()),
        (Some("Acme Licenses"), Some("licenses@acme.test"))
    );
    assert!(
        message
            .content_type()
            .is_some_and(|ct| ct.ctype() == "multipart" && ct.subtype() == Some("alternative"))
    );

    let text = message.body_text(0).expect("a text part");
    let html = message.body_html(0).expect("an HTML part");
    assert_eq!(message.text_body.len(), 1);
    assert_eq!(message.html_body.len(), 1);
    assert_ne!(message.text_body, message.html_body, "text and HTML are distinct parts");
    for part in [&text, &html] {
        assert!(part.contains(KEY), "{part}");
        assert!(
            part.contains("Acme Pro Suite") && part.contains("up to 6 at a time"),
            "{part}"
        );
    }
    assert!(html.contains("<code"), "{html}");
    assert!(!text.contains("<code"), "{text}");
}

#[tokio::test]
async fn sending_the_same_outbox_row_again_repeats_its_message_id() {
    let sink = SmtpSink::start_tls_with_auth();
    let mail = service(tls_url(&sink, SINK_PASSWORD_ENCODED));

    mail.send(&sample_email(7)).await.unwrap();
    mail.send(&sample_email(7)).await.unwrap();
    mail.send(&sample_email(8)).await.unwrap();

    let ids: Vec<String> = sink
        .received()
        .iter()
        .map(|r| parse(&r.raw).message_id().expect("a Message-ID").to_owned())
        .collect();
    assert_eq!(
        ids,
        [
            "licensync-outbox-7@acme.test",
            "licensync-outbox-7@acme.test",
            "licensync-outbox-8@acme.test"
        ]
    );
}

#[tokio::test]
async fn a_recipient_refused_with_550_is_a_permanent_failure() {
    let sink = SmtpSink::start_tls_with_auth();
    let mail = service(tls_url(&sink, SINK_PASSWORD_ENCODED));
    let email = LicenseEmail {
        to_email: "reject-me@customer.test".to_owned(),
        ..sample_email(1)
    };

    let err = mail.send(&email).await.expect_err("refused");
    assert!(err.permanent, "{err}");
    assert!(err.message.contains("550"), "{err}");
    assert!(err.message.contains("outbox row 1"), "{err}");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn a_server_deferring_with_451_is_a_transient_failure() {
    let sink = SmtpSink::start_tls_with_auth();
    let mail = service(tls_url(&sink, SINK_PASSWORD_ENCODED));
    let email = LicenseEmail {
        to_email: "defer-me@customer.test".to_owned(),
        ..sample_email(2)
    };

    let err = mail.send(&email).await.expect_err("deferred");
    assert!(!err.permanent, "{err}");
    assert!(err.message.contains("451"), "{err}");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn a_wrong_password_is_a_transient_failure_that_points_at_the_setting_without_showing_it() {
    let sink = SmtpSink::start_tls_with_auth();
    let wrong = "not-the-Password-9";
    let mail = service(tls_url(&sink, wrong));

    let err = mail.send(&sample_email(3)).await.expect_err("authentication fails");
    assert!(!err.permanent, "a bad password is not the message's fault: {err}");
    assert!(err.message.contains("535"), "{err}");
    assert!(err.message.contains("LICENSYNC_MAIL_URL"), "{err}");
    assert!(!err.message.contains(wrong), "{err}");
    assert!(!format!("{err:?}").contains(wrong), "{err:?}");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn a_certificate_the_transport_does_not_trust_stops_the_session_before_anything_is_sent() {
    let sink = SmtpSink::start_tls_with_auth();
    // The same server, without tls_ca: its self-signed certificate is unknown.
    let url: MailUrl = format!("smtp://{SINK_USER}:{SINK_PASSWORD_ENCODED}@127.0.0.1:{}", sink.port)
        .parse()
        .unwrap();
    let mail = service(url);

    let err = mail.send(&sample_email(4)).await.expect_err("TLS verification fails");
    assert!(!err.permanent, "{err}");
    assert!(err.message.contains("tls_ca"), "{err}");
    assert!(!err.message.contains(SINK_PASSWORD), "{err}");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn a_relay_without_starttls_is_refused_unless_the_url_says_tls_none() {
    let sink = SmtpSink::start_plain();

    let default_url: MailUrl = format!("smtp://127.0.0.1:{}", sink.port).parse().unwrap();
    let err = service(default_url)
        .send(&sample_email(5))
        .await
        .expect_err("STARTTLS is required");
    assert!(!err.permanent, "{err}");
    assert!(err.message.contains("?tls=none for a local relay"), "{err}");
    assert!(sink.received().is_empty(), "nothing was sent in clear");

    let plain_url: MailUrl = format!("smtp://127.0.0.1:{}?tls=none", sink.port).parse().unwrap();
    let delivery = service(plain_url)
        .send(&sample_email(5))
        .await
        .expect("sent in clear when asked");
    assert_eq!(delivery, Delivery::Sent);
    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert!(!received[0].tls);
    assert_eq!(received[0].login, None);
}

#[tokio::test]
async fn a_customer_name_carrying_a_bcc_header_reaches_only_the_customer() {
    let sink = SmtpSink::start_tls_with_auth();
    let mail = service(tls_url(&sink, SINK_PASSWORD_ENCODED));
    let email = LicenseEmail {
        to_name: Some("Mallory\r\nBcc: victim@evil.test".to_owned()),
        ..sample_email(6)
    };

    mail.send(&email).await.expect("delivered to the customer");

    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_tos, ["ada@customer.test"]);
    let headers = header_lines(&received[0].raw);
    assert!(
        !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("bcc:")),
        "{headers:#?}"
    );
    let message = parse(&received[0].raw);
    let to = message.to().expect("a To header");
    assert_eq!(to.as_list().map(<[_]>::len), Some(1));
    assert_eq!(to.first().unwrap().address(), Some("ada@customer.test"));
    // The attempt survives only as harmless text inside the display name.
    assert_eq!(to.first().unwrap().name(), Some("Mallory Bcc: victim@evil.test"));
}

#[tokio::test]
async fn messages_sent_one_after_another_share_one_pooled_connection() {
    let sink = SmtpSink::start_tls_with_auth();
    let mail = service(tls_url(&sink, SINK_PASSWORD_ENCODED));

    for n in 0..5 {
        assert_eq!(mail.send(&sample_email(n)).await.unwrap(), Delivery::Sent);
    }

    assert_eq!(sink.received().len(), 5);
    let stats = sink.stats();
    assert_eq!(
        stats.connections, 1,
        "one STARTTLS and AUTH for five messages: {stats:?}"
    );
    // The connection stays open in the pool for the next pass.
    assert_eq!(stats.open, 1, "{stats:?}");
}

#[tokio::test]
async fn a_failed_message_does_not_leave_its_connection_in_the_pool_for_the_next() {
    let sink = SmtpSink::start_tls_with_auth();
    let mail = service(tls_url(&sink, SINK_PASSWORD_ENCODED));
    let refused = LicenseEmail {
        to_email: "reject-me@customer.test".to_owned(),
        ..sample_email(1)
    };

    assert!(mail.send(&refused).await.expect_err("refused").permanent);
    assert_eq!(mail.send(&sample_email(2)).await.unwrap(), Delivery::Sent);
    assert_eq!(mail.send(&sample_email(3)).await.unwrap(), Delivery::Sent);

    let ids: Vec<String> = sink
        .received()
        .iter()
        .map(|r| parse(&r.raw).message_id().expect("a Message-ID").to_owned())
        .collect();
    assert_eq!(ids, ["licensync-outbox-2@acme.test", "licensync-outbox-3@acme.test"]);
    // lettre closes a session that failed mid-transaction; the next one is new
    // and is then reused.
    assert_eq!(sink.stats().connections, 2, "{:?}", sink.stats());
}
