//! The offline check against tokens signed as the key server signs them:
//! a fresh Ed25519 key pair, footer `{"kid":"k4.pid…"}`, the claims of
//! docs/key-api.md. Each refusal test starts from a token that passes and
//! breaks exactly one thing, so it fails if its check is removed.

use chrono::{DateTime, Duration, TimeZone, Utc};
use ct_codecs::{Base64UrlSafeNoPadding, Decoder, Encoder};
use licensync_verify::{
    Claims, ISSUER, KeyError, PublicKey, STATUS_ACTIVE, Signer, Verifier, VerifyError, keys_from_json, sha256_hex,
};
use pasetors::keys::AsymmetricSecretKey;
use pasetors::version4::{PublicToken, V4};

const KEY: &str = "AX76H-N23Q5-7KJ2M-QW8RT-ZP4NB";
const MACHINE: &str = "machine-fingerprint-1";

/// A fixed "now", so no test depends on the clock.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

/// A signer with a fresh key pair, and its secret PASERK.
fn signer() -> (Signer, String) {
    let keys = Signer::generate().unwrap();
    (Signer::from_paserk(&keys.secret).unwrap(), keys.secret)
}

fn verifier_for(signer: &Signer) -> Verifier {
    Verifier::new([signer.public_key().clone()])
}

/// Claims that pass at `now()` for KEY on MACHINE: signed an hour ago,
/// a 7-day lease, a license that ends in 30 days.
fn good_claims() -> Claims {
    let signed = now() - Duration::hours(1);
    Claims {
        iss: ISSUER.into(),
        sub: "42".into(),
        kh: sha256_hex(KEY),
        products: vec!["app".into(), "app-pro".into()],
        status: STATUS_ACTIVE.into(),
        lic_exp: Some(now() + Duration::days(30)),
        machine: Some(sha256_hex(MACHINE)),
        hwid_limit: Some(2),
        ip_limit: Some(3),
        iat: signed,
        nbf: signed,
        exp: signed + Duration::days(7),
        jti: "4f1c0c0e5d6a4c3b".into(),
        nonce: Some("n-123".into()),
    }
}

/// Signs `payload` with `secret` and `footer` directly with pasetors, for
/// tokens the `Signer` would never make.
fn sign_raw(secret: &str, payload: &[u8], footer: &[u8]) -> String {
    let secret = AsymmetricSecretKey::<V4>::try_from(secret).unwrap();
    PublicToken::sign(&secret, payload, Some(footer), None).unwrap()
}

fn kid_footer(kid: &str) -> Vec<u8> {
    serde_json::json!({ "kid": kid }).to_string().into_bytes()
}

fn check(verifier: &Verifier, token: &str) -> Result<Claims, VerifyError> {
    verifier.verify(token, KEY, Some(MACHINE), now())
}

fn signed_with(change: impl FnOnce(&mut Claims)) -> (Verifier, String) {
    let (signer, _) = signer();
    let mut claims = good_claims();
    change(&mut claims);
    let token = signer.sign(&claims).unwrap();
    (verifier_for(&signer), token)
}

#[test]
fn a_good_token_verifies_and_gives_back_its_claims() {
    let (signer, _) = signer();
    let token = signer.sign(&good_claims()).unwrap();
    assert!(token.starts_with("v4.public."), "{token}");
    let claims = check(&verifier_for(&signer), &token).unwrap();
    assert_eq!(claims, good_claims());
}

