//! The control plane's answer (`GET /v1/policy/active`), as a gateway reads
//! it, with its machine keys. The first byte picks: the rest as the answer,
//! as it is; or an answer built from the input, whose keys (secrets taken
//! from the input) are served by their SHA-256. Never a panic; a refused
//! answer says why; an accepted one knows exactly the keys it served, each
//! until its expiry, and proves nothing else.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use sha2::{Digest, Sha256};
use warden_engine::auth::machine_keys::{is_machine_key, PREFIX};
use warden_engine::control::parse_published_policy;

#[derive(Arbitrary, Debug)]
struct Key {
    id: String,
    secret: String,
    owner: String,
    groups: Vec<String>,
    models: Vec<String>,
    expires_at: u64,
    /// Served with a hash of something else.
    wrong_hash: bool,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Err(why) = parse_published_policy(rest) {
            assert!(!why.is_empty());
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(keys) = Vec::<Key>::arbitrary(&mut u) else {
        return;
    };
    let Ok(now) = u64::arbitrary(&mut u) else {
        return;
    };
    let text = |k: &Key| format!("{PREFIX}{}_{}", k.id, k.secret);
    let served: Vec<_> = keys
        .iter()
        .map(|k| {
            let hashed = if k.wrong_hash { format!("x{}", text(k)) } else { text(k) };
            json!({"id": k.id, "sha256": hex(&Sha256::digest(hashed.as_bytes())), "owner": k.owner,
                   "groups": k.groups, "models": k.models, "expires_at": k.expires_at})
        })
        .collect();
    let body = json!({"version": 1, "sha256": "00", "policy": {"version": 1, "groups": {"eng": {"models": ["*"]}}},
                      "machine_keys": served});
    let Ok(published) = parse_published_policy(body.to_string().as_bytes()) else {
        return;
    };
    let machine_keys = &published.policy.machine_keys;
    for k in &keys {
        let key = text(k);
        assert!(is_machine_key(&key));
        // Keys that share a text are served once (or refused as a pair), so
        // only a text no other entry has is checked for its own fields.
        if keys.iter().filter(|o| text(o) == key).count() > 1 {
            continue;
        }
        match machine_keys.verify(&key, now) {
            Ok(who) => {
                assert!(!k.wrong_hash, "a key proved with a hash of something else");
                assert!(now < k.expires_at, "an expired key proved someone");
                assert_eq!(who.subject, k.owner);
                assert_eq!(who.groups, k.groups);
                assert_eq!(who.issuer, format!("warden:key:{}", k.id));
            }
            Err(_) => assert!(k.wrong_hash || now >= k.expires_at, "a served key was refused: {k:?}"),
        }
    }
});

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
