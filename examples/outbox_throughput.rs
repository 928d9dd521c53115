//! Email delivery throughput (issue #10, "Email at scale"): queues N license
//! emails in a throwaway PostgreSQL cluster the way a run does (licenses,
//! ledger and outbox rows written by `write_page`), then times one
//! `deliver_due` call sending them all to the `.eml` file transport, and
//! prints emails per second and the SQL statements the delivery sent.
//!
//! Statements are counted on the client: every statement any connection of
//! this process sends to the bench database while delivering, through
//! diesel's instrumentation hook (BEGIN/COMMIT and the pool's `SELECT 1`
//! checkout probes included; the session setup diesel runs while connecting
//! is not, so the connections opened are printed too).
//!
//! It prints figures and asserts nothing about speed; it only refuses to
//! report the figures of a delivery that did not send every email.
//!
//! Run: `cargo run --release --example outbox_throughput -- --emails 10000`
//! (`--durable` for fsync'd commits instead of the test harness's settings).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use clap::Parser;
use diesel::connection::{Instrumentation, InstrumentationEvent, set_default_instrumentation};
use diesel::prelude::*;
use licensync::delivery::deliver_due;
use licensync::domain::{ActionKind, EmailStatus, GrantKey, LicenseState, LicenseStatus};
use licensync::mail::{MailService, MailSettings, MailUrl, parse_from};
use licensync::pg::{Binaries, Cluster, Tuning};
use licensync::secret::Secret;
use licensync::store::models::NewLicenseRow;
use licensync::store::{LicenseWrite, Store};

#[derive(Debug, Parser)]
#[command(about = "Times the delivery of queued license emails to the file transport")]
struct Args {
    /// License emails to queue and deliver.
    #[arg(long, default_value_t = 10_000)]
    emails: usize,
    /// Run PostgreSQL with durable commits (fsync on) instead of the test harness's `fsync=off`.
    #[arg(long)]
    durable: bool,
}

const DB: &str = "outbox_bench";

/// Statements sent and connections opened to the bench database while
/// `COUNTING` is on.
static COUNTING: AtomicBool = AtomicBool::new(false);
static STATEMENTS: AtomicU64 = AtomicU64::new(0);
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Counts the events of one connection; connections to other databases
/// (the cluster's admin database) are not counted.
#[derive(Default)]
struct Counting {
    counted: bool,
}

impl Instrumentation for Counting {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartEstablishConnection { url, .. } => {
                self.counted = url.contains(&format!("/{DB}"));
                if self.counted && COUNTING.load(Ordering::Relaxed) {
                    CONNECTIONS.fetch_add(1, Ordering::Relaxed);
                }
            }
            InstrumentationEvent::StartQuery { .. } if self.counted && COUNTING.load(Ordering::Relaxed) => {
                STATEMENTS.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

fn counting() -> Option<Box<dyn Instrumentation>> {
    Some(Box::new(Counting::default()))
}

struct BenchCluster {
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        let _ = self.cluster.stop(true);
    }
}

fn start_cluster(durable: bool) -> Result<(BenchCluster, String)> {
    let binaries = Binaries::discover()?;
    // /tmp, not the target dir: the postgres user must be able to reach it.
    let dir = tempfile::Builder::new()
        .prefix("licensync-outbox-bench-pg-")
        .tempdir_in("/tmp")?;
    let cluster = BenchCluster {
        cluster: Cluster::new(binaries, dir.path())?,
        _dir: dir,
    };
    cluster
        .cluster
        .ensure_running(Tuning { unsafe_fast: !durable })
        .context("starting the bench cluster")?;
    let mut admin = PgConnection::establish(&cluster.cluster.url("postgres"))?;
    diesel::sql_query(format!("CREATE DATABASE {DB}")).execute(&mut admin)?;
    let url = cluster.cluster.url(DB);
    Ok((cluster, url))
}

/// Queues `n` license emails, 500 licenses per `write_page` as a run writes them.
fn queue(store: &Store, n: usize) -> Result<()> {
    let writes: Vec<LicenseWrite> = (0..n)
        .map(|i| {
            let grant = GrantKey::subscription_item(&format!("si_bench_{i}"));
            let state = LicenseState {
                status: LicenseStatus::Active,
                product_ids: vec!["acme-pro".into()],
                product_name: Some("Acme Pro".into()),
                stripe_customer_id: Some(format!("cus_bench_{i}")),
                stripe_subscription_id: Some(format!("sub_bench_{i}")),
                stripe_payment_intent: None,
                customer_email: Some(format!("customer{i}@example.test")),
                customer_name: Some(format!("Customer {i}")),
                quantity: 1,
                ip_limit: Some(2),
                hwid_limit: None,
                expiration_days: None,
                expiration_start: None,
                expires_at: Some(Utc::now() + chrono::Duration::days(30)),
                livemode: false,
            };
            LicenseWrite {
                license: NewLicenseRow::new(licensync::keys::new_license_key(), &grant, &state),
                action: ActionKind::Issue,
                before: None,
                after: serde_json::to_value(&state).expect("a license state is JSON"),
                stripe_object: format!("sub_bench_{i}"),
                email: Some(EmailStatus::Pending),
                write_back: None,
            }
        })
        .collect();
    for page in writes.chunks(500) {
        store.write_page(None, page)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (_cluster, url) = start_cluster(args.durable)?;
    // Before the store connects: the hook is taken when a connection opens.
    set_default_instrumentation(counting)?;
    let store = Store::connect(&Secret::from(url))?;
    store.migrate()?;
    queue(&store, args.emails)?;
    ensure!(
        store.outbox_counts()?.pending == args.emails as i64,
        "not every email was queued"
    );

    let outbox = tempfile::tempdir()?;
    let url: MailUrl = format!("file://{}", outbox.path().display()).parse()?;
    let mail = MailService::new(MailSettings::new(
        url,
        parse_from("Acme Licenses <licenses@acme.test>")?,
    ))?;

    COUNTING.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let counts = deliver_due(&store, &mail, 8, Utc::now()).await?;
    let elapsed = started.elapsed();
    let statements = STATEMENTS.load(Ordering::Relaxed);
    let connections = CONNECTIONS.load(Ordering::Relaxed);
    COUNTING.store(false, Ordering::Relaxed);

    let files = std::fs::read_dir(outbox.path())?.count();
    let stored = store.outbox_counts()?;
    ensure!(
        counts.sent == args.emails && stored.sent == args.emails as i64 && files == args.emails,
        "not every email was delivered: {counts:?}, outbox {stored:?}, {files} .eml files"
    );
    let secs = elapsed.as_secs_f64();
    println!(
        "delivered {} emails to the file transport in {secs:.2} s: {:.0} emails/s",
        args.emails,
        args.emails as f64 / secs
    );
    println!(
        "statements: {statements} ({:.3} per email), connections opened: {connections}; database {}",
        statements as f64 / args.emails as f64,
        if args.durable {
            "durable (fsync on)"
        } else {
            "fsync off"
        }
    );
    Ok(())
}
