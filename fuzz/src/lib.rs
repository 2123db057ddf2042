//! What the fuzz targets share: the policy they run (every built-in
//! detector, a custom regex and a keyword list), the caller it applies to,
//! the cuts a target's input chooses, and the checks more than one target
//! makes. Every check panics with what broke: libFuzzer keeps the input.

use std::rc::Rc;

use serde_json::Value;
use warden_engine::auth::Identity;
use warden_engine::inspect::body::{each_part_group, each_text_outside_groups};
use warden_engine::inspect::detect::{Builtin, Finding};
use warden_engine::policy::{ActiveRules, Direction, Policy};

/// Every built-in detector, one rule each (so a finding names its
/// detector), a custom regex with a group (hashed) and a keyword list
/// (tokenized), all in force for [`caller`] in both directions.
pub fn policy_text(action: &str) -> String {
    let mut doc = String::from("version: 1\ngroups: {all: {models: [\"*\"]}}\nrules:\n");
    for b in Builtin::ALL {
        doc.push_str(&format!(
            "  - {{name: {0}, detect: {0}, action: {action}}}\n",
            b.name()
        ));
    }
    doc.push_str("  - {name: words, keywords: [merger, \"Project Titan\"], action: tokenize}\n");
    doc.push_str(
        "  - {name: customer, regex: 'CUST-(?P<id>[0-9]{8})', group: id, label: CUSTOMER, action: hash}\n",
    );
    doc
}

thread_local! {
    static MASKING: Rc<Policy> = Rc::new(
        Policy::from_bytes(policy_text("mask").as_bytes()).expect("the fuzz policy compiles"),
    );
}

/// The compiled [`policy_text`] with `mask` (compiled once per process).
pub fn masking_policy() -> Rc<Policy> {
    MASKING.with(Rc::clone)
}

/// A caller in the policy's one group.
pub fn caller() -> Identity {
    Identity {
        issuer: "https://idp.example".into(),
        subject: "fuzz".into(),
        token_subject: Some("fuzz".into()),
        email: None,
        groups: vec!["all".into()],
        expires_at: 0,
    }
}

pub fn active(policy: &Policy, direction: Direction) -> ActiveRules {
    policy.active_rules(&caller(), "openai", Some("gpt-4o"), direction)
}

/// Reads the cuts a target's input chooses: a count byte, then one byte per
/// cut, each the gap (1..=256 bytes) from the previous cut. Returns the
/// offsets (ascending, within `len` only) and the rest of the input.
pub fn cuts(data: &[u8], max: usize) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = (n as usize % (max + 1)).min(rest.len());
    let (gaps, rest) = rest.split_at(n);
    let mut at = 0;
    let offsets = gaps
        .iter()
        .map(|g| {
            at += *g as usize + 1;
            at
        })
        .filter(|&o| o < rest.len())
        .collect();
    (offsets, rest)
}

/// `bytes` cut at `offsets` (ascending, in range).
pub fn pieces<'a>(bytes: &'a [u8], offsets: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(offsets.len() + 1);
    let mut from = 0;
    for &o in offsets {
        if o > from && o < bytes.len() {
            out.push(&bytes[from..o]);
            from = o;
        }
    }
    out.push(&bytes[from..]);
    out
}

/// `text` cut at `offsets` moved down to char boundaries.
pub fn str_pieces<'a>(text: &'a str, offsets: &[usize]) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(offsets.len() + 1);
    let mut from = 0;
    for &o in offsets {
        let mut o = o.min(text.len());
        while !text.is_char_boundary(o) {
            o -= 1;
        }
        if o > from {
            out.push(&text[from..o]);
            from = o;
        }
    }
    out.push(&text[from..]);
    out
}

/// A finding's span is a non-empty range of `text` on char boundaries.
pub fn check_span(text: &str, f: &Finding) {
    assert!(
        f.start < f.end && f.end <= text.len(),
        "finding {}..{} of {} out of a {}-byte text",
        f.start,
        f.end,
        f.detector,
        text.len()
    );
    assert!(
        text.is_char_boundary(f.start) && text.is_char_boundary(f.end),
        "finding {}..{} of {} is not on char boundaries",
        f.start,
        f.end,
        f.detector
    );
    assert!(
        !f.label.is_empty(),
        "finding of {} without a label",
        f.detector
    );
}

