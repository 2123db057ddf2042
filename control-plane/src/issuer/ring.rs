//! An issuer's key ring: the generations of key pairs it publishes, and
//! which one signs.
//!
//! Rotation without a failed request: a new generation is published (in the
//! JWKS) [`PUBLISH_AHEAD_MS`] before it signs anything, so every gateway and
//! replica has fetched it by then, however many rotations happen in that
//! hour; the generation it replaces stays published for
//! [`PREVIOUS_KEPT_MS`] more, while tokens it signed can live, and then
//! leaves the JWKS. So a key rotated out after a leak is gone about two
//! hours after the rotation. The dev issuer's ring has one generation (its
//! key files); the SAML issuer's generations are kept in the database and
//! rotated every [`ROTATE_AFTER_MS`] ([`crate::key_rotation`]).

use std::sync::Arc;

use serde_json::{json, Map, Value};
use warden_engine::auth::jwks::KeySet;

use super::keys::{Keys, SigningAlg};

/// How long a new generation is published before it signs: longer than
/// any gateway's JWKS refresh period, so nobody meets its `kid` unknown.
pub const PUBLISH_AHEAD_MS: i64 = 3600 * 1000;
/// A generation older than this is replaced: 30 days.
pub const ROTATE_AFTER_MS: i64 = 30 * 24 * 3600 * 1000;
/// How long the generation before the signer stays published after the
/// signer took over: the life of the tokens it signed, and a minute of skew.
pub const PREVIOUS_KEPT_MS: i64 = (super::oauth::FLOW_TOKEN_TTL_SECONDS as i64 + 60) * 1000;
/// Newest generations read from the database: the signer, the one before
/// it, and any number of rotations within an hour.
pub const LOADED_GENERATIONS: usize = 10;

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
    /// The ring of `generations` as published at `now_ms`: the signer (the
    /// newest generation published for [`PUBLISH_AHEAD_MS`], else the
    /// oldest given), every newer one, and each older one until
    /// [`PREVIOUS_KEPT_MS`] after it stopped signing.
    pub fn new(mut generations: Vec<Generation>, now_ms: i64) -> Result<Self, String> {
        generations.sort_by_key(|generation| generation.number);
        let signer = generations
            .iter()
            .rposition(|generation| ready(generation, now_ms))
            .unwrap_or(0);
        // A generation before the signer signed until the next one was
        // ready; it stays published while tokens it signed can live.
        let first = generations
            .windows(2)
            .take(signer)
            .position(|pair| {
                pair.get(1).is_some_and(|next| {
                    next.created_ms
                        .saturating_add(PUBLISH_AHEAD_MS)
                        .saturating_add(PREVIOUS_KEPT_MS)
                        > now_ms
                })
            })
            .unwrap_or(signer);
        generations.drain(..first);
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
        KeyRing::new(
            vec![Generation {
                number: 1,
                created_ms: 0,
                keys,
            }],
            0,
        )
    }

    /// The generation that signs at `now_ms`: the newest one published for
    /// at least [`PUBLISH_AHEAD_MS`], else the oldest one published.
    pub fn signing(&self, now_ms: i64) -> &Generation {
        self.newer
            .iter()
            .rev()
            .find(|generation| ready(generation, now_ms))
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

/// Whether `generation` has been published long enough to sign at `now_ms`.
fn ready(generation: &Generation, now_ms: i64) -> bool {
    generation.created_ms.saturating_add(PUBLISH_AHEAD_MS) <= now_ms
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
        let ring = KeyRing::new(vec![first_again()], 0).unwrap();
        assert_eq!(ring.signing(0).number, 1);
        assert!(!ring.rotation_due(ROTATE_AFTER_MS - 1));
        assert!(ring.rotation_due(ROTATE_AFTER_MS));

        let rotated_at = 30 * day;
        let ring =
            KeyRing::new(vec![generation(2, rotated_at), first_again()], rotated_at).unwrap();
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
    fn the_previous_generation_leaves_once_its_tokens_have_expired() {
        let hour = PUBLISH_AHEAD_MS;
        let ring =
            |now| KeyRing::new(vec![generation(1, 0), generation(2, 10 * hour)], now).unwrap();
        // Generation 2 signs from 11 h; 1 stays published for its tokens' life.
        assert_eq!(ring(11 * hour).kids().len(), 6);
        assert_eq!(ring(11 * hour).signing(11 * hour).number, 2);
        assert_eq!(ring(12 * hour + 60_000 - 1).kids().len(), 6);
        let later = ring(12 * hour + 60_000);
        assert_eq!(
            (later.kids().len(), later.signing(12 * hour + 60_000).number),
            (3, 2)
        );
        assert!(KeyRing::new(Vec::new(), 0).is_err());
    }

    #[test]
    fn rapid_rotations_never_sign_with_a_key_published_less_than_an_hour() {
        let hour = PUBLISH_AHEAD_MS;
        // Generation 1 signs; three more are added within minutes (a leak).
        let now = 100 * hour;
        let generations = || {
            vec![
                generation(1, 0),
                generation(2, now),
                generation(3, now + 60_000),
                generation(4, now + 120_000),
            ]
        };
        let ring = KeyRing::new(generations(), now + 180_000).unwrap();
        assert_eq!(ring.signing(now + 180_000).number, 1);
        assert_eq!(ring.kids().len(), 12);
        // An hour after the last it signs; 1, 2 and 3 signed until minutes
        // ago, so they stay published for their tokens' life, then leave.
        let at = now + 120_000 + hour;
        let ring = KeyRing::new(generations(), at).unwrap();
        assert_eq!((ring.signing(at).number, ring.kids().len()), (4, 12));
        let ring = KeyRing::new(generations(), at + PREVIOUS_KEPT_MS - 1).unwrap();
        assert_eq!(ring.kids().len(), 6);
        let ring = KeyRing::new(generations(), at + PREVIOUS_KEPT_MS).unwrap();
        assert_eq!(ring.kids().len(), 3);
        assert_eq!(ring.newest().number, 4);
    }
}
