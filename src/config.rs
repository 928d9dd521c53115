//! Validated configuration: the raw strings of `cli::Settings` turned into
//! typed values before any IO. Every error names the flag, the environment
//! variable and the fix, and is a usage error (exit 2). Secrets stay wrapped.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, NaiveDate, Utc};

use crate::accounts::{Account, AccountSettings};
use crate::cli::Settings;
use crate::mail::{MailSettings, MailUrl, parse_from, parse_mailbox};
use crate::secret::{Secret, redact};
use crate::stripe::ApiKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the license database is.
#[derive(Debug, Clone)]
pub enum Database {
    /// `DATABASE_URL`.
    Url(Secret),
    /// The private server under `<data-dir>/pg`.
    Embedded { dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub stripe_api_key: Option<ApiKey>,
    /// Normalised without a trailing `/`.
    pub stripe_api_base: String,
    pub stripe_rps: Option<u32>,
    pub database: Database,
    pub data_dir: PathBuf,
    pub mail: MailSettings,
    pub mail_max_attempts: u32,
    pub grace: Duration,
    pub past_due_grace: Duration,
    pub log_format: LogFormat,
    /// `--mail-since`: purchases created before it are issued silently.
    pub mail_since: Option<DateTime<Utc>>,
    /// `--stripe-account`, `--accounts-file`: which accounts to read.
    pub accounts: AccountSettings,
    /// `--account-concurrency`.
    pub account_concurrency: usize,
}

impl Config {
    pub fn from_settings(s: &Settings, stderr_is_terminal: bool) -> Result<Config> {
        let stripe_api_key = secret_setting(
            s.stripe_api_key.as_deref(),
            s.stripe_api_key_file.as_deref(),
            ("--stripe-api-key", "STRIPE_API_KEY"),
        )?;
        let stripe_api_key = match stripe_api_key.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(key) => Some(ApiKey::parse(key).map_err(|e| anyhow!("--stripe-api-key / {e}"))?),
        };
        let stripe_api_base = parse_http_url(&s.stripe_api_base, "--stripe-api-base / STRIPE_API_BASE")?;
        let stripe_rps = s
            .stripe_rps
            .as_deref()
            .map(|v| parse_positive(v, "--stripe-rps / LICENSYNC_STRIPE_RPS"))
            .transpose()?;
        let database_url = secret_setting(
            s.database_url.as_deref(),
            s.database_url_file.as_deref(),
            ("--database-url", "DATABASE_URL"),
        )?;
        let database = match database_url.as_deref().map(str::trim) {
            None | Some("") => Database::Embedded {
                dir: s.data_dir.join("pg"),
            },
            Some(url) => {
                check_database_url(url)?;
                Database::Url(Secret::new(url))
            }
        };
        let mail_url = secret_setting(
            s.mail_url.as_deref(),
            s.mail_url_file.as_deref(),
            ("--mail-url", "LICENSYNC_MAIL_URL"),
        )?;
        let mail_url = match mail_url.as_deref().map(str::trim) {
            None | Some("") => MailUrl::File(absolute(&s.data_dir.join("outbox"))?),
            Some(url) => url.parse::<MailUrl>()?,
        };
        let mut mail = MailSettings::new(mail_url, parse_from(&s.mail_from)?);
        mail.support = s
            .mail_support
            .as_deref()
            .filter(|v| !v.trim().is_empty())
            .map(|v| parse_mailbox("--mail-support / LICENSYNC_MAIL_SUPPORT", v))
            .transpose()?;
        mail.templates_dir = s.mail_templates.clone();
        let log_format = match s.log_format.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") => {
                if stderr_is_terminal {
                    LogFormat::Text
                } else {
                    LogFormat::Json
                }
            }
            Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("--log-format / LICENSYNC_LOG_FORMAT must be `text` or `json`, not `{other}`"),
        };
        Ok(Config {
            stripe_api_key,
            stripe_api_base,
            stripe_rps,
            database,
            data_dir: s.data_dir.clone(),
            mail,
            mail_max_attempts: parse_positive(
                &s.mail_max_attempts,
                "--mail-max-attempts / LICENSYNC_MAIL_MAX_ATTEMPTS",
            )?,
            grace: parse_duration(&s.grace, "--grace / LICENSYNC_GRACE")?,
            past_due_grace: parse_duration(&s.past_due_grace, "--past-due-grace / LICENSYNC_PAST_DUE_GRACE")?,
            log_format,
            mail_since: s.mail_since,
            accounts: AccountSettings {
                connected: s.stripe_accounts.clone(),
                file: s.accounts_file.clone().filter(|p| !p.as_os_str().is_empty()),
            },
            account_concurrency: usize::from(s.account_concurrency),
        })
    }

    /// The accounts to reconcile (see `crate::accounts`), read and checked
    /// before any database or network IO.
    pub fn accounts(&self) -> Result<Vec<Account>> {
        self.accounts.resolve(self.stripe_api_key.as_ref(), &self.mail)
    }

    /// The Stripe key, or the usage error for commands that read Stripe.
    pub fn require_stripe_key(&self) -> Result<&ApiKey> {
        self.stripe_api_key.as_ref().ok_or_else(|| {
            anyhow!("this command reads Stripe: set STRIPE_API_KEY (or --stripe-api-key) to a restricted rk_ or secret sk_ key")
        })
    }
}

