//! Shared helpers of the `mail_*` tests: a sample license email, settings,
//! parsing a delivered message back, and a real SMTP server on loopback,
//! running inside the test process (`smtp_server.rs` beside this file).
#![allow(dead_code)] // each test file uses its own subset

mod smtp_server;
mod smtp_session;

use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use licensync::mail::{LicenseEmail, MailSettings, MailUrl, parse_from};
use smtp_server::Server;

pub const FROM: &str = "Acme Licenses <licenses@acme.test>";
pub const KEY: &str = "ABCDE-FGHJK-MNPQR-STUVW-XYZ23";

/// A two-product license (one Stripe product) with limits and a date, as the outbox would hand it over.
pub fn sample_email(outbox_id: i64) -> LicenseEmail {
    LicenseEmail {
        outbox_id,
        to_email: "ada@customer.test".to_owned(),
        to_name: Some("Ada Lovelace".to_owned()),
        license_key: KEY.to_owned(),
        product_ids: vec!["acme-pro".to_owned(), "acme-cloud".to_owned()],
        product_name: Some("Acme Pro Suite".to_owned()),
        quantity: 3,
        ip_limit: Some(5),
        hwid_limit: Some(6),
        expires_at: Some(Utc.with_ymd_and_hms(2026, 11, 22, 14, 5, 0).unwrap()),
        expiration_days: None,
        expiration_start: None,
        resend: false,
        reissued: false,
        subscription: false,
    }
}

pub fn settings(url: MailUrl) -> MailSettings {
    MailSettings::new(url, parse_from(FROM).unwrap())
}

/// Parses a whole RFC 5322 message with an independent parser.
pub fn parse(raw: &[u8]) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(raw)
        .expect("a parseable RFC 5322 message")
}

/// The header lines of a raw message (up to the first empty line), unfolded.
pub fn header_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        match lines.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => last.push_str(line),
            _ => lines.push(line.to_owned()),
        }
    }
    lines
}

/// One message as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The AUTH user name, when the client authenticated.
    pub login: Option<String>,
    /// Whether the session was encrypted (STARTTLS) when the message came.
    pub tls: bool,
    pub raw: Vec<u8>,
}

/// What the server saw of its clients' connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Connections accepted (refused ones, `refuse_first`, not counted).
    pub connections: u32,
    /// Connections open now.
    pub open: u32,
    /// The most connections open at once.
    pub max_open: u32,
    /// The most messages in DATA at once (from the end of their content to
    /// its answer): with `delay_data`, how many messages the client really
    /// had in flight.
    pub max_in_data: u32,
}

pub struct SinkTls {
    /// PEM of the server's self-signed certificate, to pass as `tls_ca`.
    pub ca_file: PathBuf,
}

/// A real SMTP server on a loopback port (see [`smtp_server`]), running in
/// this process; stopped on drop, which closes its port and its sessions.
pub struct SmtpSink {
    server: Server,
    pub port: u16,
    pub tls: Option<SinkTls>,
    /// Holds the certificate file.
    dir: tempfile::TempDir,
}

/// How to start an [`SmtpSink`] beyond the presets; every behaviour is off
/// by default (no TLS, no AUTH, a free port).
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// STARTTLS required, with a self-signed certificate for 127.0.0.1.
    pub tls: bool,
    /// AUTH (PLAIN or LOGIN) required with this user and password (offered
    /// after STARTTLS when `tls`).
    pub auth: Option<(String, String)>,
    /// The first N messages are refused at DATA with 451 4.3.0.
    pub defer_first: u32,
    /// The first N connections are greeted with 421 4.3.2 and closed.
    pub refuse_first: u32,
    /// The first N messages are stored, then the connection is dropped
    /// instead of answering 250.
    pub drop_after_data: u32,
    /// Each DATA is answered this much later.
    pub delay_data: Option<std::time::Duration>,
    /// Listen on this port instead of a free one.
    pub port: Option<u16>,
}

pub const SINK_USER: &str = "licensync";
/// Characters that must be percent-encoded in the URL, to prove decoding.
pub const SINK_PASSWORD: &str = "p@ss w:rd/42";
pub const SINK_PASSWORD_ENCODED: &str = "p%40ss%20w%3Ard%2F42";

impl SmtpSink {
    /// STARTTLS required (self-signed certificate for 127.0.0.1) and AUTH
    /// required as [`SINK_USER`] / [`SINK_PASSWORD`].
    pub fn start_tls_with_auth() -> Self {
        Self::start(true, 0)
    }

    /// Like [`SmtpSink::start_tls_with_auth`], but the first `refusals`
    /// messages are answered `451 4.3.0` at DATA (a busy server).
    pub fn start_tls_with_auth_deferring_first(refusals: u32) -> Self {
        Self::start(true, refusals)
    }

    /// No TLS and no AUTH: a local relay.
    pub fn start_plain() -> Self {
        Self::start(false, 0)
    }

    /// The production URL for this sink: STARTTLS trusting its certificate,
    /// AUTH with the right credentials.
    pub fn tls_url(&self) -> MailUrl {
        let ca = &self.tls.as_ref().expect("a TLS sink").ca_file;
        format!(
            "smtp://{SINK_USER}:{SINK_PASSWORD_ENCODED}@127.0.0.1:{}?tls_ca={}",
            self.port,
            ca.display()
        )
        .parse()
        .unwrap()
    }

    fn start(tls: bool, refusals: u32) -> Self {
        Self::start_with(SinkOptions {
            tls,
            auth: tls.then(|| (SINK_USER.to_owned(), SINK_PASSWORD.to_owned())),
            defer_first: refusals,
            ..SinkOptions::default()
        })
    }

    /// A sink with the behaviours of `options` (see [`SinkOptions`]).
    pub fn start_with(options: SinkOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // std sets SO_REUSEADDR: a sink can come back on the port of one
        // that was just dropped.
        let listener = std::net::TcpListener::bind(("127.0.0.1", options.port.unwrap_or(0)))
            .unwrap_or_else(|e| panic!("the SMTP test server cannot listen on {:?}: {e}", options.port));
        let port = listener.local_addr().unwrap().port();
        let mut sink_tls = None;
        let mut acceptor = None;
        if options.tls {
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
            let cert_file = dir.path().join("cert.pem");
            std::fs::write(&cert_file, cert.pem()).unwrap();
            acceptor = Some(smtp_server::tls_acceptor(
                cert.der().clone(),
                signing_key.serialize_der(),
            ));
            sink_tls = Some(SinkTls { ca_file: cert_file });
        }
        let config = smtp_server::Config {
            tls: acceptor,
            auth: options.auth,
            delay_data: options.delay_data,
        };
        let state = smtp_server::State {
            refusals_left: options.refuse_first,
            deferrals_left: options.defer_first,
            drops_left: options.drop_after_data,
            ..smtp_server::State::default()
        };
        SmtpSink {
            server: Server::start(listener, config, state),
            port,
            tls: sink_tls,
            dir,
        }
    }

    /// A plain URL for a sink without TLS or AUTH (a local relay).
    pub fn plain_url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// Connections and concurrency so far (see [`SinkStats`]).
    pub fn stats(&self) -> SinkStats {
        self.server.state().stats
    }

    /// The messages the server accepted, in order of arrival. Each is
    /// stored before its 250 is sent.
    pub fn received(&self) -> Vec<Received> {
        self.server.state().received.clone()
    }
}
