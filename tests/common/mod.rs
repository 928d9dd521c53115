//! The test world's database (testing.md): one throwaway PostgreSQL cluster
//! per test process (temporary directory, Unix socket, fsync off), a
//! migrated template database made once, and a fresh database per test
//! created from it and dropped afterwards. `TEST_DATABASE_URL` points the
//! harness at an existing server instead.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::prelude::*;
use licensync::pg::{Binaries, Cluster, Tuning};
use licensync::secret::Secret;
use licensync::store::Store;

struct Server {
    template: String,
    /// A URL with the database name to replace (`{db}`).
    url_pattern: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static CLUSTER: OnceLock<(Cluster, tempfile::TempDir)> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

extern "C" fn stop_cluster_at_exit() {
    if let Some((cluster, dir)) = CLUSTER.get() {
        let _ = cluster.stop(true);
        // Statics are never dropped, so the TempDir cannot clean up after itself.
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let url_pattern = match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                let mut parsed = url::Url::parse(&url).expect("TEST_DATABASE_URL is a URL");
                parsed.set_path("/{db}");
                parsed.to_string().replace("%7Bdb%7D", "{db}")
            }
            _ => {
                let binaries = Binaries::discover().expect("PostgreSQL server binaries (see README)");
                // /tmp, not the target dir: the postgres user must be able to reach it.
                let dir = tempfile::Builder::new()
                    .prefix("licensync-test-pg-")
                    .tempdir_in("/tmp")
                    .unwrap();
                let cluster = Cluster::new(binaries, dir.path()).unwrap();
                cluster
                    .ensure_running(Tuning { unsafe_fast: true })
                    .expect("starting the test cluster");
                let pattern = cluster.url("{db}");
                CLUSTER.set((cluster, dir)).expect("cluster set once");
                // libtest ends the process with exit(), which runs atexit handlers.
                unsafe { libc::atexit(stop_cluster_at_exit) };
                pattern
            }
        };
        // Per process, so test binaries sharing a TEST_DATABASE_URL server do not collide.
        let template = format!("licensync_template_{}", std::process::id());
        let admin = url_pattern.replace("{db}", "postgres");
        let mut conn = PgConnection::establish(&admin).expect("connecting to the test server");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {template}"))
            .execute(&mut conn)
            .unwrap();
        diesel::sql_query(format!("CREATE DATABASE {template}"))
            .execute(&mut conn)
            .unwrap();
        let store = Store::connect(&Secret::from(url_pattern.replace("{db}", &template))).unwrap();
        store.migrate().expect("migrating the template database");
        drop(store);
        Server { template, url_pattern }
    })
}

/// A fresh, migrated database of its own for one test; dropped with it.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub store: Store,
}

impl TestDb {
    pub fn new() -> TestDb {
        Self::create(true)
    }

    /// An empty database with no migrations applied.
    pub fn empty() -> TestDb {
        Self::create(false)
    }

    fn create(migrated: bool) -> TestDb {
        let server = server();
        let name = format!("t_{}_{}", std::process::id(), NEXT_DB.fetch_add(1, Ordering::SeqCst));
        let mut admin = PgConnection::establish(&server.url_pattern.replace("{db}", "postgres")).unwrap();
        let template = if migrated {
            format!(" TEMPLATE {}", server.template)
        } else {
            String::new()
        };
        diesel::sql_query(format!("CREATE DATABASE {name}{template}"))
            .execute(&mut admin)
            .unwrap();
        let url = server.url_pattern.replace("{db}", &name);
        let store = Store::connect(&Secret::from(url.clone())).unwrap();
        TestDb { name, url, store }
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(server) = SERVER.get() else { return };
        if let Ok(mut admin) = PgConnection::establish(&server.url_pattern.replace("{db}", "postgres")) {
            let _ =
                diesel::sql_query(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&mut admin);
        }
    }
}

/// The `licensync` binary of this build.
pub fn licensync() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_licensync"));
    // Tests never inherit the developer's settings.
    for (key, _) in std::env::vars() {
        if key.starts_with("LICENSYNC_") || key.starts_with("STRIPE_") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    cmd.env("LICENSYNC_LOG_FORMAT", "text");
    cmd
}

/// `licensync reconcile --output json` against `fake` and `db`, with its
/// emails sent through `mail_url` (`file://...`, `smtp://...`, `none`).
pub fn reconcile_json(db: &TestDb, fake: &fake_stripe::FakeStripe, mail_url: &str) -> std::process::Command {
    let mut cmd = licensync();
    cmd.args(["reconcile", "--output", "json"])
        .env("DATABASE_URL", &db.url)
        .env("LICENSYNC_MAIL_URL", mail_url)
        .env("STRIPE_API_BASE", fake.base_url())
        .env("STRIPE_API_KEY", fake.api_key());
    cmd
}

/// Holds the fake's answer to the next request under `path` for `held`.
pub fn hold_next_request(fake: &fake_stripe::FakeStripe, path: &str, held: std::time::Duration) {
    fake.inject_fault(fake_stripe::Fault {
        path_prefix: path.into(),
        kind: fake_stripe::FaultKind::Latency(held),
        times: 1,
    });
}

