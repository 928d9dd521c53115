//! A stateful fake of the Stripe HTTP API for licensync's tests and quick start.
//!
//! The crate owns the public handle [`FakeStripe`]: a server on loopback that
//! speaks Stripe's wire protocol (Bearer keys, form-style query strings with
//! `expand[]`, cursor pagination, Stripe's error envelope, `Request-Id`) over an
//! in-memory account that scenario steps change between runs. Every object is
//! cloned from Stripe's own example of its type in `fixtures3.json`, so it has
//! exactly the fields the real API sends.
//!
//! Choices worth knowing (the real API leaves them to the account's history):
//! - the clock starts at [`DEFAULT_NOW`] and moves only through [`FakeStripe::set_now`]
//!   and [`FakeStripe::advance`], so runs are reproducible;
//! - ids are a prefix plus a zero-padded counter of the account's, shared by
//!   all its types (`prod_00000000000001`), so id order is creation order
//!   within an account, and two accounts' ids may coincide;
//! - a renewal moves a period by its price's interval with month = 30 days and
//!   year = 365 days;
//! - the top-level `subscription` fields of invoices and invoice lines, which the
//!   current API no longer fills, are null: the subscription is under `parent`;
//! - a generated account ([`FakeStripe::generate`], `fake-stripe --generate N`)
//!   computes its purchases from their index on every request instead of
//!   storing them: a million purchases with a year of invoices each cost no
//!   memory, and every list page costs only its own objects;
//! - invoices also accept `expand[]=payments` (Stripe's includable list of
//!   `invoice_payment`s), the current API's only link from an invoice to its payment.
//! - every invoice line that is not a subscription item's (the lines of
//!   one-off invoices and of Checkout Sessions' invoices) has its invoice item
//!   (`ii_` and the line's number), listed at `/v1/invoiceitems` by its `date`;
//!   subscription invoices have none. An invoice without a customer gets none
//!   (an invoice item needs one). Invoice items record no events.
//! - the only writes are the metadata updates of licensync's write-back:
//!   `POST /v1/subscription_items/{id}`, `/v1/payment_intents/{id}` and
//!   `/v1/invoices/{id}` with a form body of `metadata[KEY]=VALUE` pairs. As
//!   in Stripe, the pairs are merged into the object's `metadata` and an empty
//!   value unsets its key; any other parameter is 400 `parameter_unknown`
//!   (`expand[]`, which Stripe takes, included; `metadata=`, Stripe's way to
//!   unset every key, is 400 too); Stripe's limits (50 keys, keys of 40
//!   characters, values of 500) are checked on the merged metadata, and a
//!   write over them is 400 and changes nothing; an
//!   unknown id is 404 `resource_missing`, an object of a generated account
//!   (computed, not stored) 400. An applied write goes through
//!   [`FakeStripe::update`]'s path, so it records the usual event (a
//!   subscription item's `customer.subscription.updated`,
//!   `payment_intent.updated`, `invoice.updated`, with the request's id and
//!   idempotency key in `request`) and delivers it as a webhook; a write that
//!   changes nothing records none. The answer is 200 with the object as its
//!   GET serves it, unexpanded;
//! - an `Idempotency-Key` is remembered per account with the first request's
//!   path and body and its answer, for the life of the account (Stripe keeps
//!   keys at least 24 hours): the same request again replays that answer with
//!   `Idempotent-Replayed: true` and changes nothing, another request with it
//!   is 400 `idempotency_error`. Every answer of the endpoint (2xx and 4xx,
//!   also when a latency, pass or truncated-body fault let it through) is
//!   remembered; a rate limit's or an injected fault's answer (429, 5xx,
//!   dropped connection, HTML) never reaches it and is not. Stripe does not
//!   save answers to parameters that fail validation; the fake does, so that
//!   a replay shows the same 400. A 403 of [`FakeStripe::deny_writes`] is not
//!   remembered (it is the key's, checked before the endpoint runs);
//! - [`FakeStripe::deny_writes`] makes the account's key a restricted key
//!   that may read but not write: every write is 403 naming the permission
//!   (`rak_subscription_write`, `rak_payment_intent_write`, `rak_invoice_write`);
//! - [`FakeStripe::metadata_writes`] lists every write the endpoint accepted
//!   (200, no-ops included, so that a test sees a redundant write), not
//!   replays nor refusals.
//!
//! One server serves several accounts, as Stripe does (see [`FakeStripe::connect_account`]
//! and [`FakeStripe::add_account`]): a request's key selects a top-level account and
//! Stripe Connect's `Stripe-Account` header one of its connected accounts. Each account
//! has its own objects, id counters (so ids may coincide across accounts), events,
//! faults, rate limits, write permission, idempotency keys and metadata writes;
//! the clock, the latency and the request log are the server's.

