//! Rewriting a found value: the actions a rule can take on text, and the
//! per-request vault that makes `tokenize` reversible.
//!
//! Every edit replaces a span of the *decoded* string with something that
//! carries no trace of the value: a typed placeholder, nothing, a keyed
//! pseudonym, or a numbered token that only this request's memory can map
//! back. Nothing here logs or returns the value itself.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// What a rule does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `[EMAIL]`
    Mask,
    /// removed
    Redact,
    /// `[EMAIL:1a2b3c4d]`: stable for the same value and key, irreversible.
    Hash,
    /// `<EMAIL_1>` in the prompt, the value put back in the response.
    Tokenize,
    /// The whole request (or response) is refused.
    Block,
    /// Held for a human's decision (the control plane's approvals).
    RequireApproval,
    /// Recorded, nothing changed.
    LogOnly,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Mask => "mask",
            Action::Redact => "redact",
            Action::Hash => "hash",
            Action::Tokenize => "tokenize",
            Action::Block => "block",
            Action::RequireApproval => "require_approval",
            Action::LogOnly => "log_only",
        }
    }

    /// Where the action stands when several rules matched.
    pub fn precedence(self) -> Precedence {
        match self {
            Action::Block => Precedence::Block,
            Action::RequireApproval => Precedence::RequireApproval,
            Action::Mask | Action::Redact | Action::Hash | Action::Tokenize => Precedence::Rewrite,
            Action::LogOnly => Precedence::Log,
        }
    }

    /// Whether the action edits the text (the others decide about the
    /// whole message, or only record).
    pub fn rewrites(self) -> bool {
        self.precedence() == Precedence::Rewrite
    }

    /// Whether the action decides about the whole message: refused, or held
    /// for a human's decision.
    pub fn stops(self) -> bool {
        self.precedence() >= Precedence::RequireApproval
    }
}

/// The fixed order in which actions prevail when several rules match one
/// message, whatever the rules' names or their order in the policy: a block
/// over an approval (so a value a block rule matched is never sent for
/// approval), an approval over rewrites, rewrites over logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precedence {
    Log,
    Rewrite,
    RequireApproval,
    Block,
}

/// One edit of a string: replace `start..end` (byte offsets, on char
/// boundaries) according to `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub action: Action,
    pub label: String,
}

/// The key behind `hash` pseudonyms. Configured per deployment so that
/// pseudonyms cannot be precomputed: a key anyone could derive (from the
/// configuration, say) would let them hash every customer id and read the
/// pseudonyms back, so without one there is no key, and a policy that hashes
/// is refused ([`crate::config::FilterConfig::admit`]).
#[derive(Clone)]
pub struct HashKey(Option<Vec<u8>>);

impl HashKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Some(bytes))
    }

    /// No key configured.
    pub fn unset() -> Self {
        Self(None)
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// `[LABEL:hex]`. Without a key (a policy that hashes is refused before
    /// it runs, so only by mistake) the value is masked, `[LABEL]`.
    pub fn pseudonym(&self, label: &str, value: &str) -> String {
        let Some(key) = &self.0 else {
            return format!("[{label}]");
        };
        let digest = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(label.as_bytes());
                mac.update(&[0]);
                mac.update(value.as_bytes());
                mac.finalize().into_bytes()
            }
            // HMAC takes keys of any length; this arm is unreachable in practice.
            Err(_) => Default::default(),
        };
        let hex = hex::encode(digest.get(..6).unwrap_or(digest.as_slice()));
        format!("[{label}:{hex}]")
    }
}

impl HashKey {
    /// The key's MAC of `parts` (each ended by a zero byte) under `domain`,
    /// so no use of the key can stand in for another; `None` without a key.
    fn mac(&self, domain: &str, parts: &[&str]) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_ref()?).ok()?;
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        Some(mac)
    }

    /// A 16-byte tag of `parts` under `domain` (see [`HashKey::verify_tag`]).
    pub fn tag(&self, domain: &str, parts: &[&str]) -> Option<Vec<u8>> {
        let digest = self.mac(domain, parts)?.finalize().into_bytes();
        digest.get(..16).map(<[u8]>::to_vec)
    }

    /// Whether `tag` is [`HashKey::tag`] of these parts, compared in constant
    /// time.
    pub fn verify_tag(&self, domain: &str, parts: &[&str], tag: &[u8]) -> bool {
        tag.len() == 16
            && self
                .mac(domain, parts)
                .is_some_and(|mac| mac.verify_truncated_left(tag).is_ok())
    }
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey([redacted])")
    }
}

/// The per-request map between tokenized values and their placeholders.
/// It lives only in the request's memory and is dropped with it.
#[derive(Default)]
pub struct Vault {
    by_value: HashMap<(String, String), String>,
    by_token: HashMap<String, String>,
    counters: HashMap<String, usize>,
    longest_token: usize,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("entries", &self.by_token.len())
            .finish()
    }
}

