//! `daemon --listen`: Stripe's webhooks wake the run of their account,
//! only a valid signature counts, a webhook is never data, a flood costs a
//! couple of runs, and the schedule goes on. The real binary, the fake
//! Stripe's own signed deliveries, and a real PostgreSQL.

use std::net::SocketAddr;
use std::time::Duration;

use diesel::prelude::*;
use fake_stripe::{CheckoutSpec, FakeStripe, Fault, FaultKind, sign_webhook};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::common::{TestDb, eml_files, licensync, listening};
use super::{N, World, world};

pub(super) const NEW_SECRET: &str = "whsec_test_new_4f9a1c";
const OLD_SECRET: &str = "whsec_test_old_77b2e0";
/// Once a year: no scheduled run happens while a test looks.
pub(super) const YEARLY: &str = "0 0 0 1 1 *";

/// A daemon binary listening on a free port, its log read as it comes.
pub(super) struct Daemon {
    child: std::process::Child,
    addr: SocketAddr,
    log: std::thread::JoinHandle<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub(super) fn start(
    database_url: &str,
    fake: &FakeStripe,
    schedule: &str,
    env: &[(&str, &str)],
    mail: Option<&std::path::Path>,
) -> Daemon {
    let mut cmd = licensync();
    cmd.args(["daemon", "--schedule", schedule, "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", database_url)
        .env("STRIPE_API_BASE", fake.base_url())
        .env("STRIPE_API_KEY", fake.api_key())
        .env("LICENSYNC_LOG_FORMAT", "json")
        .env("RUST_LOG", "licensync=debug")
        .stderr(std::process::Stdio::piped());
    match mail {
        Some(dir) => cmd.env("LICENSYNC_MAIL_URL", format!("file://{}", dir.display())),
        None => cmd.env("LICENSYNC_MAIL_URL", "none"),
    };
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd.spawn().unwrap();
    let (addr, log) = listening(&mut child);
    Daemon {
        child,
        addr,
        log,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Daemon {
    pub(super) fn url(&self) -> String {
        format!("http://{}/v1/stripe/webhook", self.addr)
    }

    pub(super) async fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> (u16, String) {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        let response = self
            .client
            .request(request.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn deliver(&self, body: &[u8], signature: Option<&str>) -> (u16, Value) {
        let (status, text) = self.request("POST", "/v1/stripe/webhook", body, signature).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// SIGTERM; the exit code and the whole log.
    pub(super) fn stop(mut self) -> (Option<i32>, String) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        (status.code(), self.log.join().unwrap())
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn event(id: &str, event_type: &str, account: Option<&str>) -> Vec<u8> {
    let mut event = json!({
        "id": id, "object": "event", "type": event_type, "created": now(),
        "data": {"object": {"id": "cs_forged_0001", "object": "checkout.session",
                            "customer_details": {"email": "mallory@example.test"}}},
    });
    if let Some(account) = account {
        event["account"] = json!(account);
    }
    serde_json::to_vec(&event).unwrap()
}

fn runs(db: &TestDb, outcome: &str, account: Option<&str>) -> i64 {
    let filter = match account {
        Some(account) => format!(" AND stripe_account = '{account}'"),
        None => String::new(),
    };
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM runs WHERE outcome = '{outcome}'{filter}"
    ))
    .load::<N>(&mut db.conn())
    .map(|r| r[0].n)
    .unwrap_or(0)
}

pub(super) fn all_runs(db: &TestDb) -> i64 {
    diesel::sql_query("SELECT count(*) AS n FROM runs")
        .load::<N>(&mut db.conn())
        .map(|r| r[0].n)
        .unwrap_or(0)
}

fn count(db: &TestDb, table: &str) -> i64 {
    diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
        .load::<N>(&mut db.conn())
        .map(|r| r[0].n)
        .unwrap_or(0)
}

pub(super) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until no run is going and none has started for a moment.
pub(super) async fn settled(db: &TestDb) {
    let mut last = (-1, -1);
    loop {
        let seen = (all_runs(db), runs(db, "running", None));
        if seen == last && seen.1 == 0 {
            return;
        }
        last = seen;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// A sale now (the fake's clock at the wall's, as Stripe dates it).
fn sell(w: &World, email: &str) {
    w.fake.set_now(now());
    let customer = w.fake.create_customer(Some(email), None);
    w.fake.create_checkout_session(CheckoutSpec {
        customer: Some(customer),
        lines: vec![(w.one_time.clone(), 1)],
        ..CheckoutSpec::default()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_wake_the_daemon_and_only_a_valid_signature_counts() {
    let w = world().await;
    let outbox = tempfile::tempdir().unwrap();
    let secrets = format!("{NEW_SECRET},{OLD_SECRET}");
    let daemon = start(
        &w.db.url,
        &w.fake,
        YEARLY,
        &[("LICENSYNC_WEBHOOK_SECRET", &secrets)],
        Some(outbox.path()),
    );
    assert_eq!(daemon.request("GET", "/healthz", b"", None).await.0, 200);

    // Refused: nothing runs.
    let body = event("evt_refused", "checkout.session.completed", None);
    let t = now();
    let good = sign_webhook(NEW_SECRET, &body, t);
    let v1 = good.split_once(",v1=").unwrap().1;
    let refusals: [(&str, &[u8], Option<String>); 6] = [
        ("unsigned", &body, None),
        (
            "signed with another secret",
            &body,
            Some(sign_webhook("whsec_someone_else", &body, t)),
        ),
        ("stale", &body, Some(sign_webhook(NEW_SECRET, &body, t - 301))),
        (
            "tampered",
            br#"{"id":"evt_refused","type":"invoice.paid","account":"acct_x"}"#,
            Some(good.clone()),
        ),
        ("timestamp moved", &body, Some(format!("t={},v1={v1}", t + 5))),
        ("garbage", &body, Some("v1=zz,t=yesterday".to_owned())),
    ];
    for (name, body, signature) in refusals {
        let (status, answer) = daemon.deliver(body, signature.as_deref()).await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_signature", "{name}: {answer}");
    }
    let (status, _) = daemon.request("GET", "/v1/stripe/webhook", b"", None).await;
    assert_eq!(status, 405);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(all_runs(&w.db), 0, "a refused webhook starts no run");

    // The fake Stripe's own deliveries: a sale is licensed and mailed at once.
    w.fake.send_webhooks(&daemon.url(), NEW_SECRET);
    sell(&w, "first@example.test");
    until("the first sale's license", || count(&w.db, "licenses") == 3).await;
    settled(&w.db).await;
    assert_eq!(
        eml_files(outbox.path()).len(),
        3,
        "the two subscriptions and the sale, mailed"
    );
    let delivered = w.fake.webhook_deliveries();
    assert!(
        !delivered.is_empty() && delivered.iter().all(|d| d.status == Some(200)),
        "{delivered:?}"
    );

    // Signed (with the secret being rolled out) but naming nothing Stripe
    // has: it wakes a run, and the run finds nothing to change.
    let (ledger, licenses, before) = (
        count(&w.db, "license_ledger"),
        count(&w.db, "licenses"),
        all_runs(&w.db),
    );
    let forged = event("evt_forged", "checkout.session.completed", None);
    let (status, answer) = daemon
        .deliver(&forged, Some(&sign_webhook(OLD_SECRET, &forged, now())))
        .await;
    assert_eq!((status, &answer["woke"]), (200, &json!(true)), "{answer}");
    until("the forged webhook's run", || runs(&w.db, "succeeded", None) > before).await;
    settled(&w.db).await;
    assert_eq!(count(&w.db, "licenses"), licenses, "a forged webhook issues nothing");
    assert_eq!(
        count(&w.db, "license_ledger"),
        ledger,
        "a forged webhook changes nothing"
    );

    // A flood: five sales (their own deliveries) and 100 copies of a valid
    // webhook at once cost a few runs, and every sale is licensed and
    // mailed once.
    let before = all_runs(&w.db);
    for n in 0..5 {
        sell(&w, &format!("flood-{n}@example.test"));
    }
    let copy = event("evt_flood", "checkout.session.completed", None);
    let signature = sign_webhook(NEW_SECRET, &copy, now());
    let answers = futures::future::join_all((0..100).map(|_| daemon.deliver(&copy, Some(&signature)))).await;
    assert!(answers.iter().all(|(status, _)| *status == 200));
    until("the flood's sales licensed", || count(&w.db, "licenses") == 8).await;
    settled(&w.db).await;
    let flood_runs = all_runs(&w.db) - before;
    assert!(
        (1..=4).contains(&flood_runs),
        "105+ wake-ups started {flood_runs} runs: at most one runs and one waits"
    );
    assert_eq!(count(&w.db, "licenses"), 8, "every sale once");
    let mails = eml_files(outbox.path());
    assert_eq!(mails.len(), 8, "every license mailed once");
    for n in 0..5 {
        let to = format!("flood-{n}@example.test");
        assert_eq!(mails.iter().filter(|m| m.contains(&to)).count(), 1, "{to}");
    }

    let (status, metrics) = daemon.request("GET", "/metrics", b"", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("licensync_last_run_success 1"), "{metrics}");
    assert!(
        metrics.contains(r#"licensync_webhook_deliveries_total{outcome="refused",reason="stale"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"licensync_webhook_deliveries_total{outcome="woke",reason=""}"#),
        "{metrics}"
    );

    // SIGTERM while a woken run waits on Stripe: the run finishes its page
    // and the daemon exits 0.
    w.fake.inject_fault(Fault {
        path_prefix: "/v1/events".into(),
        kind: FaultKind::Latency(Duration::from_secs(2)),
        times: 1,
    });
    sell(&w, "last@example.test");
    until("a run going", || runs(&w.db, "running", None) == 1).await;
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(runs(&w.db, "running", None), 0, "the run in progress finished");
    for secret in [NEW_SECRET, OLD_SECRET, &NEW_SECRET["whsec_".len()..]] {
        assert!(!log.contains(secret), "the webhook secret reached the log: {log}");
    }
    assert!(log.contains("webhook refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_wakes_its_own_account_only() {
    let fake = FakeStripe::start().await;
    fake.set_now(now());
    let db = TestDb::new();
    let accounts = [fake.connect_account(), fake.connect_account()];
    for (i, account) in accounts.iter().enumerate() {
        let product = account.create_product("Tool", &[("product_id", "tool")]);
        let price = account.create_price(&product, None, 900, &[]);
        let customer = account.create_customer(Some(&format!("buyer-{i}@example.test")), None);
        account.create_checkout_session(CheckoutSpec {
            customer: Some(customer),
            lines: vec![(price, 1)],
            ..CheckoutSpec::default()
        });
    }
    let [a, b] = [accounts[0].stripe_account_id(), accounts[1].stripe_account_id()];
    let both = format!("{a},{b}");
    let daemon = start(
        &db.url,
        &fake,
        YEARLY,
        &[
            ("LICENSYNC_WEBHOOK_SECRET", NEW_SECRET),
            ("LICENSYNC_STRIPE_ACCOUNTS", &both),
        ],
        None,
    );
    let wake = |id: &str, event_type: &str, account: Option<&str>| {
        let body = event(id, event_type, account);
        let signature = sign_webhook(NEW_SECRET, &body, now());
        (body, signature)
    };
    // Events no run here reads: an account not reconciled here, the
    // platform's own (not configured), a type no run reads.
    for (id, event_type, account) in [
        ("evt_1", "checkout.session.completed", Some("acct_1NotConfigured00")),
        ("evt_2", "checkout.session.completed", None),
        ("evt_3", "customer.created", Some(a.as_str())),
    ] {
        let (body, signature) = wake(id, event_type, account);
        let (status, answer) = daemon.deliver(&body, Some(&signature)).await;
        assert_eq!((status, &answer["woke"]), (200, &json!(false)), "{id}: {answer}");
    }
    let (body, signature) = wake("evt_4", "checkout.session.completed", Some(&a));
    let (status, answer) = daemon.deliver(&body, Some(&signature)).await;
    assert_eq!((status, &answer["woke"]), (200, &json!(true)), "{answer}");
    until("the woken account's run", || runs(&db, "succeeded", Some(&a)) == 1).await;
    settled(&db).await;
    assert_eq!(all_runs(&db), 1, "only the woken account ran");
    assert_eq!(runs(&db, "succeeded", Some(&b)), 0);
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}

/// The schedule goes on beside the webhook endpoint, and the same process
/// answers the key API when it has a signing key: one process for a small
/// vendor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_keeps_running_beside_webhooks_and_the_key_api() {
    let w = world().await;
    let keys = tempfile::tempdir().unwrap();
    let generated = licensync()
        .args(["keys", "generate", "--out"])
        .arg(keys.path().join("keys"))
        .output()
        .unwrap();
    assert!(generated.status.success());
    let signing = keys.path().join("keys/signing.key");
    let daemon = start(
        &w.db.url,
        &w.fake,
        "*/2 * * * * *",
        &[
            ("LICENSYNC_WEBHOOK_SECRET", NEW_SECRET),
            ("LICENSYNC_SIGNING_KEY_FILE", signing.to_str().unwrap()),
        ],
        None,
    );
    // No webhook arrives: the schedule licenses the subscriptions and a
    // later sale, as a daemon without webhooks would.
    until("the first scheduled run", || {
        count(&w.db, "licenses") == 2 && runs(&w.db, "succeeded", None) == 1
    })
    .await;
    sell(&w, "quiet@example.test");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(&w.db, "licenses") < 3 {
        if tokio::time::Instant::now() > deadline {
            let (_, log) = daemon.stop();
            panic!("the schedule did not find the sale: {log}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // (The license is written before its run records its success.)
    until("the scheduled run that found it", || {
        runs(&w.db, "succeeded", None) >= 2
    })
    .await;
    assert_eq!(daemon.request("GET", "/healthz", b"", None).await.0, 200);

    // The key API on the daemon's address: the product allows 2 machines.
    let key: String = diesel::sql_query("SELECT key AS k FROM licenses ORDER BY id LIMIT 1")
        .load::<K>(&mut w.db.conn())
        .unwrap()
        .remove(0)
        .k;
    let ask = |machine: Option<&str>| {
        let mut body = json!({"key": key});
        if let Some(machine) = machine {
            body["machine"] = json!(machine);
        }
        body.to_string()
    };
    let (status, answer) = daemon
        .request("POST", "/v1/licenses/validate", ask(None).as_bytes(), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""code":"NO_MACHINE""#), "{answer}");
    let (status, answer) = daemon
        .request("POST", "/v1/licenses/activate", ask(Some("laptop")).as_bytes(), None)
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains(r#""code":"VALID""#) && answer.contains("v4.public."),
        "{answer}"
    );
    let (_, metrics) = daemon.request("GET", "/metrics", b"", None).await;
    assert!(
        metrics.contains(r#"licensync_keyapi_answers_total{code="VALID"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("licensync_last_run_success 1"), "{metrics}");
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(&key), "a license key reached the log");
}

#[derive(QueryableByName)]
struct K {
    #[diesel(sql_type = diesel::sql_types::Text)]
    k: String,
}