// Large json! literals (Stripe objects have many fields) need a deeper macro recursion.
#![recursion_limit = "256"]

mod accounts;
mod api;
mod conditions;
mod generated;
mod sample;
mod server;
mod state;
mod webhooks;
mod wire;
mod writes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use generated::MAX_PAST_PERIODS;
pub use state::DEFAULT_NOW;
use state::State;
pub use webhooks::{DEFAULT_WEBHOOK_SECRET, Delivery, sign_webhook};

/// The API key accepted by [`FakeStripe::start`].
pub const DEFAULT_API_KEY: &str = "sk_test_fake_0123456789";

/// A running fake Stripe, as a handle on one of its accounts. Clones share
/// the server and the account; the server stops when the last handle of any
/// of its accounts is dropped.
///
/// [`FakeStripe::start`] gives a handle on the server's first account;
/// [`FakeStripe::connect_account`] and [`FakeStripe::add_account`] give
/// handles on more accounts of the same server. Every scenario step of a
/// handle (`create_*`, `update`, `refund`, `seed_sample`, `generate`,
/// `events`, `inject_fault`, `set_rate_limits`, `requests`, ...) acts on its
/// own account only; the clock (`now`, `set_now`, `advance`) and the
/// latency are the server's and move every account.
#[derive(Clone)]
pub struct FakeStripe {
    account: Arc<accounts::Account>,
    accounts: Arc<accounts::Accounts>,
    server: Arc<server::ServerTask>,
    /// The webhooks delivered so far, of every account.
    deliveries: Arc<std::sync::Mutex<Vec<Delivery>>>,
}

/// How to start a [`FakeStripe`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The key of the server's first account (more accounts: [`FakeStripe::add_account`],
    /// [`FakeStripe::connect_account`]); `sk_live_`/`rk_live_` keys make a live-mode account.
    pub api_key: String,
    /// Seed the sample catalog of [`FakeStripe::seed_sample`] before serving.
    pub seed_sample: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            api_key: DEFAULT_API_KEY.to_owned(),
            seed_sample: false,
        }
    }
}

/// Per-request latency, drawn uniformly from `[min, max]` for each request
/// and slept outside any lock, so that concurrent requests overlap as they
/// do against Stripe (e.g. 50..300 ms for a client far from Stripe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub min: Duration,
    pub max: Duration,
}

impl Latency {
    pub fn ms(min: u64, max: u64) -> Latency {
        Latency {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        }
    }
}

/// Stripe's request rate limits, enforced as Stripe does: a request over
/// either limit is answered 429 with the `rate_limit` error and a
/// `Retry-After` header in whole seconds. Each limit is a token bucket
/// holding one second's worth of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests per second per endpoint, `/v1/<first path segment>`
    /// (`/v1/subscriptions`, `/v1/checkout`, ...).
    pub per_endpoint_rps: u32,
    /// Requests per second over the whole account.
    pub global_rps: u32,
}

impl RateLimits {
    /// Stripe's defaults: 25/s per endpoint; 100/s overall in live mode, 25/s in test mode.
    pub fn stripe(livemode: bool) -> RateLimits {
        RateLimits {
            per_endpoint_rps: 25,
            global_rps: if livemode { 100 } else { 25 },
        }
    }
}