/// Where `needle` occurs in `hay`, overlapping occurrences included,
/// except those that overlap a span of `skip`.
pub fn occurrences(hay: &str, needle: &str, skip: &[(usize, usize)]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    hay.char_indices()
        .filter(|(i, _)| hay[*i..].starts_with(needle))
        .filter(|(i, _)| !skip.iter().any(|&(s, e)| *i < e && s < i + needle.len()))
        .count()
}

/// The placeholders the actions write, where they are in `text`:
/// `[LABEL]` (mask), `[LABEL:hex]` (hash), `<LABEL_n>` (tokenize).
pub fn placeholder_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let label = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_';
    let mut spans = Vec::new();
    for (i, &c) in b.iter().enumerate() {
        let close = match c {
            b'[' => b']',
            b'<' => b'>',
            _ => continue,
        };
        let mut j = i + 1;
        while j < b.len() && label(b[j]) {
            j += 1;
        }
        if j == i + 1 {
            continue;
        }
        if close == b']' && b.get(j) == Some(&b':') {
            j += 1;
            while j < b.len() && b[j].is_ascii_hexdigit() {
                j += 1;
            }
        }
        if b.get(j) == Some(&close) {
            spans.push((i, j + 1));
        }
    }
    spans
}

/// The masked-value invariant: each value masked in `before` (found
/// `found` times there) occurs in `after`, outside the placeholders that
/// replaced values, at most as often as it occurred in `before` and was not
/// masked: a value a detector judged by its context may stay where that
/// context is missing, but the masked occurrences are gone and masking
/// made no new one. (An occurrence that takes in a placeholder's text, as
/// `password=[S` does in `password=[SECRET]`, is made of what the output
/// shows anyway.)
pub fn check_masked_values_gone<'a>(
    before: &[String],
    after: &[String],
    values: impl IntoIterator<Item = &'a str>,
) {
    let mut counted: std::collections::BTreeMap<&str, usize> = Default::default();
    for v in values {
        *counted.entry(v).or_default() += 1;
    }
    let after: Vec<(&String, Vec<(usize, usize)>)> =
        after.iter().map(|t| (t, placeholder_spans(t))).collect();
    for (v, found) in counted {
        let was: usize = before.iter().map(|t| occurrences(t, v, &[])).sum();
        let is: usize = after.iter().map(|(t, skip)| occurrences(t, v, skip)).sum();
        assert!(
            is + found <= was,
            "a masked value survives: {v:?} occurred {was} times, {found} masked, still {is} after: {after:?}"
        );
    }
}

/// The texts of a JSON document as the masking pass reads them: each group
/// of content parts joined, and every other string alone.
pub fn scanned_texts(doc: &Value) -> Vec<String> {
    let mut doc = doc.clone();
    let mut texts = Vec::new();
    each_part_group(&mut doc, &mut |parts| {
        texts.push(parts.iter().map(|p| p.as_str()).collect::<String>());
        false
    });
    each_text_outside_groups(&mut doc, &mut |s| {
        texts.push(s.clone());
        false
    });
    texts
}

/// The number tokens of a JSON text, as written (outside strings, every run
/// that starts with `-` or a digit). The text must be valid JSON.
pub fn number_tokens(json: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < json.len()
                    && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push(&json[start..i]);
            }
            _ => i += 1,
        }
    }
    out
}

/// Tokens: one issuer, configured with an Ed25519 key (`ed-1`) and an RSA
/// key (`rsa-a`, the engine's test key) inline; what the targets sign with,
/// and the independent check that a token was signed by one of them.
pub mod tokens {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jwt_simple::prelude::*;
    use serde_json::{json, Value};
    use warden_engine::auth::{AuthenticationDoc, Authenticator};