/// A secret given directly (flag or variable) or as a file, as container
/// orchestrators mount secrets (`STRIPE_API_KEY_FILE`, ...): the file's
/// content with its trailing newline trimmed. Both at once is an error, so
/// that nobody has to guess which one wins. `names` is the flag and the
/// variable of the direct form; the file form adds `-file` / `_FILE`.
pub fn secret_setting(
    direct: Option<&str>,
    file: Option<&std::path::Path>,
    names: (&str, &str),
) -> Result<Option<String>> {
    let (flag, var) = names;
    let direct = direct.filter(|v| !v.trim().is_empty());
    let file = file.filter(|p| !p.as_os_str().is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => bail!(
            "both {flag} / {var} and {flag}-file / {var}_FILE are set; set only one of them \
             (the _FILE form is for secrets mounted as files)"
        ),
        (Some(value), None) => Ok(Some(value.to_owned())),
        (None, Some(path)) => {
            let content = std::fs::read_to_string(path).map_err(|e| {
                anyhow!(
                    "{flag}-file / {var}_FILE: cannot read {} ({e}); point it at the file that holds the value",
                    path.display()
                )
            })?;
            let value = content.trim_end_matches(['\n', '\r']);
            if value.trim().is_empty() {
                bail!(
                    "{flag}-file / {var}_FILE: {} is empty; write the value into it",
                    path.display()
                );
            }
            Ok(Some(value.to_owned()))
        }
        (None, None) => Ok(None),
    }
}

/// clap `value_parser` for timestamps: RFC 3339, or `YYYY-MM-DD` (midnight UTC).
pub fn time_arg(value: &str) -> std::result::Result<DateTime<Utc>, String> {
    parse_timestamp(value, "value").map_err(|e| e.to_string())
}

fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
}

/// `30s`, `15m`, `24h`, `7d` (and the other forms humantime reads).
pub fn parse_duration(value: &str, setting: &str) -> Result<Duration> {
    humantime::parse_duration(value.trim())
        .map_err(|e| anyhow!("{setting}: `{value}` is not a duration ({e}); write it like `30s`, `15m`, `24h` or `7d`"))
}

/// RFC 3339, or `YYYY-MM-DD` meaning midnight UTC.
pub fn parse_timestamp(value: &str, setting: &str) -> Result<DateTime<Utc>> {
    let value = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    bail!(
        "{setting}: `{value}` is not a time; write RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01, midnight UTC)"
    )
}

fn parse_positive(value: &str, setting: &str) -> Result<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{setting}: `{value}` is not a whole number above 0"),
    }
}

