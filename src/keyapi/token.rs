//! The signed answer (a PASETO `v4.public` token) and the keys an
//! application checks it with. The encoding is `licensync-verify`'s, the
//! crate applications embed, so both sides read the same claims.

use chrono::Duration;
use licensync_verify::{Claims, ISSUER, PublicKey, STATUS_ACTIVE, Signer, sha256_hex};
use rand::Rng;
use serde::Serialize;

use crate::domain::{License, Timestamp};

/// The signing key and the public keys `GET /v1/keys` lists: the signing
/// key's own and any published beside it (the next key of a rotation, or the
/// previous one while its tokens live).
pub struct Keys {
    pub signer: Signer,
    pub published: Vec<PublicKey>,
    pub lease: Duration,
}

/// One entry of `GET /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyEntry {
    pub kid: String,
    pub public: String,
}

impl Keys {
    /// The signing key first, then the published ones, each once.
    pub fn list(&self) -> Vec<KeyEntry> {
        let mut entries = vec![KeyEntry {
            kid: self.signer.kid().to_owned(),
            public: self.signer.public_key().paserk().to_owned(),
        }];
        for key in &self.published {
            if entries.iter().all(|e| e.kid != key.kid()) {
                entries.push(KeyEntry {
                    kid: key.kid().to_owned(),
                    public: key.paserk().to_owned(),
                });
            }
        }
        entries
    }

    /// The token of a `VALID` answer: `exp` is the earlier of the lease and
    /// the license's expiry, so a renewal reaches an offline application at
    /// its next check and a revocation within one lease.
    pub fn sign(
        &self,
        license: &License,
        expires_at: Option<Timestamp>,
        machine_hash: Option<&str>,
        nonce: Option<&str>,
        now: Timestamp,
    ) -> anyhow::Result<String> {
        let lease_end = now + self.lease;
        let state = &license.state;
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: license.id.to_string(),
            kh: sha256_hex(&license.key),
            products: state.product_ids.clone(),
            status: STATUS_ACTIVE.to_owned(),
            lic_exp: expires_at,
            machine: machine_hash.map(str::to_owned),
            hwid_limit: state.hwid_limit.and_then(|v| u32::try_from(v).ok()),
            ip_limit: state.ip_limit.and_then(|v| u32::try_from(v).ok()),
            iat: now,
            nbf: now,
            exp: expires_at.map_or(lease_end, |at| at.min(lease_end)),
            jti: format!("{:032x}", rand::rng().random::<u128>()),
            nonce: nonce.map(str::to_owned),
        };
        Ok(self.signer.sign(&claims)?)
    }
}
