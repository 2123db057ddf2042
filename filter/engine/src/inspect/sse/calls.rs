//! [`CallGate`]: a streamed answer's tool calls held until each is complete
//! and judged, then sent as they came, or replaced by a sentence that says
//! why; the rest of the stream keeps flowing around them.
//!
//! The gate works on what the [`super::StreamRewriter`] sends (text already
//! masked), one event at a time, so the judge reads a call's arguments
//! exactly as the client would receive them.
//!
//! ## Holding
//! From the first event of a call until the call ends (its arguments are
//! complete), every event is held in order: the call's own and any other
//! (a ping, another choice's text), so the client sees the events in the
//! order the provider sent them. A call ends:
//! - OpenAI chat: at the next call of the same choice, the choice's
//!   `finish_reason`, or `[DONE]`;
//! - Responses: at its `response.output_item.done` (or the response's end);
//! - Anthropic: at its `content_block_stop` (or `message_stop`).
//!
//! As soon as the events at the front of the queue belong only to judged
//! calls, they go out: an allowed call byte for byte (OpenAI chat renumbers
//! the calls after a refused one, since its SDKs place a call by its index),
//! a refused one replaced so that the client's SDK reads a well-formed
//! answer: chat: the call's fragments removed and the sentence added to the
//! choice's content, after a blank line (`finish_reason` `stop` when no call is left); Anthropic:
//! the `tool_use` block becomes a text block at the same index carrying the
//! sentence (`stop_reason` `end_turn` when no call is left); Responses: the
//! item becomes a message item at the same output index, its argument events
//! are dropped, and the later events are renumbered.
//!
//! A judge may leave a call [`Verdict::Pending`] (it waits for an
//! approver): its events and every later one stay held until
//! [`CallGate::decide`] gives the verdict, after the body ended too
//! (the exchange then holds the body's end in Envoy).
//!
//! A call the stream does not finish (the body ends first) is judged as
//! incomplete; a call larger than [`MAX_HELD`], more than [`MAX_CALLS`]
//! calls, or a fragment of a call that was already judged end the stream
//! (the rewriter sends an error event): nothing is sent unjudged.
//!
//! ## Cost
//! An event outside a hold is parsed only when its bytes could start or
//! concern a call (a marker of its API, or a JSON escape that could spell
//! one); text events go straight through.

use std::collections::VecDeque;

use memchr::memmem;
use serde_json::{json, Map, Value};

use super::parser::{Framed, SseParser};
use super::{event_type, SseEvent, StreamApi, StreamBlock};
use crate::inspect::tools::{decoded, responses_call, responses_note};
use crate::protocol::Reason;

/// The most bytes held for calls being judged: a call's arguments larger
/// than this end the stream (fail closed) rather than go unjudged.
pub const MAX_HELD: usize = 4 << 20;
/// The most calls one streamed answer may make.
pub const MAX_CALLS: usize = 1024;

/// Decides one streamed call.
pub trait CallJudge {
    fn judge(&mut self, call: &StreamedCall<'_>) -> Verdict;
}

/// A call as the client would receive it.
#[derive(Debug)]
pub struct StreamedCall<'a> {
    /// The gate's number for the call, for [`CallGate::decide`].
    pub id: usize,
    pub tool: &'a str,
    /// Every form of its arguments the client may read (the fragments
    /// joined, and the copy an API repeats when the call ends), decoded
    /// when JSON; each is judged, and the worst verdict stands.
    pub arguments: &'a [Value],
    /// False when the stream ended before the call did.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Replace the call with this sentence.
    Refuse(String),
    /// Decided later ([`CallGate::decide`], an approver): the call's events,
    /// and every event after them, stay held until then.
    Pending,
}

/// Where a call is: chat (choice, call index; a legacy `function_call` is
/// inner `u64::MAX`), Responses (output index, 0), Anthropic (0, block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    outer: u64,
    inner: u64,
}

const LEGACY: u64 = u64::MAX;

impl Key {
    /// A Responses output item.
    fn output(at: u64) -> Self {
        Self {
            outer: at,
            inner: 0,
        }
    }

    /// An Anthropic content block.
    fn block(at: u64) -> Self {
        Self {
            outer: 0,
            inner: at,
        }
    }
}

#[derive(Debug)]
struct Call {
    key: Key,
    tool: String,
    /// The argument fragments, joined (dropped once judged).
    fragments: String,
    /// Arguments given whole (Anthropic's start `input`, a Responses item).
    whole: Vec<Value>,
    /// The forms of its arguments the judge read (kept to check a copy the
    /// stream repeats later).
    judged: Vec<Value>,
    done: bool,
    verdict: Option<Verdict>,
    /// Chat: the index the client sees (calls after a refused one move up).
    sent_index: Option<u64>,
    /// The sentence was placed (chat, Anthropic).
    noted: bool,
}

