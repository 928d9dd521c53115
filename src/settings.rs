//! The settings every command shares (cli.md "Configuration"): each a
//! flag and an environment variable, flags winning. clap types each value
//! once with the parsers of `values`; `config` builds the `Config` from
//! them, reading the secrets.
//!
//! Secrets (the Stripe key, the database and mail URLs) stay raw strings
//! here and are never echoed: they can also come from a `_FILE`, and
//! clap's own "invalid value" errors would print them, so `config` reads
//! and checks them in one step.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lettre::message::Mailbox;

use crate::accounts::{self, ConnectedAccount};
use crate::logging::LogFormat;
use crate::values::{self, MaybeBlank, Setting};

/// Settings shared by every command (cli.md "Configuration"). Shown under a
/// heading of their own so that `reconcile --help` lists its own flags apart.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options (any command; each also an environment variable)")]
pub struct Settings {
    /// Stripe restricted (rk_) or secret (sk_) key; its prefix tells live or test mode. As a flag it is
    /// visible to every user of the machine (`ps`): prefer the variable or --stripe-api-key-file.
    #[arg(
        long,
        env = "STRIPE_API_KEY",
        global = true,
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub stripe_api_key: Option<String>,

    /// A file holding the Stripe key (as container secrets are mounted); trailing newline trimmed.
    #[arg(long, env = "STRIPE_API_KEY_FILE", global = true, value_name = "PATH")]
    pub stripe_api_key_file: Option<PathBuf>,

