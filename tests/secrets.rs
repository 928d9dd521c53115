//! No secret ever shows (issue 11, part 5): every command of the binary,
//! run with distinctive secrets — a Stripe key, a PostgreSQL password (a
//! role with a password on a cluster that checks it), an SMTP password (a
//! real SMTP server with STARTTLS and AUTH) — through the working path and
//! the failure paths: a key Stripe rejects, a Stripe 500 storm, a database
//! that is down or unreachable, a wrong database password, an SMTP server
//! refusing service or the password, a panic, configuration errors. Each
//! secret comes from its variable or from its `_FILE` (both forms run the
//! same commands; the file form also logs JSON at `RUST_LOG=trace`).
//!
//! Searched: stdout and stderr of every invocation (panic messages
//! included), every row of every table of the database (`runs.error`,
//! `license_ledger`, `email_outbox.last_error`, ...), every message the SMTP
//! server received, the metrics file. Searched for: each secret as given,
//! percent-encoded as in its URL, its distinctive core, and for the SMTP
//! passwords the base64 forms AUTH PLAIN and LOGIN send. Each test prints
//! its figures; the totals are printed at exit (`--nocapture`).

mod common;
mod mail_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use chrono::Utc;
use common::{Ran, licensync};
use diesel::prelude::*;
use fake_stripe::{FakeStripe, Fault, FaultKind, Options, SubscriptionSpec};
use licensync::pg::{Binaries, Cluster, Tuning};
use mail_support::{SinkOptions, SmtpSink};

const STRIPE_KEY: &str = "sk_test_51LicSyncKeepOutStripeKey0xDEADBEEF9876";
const WRONG_STRIPE_KEY: &str = "sk_test_51WrongKeepOutStripeKey0xCAFEBABE5555";
/// `/` and `+` must be percent-encoded in the URL: both forms are searched.
const DB_PASSWORD: &str = "s3cret-DB-Zebra7781/pg+x";
const WRONG_DB_PASSWORD: &str = "wr0ng-DB-Okapi4242/pg";
const DB_ROLE: &str = "licensync_app";
const SMTP_USER: &str = "licensync";
const SMTP_PASSWORD: &str = "m4il-Otter-55 secret";
const WRONG_SMTP_PASSWORD: &str = "m4il-Wrong-Lynx-66";
/// Longest a single invocation may take (the 500 storm waits out its backoff).
const RUN_LIMIT: Duration = Duration::from_secs(45);

// ---- what is searched for --------------------------------------------------------

/// `value` percent-encoded as it goes into a URL's user info.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every string whose presence anywhere would be a leak, with what it is.
fn needles() -> Vec<(String, String)> {
    let mut needles = Vec::new();
    for (what, key) in [("Stripe key", STRIPE_KEY), ("wrong Stripe key", WRONG_STRIPE_KEY)] {
        needles.push((what.to_owned(), key.to_owned()));
        // The key without its mode prefix and without the last four
        // characters that a masked key may show.
        let secret = &key["sk_test_".len()..key.len() - 4];
        needles.push((format!("{what} (its secret part)"), secret.to_owned()));
    }
    for (what, password, core) in [
        ("database password", DB_PASSWORD, "s3cret-DB-Zebra7781"),
        ("wrong database password", WRONG_DB_PASSWORD, "wr0ng-DB-Okapi4242"),
        ("SMTP password", SMTP_PASSWORD, "m4il-Otter-55"),
        ("wrong SMTP password", WRONG_SMTP_PASSWORD, "m4il-Wrong-Lynx-66"),
    ] {
        needles.push((what.to_owned(), password.to_owned()));
        needles.push((format!("{what} (percent-encoded)"), encode(password)));
        needles.push((format!("{what} (its core)"), core.to_owned()));
    }
    for (what, password) in [
        ("SMTP password", SMTP_PASSWORD),
        ("wrong SMTP password", WRONG_SMTP_PASSWORD),
    ] {
        needles.push((format!("{what} (AUTH LOGIN, base64)"), base64(password.as_bytes())));
        let plain = format!("\0{SMTP_USER}\0{password}");
        needles.push((format!("{what} (AUTH PLAIN, base64)"), base64(plain.as_bytes())));
    }
    needles.sort();
    needles.dedup();
    needles
}

