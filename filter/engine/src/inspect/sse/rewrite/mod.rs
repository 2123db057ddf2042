//! [`StreamRewriter`]: a provider's event stream in, the same stream with
//! every piece of generated text passed through a [`StreamText`] out.
//!
//! ## Layout
//! This file: the rewriter, its channels and the events it writes; one
//! file per dialect (`openai`: chat and completions chunks, `responses`:
//! OpenAI Responses events, `anthropic`: Messages events).
//!
//! ## How each API is read
//! Events are recognized by their JSON shape (the `type` field, else the SSE
//! event name; for OpenAI chunks, a `choices` array), not by trusting one tag,
//! so a text field is not missed because an event is labelled unexpectedly.
//! - OpenAI chat: `choices[].delta.content`, `.refusal`, `.tool_calls[]
//!   .function.arguments` and the legacy `.function_call.arguments`. A choice
//!   ends at its `finish_reason`, every choice at `data: [DONE]`.
//! - OpenAI completions: `choices[].text`; ends as chat does.
//! - OpenAI Responses: the `.delta` events of `output_text`, `refusal`,
//!   `function_call_arguments`, `reasoning_text` and
//!   `reasoning_summary_text`; a channel ends at its `.done` event (or the
//!   `content_part.done`/`reasoning_summary_part.done`/`output_item.done`/
//!   `response.completed` that repeats it). The events repeating the full text
//!   get the text that was actually sent for the channel, never the
//!   provider's original.
//! - Anthropic: `content_block_delta` with `text_delta.text`,
//!   `thinking_delta.thinking` or `input_json_delta.partial_json`; a block
//!   ends at `content_block_stop`, all at `message_stop`. (Anthropic signs
//!   thinking blocks: a rewritten one fails its signature when a client sends
//!   it back, which is the safe way to fail.)
//! - **Everything else**: every other string of every event (citations and
//!   the text they quote, titles, annotations, fields no provider had when
//!   this was written), minus the structural keys of
//!   [`crate::inspect::body::each_text`], is read whole
//!   ([`StreamText::whole`]). The handlers above note each field they read
//!   as a channel, and only those are left out, so a field is never read
//!   twice and never not at all.
//!
//! ## Decisions
//! - A delta whose rewritten text is empty (all of it held back) is still
//!   sent, with `""`: every provider's clients accept empty deltas, the event
//!   may carry other fields (a role, a Responses `sequence_number`), and one
//!   event in, one event out keeps the stream easy to reason about.
//! - Text held back when a channel ends goes out as an extra delta event of
//!   the channel's own shape, just before the event that ends the channel.
//!   When the OpenAI chunk that ends a choice carries a text field of that
//!   channel itself (often `"text": ""` in completions), the held-back text
//!   is appended to that field instead: it lands in the same place, after
//!   the chunk's own text and before the end, and a stream whose text is not
//!   changed goes out byte for byte.
//! - Responses events carry a `sequence_number`; after an inserted event,
//!   later ones are renumbered so the numbers stay consecutive.
//! - `logprobs` on events with text are cleared (`null` for OpenAI chunks,
//!   `[]` for the Responses API): they spell out the original tokens, which
//!   would reveal what was masked.
//! - Events without text (role chunks, pings, comments, `message_start`, ...)
//!   are forwarded as they came, byte for byte except line endings (always
//!   LF). A `data:` payload that is not a JSON object (`[DONE]` aside) holds
//!   no text a provider sends, and is forwarded as it is.
//! - A [`StreamBlock`], or a stream the parser cannot read (a line or an
//!   event over the limit, which could hide text), ends the stream with an
//!   error event in the API's own format; nothing is sent after it (no
//!   `[DONE]`). The message names the rule, never the matched value.
//!
//! ## Memory
//! Bounded by the parser's limits (one line, one event), a small state per
//! channel (at most 1024 channels; OpenAI and Anthropic states are dropped
//! when their channel ends), what the transformer holds back, and, for the
//! Responses API only, the text sent per channel (its done events repeat it,
//! so it is kept until the stream ends).

use crate::protocol::Reason;
use serde_json::{json, Map, Value};

use super::calls::{CallGate, CallJudge};
use super::parser::{Framed, SseParser};
use super::{event_type, Channel, ChannelKind, SseError, SseEvent, StreamBlock, StreamText};
use crate::inspect::body::each_text_except;

mod anthropic;
mod openai;
mod responses;

use anthropic::anthropic_delta_event;
use openai::chat_choice;

