//! The signing half (feature `sign`): what the key server uses, so that the
//! tokens it signs and the tokens applications check share one encoding.

use std::fmt;

use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::FormatAsPaserk;
use pasetors::version4::{PublicToken, V4};

use crate::claims::Claims;
use crate::keys::{KeyError, PublicKey};

/// A freshly generated key pair, as PASERK text (what `keys generate` writes
/// to `signing.key` and `public.key`) with the public key's id.
pub struct GeneratedKeys {
    /// `k4.secret.…`: keep it secret (mode 0600); never log it.
    pub secret: String,
    /// `k4.public.…`: what applications embed.
    pub public: String,
    /// `k4.pid.…`: the key id tokens name in their footer.
    pub kid: String,
}

impl fmt::Debug for GeneratedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedKeys")
            .field("secret", &"<redacted>")
            .field("public", &self.public)
            .field("kid", &self.kid)
            .finish()
    }
}

/// Why a token could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The claims could not be encoded (not expected for [`Claims`]).
    #[error("cannot encode the claims: {0}")]
    Encode(String),
    /// The signature could not be made.
    #[error("cannot sign the token")]
    Sign,
    /// The system's random generator failed while generating a key.
    #[error("cannot generate a key pair")]
    Generate,
}

/// Signs tokens with one `k4.secret` key, footer `{"kid":"k4.pid…"}`.
///
/// It encodes, it does not judge: the server decides what to sign (`iss`
/// [`ISSUER`](crate::ISSUER), `status` [`STATUS_ACTIVE`](crate::STATUS_ACTIVE),
/// `exp` no later than `lic_exp`, a random `jti`). Times are written in whole
/// seconds, cut down.
pub struct Signer {
    secret: AsymmetricSecretKey<V4>,
    public: PublicKey,
    footer: String,
}

impl Signer {
    /// A new Ed25519 key pair from the system's random generator.
    pub fn generate() -> Result<GeneratedKeys, SignError> {
        let pair = AsymmetricKeyPair::<V4>::generate().map_err(|_| SignError::Generate)?;
        let mut secret = String::new();
        pair.secret.fmt(&mut secret).expect("writing to a String cannot fail");
        let public = PublicKey::from_key(pair.public);
        Ok(GeneratedKeys {
            secret,
            public: public.paserk().to_owned(),
            kid: public.kid().to_owned(),
        })
    }

    /// Reads a `k4.secret.…` PASERK (surrounding whitespace ignored, as a
    /// key file's newline).
    pub fn from_paserk(secret: &str) -> Result<Self, KeyError> {
        let invalid = || KeyError::Invalid { expected: "k4.secret" };
        let secret = AsymmetricSecretKey::<V4>::try_from(secret.trim()).map_err(|_| invalid())?;
        let public = AsymmetricPublicKey::<V4>::try_from(&secret).map_err(|_| invalid())?;
        let public = PublicKey::from_key(public);
        let footer = serde_json::json!({ "kid": public.kid() }).to_string();
        Ok(Self { secret, public, footer })
    }

    /// The public half, with its id: what `GET /v1/keys` publishes.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The key id, `k4.pid.…`, that every token of this signer names.
    pub fn kid(&self) -> &str {
        self.public.kid()
    }

    /// The `v4.public` token of `claims`, footer `{"kid":"k4.pid…"}`, no
    /// implicit assertion.
    pub fn sign(&self, claims: &Claims) -> Result<String, SignError> {
        let payload = serde_json::to_vec(claims).map_err(|e| SignError::Encode(e.to_string()))?;
        PublicToken::sign(&self.secret, &payload, Some(self.footer.as_bytes()), None).map_err(|_| SignError::Sign)
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}
