//! The token's claims: what the key server signs, field for field.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::VerifyError;

/// The issuer every licensync token carries in `iss`.
pub const ISSUER: &str = "licensync";

/// The only `status` a token is ever signed with.
pub const STATUS_ACTIVE: &str = "active";

/// The claims of a licensync token.
///
/// Field names are the token's JSON names, which are a public interface.
/// Times are RFC 3339 in the token and whole seconds in UTC when signed by
/// the `Signer` (feature `sign`); any RFC 3339 offset is accepted when read.
/// Claims this version does not know are ignored, so a server may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`ISSUER`] (`licensync`).
    pub iss: String,
    /// The license id, as a decimal string (PASETO's `sub` is a string).
    pub sub: String,
    /// SHA-256 of the license key, lowercase hex: the token never carries the
    /// key itself. See [`sha256_hex`].
    pub kh: String,
    /// The license's product ids.
    pub products: Vec<String>,
    /// The license's status when the token was signed: always
    /// [`STATUS_ACTIVE`] from a licensync server.
    pub status: String,
    /// The license's own expiry (`expires_at`), or `None` for a perpetual
    /// license. The token's `exp` is never later.
    #[serde(with = "rfc3339_opt", default)]
    pub lic_exp: Option<DateTime<Utc>>,
    /// SHA-256 of the machine fingerprint, lowercase hex, when the request
    /// named a machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// The license's seat limit; `None` or 0 means no limit.
    #[serde(default)]
    pub hwid_limit: Option<u32>,
    /// The license's limit of distinct client addresses; `None` or 0 means
    /// no limit.
    #[serde(default)]
    pub ip_limit: Option<u32>,
    /// When the token was signed.
    #[serde(with = "rfc3339")]
    pub iat: DateTime<Utc>,
    /// The token is not valid before this time.
    #[serde(with = "rfc3339")]
    pub nbf: DateTime<Utc>,
    /// The token is not valid from this time on: the earlier of the server's
    /// lease and `lic_exp`.
    #[serde(with = "rfc3339")]
    pub exp: DateTime<Utc>,
    /// A random token id.
    pub jti: String,
    /// The request's nonce, echoed, when the request carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

impl Claims {
    /// Whether the license covers product `product`.
    pub fn has_product(&self, product: &str) -> bool {
        self.products.iter().any(|p| p == product)
    }

    /// Checks that the license covers `product`: [`VerifyError::WrongProduct`]
    /// otherwise.
    pub fn check_product(&self, product: &str) -> Result<(), VerifyError> {
        if self.has_product(product) {
            Ok(())
        } else {
            Err(VerifyError::WrongProduct)
        }
    }

    /// Checks that the token answers the request that sent `nonce`: right
    /// after an online validate or activate, an application that sent a
    /// nonce calls this on the token it got back, so an old answer replayed
    /// to it is refused ([`VerifyError::WrongNonce`]). A token kept for
    /// offline checks later needs no nonce check.
    pub fn check_nonce(&self, nonce: &str) -> Result<(), VerifyError> {
        if self.nonce.as_deref() == Some(nonce) {
            Ok(())
        } else {
            Err(VerifyError::WrongNonce)
        }
    }
}

/// SHA-256 of `s` (its UTF-8 bytes) as 64 lowercase hex digits: how a token
/// names a key (`kh`) and a machine (`machine`).
pub fn sha256_hex(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(digest.len() * 2);
    for byte in digest {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    out
}

fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn parse_time<E: serde::de::Error>(s: &str) -> Result<DateTime<Utc>, E> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| E::custom(format_args!("not an RFC 3339 time ({e}): {s:?}")))
}

/// RFC 3339 in whole seconds, `Z`; any RFC 3339 time on the way in.
mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_time(&s)
    }
}

/// As [`rfc3339`], with `null` for none.
mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_time(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => super::parse_time(&s).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sha256_hex_is_lowercase_hex_of_the_utf8_bytes() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn claims() -> Claims {
        let t = Utc.with_ymd_and_hms(2027, 1, 31, 0, 0, 0).unwrap();
        Claims {
            iss: ISSUER.into(),
            sub: "42".into(),
            kh: sha256_hex("AAAAA-BBBBB-CCCCC-DDDDD-EEEEE"),
            products: vec!["app".into()],
            status: STATUS_ACTIVE.into(),
            lic_exp: None,
            machine: None,
            hwid_limit: Some(2),
            ip_limit: None,
            iat: t,
            nbf: t,
            exp: t + chrono::Duration::days(7),
            jti: "j".into(),
            nonce: None,
        }
    }

    #[test]
    fn times_are_rfc3339_utc_and_lic_exp_is_null_for_a_perpetual_license() {
        let json = serde_json::to_value(claims()).unwrap();
        assert_eq!(json["iat"], "2027-01-31T00:00:00Z");
        assert_eq!(json["exp"], "2027-02-07T00:00:00Z");
        assert!(json["lic_exp"].is_null(), "lic_exp is written, as null");
        assert!(json.get("machine").is_none(), "no machine, no claim");
        assert!(json.get("nonce").is_none(), "no nonce, no claim");
        assert!(json["ip_limit"].is_null());
    }

    #[test]
    fn any_rfc3339_offset_is_read_as_the_same_instant() {
        let mut json = serde_json::to_value(claims()).unwrap();
        json["exp"] = "2027-02-07T01:00:00+01:00".into();
        let read: Claims = serde_json::from_value(json).unwrap();
        assert_eq!(read, claims());
    }

    #[test]
    fn a_time_that_is_not_rfc3339_is_refused() {
        let mut json = serde_json::to_value(claims()).unwrap();
        json["exp"] = "next tuesday".into();
        assert!(serde_json::from_value::<Claims>(json).is_err());
    }

    #[test]
    fn nonce_and_product_checks() {
        let mut c = claims();
        assert_eq!(c.check_nonce("n-1"), Err(VerifyError::WrongNonce));
        c.nonce = Some("n-1".into());
        assert_eq!(c.check_nonce("n-1"), Ok(()));
        assert_eq!(c.check_nonce("n-2"), Err(VerifyError::WrongNonce));
        assert_eq!(c.check_product("app"), Ok(()));
        assert_eq!(c.check_product("other"), Err(VerifyError::WrongProduct));
    }
}