#[derive(Debug)]
struct Held {
    framed: Framed,
    body: Option<Map<String, Value>>,
    touches: Vec<Key>,
}

/// See the module's documentation.
pub struct CallGate {
    api: StreamApi,
    judge: Box<dyn CallJudge>,
    parser: SseParser,
    queue: VecDeque<Held>,
    held_bytes: usize,
    calls: Vec<Call>,
    /// Responses: events dropped minus events added so far, taken off every
    /// later `sequence_number`.
    sequence_offset: u64,
    /// Anthropic blocks of the provider's own tools, which stream JSON
    /// input too: a JSON delta for any block neither a call nor one of
    /// these is not sent.
    started: Vec<u64>,
    /// Chat: the sentences of refused calls, by choice, waiting for the
    /// choice's end. They go into the content there, after all of its text:
    /// text the masking held back may come after the call's events (it is
    /// sent when the choice ends), and the sentence must not land inside it.
    chat_notes: Vec<(u64, String)>,
    /// Chat: the fields of the chunk that gave the last note (for an event
    /// that carries notes left when the stream ends without its choice's).
    chat_template: Map<String, Value>,
    /// The body ended ([`CallGate::finish`]); calls may still be pending.
    finished: bool,
}

impl std::fmt::Debug for CallGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallGate")
            .field("api", &self.api)
            .field("held", &self.queue.len())
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

fn uninspectable(message: &str) -> StreamBlock {
    StreamBlock::uninspectable(Reason::ToolCallUninspectable, message)
}

fn unplaced_arguments() -> StreamBlock {
    uninspectable("Warden stopped this response: tool call arguments for a part that never started")
}

impl CallGate {
    pub fn new(api: StreamApi, judge: Box<dyn CallJudge>) -> Self {
        Self {
            api,
            judge,
            // What the rewriter sends is whole events of bounded size; the
            // held total is bounded by MAX_HELD instead.
            parser: SseParser::with_limits(usize::MAX, usize::MAX),
            queue: VecDeque::new(),
            held_bytes: 0,
            calls: Vec::new(),
            sequence_offset: 0,
            started: Vec::new(),
            chat_notes: Vec::new(),
            chat_template: Map::new(),
            finished: false,
        }
    }

    /// Whether a call waits for a decision from outside ([`Verdict::Pending`]).
    pub fn awaiting(&self) -> bool {
        self.calls
            .iter()
            .any(|c| c.verdict == Some(Verdict::Pending))
    }

    /// Decides a call the judge left pending, and writes what may go now
    /// (at the end of the stream, everything left). A call that is not
    /// pending keeps its verdict.
    pub fn decide(&mut self, id: usize, verdict: Verdict, out: &mut Vec<u8>) {
        let Some(call) = self.calls.get(id) else {
            return;
        };
        if call.verdict != Some(Verdict::Pending) || verdict == Verdict::Pending {
            return;
        }
        let key = call.key;
        let refused = matches!(verdict, Verdict::Refuse(_));
        let sent_index = (verdict == Verdict::Allow && key.inner != LEGACY)
            .then(|| key.inner.saturating_sub(self.refused_before(key)));
        for later in self.calls.iter_mut() {
            // Calls judged allowed while this one waited were numbered as if
            // it stayed; none of them has gone out (they are behind it).
            if refused && later.key.outer == key.outer && later.key.inner > key.inner {
                later.sent_index = later.sent_index.map(|i| i.saturating_sub(1));
            }
        }
        if let Some(call) = self.calls.get_mut(id) {
            call.verdict = Some(verdict);
            call.sent_index = sent_index;
        }
        self.release(out);
        if self.finished && !self.awaiting() {
            self.send_chat_notes(out);
        }
    }

    /// The refused calls before `key` in its choice.
    fn refused_before(&self, key: Key) -> u64 {
        self.calls
            .iter()
            .filter(|c| {
                c.key.outer == key.outer
                    && c.key.inner < key.inner
                    && matches!(c.verdict, Some(Verdict::Refuse(_)))
            })
            .count() as u64
    }

    /// Whether an event outside a hold could concern a call.
    fn may_concern_calls(&self, bytes: &[u8]) -> bool {
        if self.api == StreamApi::OpenAiCompletions {
            return false;
        }
        if !self.queue.is_empty() || self.sequence_offset != 0 || !self.chat_notes.is_empty() {
            return true;
        }
        let markers: &[&[u8]] = match self.api {
            StreamApi::OpenAiChat => &[b"tool_calls", b"function_call"],
            StreamApi::OpenAiCompletions => return false,
            StreamApi::OpenAiResponses => &[b"_call\"", b"_call_arguments", b"_call_input"],
            StreamApi::Anthropic => &[b"tool_use", b"input_json_delta"],
        };
        // `\u` could spell any of them.
        markers
            .iter()
            .chain([b"\\u".as_slice()].iter())
            .any(|m| memmem::find(bytes, m).is_some())
    }

