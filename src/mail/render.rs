//! Turning a [`LicenseEmail`] into a [`lettre::Message`]: the templates
//! (embedded defaults, optionally overridden from a directory), the values
//! they see, and the headers, all built through lettre's typed builders so
//! that nothing a customer typed can become a header of its own.

use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use lettre::Address;
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::{Mailbox, MultiPart};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

use super::SendError;
use crate::domain::ExpirationStart;

/// Everything one license email needs, built by the caller from the license
/// row and its outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseEmail {
    /// The outbox row; it makes the Message-ID (see [`message_id`]).
    pub outbox_id: i64,
    /// The customer's address as Stripe has it (untrusted: validated here).
    pub to_email: String,
    /// The customer's name as Stripe has it (untrusted: escaped in HTML,
    /// control characters dropped in the `To` header).
    pub to_name: Option<String>,
    pub license_key: String,
    /// The license's product ids (what the license server checks).
    pub product_ids: Vec<String>,
    /// The Stripe product's name: what the customer bought and reads. Absent
    /// (licenses issued before names were kept) or blank, the ids are shown.
    pub product_name: Option<String>,
    pub quantity: i32,
    pub ip_limit: Option<i32>,
    /// Seats: already multiplied by the quantity.
    pub hwid_limit: Option<i32>,
    pub expires_at: Option<DateTime<Utc>>,
    pub expiration_days: Option<i32>,
    pub expiration_start: Option<ExpirationStart>,
    /// Sent again on request (`licensync mail resend`).
    pub resend: bool,
    /// Carries a key that replaces the license's old one (`licensync licenses reissue`).
    pub reissued: bool,
    /// The license belongs to a subscription: its key renews with it and
    /// stays the same.
    pub subscription: bool,
}

/// The Message-ID of the email for one outbox row:
/// `<licensync-outbox-{outbox_id}@{from_domain}>`.
///
/// It depends on the row alone, so when a crash falls between "the server
/// accepted it" and "marked sent", the retry repeats the same Message-ID and
/// mail clients and relays that de-duplicate on it show one message.
/// `from_domain` is the domain of `LICENSYNC_MAIL_FROM`, which RFC 5322 asks
/// for (the right side should be a domain the sender controls).
pub fn message_id(outbox_id: i64, from_domain: &str) -> String {
    format!("<licensync-outbox-{outbox_id}@{from_domain}>")
}

/// The template files, by the names an override directory must use.
pub const SUBJECT_TEMPLATE: &str = "license.subject.j2";
pub const TEXT_TEMPLATE: &str = "license.txt.j2";
pub const HTML_TEMPLATE: &str = "license.html.j2";

const DEFAULTS: [(&str, &str); 3] = [
    (SUBJECT_TEMPLATE, include_str!("templates/license.subject.j2")),
    (TEXT_TEMPLATE, include_str!("templates/license.txt.j2")),
    (HTML_TEMPLATE, include_str!("templates/license.html.j2")),
];

/// The three templates, and where each came from (for error messages).
pub(super) struct Templates {
    env: Environment<'static>,
    origins: Vec<(&'static str, String)>,
}

impl Templates {
    /// The embedded defaults, each replaced by the file of the same name in
    /// `dir` when there is one.
    pub(super) fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        // Explicit rather than minijinja's default so the rule is visible:
        // the HTML part escapes everything, subject and text escape nothing.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html.j2") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        // An override with a misspelt variable must fail loudly, not send an
        // email with a blank where the key should be.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);

