//! The key API over HTTP against a real PostgreSQL (docs/key-api.md): every
//! answer code, the token an application checks offline, seats under
//! concurrency, the IP window, the activation clock, what an operator or
//! the batch job changed seen by the next request, hostile bodies, the body
//! and rate limits. The server runs in the test process; `serve_binary_*`
//! run the real binary for SIGTERM and what reaches its log.

mod common;

// The operator commands and the batch side of the activation clock, in this
// one test binary (each test binary links the whole crate).
#[path = "keyapi/clock.rs"]
mod clock;
#[path = "keyapi/operators.rs"]
mod operators;

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::{Duration, Utc};
use common::{TestDb, licensync};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use licensync::domain::{ActionKind, ExpirationStart, GrantKey, LicenseState, LicenseStatus};
use licensync::keyapi::{Keys, Service, serve};
use licensync::shutdown::{Trigger, channel};
use licensync::store::LicenseWrite;
use licensync::store::models::NewLicenseRow;
use licensync_verify::{PublicKey, Signer, Verifier, VerifyError, keys_from_json, sha256_hex};
use serde_json::{Value, json};

/// A key API served from this process on a free port.
struct Api {
    db: TestDb,
    addr: SocketAddr,
    stop: Trigger,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
    secret: String,
}

struct Options {
    rate: u32,
    ip_window: Duration,
    lease: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rate: 100_000,
            ip_window: Duration::hours(24),
            lease: Duration::days(7),
        }
    }
}

impl Api {
    async fn start(options: Options) -> Api {
        Self::start_on(TestDb::new(), options).await
    }

    async fn start_on(db: TestDb, options: Options) -> Api {
        let generated = Signer::generate().unwrap();
        let keys = Keys {
            signer: Signer::from_paserk(&generated.secret).unwrap(),
            published: Vec::new(),
            lease: options.lease,
        };
        // Behind a "proxy": tests choose the client address per request.
        let service = Service::new(db.store.clone(), keys, options.ip_window, true, options.rate);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = channel();
        let task = tokio::spawn(serve(listener, Arc::new(service), shutdown));
        Api {
            db,
            addr,
            stop,
            task,
            client: Client::builder(TokioExecutor::new()).build_http(),
            secret: generated.secret,
        }
    }

    async fn request(&self, method: &str, path: &str, body: Vec<u8>, from: &str) -> (u16, hyper::HeaderMap, Vec<u8>) {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json")
            .header("x-forwarded-for", format!("198.51.100.77, {from}"))
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status.as_u16(), parts.headers, bytes)
    }

    /// POSTs `body` from client address `from`; the status and JSON answer.
    async fn post_from(&self, path: &str, body: Value, from: &str) -> (u16, Value) {
        let (status, _, bytes) = self.request("POST", path, body.to_string().into_bytes(), from).await;
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post_from(path, body, "203.0.113.1").await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn validate(&self, body: Value) -> Value {
        self.post("/v1/licenses/validate", body).await
    }

    async fn activate(&self, body: Value) -> Value {
        self.post("/v1/licenses/activate", body).await
    }

    async fn verifier(&self) -> Verifier {
        let (status, _, bytes) = self.request("GET", "/v1/keys", Vec::new(), "203.0.113.1").await;
        assert_eq!(status, 200);
        Verifier::new(keys_from_json(std::str::from_utf8(&bytes).unwrap()).unwrap())
    }

    fn count(&self, table: &str) -> i64 {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let n: N = diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
            .get_result(&mut self.db.conn())
            .unwrap();
        n.n
    }

    async fn stop(self) {
        self.stop.shutdown();
        self.task.await.unwrap().unwrap();
    }
}

/// Seeds one license (a paid one-time purchase of `app`, 30 days left)
/// edited by `edit`; its key.
fn seed(db: &TestDb, n: usize, edit: impl FnOnce(&mut LicenseState)) -> String {
    let mut state = LicenseState {
        status: LicenseStatus::Active,
        product_ids: vec!["app".into()],
        product_name: Some("App".into()),
        stripe_customer_id: Some(format!("cus_{n}")),
        stripe_subscription_id: None,
        stripe_payment_intent: Some(format!("pi_{n}")),
        customer_email: None,
        customer_name: None,
        quantity: 1,
        ip_limit: None,
        hwid_limit: None,
        expiration_days: None,
        expiration_start: None,
        expires_at: Some(Utc::now() + Duration::days(30)),
        livemode: false,
    };
    edit(&mut state);
    let key = licensync::keys::new_license_key();
    let grant = GrantKey::checkout_line(&format!("cs_{n}"), "li_1");
    let write = LicenseWrite {
        license: NewLicenseRow::new(key.clone(), &grant, &state),
        action: ActionKind::Issue,
        before: None,
        after: serde_json::to_value(&state).unwrap(),
        stripe_object: format!("cs_{n}"),
        email: None,
        write_back: None,
    };
    db.store.write_page(None, &[write]).unwrap();
    key
}