    /// Takes whole events the rewriter would send, writes what may go now.
    pub fn pass(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), StreamBlock> {
        if bytes.is_empty() {
            return Ok(());
        }
        if !self.may_concern_calls(bytes) {
            out.extend_from_slice(bytes);
            return Ok(());
        }
        let framed = self
            .parser
            .feed_framed(bytes)
            .map_err(|_| uninspectable("Warden could not read its own stream"))?;
        for event in framed {
            self.event(event, out)?;
        }
        Ok(())
    }

    /// One whole event the rewriter decoded already (`body`, its data).
    pub(crate) fn pass_decoded(
        &mut self,
        framed: Framed,
        body: Map<String, Value>,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamBlock> {
        if !self.may_concern_calls(framed.raw.as_bytes()) {
            out.extend_from_slice(framed.raw.as_bytes());
            return Ok(());
        }
        self.hold(framed, Some(body), out)
    }

    /// The end of the stream: calls not finished are judged as incomplete,
    /// and everything held goes out as decided.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), StreamBlock> {
        if let Ok(rest) = self.parser.finish_framed() {
            for event in rest {
                self.event(event, out)?;
            }
        }
        self.finished = true;
        self.judge_pending(false);
        self.release(out);
        if !self.awaiting() {
            self.send_chat_notes(out);
        }
        Ok(())
    }

    fn event(&mut self, framed: Framed, out: &mut Vec<u8>) -> Result<(), StreamBlock> {
        let data = framed.event.data.as_deref().unwrap_or_default();
        let body = match serde_json::from_str::<Value>(data) {
            Ok(Value::Object(body)) => Some(body),
            _ => None,
        };
        self.hold(framed, body, out)
    }

