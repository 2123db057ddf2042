//! An issuer's key ring: the generations of key pairs it publishes, and
//! which one signs.
//!
//! Rotation without a failed request: a new generation is published (in the
//! JWKS) [`PUBLISH_AHEAD_MS`] before it signs anything, so every gateway and
//! replica has fetched it by then; the generation it replaces stays
//! published while tokens it signed can live. The dev issuer's ring has one
//! generation (its key files); the SAML issuer's generations are kept in the
//! database and rotated every [`ROTATE_AFTER_MS`]
//! ([`crate::key_rotation`]).

use std::sync::Arc;

use serde_json::{json, Map, Value};
use warden_engine::auth::jwks::KeySet;

use super::keys::{Keys, SigningAlg};

/// How long a new generation is published before it signs: longer than
/// any gateway's JWKS refresh period, so nobody meets its `kid` unknown.
pub const PUBLISH_AHEAD_MS: i64 = 3600 * 1000;
/// A generation older than this is replaced: 30 days.
pub const ROTATE_AFTER_MS: i64 = 30 * 24 * 3600 * 1000;
/// Generations published at once: the one before the signer (its tokens
/// may still be alive), the signer, and the next one.
pub const PUBLISHED_GENERATIONS: usize = 3;

/// One generation: its number, when it was made, its key pairs.
pub struct Generation {
    /// 1, 2, 3, …
    pub number: i64,
    /// Milliseconds since the epoch.
    pub created_ms: i64,
    /// The key pairs.
    pub keys: Keys,
}

/// The published generations, their JWKS and key set. Never empty: the
/// oldest is held apart from the newer ones.
pub struct KeyRing {
    oldest: Generation,
    /// Oldest first.
    newer: Vec<Generation>,
    jwks: Value,
    key_set: Arc<KeySet>,
}

impl KeyRing {
    /// A ring of the newest [`PUBLISHED_GENERATIONS`] of `generations`.
    pub fn new(mut generations: Vec<Generation>) -> Result<Self, String> {
        generations.sort_by_key(|generation| generation.number);
        let excess = generations.len().saturating_sub(PUBLISHED_GENERATIONS);
        generations.drain(..excess);
        let mut generations = generations.into_iter();
        let Some(oldest) = generations.next() else {
            return Err("an issuer needs at least one generation of keys".to_owned());
        };
        let newer: Vec<Generation> = generations.collect();
        let keys: Vec<Value> = std::iter::once(&oldest)
            .chain(&newer)
            .flat_map(|generation| {
                generation
                    .keys
                    .jwks()
                    .get("keys")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let jwks = json!({ "keys": keys });
        let (key_set, _) = KeySet::from_jwks(jwks.to_string().as_bytes())
            .map_err(|e| format!("the issuer's own JWKS: {e}"))?;
        Ok(KeyRing {
            oldest,
            newer,
            jwks,
            key_set: Arc::new(key_set),
        })
    }

    /// A ring of one generation (the dev issuer's key files).
    pub fn single(keys: Keys) -> Result<Self, String> {
        KeyRing::new(vec![Generation {
            number: 1,
            created_ms: 0,
            keys,
        }])
    }

    /// The generation that signs at `now_ms`: the newest one published for
    /// at least [`PUBLISH_AHEAD_MS`], else the oldest one there is.
    pub fn signing(&self, now_ms: i64) -> &Generation {
        self.newer
            .iter()
            .rev()
            .find(|generation| generation.created_ms.saturating_add(PUBLISH_AHEAD_MS) <= now_ms)
            .unwrap_or(&self.oldest)
    }

    /// The newest generation (published, maybe not yet signing).
    pub fn newest(&self) -> &Generation {
        self.newer.last().unwrap_or(&self.oldest)
    }

    /// Whether the newest generation is old enough to be replaced at `now_ms`.
    pub fn rotation_due(&self, now_ms: i64) -> bool {
        self.newest().created_ms.saturating_add(ROTATE_AFTER_MS) <= now_ms
    }

    /// Every published public key.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The published keys, for verifying the issuer's own tokens.
    pub fn key_set(&self) -> Arc<KeySet> {
        self.key_set.clone()
    }

    /// The published key ids, oldest generation first.
    pub fn kids(&self) -> Vec<String> {
        std::iter::once(&self.oldest)
            .chain(&self.newer)
            .flat_map(|generation| generation.keys.kids().iter().cloned())
            .collect()
    }

    /// `claims` signed at `now_ms` with the signing generation's key for `alg`.
    pub fn sign(
        &self,
        alg: SigningAlg,
        claims: Map<String, Value>,
        now_ms: i64,
    ) -> Result<String, String> {
        self.signing(now_ms).keys.sign(alg, claims)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn generation(number: i64, created_ms: i64) -> Generation {
        Generation {
            number,
            created_ms,
            keys: Keys::generate().unwrap().0,
        }
    }

    #[test]
    fn a_new_generation_is_published_an_hour_before_it_signs() {
        let day = 24 * 3600 * 1000;
        let (keys, pems) = Keys::generate().unwrap();
        let first_kid = keys.key_id(SigningAlg::ES256).to_owned();
        let first_again = || Generation {
            number: 1,
            created_ms: 0,
            keys: Keys::from_pems(&pems).unwrap(),
        };
        let ring = KeyRing::new(vec![first_again()]).unwrap();
        assert_eq!(ring.signing(0).number, 1);
        assert!(!ring.rotation_due(ROTATE_AFTER_MS - 1));
        assert!(ring.rotation_due(ROTATE_AFTER_MS));

        let rotated_at = 30 * day;
        let ring = KeyRing::new(vec![generation(2, rotated_at), first_again()]).unwrap();
        let second_kid = ring.newest().keys.key_id(SigningAlg::ES256).to_owned();
        // Both are published at once, the first still signs for an hour.
        let kids = ring.kids();
        assert!(kids.contains(&first_kid) && kids.contains(&second_kid));
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 6);
        assert_eq!(ring.signing(rotated_at + PUBLISH_AHEAD_MS - 1).number, 1);
        assert_eq!(ring.signing(rotated_at + PUBLISH_AHEAD_MS).number, 2);
        let token = ring
            .sign(SigningAlg::ES256, Map::new(), rotated_at + PUBLISH_AHEAD_MS)
            .unwrap();
        let header: Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.split('.').next().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(header["kid"], second_kid);
        assert!(!ring.rotation_due(rotated_at + PUBLISH_AHEAD_MS));
    }

    #[test]
    fn three_generations_are_published_at_most() {
        let ring = KeyRing::new((1..=5).map(|n| generation(n, n * 1000)).collect()).unwrap();
        assert_eq!(ring.kids().len(), 9);
        assert_eq!(ring.newest().number, 5);
        // Only generation 3 has been published an hour by then... none has:
        // the oldest published one signs.
        assert_eq!(ring.signing(5000).number, 3);
        assert!(KeyRing::new(Vec::new()).is_err());
    }
}
