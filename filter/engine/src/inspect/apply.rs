//! The policy applied to what crosses the gateway: a JSON request body, a
//! JSON response body, or a response stream (as a [`StreamText`]).
//!
//! Order matters in responses: text is scanned as the provider sent it (with
//! placeholders such as `<EMAIL_1>`), and only then are tokenized values put
//! back, so that restoring a user's own value never trips a response rule.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde_json::Value;

use super::body::{each_request_text, each_response_text, parse_strict, Shape};
use super::mask::{apply, Action, Edit, HashKey, Vault};
use super::sse::{Channel, StreamBlock, StreamText};
use crate::policy::{ActiveRules, Direction, Hit, Policy};

/// What the rules found and did, by rule name: for the audit record and the
/// metrics. Names and counts only, never values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub rules: BTreeMap<String, RuleCount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCount {
    pub action: Action,
    pub observe: bool,
    pub count: usize,
}

impl Outcome {
    fn record(&mut self, policy: &Policy, hit: &Hit) {
        let Some(rule) = policy.rules.get(hit.rule) else {
            return;
        };
        let entry = self.rules.entry(rule.name.clone()).or_insert(RuleCount {
            action: hit.action,
            observe: hit.observe,
            count: 0,
        });
        entry.count += 1;
    }

    /// The first enforced hit that stops the message, if any.
    pub fn stop(&self) -> Option<(String, Action)> {
        self.rules
            .iter()
            .find(|(_, c)| {
                !c.observe && matches!(c.action, Action::Block | Action::RequireApproval)
            })
            .map(|(name, c)| (name.clone(), c.action))
    }

    /// Whether anything was rewritten.
    pub fn rewrote(&self) -> bool {
        self.rules
            .values()
            .any(|c| !c.observe && c.action.rewrites())
    }