    /// Queues an event, then sends what may go.
    fn hold(
        &mut self,
        framed: Framed,
        body: Option<Map<String, Value>>,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamBlock> {
        let data = framed.event.data.as_deref().unwrap_or_default();
        let end_of_all = self.api == StreamApi::OpenAiChat && data.trim() == "[DONE]";
        let name = framed.event.event.clone();
        let touches = match &body {
            Some(body) => self.observe(name.as_deref(), body)?,
            None if end_of_all => self.end_calls(|_| true),
            None => Vec::new(),
        };
        self.held_bytes += framed.raw.len();
        if self.held_bytes > MAX_HELD {
            return Err(uninspectable(
                "Warden stopped this response: a tool call is too large to judge",
            ));
        }
        self.queue.push_back(Held {
            framed,
            body,
            touches,
        });
        self.judge_pending(true);
        self.release(out);
        Ok(())
    }

    // ---- what an event says about calls -----------------------------------

    /// Notes that a block of the provider's own tools started.
    fn start(&mut self, index: u64) -> Result<(), StreamBlock> {
        if !self.started.contains(&index) {
            if self.started.len() >= MAX_CALLS * 4 {
                return Err(uninspectable(
                    "Warden stopped this response: it has too many parts to inspect",
                ));
            }
            self.started.push(index);
        }
        Ok(())
    }

    /// Call arguments for a part that is no call the gate knows (nor, for
    /// Anthropic, a started block of the provider's own tools): nothing
    /// could judge them, so they are not sent.
    fn unplaced(&self, block: Option<u64>) -> Result<(), StreamBlock> {
        if block.is_some_and(|i| self.started.contains(&i)) {
            return Ok(());
        }
        Err(unplaced_arguments())
    }

    fn position(&self, key: Key) -> Option<usize> {
        self.calls.iter().position(|c| c.key == key)
    }

    /// A piece of a call: opens it if new (for chat, ending the choice's
    /// other calls), adds to its name and arguments.
    fn fragment(
        &mut self,
        key: Key,
        name: Option<&str>,
        arguments: Option<&str>,
        touches: &mut Vec<Key>,
    ) -> Result<(), StreamBlock> {
        let at = match self.position(key) {
            Some(at) => at,
            None => {
                if self.calls.len() >= MAX_CALLS {
                    return Err(uninspectable(
                        "Warden stopped this response: it makes too many tool calls",
                    ));
                }
                if self.api == StreamApi::OpenAiChat {
                    touches.extend(self.end_calls(|k| k.outer == key.outer && k.inner != LEGACY));
                }
                self.calls.push(Call {
                    key,
                    tool: String::new(),
                    fragments: String::new(),
                    whole: Vec::new(),
                    judged: Vec::new(),
                    done: false,
                    verdict: None,
                    sent_index: None,
                    noted: false,
                });
                self.calls.len() - 1
            }
        };
        let Some(call) = self.calls.get_mut(at) else {
            return Ok(());
        };
        if call.done
            && (name.is_some_and(|n| !n.is_empty()) || arguments.is_some_and(|a| !a.is_empty()))
        {
            return Err(uninspectable(
                "Warden stopped this response: a tool call went on after it ended",
            ));
        }
        if let Some(name) = name {
            call.tool.push_str(name);
        }
        if let Some(arguments) = arguments {
            call.fragments.push_str(arguments);
        }
        if !touches.contains(&key) {
            touches.push(key);
        }
        Ok(())
    }

    /// A call given whole in one event: opened, given its arguments, ended.
    fn whole_call(
        &mut self,
        key: Key,
        tool: &str,
        arguments: Value,
        touches: &mut Vec<Key>,
    ) -> Result<(), StreamBlock> {
        if self.position(key).is_some() {
            return Err(uninspectable(
                "Warden stopped this response: a tool call was given twice",
            ));
        }
        self.fragment(key, Some(tool), None, touches)?;
        if let Some(call) = self.calls.iter_mut().find(|c| c.key == key) {
            call.whole.push(arguments);
            call.done = true;
        }
        Ok(())
    }

    /// Ends the open calls `which` selects; returns every call it selects.
    fn end_calls(&mut self, which: impl Fn(Key) -> bool) -> Vec<Key> {
        let mut keys = Vec::new();
        for call in self.calls.iter_mut().filter(|c| which(c.key)) {
            call.done = true;
            keys.push(call.key);
        }
        keys
    }

    fn observe(
        &mut self,
        name: Option<&str>,
        body: &Map<String, Value>,
    ) -> Result<Vec<Key>, StreamBlock> {
        let mut touches = Vec::new();
        let kind = event_type(name, body);
        // By its type or its SSE name: a client may read either.
        let is = |k: &str| kind == k || name == Some(k);
        match self.api {
            StreamApi::OpenAiChat => {
                let choices = body.get("choices").and_then(Value::as_array);
                for (position, choice) in choices.into_iter().flatten().enumerate() {
                    let outer = choice
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(position as u64);
                    let delta = choice.get("delta");
                    let listed = delta
                        .and_then(|d| d.get("tool_calls"))
                        .and_then(Value::as_array);
                    for (position, entry) in listed.into_iter().flatten().enumerate() {
                        let inner = entry
                            .get("index")
                            .and_then(Value::as_u64)
                            .unwrap_or(position as u64)
                            .min(LEGACY - 1);
                        let part = entry.get("function").or_else(|| entry.get("custom"));
                        let text =
                            |key: &str| part.and_then(|p| p.get(key)).and_then(Value::as_str);
                        let arguments = text("arguments").or_else(|| text("input"));
                        self.fragment(Key { outer, inner }, text("name"), arguments, &mut touches)?;
                    }
                    if let Some(legacy) = delta
                        .and_then(|d| d.get("function_call"))
                        .filter(|v| v.is_object())
                    {
                        let text = |key: &str| legacy.get(key).and_then(Value::as_str);
                        let key = Key {
                            outer,
                            inner: LEGACY,
                        };
                        self.fragment(key, text("name"), text("arguments"), &mut touches)?;
                    }
                    if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                        touches.extend(self.end_calls(|k| k.outer == outer));
                    }
                }
            }
            StreamApi::Anthropic => {
                let block = body.get("index").and_then(Value::as_u64);
                let key = block.map(Key::block);
                let ours = key.is_some_and(|k| self.position(k).is_some());
                let json_delta = body
                    .get("delta")
                    .and_then(|d| d.get("type"))
                    .and_then(Value::as_str)
                    == Some("input_json_delta");
                let tool_use =
                    |block: &Value| block.get("type").and_then(Value::as_str) == Some("tool_use");
                let content = body.get("content_block");
                let tool_block = content.is_some_and(tool_use);
                // Calls given whole in a message (providers send it empty
                // in `message_start`; a client would still read them).
                let whole = body
                    .get("message")
                    .and_then(|m| m.get("content"))
                    .and_then(Value::as_array);
                for (inner, block) in whole.into_iter().flatten().enumerate() {
                    let key = Key::block(inner as u64);
                    if tool_use(block) && self.position(key).is_none() {
                        let name = block.get("name").and_then(Value::as_str);
                        let input = block.get("input").cloned().unwrap_or(Value::Null);
                        self.whole_call(key, name.unwrap_or_default(), input, &mut touches)?;
                    }
                }
                match key {
                    None if tool_block => {
                        return Err(uninspectable(
                            "Warden stopped this response: a tool call it cannot place",
                        ));
                    }
                    // Whatever the event says it is: JSON a client could
                    // read as a call's input.
                    _ if json_delta && !ours => self.unplaced(block)?,
                    Some(key) if is("content_block_start") || tool_block => {
                        if ours {
                            return Err(uninspectable(
                                "Warden stopped this response: a content block started twice",
                            ));
                        }
                        // Besides calls, only the tools the provider runs
                        // itself stream JSON input; a JSON delta for any
                        // other block (a kind this gateway does not know)
                        // is not sent.
                        let block_type =
                            content.and_then(|c| c.get("type")).and_then(Value::as_str);
                        if matches!(block_type, Some("server_tool_use" | "mcp_tool_use")) {
                            self.start(key.inner)?;
                        }
                        if tool_block {
                            let name = content.and_then(|c| c.get("name")).and_then(Value::as_str);
                            self.fragment(key, Some(name.unwrap_or_default()), None, &mut touches)?;
                            let input = content.and_then(|c| c.get("input"));
                            if let (Some(input), Some(at)) = (input, self.position(key)) {
                                if let Some(call) = self.calls.get_mut(at) {
                                    call.whole.push(input.clone());
                                }
                            }
                        }
                    }
                    Some(key) if ours && (json_delta || is("content_block_delta")) => {
                        let json = body
                            .get("delta")
                            .filter(|_| json_delta)
                            .and_then(|d| d.get("partial_json"))
                            .and_then(Value::as_str);
                        // Any other delta of a tool block carries nothing
                        // the client runs, but still belongs to the call.
                        self.fragment(key, None, Some(json.unwrap_or_default()), &mut touches)?;
                    }
                    Some(key) if ours && is("content_block_stop") => {
                        touches.extend(self.end_calls(|k| k == key));
                    }
                    _ if is("message_stop") => touches.extend(self.end_calls(|_| true)),
                    _ if is("message_delta") => {
                        // Its stop reason depends on every call's verdict.
                        touches.extend(self.calls.iter().map(|c| c.key));
                    }
                    _ => {}
                }
            }
            StreamApi::OpenAiResponses => {
                let output = body.get("output_index").and_then(Value::as_u64);
                let key = output.map(Key::output);
                let ours = key.is_some_and(|k| self.position(k).is_some());
                let item_call = body.get("item").and_then(responses_call);
                if let Some(Value::Array(items)) =
                    body.get("response").and_then(|r| r.get("output"))
                {
                    // The response repeated (or given only) whole: a call
                    // in it not seen before is judged here.
                    for (outer, item) in items.iter().enumerate() {
                        let key = Key::output(outer as u64);
                        if let Some((tool, arguments)) = responses_call(item) {
                            match self.calls.iter_mut().find(|c| c.key == key) {
                                None => self.whole_call(key, &tool, arguments, &mut touches)?,
                                // A copy of a call not judged yet is judged too.
                                Some(call) if call.verdict.is_none() => call.whole.push(arguments),
                                // A copy of a call let through (or waiting
                                // for an approver) must be the call judged:
                                // clients run the calls of the final response.
                                Some(call)
                                    if !matches!(call.verdict, Some(Verdict::Refuse(_)))
                                        && !call.judged.contains(&arguments) =>
                                {
                                    return Err(uninspectable(
                                        "Warden stopped this response: a copy of a tool call differs from the call it judged",
                                    ));
                                }
                                Some(_) => {}
                            }
                            if !touches.contains(&key) {
                                touches.push(key);
                            }
                        }
                    }
                }
                let added = is("response.output_item.added");
                let item_done = is("response.output_item.done");
                let arguments_event = [
                    "response.function_call_arguments.delta",
                    "response.function_call_arguments.done",
                    "response.custom_tool_call_input.delta",
                    "response.custom_tool_call_input.done",
                ]
                .into_iter()
                .any(is);
                if arguments_event && !ours {
                    // Only call items take these events.
                    return Err(unplaced_arguments());
                }
                match (item_call, key) {
                    (Some(_), None) => {
                        return Err(uninspectable(
                            "Warden stopped this response: a tool call it cannot place",
                        ));
                    }
                    (Some((tool, _)), Some(key)) if !ours && added => {
                        self.fragment(key, Some(&tool), None, &mut touches)?;
                    }
                    // A call item first seen whole (in its done event, or
                    // any other): judged at once.
                    (Some((tool, arguments)), Some(key)) if !ours => {
                        self.whole_call(key, &tool, arguments, &mut touches)?;
                    }
                    (Some(_), Some(_)) if added => {
                        return Err(uninspectable(
                            "Warden stopped this response: an output item was added twice",
                        ));
                    }
                    (Some((_, arguments)), Some(key)) => {
                        if let Some(call) = self.calls.iter_mut().find(|c| c.key == key) {
                            if call.done {
                                return Err(uninspectable(
                                    "Warden stopped this response: a tool call went on after it ended",
                                ));
                            }
                            call.whole.push(arguments);
                        }
                        touches.push(key);
                        if item_done {
                            touches.extend(self.end_calls(|k| k == key));
                        }
                    }
                    (None, Some(key)) if ours && item_done => {
                        touches.extend(self.end_calls(|k| k == key));
                    }
                    (None, Some(key)) if ours => {
                        let is_delta = [Some(kind.as_str()), name].into_iter().flatten().any(|k| {
                            k.ends_with("_call_arguments.delta") || k.ends_with("_call_input.delta")
                        });
                        let delta = is_delta
                            .then(|| body.get("delta").and_then(Value::as_str))
                            .flatten();
                        self.fragment(key, None, Some(delta.unwrap_or_default()), &mut touches)?;
                    }
                    _ if [
                        "response.completed",
                        "response.incomplete",
                        "response.failed",
                        "response.done",
                    ]
                    .into_iter()
                    .any(is) =>
                    {
                        touches.extend(self.end_calls(|_| true));
                    }
                    _ => {}
                }
            }
            StreamApi::OpenAiCompletions => {}
        }
        Ok(touches)
    }