/// A generated account ([`FakeStripe::generate`]): a real account's mix of
/// purchases, computed from their index on demand instead of stored, so that a
/// million of them cost no memory. The purchases are spread evenly over the
/// `(max_past_periods + 1) * 30` days up to the clock, kinds interleaved:
/// - each subscription has its own customer (`buyer<i>@example.com`), one
///   item (every third a second one on the other product), monthly (three in
///   four) or yearly, is `active` with its current period holding now, and has
///   a paid invoice (payment intent, charge) for every period since it began:
///   up to `max_past_periods` past ones;
/// - each Checkout Session is complete, paid, payment mode, with one line
///   (every fifth two) of a one-time price; half are guest checkouts with only
///   `customer_email` (`guest<i>@example.com`), half have their own customer;
/// - each one-off invoice is paid, has its own customer and one line (every
///   fifth two) of a one-time price, each with its invoice item.
///
/// The catalog (two licensed products with a monthly, a yearly and a one-time
/// price each) is stored as usual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedAccount {
    pub subscriptions: usize,
    pub sessions: usize,
    pub one_off_invoices: usize,
    /// At most [`MAX_PAST_PERIODS`]. Default 12: a year of monthly invoices.
    pub max_past_periods: u32,
    /// Chooses each purchase's intervals, items, lines, quantities and guests.
    pub seed: u64,
}

impl Default for GeneratedAccount {
    fn default() -> Self {
        GeneratedAccount {
            subscriptions: 0,
            sessions: 0,
            one_off_invoices: 0,
            max_past_periods: 12,
            seed: 1,
        }
    }
}

impl GeneratedAccount {
    /// `n` purchases as a real account has them: 85% subscriptions, 14%
    /// one-time Checkout Sessions, 1% one-off invoices.
    pub fn real_mix(n: usize, seed: u64) -> GeneratedAccount {
        let subscriptions = n * 85 / 100;
        let one_off_invoices = n / 100;
        GeneratedAccount {
            subscriptions,
            sessions: n - subscriptions - one_off_invoices,
            one_off_invoices,
            seed,
            ..GeneratedAccount::default()
        }
    }
}

/// What a generated account holds, counted from its layout (nothing is built).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeneratedSummary {
    pub subscriptions: usize,
    pub subscription_items: usize,
    pub sessions: usize,
    pub guest_sessions: usize,
    pub session_lines: usize,
    pub one_off_invoices: usize,
    pub one_off_lines: usize,
    /// Every invoice: the subscriptions' (one per period, past and current) and the one-off ones.
    pub invoices: usize,
    pub customers: usize,
    /// `created` of the oldest and the newest purchase.
    pub oldest: i64,
    pub newest: i64,
}

/// A subscription to create; unset fields take the defaults documented per field.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionSpec {
    pub customer: String,
    /// `(price id, quantity)`, one subscription item each.
    pub items: Vec<(String, i64)>,
    /// Default `"active"`.
    pub status: Option<String>,
    /// Default now.
    pub current_period_start: Option<i64>,
    /// Default start + 30 days.
    pub current_period_end: Option<i64>,
    /// Default: the period end when the status is `trialing`, else none.
    pub trial_end: Option<i64>,
    /// Also sets `cancel_at` to the period end, as Stripe does.
    pub cancel_at_period_end: bool,
    pub cancel_at: Option<i64>,
    /// Default true; false leaves the latest invoice `open` (a failed payment).
    pub latest_invoice_paid: Option<bool>,
    /// Billing periods before the current one, each with its paid invoice
    /// (and payment and charge), one price interval apart (month = 30 days,
    /// year = 365 days, of the first item's price): the subscription's
    /// `created` and `start_date` are that many periods before the current
    /// period's start, its first invoice is `subscription_create` and every
    /// later one, the latest included, `subscription_cycle`, each created at
    /// its period's start. Default 0: only the latest invoice, created now.
    pub past_periods: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSubscription {
    pub id: String,
    pub item_ids: Vec<String>,
    pub latest_invoice: String,
}