impl Vault {
    /// The placeholder for `value` (the same one each time it recurs).
    pub fn token_for(&mut self, label: &str, value: &str) -> String {
        let key = (label.to_owned(), value.to_owned());
        if let Some(t) = self.by_value.get(&key) {
            return t.clone();
        }
        let n = self.counters.entry(label.to_owned()).or_insert(0);
        *n += 1;
        let token = format!("<{label}_{n}>");
        self.longest_token = self.longest_token.max(token.len());
        self.by_token.insert(token.clone(), value.to_owned());
        self.by_value.insert(key, token.clone());
        token
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// `text` with every known placeholder replaced by its value.
    pub fn restore(&self, text: &str) -> String {
        if self.by_token.is_empty() || !text.contains('<') {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        // `<` and `>` are ASCII: the splits below are on char boundaries.
        while let Some((before, candidate)) = rest.find('<').and_then(|o| rest.split_at_checked(o))
        {
            out.push_str(before);
            let close = candidate.find('>').filter(|c| *c < self.longest_token);
            let token = close.and_then(|c| candidate.split_at_checked(c + 1));
            match token.and_then(|(t, after)| self.by_token.get(t).map(|v| (v, after))) {
                Some((value, after)) => {
                    out.push_str(value);
                    rest = after;
                }
                None => {
                    out.push('<');
                    rest = candidate.strip_prefix('<').unwrap_or_default();
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// For streams: where the unfinished tail of `text` could still be the
    /// start of a placeholder split across events; emit only before it.
    pub fn holdback_start(&self, text: &str) -> Option<usize> {
        if self.by_token.is_empty() {
            return None;
        }
        let from = text
            .len()
            .saturating_sub(self.longest_token.saturating_sub(1));
        let open = text.rfind('<').filter(|o| *o >= from)?;
        let tail = text.get(open + 1..).unwrap_or_default();
        let could_be_token = tail
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        could_be_token.then_some(open)
    }
}

/// Applies `edits` (sorted by start, not overlapping) to `text`.
pub fn apply(text: &str, edits: &[Edit], vault: &mut Vault, key: &HashKey) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for e in edits {
        // Overlapping, out of range or off a char boundary: skipped.
        let (Some(before), Some(value)) = (text.get(at..e.start), text.get(e.start..e.end)) else {
            continue;
        };
        out.push_str(before);
        match e.action {
            Action::Mask => {
                out.push('[');
                out.push_str(&e.label);
                out.push(']');
            }
            Action::Redact => {}
            Action::Hash => out.push_str(&key.pseudonym(&e.label, value)),
            Action::Tokenize => out.push_str(&vault.token_for(&e.label, value)),
            Action::Block | Action::RequireApproval | Action::LogOnly => out.push_str(value),
        }
        at = e.end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn edit(start: usize, end: usize, action: Action) -> Edit {
        Edit {
            start,
            end,
            action,
            label: "EMAIL".into(),
        }
    }

    #[test]
    fn each_action_rewrites_the_span_and_only_it() {
        let text = "mail bob@example.com now";
        let (s, e) = (5, 20);
        let key = HashKey::new(b"k".to_vec());
        let mut vault = Vault::default();
        assert_eq!(
            apply(text, &[edit(s, e, Action::Mask)], &mut vault, &key),
            "mail [EMAIL] now"
        );
        assert_eq!(
            apply(text, &[edit(s, e, Action::Redact)], &mut vault, &key),
            "mail  now"
        );
        assert_eq!(
            apply(text, &[edit(s, e, Action::LogOnly)], &mut vault, &key),
            text
        );
        let hashed = apply(text, &[edit(s, e, Action::Hash)], &mut vault, &key);
        assert!(
            hashed.starts_with("mail [EMAIL:") && !hashed.contains("bob"),
            "{hashed}"
        );
        assert_eq!(
            hashed,
            apply(text, &[edit(s, e, Action::Hash)], &mut vault, &key),
            "not stable"
        );
        let other_key = apply(
            text,
            &[edit(s, e, Action::Hash)],
            &mut vault,
            &HashKey::new(b"other".to_vec()),
        );
        assert_ne!(hashed, other_key, "the key must matter");
        assert_eq!(
            apply(text, &[edit(s, e, Action::Tokenize)], &mut vault, &key),
            "mail <EMAIL_1> now"
        );
    }

    #[test]
    fn tokens_are_stable_per_value_and_restore() {
        let mut vault = Vault::default();
        assert_eq!(vault.token_for("EMAIL", "a@x.io"), "<EMAIL_1>");
        assert_eq!(vault.token_for("EMAIL", "b@x.io"), "<EMAIL_2>");
        assert_eq!(vault.token_for("EMAIL", "a@x.io"), "<EMAIL_1>");
        assert_eq!(vault.token_for("PHONE", "+1 415"), "<PHONE_1>");
        assert_eq!(
            vault.restore("to <EMAIL_2> and <EMAIL_1>, <EMAIL_9> <x"),
            "to b@x.io and a@x.io, <EMAIL_9> <x"
        );
        assert_eq!(Vault::default().restore("<EMAIL_1>"), "<EMAIL_1>");
    }

    #[test]
    fn holdback_covers_a_split_placeholder_only() {
        let mut vault = Vault::default();
        vault.token_for("EMAIL", "a@x.io");
        assert_eq!(vault.holdback_start("write to <EMA"), Some(9));
        assert_eq!(vault.holdback_start("write to <"), Some(9));
        assert_eq!(vault.holdback_start("write to <EMAIL_1>"), None);
        assert_eq!(vault.holdback_start("a < b and c"), None);
        assert_eq!(Vault::default().holdback_start("x <EMA"), None);
    }

    #[test]
    fn overlapping_or_bad_edits_are_skipped_not_panicking() {
        let mut vault = Vault::default();
        let key = HashKey::new(vec![]);
        let text = "é abc";
        let edits = [
            edit(1, 3, Action::Mask),
            edit(3, 6, Action::Mask),
            edit(2, 4, Action::Mask),
            edit(5, 99, Action::Mask),
        ];
        assert_eq!(apply(text, &edits, &mut vault, &key), "é [EMAIL]");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let mut vault = Vault::default();
        vault.token_for("EMAIL", "secret@x.io");
        assert!(!format!("{vault:?}").contains("secret"));
        assert!(!format!("{:?}", HashKey::new(b"hunter2".to_vec())).contains("hunter2"));
    }
}