fn code(answer: &Value) -> &str {
    answer["code"].as_str().unwrap_or_else(|| panic!("no code in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_code_in_the_contracts_order() {
    let api = Api::start(Options::default()).await;
    let db = &api.db;
    let plain = seed(db, 1, |_| {});
    let revoked = seed(db, 2, |s| s.status = LicenseStatus::Revoked);
    let suspended = seed(db, 3, |s| s.status = LicenseStatus::Suspended);
    let expired = seed(db, 4, |s| s.status = LicenseStatus::Expired);
    let ran_out = seed(db, 5, |s| s.expires_at = Some(Utc::now() - Duration::minutes(1)));
    let seats = seed(db, 6, |s| s.hwid_limit = Some(1));
    let addresses = seed(db, 7, |s| s.ip_limit = Some(1));

    let not_found = api.validate(json!({"key": "NOPE0-NOPE0-NOPE0-NOPE0-NOPE0"})).await;
    assert_eq!(code(&not_found), "NOT_FOUND");
    let valid = api.validate(json!({"key": plain})).await;
    assert_eq!(code(&valid), "VALID");
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&not_found),
        keys(&valid),
        "NOT_FOUND has the shape of every answer"
    );
    assert_eq!(not_found["license"], Value::Null);
    assert_eq!(
        (valid["valid"].clone(), valid["license"]["status"].clone()),
        (json!(true), json!("active"))
    );
    assert!(valid["token"].is_string());

    for (key, expected, status) in [
        (&revoked, "REVOKED", "revoked"),
        (&suspended, "SUSPENDED", "suspended"),
        (&expired, "EXPIRED", "expired"),
        (&ran_out, "EXPIRED", "expired"),
    ] {
        // The status comes before anything else, even a wrong product.
        let answer = api.validate(json!({"key": key, "product": "other"})).await;
        assert_eq!(code(&answer), expected, "{answer}");
        assert_eq!(answer["license"]["status"], status);
        assert_eq!(
            (answer["valid"].clone(), answer["token"].clone()),
            (json!(false), Value::Null)
        );
    }
    let answer = api.validate(json!({"key": seats, "product": "other"})).await;
    assert_eq!(code(&answer), "PRODUCT_MISMATCH");
    assert_eq!(
        code(&api.validate(json!({"key": plain, "product": "app"})).await),
        "VALID"
    );
    assert_eq!(code(&api.validate(json!({"key": seats})).await), "NO_MACHINE");
    assert_eq!(
        code(&api.validate(json!({"key": seats, "machine": "m-1"})).await),
        "MACHINE_NOT_ACTIVATED"
    );
    assert_eq!(
        code(&api.activate(json!({"key": seats, "machine": "m-1"})).await),
        "VALID"
    );
    assert_eq!(
        code(&api.activate(json!({"key": seats, "machine": "m-2"})).await),
        "HWID_LIMIT"
    );
    assert_eq!(
        code(&api.validate(json!({"key": seats, "machine": "m-1"})).await),
        "VALID"
    );
    let (_, first) = api
        .post_from("/v1/licenses/validate", json!({"key": addresses}), "203.0.113.10")
        .await;
    assert_eq!(code(&first), "VALID");
    let (_, second) = api
        .post_from("/v1/licenses/validate", json!({"key": addresses}), "203.0.113.11")
        .await;
    assert_eq!(code(&second), "IP_LIMIT");
    let gone = api
        .post("/v1/licenses/deactivate", json!({"key": seats, "machine": "m-1"}))
        .await;
    assert_eq!(
        (code(&gone), gone["license"]["machines"].clone()),
        ("DEACTIVATED", json!(0))
    );
    let again = api
        .post("/v1/licenses/deactivate", json!({"key": seats, "machine": "m-1"}))
        .await;
    assert_eq!(code(&again), "MACHINE_NOT_ACTIVATED");
    let nobody = api
        .post("/v1/licenses/deactivate", json!({"key": "NOPE", "machine": "m-1"}))
        .await;
    assert_eq!(code(&nobody), "NOT_FOUND");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_checked_offline_with_the_published_key() {
    let api = Api::start(Options::default()).await;
    let key = seed(&api.db, 1, |s| {
        s.hwid_limit = Some(2);
        s.ip_limit = Some(3);
        s.expires_at = Some(Utc::now() + Duration::days(2));
    });
    let answer = api
        .activate(json!({"key": key, "machine": "fingerprint-A", "nonce": "n-123", "name": "laptop"}))
        .await;
    assert_eq!((code(&answer), answer["nonce"].clone()), ("VALID", json!("n-123")));
    let token = answer["token"].as_str().unwrap();
    let verifier = api.verifier().await;
    let now = Utc::now();
    let claims = verifier.verify(token, &key, Some("fingerprint-A"), now).unwrap();
    assert_eq!(claims.kh, sha256_hex(&key));
    assert_eq!(claims.machine.as_deref(), Some(sha256_hex("fingerprint-A").as_str()));
    assert_eq!(claims.products, ["app"]);
    assert_eq!((claims.hwid_limit, claims.ip_limit), (Some(2), Some(3)));
    assert_eq!(claims.nonce.as_deref(), Some("n-123"));
    assert!(!token.contains(&key), "the token never carries the key");
    // One changed character of the signed payload: refused.
    let mut tampered: Vec<char> = token.chars().collect();
    let at = "v4.public.".len() + 20;
    tampered[at] = if tampered[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    assert!(matches!(
        verifier.verify(&tampered, &key, Some("fingerprint-A"), Utc::now()),
        Err(VerifyError::BadSignature | VerifyError::Malformed(_))
    ));
    // `exp` is the earlier of the lease (7 days) and the license's expiry (2 days).
    assert_eq!(claims.exp, claims.lic_exp.unwrap());
    // Another machine, another key, a later clock: refused.
    assert!(matches!(
        verifier.verify(token, &key, Some("fingerprint-B"), now),
        Err(VerifyError::WrongMachine)
    ));
    assert!(matches!(
        verifier.verify(token, "OTHER-KEY", Some("fingerprint-A"), now),
        Err(VerifyError::WrongKey)
    ));
    assert!(matches!(
        verifier.verify(token, &key, Some("fingerprint-A"), now + Duration::days(3)),
        Err(VerifyError::Expired { .. })
    ));
    // Signed by a key the application does not hold: refused.
    let stranger = Verifier::new([PublicKey::from_paserk(&Signer::generate().unwrap().public).unwrap()]);
    assert!(stranger.verify(token, &key, Some("fingerprint-A"), now).is_err());
    // The lease bounds a perpetual license's token.
    let perpetual = seed(&api.db, 2, |s| s.expires_at = None);
    let answer = api.validate(json!({"key": perpetual})).await;
    let claims = verifier
        .verify(answer["token"].as_str().unwrap(), &perpetual, None, Utc::now())
        .unwrap();
    assert_eq!(claims.lic_exp, None);
    assert!(claims.exp <= Utc::now() + Duration::days(7) && claims.exp > Utc::now() + Duration::days(6));
    assert!(api.secret.starts_with("k4.secret."));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_concurrent_activations_on_two_seats_take_exactly_two() {
    let api = Arc::new(Api::start(Options::default()).await);
    let key = seed(&api.db, 1, |s| s.hwid_limit = Some(2));
    let answers = futures::future::join_all((0..30).map(|i| {
        let (api, key) = (api.clone(), key.clone());
        tokio::spawn(async move {
            api.activate(json!({"key": key, "machine": format!("machine-{i}")}))
                .await
        })
    }))
    .await;
    let codes: Vec<String> = answers.into_iter().map(|a| code(&a.unwrap()).to_owned()).collect();
    assert_eq!(codes.iter().filter(|c| *c == "VALID").count(), 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "HWID_LIMIT").count(), 28, "{codes:?}");
    assert_eq!(api.count("machine_activations"), 2);
    // An activated machine activates again (idempotent) with the seats full.
    let seated = licensync::store::Store::machines(&api.db.store, 1).unwrap();
    assert_eq!(seated.len(), 2);
    Arc::into_inner(api).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_window_counts_recent_addresses_and_old_ones_are_forgotten() {
    let api = Api::start(Options {
        ip_window: Duration::seconds(2),
        ..Options::default()
    })
    .await;
    let key = seed(&api.db, 1, |s| s.ip_limit = Some(2));
    let from = |a: &str| a.to_owned();
    for address in ["203.0.113.1", "203.0.113.2", "203.0.113.1"] {
        let (_, answer) = api
            .post_from("/v1/licenses/validate", json!({"key": key}), &from(address))
            .await;
        assert_eq!(code(&answer), "VALID", "{address}");
    }
    let (_, third) = api
        .post_from("/v1/licenses/validate", json!({"key": key}), "203.0.113.3")
        .await;
    assert_eq!(code(&third), "IP_LIMIT");
    assert_eq!(api.count("license_addresses"), 2, "a refused address is not recorded");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (_, later) = api
        .post_from("/v1/licenses/validate", json!({"key": key}), "203.0.113.3")
        .await;
    assert_eq!(code(&later), "VALID", "the first two left the window");
    // Addresses the window no longer needs are deleted (personal data).
    let forgotten = api
        .db
        .store
        .forget_addresses(Utc::now() - Duration::seconds(2))
        .unwrap();
    assert_eq!((forgotten, api.count("license_addresses")), (2, 1));
    // A license without an ip_limit keeps no address at all.
    let open = seed(&api.db, 2, |_| {});
    api.validate(json!({"key": open})).await;
    assert_eq!(api.count("license_addresses"), 1);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activation_clock_starts_once_at_the_first_valid_answer() {
    let api = Api::start(Options::default()).await;
    let key = seed(&api.db, 1, |s| {
        s.expires_at = None;
        s.expiration_days = Some(30);
        s.expiration_start = Some(ExpirationStart::Activation);
        s.hwid_limit = Some(2);
    });
    let refused = api.validate(json!({"key": key})).await;
    assert_eq!(code(&refused), "NO_MACHINE");
    assert_eq!(refused["license"]["expires_at"], Value::Null);
    assert_eq!(api.count("license_clocks"), 0, "a refused answer starts no clock");

    let before = Utc::now();
    let first = api.activate(json!({"key": key, "machine": "m-1"})).await;
    assert_eq!(code(&first), "VALID");
    let expires: chrono::DateTime<Utc> = serde_json::from_value(first["license"]["expires_at"].clone()).unwrap();
    assert!(expires >= before + Duration::days(30) && expires <= Utc::now() + Duration::days(30));
    let verifier = api.verifier().await;
    let claims = verifier
        .verify(first["token"].as_str().unwrap(), &key, Some("m-1"), Utc::now())
        .unwrap();
    assert_eq!(claims.lic_exp, Some(expires.trunc_subsecs_to_secs()));

    // Another machine, later: the clock does not move.
    let second = api.activate(json!({"key": key, "machine": "m-2"})).await;
    assert_eq!(second["license"]["expires_at"], first["license"]["expires_at"]);
    api.post("/v1/licenses/deactivate", json!({"key": key, "machine": "m-1"}))
        .await;
    api.post("/v1/licenses/deactivate", json!({"key": key, "machine": "m-2"}))
        .await;
    let third = api.activate(json!({"key": key, "machine": "m-3"})).await;
    assert_eq!(
        third["license"]["expires_at"], first["license"]["expires_at"],
        "freeing every seat does not restart the clock"
    );
    assert_eq!(api.count("license_clocks"), 1);
    api.stop().await;
}

trait TruncSecs {
    fn trunc_subsecs_to_secs(self) -> Self;
}

impl TruncSecs for chrono::DateTime<Utc> {
    fn trunc_subsecs_to_secs(self) -> Self {
        chrono::SubsecRound::trunc_subsecs(self, 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_batch_job_or_an_operator_changed_is_answered_by_the_next_request() {
    let api = Api::start(Options::default()).await;
    let key = seed(&api.db, 1, |s| s.hwid_limit = Some(3));
    assert_eq!(
        code(&api.activate(json!({"key": key, "machine": "m-1"})).await),
        "VALID"
    );

    // A reissue: the old key is no key, the new one keeps the machines.
    let out = licensync()
        .args(["licenses", "reissue", &key, "--reason", "leaked", "--by", "test"])
        .env("DATABASE_URL", &api.db.url)
        .env("LICENSYNC_MAIL_URL", "none")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new_key = api.db.store.find_license("1").unwrap().unwrap().key;
    assert_ne!(new_key, key);
    assert_eq!(
        code(&api.validate(json!({"key": key, "machine": "m-1"})).await),
        "NOT_FOUND"
    );
    let reissued = api.validate(json!({"key": new_key, "machine": "m-1"})).await;
    assert_eq!(
        (code(&reissued), reissued["license"]["machines"].clone()),
        ("VALID", json!(1))
    );

    // A revocation.
    let out = licensync()
        .args(["licenses", "revoke", &new_key, "--reason", "chargeback", "--by", "test"])
        .env("DATABASE_URL", &api.db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        code(&api.validate(json!({"key": new_key, "machine": "m-1"})).await),
        "REVOKED"
    );

    // An expiry the batch job has not written yet: expired at once.
    let other = seed(&api.db, 2, |_| {});
    assert_eq!(code(&api.validate(json!({"key": other})).await), "VALID");
    api.db
        .store
        .batch_execute("UPDATE licenses SET expires_at = now() - interval '1 second' WHERE id = 2")
        .unwrap();
    let answer = api.validate(json!({"key": other})).await;
    assert_eq!(
        (code(&answer), answer["license"]["status"].clone()),
        ("EXPIRED", json!("expired"))
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_clear_4xx_and_change_nothing() {
    let api = Api::start(Options::default()).await;
    let key = seed(&api.db, 1, |s| s.hwid_limit = Some(1));
    for (body, why) in [
        (b"{".to_vec(), "not JSON"),
        (b"[]".to_vec(), "object"),
        (br#"{"machine":"m"}"#.to_vec(), "`key` is missing"),
        (format!(r#"{{"key":"{key}"}}"#).into_bytes(), "`machine` is missing"),
        (
            format!(r#"{{"key":"{key}","machine":["m"]}}"#).into_bytes(),
            "must be a string",
        ),
        (
            format!(r#"{{"key":"{key}","machine":"{}"}}"#, "m".repeat(257)).into_bytes(),
            "longer than 256",
        ),
        (
            format!(r#"{{"key":"{key}","machine":"m","name":"{}"}}"#, "n".repeat(101)).into_bytes(),
            "longer than 100",
        ),
    ] {
        let (status, _, bytes) = api.request("POST", "/v1/licenses/activate", body, "203.0.113.1").await;
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "bad_request");
        assert!(answer["error"]["message"].as_str().unwrap().contains(why), "{answer}");
    }
    let big = format!(r#"{{"key":"{key}","machine":"m","pad":"{}"}}"#, "x".repeat(9000));
    let (status, _, bytes) = api
        .request("POST", "/v1/licenses/activate", big.into_bytes(), "203.0.113.1")
        .await;
    assert_eq!(status, 413);
    assert!(serde_json::from_slice::<Value>(&bytes).unwrap()["error"].is_object());
    let (status, _, bytes) = api.request("GET", "/v1/nothing", Vec::new(), "203.0.113.1").await;
    assert_eq!(
        (
            status,
            serde_json::from_slice::<Value>(&bytes).unwrap()["error"]["code"].clone()
        ),
        (404, json!("not_found"))
    );
    let (status, _, _) = api
        .request("GET", "/v1/licenses/validate", Vec::new(), "203.0.113.1")
        .await;
    assert_eq!(status, 405);
    assert_eq!(
        api.count("machine_activations") + api.count("license_addresses") + api.count("license_clocks"),
        0
    );
    api.stop().await;
}

#[test]
fn hostile_bodies_never_get_a_5xx_and_never_change_a_table() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (api, key) = runtime.block_on(async {
        let api = Api::start(Options::default()).await;
        let key = seed(&api.db, 1, |s| {
            s.hwid_limit = Some(1);
            s.ip_limit = Some(1);
        });
        (api, key)
    });
    let licenses = || api.db.store.list_licenses(&Default::default()).unwrap();
    let before = licenses();
    let fields = prop_oneof![
        Just(json!(null)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<bool>().prop_map(|b| json!(b)),
        ".{0,300}".prop_map(|s| json!(s)),
        Just(json!(key.clone())),
        Just(json!(["a", {"b": 1}])),
        Just(json!({"$gt": ""})),
    ];
    let objects = proptest::collection::btree_map(
        prop_oneof![
            Just("key".to_owned()),
            Just("machine".to_owned()),
            Just("name".to_owned()),
            Just("nonce".to_owned()),
            Just("product".to_owned()),
            "[a-z]{1,8}"
        ],
        fields,
        0..6,
    )
    .prop_map(|map| serde_json::to_vec(&map).unwrap());
    let bodies = prop_oneof![objects, proptest::collection::vec(any::<u8>(), 0..600)];
    let paths = prop_oneof![
        Just("/v1/licenses/validate"),
        Just("/v1/licenses/deactivate"),
        Just("/v1/licenses/activate")
    ];
    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(body in bodies, path in paths)| {
        let (status, _, bytes) = runtime.block_on(api.request("POST", path, body.clone(), "203.0.113.200"));
        prop_assert!(status == 200 || (400..500).contains(&status), "{status} for {body:?}");
        if status != 200 {
            let answer: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert!(answer["error"]["message"].is_string());
        }
    });
    // The service never writes a license, whatever it is sent; the only
    // writes a body with the real key can make are the one seat and the
    // one address the license allows.
    assert_eq!(licenses(), before);
    assert!(api.count("machine_activations") <= 1 && api.count("license_addresses") <= 1);
    runtime.block_on(api.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_address_is_held_to_its_rate() {
    let api = Api::start(Options {
        rate: 5,
        ..Options::default()
    })
    .await;
    let key = seed(&api.db, 1, |_| {});
    let body = || json!({"key": key}).to_string().into_bytes();
    for i in 0..10 {
        let (status, _, _) = api
            .request("POST", "/v1/licenses/validate", body(), "203.0.113.50")
            .await;
        assert_eq!(status, 200, "request {i} is within the burst of twice the rate");
    }
    let (status, headers, bytes) = api
        .request("POST", "/v1/licenses/validate", body(), "203.0.113.50")
        .await;
    assert_eq!(status, 429);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(
        serde_json::from_slice::<Value>(&bytes).unwrap()["error"]["code"],
        "rate_limited"
    );
    let (status, _, _) = api
        .request("POST", "/v1/licenses/validate", body(), "203.0.113.51")
        .await;
    assert_eq!(status, 200, "another address is not held back");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_drains_on_sigterm_and_logs_no_key_fingerprint_or_signing_key() {
    let db = TestDb::new();
    let key = seed(&db, 1, |s| s.hwid_limit = Some(2));
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let generated = licensync()
        .args(["keys", "generate", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(generated.status.success());
    let signing = std::fs::read_to_string(keys.join("signing.key")).unwrap();
    let mut child = licensync()
        .args(["serve", "--listen", "127.0.0.1:0", "--signing-key-file"])
        .arg(keys.join("signing.key"))
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "licensync=debug")
        .env("LICENSYNC_LOG_FORMAT", "json")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log as it comes (a full pipe would stop the server), and
    // find the address it bound.
    let (addr, reader) = common::listening(&mut child);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let fingerprint = "fp-7f3a9c-secret-machine";
    for path in [
        "/v1/licenses/activate",
        "/v1/licenses/validate",
        "/v1/licenses/deactivate",
    ] {
        let request = hyper::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::from(
                json!({"key": key, "machine": fingerprint}).to_string(),
            )))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // A request in flight when SIGTERM comes is still answered.
    let slow = {
        let client = client.clone();
        let body = json!({"key": key, "machine": fingerprint}).to_string();
        tokio::spawn(async move {
            let request = hyper::Request::builder()
                .method("POST")
                .uri(format!("http://{addr}/v1/licenses/validate"))
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            client.request(request).await.map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    if let Ok(answered) = slow.await.unwrap() {
        assert_eq!(answered, 200);
    }
    let log = reader.join().unwrap();
    assert!(log.contains("key API stopped"), "{log}");
    for secret in [
        key.as_str(),
        fingerprint,
        &sha256_hex(fingerprint),
        &sha256_hex(&key),
        signing.trim(),
        &signing.trim()["k4.secret.".len()..],
    ] {
        assert!(
            !log.contains(secret),
            "the log holds a secret ({}…): {log}",
            &secret[..6]
        );
    }
}