/// A Checkout Session to create.
#[derive(Debug, Clone, Default)]
pub struct CheckoutSpec {
    pub customer: Option<String>,
    pub customer_email: Option<String>,
    /// Default `"payment"`.
    pub mode: Option<String>,
    /// `(price id, quantity)`; in subscription mode, empty means the subscription's items.
    pub lines: Vec<(String, i64)>,
    /// Default `"complete"`.
    pub status: Option<String>,
    /// Default `"paid"`.
    pub payment_status: Option<String>,
    /// Required in subscription mode; the session's `invoice` is then its latest invoice.
    pub subscription: Option<String>,
    /// Payment mode: the session gets an invoice paid by the same payment.
    pub create_invoice: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSession {
    pub id: String,
    pub line_ids: Vec<String>,
    pub payment_intent: Option<String>,
    pub invoice: Option<String>,
}

/// An invoice to create (one-off unless `subscription` is set).
#[derive(Debug, Clone, Default)]
pub struct InvoiceSpec {
    pub customer: String,
    pub lines: Vec<(String, i64)>,
    /// Default `"paid"`; also `draft`, `open`, `void`, `uncollectible`.
    pub status: Option<String>,
    pub subscription: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedInvoice {
    pub id: String,
    pub line_ids: Vec<String>,
    /// The payment of a paid invoice.
    pub payment_intent: Option<String>,
}

/// A metadata write the server accepted ([`FakeStripe::metadata_writes`]):
/// one POST to `/v1/subscription_items/{id}`, `/v1/payment_intents/{id}` or
/// `/v1/invoices/{id}` answered 200, whether or not it changed the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataWrite {
    /// The id of the object written.
    pub object: String,
    /// The `metadata[KEY]=VALUE` pairs sent, decoded; an empty value unsets its key.
    pub metadata: BTreeMap<String, String>,
    /// The request's `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
}

/// One request the server received. `status` is 0 when a fault dropped the connection.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub at: Instant,
    /// The `acct_` id of the account the request addressed: the connected
    /// account its `Stripe-Account` header named, else its key's account
    /// (also when that answered 401 or 403: a revoked account, a header
    /// naming an account the key cannot reach). `None` only when its key
    /// reaches no account (none given, or unknown).
    pub account: Option<String>,
}

/// A fault applied to the next `times` requests whose path starts with `path_prefix`,
/// among the requests for the account it was injected into ([`FakeStripe::inject_fault`]).
/// Faults are consumed in the order they were injected.
#[derive(Debug, Clone)]
pub struct Fault {
    pub path_prefix: String,
    pub kind: FaultKind,
    pub times: usize,
}

#[derive(Debug, Clone)]
pub enum FaultKind {
    /// 429 with `Retry-After` and `Stripe-Should-Retry: true`.
    TooManyRequests { retry_after_secs: u64 },
    /// The given 5xx status with Stripe's `api_error` envelope.
    ServerError(u16),
    /// Close the connection without answering.
    DropConnection,
    /// Wait, then answer normally.
    Latency(Duration),
    /// Answer normally. It still consumes one of the matching requests, so a
    /// fault injected after it hits a later one: `Pass` twice, then a 500,
    /// fails the third page of a list.
    Pass,
    /// 429 with Stripe's `rate_limit` envelope and neither `Retry-After` nor
    /// `Stripe-Should-Retry`: the client must decide from the status alone.
    TooManyRequestsWithoutRetryAfter,
    /// The normal answer, cut off: the headers announce the whole body
    /// (`Content-Length`), the first half of it is sent, then the connection
    /// closes, as when a connection dies mid-transfer.
    TruncatedBody,
    /// An HTML page with the given status instead of Stripe's JSON, as a
    /// proxy, load balancer or captive portal in the way answers (e.g. 200 or 502).
    NonJsonBody(u16),
}