    pub const ISS: &str = "https://idp.example.com/realms/acme";
    pub const AUDIENCE: &str = "warden";
    pub const NOW: u64 = 1_800_000_000;
    pub const SKEW: u64 = 60;
    pub const RSA_PEM: &str = include_str!("../../filter/engine/src/auth/testdata/rsa-a.pem");

    pub fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An Ed25519 key from a seed byte: `1` is configured, others are not.
    pub fn ed_key(seed: u8) -> ed25519_compact::KeyPair {
        ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]))
    }

    pub fn ed_jwk(seed: u8, kid: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(ed_key(seed).pk.as_ref()), "kid": kid, "use": "sig"})
    }

    pub fn rsa_pair() -> RS256KeyPair {
        RS256KeyPair::from_pem(RSA_PEM)
            .expect("the test RSA key")
            .with_key_id("rsa-a")
    }

    pub fn rsa_jwk() -> Value {
        serde_json::from_str(&rsa_pair().public_key().to_jwk()).expect("a JWK")
    }

    /// `header.payload.signature` with the signature of `seed`'s key.
    pub fn ed_sign(seed: u8, header: &[u8], payload: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(payload));
        let sig = ed_key(seed).sk.sign(input.as_bytes(), None);
        format!("{input}.{}", b64(sig.as_ref()))
    }

    pub fn authenticator() -> Authenticator {
        let doc = json!({
            "issuers": [{"issuer": ISS, "audiences": [AUDIENCE],
                         "inline_jwks": {"keys": [ed_jwk(1, "ed-1"), rsa_jwk()]}}],
            "clock_skew_seconds": SKEW,
        });
        let doc: AuthenticationDoc = serde_json::from_value(doc).expect("an authentication doc");
        Authenticator::compile(doc, &|_| None).expect("the authenticator compiles")
    }

    /// The token's three parts decoded (header and payload as JSON).
    pub fn parts(token: &str) -> Option<(Value, Value, Vec<u8>, &str)> {
        let mut it = token.split('.');
        let (h, p, s) = (it.next()?, it.next()?, it.next()?);
        let dec = |x: &str| URL_SAFE_NO_PAD.decode(x.trim_end_matches('=')).ok();
        // Read as jwt-simple reads a header: a field it ignores is skipped
        // unchecked, invalid UTF-8 included (what the IdP signed is what counts).
        let json = |x: &str| serde_json::from_str(&String::from_utf8_lossy(&dec(x)?)).ok();
        let header = json(h)?;
        let payload = json(p)?;
        let input = token.get(..h.len() + 1 + p.len())?;
        Some((header, payload, dec(s)?, input))
    }

    /// Whether `token` carries a valid signature by a configured key, for
    /// the algorithm its header names: checked here on the raw signature
    /// (Ed25519), or by the RSA public key's own verifier with every claim
    /// check relaxed (RSA), never through the engine.
    pub fn signed_by_configured(token: &str) -> bool {
        let Some((header, _, sig, input)) = parts(token) else {
            return false;
        };
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match alg {
            "EdDSA" | "Ed25519" => ed25519_compact::Signature::from_slice(&sig)
                .is_ok_and(|s| ed_key(1).pk.verify(input.as_bytes(), &s).is_ok()),
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
                let pk = rsa_pair().public_key();
                let (n, e) = (pk.to_components().n, pk.to_components().e);
                // The engine's clock and skew; no claim checked beyond them.
                let options = || {
                    Some(VerificationOptions {
                        time_tolerance: Some(Duration::from_secs(SKEW)),
                        artificial_time: Some(Duration::from_secs(NOW)),
                        ..Default::default()
                    })
                };
                macro_rules! check {
                    ($t:ty) => {
                        <$t>::from_components(&n, &e).is_ok_and(|k| {
                            k.verify_token::<NoCustomClaims>(token, options()).is_ok()
                        })
                    };
                }
                match alg {
                    "RS256" => check!(RS256PublicKey),
                    "RS384" => check!(RS384PublicKey),
                    "RS512" => check!(RS512PublicKey),
                    "PS256" => check!(PS256PublicKey),
                    "PS384" => check!(PS384PublicKey),
                    _ => check!(PS512PublicKey),
                }
            }
            _ => false,
        }
    }
}
