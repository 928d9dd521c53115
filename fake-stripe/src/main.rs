//! `fake-stripe`: serves the fake Stripe API for the quick start, either until
//! Ctrl-C or around one command (`--exec`) that gets `STRIPE_API_BASE` and
//! `STRIPE_API_KEY` in its environment.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fake_stripe::{DEFAULT_API_KEY, FakeStripe, Options};

#[derive(Parser)]
#[command(
    version,
    about = "A stateful fake of the Stripe API for licensync's quick start and tests"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:12111")]
    addr: SocketAddr,
    /// The API key to accept (sk_/rk_, test or live).
    #[arg(long, default_value = DEFAULT_API_KEY)]
    api_key: String,
    /// Seed a sample catalog, customers and purchases.
    #[arg(long)]
    sample: bool,
    /// Seed N purchases spread over the past year instead (85% subscriptions, each its own customer),
    /// for trying a first import at scale, e.g. with --mail-since.
    #[arg(long, value_name = "N", conflicts_with = "sample")]
    purchases: Option<usize>,
    /// Run this command against the server, then stop with its exit code.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true, value_name = "CMD")]
    exec: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let opts = Options {
        api_key: args.api_key,
        seed_sample: false,
    };
    let fake = FakeStripe::start_on(args.addr, opts)
        .await
        .with_context(|| format!("cannot listen on {}; pick another with --addr", args.addr))?;
    // The quick start's reconciler runs on the wall clock, so the sample's
    // periods must be current rather than at the library's fixed epoch.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock before 1970")?;
    fake.set_now(i64::try_from(wall.as_secs()).context("system clock out of range")?);
    if args.sample {
        fake.seed_sample();
    }
    if let Some(n) = args.purchases {
        fake.seed_purchases(n);
    }

    let Some((program, program_args)) = args.exec.split_first() else {
        println!("fake-stripe listening on {}", fake.base_url());
        println!("STRIPE_API_BASE={}", fake.base_url());
        println!("STRIPE_API_KEY={}", fake.api_key());
        println!("Press Ctrl-C to stop.");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        return Ok(ExitCode::SUCCESS);
    };
    let status = tokio::process::Command::new(program)
        .args(program_args)
        .env("STRIPE_API_BASE", fake.base_url())
        .env("STRIPE_API_KEY", fake.api_key())
        .status()
        .await
        .with_context(|| format!("cannot run `{program}`"))?;
    // A command killed by a signal has no code; report it as a failure.
    let code = status.code().unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
