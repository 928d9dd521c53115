//! The accounts one server serves, as Stripe holds them: top-level accounts,
//! each reached with its own API key, and the connected accounts of a Connect
//! platform, reached with the platform's key and a `Stripe-Account` header.
//!
//! Each account has its own objects, id counters, events, injected faults,
//! rate limits, write permission and idempotency keys; the clock, the latency and the request log are the server's.
//! The server resolves a request's account from its headers ([`Accounts::address`])
//! before it locks that account's state, so accounts never wait on each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use axum::http::{HeaderMap, header};

use crate::LoggedRequest;
use crate::conditions::{Conditions, Limits};
use crate::state::{DEFAULT_NOW, State};
use crate::wire::{ApiError, mask_key};
use crate::writes::Writes;

/// The request header of Stripe Connect that names the connected account a
/// platform's request acts on.
pub(crate) const STRIPE_ACCOUNT: &str = "stripe-account";

/// One account: its state and what applies to requests for it.
pub(crate) struct Account {
    /// `acct_` and 16 characters, like Stripe's.
    pub id: String,
    /// The key that reaches it: its own for a top-level account, its
    /// platform's for a connected one.
    pub api_key: String,
    /// The platform's id, for a connected account.
    pub platform: Option<String>,
    state: Mutex<State>,
    pub limits: Limits,
    /// Its key's write permission, idempotency keys and applied metadata writes.
    pub writes: Writes,
    revoked: AtomicBool,
    clock: Arc<AtomicI64>,
}

impl Account {
    fn new(id: String, api_key: String, platform: Option<String>, clock: Arc<AtomicI64>) -> Account {
        Account {
            id,
            state: Mutex::new(State::new(api_key.clone())),
            api_key,
            platform,
            limits: Limits::default(),
            writes: Writes::default(),
            revoked: AtomicBool::new(false),
            clock,
        }
    }

    /// The account's state, its clock set to the server's. (A step may move
    /// `State::now` while it holds the lock, e.g. to date a purchase in the
    /// past; the server's clock is what every step starts from.)
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a failed assertion in a scenario step)
        // must not hide the account from the rest of the test.
        let mut st = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        st.now = self.clock.load(Ordering::Relaxed);
        st
    }

    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Relaxed);
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }
}

/// Every account of a server, by id and by key.
#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<Account>>,
    /// key -> the top-level account it reaches
    by_key: HashMap<String, Arc<Account>>,
    /// Accounts made so far: the next id's number is this + 1.
    made: u64,
}

/// What the server shares across the accounts it serves.
pub(crate) struct Accounts {
    /// The clock of every account (unix seconds).
    pub clock: Arc<AtomicI64>,
    /// The latency, which is the server's rather than an account's.
    pub conditions: Conditions,
    /// The account the server started with: requests that reach no account
    /// (no key, an unknown key) meet its faults and limits and are in its log.
    pub first: Arc<Account>,
    registry: RwLock<Registry>,
    /// Every request, of every account, in arrival order of their answers.
    log: Mutex<Vec<LoggedRequest>>,
    request_seq: AtomicU64,
}

/// `acct_1Fake` and 11 digits: 16 characters after `acct_`, as Stripe's ids have.
fn account_id(n: u64) -> String {
    format!("acct_1Fake{n:011}")
}

/// What a request is for, resolved from its key and `Stripe-Account` header.
pub(crate) struct Addressed {
    /// The account whose limits, faults and objects the request meets: the
    /// one it addressed, or [`Accounts::first`] when its key reaches none.
    pub account: Arc<Account>,
    /// The account it addressed, for the log; `None` when its key reaches none.
    pub logged: Option<String>,
    /// Stripe's answer when the key or header gives no access to the account.
    pub denied: Option<ApiError>,
}

impl Accounts {
    pub fn new(api_key: String, seed: u64) -> Accounts {
        let clock = Arc::new(AtomicI64::new(DEFAULT_NOW));
        let first = Arc::new(Account::new(account_id(1), api_key.clone(), None, clock.clone()));
        let registry = Registry {
            by_id: HashMap::from([(first.id.clone(), first.clone())]),
            by_key: HashMap::from([(api_key, first.clone())]),
            made: 1,
        };
        Accounts {
            clock,
            conditions: Conditions::new(seed),
            first,
            registry: RwLock::new(registry),
            log: Mutex::new(Vec::new()),
            request_seq: AtomicU64::new(0),
        }
    }

