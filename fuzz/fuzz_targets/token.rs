//! Token parsing and verification. The first byte picks how the rest
//! becomes a token:
//! 0. the rest is the token (read as UTF-8, invalid sequences replaced);
//! 1. `header JSON \0 claims JSON`, signed by the configured Ed25519 key;
//! 2. the same, signed by a key nobody configured (with the same `kid`);
//! 3. the same, "signed" HS256/384/512 with the configured RSA public key's
//!    PEM, JWK or modulus as the HMAC secret (key confusion);
//! 4. `header JSON \0 claims JSON \0 signature bytes`, as given;
//! 5. the rest is an `Authorization` / `x-api-key` header value.
//!
//! Never a panic. A token is accepted only if a configured key signed it
//! (checked independently of the engine), with an allowed algorithm, no
//! `crit`, the exact issuer, our audience, an `exp` not past (with the
//! skew), an `nbf` not ahead, and the identity says no later expiry than
//! the token. A header value yields a token only if it holds one.
#![no_main]

use hmac_confusion::*;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use warden_engine::auth::{Authenticator, Identity};
use warden_engine::headers::Headers;
use warden_engine_fuzz::tokens::*;

mod hmac_confusion {
    use warden_engine_fuzz::tokens::{b64, rsa_jwk, rsa_pair};

    /// An HS* token over `header.payload` with `secret`.
    pub fn hmac_token(alg: u8, secret: &[u8], header: &[u8], payload: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let input = format!("{}.{}", b64(header), b64(payload));
        macro_rules! mac {
            ($d:ty) => {{
                let mut m = Hmac::<$d>::new_from_slice(secret).expect("HMAC takes any key");
                m.update(input.as_bytes());
                m.finalize().into_bytes().to_vec()
            }};
        }
        let sig = match alg % 3 {
            0 => mac!(sha2::Sha256),
            1 => mac!(sha2::Sha384),
            _ => mac!(sha2::Sha512),
        };
        format!("{input}.{}", b64(&sig))
    }

    /// The public key material an attacker has.
    pub fn public_secrets() -> Vec<Vec<u8>> {
        let pk = rsa_pair().public_key();
        vec![
            pk.to_pem().expect("PEM").into_bytes(),
            pk.to_der().expect("DER"),
            rsa_jwk().to_string().into_bytes(),
            pk.to_components().n,
        ]
    }
}

fn split3(data: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let mut it = data.splitn(3, |b| *b == 0);
    (
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
        it.next().unwrap_or_default(),
    )
}

fn check(auth: &Authenticator, token: &str, forged: bool) {
    let Ok(unverified) = auth.inspect(token) else {
        return;
    };
    let issuer = &auth.issuers[unverified.issuer];
    let keys = match &issuer.keys {
        warden_engine::auth::KeySource::Static(k) => k,
        _ => unreachable!("inline keys"),
    };
    let Ok(id) = auth.verify(token, unverified, keys, NOW) else {
        return;
    };
    accepted(token, &id, forged);
}

fn accepted(token: &str, id: &Identity, forged: bool) {
    assert!(!forged, "a forged token was accepted: {token}");
    assert!(
        signed_by_configured(token),
        "accepted without a configured key's signature: {token}"
    );
    let (header, claims, _, _) = parts(token).expect("an accepted token decodes");
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
            "Ed25519"
        ]
        .contains(&alg),
        "accepted with alg {alg:?}"
    );
    assert!(header.get("crit").is_none(), "accepted with crit: {header}");
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(ISS),
        "issuer: {claims}"
    );
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "audience: {claims}");
    let time = |name: &str| claims.get(name).and_then(Value::as_f64);
    let exp = time("exp").unwrap_or_else(|| panic!("accepted without a numeric exp: {claims}"));
    assert!(
        exp + SKEW as f64 >= NOW as f64,
        "accepted after exp: {claims}"
    );
    if let Some(v) = claims.get("nbf") {
        let nbf = v
            .as_f64()
            .unwrap_or_else(|| panic!("accepted with nbf {v}"));
        assert!(nbf <= (NOW + SKEW) as f64, "accepted before nbf: {claims}");
    }
    assert_eq!(id.issuer, ISS);
    assert!(!id.subject.is_empty());
    assert!(
        id.expires_at as f64 <= exp,
        "the identity outlives the token: {} > {exp}",
        id.expires_at
    );
}

thread_local! {
    static AUTH: Authenticator = authenticator();
    static SECRETS: Vec<Vec<u8>> = public_secrets();
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    AUTH.with(|auth| match mode % 6 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            check(auth, &token, false);
        }
        1 | 2 => {
            let (header, claims, _) = split3(rest);
            let seed = if mode % 6 == 1 { 1 } else { 2 };
            check(auth, &ed_sign(seed, header, claims), seed != 1);
        }
        3 => {
            let (header, claims, pick) = split3(rest);
            let pick = pick.first().copied().unwrap_or(0);
            SECRETS.with(|secrets| {
                let secret = &secrets[pick as usize % secrets.len()];
                check(auth, &hmac_token(pick / 4, secret, header, claims), true);
            });
        }
        4 => {
            let (header, claims, sig) = split3(rest);
            let token = format!("{}.{}.{}", b64(header), b64(claims), b64(sig));
            check(auth, &token, false);
        }
        _ => {
            for name in ["authorization", "x-api-key"] {
                let pairs = vec![(name.to_string(), rest.to_vec())];
                if let Ok(token) = auth.extract_token(Headers::new(&pairs)) {
                    assert!(!token.is_empty() && token.len() <= auth.max_token_bytes);
                    let value = String::from_utf8_lossy(rest);
                    assert!(
                        value.contains(token),
                        "a token not in the header: {token:?}"
                    );
                    check(auth, token, false);
                }
            }
        }
    });
});