// ---- figures -----------------------------------------------------------------------

static TOTALS: Mutex<BTreeMap<&'static str, usize>> = Mutex::new(BTreeMap::new());
static PRINT_TOTALS: Once = Once::new();

extern "C" fn print_totals() {
    let totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    if totals.is_empty() {
        return;
    }
    let line: Vec<String> = totals.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("\nsecrets.rs totals: {}", line.join(", "));
}

// ---- a PostgreSQL cluster that checks passwords -----------------------------------

/// A cluster of this process whose role [`DB_ROLE`] logs in with
/// [`DB_PASSWORD`] (scram-sha-256 over the socket); `postgres` keeps trust
/// for the test's own setup and inspection. Stopped at exit.
struct PasswordCluster {
    cluster: Cluster,
    dir: tempfile::TempDir,
}

static PASSWORD_CLUSTER: OnceLock<PasswordCluster> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

extern "C" fn stop_password_cluster() {
    if let Some(pc) = PASSWORD_CLUSTER.get() {
        let _ = pc.cluster.stop(true);
        let _ = std::fs::remove_dir_all(pc.dir.path());
    }
}

fn password_cluster() -> &'static PasswordCluster {
    PASSWORD_CLUSTER.get_or_init(|| {
        let binaries = Binaries::discover().expect("PostgreSQL server binaries (see README)");
        // /tmp, not the target dir: the postgres user must be able to reach it.
        let dir = tempfile::Builder::new()
            .prefix("licensync-secrets-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let cluster = Cluster::new(binaries, dir.path()).unwrap();
        cluster.ensure_running(Tuning { unsafe_fast: true }).unwrap();
        unsafe { libc::atexit(stop_password_cluster) };
        let mut admin = PgConnection::establish(&cluster.url("postgres")).unwrap();
        diesel::sql_query("SET password_encryption = 'scram-sha-256'")
            .execute(&mut admin)
            .unwrap();
        diesel::sql_query(format!(
            "CREATE ROLE {DB_ROLE} LOGIN PASSWORD '{}'",
            DB_PASSWORD.replace('\'', "''")
        ))
        .execute(&mut admin)
        .unwrap();
        // Trust for postgres (the test's own connections), passwords for everyone else.
        let hba = cluster.data_dir().join("pg_hba.conf");
        std::fs::write(&hba, "local all postgres trust\nlocal all all scram-sha-256\n").unwrap();
        diesel::sql_query("SELECT pg_reload_conf()")
            .execute(&mut admin)
            .unwrap();
        PasswordCluster { cluster, dir }
    })
}

/// A fresh database owned by [`DB_ROLE`].
fn password_database() -> String {
    let pc = password_cluster();
    let name = format!("secrets_{}", NEXT_DB.fetch_add(1, Ordering::SeqCst));
    let mut admin = PgConnection::establish(&pc.cluster.url("postgres")).unwrap();
    diesel::sql_query(format!("CREATE DATABASE {name} OWNER {DB_ROLE}"))
        .execute(&mut admin)
        .unwrap();
    name
}

/// `postgres://ROLE:PASSWORD@localhost/DB?host=SOCKET-DIR`: the URL an
/// operator writes, the password in it percent-encoded.
fn database_url(database: &str, password: &str, socket_dir: &Path) -> String {
    format!(
        "postgres://{DB_ROLE}:{}@localhost/{database}?host={}",
        encode(password),
        encode(&socket_dir.display().to_string())
    )
}

/// The test's own view of a database: as `postgres`, without a password.
fn inspect(database: &str) -> PgConnection {
    PgConnection::establish(&password_cluster().cluster.url(database)).unwrap()
}