impl FakeStripe {
    /// Serves a test-mode account with [`DEFAULT_API_KEY`] on 127.0.0.1, any free port.
    pub async fn start() -> FakeStripe {
        FakeStripe::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> FakeStripe {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        FakeStripe::start_on(addr, opts)
            .await
            .expect("fake-stripe: bind 127.0.0.1:0")
    }

    /// Serves on a given address (the binary's `--addr`).
    pub async fn start_on(addr: SocketAddr, opts: Options) -> std::io::Result<FakeStripe> {
        let accounts = Arc::new(accounts::Accounts::new(opts.api_key, u64::from(addr.port())));
        let server = server::ServerTask::spawn(addr, accounts.clone()).await?;
        let fake = FakeStripe {
            account: accounts.first.clone(),
            accounts,
            server: Arc::new(server),
            deliveries: Arc::default(),
        };
        if opts.seed_sample {
            fake.seed_sample();
        }
        Ok(fake)
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.account.lock()
    }

    /// A handle on another account of the same server.
    fn handle(&self, account: Arc<accounts::Account>) -> FakeStripe {
        FakeStripe {
            account,
            accounts: self.accounts.clone(),
            server: self.server.clone(),
            deliveries: self.deliveries.clone(),
        }
    }

    // ---- accounts --------------------------------------------------------------

    /// Creates a new, empty connected account of this account, as a Stripe
    /// Connect platform has them, and returns a handle on it. Requests reach
    /// it with the platform's key (its handle's [`FakeStripe::api_key`]) and
    /// the header `Stripe-Account: <its id>` ([`FakeStripe::account_id`]).
    /// It has its own objects, id counters (its first subscription may be
    /// `sub_00000000000001` like the platform's), events, faults and rate
    /// limits, and the platform's mode (test or live, from the key).
    ///
    /// Panics on a connected handle: connected accounts have none of their own.
    pub fn connect_account(&self) -> FakeStripe {
        self.handle(self.accounts.connect(&self.account))
    }

    /// Adds a new, empty top-level account reached with its own key and no
    /// header, as a vendor with one Stripe account per brand has them, and
    /// returns a handle on it. `sk_live_`/`rk_live_` keys make a live-mode
    /// account, as [`Options::api_key`] does. It can have connected accounts
    /// of its own.
    ///
    /// Panics when the key already reaches an account of this server.
    pub fn add_account(&self, api_key: &str) -> FakeStripe {
        self.handle(self.accounts.add(api_key))
    }

    /// The handles of this account's connected accounts, oldest first
    /// (empty for a connected account).
    pub fn connected_accounts(&self) -> Vec<FakeStripe> {
        self.accounts
            .connected_to(&self.account.id)
            .into_iter()
            .map(|a| self.handle(a))
            .collect()
    }

    /// The value of the `Stripe-Account` header that requests for this
    /// account send: its id for a connected account, `None` for a top-level
    /// one (the server's first account, or one of [`FakeStripe::add_account`]),
    /// which its key alone reaches.
    pub fn account_id(&self) -> Option<String> {
        self.account.platform.as_ref().map(|_| self.account.id.clone())
    }

    /// This account's id (`acct_` and 16 characters), which every account
    /// has, top-level ones included: `acct_1Fake00000000001` is the server's
    /// first account, later accounts count on from it in creation order.
    /// A top-level account also accepts its own id in `Stripe-Account`, as
    /// Stripe does.
    pub fn stripe_account_id(&self) -> String {
        self.account.id.clone()
    }

    /// The `acct_` id of the platform a connected account belongs to; `None`
    /// for a top-level account.
    pub fn platform_account_id(&self) -> Option<String> {
        self.account.platform.clone()
    }

    /// From now on, delivers every event this account and its connected
    /// accounts (those made so far) record to `url` as a Stripe webhook
    /// signed with `secret`: posted at once, side by side, in no promised
    /// order, a connected account's with its id in `account`. Call it in a
    /// Tokio runtime: the deliveries are its tasks.
    pub fn send_webhooks(&self, url: &str, secret: &str) {
        for handle in std::iter::once(self.clone()).chain(self.connected_accounts()) {
            let endpoint = webhooks::Endpoint::new(url, secret, handle.account_id(), self.deliveries.clone());
            handle.st().webhooks = Some(endpoint.start());
        }
    }

    /// Every webhook delivered so far (of every account), with the
    /// endpoint's answer, in the order the answers came.
    pub fn webhook_deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Revokes access to this account, as when a key is rolled or a
    /// connected account disconnects the platform's application. From now
    /// on every request for it is answered 401 `invalid_request_error`:
    /// - a top-level account's key answers like an unknown key, `Invalid API
    ///   Key provided: sk_test_****...` (with its connected accounts, which
    ///   that key reaches);
    /// - a connected account's `Stripe-Account` header answers `The provided
    ///   key 'sk_test_****...' does not have access to account 'acct_...' (or
    ///   that account does not exist). Application access may have been
    ///   revoked.`, with no `code`. (Stripe answers this case 401 or 403
    ///   depending on how access was lost; the fake uses 401 here and
    ///   keeps 403 `account_invalid` for an account the key never reached.)
    ///
    /// Its objects stay readable through the handle. There is no undoing it.
    pub fn revoke(&self) {
        self.account.revoke()
    }

    /// Whether [`FakeStripe::revoke`] was called on this account.
    pub fn revoked(&self) -> bool {
        self.account.is_revoked()
    }

    /// Makes this account's key a restricted key without write permission
    /// (or, with `false`, gives the permission back): while on, every
    /// metadata write for the account is answered 403 `invalid_request_error`,
    /// `The provided key 'sk_test_****6789' does not have the required
    /// permissions for this endpoint on account 'acct_...'. Having the
    /// 'rak_subscription_write' permission would allow this request to
    /// continue.` (the key masked; `rak_payment_intent_write`,
    /// `rak_invoice_write` for the other endpoints), and changes nothing. Reads are still served. For a
    /// connected account it refuses the writes that name it in `Stripe-Account`.
    pub fn deny_writes(&self, on: bool) {
        self.account.writes.deny(on)
    }

    /// The metadata writes this account accepted, in order: every POST that
    /// was answered 200 and was not an idempotent replay, including those
    /// that changed nothing. A write with `Stripe-Account` is its connected
    /// account's.
    pub fn metadata_writes(&self) -> Vec<MetadataWrite> {
        self.account.writes.applied()
    }

    /// Forgets this account's metadata writes (not its idempotency keys).
    pub fn clear_metadata_writes(&self) {
        self.account.writes.clear_applied()
    }

    /// The account for a step that stores a purchase or changes one, which a
    /// generated account (computed, not stored) cannot take.
    fn stored(&self, step: &str) -> MutexGuard<'_, State> {
        let st = self.st();
        assert!(
            st.generated.is_none(),
            "fake-stripe: `{step}` changes stored purchases; a generated account has none (use load_generated)"
        );
        st
    }

