//! JSON Web Key Sets: the IdP's published public keys, parsed into verifiers.
//!
//! The key's type picks the verifier, never the token's header: an RSA key
//! only ever verifies RS*/PS* signatures, so an HS256 token "signed" with the
//! RSA public key (key confusion) has no key to verify against. Symmetric
//! (`kty: oct`) entries in a fetched JWKS are ignored; shared secrets come only
//! from an issuer configured with one.
//!
//! RSA signatures are verified with the `rsa` crate (0.10) rather than through
//! jwt-simple, whose pure-Rust RSA computes in 64-bit digits that wasm32 has
//! to emulate with 128-bit products: a cold RS256 token cost ~1 ms in V8. Its
//! claims are then checked by [`ClaimRules::check`]; every other algorithm
//! goes through jwt-simple whole.

use jwt_simple::prelude::*;
use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
use rsa::{BoxedUint, Pkcs1v15Sign, Pss, PublicKey as RsaPublicKey};
use serde_json::Value;

use super::registered::{classify, ClaimRules};
use super::{Algorithm, AuthError};

/// Why a JWKS document was refused as a whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("the JWKS is not a JSON object with a `keys` array")]
    Shape,
    #[error("the JWKS holds no usable signing key ({0} entries skipped)")]
    NoUsableKey(usize),
    #[error("the JWKS is larger than {0} bytes")]
    TooLarge(usize),
}

/// Largest JWKS document accepted (a few dozen RSA keys fit easily).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// A verifier for one public key (or shared secret).
pub enum VerifyingKey {
    /// Used with each RSA algorithm the issuer allows.
    Rsa(Box<RsaPublicKey>),
    Es256(ES256PublicKey),
    Es384(ES384PublicKey),
    Ed25519(Ed25519PublicKey),
    Hmac(Box<HmacKeys>),
}

/// jwt-simple's RSA key policy, kept: 2048 to 4096 bits, `e` = 65537.
const RSA_MODULUS_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;
const RSA_EXPONENT: [u8; 3] = [1, 0, 1];

pub struct HmacKeys {
    hs256: HS256Key,
    hs384: HS384Key,
    hs512: HS512Key,
}

impl VerifyingKey {
    fn family_allows(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (
                VerifyingKey::Rsa(_),
                RS256 | RS384 | RS512 | PS256 | PS384 | PS512
            ) | (VerifyingKey::Es256(_), ES256)
                | (VerifyingKey::Es384(_), ES384)
                | (VerifyingKey::Ed25519(_), EdDSA)
                | (VerifyingKey::Hmac(_), HS256 | HS384 | HS512)
        )
    }

    /// Verifies `token`'s signature with `alg`, then its registered claims
    /// (in `payload`, its decoded payload) against `rules`.
    pub(crate) fn verify(
        &self,
        alg: Algorithm,
        token: &str,
        payload: &[u8],
        rules: &ClaimRules,
    ) -> Result<(), AuthError> {
        use Algorithm::*;
        let opts = || Some(rules.options());
        let verified = match (self, alg) {
            (VerifyingKey::Rsa(key), RS256 | RS384 | RS512 | PS256 | PS384 | PS512) => {
                verify_rsa_signature(key, alg, token)?;
                return rules.check(payload);
            }
            (VerifyingKey::Es256(k), ES256) => k.verify_token::<NoCustomClaims>(token, opts()),
            (VerifyingKey::Es384(k), ES384) => k.verify_token::<NoCustomClaims>(token, opts()),
            (VerifyingKey::Ed25519(k), EdDSA) => k.verify_token::<NoCustomClaims>(token, opts()),
            (VerifyingKey::Hmac(k), HS256) => k.hs256.verify_token::<NoCustomClaims>(token, opts()),
            (VerifyingKey::Hmac(k), HS384) => k.hs384.verify_token::<NoCustomClaims>(token, opts()),
            (VerifyingKey::Hmac(k), HS512) => k.hs512.verify_token::<NoCustomClaims>(token, opts()),
            _ => return Err(AuthError::BadSignature),
        };
        verified.map(drop).map_err(|err| classify(&err))
    }
}

/// The signature of a compact JWS (`header.payload.signature`) by `key` with
/// `alg` (RFC 7518 §3.3 and §3.5: PKCS #1 v1.5, or PSS with a salt as long
/// as the digest).
fn verify_rsa_signature(key: &RsaPublicKey, alg: Algorithm, token: &str) -> Result<(), AuthError> {
    use base64::Engine;
    use Algorithm::*;
    let (signed, signature) = token.rsplit_once('.').ok_or(AuthError::Malformed)?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| AuthError::BadSignature)?;
    let signed = signed.as_bytes();
    let verified = match alg {
        RS256 => key.verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(signed),
            &signature,
        ),
        RS384 => key.verify(
            Pkcs1v15Sign::new::<Sha384>(),
            &Sha384::digest(signed),
            &signature,
        ),
        RS512 => key.verify(
            Pkcs1v15Sign::new::<Sha512>(),
            &Sha512::digest(signed),
            &signature,
        ),
        PS256 => key.verify(Pss::<Sha256>::new(), &Sha256::digest(signed), &signature),
        PS384 => key.verify(Pss::<Sha384>::new(), &Sha384::digest(signed), &signature),
        PS512 => key.verify(Pss::<Sha512>::new(), &Sha512::digest(signed), &signature),
        _ => return Err(AuthError::BadSignature),
    };
    verified.map_err(|_| AuthError::BadSignature)
}

