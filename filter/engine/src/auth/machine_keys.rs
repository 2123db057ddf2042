//! Machine keys: long-lived credentials the control plane issues where no
//! workload identity exists (a cron job on a VM, a vendor's integration).
//!
//! The control plane stores only each key's SHA-256 and serves the live ones
//! (not revoked, not expired) with the active policy; a gateway therefore
//! knows a key by its hash and never holds one. A revocation removes the
//! hash from the next answer, which reaches every gateway as a policy change
//! does (the watch: well under a second; without it, the poll interval).
//!
//! A key is `wdk_<id>_<secret>`: the `id` names it in audit records and
//! listings without revealing it; the secret is 32 random bytes. Keys are
//! looked up by hash, so the lookup's timing depends on the hash, never on
//! how much of a guess matches a real key.
//!
//! A request made with a key is recorded under its owner: the identity's
//! subject is the owner, its issuer is [`ISSUER_PREFIX`] and the key's id,
//! and its groups are the key's own (a key never carries more than its
//! issuer granted it). A key may also be narrowed to some models.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wildmatch::WildMatch;

use super::{AuthError, Identity};

/// What every machine key starts with: tells it from a JWT before parsing.
pub const PREFIX: &str = "wdk_";

/// The issuer of identities that machine keys prove: `warden:key:<id>`.
pub const ISSUER_PREFIX: &str = "warden:key:";

/// Most keys one answer may carry; beyond it the answer is refused as
/// implausible (and the previous policy kept), not truncated.
pub const MAX_KEYS: usize = 100_000;

/// Longest key id, owner and group name accepted.
const MAX_FIELD_BYTES: usize = 256;
/// Most groups or model patterns one key may carry.
const MAX_LIST: usize = 64;

/// A live key as the control plane serves it to gateways
/// (`machine_keys` of `GET /v1/policy/active`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct MachineKeyDoc {
    /// The key's public id (`wdk_<id>_…`).
    pub id: String,
    /// Hex SHA-256 of the whole key text.
    pub sha256: String,
    /// Who the key acts for: the subject its requests are recorded under.
    pub owner: String,
    /// The owner's own token `sub`, where it differs from `owner` (the
    /// claim mapping reads the subject elsewhere): what the control plane
    /// compares to refuse the owner approving their own key's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_sub: Option<String>,
    /// The groups the key's requests have, in place of the owner's.
    pub groups: Vec<String>,
    /// Model patterns the key is limited to; empty: whatever its groups allow.
    #[serde(default)]
    pub models: Vec<String>,
    /// Seconds since the epoch after which the key is refused.
    pub expires_at: u64,
}

/// One live key, compiled.
#[derive(Debug)]
pub struct MachineKey {
    pub id: String,
    pub owner: String,
    owner_sub: Option<String>,
    pub groups: Vec<String>,
    models: Vec<WildMatch>,
    pub expires_at: u64,
}

impl MachineKey {
    /// Whether the key may be used for `model` (any, when it is not narrowed).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m.matches(model))
    }
}

/// The live keys of one policy answer, by the SHA-256 of the key.
#[derive(Debug, Default)]
pub struct MachineKeys {
    by_hash: HashMap<[u8; 32], MachineKey>,
    /// The hash of each id, for [`MachineKeys::of_identity`].
    hash_of_id: HashMap<String, [u8; 32]>,
}

/// Whether `token` is shaped like a machine key (and so is never read as a JWT).
pub fn is_machine_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// The id in a key's text (`wdk_<id>_<secret>`), if it has that shape.
pub fn id_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some(id)
}

fn clean(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_FIELD_BYTES && !s.chars().any(char::is_control)
}