    /// A test-mode fake serving a generated account (see [`GeneratedAccount`])
    /// laid out from the clock at [`DEFAULT_NOW`].
    pub async fn generated(account: GeneratedAccount) -> FakeStripe {
        let fake = FakeStripe::start().await;
        fake.generate(account);
        fake
    }

    /// Makes this new, empty account a generated one, laid out from the
    /// current clock (a later `set_now` does not move it): the catalog is
    /// created and stored, the purchases are computed on every request.
    pub fn generate(&self, account: GeneratedAccount) {
        self.st().generate(account)
    }

    /// Stores the catalog and every purchase that `generate` with the same
    /// settings would serve, with the same ids: the stored twin of a
    /// generated account, for comparing the two or changing its objects.
    pub fn load_generated(&self, account: GeneratedAccount) -> GeneratedSummary {
        self.st().load_generated(account)
    }

    /// The counts of a generated account; `None` for a stored one.
    pub fn generated_summary(&self) -> Option<GeneratedSummary> {
        self.st().generated().map(|g| g.summary())
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The key that reaches this account: its own for a top-level account,
    /// the platform's for a connected one (which requests also name in
    /// `Stripe-Account`, see [`FakeStripe::account_id`]).
    pub fn api_key(&self) -> String {
        self.account.api_key.clone()
    }

    pub fn livemode(&self) -> bool {
        self.st().livemode
    }

    /// The clock (unix seconds) used for `created` and event times. It is
    /// the server's: every account reads the same one, and setting or
    /// advancing it through any handle moves them all.
    pub fn now(&self) -> i64 {
        self.accounts.clock.load(Ordering::Relaxed)
    }

    pub fn set_now(&self, unix: i64) {
        self.accounts.clock.store(unix, Ordering::Relaxed);
    }

    pub fn advance(&self, secs: i64) {
        self.accounts.clock.fetch_add(secs, Ordering::Relaxed);
    }

    pub fn create_customer(&self, email: Option<&str>, name: Option<&str>) -> String {
        self.stored("create_customer").create_customer(email, name)
    }

    pub fn create_product(&self, name: &str, metadata: &[(&str, &str)]) -> String {
        self.st().create_product(name, metadata)
    }

    /// `recurring_interval`: `day`, `week`, `month`, `year`, or `None` for a one-time price.
    pub fn create_price(
        &self,
        product: &str,
        recurring_interval: Option<&str>,
        unit_amount: i64,
        metadata: &[(&str, &str)],
    ) -> String {
        self.st()
            .create_price(product, recurring_interval, unit_amount, metadata)
    }

    pub fn create_subscription(&self, spec: SubscriptionSpec) -> CreatedSubscription {
        self.stored("create_subscription").create_subscription(spec)
    }

    pub fn create_checkout_session(&self, spec: CheckoutSpec) -> CreatedSession {
        self.stored("create_checkout_session").create_checkout_session(spec)
    }

    pub fn create_invoice(&self, spec: InvoiceSpec) -> CreatedInvoice {
        self.stored("create_invoice").create_invoice(spec)
    }

    /// Refunds a payment intent's charge (`None` = what is left of it); returns the `re_` id.
    pub fn refund(&self, payment_intent: &str, amount: Option<i64>) -> String {
        self.stored("refund").refund(payment_intent, amount)
    }

    /// Opens the dispute of a payment intent's charge, or moves it to `status`
    /// (`needs_response`, `under_review`, `won`, `lost`, ...); returns the `dp_` id.
    pub fn dispute(&self, payment_intent: &str, status: &str) -> String {
        self.stored("dispute").dispute(payment_intent, status)
    }

    /// Changes any stored object by id through its served JSON, then records
    /// `<object>.updated` plus the events Stripe sends for the transition
    /// (`customer.subscription.deleted`, `checkout.session.async_payment_succeeded`,
    /// `invoice.paid`, ...). Changing an embedded item or line records its parent's event.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.st();
        assert!(
            !st.generated().is_some_and(|g| g.owns(id)),
            "fake-stripe: `update` of {id}, a generated object, which is computed, not stored (use load_generated)"
        );
        st.update(id, f)
    }

