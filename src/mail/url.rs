//! `LICENSYNC_MAIL_URL` / `--mail-url`: where license email goes, parsed into
//! a typed [`MailUrl`]. Owns the rule that SMTP is encrypted unless the
//! operator explicitly asks for `tls=none`, and that the password never shows
//! in `Debug`, `Display` or an error.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::secret::{ExposeSecret, Secret};
use percent_encoding::percent_decode_str;

/// The setting's names, repeated in every error so the operator knows what to fix.
const SETTING: &str = "LICENSYNC_MAIL_URL / --mail-url";

/// Where and how license email is delivered.
#[derive(Clone, PartialEq, Eq)]
pub enum MailUrl {
    /// An SMTP relay.
    Smtp {
        host: String,
        port: u16,
        tls: SmtpTls,
        /// `(user, password)` for SMTP AUTH (PLAIN or LOGIN).
        credentials: Option<(String, Password)>,
        /// A PEM file of extra root certificates to trust (`?tls_ca=/path`),
        /// for relays behind a private CA. The public web roots stay trusted.
        tls_ca: Option<PathBuf>,
        /// `?concurrency=N`: messages sent at once over pooled connections
        /// (at most [`MAX_SMTP_CONCURRENCY`]); unset, the default
        /// [`DEFAULT_SMTP_CONCURRENCY`].
        concurrency: Option<usize>,
    },
    /// One `.eml` file per message in this directory.
    File(PathBuf),
    /// Sending is off: messages stay queued in the outbox.
    None,
}

/// The SMTP AUTH password: a [`Secret`] that compares by value, so that
/// two parsed URLs compare.
#[derive(Clone, Debug)]
pub struct Password(Secret);

impl ExposeSecret<str> for Password {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for Password {
    fn eq(&self, other: &Password) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl Eq for Password {}

/// How the SMTP connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// `smtp://`: plain connection upgraded with STARTTLS, which is required
    /// (a relay that does not offer it is an error, never a silent downgrade).
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// `smtp://...?tls=none`: no encryption, only when the operator asks
    /// (a local relay on the same host or private network).
    None,
}

/// Messages sent at once to an SMTP relay when its URL does not say
/// (`?concurrency=N`): enough to hide the round trips of one session, few
/// enough for any relay's per-client connection limit.
pub const DEFAULT_SMTP_CONCURRENCY: usize = 8;
/// The most `?concurrency=` accepts.
pub const MAX_SMTP_CONCURRENCY: usize = 64;

/// A `LICENSYNC_MAIL_URL` that cannot be used; the message says why and how
/// to fix it, and never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {SETTING}: {0}")]
pub struct MailUrlError(String);

fn invalid(why: impl Into<String>) -> MailUrlError {
    MailUrlError(why.into())
}

const FORMS: &str = "expected smtp://user:pass@host:587 (STARTTLS), \
     smtps://user:pass@host:465 (implicit TLS), smtp://host:25?tls=none (unencrypted local relay), \
     file:///absolute/dir or none";

impl FromStr for MailUrl {
    type Err = MailUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(invalid(format!("the value is empty; {FORMS}")));
        }
        if s.eq_ignore_ascii_case("none") {
            return Ok(MailUrl::None);
        }
        let Some((scheme, _)) = s.split_once(':') else {
            return Err(invalid(format!("no scheme; {FORMS}")));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => parse_file(s),
            "smtp" | "smtps" => parse_smtp(s),
            other => Err(invalid(format!("unknown scheme `{other}:`; {FORMS}"))),
        }
    }
}

fn parse_file(s: &str) -> Result<MailUrl, MailUrlError> {
    let rest = s
        .get("file://".len()..)
        .filter(|_| s[..7].eq_ignore_ascii_case("file://"))
        .ok_or_else(|| invalid("a file URL starts with file://, e.g. file:///var/lib/licensync/outbox"))?;
    // `file://./dir` is how a relative data directory reads when the default
    // `file://<data-dir>/outbox` is spelled out; the url crate would take `.`
    // for a host, so relative paths are recognised here first.
    if rest.starts_with("./") || rest.starts_with("../") {
        return Ok(MailUrl::File(PathBuf::from(rest)));
    }
    let url = url::Url::parse(s).map_err(|e| invalid(format!("cannot parse the file URL ({e})")))?;
    if url.query().is_some() {
        return Err(invalid("a file URL takes no ?query; use file:///absolute/dir"));
    }
    let path = url.to_file_path().map_err(|()| {
        invalid("a file URL needs an absolute local path with no host: file:///absolute/dir (three slashes)")
    })?;
    if path.as_os_str().is_empty() || path == std::path::Path::new("/") {
        return Err(invalid("the file URL names no directory: use file:///absolute/dir"));
    }
    Ok(MailUrl::File(path))
}