impl MachineKeys {
    /// Compiles the keys of one answer; any malformed entry refuses them all
    /// (an answer the gateway cannot fully read is not partly believed).
    pub fn compile(docs: Vec<MachineKeyDoc>) -> Result<Self, String> {
        if docs.len() > MAX_KEYS {
            return Err(format!(
                "{} machine keys, more than the {MAX_KEYS} a gateway takes",
                docs.len()
            ));
        }
        let mut by_hash = HashMap::with_capacity(docs.len());
        let mut hash_of_id = HashMap::with_capacity(docs.len());
        for doc in docs {
            let bad = |what: &str| format!("machine key '{}': {what}", doc.id.escape_debug());
            if !clean(&doc.id) || !doc.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad("the id must be letters and digits"));
            }
            if !clean(&doc.owner) || doc.owner_sub.as_deref().is_some_and(|s| !clean(s)) {
                return Err(bad("the owner must be a short printable name"));
            }
            if doc.groups.len() > MAX_LIST || doc.models.len() > MAX_LIST {
                return Err(bad("too many groups or models"));
            }
            if !doc.groups.iter().chain(&doc.models).all(|g| clean(g)) {
                return Err(bad("groups and models must be short printable names"));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&doc.sha256, &mut hash)
                .map_err(|_| bad("sha256 must be 64 hex digits"))?;
            if hash_of_id.insert(doc.id.clone(), hash).is_some() {
                return Err(bad("two machine keys have this id"));
            }
            let key = MachineKey {
                id: doc.id,
                owner: doc.owner,
                owner_sub: doc.owner_sub,
                groups: doc.groups,
                models: doc.models.iter().map(|m| WildMatch::new(m)).collect(),
                expires_at: doc.expires_at,
            };
            if by_hash.insert(hash, key).is_some() {
                return Err("two machine keys have the same hash".into());
            }
        }
        Ok(Self {
            by_hash,
            hash_of_id,
        })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The identity `key` proves at `now` (seconds since the epoch): the
    /// owner, with the key's groups. A key not served (never issued, revoked,
    /// or not reached this gateway yet) and an expired one are refused.
    pub fn verify(&self, key: &str, now: u64) -> Result<Identity, AuthError> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let found = self.by_hash.get(&hash).ok_or(AuthError::UnknownMachineKey)?;
        if now >= found.expires_at {
            return Err(AuthError::Expired);
        }
        Ok(Identity {
            issuer: format!("{ISSUER_PREFIX}{}", found.id),
            subject: found.owner.clone(),
            token_subject: Some(found.owner_sub.as_ref().unwrap_or(&found.owner).clone()),
            email: None,
            groups: found.groups.clone(),
            expires_at: found.expires_at,
        })
    }

    /// The key behind an identity [`MachineKeys::verify`] made, if it is one.
    pub fn of_identity(&self, identity: &Identity) -> Option<&MachineKey> {
        let id = identity.issuer.strip_prefix(ISSUER_PREFIX)?;
        self.by_hash.get(self.hash_of_id.get(id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn doc(id: &str, key: &str) -> MachineKeyDoc {
        MachineKeyDoc {
            id: id.into(),
            sha256: hex::encode(Sha256::digest(key.as_bytes())),
            owner: "svc-nightly".into(),
            owner_sub: None,
            groups: vec!["eng".into()],
            models: vec!["gpt-4o*".into()],
            expires_at: 2_000,
        }
    }

    #[test]
    fn a_served_key_proves_its_owner_with_its_own_groups_until_it_expires() {
        let keys = MachineKeys::compile(vec![doc("a1", "wdk_a1_secret")]).unwrap();
        let who = keys.verify("wdk_a1_secret", 1_999).unwrap();
        assert_eq!(who.issuer, "warden:key:a1");
        assert_eq!(who.subject, "svc-nightly");
        assert_eq!(who.token_subject.as_deref(), Some("svc-nightly"));
        assert_eq!(who.groups, ["eng"]);
        assert_eq!(keys.verify("wdk_a1_secret", 2_000), Err(AuthError::Expired));
        assert_eq!(
            keys.verify("wdk_a1_secreT", 1),
            Err(AuthError::UnknownMachineKey)
        );
        let key = keys.of_identity(&who).unwrap();
        assert!(key.allows_model("gpt-4o-mini"));
        assert!(!key.allows_model("claude-3"));
    }

    #[test]
    fn an_answer_with_any_malformed_key_is_refused_whole() {
        let mut short_hash = doc("a1", "k");
        short_hash.sha256.pop();
        let mut bad_id = doc("a-1", "k");
        bad_id.id = "a\n1".into();
        let mut control = doc("a2", "k2");
        control.groups = vec!["eng\u{7}".into()];
        for bad in [short_hash, bad_id, control] {
            assert!(MachineKeys::compile(vec![doc("ok", "wdk_ok_x"), bad]).is_err());
        }
        assert!(MachineKeys::compile(vec![doc("a", "same"), doc("b", "same")]).is_err());
        assert!(MachineKeys::compile(vec![doc("a", "one"), doc("a", "two")]).is_err());
    }

    #[test]
    fn a_key_is_told_from_a_jwt_by_its_prefix_and_names_its_id() {
        assert!(is_machine_key("wdk_a1_s"));
        assert!(!is_machine_key("eyJhbGciOi.x.y"));
        assert_eq!(id_of("wdk_a1_s3cr3t"), Some("a1"));
        assert_eq!(id_of("wdk__s"), None);
        assert_eq!(id_of("wdk_a1_"), None);
        assert_eq!(id_of("jwt"), None);
    }
}
