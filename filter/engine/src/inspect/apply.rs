//! The policy applied to what crosses the gateway: a JSON request body, a
//! JSON response body, or a response stream (as a [`StreamText`]).
//!
//! Order matters in responses: text is scanned as the provider sent it (with
//! placeholders such as `<EMAIL_1>`), and only then are tokenized values put
//! back, so that restoring a user's own value never trips a response rule.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde_json::Value;

use super::body::{each_part_group, each_text, each_text_outside_groups, parse_strict, to_json};
use super::mask::{apply, Action, Edit, HashKey, Vault};
use super::sse::{Channel, ChannelKind, StreamApi, StreamBlock, StreamText};
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
    /// Adds another pass's findings (the response's to the request's).
    pub fn merge(&mut self, other: Outcome) {
        for (name, count) in other.rules {
            self.rules
                .entry(name)
                .and_modify(|c| c.count += count.count)
                .or_insert(count);
        }
    }

    pub(crate) fn record(&mut self, policy: &Policy, hit: &Hit) {
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

    /// The enforced hit that stops the message, if any: the one whose action
    /// prevails ([`Action::precedence`]: a block over an approval, whatever
    /// the rules' names); of rules with the same action, the first by name.
    pub fn stop(&self) -> Option<(String, Action)> {
        self.rules
            .iter()
            .filter(|(_, c)| !c.observe && c.action.stops())
            .max_by_key(|(name, c)| (c.action.precedence(), Reverse(*name)))
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
    #[error("the body is not UTF-8 text ({0})")]
    NotText(String),
}

/// The result of inspecting one body.
#[derive(Debug)]
pub struct Inspected {
    /// The rewritten body, when anything changed.
    pub body: Option<Vec<u8>>,
    pub outcome: Outcome,
    /// The provider's `usage` object (token counts), for the audit record.
    pub usage: Option<Value>,
    /// When asked for: the document after masking and before tokenized
    /// values were put back, which is what a recorded session may keep.
    pub recorded: Option<Value>,
}

/// Applies the active rules to a JSON body. In requests, `tokenize` fills
/// the vault; in responses, the vault's values are put back. With `record`,
/// the masked document is kept for the session record.
#[allow(clippy::too_many_arguments)]
pub fn inspect_json(
    policy: &Policy,
    active: &ActiveRules,
    direction: Direction,
    body: &[u8],
    vault: &mut Vault,
    key: &HashKey,
    record: bool,
) -> Result<Inspected, BodyError> {
    inspect_json_then(
        policy,
        active,
        direction,
        body,
        vault,
        key,
        record,
        &mut |_| false,
    )
}

/// [`inspect_json`], then `then` on the document as the client would get
/// it (masked, tokenized values put back): another pass of the policy
/// (the tool calls of an answer) on the same parse; it says whether it
/// changed the document.
#[allow(clippy::too_many_arguments)]
pub fn inspect_json_then(
    policy: &Policy,
    active: &ActiveRules,
    direction: Direction,
    body: &[u8],
    vault: &mut Vault,
    key: &HashKey,
    record: bool,
    then: &mut dyn FnMut(&mut Value) -> bool,
) -> Result<Inspected, BodyError> {
    let doc: Value = parse_strict(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    Ok(inspect_doc(
        policy, active, direction, doc, vault, key, record, to_json, then,
    ))
}

/// As [`inspect_json`], for a body that is one text (a `text/*` answer):
/// the whole body is read as one string.
#[allow(clippy::too_many_arguments)]
pub fn inspect_text(
    policy: &Policy,
    active: &ActiveRules,
    direction: Direction,
    body: &[u8],
    vault: &mut Vault,
    key: &HashKey,
    record: bool,
) -> Result<Inspected, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::NotText(e.to_string()))?;
    let doc = Value::String(text.to_owned());
    let write = |doc: &Value| doc.as_str().unwrap_or_default().as_bytes().to_vec();
    Ok(inspect_doc(
        policy,
        active,
        direction,
        doc,
        vault,
        key,
        record,
        write,
        &mut |_| false,
    ))
}

#[allow(clippy::too_many_arguments)]
fn inspect_doc(
    policy: &Policy,
    active: &ActiveRules,
    direction: Direction,
    mut doc: Value,
    vault: &mut Vault,
    key: &HashKey,
    record: bool,
    write: impl Fn(&Value) -> Vec<u8>,
    then: &mut dyn FnMut(&mut Value) -> bool,
) -> Inspected {
    let (outcome, masked) = mask_value(policy, active, &mut doc, vault, key);
    let restoring = direction == Direction::Response && !vault.is_empty();
    // Only values about to be put back make the record differ from the
    // document sent: a copy then, else the document itself once written.
    let masked_copy = (record && restoring).then(|| doc.clone());
    let restored = restoring && restore_value(&mut doc, vault);
    let changed_after = then(&mut doc);
    let body = (masked || restored || changed_after).then(|| write(&doc));
    let usage = doc.get("usage").filter(|u| u.is_object()).cloned();
    let recorded = record.then(|| masked_copy.unwrap_or(doc));
    Inspected {
        body,
        outcome,
        usage,
        recorded,
    }
}

/// [`inspect_json`] on a document already parsed; returns what was found and
/// whether the document changed.
pub fn inspect_value(
    policy: &Policy,
    active: &ActiveRules,
    direction: Direction,
    doc: &mut Value,
    vault: &mut Vault,
    key: &HashKey,
) -> (Outcome, bool) {
    let (outcome, masked) = mask_value(policy, active, doc, vault, key);
    let restored = direction == Direction::Response && restore_value(doc, vault);
    (outcome, masked || restored)
}