    /// Starts the next period of every item (old end to old end + interval) with a
    /// new latest invoice, paid (status `active`) or open (status `past_due`).
    pub fn renew_subscription(&self, sub: &str, paid: bool) {
        self.stored("renew_subscription").renew_subscription(sub, paid)
    }

    /// `canceled` (and `incomplete_expired`) also set `ended_at` to now.
    pub fn set_subscription_status(&self, sub: &str, status: &str) {
        self.stored("set_subscription_status")
            .set_subscription_status(sub, status)
    }

    /// The object as the API serves it unexpanded.
    pub fn get(&self, id: &str) -> Option<Value> {
        self.st().get(id)
    }

    /// Whether changes record events (default on). Turning it off makes a
    /// bulk load of 100k purchases fit in a fraction of the memory; only
    /// runs that read `/v1/events` need them.
    pub fn set_record_events(&self, on: bool) {
        self.st().record_events = on;
    }

    /// Sets (or, with `None`, removes) the latency of every later request.
    /// Off by default. The latency is the server's (the way to Stripe and
    /// back): set through any handle, it applies to every account's requests.
    pub fn set_latency(&self, latency: Option<Latency>) {
        self.accounts.conditions.set_latency(latency)
    }

    pub fn latency(&self) -> Option<Latency> {
        self.accounts.conditions.latency()
    }

