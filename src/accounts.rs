//! The Stripe accounts one deployment reconciles (licensing-rules §9).
//!
//! An account is a unit of work: its own licenses, run rows, event cursor,
//! run lock, email sender and Stripe rate budget. Which accounts:
//! - nothing configured: the API key's own account, as before accounts
//!   existed (its rows carry no account id: `stripe_account` is null);
//! - `--stripe-account acct_...` (repeatable, or `LICENSYNC_STRIPE_ACCOUNTS`
//!   separated by commas): Stripe Connect, each connected account read with
//!   the platform key through the `Stripe-Account` header. `self` names the
//!   platform key's own account, which is otherwise not read;
//! - `--accounts-file PATH` (TOML): one `[[account]]` per account, each
//!   with a key file of its own (multi-brand) or none (a connected account
//!   read with the platform key), and its own sender and templates.
//!
//! Both can be given; together they must name each account once. Choices
//! where the rules are silent, each with its test below:
//! - at most one account is "the key's own" (null): two brands with keys of
//!   their own must say which `acct_` each is, or their licenses would
//!   share one identity (`two_own_accounts_are_refused`);
//! - a relative path in the accounts file is relative to the file
//!   (`paths_in_the_file_are_relative_to_it`);
//! - `--shard I/N` keeps the accounts whose stable hash (SHA-256 of the
//!   account id, the own account hashing as the empty string) is I modulo
//!   N: every account is in exactly one shard, whatever the order or number
//!   of accounts configured (`every_account_is_in_exactly_one_shard`).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::mail::{MailSettings, parse_from};
use crate::stripe::ApiKey;

/// What a report, log line or metric label calls the key's own account.
pub const OWN_ACCOUNT: &str = "own";

/// One account to reconcile.
#[derive(Debug, Clone)]
pub struct Account {
    /// The account's id, stored on every row of it; `None`: the key's own account.
    pub stripe_account: Option<String>,
    /// A name for people (the file's `name`, else the account id).
    pub name: String,
    pub api_key: ApiKey,
    /// Reads through the `Stripe-Account` header (a connected account).
    pub connect: bool,
    /// Its sender and templates.
    pub mail: MailSettings,
}

impl Account {
    /// The account id, or [`OWN_ACCOUNT`].
    pub fn label(&self) -> &str {
        label(self.stripe_account.as_deref())
    }
}

/// An account id for people: `acct_...`, or [`OWN_ACCOUNT`].
pub fn label(stripe_account: Option<&str>) -> &str {
    stripe_account.unwrap_or(OWN_ACCOUNT)
}

/// clap `value_parser` for `--stripe-account`: `acct_` and letters or
/// digits, or `self` (the key's own account, as `None`).
pub fn account_arg(value: &str) -> std::result::Result<ConnectedAccount, String> {
    let value = value.trim();
    if value == "self" {
        return Ok(ConnectedAccount(None));
    }
    check_account_id(value).map(|id| ConnectedAccount(Some(id)))
}

/// A `--stripe-account` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedAccount(pub Option<String>);

fn check_account_id(value: &str) -> std::result::Result<String, String> {
    let rest = value.strip_prefix("acct_").unwrap_or("");
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "`{value}` is not a Stripe account id: write `acct_` followed by letters and digits, as the \
             Dashboard shows it (Settings > Account details, or Connect > Accounts), or `self` for the key's own account"
        ));
    }
    Ok(value.to_owned())
}

/// `--shard I/N`: the accounts of shard I (0-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(value: &str) -> std::result::Result<Shard, String> {
        let bad = || {
            format!(
                "`{value}` is not a shard: write I/N with 0 <= I < N, e.g. 0/3 \
                 (in a Kubernetes Indexed Job: $(JOB_COMPLETION_INDEX)/<completions>)"
            )
        };
        let (i, n) = value.trim().split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    pub fn contains(&self, stripe_account: Option<&str>) -> bool {
        stable_hash(stripe_account) % u64::from(self.count) == u64::from(self.index)
    }
}