fn parse_smtp(s: &str) -> Result<MailUrl, MailUrlError> {
    // The url crate's errors describe the problem without echoing the input,
    // so they are safe to show even when the input holds a password.
    let url = url::Url::parse(s).map_err(|e| invalid(format!("cannot parse the SMTP URL ({e}); {FORMS}")))?;
    let implicit = url.scheme() == "smtps";
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => {
            return Err(invalid(
                "the SMTP URL has no host, e.g. smtp://user:pass@mail.example.com:587",
            ));
        }
    };
    if !matches!(url.path(), "" | "/") {
        return Err(invalid("an SMTP URL takes no path: write smtp://user:pass@host:port"));
    }
    if url.fragment().is_some() {
        return Err(invalid("an SMTP URL takes no #fragment"));
    }

    let mut tls = if implicit { SmtpTls::Implicit } else { SmtpTls::StartTls };
    let mut tls_ca = None;
    let mut concurrency = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "tls" => {
                tls = match (value.as_ref(), implicit) {
                    ("none", false) => SmtpTls::None,
                    ("starttls", false) => SmtpTls::StartTls,
                    ("implicit", _) => SmtpTls::Implicit,
                    ("none" | "starttls", true) => {
                        return Err(invalid(format!(
                            "smtps:// is implicit TLS and cannot take tls={value}; use smtp://host?tls={value} instead"
                        )));
                    }
                    (other, _) => {
                        return Err(invalid(format!(
                            "unknown tls={other}; use tls=starttls (default for smtp://), tls=implicit (same as smtps://) or tls=none"
                        )));
                    }
                }
            }
            "tls_ca" => {
                if value.is_empty() {
                    return Err(invalid("tls_ca= needs the path of a PEM file of CA certificates"));
                }
                tls_ca = Some(PathBuf::from(value.as_ref()));
            }
            "concurrency" => {
                let n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_SMTP_CONCURRENCY).contains(n))
                    .ok_or_else(|| {
                        invalid(format!(
                            "concurrency={value} is not a number from 1 to {MAX_SMTP_CONCURRENCY} \
                             (messages sent at once; default {DEFAULT_SMTP_CONCURRENCY})"
                        ))
                    })?;
                concurrency = Some(n);
            }
            other => {
                return Err(invalid(format!(
                    "unknown query parameter `{other}`; the SMTP URL accepts tls=starttls|implicit|none, \
                     tls_ca=/path/ca.pem and concurrency=N"
                )));
            }
        }
    }
    if tls == SmtpTls::None && tls_ca.is_some() {
        return Err(invalid("tls_ca= has no effect with tls=none; drop one of them"));
    }

    let port = url.port().unwrap_or(match tls {
        SmtpTls::Implicit => 465,
        SmtpTls::StartTls => 587,
        // A relay reached without TLS is a local MTA, which listens on 25.
        SmtpTls::None => 25,
    });

    let user = decode("user name", url.username())?;
    let password = url.password().map(|p| decode("password", p)).transpose()?;
    let credentials = match (user.is_empty(), password) {
        (true, None) => None,
        (false, Some(password)) if !password.is_empty() => Some((user, Password(Secret::from(password)))),
        (false, _) => {
            return Err(invalid(format!(
                "the SMTP URL names user `{user}` but no password: write smtp://user:password@host (percent-encode special characters)"
            )));
        }
        (true, Some(_)) => {
            return Err(invalid(
                "the SMTP URL has a password but no user name: write smtp://user:password@host",
            ));
        }
    };

    Ok(MailUrl::Smtp {
        host,
        port,
        tls,
        credentials,
        tls_ca,
        concurrency,
    })
}

fn decode(what: &str, raw: &str) -> Result<String, MailUrlError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid(format!("the {what} is not valid UTF-8 once percent-decoded")))
}