/// The rules' pass over a document for people to read (an approver):
/// every value a rule catches replaced (a tokenized one by its
/// placeholder, into a vault thrown away), nothing put back.
pub fn mask_for_display(policy: &Policy, active: &ActiveRules, doc: &mut Value, key: &HashKey) {
    let _ = mask_value(policy, active, doc, &mut Vault::default(), key);
}

/// The rules' pass over a document's texts: what was found, and whether
/// anything was rewritten. The parts of one message are scanned joined
/// ([`each_part_group`]), every other string alone.
fn mask_value(
    policy: &Policy,
    active: &ActiveRules,
    doc: &mut Value,
    vault: &mut Vault,
    key: &HashKey,
) -> (Outcome, bool) {
    let mut outcome = Outcome::default();
    let parts_changed = each_part_group(doc, &mut |parts| {
        mask_parts(policy, active, parts, vault, key, &mut outcome)
    });
    // A text of its own is a message of one part: one scan-and-rescan.
    let changed = each_text_outside_groups(doc, &mut |s: &mut String| {
        mask_parts(policy, active, &mut [s], vault, key, &mut outcome)
    });
    (outcome, changed | parts_changed)
}

/// How many times a body's rewritten text is scanned again. A value is
/// judged with its neighbours as context (a phone number glued to the end
/// of an email address is part of a word); once a neighbour became a
/// placeholder, the value stands alone and is judged again, so that
/// rewriting the output a second time changes nothing. One rescan settles
/// what masking exposed; the second is for a chain of such values. Only a
/// text where a masked value touched a neighbour is scanned again
/// ([`touches_a_neighbour`]): the rest, nearly every text, once.
const RESCANS: usize = 2;

/// Whether a masked value was glued to a character of its neighbours (not
/// a space or a delimiter of JSON, prose or markup): only then can its
/// placeholder set free a value the scan took for part of a word
/// (`bob@example.com+14155552671`). Scanning every masked text again would
/// cost 40% more on an 8 KB request with values in it.
fn touches_a_neighbour(text: &str, edits: &[Edit]) -> bool {
    let joins = |c: char| !c.is_whitespace() && !"\"'`,;()[]{}<>".contains(c);
    edits.iter().any(|e| {
        let mut after = text.get(e.end..).unwrap_or_default().chars();
        // A sentence's end (`4111 1111 1111 1111. Next`) frees nothing: the
        // next value starts after the space, which stays.
        let joined_after = match after.next() {
            Some('.' | '!' | '?' | ':') => after.next().is_some_and(joins),
            c => c.is_some_and(joins),
        };
        joined_after
            || text
                .get(..e.start)
                .and_then(|s| s.chars().next_back())
                .is_some_and(joins)
    })
}

/// What one scan of a text found, by rule and value, to tell what a rescan
/// of the rewritten text finds anew: the values no rule rewrote are found
/// again (at other offsets) and must not be counted twice.
#[derive(Default)]
struct Seen(HashMap<(usize, String), usize>);

impl Seen {
    /// Records in `outcome` the hits that the previous scan did not have,
    /// then remembers this scan's when `again` (a rescan follows): a text
    /// scanned once keeps no copy of what was found in it.
    fn record_new(
        &mut self,
        policy: &Policy,
        text: &str,
        hits: &[Hit],
        outcome: &mut Outcome,
        again: bool,
    ) {
        if !again && self.0.is_empty() {
            for hit in hits {
                outcome.record(policy, hit);
            }
            return;
        }
        let mut now: HashMap<(usize, String), usize> = HashMap::new();
        for hit in hits {
            let value = text.get(hit.start..hit.end).unwrap_or_default().to_owned();
            let key = (hit.rule, value);
            match self.0.get_mut(&key) {
                Some(n) if *n > 0 => *n -= 1,
                _ => outcome.record(policy, hit),
            }
            *now.entry(key).or_default() += 1;
        }
        self.0 = now;
    }
}

/// Scans the parts of one message as the model reads them, joined, so a
/// value split across parts (`AKIA…` in one, the rest in the next) is
/// found whole, and rewrites them (again, as [`RESCANS`] says, while a scan
/// finds more). Whether any part changed.
fn mask_parts(
    policy: &Policy,
    active: &ActiveRules,
    parts: &mut [&mut String],
    vault: &mut Vault,
    key: &HashKey,
    outcome: &mut Outcome,
) -> bool {
    let mut seen = Seen::default();
    let mut changed = false;
    for _ in 0..=RESCANS {
        let (rewritten, again) =
            mask_parts_once(policy, active, parts, vault, key, outcome, &mut seen);
        changed |= rewritten;
        if !(rewritten && again) {
            break;
        }
    }
    changed
}

