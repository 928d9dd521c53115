//! Checks a licensync token offline and prints the verdict.
//!
//! ```text
//! cargo run -p licensync-verify --example check -- \
//!     --token v4.public.… --key AX76H-… [--machine FINGERPRINT] \
//!     --public-key k4.public.… [--public-key k4.public.…] [--nonce N] [--product P]
//! ```
//!
//! Each option can come from the environment instead: `LICENSYNC_TOKEN`,
//! `LICENSYNC_LICENSE_KEY`, `LICENSYNC_MACHINE`, `LICENSYNC_PUBLIC_KEYS`
//! (several keys separated by commas), `LICENSYNC_NONCE`, `LICENSYNC_PRODUCT`.
//! A `--public-key` value that names a file (such as `public.key`) is read.
//!
//! Exit status: 0 valid, 1 refused, 2 usage.

use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use licensync_verify::{Claims, PublicKey, Verifier, VerifyError};

#[derive(Default)]
struct Args {
    token: Option<String>,
    key: Option<String>,
    machine: Option<String>,
    public_keys: Vec<String>,
    nonce: Option<String>,
    product: Option<String>,
}

const USAGE: &str = "usage: check --token TOKEN --key LICENSE_KEY [--machine FINGERPRINT] \
--public-key K4_PUBLIC_OR_FILE... [--nonce N] [--product P]";

fn parse_args() -> Result<Args, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut args = Args {
        token: env("LICENSYNC_TOKEN"),
        key: env("LICENSYNC_LICENSE_KEY"),
        machine: env("LICENSYNC_MACHINE"),
        public_keys: env("LICENSYNC_PUBLIC_KEYS")
            .map(|v| v.split(',').map(|k| k.trim().to_owned()).collect())
            .unwrap_or_default(),
        nonce: env("LICENSYNC_NONCE"),
        product: env("LICENSYNC_PRODUCT"),
    };
    let mut from_flags = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--token" => args.token = Some(value),
            "--key" => args.key = Some(value),
            "--machine" => args.machine = Some(value),
            "--public-key" => from_flags.push(value),
            "--nonce" => args.nonce = Some(value),
            "--product" => args.product = Some(value),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if !from_flags.is_empty() {
        args.public_keys = from_flags;
    }
    Ok(args)
}

fn public_key(arg: &str) -> Result<PublicKey, String> {
    let text = if arg.starts_with("k4.") {
        arg.to_owned()
    } else {
        std::fs::read_to_string(arg).map_err(|e| format!("cannot read the public key file {arg}: {e}"))?
    };
    PublicKey::from_paserk(&text).map_err(|e| format!("{arg}: {e}"))
}

fn check(args: &Args, token: &str, key: &str, verifier: &Verifier) -> Result<Claims, VerifyError> {
    let claims = verifier.verify(token, key, args.machine.as_deref(), Utc::now())?;
    if let Some(nonce) = &args.nonce {
        claims.check_nonce(nonce)?;
    }
    if let Some(product) = &args.product {
        claims.check_product(product)?;
    }
    Ok(claims)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let (Some(token), Some(key)) = (&args.token, &args.key) else {
        eprintln!("a token and a license key are needed\n{USAGE}");
        return ExitCode::from(2);
    };
    if args.public_keys.is_empty() {
        eprintln!("at least one public key is needed\n{USAGE}");
        return ExitCode::from(2);
    }
    let keys: Result<Vec<PublicKey>, String> = args.public_keys.iter().map(|k| public_key(k)).collect();
    let verifier = match keys {
        Ok(keys) => Verifier::new(keys),
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };

    match check(&args, token, key, &verifier) {
        Ok(claims) => {
            let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
            let license_end = claims.lic_exp.map_or("never (perpetual)".to_owned(), time);
            println!("valid: license {} for {}", claims.sub, claims.products.join(", "));
            println!("  token good until {}; license ends {license_end}", time(claims.exp));
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("refused: {error}");
            ExitCode::from(1)
        }
    }
}
