//! License email: from one outbox row's [`LicenseEmail`] to a delivered
//! message. Owns the mail settings (`LICENSYNC_MAIL_URL`,
//! `LICENSYNC_MAIL_FROM`), the templates, the transports (SMTP, `.eml` files,
//! in-memory for tests, none) and the classification of a failure as
//! transient (retry later) or permanent (give the row up). The outbox table
//! itself (claiming rows, attempts, backoff, marking sent) lives with the
//! store, which calls [`MailService::send`] after its commit.
//!
//! Security rules enforced here: SMTP is encrypted (STARTTLS required, or
//! implicit TLS) unless the operator writes `tls=none`, so credentials only
//! cross the wire in clear when that was asked for; every header that holds
//! customer data is built through lettre's typed builders; the SMTP password
//! never reaches `Debug`, `Display` or an error.

mod render;
mod url;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, FileTransport, Message, Tokio1Executor, Transport};

pub use self::render::{HTML_TEMPLATE, LicenseEmail, SUBJECT_TEMPLATE, TEXT_TEMPLATE, message_id};
pub use self::url::{DEFAULT_SMTP_CONCURRENCY, MAX_SMTP_CONCURRENCY, MailUrl, MailUrlError, SmtpTls};
use crate::secret::ExposeSecret;

/// The sender used when `LICENSYNC_MAIL_FROM` is unset (cli.md).
pub const DEFAULT_FROM: &str = "licenses@localhost";

/// Messages rendered and written at once by the transports that talk to no
/// server (`.eml` files, memory, none): enough to render on two cores while
/// other files are written. Wider was no faster (8 and 32 were measured with
/// examples/outbox_throughput): writers only queue on the directory's lock,
/// and more messages are sent but not yet marked when the sender is killed.
pub const LOCAL_CONCURRENCY: usize = 4;

/// Everything the mail module is configured with.
#[derive(Debug, Clone)]
pub struct MailSettings {
    pub url: MailUrl,
    /// `LICENSYNC_MAIL_FROM`, e.g. `Acme Licenses <licenses@acme.test>`; its
    /// display name is the sender name the templates show.
    pub from: Mailbox,
    /// Shown in the footer and used as `Reply-To` when set.
    pub support: Option<Mailbox>,
    /// A directory whose `license.subject.j2`, `license.txt.j2` and
    /// `license.html.j2` replace the built-in templates of the same name
    /// (each one optional).
    pub templates_dir: Option<PathBuf>,
}

impl MailSettings {
    pub fn new(url: MailUrl, from: Mailbox) -> Self {
        MailSettings {
            url,
            from,
            support: None,
            templates_dir: None,
        }
    }
}

/// Parses a mailbox setting such as `LICENSYNC_MAIL_FROM`
/// (`Acme Licenses <licenses@acme.test>` or `licenses@acme.test`); the error
/// names `setting` and shows the accepted forms.
pub fn parse_mailbox(setting: &str, value: &str) -> anyhow::Result<Mailbox> {
    value.trim().parse::<Mailbox>().map_err(|e| {
        anyhow::anyhow!(
            "invalid {setting}: {value:?} is not an email address ({e}); \
             write `Name <address@example.com>` or `address@example.com`"
        )
    })
}

/// [`parse_mailbox`] for `LICENSYNC_MAIL_FROM` / `--mail-from`.
pub fn parse_from(value: &str) -> anyhow::Result<Mailbox> {
    parse_mailbox("LICENSYNC_MAIL_FROM / --mail-from", value)
}

/// The delivery backend, one per [`MailUrl`] form plus an in-memory one for tests.
pub enum Mailer {
    Smtp(Box<SmtpMailer>),
    File(FileTransport),
    Memory(Arc<Mutex<Vec<Message>>>),
    None,
}

/// The SMTP transport: a pool of up to `concurrency` connections, kept open
/// between messages (and reused by the next pass while idle for less than a
/// minute). Built at the first message, because the pool starts its
/// housekeeping task on the async runtime, which a service made outside one
/// (say, to check the settings) does not have.
pub struct SmtpMailer {
    builder: AsyncSmtpTransportBuilder,
    transport: OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
    concurrency: usize,
}

impl SmtpMailer {
    fn transport(&self) -> &AsyncSmtpTransport<Tokio1Executor> {
        self.transport.get_or_init(|| {
            let pool = PoolConfig::new().max_size(u32::try_from(self.concurrency).unwrap_or(u32::MAX));
            self.builder.clone().pool_config(pool).build()
        })
    }
}

/// What became of a message that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted by the SMTP server, or written as an `.eml` file: mark the row sent.
    Sent,
    /// Sending is off (`LICENSYNC_MAIL_URL=none`): leave the row pending.
    Queued,
}

