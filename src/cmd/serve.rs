//! `licensync serve`: the key API (docs/key-api.md) over the license
//! database, until SIGTERM/SIGINT, which finish the requests in flight and
//! exit 0. It never calls Stripe and never writes a license.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use licensync_verify::{PublicKey, Signer};

use super::open_migrated;
use crate::config::Config;
use crate::error::usage;
use crate::keyapi::{Keys, Service, serve};
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::values::{self, Setting};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "LICENSYNC_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,
    /// File holding the token signing key (a PASERK `k4.secret`, from `licensync keys generate`).
    #[arg(long, env = "LICENSYNC_SIGNING_KEY_FILE", value_name = "PATH")]
    pub signing_key_file: PathBuf,
    #[command(flatten)]
    pub key_api: KeyApiOptions,
}

/// The key API's settings besides its signing key, shared by `serve` and
/// `daemon --signing-key-file`.
#[derive(Debug, Args)]
pub struct KeyApiOptions {
    /// A public key (`k4.public` file) to list in `/v1/keys` beside the signing key's: the next key
    /// of a rotation, or the previous one while its tokens live. Repeatable.
    #[arg(
        long,
        env = "LICENSYNC_PUBLISH_KEY_FILES",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub publish_key_file: Vec<PathBuf>,
    /// How long a token is good for at most (30s, 15m, 24h, 7d).
    #[arg(
        long,
        env = "LICENSYNC_TOKEN_LEASE",
        default_value = "7d",
        value_name = "DURATION",
        value_parser = Setting::new("--token-lease / LICENSYNC_TOKEN_LEASE", values::parse_duration)
    )]
    pub token_lease: Duration,
    /// How far back client addresses count for a license's `ip_limit`.
    #[arg(
        long,
        env = "LICENSYNC_IP_WINDOW",
        default_value = "24h",
        value_name = "DURATION",
        value_parser = Setting::new("--ip-window / LICENSYNC_IP_WINDOW", values::parse_duration)
    )]
    pub ip_window: Duration,
    /// Behind a proxy: the client is the last `X-Forwarded-For` hop (default: the peer address).
    #[arg(long, env = "LICENSYNC_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: bool,
    /// Requests per second per client address (burst twice that).
    #[arg(long, env = "LICENSYNC_RATE_LIMIT", default_value_t = 20, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: u32,
}

pub async fn run(config: &Config, args: ServeArgs, shutdown: Shutdown) -> Result<()> {
    // Everything a bad setting breaks is checked before the database opens.
    let settings = KeyApiSettings::read(&args.signing_key_file, &args.key_api)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await.map_err(|e| {
        usage(anyhow!(
            "cannot listen on {} (--listen / LICENSYNC_LISTEN): {e}",
            args.listen
        ))
    })?;
    let db = open_migrated(config).map_err(|e| usage(e.context("opening the license database")))?;
    let kid = settings.keys.signer.kid().to_owned();
    let service = settings.service(&db.store);
    let listen = listener.local_addr().unwrap_or(args.listen);
    tracing::info!(listen = %listen, kid = %kid, "key API listening");
    serve(listener, Arc::new(service), shutdown).await?;
    tracing::info!("key API stopped");
    Ok(())
}

/// The key API's settings, read and checked before anything opens.
pub struct KeyApiSettings {
    keys: Keys,
    ip_window: chrono::Duration,
    trust_forwarded_for: bool,
    rate_limit: u32,
}

impl KeyApiSettings {
    pub fn read(signing_key_file: &Path, options: &KeyApiOptions) -> Result<KeyApiSettings> {
        let keys = Keys {
            signer: read_signing_key(signing_key_file)?,
            published: options
                .publish_key_file
                .iter()
                .map(|path| read_public_key(path))
                .collect::<Result<_>>()?,
            lease: chrono::Duration::from_std(options.token_lease)
                .map_err(|_| usage(anyhow!("--token-lease / LICENSYNC_TOKEN_LEASE is too long")))?,
        };
        let ip_window = chrono::Duration::from_std(options.ip_window)
            .map_err(|_| usage(anyhow!("--ip-window / LICENSYNC_IP_WINDOW is too long")))?;
        Ok(KeyApiSettings {
            keys,
            ip_window,
            trust_forwarded_for: options.trust_forwarded_for,
            rate_limit: options.rate_limit,
        })
    }

    pub fn kid(&self) -> &str {
        self.keys.signer.kid()
    }

    /// The service over `store`, with a pool of its own.
    pub fn service(self, store: &Store) -> Service {
        Service::new(
            store.serving(8),
            self.keys,
            self.ip_window,
            self.trust_forwarded_for,
            self.rate_limit,
        )
    }
}

/// The signing key, from its file only (never from the command line).
/// Errors name the file and the setting, never the file's content.
fn read_signing_key(path: &Path) -> Result<Signer> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(anyhow!(
            "cannot read the signing key {} (--signing-key-file / LICENSYNC_SIGNING_KEY_FILE): {e}",
            path.display()
        ))
    })?;
    Signer::from_paserk(&text).map_err(|_| {
        usage(anyhow!(
            "{} is not a k4.secret signing key (--signing-key-file / LICENSYNC_SIGNING_KEY_FILE): \
             make one with `licensync keys generate --out DIR`",
            path.display()
        ))
    })
}

fn read_public_key(path: &Path) -> Result<PublicKey> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(anyhow!(
            "cannot read the public key {} (--publish-key-file / LICENSYNC_PUBLISH_KEY_FILES): {e}",
            path.display()
        ))
    })?;
    PublicKey::from_paserk(&text).map_err(|_| {
        usage(anyhow!(
            "{} is not a k4.public key (--publish-key-file / LICENSYNC_PUBLISH_KEY_FILES)",
            path.display()
        ))
    })
}