    /// Enforces (or, with `None`, lifts) rate limits on every later request
    /// for this account, starting from full buckets. Off by default;
    /// `RateLimits::stripe(fake.livemode())` gives Stripe's. Each account
    /// has its own buckets, as Stripe limits each account (a connected
    /// account's requests count against the connected account, not the
    /// platform). Requests whose key reaches no account meet the first
    /// account's limits.
    pub fn set_rate_limits(&self, limits: Option<RateLimits>) {
        self.account.limits.set(limits)
    }

    /// The 429s this account's rate limits answered, per endpoint
    /// (`/v1/<first path segment>`), since the server started. Injected
    /// faults do not count.
    pub fn rate_limited(&self) -> BTreeMap<String, u64> {
        self.account.limits.rate_limited()
    }

    /// Whether a logged request is this account's: it addressed this
    /// account, or, for the server's first account, no account at all.
    fn is_mine(&self, request: &LoggedRequest) -> bool {
        match &request.account {
            Some(id) => *id == self.account.id,
            None => Arc::ptr_eq(&self.account, &self.accounts.first),
        }
    }

    /// The requests for this account, in order ([`LoggedRequest::account`]
    /// is its id). The server's first account also has the requests whose
    /// key reached no account (none, or unknown), so that a fake serving one
    /// account logs every request here, as it did before it served several.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.accounts.requests(|r| self.is_mine(r))
    }

    /// Every request the server received, for any account or none, in order.
    pub fn all_requests(&self) -> Vec<LoggedRequest> {
        self.accounts.requests(|_| true)
    }

    /// Forgets this account's requests (those [`FakeStripe::requests`] returns).
    pub fn clear_requests(&self) {
        self.accounts.forget_requests(|r| self.is_mine(r))
    }

    /// Injects a fault into this account's requests: requests for other
    /// accounts neither see nor consume it. Requests whose key reaches no
    /// account meet the first account's faults (as every request did when
    /// the fake served one account); a request answered 401 or 403 for its
    /// key or `Stripe-Account` header meets the faults of the account it
    /// addressed (see [`LoggedRequest::account`]).
    pub fn inject_fault(&self, fault: Fault) {
        self.st().faults.push(fault);
    }

    /// Requests the faults injected into this account have yet to hit (the
    /// sum of their remaining `times`): 0 once every fault happened.
    pub fn faults_left(&self) -> usize {
        self.st().faults.iter().map(|f| f.times).sum()
    }

    /// Every recorded event, oldest first.
    pub fn events(&self) -> Vec<Value> {
        self.st().events()
    }

    /// Seeds a small but complete catalog for the quick start and for tests:
    /// licensed and unlicensed products, customers, subscriptions in several
    /// statuses, paid one-time checkouts (one with two lines and quantity 3) and
    /// a one-off paid invoice.
    pub fn seed_sample(&self) {
        self.stored("seed_sample").seed_sample()
    }

    /// A catalog and `n` purchases spread over the past year, each with its
    /// own customer (see `State::seed_purchases`).
    pub fn seed_purchases(&self, n: usize) {
        self.stored("seed_purchases").seed_purchases(n)
    }
}