/// One scan of the joined parts. A match's replacement goes in the part
/// where it starts and the rest of it is cut from the parts it spans: no
/// part keeps a piece of it. Whether any part changed, and whether a
/// masked value touched a neighbour (see [`touches_a_neighbour`]).
fn mask_parts_once(
    policy: &Policy,
    active: &ActiveRules,
    parts: &mut [&mut String],
    vault: &mut Vault,
    key: &HashKey,
    outcome: &mut Outcome,
    seen: &mut Seen,
) -> (bool, bool) {
    let mut joined = String::new();
    let mut ends = Vec::with_capacity(parts.len());
    for part in parts.iter() {
        joined.push_str(part);
        ends.push(joined.len());
    }
    let (edits, hits) = policy.scan(active, &joined);
    let again = touches_a_neighbour(&joined, &edits);
    seen.record_new(policy, &joined, &hits, outcome, again);
    if edits.is_empty() {
        return (false, false);
    }
    let replacements: Vec<String> = edits
        .iter()
        .map(|e| {
            let value = joined.get(e.start..e.end).unwrap_or_default();
            let whole = Edit {
                start: 0,
                end: value.len(),
                action: e.action,
                label: e.label.clone(),
            };
            apply(value, &[whole], vault, key)
        })
        .collect();
    // Each part is `joined[start..end]`; edits are sorted and disjoint, and
    // every offset is a char boundary (a part's end or a match's).
    let mut start = 0;
    for (part, &end) in parts.iter_mut().zip(&ends) {
        let mut out = String::with_capacity(end.saturating_sub(start));
        let mut at = start;
        for (edit, replacement) in edits.iter().zip(&replacements) {
            if edit.end <= start || edit.start >= end {
                continue;
            }
            out.push_str(joined.get(at..edit.start.max(start)).unwrap_or_default());
            if edit.start >= start {
                out.push_str(replacement);
            }
            at = edit.end.min(end);
        }
        out.push_str(joined.get(at..end).unwrap_or_default());
        **part = out;
        start = end;
    }
    (true, again)
}

/// Puts tokenized values back into a response's texts (after the rules ran
/// on them); whether anything changed.
fn restore_value(doc: &mut Value, vault: &Vault) -> bool {
    if vault.is_empty() {
        return false;
    }
    each_text(doc, &mut |s: &mut String| {
        let restored = vault.restore(s);
        if restored == *s {
            return false;
        }
        *s = restored;
        true
    })
}

/// The masking engine as a stream transformer: per channel, it holds back only
/// the tail that could still become a match (or a split placeholder), scans
/// and rewrites the rest, and puts tokenized values back.
///
/// Streamed and whole, a text is masked alike: each scan also sees, as left
/// context, the end of the channel's text already released
/// ([`DetectorSet::lookbehind_start`](super::detect::DetectorSet::lookbehind_start)),
/// so a value glued to what came before it in an earlier event is judged as
/// it is in the whole text.
pub struct MaskingStream {
    policy: Rc<Policy>,
    active: ActiveRules,
    vault: Vault,
    key: HashKey,
    pending: HashMap<Channel, Pending>,
    pub outcome: Outcome,
    /// With a session to record: the text as masked, before restoring.
    transcript: Option<Transcript>,
}

/// A channel's original text: the end of what was released (context for the
/// next scan) and what is held back.
#[derive(Debug, Default)]
struct Pending {
    released: String,
    held: String,
}

/// A stream's text per channel after masking and before tokenized values
/// were put back (what a recorded session may keep), up to a byte bound.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    pub channels: BTreeMap<Channel, String>,
    /// Whether text was left out at the bound.
    pub truncated: bool,
    limit: usize,
    bytes: usize,
}

impl Transcript {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    fn push(&mut self, channel: Channel, text: &str) {
        if text.is_empty() {
            return;
        }
        let take = floor_boundary(text, self.limit.saturating_sub(self.bytes));
        let kept = text.get(..take).unwrap_or_default();
        if kept.len() < text.len() {
            self.truncated = true;
        }
        if !kept.is_empty() {
            self.channels.entry(channel).or_default().push_str(kept);
            self.bytes += kept.len();
        }
    }

    /// The session record's `response` for a stream of `events` events.
    pub fn to_record(&self, api: StreamApi, events: u64) -> Value {
        let api = match api {
            StreamApi::OpenAiChat => "openai_chat",
            StreamApi::OpenAiCompletions => "openai_completions",
            StreamApi::OpenAiResponses => "openai_responses",
            StreamApi::Anthropic => "anthropic",
        };
        let channels: Vec<Value> = self
            .channels
            .iter()
            .map(|(channel, text)| {
                let kind = match channel.kind {
                    ChannelKind::Text => "text",
                    ChannelKind::ToolArguments => "tool_arguments",
                    ChannelKind::Refusal => "refusal",
                    ChannelKind::Reasoning => "reasoning",
                };
                serde_json::json!({"index": channel.index, "kind": kind, "text": text})
            })
            .collect();
        serde_json::json!({
            "stream": {"api": api, "events": events, "truncated": self.truncated},
            "channels": channels,
        })
    }
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
            transcript: None,
        }
    }

    /// Also keeps a [`Transcript`] of up to `limit` bytes for the session.
    #[must_use]
    pub fn with_transcript(mut self, limit: usize) -> Self {
        self.transcript = Some(Transcript::new(limit));
        self
    }

    /// Rewrites `head` (with the edits wholly inside it) and records its
    /// hits; the scan that found them may have seen text after it.
    /// Records what `head` matched, stops on a block, and rewrites it; the
    /// text joins `channel`'s transcript (none for a text outside channels).
    fn emit(
        &mut self,
        channel: Option<&Channel>,
        head: &str,
        edits: &[Edit],
        hits: &[Hit],
    ) -> Result<String, StreamBlock> {
        let cut = head.len();
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
        let rewritten = apply(head, &inside, &mut self.vault, &self.key);
        if let (Some(transcript), Some(channel)) = (self.transcript.as_mut(), channel) {
            transcript.push(*channel, &rewritten);
        }
        Ok(self.vault.restore(&rewritten))
    }

    /// The policy's scan of `held` with `released` before it as context:
    /// edits and hits in `held`'s offsets, those that end after the context.
    /// One that began inside the context (not expected: the holdback kept
    /// back any value that could still grow) is cut to the part not yet
    /// released, so nothing of it goes out in clear.
    fn scan_after(&self, released: &str, held: &str) -> (Vec<Edit>, Vec<Hit>) {
        if released.is_empty() {
            return self.policy.scan(&self.active, held);
        }
        let n = released.len();
        let joined = format!("{released}{held}");
        let (edits, hits) = self.policy.scan_after(&self.active, &joined, n);
        let shift =
            |start: usize, end: usize| (end > n).then(|| (start.saturating_sub(n), end - n));
        let edits = edits
            .into_iter()
            .filter_map(|e| {
                let (start, end) = shift(e.start, e.end)?;
                Some(Edit { start, end, ..e })
            })
            .collect();
        let hits = hits
            .into_iter()
            .filter_map(|h| {
                let (start, end) = shift(h.start, h.end)?;
                Some(Hit { start, end, ..h })
            })
            .collect();
        (edits, hits)
    }

    /// Keeps the end of `released` + `head` that the next scan needs.
    fn release(&self, mut released: String, head: &str) -> String {
        released.push_str(head);
        let from = self.policy.detectors().lookbehind_start(&released);
        released.split_off(floor_boundary(&released, from))
    }
}

