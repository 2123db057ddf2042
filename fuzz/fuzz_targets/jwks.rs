//! The JWKS parser (and the discovery document's `jwks_uri`), on any bytes:
//! never a panic; a key set is refused as a whole or holds at least one key,
//! and every entry of the document is either a key or counted as skipped;
//! a key offered for an algorithm can verify it, and one offered for a
//! `kid` has that `kid`; and fixed tokens signed by known keys verify
//! against the parsed set only if the document really publishes that key
//! (same key material, same `kid`, for signatures): a set never lends its
//! trust to a key it does not hold.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use warden_engine::auth::jwks::KeySet;
use warden_engine::auth::keys::{jwks_uri_from_discovery, split_url};
use warden_engine::auth::{Algorithm, Authenticator};
use warden_engine_fuzz::tokens::*;

const ALGS: [Algorithm; 12] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
];

struct Fixture {
    auth: Authenticator,
    /// (token, kid, which key: "ed" or "rsa")
    tokens: Vec<(String, Option<&'static str>, &'static str)>,
}

fn fixture() -> Fixture {
    let claims = serde_json::json!({"iss": ISS, "aud": AUDIENCE, "sub": "alice", "exp": NOW + 300});
    let claims = claims.to_string();
    let ed = |kid: Option<&str>| {
        let header = match kid {
            Some(k) => serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": k}),
            None => serde_json::json!({"alg": "EdDSA", "typ": "JWT"}),
        };
        ed_sign(1, header.to_string().as_bytes(), claims.as_bytes())
    };
    let rsa = {
        let c = Claims::with_custom_claims(serde_json::json!({}), Duration::from_secs(300))
            .with_issuer(ISS)
            .with_audience(AUDIENCE)
            .with_subject("bob");
        let mut c = c;
        c.expires_at = Some(Duration::from_secs(NOW + 300));
        c.issued_at = Some(Duration::from_secs(NOW));
        c.invalid_before = None;
        rsa_pair().sign(c).expect("RS256 signs")
    };
    Fixture {
        auth: authenticator(),
        tokens: vec![
            (ed(Some("ed-1")), Some("ed-1"), "ed"),
            (ed(None), None, "ed"),
            (rsa, Some("rsa-a"), "rsa"),
        ],
    }
}

thread_local! {
    static FIXTURE: Fixture = fixture();
}

fn b64url(v: Option<&Value>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(v?.as_str()?.trim_end_matches('='))
        .ok()
}

/// Whether `doc` publishes the key `which` under `kid` as a signing key.
fn publishes(doc: &Value, which: &str, kid: Option<&str>) -> bool {
    let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
        return false;
    };
    keys.iter().any(|k| {
        let kid_ok = kid.is_none_or(|want| k.get("kid").and_then(Value::as_str) == Some(want));
        let use_ok = k
            .get("use")
            .is_none_or(|u| u.as_str() == Some("sig") || !u.is_string());
        let material = match which {
            "ed" => {
                k.get("kty").and_then(Value::as_str) == Some("OKP")
                    && k.get("crv").and_then(Value::as_str) == Some("Ed25519")
                    && b64url(k.get("x")).as_deref() == Some(ed_key(1).pk.as_ref())
            }
            _ => {
                let pk = rsa_pair().public_key();
                let c = pk.to_components();
                let strip = |v: Vec<u8>| v.into_iter().skip_while(|b| *b == 0).collect::<Vec<u8>>();
                k.get("kty").and_then(Value::as_str) == Some("RSA")
                    && b64url(k.get("n")).map(strip) == Some(strip(c.n.clone()))
                    && b64url(k.get("e")).map(strip) == Some(strip(c.e.clone()))
            }
        };
        kid_ok && use_ok && material
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = jwks_uri_from_discovery(data);
    if let Some((authority, path)) = split_url(&String::from_utf8_lossy(data)) {
        assert!(!authority.is_empty() && !authority.contains('@') && path.starts_with('/'));
    }
    let Ok((set, skipped)) = KeySet::from_jwks(data) else {
        return;
    };
    assert!(!set.is_empty(), "an empty set was accepted");
    let doc: Value = serde_json::from_slice(data).expect("an accepted JWKS is JSON");
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    assert_eq!(
        set.len() + skipped,
        entries,
        "keys and skipped entries do not add up"
    );
    for alg in ALGS {
        for e in set.candidates(None, alg) {
            assert!(e.accepts(alg), "offered for {alg:?} but does not accept it");
        }
        for e in set.candidates(Some("ed-1"), alg) {
            assert_eq!(e.kid.as_deref(), Some("ed-1"), "offered for kid ed-1");
        }
    }
    FIXTURE.with(|f| {
        for (token, kid, which) in &f.tokens {
            let Ok(unverified) = f.auth.inspect(token) else {
                panic!("the fixed token inspects")
            };
            if f.auth.verify(token, unverified, &set, NOW).is_ok() {
                assert!(
                    publishes(&doc, which, *kid),
                    "{which} token (kid {kid:?}) verified against a set without its key"
                );
            }
        }
    });
});