/// When the fake first heard of a request to `path`.
pub fn first_request_at(fake: &fake_stripe::FakeStripe, path: &str) -> std::time::Instant {
    let requests = fake.requests();
    requests
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no request to {path}: {requests:#?}"))
        .at
}

/// Issues one license the way the applier does: the license, its ledger
/// entry and its `license_issued` outbox row in one `write_page`
/// transaction. `n` makes the grant unique; `email` is the customer's
/// address as Stripe had it (`None`: no recipient).
pub fn issue_license(store: &Store, n: usize, email: Option<&str>) -> licensync::store::Written {
    store.write_page(None, &[license_write(n, email)]).unwrap().remove(0)
}

/// The write [`issue_license`] makes: a new subscription license `n` with
/// its `license_issued` email, as the applier hands it to `write_page`.
pub fn license_write(n: usize, email: Option<&str>) -> licensync::store::LicenseWrite {
    use licensync::domain::{ActionKind, EmailStatus, GrantKey, LicenseState, LicenseStatus};
    use licensync::store::LicenseWrite;
    use licensync::store::models::NewLicenseRow;

    let grant = GrantKey::subscription_item(&format!("si_test_{n}"));
    let state = LicenseState {
        status: LicenseStatus::Active,
        product_ids: vec!["acme-pro".into()],
        product_name: Some("Acme Pro".into()),
        stripe_customer_id: Some(format!("cus_test_{n}")),
        stripe_subscription_id: Some(format!("sub_test_{n}")),
        stripe_payment_intent: None,
        customer_email: email.map(str::to_owned),
        customer_name: Some(format!("Customer {n}")),
        quantity: 1,
        ip_limit: Some(2),
        hwid_limit: None,
        expiration_days: None,
        expiration_start: None,
        expires_at: Some(chrono::Utc::now() + chrono::Duration::days(30)),
        livemode: false,
    };
    LicenseWrite {
        license: NewLicenseRow::new(licensync::keys::new_license_key(), &grant, &state),
        action: ActionKind::Issue,
        before: None,
        after: serde_json::to_value(&state).unwrap(),
        stripe_object: format!("sub_test_{n}"),
        email: Some(if email.is_some() {
            EmailStatus::Pending
        } else {
            EmailStatus::NoRecipient
        }),
        write_back: None,
    }
}

/// `licensync status --output json` against `db`: its `emails` counts.
pub fn email_status(db: &TestDb) -> serde_json::Value {
    let out = licensync()
        .args(["status", "--output", "json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["emails"].clone()
}

/// What one invocation of the binary left behind.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn new(out: &std::process::Output) -> Ran {
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Everything, for a failed assertion (a long report cut short).
    pub fn all(&self) -> String {
        let stdout: String = self.stdout.chars().take(3000).collect();
        let stderr: String = self.stderr.chars().take(6000).collect();
        format!("exit {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}", self.code)
    }

    /// Stdout as the one JSON value it must be.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}):\n{}", self.all()))
    }

    /// The JSON output of a command that must have exited 0.
    pub fn ok_json(&self) -> serde_json::Value {
        assert_eq!(self.code, 0, "the command failed:\n{}", self.all());
        self.json()
    }

    /// The JSON report of a run that must have succeeded.
    pub fn report(&self) -> serde_json::Value {
        let report = self.ok_json();
        assert_eq!(report["outcome"], "succeeded", "{report:#}");
        report
    }
}

/// Runs a `licensync` command without blocking the runtime that serves the
/// fake Stripe it talks to.
pub async fn run_binary(cmd: std::process::Command) -> Ran {
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("running the licensync binary");
    Ran::new(&out)
}

/// The text of every `.eml` file the file transport wrote into `dir`.
pub fn eml_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .map(|p| std::fs::read_to_string(p).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// Licenses (`licenses list --output json`) without what differs between two
/// databases reconciling the same Stripe state (id, key, times), sorted by
/// account and grant, for comparing the two.
pub fn portable_licenses(licenses: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut all: Vec<serde_json::Value> = licenses
        .iter()
        .cloned()
        .map(|mut l| {
            for field in ["id", "key", "created_at", "updated_at"] {
                l.as_object_mut().unwrap().remove(field);
            }
            l
        })
        .collect();
    all.sort_by_key(|l| (l["stripe_account"].to_string(), l["source_id"].to_string()));
    all
}

/// Reads a child's JSON log (its piped stderr) as it comes, so that a full
/// pipe never stops it, until the child logs the address it listens on
/// (a `listen` field). Returns that address and the reader, whose `join`
/// gives the whole log once the child exits. Kills the child and fails with
/// its log if no address comes within a minute.
#[allow(dead_code)] // not every test binary starts a server
pub fn listening(child: &mut std::process::Child) -> (std::net::SocketAddr, std::thread::JoinHandle<String>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let (found, address) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut log = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(listen) = event["listen"].as_str()
            {
                let _ = found.send(listen.to_owned());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    match address.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(addr) => (addr.parse().expect("a socket address"), reader),
        Err(_) => {
            let _ = child.kill();
            panic!("the server did not start listening: {}", reader.join().unwrap())
        }
    }
}