/// The provider API whose event stream is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamApi {
    /// OpenAI `POST /v1/chat/completions` (`chat.completion.chunk`s).
    OpenAiChat,
    /// OpenAI's legacy `POST /v1/completions` (`text_completion`s).
    OpenAiCompletions,
    /// OpenAI `POST /v1/responses` (named `response.*` events).
    OpenAiResponses,
    /// Anthropic `POST /v1/messages`.
    Anthropic,
}

/// The most text channels one stream may open: more is treated as a stream
/// that cannot be inspected within bounded memory.
const MAX_CHANNELS: usize = 1024;
/// The `code` of the error event sent when a stream is stopped.
const BLOCK_CODE: Reason = Reason::Blocked;
/// The rule named when the stream itself cannot be read.
const FRAMING_RULE: Reason = Reason::StreamFraming;
/// The rule named when a stream opens more than [`MAX_CHANNELS`] channels.
const CHANNELS_RULE: Reason = Reason::StreamChannels;
/// The inner index of an OpenAI legacy `function_call` channel.
const LEGACY_FUNCTION_CALL: u64 = 0xFFFF_FFFF;
/// Set in the inner index of a Responses reasoning summary, so a summary
/// and a reasoning text part with the same index are two channels.
const SUMMARY: u64 = 0x8000_0000;

/// One place an API puts streamed text, with what it takes to write a delta
/// event for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    ChatContent { choice: u64 },
    ChatRefusal { choice: u64 },
    ChatTool { choice: u64, tool: u64 },
    ChatFunction { choice: u64 },
    CompletionText { choice: u64 },
    ResponsesText { output: u64, content: u64 },
    ResponsesRefusal { output: u64, content: u64 },
    ResponsesReasoning { output: u64, content: u64 },
    ResponsesSummary { output: u64, summary: u64 },
    ResponsesTool { output: u64 },
    AnthropicText { block: u64 },
    AnthropicThinking { block: u64 },
    AnthropicJson { block: u64 },
}

/// `outer` and `inner` packed into one channel index (see [`Channel`]).
/// Indexes beyond 32 bits, which no provider sends, may share a channel:
/// their text is then inspected as one stream, which leaks nothing.
fn pack(outer: u64, inner: u64) -> u64 {
    (outer << 32) | (inner & 0xFFFF_FFFF)
}

impl Slot {
    fn channel(self) -> Channel {
        let (index, kind) = match self {
            Self::ChatContent { choice } | Self::CompletionText { choice } => {
                (choice, ChannelKind::Text)
            }
            Self::ChatRefusal { choice } => (choice, ChannelKind::Refusal),
            Self::ChatTool { choice, tool } => (pack(choice, tool), ChannelKind::ToolArguments),
            Self::ChatFunction { choice } => (
                pack(choice, LEGACY_FUNCTION_CALL),
                ChannelKind::ToolArguments,
            ),
            Self::ResponsesText { output, content } => (pack(output, content), ChannelKind::Text),
            Self::ResponsesRefusal { output, content } => {
                (pack(output, content), ChannelKind::Refusal)
            }
            Self::ResponsesReasoning { output, content } => {
                (pack(output, content), ChannelKind::Reasoning)
            }
            Self::ResponsesSummary { output, summary } => {
                (pack(output, SUMMARY | summary), ChannelKind::Reasoning)
            }
            Self::ResponsesTool { output } => (output, ChannelKind::ToolArguments),
            Self::AnthropicText { block } => (block, ChannelKind::Text),
            Self::AnthropicThinking { block } => (block, ChannelKind::Reasoning),
            Self::AnthropicJson { block } => (block, ChannelKind::ToolArguments),
        };
        Channel { index, kind }
    }

    /// The OpenAI choice this text belongs to.
    fn choice(self) -> Option<u64> {
        match self {
            Self::ChatContent { choice }
            | Self::ChatRefusal { choice }
            | Self::ChatTool { choice, .. }
            | Self::ChatFunction { choice }
            | Self::CompletionText { choice } => Some(choice),
            _ => None,
        }
    }

    /// The Anthropic content block this text belongs to.
    fn block(self) -> Option<u64> {
        match self {
            Self::AnthropicText { block }
            | Self::AnthropicThinking { block }
            | Self::AnthropicJson { block } => Some(block),
            _ => None,
        }
    }
}

