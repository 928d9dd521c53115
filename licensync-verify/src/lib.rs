//! Checks a licensync token offline.
//!
//! licensync's key API (`licensync serve`, see `docs/key-api.md` in the
//! repository) answers a `VALID` validate or activate request with a signed
//! PASETO `v4.public` token. An application keeps that token and checks it
//! again without the network: the signature against a public key it embeds,
//! the token's time against its clock, the license key and the machine it
//! was issued for. This crate is that check.
//!
//! # Use in three steps
//!
//! **1. Embed the public keys.** `licensync keys generate` prints the key id
//! and writes `public.key`, a `k4.public.…` PASERK; `GET /v1/keys` lists the
//! keys in use. Build a [`Verifier`] from every key you accept (the current
//! one, and the next one while the vendor rotates keys):
//!
//! ```no_run
//! # fn main() -> Result<(), licensync_verify::KeyError> {
//! use licensync_verify::{PublicKey, Verifier};
//!
//! // The content of public.key, compiled into the application.
//! const PUBLIC_KEY: &str = "k4.public.…";
//! let verifier = Verifier::new([PublicKey::from_paserk(PUBLIC_KEY)?]);
//! # Ok(()) }
//! ```
//!
//! **2. Keep the token of the last `VALID` answer.** When the application is
//! online it calls `POST /v1/licenses/validate` (or `activate`) with its key,
//! its machine fingerprint and a fresh nonce, and stores the answer's
//! `token`. Check the new token at once, including that it echoes the
//! nonce ([`Claims::check_nonce`]), so an old answer replayed to the
//! application is refused.
//!
//! **3. Check the kept token whenever the license matters**, offline or not:
//!
//! ```no_run
//! # let verifier = licensync_verify::Verifier::new([]);
//! # let token = String::new();
//! use licensync_verify::VerifyError;
//!
//! let key = "AX76H-N23Q5-7KJ2M-QW8RT-ZP4NB";       // the license key the user entered
//! let machine = "8f14e45f-this-machine";            // the same fingerprint sent to the server
//! match verifier.verify(&token, key, Some(machine), chrono::Utc::now()) {
//!     Ok(claims) => println!("licensed until {}", claims.exp),
//!     Err(VerifyError::Expired { .. }) => println!("ask the server for a new token"),
//!     Err(e) => println!("not licensed: {e}"),
//! }
//! ```
//!
//! A token lives one lease (7 days by default) and never past the license's
//! own expiry, so a revoked or suspended license stops working offline
//! within one lease; online, ask again and keep the newer token.
//!
//! # What [`Verifier::verify`] checks
//!
//! The footer's `kid` picks the key (an unknown one is refused), the
//! signature, `iss == "licensync"`, `nbf <= now < exp` (and `now < lic_exp`),
//! `status == "active"`, `kh == sha256_hex(key)` and the machine: see
//! [`Verifier::verify`] for the exact rules, and [`VerifyError`] for one
//! variant per refusal.
//!
//! # Features
//!
//! - `sign`: `Signer`, the key server's half (key generation, signing with
//!   the footer), so both sides share one claim encoding. Off by default: an
//!   application needs only the verifier.

mod claims;
mod keys;
#[cfg(feature = "sign")]
mod sign;
mod verify;

pub use claims::{Claims, ISSUER, STATUS_ACTIVE, sha256_hex};
pub use keys::{KeyError, PublicKey, keys_from_json};
#[cfg(feature = "sign")]
pub use sign::{GeneratedKeys, SignError, Signer};
pub use verify::{Verifier, VerifyError};
