//! `fake-stripe`: serves the fake Stripe API for the quick start, either until
//! Ctrl-C or around one command (`--exec`) that gets `STRIPE_API_BASE`,
//! `STRIPE_API_KEY` and `FAKE_STRIPE_ACCOUNTS` (the connected accounts of
//! `--connected`, comma-separated) in its environment.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fake_stripe::{CheckoutSpec, DEFAULT_API_KEY, FakeStripe, GeneratedAccount, Latency, Options, RateLimits};

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
    /// Serve a generated account of N purchases (85% subscriptions with an
    /// invoice per past billing period, 14% one-time Checkout Sessions, 1%
    /// one-off invoices) computed on demand, at no memory per purchase: for
    /// benchmarks at up to millions of objects. Refunds, disputes and events
    /// are empty.
    #[arg(long, value_name = "N", conflicts_with_all = ["sample", "purchases"])]
    generate: Option<usize>,
    /// With --generate: the most past billing periods a subscription has
    /// (purchases are spread over (this + 1) * 30 days).
    #[arg(long, value_name = "N", default_value_t = 12, requires = "generate",
          value_parser = clap::value_parser!(u32).range(0..=i64::from(fake_stripe::MAX_PAST_PERIODS)))]
    max_past_periods: u32,
    /// With --generate: the seed of each purchase's intervals, items, lines and guests.
    #[arg(long, default_value_t = 1, requires = "generate")]
    seed: u64,
    /// Answer each request after a latency drawn uniformly from MIN..MAX
    /// milliseconds (e.g. 50..300, a client far from Stripe; or one number).
    /// Concurrent requests overlap their latencies. Default: none.
    #[arg(long, value_name = "MIN..MAX")]
    latency_ms: Option<Latency>,
    /// Enforce Stripe's rate limits: 25 requests/s per endpoint
    /// (/v1/<first path segment>) and 100/s overall in live mode, 25/s in
    /// test mode. A request over a limit gets 429 with Stripe's rate_limit
    /// error and Retry-After; the 429s per endpoint are printed to stderr at
    /// exit. Default: no limits.
    #[arg(long)]
    rate_limits: bool,
    /// The per-endpoint limit in requests/s instead of 25 (implies --rate-limits).
    #[arg(long, value_name = "RPS", value_parser = clap::value_parser!(u32).range(1..))]
    endpoint_rps: Option<u32>,
    /// The overall limit in requests/s instead of the mode's (implies --rate-limits).
    #[arg(long, value_name = "RPS", value_parser = clap::value_parser!(u32).range(1..))]
    global_rps: Option<u32>,
    /// Also serve N connected accounts of the key's account (Stripe Connect:
    /// the same key with the header `Stripe-Account: acct_...`), each seeded
    /// like the platform account by --sample, --purchases or --generate, each
    /// with its own objects (ids may coincide across accounts) and, with
    /// --rate-limits, its own limits. Their ids are printed at start and
    /// given to --exec's command as FAKE_STRIPE_ACCOUNTS, comma-separated.
    #[arg(long, value_name = "N", default_value_t = 0)]
    connected: usize,
    /// Deliver every event from now on to this URL as a signed Stripe
    /// webhook (e.g. http://127.0.0.1:8080/v1/stripe/webhook, a
    /// `licensync daemon --listen`). Connected accounts' events carry their
    /// `account`, as on a Connect endpoint.
    #[arg(long, value_name = "URL")]
    webhook_url: Option<String>,
    /// The endpoint secret the webhooks are signed with.
    #[arg(long, value_name = "WHSEC", default_value = fake_stripe::DEFAULT_WEBHOOK_SECRET, requires = "webhook_url")]
    webhook_secret: String,
    /// Sell a license every N seconds while serving: a new customer pays a
    /// one-time Checkout Session for "Acme Plugin" (hwid_limit 2), so a
    /// running daemon has something new to find (with --webhook-url, at once).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    sell_every: Option<u64>,
    /// Run this command against the server, then stop with its exit code.
    /// Its environment has STRIPE_API_BASE, STRIPE_API_KEY and
    /// FAKE_STRIPE_ACCOUNTS (the --connected accounts' ids, comma-separated;
    /// empty without them).
    #[arg(long, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true, value_name = "CMD")]
    exec: Vec<String>,
}