    // ---- judging and releasing ----------------------------------------------

    /// Judges every ended call not judged yet; with `complete` false, every
    /// call not judged yet (the stream ended).
    fn judge_pending(&mut self, complete: bool) {
        for at in 0..self.calls.len() {
            let Some(call) = self.calls.get(at) else {
                break;
            };
            if call.verdict.is_some() || (complete && !call.done) {
                continue;
            }
            let mut arguments = Vec::new();
            if !call.fragments.is_empty() || call.whole.is_empty() {
                arguments.push(decoded(Some(&Value::String(call.fragments.clone()))));
            }
            for whole in &call.whole {
                let empty =
                    whole.as_object().is_some_and(Map::is_empty) && !call.fragments.is_empty();
                if !empty && !arguments.contains(whole) {
                    arguments.push(whole.clone());
                }
            }
            let verdict = self.judge.judge(&StreamedCall {
                id: at,
                tool: &call.tool,
                arguments: &arguments,
                complete,
            });
            // Calls keep the provider's numbering, less the refused calls
            // before them in their choice.
            let key = call.key;
            let refused_before = self.refused_before(key);
            if let Some(call) = self.calls.get_mut(at) {
                if verdict == Verdict::Allow && key.inner != LEGACY {
                    call.sent_index = Some(key.inner.saturating_sub(refused_before));
                }
                call.verdict = Some(verdict);
                call.done = true;
                call.fragments = String::new();
                call.whole = Vec::new();
                call.judged = arguments;
            }
        }
    }