/// A message that could not be delivered. `permanent` tells the outbox
/// whether a retry can help: a 5xx answer to the message or its recipient,
/// or an invalid address, is permanent; a 4xx, a refused or dropped
/// connection, a TLS or authentication problem (fixed by the operator, after
/// which the row can go) is transient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Short, for the outbox row's error column and logs; holds no secret.
    pub message: String,
    pub permanent: bool,
}

impl SendError {
    pub fn permanent(message: impl Into<String>) -> Self {
        SendError {
            message: message.into(),
            permanent: true,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        SendError {
            message: message.into(),
            permanent: false,
        }
    }
}

/// Renders and delivers license email. Cloning is cheap and shares the
/// transport (and its SMTP connections), so that many messages can be in
/// flight at once.
#[derive(Clone)]
pub struct MailService {
    inner: Arc<Inner>,
}

struct Inner {
    mailer: Mailer,
    settings: MailSettings,
    templates: render::Templates,
}

impl MailService {
    /// Builds the transport the settings ask for; `file://` creates its
    /// directory. Connects to nothing yet.
    pub fn new(settings: MailSettings) -> anyhow::Result<Self> {
        let templates = render::Templates::load(settings.templates_dir.as_deref())?;
        let mailer = match &settings.url {
            MailUrl::Smtp {
                host,
                port,
                tls,
                credentials,
                tls_ca,
                concurrency,
            } => Mailer::Smtp(Box::new(SmtpMailer {
                builder: smtp_transport(host, *port, *tls, credentials.as_ref(), tls_ca.as_deref())?,
                transport: OnceLock::new(),
                concurrency: concurrency.unwrap_or(DEFAULT_SMTP_CONCURRENCY),
            })),
            MailUrl::File(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the mail outbox directory {}", dir.display()))?;
                Mailer::File(FileTransport::new(dir))
            }
            MailUrl::None => Mailer::None,
        };
        Ok(MailService::of(mailer, settings, templates))
    }

    fn of(mailer: Mailer, settings: MailSettings, templates: render::Templates) -> Self {
        MailService {
            inner: Arc::new(Inner {
                mailer,
                settings,
                templates,
            }),
        }
    }

    /// A service that keeps what it sends in memory ([`MailService::sent`]),
    /// whatever `settings.url` says.
    pub fn in_memory(settings: MailSettings) -> anyhow::Result<Self> {
        let templates = render::Templates::load(settings.templates_dir.as_deref())?;
        Ok(MailService::of(Mailer::Memory(Arc::default()), settings, templates))
    }

    /// What an in-memory service has sent, oldest first; empty for other backends.
    pub fn sent(&self) -> Vec<Message> {
        match &self.inner.mailer {
            Mailer::Memory(sent) => sent.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            _ => Vec::new(),
        }
    }

    pub fn settings(&self) -> &MailSettings {
        &self.inner.settings
    }

    /// How many messages the outbox may have in flight at once: the SMTP
    /// URL's `?concurrency=` (default [`DEFAULT_SMTP_CONCURRENCY`], which is
    /// also the size of the connection pool), or [`LOCAL_CONCURRENCY`] for
    /// the transports without a server.
    pub fn concurrency(&self) -> usize {
        match &self.inner.mailer {
            Mailer::Smtp(smtp) => smtp.concurrency,
            Mailer::File(_) | Mailer::Memory(_) | Mailer::None => LOCAL_CONCURRENCY,
        }
    }

    /// Whether messages leave at all: the `none` backend only renders them
    /// and leaves them pending.
    pub fn sends(&self) -> bool {
        !matches!(self.inner.mailer, Mailer::None)
    }

    /// The complete message for one outbox row: subject naming the
    /// products, a text and an HTML alternative, `Message-ID` from
    /// [`message_id`], `From` the configured sender, `Reply-To` the support
    /// address when set.
    pub fn render(&self, email: &LicenseEmail) -> anyhow::Result<Message> {
        Ok(self.compose(email)?)
    }

    fn compose(&self, email: &LicenseEmail) -> Result<Message, SendError> {
        render::Composer {
            templates: &self.inner.templates,
            from: &self.inner.settings.from,
            support: self.inner.settings.support.as_ref(),
        }
        .compose(email)
    }