    fn registry(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A new top-level account reached with `api_key`.
    pub fn add(&self, api_key: &str) -> Arc<Account> {
        let mut reg = self.registry();
        assert!(
            !reg.by_key.contains_key(api_key),
            "fake-stripe: the key `{api_key}` already reaches an account; each account needs its own"
        );
        reg.made += 1;
        let account = Arc::new(Account::new(
            account_id(reg.made),
            api_key.to_owned(),
            None,
            self.clock.clone(),
        ));
        reg.by_id.insert(account.id.clone(), account.clone());
        reg.by_key.insert(api_key.to_owned(), account.clone());
        account
    }

    /// A new connected account of `platform`, a top-level account.
    pub fn connect(&self, platform: &Account) -> Arc<Account> {
        assert!(
            platform.platform.is_none(),
            "fake-stripe: {} is a connected account; only a platform (top-level) account has connected accounts",
            platform.id
        );
        let mut reg = self.registry();
        reg.made += 1;
        let account = Arc::new(Account::new(
            account_id(reg.made),
            platform.api_key.clone(),
            Some(platform.id.clone()),
            self.clock.clone(),
        ));
        reg.by_id.insert(account.id.clone(), account.clone());
        account
    }

    /// The connected accounts of a platform, oldest first.
    pub fn connected_to(&self, platform: &str) -> Vec<Arc<Account>> {
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        let mut connected: Vec<Arc<Account>> = reg
            .by_id
            .values()
            .filter(|a| a.platform.as_deref() == Some(platform))
            .cloned()
            .collect();
        connected.sort_by(|a, b| a.id.cmp(&b.id));
        connected
    }

    /// Resolves a request's account: the key (`Authorization: Bearer`)
    /// selects a top-level account, a `Stripe-Account` header one of its
    /// connected accounts (or the account itself, named by its own id).
    pub fn address(&self, headers: &HeaderMap) -> Addressed {
        let nobody = |denied: ApiError| Addressed {
            account: self.first.clone(),
            logged: None,
            denied: Some(denied),
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty());
        let Some(key) = given else {
            return nobody(no_key());
        };
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        let Some(top) = reg.by_key.get(key).cloned() else {
            return nobody(invalid_key(key));
        };
        let denied = |account: &Arc<Account>, denied: ApiError| Addressed {
            account: account.clone(),
            logged: Some(account.id.clone()),
            denied: Some(denied),
        };
        if top.is_revoked() {
            return denied(&top, invalid_key(key));
        }
        let named = headers
            .get(STRIPE_ACCOUNT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .filter(|id| !id.is_empty() && *id != top.id);
        let Some(named) = named else {
            return Addressed {
                logged: Some(top.id.clone()),
                account: top,
                denied: None,
            };
        };
        match reg.by_id.get(&named) {
            Some(connected) if connected.platform.as_deref() == Some(top.id.as_str()) => {
                if connected.is_revoked() {
                    denied(connected, no_access(401, None, key, &named))
                } else {
                    Addressed {
                        account: connected.clone(),
                        logged: Some(named),
                        denied: None,
                    }
                }
            }
            _ => denied(&top, no_access(403, Some("account_invalid"), key, &named)),
        }
    }

    pub fn next_request_id(&self) -> String {
        format!("req_{:014}", self.request_seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn log(&self) -> MutexGuard<'_, Vec<LoggedRequest>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, entry: LoggedRequest) {
        self.log().push(entry);
    }

    /// The logged requests that `keep` picks, in order.
    pub fn requests(&self, keep: impl Fn(&LoggedRequest) -> bool) -> Vec<LoggedRequest> {
        self.log().iter().filter(|r| keep(r)).cloned().collect()
    }

    /// Forgets the logged requests that `forget` picks.
    pub fn forget_requests(&self, forget: impl Fn(&LoggedRequest) -> bool) {
        self.log().retain(|r| !forget(r));
    }
}

fn no_key() -> ApiError {
    ApiError::new(
        401,
        "invalid_request_error",
        None,
        "You did not provide an API key. You need to provide your API key in the Authorization header, \
         using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
            .into(),
        None,
    )
}

fn invalid_key(key: &str) -> ApiError {
    ApiError::new(
        401,
        "invalid_request_error",
        None,
        format!("Invalid API Key provided: {}", mask_key(key)),
        None,
    )
}

/// Stripe's answer to a `Stripe-Account` header the key cannot act on: 403
/// `account_invalid` for an account that does not exist or is not connected
/// to the key's account; 401 (no code) for a revoked connection.
fn no_access(status: u16, code: Option<&str>, key: &str, account: &str) -> ApiError {
    ApiError::new(
        status,
        "invalid_request_error",
        code,
        format!(
            "The provided key '{}' does not have access to account '{account}' (or that account does not exist). \
             Application access may have been revoked.",
            mask_key(key)
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::{account_id, mask_key};

    #[test]
    fn masking_keeps_the_kind_and_last_four_of_long_keys_only() {
        assert_eq!(mask_key("sk_test_abcdefgh1234"), "sk_test_********1234");
        assert_eq!(mask_key("rk_live_abc"), "rk_live_***");
        assert_eq!(mask_key("nonsense"), "****ense");
        assert_eq!(mask_key("short"), "*****");
    }

    #[test]
    fn account_ids_have_stripes_length() {
        assert_eq!(account_id(1), "acct_1Fake00000000001");
        assert_eq!(account_id(1).len(), "acct_".len() + 16);
    }
}