/// The URL with the password replaced by `***`: safe for logs.
impl fmt::Display for MailUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailUrl::Smtp {
                host,
                port,
                tls,
                credentials,
                tls_ca,
                concurrency,
            } => {
                let scheme = if *tls == SmtpTls::Implicit { "smtps" } else { "smtp" };
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                write!(f, "{scheme}://")?;
                if let Some((user, _)) = credentials {
                    write!(f, "{user}:***@")?;
                }
                write!(f, "{host}:{port}")?;
                let mut sep = '?';
                if *tls == SmtpTls::None {
                    write!(f, "{sep}tls=none")?;
                    sep = '&';
                }
                if let Some(ca) = tls_ca {
                    write!(f, "{sep}tls_ca={}", ca.display())?;
                    sep = '&';
                }
                if let Some(n) = concurrency {
                    write!(f, "{sep}concurrency={n}")?;
                }
                Ok(())
            }
            MailUrl::File(path) => write!(f, "file://{}", path.display()),
            MailUrl::None => f.write_str("none"),
        }
    }
}

impl fmt::Debug for MailUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailUrl::Smtp {
                host,
                port,
                tls,
                credentials,
                tls_ca,
                concurrency,
            } => f
                .debug_struct("Smtp")
                .field("host", host)
                .field("port", port)
                .field("tls", tls)
                .field("credentials", credentials)
                .field("tls_ca", tls_ca)
                .field("concurrency", concurrency)
                .finish(),
            MailUrl::File(path) => f.debug_tuple("File").field(path).finish(),
            MailUrl::None => f.write_str("None"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(host: &str, port: u16, tls: SmtpTls, creds: Option<(&str, &str)>) -> MailUrl {
        MailUrl::Smtp {
            host: host.to_owned(),
            port,
            tls,
            credentials: creds.map(|(u, p)| (u.to_owned(), Password(Secret::from(p)))),
            tls_ca: None,
            concurrency: None,
        }
    }

    #[test]
    fn every_documented_form_parses_with_its_default_port() {
        let table = [
            (
                "smtp://user:pass@mail.example.com:587",
                smtp("mail.example.com", 587, SmtpTls::StartTls, Some(("user", "pass"))),
            ),
            (
                "smtp://user:pass@mail.example.com",
                smtp("mail.example.com", 587, SmtpTls::StartTls, Some(("user", "pass"))),
            ),
            (
                "smtp://mail.example.com:2525?tls=starttls",
                smtp("mail.example.com", 2525, SmtpTls::StartTls, None),
            ),
            (
                "smtps://user:pass@mail.example.com:465",
                smtp("mail.example.com", 465, SmtpTls::Implicit, Some(("user", "pass"))),
            ),
            (
                "smtps://user:pass@mail.example.com",
                smtp("mail.example.com", 465, SmtpTls::Implicit, Some(("user", "pass"))),
            ),
            (
                "smtp://relay.local:25?tls=none",
                smtp("relay.local", 25, SmtpTls::None, None),
            ),
            (
                "smtp://relay.local?tls=none",
                smtp("relay.local", 25, SmtpTls::None, None),
            ),
            (
                "smtp://mail.example.com?tls=implicit",
                smtp("mail.example.com", 465, SmtpTls::Implicit, None),
            ),
            (
                "SMTP://127.0.0.1:1025?tls=none",
                smtp("127.0.0.1", 1025, SmtpTls::None, None),
            ),
            ("smtp://[::1]:25?tls=none", smtp("::1", 25, SmtpTls::None, None)),
            (
                "file:///var/lib/licensync/outbox",
                MailUrl::File(PathBuf::from("/var/lib/licensync/outbox")),
            ),
            ("file:///tmp/out%20box", MailUrl::File(PathBuf::from("/tmp/out box"))),
            (
                "file://./licensync-data/outbox",
                MailUrl::File(PathBuf::from("./licensync-data/outbox")),
            ),
            ("none", MailUrl::None),
            (" NONE ", MailUrl::None),
        ];
        for (input, expected) in table {
            let parsed: MailUrl = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed, expected, "{input}");
        }
    }

    #[test]
    fn user_and_password_are_percent_decoded() {
        let parsed: MailUrl = "smtp://apikey%40acme.test:p%40ss%3Aw%2Ford@smtp.example.com"
            .parse()
            .unwrap();
        assert_eq!(
            parsed,
            smtp(
                "smtp.example.com",
                587,
                SmtpTls::StartTls,
                Some(("apikey@acme.test", "p@ss:w/ord"))
            )
        );
    }

    #[test]
    fn a_private_ca_file_is_taken_from_the_tls_ca_parameter() {
        let parsed: MailUrl = "smtp://u:p@relay.internal:587?tls_ca=/etc/licensync/ca.pem"
            .parse()
            .unwrap();
        let MailUrl::Smtp { tls_ca, tls, .. } = parsed else {
            panic!("not smtp")
        };
        assert_eq!(tls, SmtpTls::StartTls);
        assert_eq!(tls_ca, Some(PathBuf::from("/etc/licensync/ca.pem")));
    }

    #[test]
    fn the_concurrency_parameter_sets_how_many_messages_go_at_once_and_shows_in_display() {
        let parsed: MailUrl = "smtp://u:p@relay.internal:587?concurrency=16".parse().unwrap();
        let MailUrl::Smtp { concurrency, .. } = &parsed else {
            panic!("not smtp")
        };
        assert_eq!(*concurrency, Some(16));
        assert_eq!(parsed.to_string(), "smtp://u:***@relay.internal:587?concurrency=16");
        let both: MailUrl = "smtp://relay:25?tls=none&concurrency=1".parse().unwrap();
        assert_eq!(both.to_string(), "smtp://relay:25?tls=none&concurrency=1");
        assert_eq!(both.to_string().parse::<MailUrl>().unwrap(), both);
        let MailUrl::Smtp { concurrency, .. } = "smtp://relay".parse().unwrap() else {
            panic!("not smtp")
        };
        assert_eq!(concurrency, None, "unset: the transport's default");
    }

    #[test]
    fn bad_values_are_rejected_with_an_error_naming_the_setting_and_the_fix() {
        let table = [
            ("", "empty"),
            ("mail.example.com", "no scheme"),
            ("http://mail.example.com", "unknown scheme `http:`"),
            ("smtp://", "no host"),
            ("smtp://user@mail.example.com", "no password"),
            ("smtp://:secret@mail.example.com", "no user name"),
            ("smtp://mail.example.com?tls=off", "unknown tls=off"),
            ("smtps://mail.example.com?tls=none", "smtps:// is implicit TLS"),
            (
                "smtp://mail.example.com?starttls=1",
                "unknown query parameter `starttls`",
            ),
            ("smtp://mail.example.com/inbox", "takes no path"),
            ("smtp://mail.example.com:99999", "cannot parse"),
            ("smtp://h?tls=none&tls_ca=/ca.pem", "no effect with tls=none"),
            ("smtp://h?concurrency=0", "concurrency=0 is not a number from 1 to 64"),
            ("smtp://h?concurrency=65", "from 1 to 64"),
            ("smtp://h?concurrency=many", "from 1 to 64"),
            ("file://mailhost/outbox", "absolute local path"),
            ("file:///", "names no directory"),
        ];
        for (input, needle) in table {
            let err = input.parse::<MailUrl>().expect_err(input).to_string();
            assert!(err.contains("LICENSYNC_MAIL_URL / --mail-url"), "{input}: {err}");
            assert!(err.contains(needle), "{input}: `{err}` lacks `{needle}`");
        }
    }

    #[test]
    fn the_password_never_appears_in_debug_display_or_errors() {
        let password = "hunter2-Sup3rSecret";
        let url: MailUrl = format!("smtp://alice:{password}@mail.example.com:587").parse().unwrap();
        let debug = format!("{url:?}");
        let display = url.to_string();
        assert!(!debug.contains(password), "{debug}");
        assert!(debug.to_lowercase().contains("[redacted]"), "{debug}");
        assert_eq!(display, "smtp://alice:***@mail.example.com:587");

        for bad in [
            format!("smtp://alice:{password}@mail.example.com:99999"),
            format!("smtp://alice:{password}@mail.example.com/path"),
            format!("smtp://alice:{password}@mail.example.com?tls=bogus"),
            format!("smtps://alice:{password}@mail.example.com?tls=none"),
            format!("smtp://alice:{password}@"),
            format!("ftp://alice:{password}@mail.example.com"),
        ] {
            let err = bad.parse::<MailUrl>().expect_err(&bad);
            assert!(!err.to_string().contains(password), "{err}");
            assert!(!format!("{err:?}").contains(password), "{err:?}");
        }
    }
}