/// A sale every `every`: a new customer pays a one-time Checkout Session.
async fn sell(fake: FakeStripe, every: std::time::Duration) {
    let product = fake.create_product("Acme Plugin", &[("product_id", "acme-plugin"), ("hwid_limit", "2")]);
    let price = fake.create_price(&product, None, 4_900, &[]);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    for n in 1.. {
        tick.tick().await;
        // The wall clock, so the sale is new to a reconciler that runs on it.
        if let Ok(wall) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            fake.set_now(wall.as_secs() as i64);
        }
        let email = format!("buyer-{n}@example.com");
        let customer = fake.create_customer(Some(&email), None);
        fake.create_checkout_session(CheckoutSpec {
            customer: Some(customer),
            lines: vec![(price.clone(), 1)],
            ..CheckoutSpec::default()
        });
        eprintln!("fake-stripe: sold Acme Plugin to {email}");
    }
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
    // The platform first, then each connected account, seeded alike.
    let mut accounts = vec![fake.clone()];
    accounts.extend((0..args.connected).map(|_| fake.connect_account()));
    for (i, account) in accounts.iter().enumerate() {
        if args.sample {
            account.seed_sample();
        }
        if let Some(n) = args.purchases {
            account.seed_purchases(n);
        }
        if let Some(n) = args.generate {
            account.generate(GeneratedAccount {
                max_past_periods: args.max_past_periods,
                ..GeneratedAccount::real_mix(n, args.seed)
            });
        }
        // One summary: every account is generated alike.
        if i == 0
            && let Some(s) = account.generated_summary()
        {
            let each = if args.connected > 0 { " in each account" } else { "" };
            eprintln!(
                "fake-stripe: generated {} subscriptions ({} items, {} invoices with their history), \
                 {} Checkout Sessions ({} guests), {} one-off invoices, {} customers{each}",
                s.subscriptions,
                s.subscription_items,
                s.invoices,
                s.sessions,
                s.guest_sessions,
                s.one_off_invoices,
                s.customers
            );
        }
    }
    let connected: Vec<String> = accounts[1..].iter().map(|a| a.stripe_account_id()).collect();
    if let Some(url) = &args.webhook_url {
        fake.send_webhooks(url, &args.webhook_secret);
        eprintln!("fake-stripe: delivering webhooks to {url}");
    }
    if let Some(every) = args.sell_every {
        tokio::spawn(sell(fake.clone(), std::time::Duration::from_secs(every)));
    }
    // Loading is done: the conditions apply to the clients from here on.
    fake.set_latency(args.latency_ms);
    let limited = args.rate_limits || args.endpoint_rps.is_some() || args.global_rps.is_some();
    if limited {
        let stripe = RateLimits::stripe(fake.livemode());
        // Each account its own buckets, as Stripe limits each account.
        for account in &accounts {
            account.set_rate_limits(Some(RateLimits {
                per_endpoint_rps: args.endpoint_rps.unwrap_or(stripe.per_endpoint_rps),
                global_rps: args.global_rps.unwrap_or(stripe.global_rps),
            }));
        }
    }
    let report_limits = || {
        if limited {
            let mut counts = std::collections::BTreeMap::<String, u64>::new();
            for account in &accounts {
                for (endpoint, n) in account.rate_limited() {
                    *counts.entry(endpoint).or_default() += n;
                }
            }
            let total: u64 = counts.values().sum();
            let each: Vec<String> = counts.iter().map(|(e, n)| format!("{e} {n}")).collect();
            eprintln!(
                "fake-stripe: answered {total} requests 429 (rate limited): {}",
                each.join(", ")
            );
        }
    };

    let Some((program, program_args)) = args.exec.split_first() else {
        println!("fake-stripe listening on {}", fake.base_url());
        println!("STRIPE_API_BASE={}", fake.base_url());
        println!("STRIPE_API_KEY={}", fake.api_key());
        for id in &connected {
            println!("connected account {id}");
        }
        if !connected.is_empty() {
            println!("FAKE_STRIPE_ACCOUNTS={}", connected.join(","));
        }
        println!("Press Ctrl-C to stop.");
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        report_limits();
        return Ok(ExitCode::SUCCESS);
    };
    // The command's stdout is its own: the ids go to stderr here.
    for id in &connected {
        eprintln!("fake-stripe: connected account {id}");
    }
    let status = tokio::process::Command::new(program)
        .args(program_args)
        .env("STRIPE_API_BASE", fake.base_url())
        .env("STRIPE_API_KEY", fake.api_key())
        .env("FAKE_STRIPE_ACCOUNTS", connected.join(","))
        .status()
        .await
        .with_context(|| format!("cannot run `{program}`"))?;
    report_limits();
    // A command killed by a signal has no code; report it as a failure.
    let code = status.code().unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