        let mut origins = Vec::new();
        for (name, default) in DEFAULTS {
            let file = dir.map(|d| d.join(name)).filter(|p| p.is_file());
            let (source, origin) = match file {
                Some(path) => {
                    let source = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading mail template {}", path.display()))?;
                    (source, path.display().to_string())
                }
                None => (default.to_owned(), format!("built-in {name}")),
            };
            env.add_template_owned(name, source)
                .with_context(|| format!("mail template {origin} does not parse"))?;
            origins.push((name, origin));
        }
        if let Some(dir) = dir {
            anyhow::ensure!(
                dir.is_dir(),
                "mail templates directory {} does not exist; create it with any of {SUBJECT_TEMPLATE}, {TEXT_TEMPLATE}, {HTML_TEMPLATE} or unset it to use the built-in templates",
                dir.display()
            );
        }
        Ok(Templates { env, origins })
    }

    fn render(&self, name: &str, ctx: &minijinja::Value) -> Result<String, SendError> {
        let origin = self
            .origins
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o.as_str())
            .unwrap_or(name);
        self.env
            .get_template(name)
            .and_then(|t| t.render(ctx))
            // A broken template is the operator's to fix, after which the
            // row can go: not a reason to give the row up.
            .map_err(|e| SendError::transient(format!("mail template {origin} failed to render: {e:#}")))
    }
}

/// What the templates see. Documented in the default templates' header.
#[derive(Serialize)]
struct Values {
    customer_name: Option<String>,
    customer_email: String,
    license_key: String,
    /// What the customer bought: the Stripe product's name, else the ids.
    product: String,
    /// Earlier names of `product` and of the id list, kept so that override
    /// templates written for them still render.
    products_display: String,
    products: Vec<ProductId>,
    product_ids: Vec<String>,
    quantity: i32,
    ip_limit: Option<i32>,
    hwid_limit: Option<i32>,
    /// The limits that are set, worded for a customer (`0` reads "no limit").
    limits: Vec<Limit>,
    expiry: Expiry,
    resend: bool,
    reissued: bool,
    subscription: bool,
    sender_name: String,
    support_email: Option<String>,
    support_name: Option<String>,
}

#[derive(Serialize)]
struct ProductId {
    id: String,
    name: String,
}

/// One limit of the license, as a label and a phrase.
#[derive(Serialize)]
struct Limit {
    label: &'static str,
    text: String,
}

/// The limits a customer reads. A limit of `0` means the license server does
/// not limit that dimension (a license usable on no device would be
/// pointless), so it reads "no limit" rather than a bare 0.
fn limits(email: &LicenseEmail) -> Vec<Limit> {
    let mut limits = Vec::new();
    if let Some(devices) = email.hwid_limit {
        let text = match devices {
            0 => "no limit".to_owned(),
            1 => "1 at a time".to_owned(),
            n => format!("up to {n} at a time"),
        };
        limits.push(Limit { label: "Devices", text });
    }
    if let Some(ips) = email.ip_limit {
        let text = match ips {
            0 => "no limit".to_owned(),
            1 => "1 address".to_owned(),
            n => format!("up to {n} different addresses"),
        };
        limits.push(Limit {
            label: "IP addresses",
            text,
        });
    }
    limits
}

/// `kind` is `date`, `never` or `activation`.
#[derive(Serialize)]
struct Expiry {
    kind: &'static str,
    /// `22 November 2026 (UTC)` for `date`.
    date: Option<String>,
    /// RFC 3339, for templates that format it themselves.
    at: Option<String>,
    /// The length of an `activation` license.
    days: Option<i32>,
}

fn expiry(email: &LicenseEmail) -> Result<Expiry, SendError> {
    match (email.expires_at, email.expiration_days, email.expiration_start) {
        (Some(at), _, _) => Ok(Expiry {
            kind: "date",
            date: Some(at.format("%-d %B %Y (UTC)").to_string()),
            at: Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            days: None,
        }),
        (None, Some(days), Some(ExpirationStart::Activation)) => Ok(Expiry {
            kind: "activation",
            date: None,
            at: None,
            days: Some(days),
        }),
        (None, None, _) => Ok(Expiry {
            kind: "never",
            date: None,
            at: None,
            days: None,
        }),
        // CREATION always yields an expires_at (licensing rules §4), so this
        // is a caller bug; telling the customer "does not expire" would be a lie.
        (None, Some(days), _) => Err(SendError::permanent(format!(
            "outbox row {}: the license has expiration_days={days} from creation but no expires_at; \
             the email would misstate its expiry",
            email.outbox_id
        ))),
    }
}