/// An RSA public key from a JWK's `n` and `e`, under jwt-simple's policy.
fn rsa_key(n: &[u8], e: &[u8]) -> Option<RsaPublicKey> {
    let first = e.iter().position(|b| *b != 0).unwrap_or(e.len());
    if e.get(first..) != Some(&RSA_EXPONENT[..]) {
        return None;
    }
    RsaPublicKey::new_with_size_limits(
        BoxedUint::from_be_slice_vartime(n),
        BoxedUint::from_be_slice_vartime(e),
        RSA_MODULUS_BITS,
    )
    .ok()
}

/// One entry of a key set.
pub struct KeyEntry {
    pub kid: Option<String>,
    /// The JWK's own `alg`, if it names one: the key is then used with that
    /// algorithm only.
    pub alg: Option<Algorithm>,
    pub key: VerifyingKey,
}

impl KeyEntry {
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.key.family_allows(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one issuer.
#[derive(Default)]
pub struct KeySet {
    entries: Vec<KeyEntry>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self
            .entries
            .iter()
            .map(|e| e.kid.as_deref().unwrap_or("(no kid)"))
            .collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Entries that are not
    /// signature keys of a supported type are skipped (and counted), as an IdP
    /// may publish encryption keys or newer algorithms beside ours; a set with
    /// no usable key is an error, so a broken fetch never replaces good keys.
    pub fn from_jwks(bytes: &[u8]) -> Result<(Self, usize), JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge(MAX_JWKS_BYTES));
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|_| JwksError::Shape)?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::Shape)?;
        let mut entries = Vec::with_capacity(keys.len());
        let mut skipped = 0;
        for jwk in keys {
            match parse_jwk(jwk) {
                Some(entry) => entries.push(entry),
                None => skipped += 1,
            }
        }
        if entries.is_empty() {
            return Err(JwksError::NoUsableKey(skipped));
        }
        Ok((Self { entries }, skipped))
    }

    /// A key set holding one shared secret (HS256/384/512).
    pub fn from_shared_secret(secret: &[u8]) -> Result<Self, jwt_simple::Error> {
        let key = VerifyingKey::Hmac(Box::new(HmacKeys {
            hs256: HS256Key::from_bytes(secret),
            hs384: HS384Key::from_bytes(secret),
            hs512: HS512Key::from_bytes(secret),
        }));
        Ok(Self {
            entries: vec![KeyEntry {
                kid: None,
                alg: None,
                key,
            }],
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The candidate keys for a token: by `kid` when the token names one
    /// (exact match only; a `kid` is never a path or a URL to us), otherwise
    /// every key of a type that can verify `alg`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a KeyEntry> + 'a {
        self.entries.iter().filter(move |e| {
            e.accepts(alg)
                && match (kid, e.kid.as_deref()) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        })
    }
}

fn parse_jwk(jwk: &Value) -> Option<KeyEntry> {
    let obj = jwk.as_object()?;
    // `use: enc` keys are for encryption, not for us.
    if obj
        .get("use")
        .and_then(Value::as_str)
        .is_some_and(|u| u != "sig")
    {
        return None;
    }
    let kid = obj.get("kid").and_then(Value::as_str).map(str::to_owned);
    let alg = match obj.get("alg").and_then(Value::as_str) {
        Some(name) => Some(Algorithm::from_name(name)?),
        None => None,
    };
    let text = jwk.to_string();
    let key = match (
        obj.get("kty")?.as_str()?,
        obj.get("crv").and_then(Value::as_str),
    ) {
        ("RSA", _) => {
            let n = b64url(obj.get("n")?.as_str()?)?;
            let e = b64url(obj.get("e")?.as_str()?)?;
            VerifyingKey::Rsa(Box::new(rsa_key(&n, &e)?))
        }
        ("EC", Some("P-256")) => VerifyingKey::Es256(ES256PublicKey::from_jwk(&text).ok()?),
        ("EC", Some("P-384")) => VerifyingKey::Es384(ES384PublicKey::from_jwk(&text).ok()?),
        ("OKP", Some("Ed25519")) => VerifyingKey::Ed25519(Ed25519PublicKey::from_jwk(&text).ok()?),
        // `oct` (shared secrets) and anything else: never from a fetched set.
        _ => return None,
    };
    let entry = KeyEntry { kid, alg, key };
    // A JWK whose `alg` contradicts its type is unusable rather than trusted.
    if let Some(a) = entry.alg {
        if !entry.key.family_allows(a) {
            return None;
        }
    }
    Some(entry)
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}