/// Every row of every table of `database`, as text, by table.
fn dump(database: &str) -> Vec<(String, String)> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let mut conn = inspect(database);
    let tables: Vec<Row> = diesel::sql_query(
        "SELECT table_name::text AS t FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY table_name",
    )
    .load(&mut conn)
    .unwrap();
    tables
        .into_iter()
        .map(|table| {
            let rows: Vec<Row> = diesel::sql_query(format!("SELECT t::text AS t FROM \"{}\" t", table.t))
                .load(&mut conn)
                .unwrap();
            let text = rows.into_iter().map(|r| r.t).collect::<Vec<_>>().join("\n");
            (table.t, text)
        })
        .collect()
}

// ---- one test's world --------------------------------------------------------------

/// Where the secrets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `STRIPE_API_KEY`, `DATABASE_URL`, `LICENSYNC_MAIL_URL`; text logs.
    Env,
    /// `STRIPE_API_KEY_FILE`, `DATABASE_URL_FILE`, `LICENSYNC_MAIL_URL_FILE`;
    /// JSON logs at `RUST_LOG=trace`, the most a curious operator would ask for.
    File,
}

/// The secrets one invocation gets (`None`: unset).
#[derive(Debug, Clone, Default)]
struct Given {
    stripe_key: Option<String>,
    database_url: Option<String>,
    mail_url: Option<String>,
}

struct World {
    test: &'static str,
    form: Form,
    files: tempfile::TempDir,
    fake: FakeStripe,
    /// The monthly price of the account's product.
    price: String,
    database: String,
    sink: SmtpSink,
    needles: Vec<(String, String)>,
    /// Leaks found so far: `(place, what leaked)`.
    leaks: Vec<(String, String)>,
    places: usize,
    runs: usize,
    by_code: BTreeMap<i32, usize>,
}

impl World {
    /// A Stripe account with the key [`STRIPE_KEY`] and two purchases, a
    /// database of [`DB_ROLE`], an SMTP server with STARTTLS and AUTH.
    async fn new(test: &'static str, form: Form) -> World {
        PRINT_TOTALS.call_once(|| unsafe {
            libc::atexit(print_totals);
        });
        let fake = FakeStripe::start_with(Options {
            api_key: STRIPE_KEY.into(),
            seed_sample: false,
        })
        .await;
        fake.set_now(Utc::now().timestamp() - 3600);
        let product = fake.create_product("Editor", &[("product_id", "editor")]);
        let monthly = fake.create_price(&product, Some("month"), 900, &[]);
        for who in ["ada", "grace"] {
            let customer = fake.create_customer(Some(&format!("{who}@example.test")), Some(who));
            fake.create_subscription(SubscriptionSpec {
                customer,
                items: vec![(monthly.clone(), 1)],
                ..SubscriptionSpec::default()
            });
        }
        fake.set_now(Utc::now().timestamp());
        let sink = SmtpSink::start_with(SinkOptions {
            tls: true,
            auth: Some((SMTP_USER.into(), SMTP_PASSWORD.into())),
            ..SinkOptions::default()
        });
        World {
            test,
            form,
            files: tempfile::tempdir().unwrap(),
            fake,
            price: monthly,
            database: password_database(),
            sink,
            needles: needles(),
            leaks: Vec::new(),
            places: 0,
            runs: 0,
            by_code: BTreeMap::new(),
        }
    }

    fn socket_dir(&self) -> PathBuf {
        password_cluster().cluster.socket_dir()
    }

    fn database_url(&self) -> String {
        database_url(&self.database, DB_PASSWORD, &self.socket_dir())
    }

    /// An SMTP URL for this world's server (STARTTLS, its CA) with `password`.
    fn smtp_url(&self, sink: &SmtpSink, password: &str) -> String {
        let ca = &sink.tls.as_ref().expect("a TLS sink").ca_file;
        format!(
            "smtp://{SMTP_USER}:{}@127.0.0.1:{}?tls_ca={}",
            encode(password),
            sink.port,
            ca.display()
        )
    }

    /// Every secret right.
    fn good(&self) -> Given {
        Given {
            stripe_key: Some(STRIPE_KEY.into()),
            database_url: Some(self.database_url()),
            mail_url: Some(self.smtp_url(&self.sink, SMTP_PASSWORD)),
        }
    }