/// "A", "A and B", "A, B and C".
fn english_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Control characters (CR, LF, ...) have no place in a display name. lettre
/// would never emit them as a header break, but it panics while formatting a
/// name that holds CR or LF, so one hostile Stripe customer name would crash
/// the sender: they become spaces here.
fn clean_name(name: &str) -> Option<String> {
    let cleaned: String = name.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    (!cleaned.is_empty()).then_some(cleaned)
}

pub(super) struct Composer<'a> {
    pub templates: &'a Templates,
    pub from: &'a Mailbox,
    pub support: Option<&'a Mailbox>,
}

impl Composer<'_> {
    pub(super) fn compose(&self, email: &LicenseEmail) -> Result<Message, SendError> {
        if email.to_email.is_empty() {
            return Err(SendError::permanent(format!(
                "outbox row {} has no recipient address",
                email.outbox_id
            )));
        }
        // No trimming: an address with a trailing CRLF is not a typo to fix
        // but an attempt to add a header.
        let address: Address = email.to_email.parse().map_err(|_| {
            SendError::permanent(format!(
                "outbox row {}: the customer email is not a valid address ({:?}); correct it in Stripe and resend",
                email.outbox_id,
                email.to_email.escape_debug().to_string()
            ))
        })?;
        let customer_name = email.to_name.as_deref().and_then(clean_name);
        let to = Mailbox::new(customer_name.clone(), address);

        let product = email
            .product_name
            .as_deref()
            .and_then(clean_name)
            .unwrap_or_else(|| english_list(&email.product_ids));

        let products = email
            .product_ids
            .iter()
            .map(|id| ProductId {
                id: id.clone(),
                name: id.clone(),
            })
            .collect();
        let ctx = Values {
            products_display: product.clone(),
            products,
            customer_name,
            customer_email: email.to_email.clone(),
            license_key: email.license_key.clone(),
            product,
            product_ids: email.product_ids.clone(),
            quantity: email.quantity,
            ip_limit: email.ip_limit,
            hwid_limit: email.hwid_limit,
            limits: limits(email),
            expiry: expiry(email)?,
            resend: email.resend,
            reissued: email.reissued,
            subscription: email.subscription,
            sender_name: self.from.name.clone().unwrap_or_else(|| self.from.email.to_string()),
            support_email: self.support.map(|s| s.email.to_string()),
            support_name: self.support.and_then(|s| s.name.clone()),
        };

        // Turned into the templates' values once, for the three of them.
        let ctx = minijinja::Value::from_serialize(&ctx);
        let subject = self.templates.render(SUBJECT_TEMPLATE, &ctx)?;
        // A subject is one line whatever a template or a product name holds.
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        let text = self.templates.render(TEXT_TEMPLATE, &ctx)?;
        let html = self.templates.render(HTML_TEMPLATE, &ctx)?;

        // Given, so that lettre does not parse it back out of the headers.
        let envelope = Envelope::new(Some(self.from.email.clone()), vec![to.email.clone()]).map_err(|e| {
            SendError::permanent(format!(
                "outbox row {}: cannot address the message: {e}",
                email.outbox_id
            ))
        })?;
        let mut builder = Message::builder()
            .message_id(Some(message_id(email.outbox_id, self.from.email.domain())))
            .from(self.from.clone())
            .to(to)
            .envelope(envelope)
            .subject(subject);
        if let Some(support) = self.support {
            builder = builder.reply_to(support.clone());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| SendError::permanent(format!("outbox row {}: cannot build the message: {e}", email.outbox_id)))
    }
}
