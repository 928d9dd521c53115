//! The offline check of a token.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use pasetors::Public;
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use serde::Deserialize;

use crate::claims::{Claims, ISSUER, STATUS_ACTIVE, sha256_hex};
use crate::keys::PublicKey;

/// Why a token was refused. Each check has its own variant, so an
/// application can tell "ask the server again" ([`Expired`](Self::Expired))
/// from "this token is not for us" ([`WrongKey`](Self::WrongKey),
/// [`WrongMachine`](Self::WrongMachine)) from "tampered or forged"
/// ([`BadSignature`](Self::BadSignature)).
///
/// No message contains a license key or a machine fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a `v4.public` token, no `kid` in its footer, or (after the
    /// signature checked out) claims that are missing or of the wrong type.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The footer's `kid` names none of the verifier's keys: the token was
    /// signed with a key this application does not know (yet).
    #[error("token signed with an unknown key {kid}")]
    UnknownKey {
        /// The footer's key id.
        kid: String,
    },
    /// The signature does not match the token: tampered with, or signed by
    /// another key than the one its footer names.
    #[error("bad token signature")]
    BadSignature,
    /// `iss` is not `licensync`.
    #[error("token issued by {iss:?}, not by licensync")]
    WrongIssuer {
        /// The token's issuer.
        iss: String,
    },
    /// `now` is before `nbf`.
    #[error("token not valid before {nbf}")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: DateTime<Utc>,
    },
    /// `now` is at or after `exp` (or after the license's own `lic_exp`).
    /// Online, ask the server for a new token.
    #[error("token expired at {exp}")]
    Expired {
        /// The time that has passed.
        exp: DateTime<Utc>,
    },
    /// `status` is not `active`.
    #[error("license status is {status:?}, not active")]
    NotActive {
        /// The token's status.
        status: String,
    },
    /// `kh` is not the hash of the license key the application holds.
    #[error("token is for another license key")]
    WrongKey,
    /// The token is bound to another machine, or to none although the
    /// license limits its machines.
    #[error("token is for another machine")]
    WrongMachine,
    /// The token is bound to a machine but the application named none.
    #[error("token is bound to a machine; name this machine to check it")]
    MachineRequired,
    /// The license does not cover the product (from
    /// [`Claims::check_product`]).
    #[error("license does not cover this product")]
    WrongProduct,
    /// The token does not echo the nonce the request sent (from
    /// [`Claims::check_nonce`]).
    #[error("token does not answer this request (nonce)")]
    WrongNonce,
}

/// The longest footer read before the signature is checked.
const MAX_FOOTER: usize = 1024;

/// Checks tokens against a set of public keys, chosen by the footer's `kid`.
///
/// Give it every key the application should accept: during a key rotation
/// both the current and the next one.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: HashMap<String, PublicKey>,
    leeway: Duration,
}