    fn command(&self, args: &[&str], given: &Given) -> Command {
        let mut cmd = licensync();
        cmd.args(args).env("STRIPE_API_BASE", self.fake.base_url());
        let secrets = [
            ("STRIPE_API_KEY", &given.stripe_key),
            ("DATABASE_URL", &given.database_url),
            ("LICENSYNC_MAIL_URL", &given.mail_url),
        ];
        for (var, value) in secrets {
            let Some(value) = value else { continue };
            match self.form {
                Form::Env => {
                    cmd.env(var, value);
                }
                Form::File => {
                    // As a secret is mounted: the value and a newline.
                    static N: AtomicUsize = AtomicUsize::new(0);
                    let path = self
                        .files
                        .path()
                        .join(format!("{var}-{}", N.fetch_add(1, Ordering::SeqCst)));
                    std::fs::write(&path, format!("{value}\n")).unwrap();
                    cmd.env(format!("{var}_FILE"), &path);
                }
            }
        }
        if self.form == Form::File {
            cmd.env("LICENSYNC_LOG_FORMAT", "json").env("RUST_LOG", "trace");
        }
        cmd
    }

    /// Searches `text` for every needle; `place` says where it came from.
    fn search(&mut self, place: &str, text: &str) {
        self.places += 1;
        for (what, needle) in &self.needles {
            if text.contains(needle.as_str()) {
                let at = text.find(needle.as_str()).unwrap();
                let context: String = text[at.saturating_sub(120)..]
                    .chars()
                    .take(240 + needle.len())
                    .collect();
                self.leaks.push((place.to_owned(), format!("{what}: ...{context}...")));
            }
        }
    }

    fn record(&mut self, label: &str, ran: &Ran) {
        self.runs += 1;
        *self.by_code.entry(ran.code).or_default() += 1;
        self.search(&format!("stdout of `{label}`"), &ran.stdout);
        self.search(&format!("stderr of `{label}`"), &ran.stderr);
    }

    /// Runs `licensync ARGS` with `given`; checks its output and exit code.
    async fn run(&mut self, args: &[&str], given: &Given, expect_code: i32) -> Ran {
        let cmd = self.command(args, given);
        let ran = run_to_end(cmd).await;
        let label = args.join(" ");
        self.record(&label, &ran);
        assert_eq!(ran.code, expect_code, "`{label}`:\n{}", ran.all());
        ran
    }

    /// `daemon --schedule "* * * * * *"` (every second) for a while, then
    /// SIGTERM; returns what it printed. A daemon that stops by itself
    /// (a configuration error) is waited for.
    async fn daemon(&mut self, given: &Given, for_how_long: Duration, expect_code: i32) -> Ran {
        let mut cmd = self.command(&["daemon", "--schedule", "* * * * * *"], given);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap();
        let pid = child.id().unwrap() as i32;
        let output = child.wait_with_output();
        tokio::pin!(output);
        let out = match tokio::time::timeout(for_how_long, &mut output).await {
            Ok(out) => out,
            Err(_) => {
                unsafe { libc::kill(pid, libc::SIGTERM) };
                tokio::time::timeout(RUN_LIMIT, output)
                    .await
                    .expect("the daemon stops on SIGTERM")
            }
        }
        .unwrap();
        let ran = Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.record("daemon", &ran);
        assert_eq!(ran.code, expect_code, "daemon:\n{}", ran.all());
        ran
    }

    /// Runs the command with its stdout closed before it writes: printing
    /// the result panics ("failed printing to stdout"), and the panic
    /// message goes through the panic hook.
    async fn run_with_stdout_closed(&mut self, args: &[&str], given: &Given) -> Ran {
        let mut cmd = self.command(args, given);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap();
        drop(child.stdout.take());
        let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
            .await
            .expect("licensync finished in time")
            .unwrap();
        let ran = Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        self.record(&format!("{} (stdout closed)", args.join(" ")), &ran);
        ran
    }

    /// A new subscription of a new customer `who@example.test`.
    fn purchase(&self, who: &str) {
        let customer = self
            .fake
            .create_customer(Some(&format!("{who}@example.test")), Some(who));
        self.fake.create_subscription(SubscriptionSpec {
            customer,
            items: vec![(self.price.clone(), 1)],
            ..SubscriptionSpec::default()
        });
    }