#[test]
fn the_footer_is_exactly_the_kid_of_the_signing_key() {
    let (signer, _) = signer();
    let token = signer.sign(&good_claims()).unwrap();
    let footer = token.rsplit('.').next().unwrap();
    let footer = Base64UrlSafeNoPadding::decode_to_vec(footer, None).unwrap();
    let expected = format!(r#"{{"kid":"{}"}}"#, signer.kid());
    assert_eq!(String::from_utf8(footer).unwrap(), expected);
    assert!(signer.kid().starts_with("k4.pid."));
    assert_eq!(signer.kid().len(), "k4.pid.".len() + 44);
}

#[test]
fn a_tampered_payload_is_refused() {
    let (signer, _) = signer();
    let token = signer.sign(&good_claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut body = Base64UrlSafeNoPadding::decode_to_vec(parts[2], None).unwrap();
    let payload_len = body.len() - 64;
    let payload = String::from_utf8(body[..payload_len].to_vec()).unwrap();
    // Two seats become nine: still good JSON of the same length.
    let forged = payload.replace(r#""hwid_limit":2"#, r#""hwid_limit":9"#);
    assert_ne!(forged, payload);
    body[..payload_len].copy_from_slice(forged.as_bytes());
    let body = Base64UrlSafeNoPadding::encode_to_string(&body).unwrap();
    let tampered = format!("v4.public.{body}.{}", parts[3]);

    assert_eq!(check(&verifier_for(&signer), &tampered), Err(VerifyError::BadSignature));
}

#[test]
fn a_token_signed_by_another_key_under_a_known_kid_is_refused() {
    let (trusted, _) = signer();
    let (_, other_secret) = signer();
    let payload = serde_json::to_vec(&good_claims()).unwrap();
    let forged = sign_raw(&other_secret, &payload, &kid_footer(trusted.kid()));

    assert_eq!(check(&verifier_for(&trusted), &forged), Err(VerifyError::BadSignature));
}

#[test]
fn a_token_whose_kid_names_no_known_key_is_refused() {
    let (trusted, _) = signer();
    let (other, _) = signer();
    let token = other.sign(&good_claims()).unwrap();

    assert_eq!(
        check(&verifier_for(&trusted), &token),
        Err(VerifyError::UnknownKey {
            kid: other.kid().to_owned()
        })
    );
}

#[test]
fn a_token_is_expired_from_its_exp_on() {
    let exp = now();
    let (verifier, token) = signed_with(|c| c.exp = exp);
    assert_eq!(check(&verifier, &token), Err(VerifyError::Expired { exp }));
    let later = verifier.verify(&token, KEY, Some(MACHINE), exp + Duration::days(1));
    assert_eq!(later, Err(VerifyError::Expired { exp }));
    let before = verifier.verify(&token, KEY, Some(MACHINE), exp - Duration::seconds(1));
    assert!(before.is_ok(), "{before:?}");
}

#[test]
fn a_license_expiry_before_the_tokens_ends_it_too() {
    // A correct server never signs exp after lic_exp; the check holds anyway.
    let lic_exp = now() - Duration::seconds(1);
    let (verifier, token) = signed_with(|c| c.lic_exp = Some(lic_exp));
    assert_eq!(check(&verifier, &token), Err(VerifyError::Expired { exp: lic_exp }));
}

#[test]
fn a_perpetual_license_has_no_lic_exp_and_passes() {
    let (verifier, token) = signed_with(|c| c.lic_exp = None);
    assert_eq!(check(&verifier, &token).unwrap().lic_exp, None);
}

#[test]
fn a_token_is_not_valid_before_its_nbf() {
    let nbf = now() + Duration::seconds(1);
    let (verifier, token) = signed_with(|c| c.nbf = nbf);
    assert_eq!(check(&verifier, &token), Err(VerifyError::NotYetValid { nbf }));
    let at_nbf = verifier.verify(&token, KEY, Some(MACHINE), nbf);
    assert!(at_nbf.is_ok(), "{at_nbf:?}");
}

#[test]
fn leeway_forgives_a_clock_that_lags_or_runs_ahead() {
    let nbf = now() + Duration::seconds(30);
    let (verifier, token) = signed_with(|c| c.nbf = nbf);
    assert_eq!(check(&verifier, &token), Err(VerifyError::NotYetValid { nbf }));
    let lenient = verifier.clone().with_leeway(Duration::seconds(60));
    assert!(check(&lenient, &token).is_ok());

    let exp = now() - Duration::seconds(30);
    let (verifier, token) = signed_with(|c| c.exp = exp);
    assert!(check(&verifier.clone().with_leeway(Duration::seconds(60)), &token).is_ok());
    assert_eq!(
        check(&verifier.with_leeway(Duration::seconds(10)), &token),
        Err(VerifyError::Expired { exp })
    );
}

#[test]
fn a_token_for_another_machine_is_refused() {
    let (verifier, token) = signed_with(|_| {});
    let other = verifier.verify(&token, KEY, Some("machine-fingerprint-2"), now());
    assert_eq!(other, Err(VerifyError::WrongMachine));
}

#[test]
fn a_machine_bound_token_needs_the_application_to_name_its_machine() {
    let (verifier, token) = signed_with(|_| {});
    assert_eq!(
        verifier.verify(&token, KEY, None, now()),
        Err(VerifyError::MachineRequired)
    );
}

#[test]
fn a_token_bound_to_no_machine_passes_on_any_machine_when_seats_are_unlimited() {
    for limit in [None, Some(0)] {
        let (verifier, token) = signed_with(|c| {
            c.machine = None;
            c.hwid_limit = limit;
        });
        assert!(verifier.verify(&token, KEY, None, now()).is_ok());
        assert!(verifier.verify(&token, KEY, Some(MACHINE), now()).is_ok());
    }
}

#[test]
fn a_token_bound_to_no_machine_is_refused_when_the_license_limits_seats() {
    let (verifier, token) = signed_with(|c| c.machine = None);
    assert_eq!(check(&verifier, &token), Err(VerifyError::WrongMachine));
}

#[test]
fn a_token_for_another_license_key_is_refused() {
    let (verifier, token) = signed_with(|_| {});
    let other = verifier.verify(&token, "QQQQQ-WWWWW-EEEEE-RRRRR-TTTTT", Some(MACHINE), now());
    assert_eq!(other, Err(VerifyError::WrongKey));
}

#[test]
fn a_token_whose_status_is_not_active_is_refused() {
    let (verifier, token) = signed_with(|c| c.status = "suspended".into());
    assert_eq!(
        check(&verifier, &token),
        Err(VerifyError::NotActive {
            status: "suspended".into()
        })
    );
}

#[test]
fn a_token_from_another_issuer_is_refused() {
    let (verifier, token) = signed_with(|c| c.iss = "someone-else".into());
    assert_eq!(
        check(&verifier, &token),
        Err(VerifyError::WrongIssuer {
            iss: "someone-else".into()
        })
    );
}

#[test]
fn the_nonce_and_product_checks_work_on_verified_claims() {
    let (verifier, token) = signed_with(|_| {});
    let claims = check(&verifier, &token).unwrap();
    assert_eq!(claims.check_nonce("n-123"), Ok(()));
    assert_eq!(claims.check_nonce("n-old"), Err(VerifyError::WrongNonce));
    assert_eq!(claims.check_product("app-pro"), Ok(()));
    assert_eq!(claims.check_product("other"), Err(VerifyError::WrongProduct));
}

#[test]
fn what_is_not_a_footed_v4_public_token_is_malformed() {
    let (signer, secret) = signer();
    let verifier = verifier_for(&signer);
    let payload = serde_json::to_vec(&good_claims()).unwrap();
    let token = signer.sign(&good_claims()).unwrap();
    let without_footer = token.rsplit_once('.').unwrap().0;
    let cases = [
        "".to_owned(),
        "not a token".to_owned(),
        token.replacen("v4.public.", "v4.local.", 1),
        token.replacen("v4.public.", "v2.public.", 1),
        without_footer.to_owned(),
        sign_raw(&secret, &payload, b"not json"),
        sign_raw(&secret, &payload, br#"{"key":"no kid"}"#),
    ];
    for case in cases {
        let got = check(&verifier, &case);
        assert!(matches!(got, Err(VerifyError::Malformed(_))), "{case:?}: {got:?}");
    }
}

#[test]
fn claims_that_are_missing_or_mistyped_after_a_good_signature_are_malformed() {
    let (signer, secret) = signer();
    let verifier = verifier_for(&signer);
    let footer = kid_footer(signer.kid());
    let mut no_exp = serde_json::to_value(good_claims()).unwrap();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut text_limit = serde_json::to_value(good_claims()).unwrap();
    text_limit["hwid_limit"] = "two".into();
    for payload in [no_exp, text_limit, serde_json::json!(["not", "an", "object"])] {
        let token = sign_raw(&secret, payload.to_string().as_bytes(), &footer);
        let got = check(&verifier, &token);
        assert!(matches!(got, Err(VerifyError::Malformed(_))), "{payload}: {got:?}");
    }
}

#[test]
fn claims_this_version_does_not_know_are_ignored() {
    let (signer, secret) = signer();
    let mut payload = serde_json::to_value(good_claims()).unwrap();
    payload["added_later"] = "whatever".into();
    let token = sign_raw(&secret, payload.to_string().as_bytes(), &kid_footer(signer.kid()));
    assert_eq!(check(&verifier_for(&signer), &token), Ok(good_claims()));
}

#[test]
fn during_a_rotation_tokens_of_both_keys_pass() {
    let (current, _) = signer();
    let (next, _) = signer();
    let verifier = Verifier::new([current.public_key().clone(), next.public_key().clone()]);
    for signer in [&current, &next] {
        let token = signer.sign(&good_claims()).unwrap();
        assert!(check(&verifier, &token).is_ok());
    }
}

#[test]
fn a_signer_read_back_from_its_secret_has_the_generated_public_key_and_id() {
    let keys = Signer::generate().unwrap();
    assert!(keys.secret.starts_with("k4.secret."));
    assert!(keys.public.starts_with("k4.public."));
    let signer = Signer::from_paserk(&format!("{}\n", keys.secret)).unwrap();
    assert_eq!(signer.public_key().paserk(), keys.public);
    assert_eq!(signer.kid(), keys.kid);
    let public = PublicKey::from_paserk(&format!("{}\n", keys.public)).unwrap();
    assert_eq!(public.kid(), keys.kid);

    assert!(!format!("{keys:?}").contains(&keys.secret), "Debug shows no secret");
    assert!(!format!("{signer:?}").contains(&keys.secret), "Debug shows no secret");
}

#[test]
fn keys_that_are_not_the_right_paserk_are_refused() {
    let keys = Signer::generate().unwrap();
    let public_as_secret = Signer::from_paserk(&keys.public).unwrap_err();
    assert_eq!(public_as_secret, KeyError::Invalid { expected: "k4.secret" });
    for bad in [keys.secret.as_str(), "k4.public.short", "", &keys.kid] {
        assert_eq!(
            PublicKey::from_paserk(bad),
            Err(KeyError::Invalid { expected: "k4.public" }),
            "{bad}"
        );
    }
}

#[test]
fn the_key_list_of_the_server_is_read_and_its_kids_checked() {
    let a = Signer::generate().unwrap();
    let b = Signer::generate().unwrap();
    let list = serde_json::json!({"keys": [
        {"kid": a.kid, "public": a.public},
        {"kid": b.kid, "public": b.public},
    ]});
    let keys = keys_from_json(&list.to_string()).unwrap();
    let kids: Vec<&str> = keys.iter().map(PublicKey::kid).collect();
    assert_eq!(kids, [a.kid.as_str(), b.kid.as_str()]);

    let swapped = serde_json::json!({"keys": [{"kid": b.kid, "public": a.public}]});
    assert_eq!(
        keys_from_json(&swapped.to_string()),
        Err(KeyError::KidMismatch { kid: b.kid.clone() })
    );
    assert!(matches!(keys_from_json("[]"), Err(KeyError::KeyList(_))));
}
