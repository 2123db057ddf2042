//! Streaming responses (`text/event-stream`), rewritten event by event.
//!
//! A streamed completion must be inspected without waiting for its end (the
//! user watches it arrive) and without leaking: a value to be masked may be
//! cut across two events, or two TCP chunks, and must still never reach the
//! client in clear. The work is split in three layers:
//!
//! ## Layout
//! - `parser.rs`: [`SseParser`], a `feed(chunk)`/`finish()` parser of the
//!   WHATWG event-stream format (any line ending, a CR/LF pair cut between
//!   chunks, UTF-8 cut between chunks, bounded line and event sizes), and
//!   [`SseEvent`], which re-serializes itself.
//! - this file: [`StreamText`], the interface of the text transformer (the
//!   masking engine implements it): text goes in per [`Channel`], rewritten
//!   text comes out, and it may hold back a tail that could still become a
//!   match; or it decides to block ([`StreamBlock`]).
//! - `calls.rs`: [`CallGate`], which holds a streamed tool call until it
//!   is complete and judged ([`CallJudge`]), then sends it or replaces it.
//! - `rewrite/`: [`StreamRewriter`] (a file per provider dialect), which
//!   knows where each provider API ([`StreamApi`]) puts its text in its
//!   events, routes every text delta through the transformer, writes the
//!   returned text back into the decoded JSON (never by string replacement in
//!   serialized JSON), flushes held-back text as an extra delta before the
//!   event that ends its channel, and turns a block into an error event in
//!   the provider's own format.
//!
//! The transformer never sees SSE or JSON, and the rewriter never decides what
//! is sensitive: each is tested alone (`tests.rs` drives the rewriter with
//! small transformers on recorded streams of every API, cut at every byte).

mod calls;
mod parser;
mod rewrite;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_calls;

pub use calls::{CallGate, CallJudge, StreamedCall, Verdict, MAX_CALLS, MAX_HELD};
pub use parser::{SseError, SseEvent, SseParser, DEFAULT_MAX_EVENT, DEFAULT_MAX_LINE};
pub use rewrite::{StreamApi, StreamRewriter};

use crate::protocol::Reason;
use serde_json::{Map, Value};

/// An event's `type` field, else its SSE event name: what the event is, as
/// the rewriter and the call gate read it.
fn event_type(name: Option<&str>, body: &Map<String, Value>) -> String {
    body.get("type")
        .and_then(Value::as_str)
        .or(name)
        .unwrap_or_default()
        .to_owned()
}

/// Where a piece of streamed text belongs: each is its own text stream.
///
/// `index` tells the streams of one kind apart within one response. It is
/// the OpenAI choice index (chat and completions content), the Anthropic
/// content block index, or the Responses API output index (function-call
/// arguments). Where the API nests two indexes, both are packed as
/// `outer << 32 | inner`: OpenAI tool calls (`choice`, tool call `index`; a
/// legacy `function_call` uses inner `u32::MAX`) and Responses text (output
/// index, content index). Transformers should treat it as an opaque key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Channel {
    /// Which stream of this kind (see the type's documentation).
    pub index: u64,
    /// What the text is.
    pub kind: ChannelKind,
}

/// What a channel's text is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum ChannelKind {
    /// Text shown to the user (content, completion text, output text).
    Text,
    /// A tool call's arguments: pieces of a JSON document, so a transformer
    /// that rewrites them must keep the JSON valid once the pieces are joined.
    ToolArguments,
    /// A refusal the model gave instead of an answer.
    Refusal,
    /// Reasoning shown to the user: Anthropic thinking, Responses reasoning
    /// text and summaries.
    Reasoning,
}

/// The text transformer a [`StreamRewriter`] routes every text delta through.
pub trait StreamText {
    /// New text for `channel`; returns the text that may be emitted now (already rewritten). May hold back a tail that could still become a match.
    ///
    /// # Errors
    /// A [`StreamBlock`] when the response must not continue.
    fn push(&mut self, channel: &Channel, text: &str) -> Result<String, StreamBlock>;

    /// End of the channel's text: everything held back, rewritten.
    ///
    /// # Errors
    /// A [`StreamBlock`] when the response must not continue.
    fn finish(&mut self, channel: &Channel) -> Result<String, StreamBlock>;

    /// A whole text that belongs to no channel (a citation's quoted text, a
    /// title, a field the rewriter has no channel for), read at once.
    ///
    /// # Errors
    /// A [`StreamBlock`] when the response must not continue.
    fn whole(&mut self, text: &str) -> Result<String, StreamBlock> {
        let channel = Channel {
            index: u64::MAX,
            kind: ChannelKind::Text,
        };
        let mut out = self.push(&channel, text)?;
        out.push_str(&self.finish(&channel)?);
        Ok(out)
    }
}

/// A block decided mid-stream: the rewriter sends an error event naming
/// `rule` and ends the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamBlock {
    /// The policy rule that decided the block, or the gateway's own code
    /// when no rule did; sent to the client and meant for audit.
    pub rule: String,
    /// Why, for the client. It must never contain the matched value.
    pub message: String,
    /// The audit record's reason: [`Reason::Blocked`] for a rule, the
    /// gateway's own code when the stream could not be inspected.
    pub reason: Reason,
}

impl StreamBlock {
    /// A block by the policy's `rule`, explained by `message`.
    pub fn new(rule: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            rule: rule.into(),
            message: message.into(),
            reason: Reason::Blocked,
        }
    }

    /// A stop by the gateway itself: a stream it cannot inspect within its
    /// limits is not forwarded unread.
    pub fn uninspectable(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            rule: reason.as_str().to_owned(),
            message: message.into(),
            reason,
        }
    }
}