    /// A call's verdict, once it has one (a pending call has none yet).
    fn verdict(&self, key: Key) -> Option<&Verdict> {
        self.calls
            .iter()
            .find(|c| c.key == key)
            .and_then(|c| c.verdict.as_ref())
            .filter(|v| **v != Verdict::Pending)
    }

    /// Sends the held events whose calls are all judged, in order.
    fn release(&mut self, out: &mut Vec<u8>) {
        while let Some(front) = self.queue.front() {
            if front.touches.iter().any(|&k| self.verdict(k).is_none()) {
                break;
            }
            let Some(held) = self.queue.pop_front() else {
                break;
            };
            self.held_bytes = self.held_bytes.saturating_sub(held.framed.raw.len());
            self.send(held, out);
        }
    }

    /// One held event as decided.
    fn send(&mut self, held: Held, out: &mut Vec<u8>) {
        let Held {
            framed,
            body,
            touches,
        } = held;
        let Some(mut body) = body else {
            // `[DONE]`: no choice ends after it.
            self.send_chat_notes(out);
            out.extend_from_slice(framed.raw.as_bytes());
            return;
        };
        let name = framed.event.event.as_deref();
        let mut before: Vec<SseEvent> = Vec::new();
        // `None`: the event is dropped.
        let kept = match self.api {
            StreamApi::OpenAiChat => Some(self.send_chat(&mut body)),
            StreamApi::Anthropic => self.send_anthropic(name, &mut body, &touches, &mut before),
            StreamApi::OpenAiResponses => self.send_responses(&mut body),
            StreamApi::OpenAiCompletions => Some(false),
        };
        let Some(mut changed) = kept else {
            if self.api == StreamApi::OpenAiResponses {
                self.sequence_offset += 1;
            }
            return;
        };
        if self.api == StreamApi::OpenAiResponses && self.sequence_offset > 0 {
            if let Some(n) = body.get("sequence_number").and_then(Value::as_u64) {
                body.insert(
                    "sequence_number".into(),
                    n.saturating_sub(self.sequence_offset).into(),
                );
                changed = true;
            }
        }
        for event in before {
            out.extend(event.to_bytes());
        }
        if changed {
            let event = SseEvent {
                data: Some(serde_json::to_string(&Value::Object(body)).unwrap_or_default()),
                ..framed.event
            };
            out.extend(event.to_bytes());
        } else {
            out.extend_from_slice(framed.raw.as_bytes());
        }
    }