/// A hash of the account id that never changes between versions, machines
/// or processes (SHA-256, first 8 bytes): shards and run locks depend on it.
pub fn stable_hash(stripe_account: Option<&str>) -> u64 {
    let digest = Sha256::digest(stripe_account.unwrap_or("").as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

/// The accounts file: one `[[account]]` table per account.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    #[serde(default)]
    account: Vec<FileAccount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccount {
    name: String,
    /// `acct_...`; may be left out for the one account that is the key's own.
    stripe_account: Option<String>,
    /// A key of the account's own; without it, the platform key reads the
    /// account through `Stripe-Account`.
    stripe_api_key_file: Option<PathBuf>,
    mail_from: Option<String>,
    mail_templates: Option<PathBuf>,
}

/// Everything that says which accounts to read.
#[derive(Debug, Clone, Default)]
pub struct AccountSettings {
    /// `--stripe-account`.
    pub connected: Vec<ConnectedAccount>,
    pub file: Option<PathBuf>,
}

impl AccountSettings {
    /// Whether anything beyond the key's own account is configured.
    pub fn is_configured(&self) -> bool {
        !self.connected.is_empty() || self.file.is_some()
    }

    /// The accounts to reconcile; `platform_key` is `STRIPE_API_KEY` (needed
    /// for the key's own account and for connected accounts), `mail` the
    /// deployment's sender, which an account of the file can override.
    pub fn resolve(&self, platform_key: Option<&ApiKey>, mail: &MailSettings) -> Result<Vec<Account>> {
        let need_platform_key = |what: &str| {
            platform_key.cloned().ok_or_else(|| {
                anyhow!(
                    "{what} is read with the platform's key: set STRIPE_API_KEY (or --stripe-api-key) to a restricted rk_ or secret sk_ key"
                )
            })
        };
        let mut accounts = Vec::new();
        if !self.is_configured() {
            accounts.push(Account {
                stripe_account: None,
                name: OWN_ACCOUNT.into(),
                api_key: need_platform_key("the account")?,
                connect: false,
                mail: mail.clone(),
            });
            return Ok(accounts);
        }
        if let Some(path) = &self.file {
            accounts.extend(read_file(path, platform_key, mail)?);
        }
        for ConnectedAccount(id) in &self.connected {
            let what = match id {
                Some(id) => format!("connected account {id} (--stripe-account)"),
                None => "the key's own account (--stripe-account self)".into(),
            };
            accounts.push(Account {
                stripe_account: id.clone(),
                name: label(id.as_deref()).to_owned(),
                api_key: need_platform_key(&what)?,
                connect: id.is_some(),
                mail: mail.clone(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for a in &accounts {
            if !seen.insert(a.stripe_account.clone()) {
                bail!(
                    "account {} is configured twice (--stripe-account, LICENSYNC_STRIPE_ACCOUNTS and --accounts-file together \
                     must name each account once); remove one of them",
                    a.label()
                );
            }
        }
        Ok(accounts)
    }
}

/// One `[[account]]` of the file, checked, its key not read yet.
struct FileEntry {
    at: String,
    name: String,
    stripe_account: Option<String>,
    key_file: Option<PathBuf>,
    mail: MailSettings,
}

fn parse_file(path: &Path, mail: &MailSettings) -> Result<Vec<FileEntry>> {
    let setting = "--accounts-file / LICENSYNC_ACCOUNTS_FILE";
    let text = std::fs::read_to_string(path).map_err(|e| anyhow!("{setting}: cannot read {} ({e})", path.display()))?;
    let file: AccountsFile = toml::from_str(&text)
        .map_err(|e| anyhow!("{setting}: {} is not a valid accounts file: {e}", path.display()))?;
    if file.account.is_empty() {
        bail!(
            "{setting}: {} has no [[account]] table; add one per Stripe account (name, stripe_account, stripe_api_key_file)",
            path.display()
        );
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut own: Option<String> = None;
    let mut entries = Vec::new();
    for (i, entry) in file.account.into_iter().enumerate() {
        let at = format!("{setting}: {} [[account]] #{} `{}`", path.display(), i + 1, entry.name);
        if entry.name.trim().is_empty() {
            bail!("{at}: `name` is empty; give every account a name people recognise");
        }
        let stripe_account = entry
            .stripe_account
            .as_deref()
            .map(|v| check_account_id(v.trim()).map_err(|e| anyhow!("{at}: stripe_account {e}")))
            .transpose()?;
        if entry.stripe_api_key_file.is_none() && stripe_account.is_none() {
            bail!(
                "{at}: give it a stripe_api_key_file (an account with a key of its own) or a stripe_account \
                 (a connected account, read with the platform key)"
            );
        }
        if stripe_account.is_none()
            && let Some(other) = own.replace(entry.name.clone())
        {
            bail!(
                "{at}: `{other}` is already the key's own account (no stripe_account); give each account with a key \
                 of its own its `stripe_account = \"acct_...\"` (Dashboard: Settings > Account details)"
            );
        }
        let mut settings = mail.clone();
        if let Some(from) = &entry.mail_from {
            settings.from = parse_from(from).with_context(|| format!("{at}: mail_from"))?;
        }
        if let Some(templates) = &entry.mail_templates {
            settings.templates_dir = Some(dir.join(templates));
        }
        entries.push(FileEntry {
            at,
            name: entry.name,
            stripe_account,
            key_file: entry.stripe_api_key_file.map(|f| dir.join(f)),
            mail: settings,
        });
    }
    Ok(entries)
}

fn read_file(path: &Path, platform_key: Option<&ApiKey>, mail: &MailSettings) -> Result<Vec<Account>> {
    let mut accounts = Vec::new();
    for entry in parse_file(path, mail)? {
        let at = &entry.at;
        let (api_key, connect) = match &entry.key_file {
            Some(key_file) => {
                let key = std::fs::read_to_string(key_file).map_err(|e| {
                    anyhow!(
                        "{at}: cannot read stripe_api_key_file {} ({e}); point it at the file that holds the account's key",
                        key_file.display()
                    )
                })?;
                let key = ApiKey::parse(key.trim())
                    .map_err(|e| anyhow!("{at}: stripe_api_key_file {}: {e}", key_file.display()))?;
                (key, false)
            }
            None => {
                let key = platform_key.cloned().ok_or_else(|| {
                    anyhow!(
                        "{at}: connected account {} is read with the platform's key: set STRIPE_API_KEY",
                        label(entry.stripe_account.as_deref())
                    )
                })?;
                (key, true)
            }
        };
        accounts.push(Account {
            stripe_account: entry.stripe_account,
            name: entry.name,
            api_key,
            connect,
            mail: entry.mail,
        });
    }
    Ok(accounts)
}

impl AccountSettings {
    /// The sender and templates of one account's emails (`mail resend`,
    /// `licenses reissue`), without reading any key: the accounts file's
    /// entry for it, else the deployment's.
    pub fn mail_for(&self, stripe_account: Option<&str>, mail: &MailSettings) -> Result<MailSettings> {
        if let Some(path) = &self.file {
            for entry in parse_file(path, mail)? {
                if entry.stripe_account.as_deref() == stripe_account {
                    return Ok(entry.mail);
                }
            }
        }
        Ok(mail.clone())
    }
}

/// The accounts of `shard`, or all of them.
pub fn select(accounts: Vec<Account>, shard: Option<Shard>) -> Vec<Account> {
    match shard {
        None => accounts,
        Some(shard) => accounts
            .into_iter()
            .filter(|a| shard.contains(a.stripe_account.as_deref()))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