impl StreamText for MaskingStream {
    fn push(&mut self, channel: &Channel, text: &str) -> Result<String, StreamBlock> {
        let Pending {
            released,
            held: mut buf,
        } = self.pending.remove(channel).unwrap_or_default();
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
        let (edits, hits) = self.scan_after(&released, &buf);
        // A match (or a rewrite) that straddles the cut is held back whole,
        // and so is one that text still to come could show to be no match
        // (what follows a value is part of its validation); moving the cut
        // back may make an overlapping one straddle it.
        let detectors = self.policy.detectors();
        let spans = || {
            hits.iter()
                .map(|h| (h.start, h.end))
                .chain(edits.iter().map(|e| (e.start, e.end)))
        };
        while let Some(start) = spans()
            .filter(|&(start, end)| start < cut && (end > cut || !detectors.settled(&buf, end)))
            .map(|(start, _)| start)
            .min()
        {
            cut = start;
        }
        // Off a boundary (not expected): everything is held.
        let (head, tail) = buf
            .split_at_checked(floor_boundary(&buf, cut))
            .unwrap_or(("", &buf));
        let out = self.emit(Some(channel), head, &edits, &hits)?;
        let pending = Pending {
            released: self.release(released, head),
            held: tail.to_owned(),
        };
        self.pending.insert(*channel, pending);
        Ok(out)
    }

    fn finish(&mut self, channel: &Channel) -> Result<String, StreamBlock> {
        let Pending { released, held } = self.pending.remove(channel).unwrap_or_default();
        let (edits, hits) = self.scan_after(&released, &held);
        self.emit(Some(channel), &held, &edits, &hits)
    }

    fn whole(&mut self, text: &str) -> Result<String, StreamBlock> {
        let (edits, hits) = self.policy.scan(&self.active, text);
        self.emit(None, text, &edits, &hits)
    }
}

/// The char boundary at or before `at` (the end, past it).
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at = at.saturating_sub(1);
    }
    at
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

    /// The transcript kept so far, if one was asked for.
    pub fn take_transcript(&self) -> Option<Transcript> {
        self.0.borrow_mut().transcript.take()
    }
}

impl StreamText for SharedMasking {
    fn push(&mut self, channel: &Channel, text: &str) -> Result<String, StreamBlock> {
        self.0.borrow_mut().push(channel, text)
    }

    fn finish(&mut self, channel: &Channel) -> Result<String, StreamBlock> {
        self.0.borrow_mut().finish(channel)
    }

    fn whole(&mut self, text: &str) -> Result<String, StreamBlock> {
        self.0.borrow_mut().whole(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::inspect::sse::{SseParser, StreamApi, StreamRewriter};
    use crate::testing::{member_of, test};
    use serde_json::json;

    const POLICY: &str = r#"
version: 1
groups: {engineering: {models: ["*"]}}
rules:
  - {name: people, detect: email, action: tokenize, level: internal, where: request}
  - {name: pii, detect: [email, payment_card, phone], action: mask, level: internal}
  - {name: keys, detect: [aws_access_key_id, github_token], action: mask}
"#;

    const SECRETS: [&str; 4] = [
        "jane.doe@example.com",
        "4111 1111 1111 1111",
        concat!("AK", "IA", "QYLPMN5RTB7DZ4UF"),
        "+1 415 555 2671",
    ];

    fn who() -> Identity {
        member_of("engineering")
    }

    /// An OpenAI chat stream whose text is cut into pieces of 3 characters,
    /// so every value is split across several events.
    fn openai_stream(text: &str) -> String {
        let mut out = String::new();
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(3) {
            let delta: String = piece.iter().collect();
            let chunk = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": delta}}]});
            out.push_str(&format!("data: {chunk}\n\n"));
        }
        let end = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        out.push_str(&format!("data: {end}\n\ndata: [DONE]\n\n"));
        out
    }

    fn anthropic_stream(text: &str) -> String {
        let mut out = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\n");
        out.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(4) {
            let delta: String = piece.iter().collect();
            let ev = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": delta}});
            out.push_str(&format!("event: content_block_delta\ndata: {ev}\n\n"));
        }
        out.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        out.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        out
    }

    fn run(policy: &Rc<Policy>, api: StreamApi, chunks: &[&[u8]], vault: Vault) -> Vec<u8> {
        let active = policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Response);
        let text = MaskingStream::new(policy.clone(), active, vault, HashKey::new(b"k".to_vec()));
        let mut rw = StreamRewriter::new(api, Box::new(text));
        let mut out = Vec::new();
        for c in chunks {
            out.extend(rw.feed(c));
        }
        out.extend(rw.finish());
        out
    }

    /// The text a client reassembles from the rewritten stream.
    fn client_text(api: StreamApi, bytes: &[u8]) -> String {
        let mut parser = SseParser::new();
        let mut events = parser.feed(bytes).unwrap_or_default();
        events.extend(parser.finish().unwrap_or_default());
        let mut text = String::new();
        for ev in events {
            let Some(data) = ev.data else { continue };
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            let piece = match api {
                StreamApi::Anthropic => v.pointer("/delta/text").and_then(Value::as_str),
                _ => v
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str),
            };
            text.push_str(piece.unwrap_or_default());
        }
        text
    }