fn parse_http_url(value: &str, setting: &str) -> Result<String> {
    let parsed = url::Url::parse(value.trim()).map_err(|e| {
        anyhow!(
            "{setting}: `{}` is not a URL ({e}); e.g. https://api.stripe.com",
            redact(value)
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("{setting}: `{}` must be an http:// or https:// URL", redact(value));
    }
    Ok(value.trim().trim_end_matches('/').to_owned())
}

fn check_database_url(value: &str) -> Result<()> {
    let fix = "expected postgres://USER@HOST:5432/DATABASE with the password in the URL or in ~/.pgpass (or unset it to use the embedded database)";
    // libpq quotes a malformed escape back in its error, password and all:
    // refuse it here, without echoing anything of the URL.
    let bytes = value.as_bytes();
    let malformed = bytes.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    if malformed {
        bail!(
            "--database-url / DATABASE_URL has a `%` that does not start a percent-escape (`%` and two hex digits); \
             percent-encode special characters of the user name and password (`%` is `%25`, `@` is `%40`, `/` is `%2F`)"
        );
    }
    let parsed =
        url::Url::parse(value).map_err(|e| anyhow!("--database-url / DATABASE_URL is not a valid URL ({e}); {fix}"))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        bail!(
            "--database-url / DATABASE_URL must use the postgres:// or postgresql:// scheme, not `{}:`; {fix}",
            parsed.scheme()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_of_the_contract_parse() {
        for (text, secs) in [("30s", 30), ("15m", 900), ("24h", 86_400), ("7d", 604_800)] {
            assert_eq!(parse_duration(text, "--grace").unwrap(), Duration::from_secs(secs));
        }
    }

    #[test]
    fn a_malformed_duration_names_the_setting_and_the_fix() {
        let err = parse_duration("soon", "--grace / LICENSYNC_GRACE")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--grace / LICENSYNC_GRACE") && err.contains("24h"),
            "{err}"
        );
    }

    #[test]
    fn timestamps_accept_rfc3339_and_dates_at_midnight_utc() {
        assert_eq!(
            parse_timestamp("2026-11-01", "--since").unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_timestamp("2026-11-01T10:00:00+02:00", "--since")
                .unwrap()
                .to_rfc3339(),
            "2026-11-01T08:00:00+00:00"
        );
        assert!(parse_timestamp("yesterday", "--since").is_err());
    }

    #[test]
    fn a_secret_comes_from_its_variable_or_its_file_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "rk_test_fromfile\n").unwrap();
        let names = ("--stripe-api-key", "STRIPE_API_KEY");
        assert_eq!(
            secret_setting(None, Some(&file), names).unwrap().as_deref(),
            Some("rk_test_fromfile"),
            "the trailing newline is trimmed"
        );
        assert_eq!(
            secret_setting(Some("rk_test_direct"), None, names).unwrap().as_deref(),
            Some("rk_test_direct")
        );
        assert_eq!(secret_setting(None, None, names).unwrap(), None);
        let both = secret_setting(Some("rk_test_direct"), Some(&file), names)
            .unwrap_err()
            .to_string();
        assert!(
            both.contains("STRIPE_API_KEY_FILE") && both.contains("only one") && !both.contains("rk_test"),
            "{both}"
        );
        let missing = secret_setting(None, Some(&dir.path().join("nope")), names)
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("STRIPE_API_KEY_FILE") && missing.contains("nope"),
            "{missing}"
        );
        std::fs::write(&file, "\n").unwrap();
        let empty = secret_setting(None, Some(&file), names).unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
    }

    #[test]
    fn database_url_errors_name_the_setting_without_the_password() {
        let err = check_database_url("mysql://u:hunter2@h/db").unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL") && !err.contains("hunter2"), "{err}");
        let err = check_database_url("not a url").unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL"), "{err}");
        // libpq would quote the whole password back: refused here, unquoted.
        for bad in [
            "postgres://u:hunter2%zz@h/db",
            "postgres://u@h/db?password=hunter2%2",
            "postgres://u:hunter2%@h/db",
        ] {
            let err = check_database_url(bad).unwrap_err().to_string();
            assert!(err.contains("percent-escape") && !err.contains("hunter2"), "{err}");
        }
        assert!(check_database_url("postgres://u:p%40ss%2Fw@h:5432/db").is_ok());
    }
}
