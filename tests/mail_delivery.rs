//! The non-SMTP backends (`.eml` files, `none`, in-memory), connection
//! failures, and header injection through customer data.

mod mail_support;

use licensync::mail::{Delivery, LicenseEmail, MailService, MailUrl};
use mail_parser::MimeHeaders;
use mail_support::*;

#[tokio::test]
async fn a_closed_port_is_a_transient_failure() {
    // Bound then released: nothing listens there any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url: MailUrl = format!("smtp://127.0.0.1:{port}?tls=none").parse().unwrap();
    let mail = MailService::new(settings(url)).unwrap();

    let err = mail.send(&sample_email(1)).await.expect_err("nobody listens");
    assert!(!err.permanent, "{err}");
    assert!(err.message.contains("outbox row 1"), "{err}");
    assert!(err.message.contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn the_file_transport_creates_its_directory_and_writes_an_eml_that_parses_back() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("data/outbox");
    let url: MailUrl = format!("file://{}", outbox.display()).parse().unwrap();
    let mail = MailService::new(settings(url)).unwrap();
    assert!(outbox.is_dir(), "created by MailService::new");

    assert_eq!(mail.send(&sample_email(31)).await.unwrap(), Delivery::Sent);

    let files: Vec<_> = std::fs::read_dir(&outbox).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("eml"));
    let raw = std::fs::read(&files[0]).unwrap();
    let message = parse(&raw);
    assert_eq!(message.message_id(), Some("licensync-outbox-31@acme.test"));
    assert_eq!(message.subject(), Some("Your license key for Acme Pro Suite"));
    assert_eq!(
        message.to().and_then(|t| t.first()).and_then(|a| a.address()),
        Some("ada@customer.test")
    );
    assert!(
        message
            .content_type()
            .is_some_and(|ct| ct.subtype() == Some("alternative"))
    );
    assert!(message.body_text(0).unwrap().contains(KEY));
    assert!(message.body_html(0).unwrap().contains(KEY));
    assert_eq!(message.text_body.len(), 1);
    assert_eq!(message.html_body.len(), 1);
}

#[tokio::test]
async fn the_none_backend_queues_the_message_instead_of_sending_it() {
    let mail = MailService::new(settings("none".parse().unwrap())).unwrap();

    // Queued, not Sent: the outbox leaves the row pending for a run with mail on.
    assert_eq!(mail.send(&sample_email(1)).await.unwrap(), Delivery::Queued);

    // Queuing still renders, so bad data shows now rather than when mail is turned on.
    let bad = LicenseEmail {
        to_email: "not an address".to_owned(),
        ..sample_email(2)
    };
    assert!(mail.send(&bad).await.expect_err("invalid address").permanent);
}

#[tokio::test]
async fn a_crlf_in_the_customer_name_cannot_add_a_bcc_header() {
    let mail = MailService::in_memory(settings(MailUrl::None)).unwrap();
    let email = LicenseEmail {
        to_name: Some("Mallory\r\nBcc: victim@evil.test".to_owned()),
        ..sample_email(1)
    };

    mail.send(&email).await.unwrap();

    let sent = mail.sent();
    assert_eq!(sent.len(), 1);
    let envelope_to: Vec<String> = sent[0].envelope().to().iter().map(ToString::to_string).collect();
    assert_eq!(envelope_to, ["ada@customer.test"]);
    let raw = sent[0].formatted();
    let headers = header_lines(&raw);
    assert!(
        !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("bcc:")),
        "{headers:#?}"
    );
    let to_headers: Vec<&String> = headers.iter().filter(|h| h.starts_with("To:")).collect();
    assert_eq!(to_headers.len(), 1, "{headers:#?}");
    assert!(to_headers[0].ends_with("<ada@customer.test>"), "{}", to_headers[0]);
}

#[tokio::test]
async fn a_crlf_in_the_customer_email_is_refused_as_a_permanent_error_and_nothing_is_sent() {
    let mail = MailService::in_memory(settings(MailUrl::None)).unwrap();
    for to_email in [
        "ada@customer.test\r\nBcc: victim@evil.test",
        "ada@customer.test\r\n",
        "ada@customer.test\n",
    ] {
        let email = LicenseEmail {
            to_email: to_email.to_owned(),
            ..sample_email(9)
        };
        let err = mail.send(&email).await.expect_err(to_email);
        assert!(err.permanent, "{err}");
        assert!(err.message.contains("not a valid address"), "{err}");
        assert!(err.message.contains("outbox row 9"), "{err}");
        assert!(
            !err.message.contains('\r') && !err.message.contains('\n'),
            "one line: {err:?}"
        );
    }
    assert!(mail.sent().is_empty());
}

#[tokio::test]
async fn a_crlf_in_a_product_name_stays_inside_the_subject() {
    let mail = MailService::in_memory(settings(MailUrl::None)).unwrap();
    let email = LicenseEmail {
        product_ids: vec!["acme-pro".to_owned()],
        product_name: Some("Acme Pro\r\nBcc: victim@evil.test".to_owned()),
        ..sample_email(1)
    };

    let message = mail.render(&email).unwrap();

    let raw = message.formatted();
    let headers = header_lines(&raw);
    assert!(
        !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("bcc:")),
        "{headers:#?}"
    );
    assert_eq!(
        parse(&raw).subject(),
        Some("Your license key for Acme Pro Bcc: victim@evil.test")
    );
    assert_eq!(message.envelope().to().len(), 1);
}

#[test]
fn a_recipient_without_an_address_is_a_permanent_error() {
    let mail = MailService::in_memory(settings(MailUrl::None)).unwrap();
    let email = LicenseEmail {
        to_email: String::new(),
        ..sample_email(4)
    };
    let err = mail.render(&email).expect_err("no recipient").to_string();
    assert!(err.contains("outbox row 4 has no recipient address"), "{err}");
}
