//! `licensync keys generate --out DIR`: a signing key pair for the key
//! API's tokens. `signing.key` (`k4.secret`, mode 0600) stays with
//! `licensync serve`; `public.key` (`k4.public`) goes into applications.
//! The key id (`k4.pid`) is printed. An existing file is never overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use licensync_verify::Signer;

use crate::error::usage;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new signing key pair into DIR (signing.key, public.key) and print its key id.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Generate(args) => generate(&args.out),
    }
}

fn generate(dir: &Path) -> Result<()> {
    let (secret_path, public_path) = (dir.join("signing.key"), dir.join("public.key"));
    for path in [&secret_path, &public_path] {
        if path.exists() {
            return Err(usage(anyhow!(
                "{} exists; licensync never overwrites a key: choose another --out",
                path.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let keys = Signer::generate().map_err(|e| anyhow!("generating a key pair: {e}"))?;
    write_new(&secret_path, &keys.secret, 0o600)?;
    write_new(&public_path, &keys.public, 0o644)?;
    println!("{}", keys.kid);
    eprintln!(
        "wrote {} (keep it secret: licensync serve --signing-key-file) and {} (embed it in applications)",
        secret_path.display(),
        public_path.display()
    );
    Ok(())
}

/// Creates `path` (never replaces it) with `mode`, then writes `text`.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .map_err(|e| usage(anyhow!("cannot create {}: {e}", path.display())))?;
    writeln!(file, "{text}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