    fn refusal(&self, key: Key) -> Option<String> {
        match self.verdict(key) {
            Some(Verdict::Refuse(why)) => Some(why.clone()),
            _ => None,
        }
    }

    /// Chat: refused calls' fragments out (the sentence into the content,
    /// once), allowed calls renumbered, the finish reason fixed.
    fn send_chat(&mut self, body: &mut Map<String, Value>) -> bool {
        let mut changed = false;
        let mut noted = false;
        let Some(Value::Array(choices)) = body.get_mut("choices") else {
            return false;
        };
        for (position, choice) in choices.iter_mut().enumerate() {
            let Some(choice) = choice.as_object_mut() else {
                continue;
            };
            let outer = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(position as u64);
            if let Some(Value::Object(delta)) = choice.get_mut("delta") {
                if let Some(Value::Array(entries)) = delta.get_mut("tool_calls") {
                    let mut kept = Vec::new();
                    for (position, mut entry) in std::mem::take(entries).into_iter().enumerate() {
                        let inner = entry
                            .get("index")
                            .and_then(Value::as_u64)
                            .unwrap_or(position as u64)
                            .min(LEGACY - 1);
                        let key = Key { outer, inner };
                        let Some(call) = self.calls.iter_mut().find(|c| c.key == key) else {
                            kept.push(entry);
                            continue;
                        };
                        match &call.verdict {
                            Some(Verdict::Refuse(why)) => {
                                if !call.noted {
                                    call.noted = true;
                                    self.chat_notes.push((outer, why.clone()));
                                    noted = true;
                                }
                                changed = true;
                            }
                            _ => {
                                if let (Some(sent), Some(object)) =
                                    (call.sent_index, entry.as_object_mut())
                                {
                                    let index = object.get("index").and_then(Value::as_u64);
                                    if index.is_some_and(|index| index != sent) {
                                        object.insert("index".into(), sent.into());
                                        changed = true;
                                    }
                                }
                                kept.push(entry);
                            }
                        }
                    }
                    if kept.is_empty() {
                        delta.remove("tool_calls");
                    } else {
                        *entries = kept;
                    }
                }
                let legacy = Key {
                    outer,
                    inner: LEGACY,
                };
                if delta.get("function_call").is_some_and(Value::is_object) {
                    if let Some(call) = self.calls.iter_mut().find(|c| c.key == legacy) {
                        if let Some(Verdict::Refuse(why)) = &call.verdict {
                            delta.remove("function_call");
                            if !call.noted {
                                call.noted = true;
                                self.chat_notes.push((outer, why.clone()));
                                noted = true;
                            }
                            changed = true;
                        }
                    }
                }
            }
            let finishing = choice
                .get("finish_reason")
                .is_some_and(|reason| !reason.is_null());
            if finishing && self.chat_notes.iter().any(|(choice, _)| *choice == outer) {
                let delta = choice
                    .entry("delta")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(delta) = delta {
                    let text = delta
                        .get("content")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let text = self.take_chat_notes(outer, text);
                    delta.insert("content".into(), text.into());
                    changed = true;
                }
            }
            let ended_for_calls = matches!(
                choice.get("finish_reason").and_then(Value::as_str),
                Some("tool_calls" | "function_call")
            );
            let mine = self.calls.iter().filter(|c| c.key.outer == outer);
            let refused = mine
                .clone()
                .any(|c| matches!(c.verdict, Some(Verdict::Refuse(_))));
            let allowed = mine.clone().any(|c| c.verdict == Some(Verdict::Allow));
            if ended_for_calls && refused && !allowed {
                choice.insert("finish_reason".into(), "stop".into());
                changed = true;
            }
        }
        if noted {
            self.chat_template = body
                .iter()
                .filter(|(key, _)| !matches!(key.as_str(), "choices" | "usage"))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
        }
        changed
    }

    /// `text`, then the waiting sentences of `choice`'s refused calls, each
    /// set apart by a blank line.
    fn take_chat_notes(&mut self, choice: u64, text: &str) -> String {
        let mut out = text.to_owned();
        self.chat_notes.retain(|(at, note)| {
            if *at != choice {
                return true;
            }
            out.push_str("\n\n");
            out.push_str(note);
            false
        });
        out
    }