    /// Found by the `json_body` fuzz target: a value glued to another (a
    /// phone number right after an email address) is judged with its
    /// neighbour as context, so the first pass took it for part of a word;
    /// once the neighbour is a placeholder, it stands alone. A rewritten
    /// text is scanned again until nothing more changes (bounded), so a
    /// second pass over the output changes nothing.
    #[test]
    fn a_value_glued_to_a_masked_one_is_masked_too_and_rewriting_twice_changes_nothing() {
        let policy = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        let active = policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Response);
        let key = HashKey::new(b"k".to_vec());
        for (text, want) in [
            ("bob@example.smith+777777777777773 x", "[EMAIL][PHONE] x"),
            (
                "mail bob@example.com+14155552671 now",
                "mail [EMAIL][PHONE] now",
            ),
        ] {
            let body = json!({ "text": text }).to_string();
            let mut vault = Vault::default();
            let once = inspect_json(
                &policy,
                &active,
                Direction::Response,
                body.as_bytes(),
                &mut vault,
                &key,
                false,
            )
            .unwrap();
            let once = once.body.expect("masked");
            let doc: Value = serde_json::from_slice(&once).unwrap();
            assert_eq!(doc["text"], want, "{text}");
            let twice = inspect_json(
                &policy,
                &active,
                Direction::Response,
                &once,
                &mut vault,
                &key,
                false,
            )
            .unwrap();
            assert_eq!(twice.body, None, "a second pass changed {text:?} again");
        }
    }

    #[test]
    fn any_cut_of_a_stream_gives_the_same_text_and_no_match_survives() {
        let policy = Rc::new(Policy::from_bytes(POLICY.as_bytes()).unwrap());
        let message = format!(
            "Reach {} or {}; card {} and key {} — thanks ✓",
            SECRETS[0], SECRETS[3], SECRETS[1], SECRETS[2]
        );
        for (api, stream) in [
            (StreamApi::OpenAiChat, openai_stream(&message)),
            (StreamApi::Anthropic, anthropic_stream(&message)),
        ] {
            let bytes = stream.as_bytes();
            let whole = run(&policy, api, &[bytes], Vault::default());
            let text = client_text(api, &whole);
            assert_eq!(text, "Reach [EMAIL] or [PHONE]; card [PAYMENT_CARD] and key [AWS_ACCESS_KEY_ID] — thanks ✓");
            assert!(
                policy.detectors().find(&text).is_empty(),
                "a match survived: {text}"
            );
            for k in 1..bytes.len() {
                let cut = run(&policy, api, &[&bytes[..k], &bytes[k..]], Vault::default());
                assert_eq!(client_text(api, &cut), text, "{api:?} cut at byte {k}");
                let raw = String::from_utf8_lossy(&cut);
                for secret in SECRETS {
                    assert!(!raw.contains(secret), "{secret} leaked when cut at {k}");
                }
            }
            // One byte at a time.
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                client_text(api, &run(&policy, api, &singles, Vault::default())),
                text
            );
        }
    }

    #[test]
    fn tokens_come_back_even_when_split_across_events() {
        let policy = Rc::new(Policy::from_bytes(POLICY.as_bytes()).unwrap());
        let mut vault = Vault::default();
        let key = HashKey::new(b"k".to_vec());
        // The request side tokenizes the email...
        let request_active =
            policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Request);
        let mut body =
            json!({"messages": [{"role": "user", "content": format!("write to {}", SECRETS[0])}]});
        let (outcome, changed) = inspect_value(
            &policy,
            &request_active,
            Direction::Request,
            &mut body,
            &mut vault,
            &key,
        );
        assert!(changed && outcome.rewrote());
        assert_eq!(body["messages"][0]["content"], "write to <EMAIL_1>");
        // ...and the provider's streamed answer, placeholder cut in pieces, gets it back.
        let stream = openai_stream("Dear <EMAIL_1>, hello");
        let out = run(&policy, StreamApi::OpenAiChat, &[stream.as_bytes()], vault);
        assert_eq!(
            client_text(StreamApi::OpenAiChat, &out),
            format!("Dear {}, hello", SECRETS[0])
        );
    }

    #[test]
    fn outcomes_name_rules_and_counts_never_values() {
        let policy = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        let active = policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Response);
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"{} and {}"}}}}]}}"#,
            SECRETS[0], SECRETS[2]
        );
        let inspected = inspect_json(
            &policy,
            &active,
            Direction::Response,
            body.as_bytes(),
            &mut Vault::default(),
            &HashKey::new(vec![]),
            false,
        )
        .unwrap();
        assert_eq!(inspected.outcome.summary(), "keys:mask:1,pii:mask:1");
        let new_body = String::from_utf8(inspected.body.unwrap()).unwrap();
        assert!(
            new_body.contains("[EMAIL] and [AWS_ACCESS_KEY_ID]"),
            "{new_body}"
        );
        assert!(!format!("{:?}", inspected.outcome).contains("jane"));
        assert!(inspect_json(
            &policy,
            &active,
            Direction::Response,
            b"{\"a\":1,\"a\":2}",
            &mut Vault::default(),
            &HashKey::new(vec![]),
            false,
        )
        .is_err());
    }

    #[test]
    fn a_recorded_answer_keeps_placeholders_while_the_client_gets_its_values() {
        let policy = Rc::new(Policy::from_bytes(POLICY.as_bytes()).unwrap());
        let key = HashKey::new(b"k".to_vec());
        let mut vault = Vault::default();
        vault.token_for("EMAIL", SECRETS[0]);
        let placeholder = "<EMAIL_1>";
        // A JSON answer: the record holds the placeholder, the body the value;
        // a card the provider invented is masked in both.
        let active = policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Response);
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"Dear {placeholder}, card {}"}}}}]}}"#,
            SECRETS[1]
        );
        let inspected = inspect_json(
            &policy,
            &active,
            Direction::Response,
            body.as_bytes(),
            &mut vault,
            &key,
            true,
        )
        .unwrap();
        let sent = String::from_utf8(inspected.body.unwrap()).unwrap();
        assert!(
            sent.contains(SECRETS[0]) && !sent.contains(SECRETS[1]),
            "{sent}"
        );
        let recorded = inspected.recorded.unwrap().to_string();
        assert!(recorded.contains(placeholder), "{recorded}");
        assert!(recorded.contains("[PAYMENT_CARD]"), "{recorded}");
        for secret in SECRETS {
            assert!(!recorded.contains(secret), "{secret} in {recorded}");
        }
        // Nothing to put back: the record is the document as sent.
        let plain = inspect_json(
            &policy,
            &active,
            Direction::Response,
            body.as_bytes(),
            &mut Vault::default(),
            &key,
            true,
        )
        .unwrap();
        assert_eq!(
            plain.recorded.unwrap(),
            serde_json::from_slice::<Value>(&plain.body.unwrap()).unwrap()
        );

        // A stream, values split across events: the same, reassembled per channel.
        let stream = openai_stream(&format!("Dear {placeholder}, card {}", SECRETS[1]));
        let masking = MaskingStream::new(policy.clone(), active, vault, key).with_transcript(1024);
        let shared = SharedMasking::new(masking);
        let mut rw = StreamRewriter::new(StreamApi::OpenAiChat, Box::new(shared.clone()));
        let mut out = rw.feed(stream.as_bytes());
        out.extend(rw.finish());
        assert_eq!(
            client_text(StreamApi::OpenAiChat, &out),
            format!("Dear {}, card [PAYMENT_CARD]", SECRETS[0])
        );
        let record = shared
            .take_transcript()
            .unwrap()
            .to_record(rw.api(), rw.events());
        assert_eq!(record["stream"]["api"], "openai_chat");
        assert_eq!(record["stream"]["truncated"], false);
        assert!(
            record["stream"]["events"].as_u64().unwrap() > 10,
            "{record}"
        );
        assert_eq!(
            record["channels"][0]["text"],
            format!("Dear {placeholder}, card [PAYMENT_CARD]")
        );
        assert_eq!(record["channels"][0]["kind"], "text");
    }

    /// A policy of `rules` (one YAML flow mapping each), in that order.
    fn policy_of(rules: &[String]) -> Rc<Policy> {
        let doc = format!(
            "version: 1\ngroups: {{engineering: {{models: [\"*\"]}}}}\napproval: {{approvers: [security]}}\nrules:\n{}",
            rules
                .iter()
                .map(|r| format!("  - {r}\n"))
                .collect::<String>()
        );
        Rc::new(Policy::from_bytes(doc.as_bytes()).unwrap())
    }

    /// Every order of `items`.
    fn orders<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut tail in orders(&rest) {
                tail.insert(0, first.clone());
                out.push(tail);
            }
        }
        out
    }

    /// Every way to cut `text` in two (on char boundaries), and in three.
    fn cuts(text: &str) -> Vec<Vec<String>> {
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        let mut out = Vec::new();
        for (n, &a) in bounds.iter().enumerate() {
            out.push(vec![text[..a].to_string(), text[a..].to_string()]);
            for &b in bounds.iter().skip(n + 1).step_by(3) {
                out.push(vec![
                    text[..a].to_string(),
                    text[a..b].to_string(),
                    text[b..].to_string(),
                ]);
            }
        }
        out
    }

    #[test]
    fn a_value_split_across_the_parts_of_a_message_is_found_and_no_part_keeps_a_piece() {
        let policy = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        let key = HashKey::new(b"k".to_vec());
        let active = policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Response);
        let text = format!("key {} — and ✓ {}", SECRETS[2], SECRETS[0]);
        let expected = "key [AWS_ACCESS_KEY_ID] — and ✓ [EMAIL]";
        for parts in cuts(&text) {
            // The parts of a chat message, of an Anthropic system prompt, and
            // of a Responses input message, with an image between two parts.
            let chat: Vec<Value> = parts
                .iter()
                .map(|p| json!({"type": "text", "text": p}))
                .collect();
            let mut responses: Vec<Value> = parts
                .iter()
                .map(|p| json!({"type": "input_text", "text": p}))
                .collect();
            responses.insert(
                1,
                json!({"type": "input_image", "image_url": "https://x.example/a.png"}),
            );
            for mut body in [
                json!({"messages": [{"role": "user", "content": chat}]}),
                json!({"system": chat, "messages": []}),
                json!({"input": [{"type": "message", "role": "user", "content": responses}]}),
            ] {
                let (outcome, changed) = inspect_value(
                    &policy,
                    &active,
                    Direction::Response,
                    &mut body,
                    &mut Vault::default(),
                    &key,
                );
                assert!(changed, "{parts:?}");
                let mut joined = String::new();
                crate::inspect::body::each_part_group(&mut body, &mut |group| {
                    joined = group.iter().map(|p| p.as_str()).collect();
                    false
                });
                assert_eq!(joined, expected, "{parts:?}");
                let flat = body.to_string();
                for piece in [
                    &SECRETS[2][..8],
                    &SECRETS[2][12..],
                    "jane.doe",
                    "example.com",
                ] {
                    assert!(!flat.contains(piece), "{piece} kept: {flat}");
                }
                // Each value counted once, whether or not it was cut.
                assert_eq!(outcome.summary(), "keys:mask:1,pii:mask:1", "{parts:?}");
            }
        }
    }

    #[test]
    fn a_split_value_is_tokenized_and_blocked_like_a_whole_one() {
        // Tokenized: one placeholder, where the value started, and it comes back.
        let policy = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        let key = HashKey::new(b"k".to_vec());
        let active = policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Request);
        let mut vault = Vault::default();
        let mut body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "write to jane.d"},
            {"type": "text", "text": "oe@example.com please"}]}]});
        inspect_value(
            &policy,
            &active,
            Direction::Request,
            &mut body,
            &mut vault,
            &key,
        );
        assert_eq!(
            body["messages"][0]["content"][0]["text"],
            "write to <EMAIL_1>"
        );
        assert_eq!(body["messages"][0]["content"][1]["text"], " please");
        assert_eq!(vault.restore("<EMAIL_1>"), SECRETS[0]);
        // Blocked: the block rule stops the message.
        let policy =
            policy_of(&["{name: keys, detect: aws_access_key_id, action: block}".to_string()]);
        let active = policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Request);
        let inspect = |mut body: Value| {
            let mut vault = Vault::default();
            inspect_value(
                &policy,
                &active,
                Direction::Request,
                &mut body,
                &mut vault,
                &key,
            )
        };
        let (outcome, _) = inspect(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "AKIAQYLP"}, {"type": "text", "text": "MN5RTB7DZ4UF"}]}]}));
        assert_eq!(outcome.stop(), Some(("keys".to_string(), Action::Block)));
        // Separate messages and separate list items are not joined.
        let (outcome, changed) = inspect(json!({"messages": [
            {"role": "user", "content": "AKIAQYLP"}, {"role": "user", "content": "MN5RTB7DZ4UF"}],
            "stop": ["AKIAQYLP", "MN5RTB7DZ4UF"]}));
        assert!(!changed && outcome.stop().is_none());
    }

    fn request_outcome(policy: &Policy, text: &str) -> (Outcome, Value) {
        let active = policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Request);
        let mut body = json!({"messages": [{"role": "user", "content": text}]});
        let (outcome, _) = inspect_value(
            policy,
            &active,
            Direction::Request,
            &mut body,
            &mut Vault::default(),
            &HashKey::new(b"k".to_vec()),
        );
        (outcome, body)
    }

    #[test]
    fn a_block_prevails_over_an_approval_whatever_the_names_and_the_order() {
        let text = format!("deploy with {} to jane.doe@example.com", SECRETS[2]);
        // The block rule's name sorts last, then first.
        for (block, approve) in [("zzz", "aaa"), ("aaa", "zzz")] {
            let rules = [
                format!("{{name: {block}, detect: aws_access_key_id, action: block}}"),
                format!("{{name: {approve}, detect: aws_access_key_id, action: require_approval}}"),
                "{name: mmm, detect: email, action: mask}".to_string(),
                "{name: lll, detect: [email, aws_access_key_id], action: log_only}".to_string(),
            ];
            for order in orders(&rules) {
                let policy = policy_of(&order);
                let (outcome, _) = request_outcome(&policy, &text);
                assert_eq!(
                    outcome.stop(),
                    Some((block.to_string(), Action::Block)),
                    "{order:?}"
                );
                // Streamed: the same rule stops the response.
                let active =
                    policy.active_rules(&who(), "openai", Some("gpt-4o"), Direction::Response);
                let masking = SharedMasking::new(MaskingStream::new(
                    policy.clone(),
                    active,
                    Vault::default(),
                    HashKey::new(b"k".to_vec()),
                ));
                let mut rw = StreamRewriter::new(StreamApi::OpenAiChat, Box::new(masking.clone()));
                let mut out = rw.feed(openai_stream(&text).as_bytes());
                out.extend(rw.finish());
                let sent = String::from_utf8_lossy(&out);
                assert!(!sent.contains(SECRETS[2]), "{order:?}: {sent}");
                assert!(
                    sent.contains(&format!("blocked by rule '{block}'")),
                    "{order:?}: {sent}"
                );
                assert_eq!(
                    masking.outcome().stop(),
                    Some((block.to_string(), Action::Block))
                );
            }
        }
    }

    #[test]
    fn precedence_is_block_then_approval_then_rewrites_then_log() {
        use crate::inspect::mask::Precedence;
        assert!(Precedence::Block > Precedence::RequireApproval);
        assert!(Precedence::RequireApproval > Precedence::Rewrite);
        assert!(Precedence::Rewrite > Precedence::Log);
        for action in [Action::Mask, Action::Redact, Action::Hash, Action::Tokenize] {
            assert_eq!(action.precedence(), Precedence::Rewrite);
            assert!(action.rewrites() && !action.stops());
        }
        assert!(Action::Block.stops() && Action::RequireApproval.stops());
        assert!(!Action::LogOnly.stops() && !Action::LogOnly.rewrites());

        let outcome = |rules: &[(&str, Action, bool)]| Outcome {
            rules: rules
                .iter()
                .map(|&(name, action, observe)| {
                    (
                        name.to_string(),
                        RuleCount {
                            action,
                            observe,
                            count: 1,
                        },
                    )
                })
                .collect(),
        };
        let stop = |rules: &[(&str, Action, bool)]| outcome(rules).stop();
        let named = |n: &str, a: Action| Some((n.to_string(), a));
        assert_eq!(
            stop(&[
                ("aaa", Action::RequireApproval, false),
                ("zzz", Action::Block, false)
            ]),
            named("zzz", Action::Block)
        );
        assert_eq!(
            stop(&[
                ("aaa", Action::Block, false),
                ("zzz", Action::RequireApproval, false)
            ]),
            named("aaa", Action::Block)
        );
        // Of the same action, the first name: a stable answer.
        assert_eq!(
            stop(&[("bbb", Action::Block, false), ("aaa", Action::Block, false)]),
            named("aaa", Action::Block)
        );
        // Observe-mode rules never decide.
        assert_eq!(
            stop(&[
                ("aaa", Action::Block, true),
                ("zzz", Action::RequireApproval, false)
            ]),
            named("zzz", Action::RequireApproval)
        );
        assert_eq!(
            stop(&[
                ("aaa", Action::Block, true),
                ("bbb", Action::RequireApproval, true)
            ]),
            None
        );
        assert!(!outcome(&[("aaa", Action::Mask, true)]).rewrote());
        // A rewrite and a log: nothing stops, the text is rewritten.
        let both = outcome(&[
            ("aaa", Action::LogOnly, false),
            ("zzz", Action::Mask, false),
        ]);
        assert_eq!(both.stop(), None);
        assert!(both.rewrote());
    }

    #[test]
    fn a_mask_rule_and_a_log_rule_on_one_value_mask_it_in_any_order() {
        let rules = [
            "{name: aaa, detect: email, action: log_only}".to_string(),
            "{name: zzz, detect: email, action: mask}".to_string(),
        ];
        for order in orders(&rules) {
            let (outcome, body) = request_outcome(&policy_of(&order), "mail jane.doe@example.com");
            assert_eq!(outcome.stop(), None);
            assert!(outcome.rewrote());
            assert_eq!(outcome.summary(), "aaa:log_only:1,zzz:mask:1");
            assert_eq!(body["messages"][0]["content"], "mail [EMAIL]", "{order:?}");
        }
    }

    #[test]
    fn observe_mode_rules_never_decide() {
        let rules = [
            "{name: aaa, detect: aws_access_key_id, action: block, observe: true}".to_string(),
            "{name: bbb, detect: aws_access_key_id, action: require_approval, observe: true}"
                .to_string(),
            "{name: ccc, detect: email, action: mask, observe: true}".to_string(),
        ];
        let text = format!("{} jane.doe@example.com", SECRETS[2]);
        for order in orders(&rules) {
            let (outcome, body) = request_outcome(&policy_of(&order), &text);
            assert_eq!(outcome.stop(), None, "{order:?}");
            assert!(!outcome.rewrote());
            assert_eq!(body["messages"][0]["content"], text.as_str());
            assert_eq!(
                outcome.summary(),
                "aaa:observe:block:1,bbb:observe:require_approval:1,ccc:observe:mask:1"
            );
        }
        // An enforced approval with an observed block: the approval decides.
        let mut mixed = rules.to_vec();
        mixed[1] = "{name: bbb, detect: aws_access_key_id, action: require_approval}".into();
        let (outcome, _) = request_outcome(&policy_of(&mixed), &text);
        assert_eq!(
            outcome.stop(),
            Some(("bbb".to_string(), Action::RequireApproval))
        );
    }

    /// Two rewriting rules whose values overlap in part: one edit covers
    /// both, in a request body and at every cut of a response stream.
    #[test]
    fn overlapping_rewrites_leave_no_part_of_either_value() {
        for first in ["tokenize", "hash", "redact"] {
            let rules = [
                format!("{{name: ids, regex: 'ID-[0-9]{{4}}', action: {first}}}"),
                "{name: codes, regex: '[0-9]{4}-SECRET', action: mask}".to_string(),
            ];
            for order in orders(&rules) {
                let (_, body) = request_outcome(&policy_of(&order), "see ID-1234-SECRET now");
                let content = body["messages"][0]["content"].as_str().unwrap();
                assert!(
                    !content.contains("1234") && !content.contains("SECRET"),
                    "{order:?}: {content}"
                );
            }
        }
        // (A response puts tokenized values back: irreversible actions here.)
        let rules = [
            "{name: ids, regex: 'ID-[0-9]{4}', action: hash}".to_string(),
            "{name: codes, regex: '[0-9]{4}-SECRET', action: mask}".to_string(),
        ];
        for order in orders(&rules) {
            let policy = policy_of(&order);
            let stream = openai_stream("see ID-1234-SECRET now, and é ID-5678-SECRET");
            let bytes = stream.as_bytes();
            for k in 1..bytes.len() {
                let out = run(
                    &policy,
                    StreamApi::OpenAiChat,
                    &[&bytes[..k], &bytes[k..]],
                    Vault::default(),
                );
                let text = client_text(StreamApi::OpenAiChat, &out);
                for part in ["1234", "5678", "SECRET"] {
                    assert!(!text.contains(part), "{order:?} cut at {k}: {text}");
                }
            }
        }
    }

    #[test]
    fn a_transcript_stops_at_its_bound_on_a_character_boundary() {
        let channel = Channel {
            index: 0,
            kind: ChannelKind::Text,
        };
        let mut transcript = Transcript::new(5);
        transcript.push(channel, "abc");
        transcript.push(channel, "déf");
        assert!(transcript.truncated);
        assert_eq!(transcript.channels[&channel], "abcd");
    }
}