impl Verifier {
    /// A verifier that accepts tokens signed by any of `keys`, with no
    /// clock leeway.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let keys = keys.into_iter().map(|k| (k.kid().to_owned(), k)).collect();
        Self {
            keys,
            leeway: Duration::zero(),
        }
    }

    /// Tolerates clocks that differ by up to `leeway`: a token is then
    /// accepted from `nbf - leeway` until `exp + leeway`. Default: none. A
    /// minute or two is reasonable when the application's clock may lag the
    /// server's and a token signed a second ago must pass at once.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.abs();
        self
    }

    /// The keys this verifier accepts.
    pub fn keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys.values()
    }

    /// Checks `token` for the license key `key` on the machine `machine` at
    /// time `now`, and returns its claims when it is good. In order:
    ///
    /// 1. the footer's `kid` names one of the verifier's keys
    ///    ([`UnknownKey`](VerifyError::UnknownKey)), and that key's
    ///    signature covers the token ([`BadSignature`](VerifyError::BadSignature));
    /// 2. the claims are all there ([`Malformed`](VerifyError::Malformed)) and
    ///    `iss` is `licensync` ([`WrongIssuer`](VerifyError::WrongIssuer));
    /// 3. `nbf <= now < exp` ([`NotYetValid`](VerifyError::NotYetValid),
    ///    [`Expired`](VerifyError::Expired)), and `now < lic_exp` when the
    ///    license has an expiry;
    /// 4. `status` is `active` ([`NotActive`](VerifyError::NotActive));
    /// 5. `kh` is [`sha256_hex`]`(key)` ([`WrongKey`](VerifyError::WrongKey));
    /// 6. the machine:
    ///    - a token that carries `machine` needs `machine` to be given
    ///      ([`MachineRequired`](VerifyError::MachineRequired)) and to hash
    ///      to it ([`WrongMachine`](VerifyError::WrongMachine));
    ///    - a token without `machine` passes whatever `machine` is, unless
    ///      the license limits its machines (`hwid_limit` > 0), for which the
    ///      server only signs machine-bound tokens
    ///      ([`WrongMachine`](VerifyError::WrongMachine)).
    ///
    /// The nonce and the product are the caller's to check, with
    /// [`Claims::check_nonce`] and [`Claims::check_product`].
    pub fn verify(
        &self,
        token: &str,
        key: &str,
        machine: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Claims, VerifyError> {
        let claims = self.verified_claims(token)?;

        if claims.iss != ISSUER {
            return Err(VerifyError::WrongIssuer { iss: claims.iss });
        }
        if now + self.leeway < claims.nbf {
            return Err(VerifyError::NotYetValid { nbf: claims.nbf });
        }
        if now - self.leeway >= claims.exp {
            return Err(VerifyError::Expired { exp: claims.exp });
        }
        if let Some(lic_exp) = claims.lic_exp
            && now - self.leeway >= lic_exp
        {
            return Err(VerifyError::Expired { exp: lic_exp });
        }
        if claims.status != STATUS_ACTIVE {
            return Err(VerifyError::NotActive { status: claims.status });
        }
        if claims.kh != sha256_hex(key) {
            return Err(VerifyError::WrongKey);
        }
        match (&claims.machine, machine) {
            (Some(bound), Some(mine)) if *bound == sha256_hex(mine) => {}
            (Some(_), Some(_)) => return Err(VerifyError::WrongMachine),
            (Some(_), None) => return Err(VerifyError::MachineRequired),
            (None, _) if claims.hwid_limit.unwrap_or(0) > 0 => return Err(VerifyError::WrongMachine),
            (None, _) => {}
        }
        Ok(claims)
    }

    /// The claims of a token whose signature checks out with the key its
    /// footer names; nothing else checked.
    fn verified_claims(&self, token: &str) -> Result<Claims, VerifyError> {
        #[derive(Deserialize)]
        struct Footer {
            kid: String,
        }

        let untrusted = UntrustedToken::<Public, V4>::try_from(token)
            .map_err(|_| VerifyError::Malformed("not a v4.public token".into()))?;
        let footer = untrusted.untrusted_footer();
        if footer.is_empty() {
            return Err(VerifyError::Malformed("no footer, so no key id".into()));
        }
        if footer.len() > MAX_FOOTER {
            return Err(VerifyError::Malformed("footer too long".into()));
        }
        let footer: Footer = serde_json::from_slice(footer)
            .map_err(|_| VerifyError::Malformed("footer is not {\"kid\": ...}".into()))?;
        let key = self.keys.get(&footer.kid).ok_or_else(|| VerifyError::UnknownKey {
            kid: footer.kid.clone(),
        })?;
        // The footer is part of what is signed, so a kid swapped into a token
        // fails here too.
        let trusted = PublicToken::verify(&key.key, &untrusted, None, None).map_err(|e| match e {
            pasetors::errors::Error::PayloadInvalidUtf8 => VerifyError::Malformed("claims are not UTF-8".into()),
            _ => VerifyError::BadSignature,
        })?;
        serde_json::from_str(trusted.payload()).map_err(|e| VerifyError::Malformed(format!("claims: {e}")))
    }
}