/// A channel the stream has used.
#[derive(Debug)]
struct ChannelState {
    slot: Slot,
    /// Text was pushed and the channel has not been finished.
    open: bool,
    /// Responses API only: all text sent for the channel, for the events
    /// that repeat it in full.
    emitted: String,
    /// Responses API only: the output item, for the delta events added.
    item_id: Option<String>,
}

/// What handling one event produced besides the event itself.
#[derive(Debug, Default)]
struct EventEdit {
    /// Events to send before it (held-back text of channels it ends).
    before: Vec<u8>,
    /// Whether the event's JSON was changed (otherwise its original text is
    /// sent).
    changed: bool,
    /// The fields read as channel text: keys from the event's root, arrays
    /// adding nothing. Everything else is read whole afterwards.
    read: Vec<Vec<&'static str>>,
}

impl EventEdit {
    /// Notes that the field `base.field` was read as channel text.
    fn read(&mut self, base: &[&'static str], field: &'static str) {
        let mut path = base.to_vec();
        path.push(field);
        if !self.read.contains(&path) {
            self.read.push(path);
        }
    }

    fn set(&mut self, target: &mut String, value: String) {
        if *target != value {
            *target = value;
            self.changed = true;
        }
    }
}

/// How a field holding a channel's text is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// New text for the channel (a delta, or text in an `added` event).
    Push,
    /// The channel's full text, repeated as it ends.
    Close,
}

/// Rewrites one streamed response: `feed` each body chunk, send what it
/// returns, and `finish` at the end of the body.
///
/// ```
/// use warden_engine::inspect::sse::{Channel, StreamApi, StreamBlock, StreamRewriter, StreamText};
/// struct Upper;
/// impl StreamText for Upper {
///     fn push(&mut self, _: &Channel, text: &str) -> Result<String, StreamBlock> {
///         Ok(text.to_uppercase())
///     }
///     fn finish(&mut self, _: &Channel) -> Result<String, StreamBlock> {
///         Ok(String::new())
///     }
/// }
/// let mut rewriter = StreamRewriter::new(StreamApi::OpenAiCompletions, Box::new(Upper));
/// let out = rewriter.feed(b"data: {\"choices\":[{\"index\":0,\"text\":\"hi\"}]}\n\n");
/// assert_eq!(out, b"data: {\"choices\":[{\"index\":0,\"text\":\"HI\"}]}\n\n");
/// ```
pub struct StreamRewriter {
    api: StreamApi,
    text: Box<dyn StreamText>,
    parser: SseParser,
    /// Channels in the order they were opened (a handful per response, so a
    /// list beats a map; the order makes end-of-stream flushes repeatable).
    channels: Vec<ChannelState>,
    /// OpenAI: the last chunk's fields other than `choices`, to build the
    /// extra delta chunks like the provider's own.
    template: Option<Map<String, Value>>,
    usage: Option<Value>,
    /// Responses API: the last `sequence_number` sent, and how many events
    /// were added before the current one.
    last_sequence: Option<u64>,
    sequence_offset: u64,
    blocked: Option<StreamBlock>,
    /// Blocked, unreadable or finished: nothing more is sent.
    ended: bool,
    /// Events read from the provider, for the session record.
    events: u64,
    /// Holds tool calls until they are judged (see
    /// [`StreamRewriter::judging_calls`]).
    gate: Option<CallGate>,
}