    /// `rule:action:count` entries, comma-separated, for the access log.
    pub fn summary(&self) -> String {
        self.rules
            .iter()
            .map(|(name, c)| {
                let mode = if c.observe { "observe:" } else { "" };
                format!("{name}:{mode}{}:{}", c.action.name(), c.count)
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Why a body could not be inspected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not valid JSON ({0})")]
    NotJson(String),
}

/// The result of inspecting one JSON body.
#[derive(Debug)]
pub struct Inspected {
    /// The rewritten body, when anything changed.
    pub body: Option<Vec<u8>>,
    pub outcome: Outcome,
}

/// Applies the active rules to a JSON body. In requests, `tokenize` fills
/// the vault; in responses, the vault's values are put back.
pub fn inspect_json(
    policy: &Policy,
    active: &ActiveRules,
    direction: Direction,
    shape: Shape,
    body: &[u8],
    vault: &mut Vault,
    key: &HashKey,
) -> Result<Inspected, BodyError> {
    let mut doc: Value = parse_strict(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    let (outcome, changed) = inspect_value(policy, active, direction, shape, &mut doc, vault, key);
    let body = if changed {
        serde_json::to_vec(&doc).ok()
    } else {
        None
    };
    Ok(Inspected { body, outcome })
}

/// [`inspect_json`] on a document already parsed; returns what was found and
/// whether the document changed.
pub fn inspect_value(
    policy: &Policy,
    active: &ActiveRules,
    direction: Direction,
    shape: Shape,
    doc: &mut Value,
    vault: &mut Vault,
    key: &HashKey,
) -> (Outcome, bool) {
    let mut outcome = Outcome::default();
    let mut changed = false;
    let restore = direction == Direction::Response && !vault.is_empty();
    let mut visit = |s: &mut String| {
        let (edits, hits) = policy.scan(active, s);
        for hit in &hits {
            outcome.record(policy, hit);
        }
        let mut text = if edits.is_empty() {
            None
        } else {
            Some(apply(s, &edits, vault, key))
        };
        if restore {
            let restored = vault.restore(text.as_deref().unwrap_or(s));
            if restored != *s {
                text = Some(restored);
            }
        }
        if let Some(t) = text {
            *s = t;
            changed = true;
        }
    };
    match direction {
        Direction::Request => each_request_text(shape, doc, &mut visit),
        Direction::Response => each_response_text(shape, doc, &mut visit),
    }
    (outcome, changed)
}

/// The masking engine as a stream transformer: per channel, it holds back only
/// the tail that could still become a match (or a split placeholder), scans
/// and rewrites the rest, and puts tokenized values back.
pub struct MaskingStream {
    policy: Rc<Policy>,
    active: ActiveRules,
    vault: Vault,
    key: HashKey,
    pending: HashMap<Channel, String>,
    pub outcome: Outcome,
}

impl MaskingStream {
    pub fn new(policy: Rc<Policy>, active: ActiveRules, vault: Vault, key: HashKey) -> Self {
        Self {
            policy,
            active,
            vault,
            key,
            pending: HashMap::new(),
            outcome: Outcome::default(),
        }
    }

    /// Rewrites `text[..cut]` (edits wholly inside it) and records its hits.
    fn emit(
        &mut self,
        text: &str,
        cut: usize,
        edits: &[Edit],
        hits: &[Hit],
    ) -> Result<String, StreamBlock> {
        for hit in hits.iter().filter(|h| h.end <= cut) {
            self.outcome.record(&self.policy, hit);
        }
        if let Some((rule, action)) = self.outcome.stop() {
            let message = match action {
                Action::RequireApproval => {
                    format!("the response needs an approval under rule '{rule}'")
                }
                _ => format!("the response was blocked by rule '{rule}'"),
            };
            return Err(StreamBlock::new(rule, message));
        }
        let inside: Vec<Edit> = edits.iter().filter(|e| e.end <= cut).cloned().collect();
        let rewritten = apply(&text[..cut], &inside, &mut self.vault, &self.key);
        Ok(self.vault.restore(&rewritten))
    }
}

impl StreamText for MaskingStream {
    fn push(&mut self, channel: &Channel, text: &str) -> Result<String, StreamBlock> {
        let mut buf = self.pending.remove(channel).unwrap_or_default();
        buf.push_str(text);
        let mut cut = buf.len();
        if !self.active.is_empty() {
            if let Some(h) = self.policy.detectors().holdback_start(&buf) {
                cut = cut.min(h);
            }
        }
        if let Some(h) = self.vault.holdback_start(&buf) {
            cut = cut.min(h);
        }
        let (edits, hits) = self.policy.scan(&self.active, &buf);
        // A match that straddles the cut is held back whole.
        for hit in &hits {
            if hit.start < cut && hit.end > cut {
                cut = hit.start;
            }
        }
        while !buf.is_char_boundary(cut) {
            cut -= 1;
        }
        let out = self.emit(&buf, cut, &edits, &hits)?;
        self.pending.insert(*channel, buf[cut..].to_owned());
        Ok(out)
    }

    fn finish(&mut self, channel: &Channel) -> Result<String, StreamBlock> {
        let buf = self.pending.remove(channel).unwrap_or_default();
        let (edits, hits) = self.policy.scan(&self.active, &buf);
        self.emit(&buf, buf.len(), &edits, &hits)
    }
}

/// A [`MaskingStream`] that its owner keeps a handle on (to read the outcome
/// once the stream ends) while a stream rewriter drives it.
#[derive(Clone)]
pub struct SharedMasking(pub Rc<RefCell<MaskingStream>>);

impl SharedMasking {
    pub fn new(stream: MaskingStream) -> Self {
        Self(Rc::new(RefCell::new(stream)))
    }

    pub fn outcome(&self) -> Outcome {
        self.0.borrow().outcome.clone()
    }
}

impl StreamText for SharedMasking {
    fn push(&mut self, channel: &Channel, text: &str) -> Result<String, StreamBlock> {
        self.0.borrow_mut().push(channel, text)
    }

    fn finish(&mut self, channel: &Channel) -> Result<String, StreamBlock> {
        self.0.borrow_mut().finish(channel)
    }
}