    /// A license key of this world's database.
    fn a_license_key(&self) -> String {
        #[derive(QueryableByName)]
        struct Key {
            #[diesel(sql_type = diesel::sql_types::Text)]
            key: String,
        }
        diesel::sql_query("SELECT key FROM licenses ORDER BY id LIMIT 1")
            .get_result::<Key>(&mut inspect(&self.database))
            .expect("a license")
            .key
    }

    /// Searches the database and the received mail, prints the figures and
    /// fails on any leak found in the whole test.
    fn finish(mut self) {
        for (table, text) in dump(&self.database) {
            self.search(&format!("database table {table}"), &text);
        }
        let received = self.sink.received();
        for (i, message) in received.iter().enumerate() {
            self.search(
                &format!("email {i} received by the SMTP server"),
                &String::from_utf8_lossy(&message.raw),
            );
        }
        let secrets = 6;
        let codes: Vec<String> = self.by_code.iter().map(|(c, n)| format!("exit {c}: {n}")).collect();
        println!(
            "[{} / {:?}] secrets: {secrets}, strings searched for: {}, places searched: {}, runs: {} ({}), emails received: {}, leaks: {}",
            self.test,
            self.form,
            self.needles.len(),
            self.places,
            self.runs,
            codes.join(", "),
            received.len(),
            self.leaks.len()
        );
        {
            let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            *totals.entry("tests").or_default() += 1;
            *totals.entry("licensync runs").or_default() += self.runs;
            *totals.entry("places searched").or_default() += self.places;
            *totals.entry("leaks").or_default() += self.leaks.len();
            totals.insert("strings searched for", self.needles.len());
            totals.insert("secrets", secrets);
        }
        assert!(
            self.leaks.is_empty(),
            "secrets leaked:\n{}",
            self.leaks
                .iter()
                .map(|(place, what)| format!("- in {place}: {what}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

async fn run_to_end(cmd: Command) -> Ran {
    let child = tokio::process::Command::from(cmd).kill_on_drop(true).output();
    let out = tokio::time::timeout(RUN_LIMIT, child)
        .await
        .expect("licensync finished in time")
        .expect("running the licensync binary");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---- the working path --------------------------------------------------------------

async fn every_command_works(form: Form, test: &'static str) {
    let mut w = World::new(test, form).await;
    let good = w.good();
    // Help with every secret set: clap must not show their values.
    w.run(&["--help"], &good, 0).await;
    w.run(&["reconcile", "--help"], &good, 0).await;
    w.run(&["migrate"], &good, 0).await;
    let metrics = w.files.path().join("licensync.prom");
    let metrics_arg = metrics.display().to_string();
    let ran = w
        .run(&["reconcile", "--full", "--metrics-file", &metrics_arg], &good, 0)
        .await;
    if form == Form::File {
        // The deepest logs were on, dependencies' included.
        assert!(ran.stderr.contains(r#""level":"TRACE""#), "{}", ran.all());
    }
    let text = std::fs::read_to_string(&metrics).expect("the metrics file");
    w.search("the metrics file", &text);
    // A new purchase for the incremental run.
    w.purchase("linus");
    let ran = w.run(&["reconcile", "--output", "json"], &good, 0).await;
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(report["mode"], "incremental", "{report:#}");
    w.run(&["reconcile", "--dry-run"], &good, 0).await;
    w.run(&["reconcile", "--dry-run", "--output", "json"], &good, 0).await;
    w.run(&["status"], &good, 0).await;
    w.run(&["status", "--output", "json"], &good, 0).await;
    w.run(&["licenses", "list"], &good, 0).await;
    w.run(&["licenses", "list", "--output", "json"], &good, 0).await;
    let key = w.a_license_key();
    w.run(&["licenses", "show", &key], &good, 0).await;
    w.run(&["licenses", "show", &key, "--output", "json"], &good, 0).await;
    w.run(&["mail", "resend", &key], &good, 0).await;
    let ran = w.daemon(&good, Duration::from_millis(2500), 0).await;
    assert!(ran.stderr.contains("daemon started"), "{}", ran.all());
    assert!(
        w.sink.received().len() >= 4,
        "three licenses mailed and one resent through AUTH: {}",
        w.sink.received().len()
    );
    w.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_keeps_secrets_from_the_environment_out_of_its_output_and_the_database() {
    every_command_works(Form::Env, "every command, working").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_keeps_secrets_from_files_out_of_its_output_and_the_database() {
    every_command_works(Form::File, "every command, working").await;
}

// ---- Stripe failing ------------------------------------------------------------------

async fn stripe_failures(form: Form, test: &'static str) {
    let mut w = World::new(test, form).await;
    let good = w.good();
    w.run(&["migrate"], &good, 0).await;
    // A key Stripe rejects: a configuration error (exit 2), everywhere.
    let wrong = Given {
        stripe_key: Some(WRONG_STRIPE_KEY.into()),
        ..w.good()
    };
    let ran = w.run(&["reconcile"], &wrong, 2).await;
    assert!(ran.stderr.contains("Stripe rejected the API key"), "{}", ran.all());
    w.run(&["reconcile", "--output", "json"], &wrong, 2).await;
    w.run(&["reconcile", "--dry-run"], &wrong, 2).await;
    w.daemon(&wrong, Duration::from_secs(20), 2).await;
    if form == Form::Env {
        // The flag form too (only by hand: it shows in `ps`).
        let mut args = Given { ..w.good() };
        args.stripe_key = None;
        w.run(&["reconcile", "--stripe-api-key", WRONG_STRIPE_KEY], &args, 2)
            .await;
    }
    // A storm of 500s on one list (the refunds, read first and one page at
    // a time; lists read side by side would share a storm on every path
    // and each retry its share): the run fails (exit 1) and records its error.
    w.fake.inject_fault(Fault {
        path_prefix: "/v1/refunds".into(),
        kind: FaultKind::ServerError(500),
        times: 6,
    });
    let ran = w.run(&["reconcile", "--output", "json"], &good, 1).await;
    assert!(ran.stderr.contains("HTTP 500"), "{}", ran.all());
    assert_eq!(w.fake.faults_left(), 0);
    w.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_and_a_stripe_500_storm_show_no_secret_from_the_environment() {
    stripe_failures(Form::Env, "Stripe failing").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_and_a_stripe_500_storm_show_no_secret_from_files() {
    stripe_failures(Form::File, "Stripe failing").await;
}

// ---- the database failing -------------------------------------------------------------

async fn database_failures(form: Form, test: &'static str) {
    let mut w = World::new(test, form).await;
    let good = w.good();
    w.run(&["reconcile"], &good, 0).await;
    let key = w.a_license_key();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let failures = [
        // Down: nothing listens on its socket.
        (
            "database down",
            database_url(&w.database, DB_PASSWORD, Path::new("/tmp/licensync-no-such-socket-dir")),
        ),
        // Unreachable over TCP: the connection is refused.
        (
            "database unreachable",
            format!(
                "postgres://{DB_ROLE}:{}@127.0.0.1:{port}/{}",
                encode(DB_PASSWORD),
                w.database
            ),
        ),
        (
            "wrong database password",
            database_url(&w.database, WRONG_DB_PASSWORD, &w.socket_dir()),
        ),
    ];
    for (what, url) in failures {
        let given = Given {
            database_url: Some(url),
            ..w.good()
        };
        for args in [
            vec!["migrate"],
            vec!["status"],
            vec!["status", "--output", "json"],
            vec!["licenses", "list"],
            vec!["licenses", "show", key.as_str()],
            vec!["reconcile"],
            vec!["reconcile", "--output", "json"],
            vec!["reconcile", "--dry-run"],
            vec!["mail", "resend", key.as_str()],
        ] {
            let ran = w.run(&args, &given, 1).await;
            assert!(
                ran.stderr.contains("connecting to the license database"),
                "{what}: {}",
                ran.all()
            );
        }
        if what == "wrong database password" {
            let ran = w.run(&["status"], &given, 1).await;
            assert!(ran.stderr.contains("password authentication failed"), "{}", ran.all());
            // Every tick fails and is logged; the daemon goes on until SIGTERM.
            let ran = w.daemon(&given, Duration::from_millis(2500), 0).await;
            assert!(ran.stderr.contains("run failed; the daemon goes on"), "{}", ran.all());
        }
    }
    w.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_down_unreachable_or_refusing_the_password_shows_no_secret_from_the_environment() {
    database_failures(Form::Env, "database failing").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_down_unreachable_or_refusing_the_password_shows_no_secret_from_files() {
    database_failures(Form::File, "database failing").await;
}

// ---- SMTP failing ----------------------------------------------------------------------

async fn smtp_failures(form: Form, test: &'static str) {
    let mut w = World::new(test, form).await;
    // The server refuses the password: the licenses are issued, the emails
    // wait with their error (in the database), a resend fails.
    let wrong = Given {
        mail_url: Some(w.smtp_url(&w.sink, WRONG_SMTP_PASSWORD)),
        ..w.good()
    };
    w.run(&["reconcile"], &wrong, 0).await;
    let key = w.a_license_key();
    let ran = w.run(&["mail", "resend", &key], &wrong, 1).await;
    assert!(ran.stderr.contains("535"), "{}", ran.all());
    // A server that refuses service (421 at the greeting).
    let refusing = SmtpSink::start_with(SinkOptions {
        tls: true,
        auth: Some((SMTP_USER.into(), SMTP_PASSWORD.into())),
        refuse_first: 100,
        ..SinkOptions::default()
    });
    let given = Given {
        mail_url: Some(w.smtp_url(&refusing, SMTP_PASSWORD)),
        ..w.good()
    };
    let ran = w.run(&["mail", "resend", &key], &given, 1).await;
    assert!(ran.stderr.contains("421"), "{}", ran.all());
    w.purchase("linus");
    w.run(&["reconcile", "--output", "json"], &given, 0).await;
    // A server that is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Given {
        mail_url: Some(format!("smtp://{SMTP_USER}:{}@127.0.0.1:{port}", encode(SMTP_PASSWORD))),
        ..w.good()
    };
    w.run(&["mail", "resend", &key], &down, 1).await;
    w.run(&["status"], &down, 0).await;
    w.run(&["licenses", "show", &key], &down, 0).await;
    // The errors are kept with the emails; none holds a password.
    let errors = dump(&w.database)
        .into_iter()
        .find(|(table, _)| table == "email_outbox")
        .unwrap()
        .1;
    assert!(errors.contains("535") && errors.contains("421"), "{errors}");
    // Fixed: everything pending goes out through AUTH.
    w.backoff_passes();
    w.run(&["reconcile"], &w.good(), 0).await;
    assert!(!w.sink.received().is_empty());
    w.finish();
}

impl World {
    /// The backoff of every pending email runs out.
    fn backoff_passes(&self) {
        diesel::sql_query("UPDATE email_outbox SET next_attempt_at = now() WHERE status = 'pending'")
            .execute(&mut inspect(&self.database))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_smtp_server_refusing_the_password_or_service_shows_no_secret_from_the_environment() {
    smtp_failures(Form::Env, "SMTP failing").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_smtp_server_refusing_the_password_or_service_shows_no_secret_from_files() {
    smtp_failures(Form::File, "SMTP failing").await;
}

// ---- a panic -----------------------------------------------------------------------------

async fn panics(form: Form, test: &'static str) {
    let mut w = World::new(test, form).await;
    let good = w.good();
    w.run(&["reconcile"], &good, 0).await;
    for args in [
        vec!["licenses", "list", "--output", "json"],
        vec!["status", "--output", "json"],
        vec!["reconcile", "--output", "json"],
    ] {
        let ran = w.run_with_stdout_closed(&args, &good).await;
        assert_eq!(ran.code, 101, "a panic: {}", ran.all());
        assert!(ran.stderr.contains("licensync panicked"), "{}", ran.all());
    }
    w.finish();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_shows_no_secret_from_the_environment() {
    panics(Form::Env, "panic").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_shows_no_secret_from_files() {
    panics(Form::File, "panic").await;
}

// ---- configuration errors -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn configuration_errors_never_echo_a_secret() {
    let mut w = World::new("configuration errors", Form::Env).await;
    let good = w.good();
    let url = w.database_url();
    let mail = w.smtp_url(&w.sink, SMTP_PASSWORD);
    // A variable and its _FILE both set.
    let file = w.files.path().join("both");
    for (var, value) in [
        ("STRIPE_API_KEY", STRIPE_KEY.to_owned()),
        ("DATABASE_URL", url.clone()),
        ("LICENSYNC_MAIL_URL", mail.clone()),
    ] {
        std::fs::write(&file, &value).unwrap();
        let mut cmd = w.command(&["reconcile"], &good);
        cmd.env(format!("{var}_FILE"), &file);
        let ran = run_to_end(cmd).await;
        w.record(&format!("reconcile with {var} and {var}_FILE"), &ran);
        assert_eq!(ran.code, 2, "{}", ran.all());
        assert!(ran.stderr.contains("set only one"), "{}", ran.all());
    }
    // A _FILE that cannot be read names the path only.
    let mut cmd = w.command(&["status"], &Given::default());
    cmd.env("DATABASE_URL_FILE", w.files.path().join("missing"));
    let ran = run_to_end(cmd).await;
    w.record("status with a missing DATABASE_URL_FILE", &ran);
    assert_eq!(ran.code, 2, "{}", ran.all());
    // Malformed values holding a secret.
    let bad_port = format!("postgres://{DB_ROLE}:{}@localhost:99999/x", encode(DB_PASSWORD));
    let mysql = format!("mysql://{DB_ROLE}:{}@localhost/x", encode(DB_PASSWORD));
    let smtp_bad_port = format!("smtp://{SMTP_USER}:{}@127.0.0.1:99999", encode(SMTP_PASSWORD));
    let smtp_bad_tls = format!("smtp://{SMTP_USER}:{}@127.0.0.1:25?tls=maybe", encode(SMTP_PASSWORD));
    let smtp_scheme = format!("smtpx://{SMTP_USER}:{}@127.0.0.1:25", encode(SMTP_PASSWORD));
    for given in [
        Given {
            database_url: Some(bad_port),
            ..good.clone()
        },
        Given {
            database_url: Some(mysql),
            ..good.clone()
        },
        Given {
            mail_url: Some(smtp_bad_port),
            ..good.clone()
        },
        Given {
            mail_url: Some(smtp_bad_tls),
            ..good.clone()
        },
        Given {
            mail_url: Some(smtp_scheme),
            ..good.clone()
        },
        // A key with a character no Stripe key has.
        Given {
            stripe_key: Some(format!("{STRIPE_KEY}-")),
            ..good.clone()
        },
    ] {
        w.run(&["reconcile"], &given, 2).await;
    }
    // Usage errors with secrets on the command line.
    w.run(
        &[
            "reconcile",
            "--database-url",
            &url,
            "--mail-url",
            &mail,
            "--no-such-flag",
        ],
        &Given::default(),
        2,
    )
    .await;
    w.run(&["daemon", "--schedule", "not a cron expression"], &good, 2)
        .await;
    w.run(&["daemon"], &good, 2).await;
    w.finish();
}

/// libpq quotes a password whose percent-escape is malformed (`invalid
/// percent-encoded token: "..."`): licensync refuses such a URL before libpq
/// sees it, with an error that quotes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_password_with_a_malformed_percent_escape_is_not_echoed() {
    let mut w = World::new("malformed %-escape in the database password", Form::Env).await;
    let url = format!(
        "postgres://{DB_ROLE}:{}%zz@localhost/{}",
        encode(DB_PASSWORD),
        w.database
    );
    let given = Given {
        database_url: Some(url),
        ..w.good()
    };
    // A configuration error (exit 2) that says what to fix, quoting nothing.
    w.run(&["status"], &given, 2).await;
    w.finish();
}
