//! The commands of cli.md, one file each, as mini-redis has: each file owns
//! its clap arguments and its `run`. This module holds the command line
//! ([`Cli`], [`Command`]) and only forwards; `main` maps the outcome to an
//! exit code (`crate::error`).

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::db::OpenDatabase;
use crate::error::usage;
use crate::mail::MailService;
use crate::settings::Settings;
use crate::shutdown::Shutdown;

pub mod daemon;
pub mod keys;
pub mod licenses;
pub mod machines;
pub mod mail;
pub mod migrate;
pub mod overrides;
pub mod reconcile;
pub mod serve;
pub mod status;

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One run: incremental from the event cursor when one is fresh, else full.
    Reconcile(reconcile::ReconcileArgs),
    /// Long-running: a reconcile at each tick of a cron expression, until SIGTERM/SIGINT.
    Daemon(Box<daemon::DaemonArgs>),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Last runs, cursor age, license counts by status, pending or failed email.
    Status(status::StatusArgs),
    /// Look at licenses.
    #[command(subcommand)]
    Licenses(licenses::LicensesCommand),
    /// License email support tools.
    #[command(subcommand)]
    Mail(mail::MailCommand),
    /// The key API an application checks its license with (docs/key-api.md), until SIGTERM/SIGINT.
    Serve(serve::ServeArgs),
    /// Signing keys of the key API's tokens.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

/// `--output`: text for people, JSON (cli.md "JSON shapes") for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Text,
    Json,
}

impl Command {
    /// Whether the command stops cleanly on SIGTERM/SIGINT (after the page
    /// in progress); the others keep the signals' default action.
    pub fn stops_on_signal(&self) -> bool {
        matches!(self, Command::Reconcile(_) | Command::Daemon(_) | Command::Serve(_))
    }

    pub async fn run(self, config: &Config, shutdown: Shutdown) -> Result<()> {
        match self {
            Command::Reconcile(args) => reconcile::run(config, args, shutdown).await,
            Command::Daemon(args) => daemon::run(config, *args, shutdown).await,
            Command::Migrate => migrate::run(config),
            Command::Status(args) => status::run(config, args),
            Command::Licenses(command) => licenses::run(config, command).await,
            Command::Mail(command) => mail::run(config, command).await,
            Command::Serve(args) => serve::run(config, args, shutdown).await,
            Command::Keys(command) => keys::run(command),
        }
    }
}

/// Opens the database and applies pending migrations, so that read
/// commands work on a fresh embedded database too.
pub fn open_migrated(config: &Config) -> Result<OpenDatabase> {
    let db = OpenDatabase::open(&config.database)?;
    db.store.migrate()?;
    Ok(db)
}

/// The email service of one account: its sender and templates from the
/// accounts file, else the deployment's.
fn account_mail(config: &Config, stripe_account: Option<&str>) -> Result<MailService> {
    let settings = config.accounts.mail_for(stripe_account, &config.mail).map_err(usage)?;
    MailService::new(settings)
}