    /// Renders and delivers one message. With the `none` backend the message
    /// is rendered (so bad data still shows) but not sent: [`Delivery::Queued`].
    pub async fn send(&self, email: &LicenseEmail) -> Result<Delivery, SendError> {
        let message = self.compose(email)?;
        match &self.inner.mailer {
            Mailer::Smtp(smtp) => {
                // The exchange runs in a task of its own, which finishes it even
                // when this call is dropped midway: a pooled connection given
                // back in the middle of a transaction would answer the next
                // message's commands with this one's replies.
                let transport = smtp.transport().clone();
                let exchange = tokio::spawn(async move {
                    let sent = transport.send(message).await;
                    // lettre hands the connection back to its pool from a task it
                    // spawns as the send ends: let that task run before the caller
                    // goes on to the next message, which then reuses the connection
                    // instead of opening another.
                    tokio::task::yield_now().await;
                    sent
                });
                match exchange.await {
                    Ok(sent) => sent.map_err(|e| self.smtp_error(email, &e))?,
                    Err(e) => {
                        return Err(SendError::transient(format!(
                            "outbox row {}: the SMTP exchange with {} stopped: {e}",
                            email.outbox_id,
                            self.settings().url
                        )));
                    }
                };
                Ok(Delivery::Sent)
            }
            Mailer::File(transport) => {
                // Written on this thread: a small file into a local directory
                // takes a few microseconds, and handing each one to a blocking
                // thread (as the async transport does) cost the run about a
                // quarter of its CPU in thread wake-ups (BENCHMARKS.md).
                transport.send(&message).map_err(|e| {
                    SendError::transient(format!(
                        "outbox row {}: writing the .eml file to {} failed: {e}",
                        email.outbox_id,
                        self.settings().url
                    ))
                })?;
                Ok(Delivery::Sent)
            }
            Mailer::Memory(sent) => {
                sent.lock().unwrap_or_else(|e| e.into_inner()).push(message);
                Ok(Delivery::Sent)
            }
            Mailer::None => Ok(Delivery::Queued),
        }
    }

    fn smtp_error(&self, email: &LicenseEmail, e: &lettre::transport::smtp::Error) -> SendError {
        // Authentication answers are 5xx too, but a wrong password is the
        // operator's to fix and says nothing about this message.
        const AUTH_CODES: [&str; 4] = ["530", "534", "535", "538"];
        let code = e.status().map(|c| c.to_string());
        let auth_problem = code.as_deref().is_some_and(|c| AUTH_CODES.contains(&c));
        let permanent = e.is_permanent() && !auth_problem;
        let detail = self.redact(e.to_string());
        let hint = if auth_problem {
            " (check the user and password in LICENSYNC_MAIL_URL)"
        } else if detail.contains("STARTTLS") {
            " (the relay offers no STARTTLS: use smtps:// if it speaks implicit TLS, or ?tls=none for a local relay)"
        } else if detail.contains("corrupt message") {
            " (no TLS answer on this port: smtps:// is usually port 465, smtp:// with STARTTLS 587)"
        } else if e.is_tls() || detail.contains("certificate") {
            " (TLS: check the host name, or add ?tls_ca=/path/ca.pem for a private CA)"
        } else {
            ""
        };
        SendError {
            message: format!(
                "outbox row {}: SMTP delivery to {} failed: {detail}{hint}",
                email.outbox_id,
                self.settings().url
            ),
            permanent,
        }
    }

    /// Belt and braces over lettre's and the server's text (the URL part is
    /// already redacted by `MailUrl`'s `Display`): a server could echo what
    /// it was sent. Passwords under 4 characters are left alone, since
    /// replacing every `p` of a message helps nobody read it.
    fn redact(&self, text: String) -> String {
        match &self.settings().url {
            MailUrl::Smtp {
                credentials: Some((_, secret)),
                ..
            } if secret.expose_secret().len() >= 4 => text.replace(secret.expose_secret(), "***"),
            _ => text,
        }
    }
}

fn smtp_transport(
    host: &str,
    port: u16,
    tls: SmtpTls,
    credentials: Option<&(String, self::url::Password)>,
    tls_ca: Option<&std::path::Path>,
) -> anyhow::Result<AsyncSmtpTransportBuilder> {
    let tls = match tls {
        SmtpTls::None => Tls::None,
        SmtpTls::StartTls | SmtpTls::Implicit => {
            let mut params = TlsParameters::builder(host.to_owned());
            if let Some(ca) = tls_ca {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("reading tls_ca={} from LICENSYNC_MAIL_URL", ca.display()))?;
                let cert = Certificate::from_pem(&pem).with_context(|| {
                    format!(
                        "tls_ca={} from LICENSYNC_MAIL_URL is not a PEM certificate",
                        ca.display()
                    )
                })?;
                params = params.add_root_certificate(cert);
            }
            let params = params.build_rustls().context("setting up TLS for LICENSYNC_MAIL_URL")?;
            if tls == SmtpTls::Implicit {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    // builder_dangerous only means "no TLS preset": `tls` above decides.
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls);
    if let Some((user, password)) = credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose_secret().to_owned()));
    }
    Ok(builder)
}