impl std::fmt::Debug for StreamRewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRewriter")
            .field("api", &self.api)
            .field("channels", &self.channels.len())
            .field("blocked", &self.blocked)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl StreamRewriter {
    /// A rewriter of an `api` stream sending its text through `text`, with
    /// the parser's default limits.
    pub fn new(api: StreamApi, text: Box<dyn StreamText>) -> Self {
        Self::with_parser(api, text, SseParser::new())
    }

    /// As [`Self::new`], reading the stream with `parser` (for other limits).
    pub fn with_parser(api: StreamApi, text: Box<dyn StreamText>, parser: SseParser) -> Self {
        Self {
            api,
            text,
            parser,
            channels: Vec::new(),
            template: None,
            usage: None,
            last_sequence: None,
            sequence_offset: 0,
            blocked: None,
            ended: false,
            events: 0,
            gate: None,
        }
    }

    /// Holds each tool call the answer makes until it is complete and
    /// `judge` has decided it, then sends it as it came or replaced (see
    /// [`CallGate`]); the rest of the stream keeps flowing.
    pub fn judging_calls(mut self, judge: Box<dyn CallJudge>) -> Self {
        self.gate = Some(CallGate::new(self.api, judge));
        self
    }

    /// The API this rewriter reads.
    pub fn api(&self) -> StreamApi {
        self.api
    }

    /// The bytes to send the client for this body chunk: every event it
    /// completes, rewritten. Empty once the stream was stopped or finished.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.ended {
            let framed = self.parser.feed_framed(chunk);
            self.handle(framed, &mut out);
        }
        out
    }

    /// The bytes to send at the end of the body: a last event left without
    /// its blank line, then the text every still-open channel held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        let framed = self.parser.finish_framed();
        self.handle(framed, &mut out);
        if !self.ended {
            let mut edit = EventEdit::default();
            let ended = self
                .close_all(&mut edit)
                .and_then(|()| self.emit(&edit.before, &mut out))
                .and_then(|()| match &mut self.gate {
                    Some(gate) => gate.finish(&mut out),
                    None => Ok(()),
                });
            if let Err(block) = ended {
                self.stop(block, &mut out);
            }
        }
        self.ended = true;
        out
    }

    /// Whether a tool call waits for a decision from outside (an approver):
    /// its events and every later one are held until
    /// [`StreamRewriter::decide_call`].
    pub fn awaiting_calls(&self) -> bool {
        self.gate.as_ref().is_some_and(CallGate::awaiting)
    }

    /// Decides a call the judge left pending; the bytes that may go now.
    pub fn decide_call(&mut self, id: usize, verdict: super::Verdict) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(gate) = &mut self.gate {
            gate.decide(id, verdict, &mut out);
        }
        out
    }

    /// The last token usage the provider reported, for audit: OpenAI's final
    /// chunk `usage`, Anthropic's `message_start` usage updated by
    /// `message_delta`, the Responses API's `response.completed` usage.
    pub fn usage(&self) -> Option<&Value> {
        self.usage.as_ref()
    }

    /// How many events the provider sent (that were read).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Why the stream was stopped, if it was.
    pub fn blocked(&self) -> Option<&StreamBlock> {
        self.blocked.as_ref()
    }

    fn handle(&mut self, framed: Result<Vec<Framed>, SseError>, out: &mut Vec<u8>) {
        match framed {
            Ok(events) => {
                for event in events {
                    self.events += 1;
                    if let Err(block) = self.event(event, out) {
                        return self.stop(block, out);
                    }
                }
                // The parser hands over the events before an error first.
                if let Some(block) = self.parser.error().map(framing_block) {
                    self.stop(block, out);
                }
            }
            Err(err) => self.stop(framing_block(&err), out),
        }
    }

    /// Sends what one event became: through the gate when calls are
    /// judged.
    fn emit(&mut self, sent: &[u8], out: &mut Vec<u8>) -> Result<(), StreamBlock> {
        match &mut self.gate {
            Some(gate) => gate.pass(sent, out),
            None => {
                out.extend_from_slice(sent);
                Ok(())
            }
        }
    }

    /// Sends the error event and ends the stream (what the gate still
    /// held is withheld).
    fn stop(&mut self, block: StreamBlock, out: &mut Vec<u8>) {
        let message = if block.message.is_empty() {
            format!("Warden blocked this response (rule {}).", block.rule)
        } else {
            format!("{} (rule {})", block.message, block.rule)
        };
        out.extend(self.error_event(&message).to_bytes());
        self.blocked = Some(block);
        self.ended = true;
        self.channels = Vec::new();
        self.template = None;
        self.gate = None;
    }

    fn error_event(&mut self, message: &str) -> SseEvent {
        match self.api {
            StreamApi::OpenAiChat | StreamApi::OpenAiCompletions => SseEvent::data(
                json!({"error": {
                    "message": message,
                    "type": "permission_error",
                    "code": BLOCK_CODE.as_str(),
                }})
                .to_string(),
            ),
            StreamApi::OpenAiResponses => {
                let mut body = Map::new();
                body.insert("type".into(), "error".into());
                body.insert("code".into(), BLOCK_CODE.as_str().into());
                body.insert("message".into(), message.into());
                body.insert("param".into(), Value::Null);
                self.responses_event("error", body)
            }
            StreamApi::Anthropic => SseEvent::named(
                "error",
                json!({"type": "error", "error": {"type": "permission_error", "message": message}})
                    .to_string(),
            ),
        }
    }

    /// One event: rewritten into `out`, preceded by any events it calls for
    /// (through the gate, when calls are judged).
    fn event(&mut self, framed: Framed, out: &mut Vec<u8>) -> Result<(), StreamBlock> {
        let Framed { event, raw } = framed;
        let Some(data) = event.data.as_deref() else {
            return self.emit(raw.as_bytes(), out);
        };
        let openai_choices = matches!(
            self.api,
            StreamApi::OpenAiChat | StreamApi::OpenAiCompletions
        );
        if openai_choices && data.trim() == "[DONE]" {
            let mut edit = EventEdit::default();
            self.close_all(&mut edit)?;
            self.emit(&edit.before, out)?;
            return self.emit(raw.as_bytes(), out);
        }
        let Ok(Value::Object(mut body)) = serde_json::from_str::<Value>(data) else {
            return self.emit(raw.as_bytes(), out);
        };
        let name = event.event.as_deref();
        let mut edit = EventEdit::default();
        match self.api {
            StreamApi::OpenAiChat | StreamApi::OpenAiCompletions => {
                self.openai_chunk(&mut body, &mut edit)?;
            }
            StreamApi::OpenAiResponses => self.responses(name, &mut body, &mut edit)?,
            StreamApi::Anthropic => self.anthropic(name, &mut body, &mut edit)?,
        }
        self.other_text(&mut body, &mut edit)?;
        self.emit(&edit.before, out)?;
        let (framed, body) = if edit.changed {
            let value = Value::Object(body);
            let event = SseEvent {
                data: Some(json_text(&value)),
                ..event
            };
            let body = match value {
                Value::Object(body) => body,
                _ => Map::new(),
            };
            let raw = event.to_text();
            (Framed { event, raw }, body)
        } else {
            (Framed { event, raw }, body)
        };
        match &mut self.gate {
            // The gate takes the event as decoded here: it is not parsed twice.
            Some(gate) => gate.pass_decoded(framed, body, out),
            None => {
                out.extend_from_slice(framed.raw.as_bytes());
                Ok(())
            }
        }
    }

    /// Every string of the event that no handler read as channel text,
    /// read whole.
    fn other_text(
        &mut self,
        body: &mut Map<String, Value>,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        let read = std::mem::take(&mut edit.read);
        let skip = |path: &[String]| {
            read.iter()
                .any(|r| r.len() == path.len() && r.iter().zip(path).all(|(a, b)| a == b))
        };
        let text = &mut self.text;
        let mut blocked = None;
        let mut whole = |s: &mut String| -> bool {
            if blocked.is_some() || s.is_empty() {
                return false;
            }
            match text.whole(s) {
                Ok(new) if new != *s => {
                    *s = new;
                    true
                }
                Ok(_) => false,
                Err(block) => {
                    blocked = Some(block);
                    false
                }
            }
        };
        let changed = each_text_except(body, &skip, &mut whole);
        if let Some(block) = blocked {
            return Err(block);
        }
        edit.changed |= changed;
        Ok(())
    }

    // ---- channels -------------------------------------------------------

    fn position(&self, slot: Slot) -> Option<usize> {
        self.channels.iter().position(|state| state.slot == slot)
    }

    /// Sends `text` through the transformer for `slot`'s channel.
    fn push(
        &mut self,
        slot: Slot,
        item_id: Option<&str>,
        text: &str,
    ) -> Result<String, StreamBlock> {
        let at = match self.position(slot) {
            Some(at) => at,
            None if self.channels.len() >= MAX_CHANNELS => return Err(StreamBlock::uninspectable(
                CHANNELS_RULE,
                "Warden stopped this response: it has too many parallel text streams to inspect",
            )),
            None => {
                self.channels.push(ChannelState {
                    slot,
                    open: false,
                    emitted: String::new(),
                    item_id: None,
                });
                self.channels.len() - 1
            }
        };
        let rewritten = self.text.push(&slot.channel(), text)?;
        let keep_text = self.api == StreamApi::OpenAiResponses;
        if let Some(state) = self.channels.get_mut(at) {
            state.open = true;
            if state.item_id.is_none() {
                state.item_id = item_id.map(str::to_owned);
            }
            if keep_text {
                state.emitted.push_str(&rewritten);
            }
        }
        Ok(rewritten)
    }

    /// Finishes `slot`'s channel if it is open: the text it held back.
    fn close(&mut self, slot: Slot) -> Result<String, StreamBlock> {
        let Some(at) = self
            .channels
            .iter()
            .position(|state| state.slot == slot && state.open)
        else {
            return Ok(String::new());
        };
        let flushed = self.text.finish(&slot.channel())?;
        if self.api == StreamApi::OpenAiResponses {
            if let Some(state) = self.channels.get_mut(at) {
                state.open = false;
                state.emitted.push_str(&flushed);
            }
        } else {
            self.channels.remove(at);
        }
        Ok(flushed)
    }

    /// Finishes `slot`'s channel, sending what it held back as a delta event
    /// before the current one.
    fn close_with_delta(&mut self, slot: Slot, edit: &mut EventEdit) -> Result<(), StreamBlock> {
        let flushed = self.close(slot)?;
        if !flushed.is_empty() {
            let delta = self.delta_event(slot, &flushed);
            edit.before.extend(delta.to_bytes());
        }
        Ok(())
    }

    fn open_slots(&self, which: impl Fn(Slot) -> bool) -> Vec<Slot> {
        self.channels
            .iter()
            .filter(|state| state.open && which(state.slot))
            .map(|state| state.slot)
            .collect()
    }

    /// Finishes every open channel (end of the response).
    fn close_all(&mut self, edit: &mut EventEdit) -> Result<(), StreamBlock> {
        for slot in self.open_slots(|_| true) {
            self.close_with_delta(slot, edit)?;
        }
        Ok(())
    }

    /// A delta event carrying `text` for `slot`, shaped like the provider's.
    fn delta_event(&mut self, slot: Slot, text: &str) -> SseEvent {
        let item_id = self
            .position(slot)
            .and_then(|at| self.channels.get(at))
            .and_then(|state| state.item_id.clone());
        match slot {
            Slot::ChatContent { choice } => {
                self.openai_event(chat_choice(choice, json!({ "content": text })))
            }
            Slot::ChatRefusal { choice } => {
                self.openai_event(chat_choice(choice, json!({ "refusal": text })))
            }
            Slot::ChatTool { choice, tool } => self.openai_event(chat_choice(
                choice,
                json!({"tool_calls": [{"index": tool, "function": {"arguments": text}}]}),
            )),
            Slot::ChatFunction { choice } => self.openai_event(chat_choice(
                choice,
                json!({"function_call": {"arguments": text}}),
            )),
            Slot::CompletionText { choice } => self.openai_event(
                json!({"text": text, "index": choice, "logprobs": null, "finish_reason": null}),
            ),
            Slot::ResponsesText { output, content } => {
                let mut body = Map::new();
                if let Some(item_id) = item_id {
                    body.insert("item_id".into(), item_id.into());
                }
                body.insert("output_index".into(), output.into());
                body.insert("content_index".into(), content.into());
                body.insert("delta".into(), text.into());
                body.insert("logprobs".into(), json!([]));
                self.responses_event("response.output_text.delta", body)
            }
            Slot::ResponsesRefusal { output, content } => self.responses_delta(
                "response.refusal.delta",
                item_id,
                output,
                Some(("content_index", content)),
                text,
            ),
            Slot::ResponsesReasoning { output, content } => self.responses_delta(
                "response.reasoning_text.delta",
                item_id,
                output,
                Some(("content_index", content)),
                text,
            ),
            Slot::ResponsesSummary { output, summary } => self.responses_delta(
                "response.reasoning_summary_text.delta",
                item_id,
                output,
                Some(("summary_index", summary)),
                text,
            ),
            Slot::ResponsesTool { output } => self.responses_delta(
                "response.function_call_arguments.delta",
                item_id,
                output,
                None,
                text,
            ),
            Slot::AnthropicText { block } => {
                anthropic_delta_event(block, json!({"type": "text_delta", "text": text}))
            }
            Slot::AnthropicThinking { block } => {
                anthropic_delta_event(block, json!({"type": "thinking_delta", "thinking": text}))
            }
            Slot::AnthropicJson { block } => anthropic_delta_event(
                block,
                json!({"type": "input_json_delta", "partial_json": text}),
            ),
        }
    }
}

/// The block sent when the stream cannot be parsed within the limits: it
/// could hide text, so it is not forwarded unread.
fn framing_block(err: &SseError) -> StreamBlock {
    StreamBlock::uninspectable(
        FRAMING_RULE,
        format!("Warden could not inspect this response stream: {err}"),
    )
}

fn u64_field(body: &Map<String, Value>, key: &str) -> u64 {
    body.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn to_u64(position: usize) -> u64 {
    u64::try_from(position).unwrap_or(u64::MAX)
}

/// A value's JSON text. `serde_json::to_string` writes straight into a byte
/// buffer; `Value`'s `Display` goes through `fmt::Write` one piece at a time,
/// which costs ~10% of a stream's per-event work (callgrind, BENCHMARKS.md).
fn json_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}