    /// Chat: sentences whose choice did not end (the stream ended first, or
    /// `[DONE]` came), each choice's in an event of its own.
    fn send_chat_notes(&mut self, out: &mut Vec<u8>) {
        while let Some(&(choice, _)) = self.chat_notes.first() {
            let text = self.take_chat_notes(choice, "");
            let mut chunk = self.chat_template.clone();
            chunk.insert(
                "choices".into(),
                json!([{"index": choice, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]),
            );
            let data = serde_json::to_string(&Value::Object(chunk)).unwrap_or_default();
            out.extend(SseEvent::data(data).to_bytes());
        }
    }

    /// Anthropic: a refused `tool_use` block becomes a text block carrying
    /// the sentence; `None` when the event is dropped.
    fn send_anthropic(
        &mut self,
        name: Option<&str>,
        body: &mut Map<String, Value>,
        touches: &[Key],
        before: &mut Vec<SseEvent>,
    ) -> Option<bool> {
        let kind = event_type(name, body);
        let mut changed = false;
        // Refused calls given whole in a message become text.
        let message_level = body.contains_key("message");
        if let Some(Value::Array(content)) =
            body.get_mut("message").and_then(|m| m.get_mut("content"))
        {
            for (inner, block) in content.iter_mut().enumerate() {
                let key = Key::block(inner as u64);
                if let Some(why) = self.refusal(key) {
                    *block = json!({"type": "text", "text": why});
                    changed = true;
                }
            }
        }
        // The turn ends for the calls only if one is left.
        let refused = self
            .calls
            .iter()
            .any(|c| matches!(c.verdict, Some(Verdict::Refuse(_))));
        let allowed = self.calls.iter().any(|c| c.verdict == Some(Verdict::Allow));
        let mut ends_turn = false;
        if let Some(Value::Object(delta)) = body.get_mut("delta") {
            if let Some(reason) = delta.get("stop_reason").filter(|r| !r.is_null()) {
                ends_turn = true;
                if refused && !allowed && reason.as_str() == Some("tool_use") {
                    delta.insert("stop_reason".into(), "end_turn".into());
                    changed = true;
                }
            }
        }
        let refusal = body
            .get("index")
            .and_then(Value::as_u64)
            .map(Key::block)
            .filter(|k| touches.contains(k))
            .and_then(|key| self.refusal(key).map(|why| (key, why)));
        let Some((key, why)) = refusal else {
            return Some(changed);
        };
        // Whatever the event says it is, a tool block in it becomes text.
        let start = body.contains_key("content_block");
        if start {
            body.insert("content_block".into(), json!({"type": "text", "text": ""}));
            changed = true;
        }
        if kind == "content_block_stop" {
            if let Some(call) = self.calls.iter_mut().find(|c| c.key == key) {
                if !call.noted {
                    call.noted = true;
                    before.push(SseEvent::named(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": key.inner,
                            "delta": {"type": "text_delta", "text": why}})
                        .to_string(),
                    ));
                }
            }
            return Some(changed);
        }
        // The call's deltas are dropped; what else the event is stays,
        // without a JSON delta it carries for the call (an event named
        // `message_stop` whose JSON, lacking a type, holds one).
        let keeps = start || message_level || ends_turn || kind == "message_stop";
        let json_delta = body
            .get("delta")
            .and_then(|d| d.get("type"))
            .and_then(Value::as_str)
            == Some("input_json_delta");
        if keeps && json_delta {
            body.remove("delta");
            changed = true;
        }
        keeps.then_some(changed)
    }

    /// Responses: a refused call's item becomes a message item; its other
    /// events are dropped (`None`); the final response lists the message.
    fn send_responses(&mut self, body: &mut Map<String, Value>) -> Option<bool> {
        let mut changed = false;
        if let Some(Value::Array(output)) =
            body.get_mut("response").and_then(|r| r.get_mut("output"))
        {
            for (at, item) in output.iter_mut().enumerate() {
                let key = Key::output(at as u64);
                if let Some(why) = self.refusal(key) {
                    *item = responses_note(at, &why);
                    changed = true;
                }
            }
        }
        let Some(output) = body.get("output_index").and_then(Value::as_u64) else {
            return Some(changed);
        };
        let Some(why) = self.refusal(Key::output(output)) else {
            return Some(changed);
        };
        // Whatever the event says it is: its item becomes the message;
        // without one, it is the call's and dropped.
        if body.contains_key("item") {
            let at = usize::try_from(output).unwrap_or(usize::MAX);
            body.insert("item".into(), responses_note(at, &why));
            for field in ["delta", "arguments", "input"] {
                body.remove(field);
            }
            return Some(true);
        }
        None
    }
}
