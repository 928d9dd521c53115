//! The command line of cli.md: every setting is a flag and an environment
//! variable (flags win). This module only parses; `config` validates the
//! raw strings into typed settings before any IO, so that a bad value is a
//! usage error (exit 2) naming the flag and the variable.
//!
//! Secrets are taken as plain strings here and never echoed: clap's own
//! "invalid value" errors would print them, so their checks live in `config`.

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "licensync",
    version,
    about = "Turns Stripe purchases into software licenses, without webhooks",
    long_about = "Turns Stripe purchases into software licenses, without webhooks.\n\n\
        licensync pages through Stripe checkout sessions, invoices and subscriptions, \
        reconciles them against a PostgreSQL license table, and issues, extends, suspends \
        or expires licenses idempotently, emailing each new key to its customer.\n\n\
        Exit codes: 0 success; 1 the run failed (committed work stays, the next run converges); \
        2 usage or configuration error; 75 another run holds the lock (safe to retry)."
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

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
    pub stripe_api_key_file: Option<std::path::PathBuf>,

    /// Base URL of the Stripe API.
    #[arg(
        long,
        env = "STRIPE_API_BASE",
        global = true,
        default_value = "https://api.stripe.com",
        value_name = "URL"
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
    pub database_url_file: Option<std::path::PathBuf>,

    /// Where the embedded database and the mail outbox directory live.
    #[arg(
        long,
        env = "LICENSYNC_DATA_DIR",
        global = true,
        default_value = "./licensync-data",
        value_name = "DIR"
    )]
    pub data_dir: std::path::PathBuf,

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
    pub mail_url_file: Option<std::path::PathBuf>,

    /// Only purchases created at or after this time (RFC 3339 or YYYY-MM-DD) get the license email;
    /// older ones are issued silently (`mail resend` sends them). For adopting an existing account.
    #[arg(
        long,
        env = "LICENSYNC_MAIL_SINCE",
        global = true,
        value_name = "TIME",
        value_parser = crate::config::time_arg
    )]
    pub mail_since: Option<chrono::DateTime<chrono::Utc>>,

    /// Sender address, e.g. "Acme Licenses <licenses@acme.example>".
    #[arg(
        long,
        env = "LICENSYNC_MAIL_FROM",
        global = true,
        default_value = "licenses@localhost",
        value_name = "ADDRESS"
    )]
    pub mail_from: String,

    /// Support address shown in license emails and used as Reply-To.
    #[arg(long, env = "LICENSYNC_MAIL_SUPPORT", global = true, value_name = "ADDRESS")]
    pub mail_support: Option<String>,

    /// Directory with template files overriding the built-in email wording.
    #[arg(long, env = "LICENSYNC_MAIL_TEMPLATES", global = true, value_name = "DIR")]
    pub mail_templates: Option<std::path::PathBuf>,

    /// Attempts before an undeliverable email is marked failed.
    #[arg(
        long,
        env = "LICENSYNC_MAIL_MAX_ATTEMPTS",
        global = true,
        default_value = "8",
        value_name = "N"
    )]
    pub mail_max_attempts: String,

    /// Renewal grace after the end of a paid period (30s, 15m, 24h, 7d).
    #[arg(
        long,
        env = "LICENSYNC_GRACE",
        global = true,
        default_value = "24h",
        value_name = "DURATION"
    )]
    pub grace: String,

    /// Grace while Stripe retries a failed payment.
    #[arg(
        long,
        env = "LICENSYNC_PAST_DUE_GRACE",
        global = true,
        default_value = "7d",
        value_name = "DURATION"
    )]
    pub past_due_grace: String,

    /// Log format on stderr: text (default on a terminal) or json (default otherwise).
    #[arg(long, env = "LICENSYNC_LOG_FORMAT", global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Client-side ceiling on Stripe requests per second (default: below Stripe's limits for the key's mode).
    #[arg(long, env = "LICENSYNC_STRIPE_RPS", global = true, value_name = "N")]
    pub stripe_rps: Option<String>,

    /// Stripe Connect: reconcile this connected account (acct_...) with the platform key, through the
    /// Stripe-Account header; repeatable (the variable separates them with commas). `self` is the
    /// platform key's own account, which is not read when only connected accounts are named.
    #[arg(
        long = "stripe-account",
        env = "LICENSYNC_STRIPE_ACCOUNTS",
        global = true,
        value_name = "ACCT",
        value_delimiter = ',',
        value_parser = crate::accounts::account_arg
    )]
    pub stripe_accounts: Vec<crate::accounts::ConnectedAccount>,

    /// Several accounts with keys, senders and templates of their own: a TOML file with one [[account]]
    /// table each (name, stripe_account, stripe_api_key_file, mail_from, mail_templates).
    #[arg(long, env = "LICENSYNC_ACCOUNTS_FILE", global = true, value_name = "PATH")]
    pub accounts_file: Option<std::path::PathBuf>,

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One run: incremental from the event cursor when one is fresh, else full.
    Reconcile(ReconcileArgs),
    /// Long-running: a reconcile at each tick of a cron expression, until SIGTERM/SIGINT.
    Daemon(DaemonArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Last runs, cursor age, license counts by status, pending or failed email.
    Status {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Look at licenses.
    #[command(subcommand)]
    Licenses(LicensesCommand),
    /// License email support tools.
    #[command(subcommand)]
    Mail(MailCommand),
}

#[derive(Debug, Args, Clone)]
pub struct ReconcileArgs {
    /// Page everything instead of reading events since the cursor.
    #[arg(long, conflicts_with = "since")]
    pub full: bool,
    /// Catch up on everything that changed since this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// End of the --since window (default: now).
    #[arg(long, value_name = "TIME", requires = "since")]
    pub until: Option<String>,
    /// Compute and print the plan; write nothing (no license, no cursor, no email, no run row).
    #[arg(long)]
    pub dry_run: bool,
    /// Print the run report as text or as one JSON object on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Allow a key whose mode (test/live) differs from the licenses already stored.
    #[arg(long)]
    pub allow_mode_mismatch: bool,
    /// Write Prometheus textfile metrics here after the run.
    #[arg(long, env = "LICENSYNC_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<std::path::PathBuf>,
    /// The JSON report lists at most this many actions and counts the rest in `actions_omitted`
    /// (every action is in the ledger).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub report_actions: usize,
    /// Only the accounts of shard I of N (0 <= I < N), by a stable hash of the account id: a Kubernetes
    /// Indexed Job passes $(JOB_COMPLETION_INDEX)/N.
    #[arg(long, env = "LICENSYNC_SHARD", value_name = "I/N")]
    pub shard: Option<crate::accounts::Shard>,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Cron expression with seconds, e.g. "0 */15 * * * *" (every 15 minutes).
    #[arg(long, env = "LICENSYNC_SCHEDULE", value_name = "CRON")]
    pub schedule: String,
    #[command(flatten)]
    pub reconcile: DaemonReconcileArgs,
}

#[derive(Debug, Args)]
pub struct DaemonReconcileArgs {
    /// Allow a key whose mode (test/live) differs from the licenses already stored.
    #[arg(long)]
    pub allow_mode_mismatch: bool,
    /// Write Prometheus textfile metrics here after every run.
    #[arg(long, env = "LICENSYNC_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<std::path::PathBuf>,
    /// Only the accounts of shard I of N, as for `reconcile --shard`.
    #[arg(long, env = "LICENSYNC_SHARD", value_name = "I/N")]
    pub shard: Option<crate::accounts::Shard>,
}

#[derive(Debug, Subcommand)]
pub enum LicensesCommand {
    /// List licenses, newest first.
    List {
        /// Only licenses with this status (active, suspended, expired, revoked).
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// Only licenses of this customer email (case-insensitive).
        #[arg(long, value_name = "EMAIL")]
        customer: Option<String>,
        /// Only licenses of this Stripe account (acct_..., or `self` for the key's own account).
        #[arg(long = "account", value_name = "ACCT", value_parser = crate::accounts::account_arg)]
        account: Option<crate::accounts::ConnectedAccount>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// One license with its ledger and key history (a replaced key finds its license).
    Show {
        /// The license key or its numeric id.
        key_or_id: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Operator override: revoked now and on every later run, whatever Stripe says.
    Revoke(OverrideArgs),
    /// Operator override: suspended now and on every later run.
    Suspend(OverrideArgs),
    /// Operator override: these fields keep the pinned values; the rest follows Stripe.
    #[command(group(ArgGroup::new("pins").required(true).multiple(true).args(["hwid_limit", "ip_limit", "expires_at"])))]
    Pin(PinArgs),
    /// Clear the license's override: it follows Stripe again (now from the stored state, fully on the next run).
    Release(ReleaseArgs),
    /// A new key for the same license, mailed; the old key is kept in its history and no longer valid.
    Reissue(OverrideArgs),
}

/// Who runs an operator command (recorded in the ledger).
#[derive(Debug, Args, Clone)]
pub struct OperatorArgs {
    /// Who does this, for the ledger (default: the OS user name).
    #[arg(long, env = "LICENSYNC_OPERATOR", value_name = "NAME")]
    pub by: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Args, Clone)]
pub struct OverrideArgs {
    /// The license key or its numeric id.
    pub key_or_id: String,
    /// Why, for the ledger and for whoever looks at the license next.
    #[arg(long, value_name = "TEXT", value_parser = non_empty)]
    pub reason: String,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

#[derive(Debug, Args, Clone)]
pub struct PinArgs {
    /// The license key or its numeric id.
    pub key_or_id: String,
    /// Seats (devices) to keep whatever the quantity bought.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub hwid_limit: Option<i32>,
    /// Distinct IP addresses to keep.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..))]
    pub ip_limit: Option<i32>,
    /// Expiry to keep (RFC 3339 or YYYY-MM-DD, midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = expires_at)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why, for the ledger and for whoever looks at the license next.
    #[arg(long, value_name = "TEXT", value_parser = non_empty)]
    pub reason: String,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ReleaseArgs {
    /// The license key or its numeric id.
    pub key_or_id: String,
    /// Why (optional), for the ledger.
    #[arg(long, value_name = "TEXT", value_parser = non_empty)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub operator: OperatorArgs,
}

fn non_empty(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty: say why, e.g. \"chargeback abuse, ticket 4711\"".into());
    }
    Ok(value.to_owned())
}

fn expires_at(value: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    crate::config::parse_timestamp(value, "--expires-at")
}

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Queue the license email again and send it ("customer lost the email").
    Resend {
        /// The license key or its numeric id.
        key_or_id: String,
    },
}