    /// Base URL of the Stripe API.
    #[arg(
        long,
        env = "STRIPE_API_BASE",
        global = true,
        default_value = "https://api.stripe.com",
        value_name = "URL",
        value_parser = Setting::new("--stripe-api-base / STRIPE_API_BASE", values::parse_http_url)
    )]
    pub stripe_api_base: String,

    /// PostgreSQL URL; unset: the embedded local database under --data-dir.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// A file holding the PostgreSQL URL; trailing newline trimmed.
    #[arg(long, env = "DATABASE_URL_FILE", global = true, value_name = "PATH")]
    pub database_url_file: Option<PathBuf>,

    /// Where the embedded database and the mail outbox directory live.
    #[arg(
        long,
        env = "LICENSYNC_DATA_DIR",
        global = true,
        default_value = "./licensync-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// smtp://user:pass@host:587 (STARTTLS), smtps://user:pass@host:465, smtp://host:25?tls=none,
    /// file:///path (one .eml per message) or none. Default: file://<data-dir>/outbox
    #[arg(
        long,
        env = "LICENSYNC_MAIL_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub mail_url: Option<String>,

    /// A file holding the mail URL (it may carry the SMTP password); trailing newline trimmed.
    #[arg(long, env = "LICENSYNC_MAIL_URL_FILE", global = true, value_name = "PATH")]
    pub mail_url_file: Option<PathBuf>,

    /// Only purchases created at or after this time (RFC 3339 or YYYY-MM-DD) get the license email;
    /// older ones are issued silently (`mail resend` sends them). For adopting an existing account.
    #[arg(
        long,
        env = "LICENSYNC_MAIL_SINCE",
        global = true,
        value_name = "TIME",
        value_parser = values::time_arg
    )]
    pub mail_since: Option<chrono::DateTime<chrono::Utc>>,

    /// Sender address, e.g. "Acme Licenses <licenses@acme.example>".
    #[arg(
        long,
        env = "LICENSYNC_MAIL_FROM",
        global = true,
        default_value = "licenses@localhost",
        value_name = "ADDRESS",
        value_parser = Setting::new("LICENSYNC_MAIL_FROM / --mail-from", values::parse_mailbox_arg)
    )]
    pub mail_from: Mailbox,

    /// Support address shown in license emails and used as Reply-To.
    #[arg(
        long,
        env = "LICENSYNC_MAIL_SUPPORT",
        global = true,
        value_name = "ADDRESS",
        value_parser = Setting::new("--mail-support / LICENSYNC_MAIL_SUPPORT", values::parse_optional_mailbox)
    )]
    pub mail_support: Option<MaybeBlank<Mailbox>>,

    /// Directory with template files overriding the built-in email wording.
    #[arg(long, env = "LICENSYNC_MAIL_TEMPLATES", global = true, value_name = "DIR")]
    pub mail_templates: Option<PathBuf>,

    /// Attempts before an undeliverable email is marked failed.
    #[arg(
        long,
        env = "LICENSYNC_MAIL_MAX_ATTEMPTS",
        global = true,
        default_value = "8",
        value_name = "N",
        value_parser = Setting::new("--mail-max-attempts / LICENSYNC_MAIL_MAX_ATTEMPTS", values::parse_positive)
    )]
    pub mail_max_attempts: u32,

    /// Renewal grace after the end of a paid period (30s, 15m, 24h, 7d).
    #[arg(
        long,
        env = "LICENSYNC_GRACE",
        global = true,
        default_value = "24h",
        value_name = "DURATION",
        value_parser = Setting::new("--grace / LICENSYNC_GRACE", values::parse_duration)
    )]
    pub grace: Duration,

    /// Grace while Stripe retries a failed payment.
    #[arg(
        long,
        env = "LICENSYNC_PAST_DUE_GRACE",
        global = true,
        default_value = "7d",
        value_name = "DURATION",
        value_parser = Setting::new("--past-due-grace / LICENSYNC_PAST_DUE_GRACE", values::parse_duration)
    )]
    pub past_due_grace: Duration,

    /// Log format on stderr: text (default on a terminal) or json (default otherwise).
    #[arg(
        long,
        env = "LICENSYNC_LOG_FORMAT",
        global = true,
        value_name = "FORMAT",
        value_parser = Setting::new("--log-format / LICENSYNC_LOG_FORMAT", values::parse_log_format)
    )]
    pub log_format: Option<MaybeBlank<LogFormat>>,

    /// Client-side ceiling on Stripe requests per second (default: below Stripe's limits for the key's mode).
    #[arg(
        long,
        env = "LICENSYNC_STRIPE_RPS",
        global = true,
        value_name = "N",
        value_parser = Setting::new("--stripe-rps / LICENSYNC_STRIPE_RPS", values::parse_positive)
    )]
    pub stripe_rps: Option<u32>,

    /// Stripe Connect: reconcile this connected account (acct_...) with the platform key, through the
    /// Stripe-Account header; repeatable (the variable separates them with commas). `self` is the
    /// platform key's own account, which is not read when only connected accounts are named.
    #[arg(
        long = "stripe-account",
        env = "LICENSYNC_STRIPE_ACCOUNTS",
        global = true,
        value_name = "ACCT",
        value_delimiter = ',',
        value_parser = accounts::account_arg
    )]
    pub stripe_accounts: Vec<ConnectedAccount>,

    /// Several accounts with keys, senders and templates of their own: a TOML file with one [[account]]
    /// table each (name, stripe_account, stripe_api_key_file, mail_from, mail_templates).
    #[arg(long, env = "LICENSYNC_ACCOUNTS_FILE", global = true, value_name = "PATH")]
    pub accounts_file: Option<PathBuf>,

    /// Accounts reconciled side by side; each has its own Stripe rate budget.
    #[arg(
        long,
        env = "LICENSYNC_ACCOUNT_CONCURRENCY",
        global = true,
        value_name = "N",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub account_concurrency: u16,

    /// Write each issued or reissued key into the metadata of its Stripe object (subscription item,
    /// payment intent or one-off invoice) for support to see in the Dashboard. Needs write permission
    /// on those objects, and shows the keys to everyone with Dashboard access.
    #[arg(long, env = "LICENSYNC_STRIPE_WRITE_BACK", global = true)]
    pub stripe_write_back: bool,
}
