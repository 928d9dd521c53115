//! Public keys as PASERK strings, each with its PASERK id.

use std::fmt;
use std::str::FromStr;

use pasetors::keys::AsymmetricPublicKey;
use pasetors::paserk::{FormatAsPaserk, Id};
use pasetors::version4::V4;
use serde::Deserialize;

/// A key that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not a `k4.public` PASERK (or, for a signer, a `k4.secret`).
    #[error("not a valid {expected} PASERK key")]
    Invalid {
        /// What was expected: `k4.public` or `k4.secret`.
        expected: &'static str,
    },
    /// A `/v1/keys` entry whose `kid` is not the id of its `public` key.
    #[error("key id {kid} does not belong to the key published with it")]
    KidMismatch {
        /// The `kid` as published.
        kid: String,
    },
    /// A `/v1/keys` answer that is not the expected JSON.
    #[error("not a key list: {0}")]
    KeyList(String),
}

/// An Ed25519 public key that checks tokens, read from its PASERK
/// `k4.public.…` form, with its PASERK id `k4.pid.…`: the `kid` a token's
/// footer names.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) key: AsymmetricPublicKey<V4>,
    paserk: String,
    kid: String,
}

impl PublicKey {
    /// Reads a `k4.public.…` PASERK (surrounding whitespace, such as the
    /// newline of a `public.key` file, is ignored).
    pub fn from_paserk(paserk: &str) -> Result<Self, KeyError> {
        let paserk = paserk.trim();
        let invalid = KeyError::Invalid { expected: "k4.public" };
        let key = AsymmetricPublicKey::<V4>::try_from(paserk).map_err(|_| invalid)?;
        Ok(Self::from_key(key))
    }

    pub(crate) fn from_key(key: AsymmetricPublicKey<V4>) -> Self {
        let mut paserk = String::new();
        key.fmt(&mut paserk).expect("writing to a String cannot fail");
        let mut kid = String::new();
        Id::from(&key).fmt(&mut kid).expect("writing to a String cannot fail");
        Self { key, paserk, kid }
    }

    /// The key's PASERK id, `k4.pid.…`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as PASERK, `k4.public.…`.
    pub fn paserk(&self) -> &str {
        &self.paserk
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_paserk(s)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("paserk", &self.paserk)
            .finish()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.paserk == other.paserk
    }
}

impl Eq for PublicKey {}

/// Reads the keys of a `GET /v1/keys` answer,
/// `{"keys": [{"kid": "k4.pid…", "public": "k4.public…"}]}`, and checks that
/// each `kid` is the id of its key.
///
/// Embedding the keys in the application is the safer default: a key list
/// fetched at run time is only as trustworthy as the connection it came over.
pub fn keys_from_json(json: &str) -> Result<Vec<PublicKey>, KeyError> {
    #[derive(Deserialize)]
    struct KeyList {
        keys: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        kid: String,
        public: String,
    }

    let list: KeyList = serde_json::from_str(json).map_err(|e| KeyError::KeyList(e.to_string()))?;
    list.keys
        .into_iter()
        .map(|entry| {
            let key = PublicKey::from_paserk(&entry.public)?;
            if key.kid() == entry.kid {
                Ok(key)
            } else {
                Err(KeyError::KidMismatch { kid: entry.kid })
            }
        })
        .collect()
}
