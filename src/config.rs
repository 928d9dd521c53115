//! The configuration of a command, built from the typed `settings::Settings`
//! before any database or network IO. clap has typed every value already;
//! this step reads the secrets (from their variable or their `_FILE`),
//! checks them and fills in the defaults that depend on other settings.
//! Every error names the flag, the environment variable and the fix, and
//! is a usage error (exit 2). Secrets stay wrapped.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};

use crate::accounts::{Account, AccountSettings};
use crate::logging::LogFormat;
use crate::mail::{MailSettings, MailUrl};
use crate::secret::Secret;
use crate::settings::Settings;
use crate::stripe::ApiKey;

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
    /// `--stripe-write-back`: keys are written onto their Stripe objects.
    pub stripe_write_back: bool,
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
                Database::Url(Secret::from(url))
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
        let mut mail = MailSettings::new(mail_url, s.mail_from.clone());
        mail.support = s.mail_support.clone().and_then(|support| support.0);
        mail.templates_dir = s.mail_templates.clone();
        let log_format = match s.log_format.clone().and_then(|format| format.0) {
            Some(format) => format,
            None if stderr_is_terminal => LogFormat::Text,
            None => LogFormat::Json,
        };
        Ok(Config {
            stripe_api_key,
            stripe_api_base: s.stripe_api_base.clone(),
            stripe_rps: s.stripe_rps,
            database,
            data_dir: s.data_dir.clone(),
            mail,
            mail_max_attempts: s.mail_max_attempts,
            grace: s.grace,
            past_due_grace: s.past_due_grace,
            log_format,
            mail_since: s.mail_since,
            accounts: AccountSettings {
                connected: s.stripe_accounts.clone(),
                file: s.accounts_file.clone().filter(|p| !p.as_os_str().is_empty()),
            },
            account_concurrency: usize::from(s.account_concurrency),
            stripe_write_back: s.stripe_write_back,
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

fn absolute(path: &std::path::Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
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
