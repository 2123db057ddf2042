//! The rewriter on recorded streams of every API, with small transformers:
//! one that upper-cases, one that masks a word (holding back what could be
//! its start), one that passes text through, and one that blocks.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::testing::test;

// ---- recorded streams (shapes as the providers and the stand-in send them) --

pub(super) const CHAT: &str = concat!(
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n: keep-alive\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":"The se"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":"cret"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":" code is se"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":"cure, ✓ Ünï"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{"content":"cödé, not a se"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_f9f4fb6dbf","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":17,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
    "\n\ndata: [DONE]\n\n",
);

pub(super) const CHAT_TOOLS: &str = concat!(
    r#"data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-mini","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_Qx1","type":"function","function":{"name":"remember","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-mini","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"wo"}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-mini","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"rd\":\"sec"}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-mini","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ret\"}"}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-mini","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_Qx2","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"top se"}}]},"logprobs":null,"finish_reason":null}]}"#,
    "\n\n",
    r#"data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1741570000,"model":"gpt-4o-mini","system_fingerprint":"fp_06737a9306","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}"#,
    "\n\ndata: [DONE]\n\n",
);

const COMPLETIONS: &str = concat!(
    r#"data: {"id":"cmpl-9xq","object":"text_completion","created":1741569952,"choices":[{"text":"Keep it se","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_wd"}"#,
    "\n\n",
    r#"data: {"id":"cmpl-9xq","object":"text_completion","created":1741569952,"choices":[{"text":"cret, sé","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_wd"}"#,
    "\n\n",
    r#"data: {"id":"cmpl-9xq","object":"text_completion","created":1741569952,"choices":[{"text":"ance over","index":0,"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_wd"}"#,
    "\n\n",
    r#"data: {"id":"cmpl-9xq","object":"text_completion","created":1741569952,"choices":[{"text":" se","index":0,"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_wd"}"#,
    "\n\n",
    r#"data: {"id":"cmpl-9xq","object":"text_completion","created":1741569952,"choices":[],"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_wd","usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}"#,
    "\n\ndata: [DONE]\n\n",
);

pub(super) const RESPONSES: &str = concat!(
    "event: response.created\n",
    r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_67c9","object":"response","created_at":1741290958,"status":"in_progress","error":null,"model":"gpt-4.1-2025-04-14","output":[],"usage":null}}"#,
    "\n\nevent: response.in_progress\n",
    r#"data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_67c9","object":"response","created_at":1741290958,"status":"in_progress","error":null,"model":"gpt-4.1-2025-04-14","output":[],"usage":null}}"#,
    "\n\nevent: response.output_item.added\n",
    r#"data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"msg_67c9","type":"message","status":"in_progress","role":"assistant","content":[]}}"#,
    "\n\nevent: response.content_part.added\n",
    r#"data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_67c9","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":""}}"#,
    "\n\nevent: response.output_text.delta\n",
    r#"data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_67c9","output_index":0,"content_index":0,"delta":"Your se","logprobs":[]}"#,
    "\n\nevent: response.output_text.delta\n",
    r#"data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_67c9","output_index":0,"content_index":0,"delta":"cret is sa","logprobs":[]}"#,
    "\n\nevent: response.output_text.delta\n",
    r#"data: {"type":"response.output_text.delta","sequence_number":6,"item_id":"msg_67c9","output_index":0,"content_index":0,"delta":"fe with me, se","logprobs":[]}"#,
    "\n\nevent: response.output_text.done\n",
    r#"data: {"type":"response.output_text.done","sequence_number":7,"item_id":"msg_67c9","output_index":0,"content_index":0,"text":"Your secret is safe with me, se","logprobs":[]}"#,
    "\n\nevent: response.content_part.done\n",
    r#"data: {"type":"response.content_part.done","sequence_number":8,"item_id":"msg_67c9","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":"Your secret is safe with me, se"}}"#,
    "\n\nevent: response.output_item.done\n",
    r#"data: {"type":"response.output_item.done","sequence_number":9,"output_index":0,"item":{"id":"msg_67c9","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Your secret is safe with me, se"}]}}"#,
    "\n\nevent: response.output_item.added\n",
    r#"data: {"type":"response.output_item.added","sequence_number":10,"output_index":1,"item":{"id":"fc_67c9","type":"function_call","status":"in_progress","arguments":"","call_id":"call_9","name":"store"}}"#,
    "\n\nevent: response.function_call_arguments.delta\n",
    r#"data: {"type":"response.function_call_arguments.delta","sequence_number":11,"item_id":"fc_67c9","output_index":1,"delta":"{\"value\":\"se"}"#,
    "\n\nevent: response.function_call_arguments.delta\n",
    r#"data: {"type":"response.function_call_arguments.delta","sequence_number":12,"item_id":"fc_67c9","output_index":1,"delta":"cret\"}"}"#,
    "\n\nevent: response.function_call_arguments.done\n",
    r#"data: {"type":"response.function_call_arguments.done","sequence_number":13,"item_id":"fc_67c9","output_index":1,"arguments":"{\"value\":\"secret\"}"}"#,
    "\n\nevent: response.output_item.done\n",
    r#"data: {"type":"response.output_item.done","sequence_number":14,"output_index":1,"item":{"id":"fc_67c9","type":"function_call","status":"completed","arguments":"{\"value\":\"secret\"}","call_id":"call_9","name":"store"}}"#,
    "\n\nevent: response.completed\n",
    r#"data: {"type":"response.completed","sequence_number":15,"response":{"id":"resp_67c9","object":"response","created_at":1741290958,"status":"completed","error":null,"model":"gpt-4.1-2025-04-14","output":[{"id":"msg_67c9","type":"message","status":"completed","role":"assistant","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"Your secret is safe with me, se"}]},{"id":"fc_67c9","type":"function_call","status":"completed","arguments":"{\"value\":\"secret\"}","call_id":"call_9","name":"store"}],"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":0},"output_tokens":12,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":21}}}"#,
    "\n\n",
);

pub(super) const ANTHROPIC: &str = concat!(
    "event: message_start\n",
    r#"data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1,"service_tier":"standard"}}}"#,
    "\n\nevent: content_block_start\n",
    r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    "\n\nevent: ping\n",
    r#"data: {"type": "ping"}"#,
    "\n\nevent: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello! The s"}}"#,
    "\n\nevent: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ecret word is 🎉, not secr"}}"#,
    "\n\nevent: content_block_stop\n",
    r#"data: {"type":"content_block_stop","index":0}"#,
    "\n\nevent: content_block_start\n",
    r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"remember","input":{}}}"#,
    "\n\nevent: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
    "\n\nevent: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"word\": \"sec"}}"#,
    "\n\nevent: content_block_delta\n",
    r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ret\"}"}}"#,
    "\n\nevent: content_block_stop\n",
    r#"data: {"type":"content_block_stop","index":1}"#,
    "\n\nevent: message_delta\n",
    r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":42}}"#,
    "\n\nevent: message_stop\n",
    r#"data: {"type":"message_stop"}"#,
    "\n\n",
);

/// Every recorded stream, with its API.
fn streams() -> Vec<(StreamApi, String)> {
    vec![
        (StreamApi::OpenAiChat, CHAT.to_owned()),
        (StreamApi::OpenAiChat, CHAT_TOOLS.to_owned()),
        (StreamApi::OpenAiCompletions, COMPLETIONS.to_owned()),
        (StreamApi::OpenAiResponses, RESPONSES.to_owned()),
        (StreamApi::Anthropic, ANTHROPIC.to_owned()),
        // The same, with the other line endings an event stream may use.
        (StreamApi::Anthropic, ANTHROPIC.replace('\n', "\r\n")),
        (StreamApi::OpenAiChat, CHAT.replace('\n', "\r")),
    ]
}

// ---- transformers ---------------------------------------------------------

pub(super) const WORD: &str = "secret";
pub(super) const MASK: &str = "[MASKED]";

/// Upper-cases all text; holds nothing back.
struct Upper;

impl StreamText for Upper {
    fn push(&mut self, _: &Channel, text: &str) -> Result<String, StreamBlock> {
        Ok(text.to_uppercase())
    }
    fn finish(&mut self, _: &Channel) -> Result<String, StreamBlock> {
        Ok(String::new())
    }
}

/// Replaces [`WORD`] with [`MASK`], holding back a tail that could be the
/// start of it, per channel.
#[derive(Default)]
pub(super) struct Mask {
    held: HashMap<Channel, String>,
}

impl StreamText for Mask {
    fn push(&mut self, channel: &Channel, text: &str) -> Result<String, StreamBlock> {
        let held = self.held.entry(*channel).or_default();
        held.push_str(text);
        let masked = held.replace(WORD, MASK);
        let keep = (1..WORD.len())
            .rev()
            .find(|n| masked.ends_with(&WORD[..*n]))
            .unwrap_or(0);
        let (now, later) = masked.split_at(masked.len() - keep);
        *held = later.to_owned();
        Ok(now.to_owned())
    }
    fn finish(&mut self, channel: &Channel) -> Result<String, StreamBlock> {
        Ok(self.held.remove(channel).unwrap_or_default())
    }
}

/// One call a [`Record`] saw: a push with its text, or a finish (`None`).
type Call = (Channel, Option<String>);

/// Passes text through, recording every call.
#[derive(Default, Clone)]
struct Record(Rc<RefCell<Vec<Call>>>);

impl StreamText for Record {
    fn push(&mut self, channel: &Channel, text: &str) -> Result<String, StreamBlock> {
        self.0.borrow_mut().push((*channel, Some(text.to_owned())));
        Ok(text.to_owned())
    }
    fn finish(&mut self, channel: &Channel) -> Result<String, StreamBlock> {
        self.0.borrow_mut().push((*channel, None));
        Ok(String::new())
    }
}

/// Masks, and blocks at the `at`-th push (counting from 1), or at the first
/// finish.
struct Block {
    mask: Mask,
    pushes: usize,
    at: Option<usize>,
}

impl Block {
    fn at_push(at: usize) -> Self {
        Self {
            mask: Mask::default(),
            pushes: 0,
            at: Some(at),
        }
    }
    fn at_finish() -> Self {
        Self {
            mask: Mask::default(),
            pushes: 0,
            at: None,
        }
    }
    fn block() -> StreamBlock {
        StreamBlock::new("pii.hidden_word", "Warden blocked a response")
    }
}

impl StreamText for Block {
    fn push(&mut self, channel: &Channel, text: &str) -> Result<String, StreamBlock> {
        self.pushes += 1;
        if Some(self.pushes) == self.at {
            return Err(Self::block());
        }
        self.mask.push(channel, text)
    }
    fn finish(&mut self, channel: &Channel) -> Result<String, StreamBlock> {
        if self.at.is_none() {
            return Err(Self::block());
        }
        self.mask.finish(channel)
    }
}

// ---- helpers --------------------------------------------------------------

/// The client's bytes for `chunks` fed one after another, then finish.
fn run<'a>(
    api: StreamApi,
    text: Box<dyn StreamText>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut rewriter = StreamRewriter::new(api, text);
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(rewriter.feed(chunk));
    }
    out.extend(rewriter.finish());
    out
}

fn masked(api: StreamApi, stream: &str) -> String {
    let out = run(api, Box::new(Mask::default()), [stream.as_bytes()]);
    String::from_utf8(out).unwrap()
}

/// The events of a client stream, with their data as JSON (`Null` if not).
pub(super) fn events(bytes: &[u8]) -> Vec<(Option<String>, Value)> {
    let mut parser = SseParser::new();
    let mut events = parser.feed(bytes).unwrap();
    events.extend(parser.finish().unwrap());
    events
        .into_iter()
        .filter(|event| event.comment.is_none())
        .map(|event| {
            let data = event.data.unwrap_or_default();
            let value = serde_json::from_str(&data).unwrap_or(Value::Null);
            (event.event, value)
        })
        .collect()
}

fn str_at<'v>(value: &'v Value, pointer: &str) -> Option<&'v str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// What a client assembles from the deltas, per channel.
fn client_texts(api: StreamApi, bytes: &[u8]) -> BTreeMap<String, String> {
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    let mut add = |key: String, text: &str| texts.entry(key).or_default().push_str(text);
    for (_, value) in events(bytes) {
        match api {
            StreamApi::OpenAiChat | StreamApi::OpenAiCompletions => {
                for choice in value["choices"].as_array().into_iter().flatten() {
                    let index = &choice["index"];
                    if let Some(text) = str_at(choice, "/delta/content").or(str_at(choice, "/text"))
                    {
                        add(format!("text:{index}"), text);
                    }
                    for call in choice["delta"]["tool_calls"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        if let Some(text) = str_at(call, "/function/arguments") {
                            add(format!("tool:{index}:{}", call["index"]), text);
                        }
                    }
                }
            }
            StreamApi::OpenAiResponses => match str_at(&value, "/type") {
                Some("response.output_text.delta") => add(
                    format!("text:{}:{}", value["output_index"], value["content_index"]),
                    str_at(&value, "/delta").unwrap(),
                ),
                Some("response.function_call_arguments.delta") => add(
                    format!("tool:{}", value["output_index"]),
                    str_at(&value, "/delta").unwrap(),
                ),
                _ => {}
            },
            StreamApi::Anthropic => {
                if let Some(text) = str_at(&value, "/delta/text") {
                    add(format!("text:{}", value["index"]), text);
                }
                if let Some(text) = str_at(&value, "/delta/partial_json") {
                    add(format!("tool:{}", value["index"]), text);
                }
            }
        }
    }
    texts
}

fn texts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, text)| (key.to_string(), text.to_string()))
        .collect()
}

/// The stream cut just after its `n`-th event (blank line), and the rest.
fn split_after_event(stream: &str, n: usize) -> (&str, &str) {
    let at = stream.match_indices("\n\n").nth(n - 1).unwrap().0 + 2;
    stream.split_at(at)
}

// ---- (a) the same bytes wherever the stream is cut -------------------------

/// Feeds `stream` cut in two at each of `cuts`, and in 1- and 7-byte
/// pieces: the client must get the very bytes it gets when the stream comes
/// whole.
fn assert_same_output_when_cut(api: StreamApi, stream: &str, cuts: impl Iterator<Item = usize>) {
    let stream = stream.as_bytes();
    let mask = || -> Box<dyn StreamText> { Box::new(Mask::default()) };
    let whole = run(api, mask(), [stream]);
    for cut in cuts {
        let (a, b) = stream.split_at(cut);
        let cut_out = run(api, mask(), [a, b]);
        assert!(cut_out == whole, "{api:?}: cut at {cut} differs");
    }
    assert_eq!(run(api, mask(), stream.chunks(1)), whole, "{api:?}: bytes");
    assert_eq!(run(api, mask(), stream.chunks(7)), whole, "{api:?}: 7s");
}

// One test per stream, so that they run in parallel natively.
#[test]
fn cut_anywhere_openai_chat() {
    assert_same_output_when_cut(StreamApi::OpenAiChat, CHAT, 0..=CHAT.len());
}

#[test]
fn cut_anywhere_openai_chat_tool_calls() {
    assert_same_output_when_cut(StreamApi::OpenAiChat, CHAT_TOOLS, 0..=CHAT_TOOLS.len());
}

#[test]
fn cut_anywhere_openai_completions() {
    assert_same_output_when_cut(
        StreamApi::OpenAiCompletions,
        COMPLETIONS,
        0..=COMPLETIONS.len(),
    );
}

#[test]
fn cut_anywhere_openai_responses() {
    assert_same_output_when_cut(StreamApi::OpenAiResponses, RESPONSES, 0..=RESPONSES.len());
}

#[test]
fn cut_anywhere_anthropic() {
    assert_same_output_when_cut(StreamApi::Anthropic, ANTHROPIC, 0..=ANTHROPIC.len());
}

#[test]
fn cut_at_crlf_and_cr_line_endings() {
    // The other line endings only matter where they are: cut at, inside and
    // around each of them.
    for (api, stream) in streams().into_iter().skip(5) {
        let bytes = stream.as_bytes();
        let near_endings = (0..=bytes.len()).filter(|&cut| {
            (cut.saturating_sub(2)..(cut + 2).min(bytes.len()))
                .any(|at| matches!(bytes[at], b'\r' | b'\n'))
        });
        assert_same_output_when_cut(api, &stream, near_endings);
    }
}

// ---- (b) the masked word never leaves, the text is sent once ---------------

#[test]
fn masked_word_never_appears_and_text_is_sent_once() {
    let expected = [
        texts(&[("text:0", "The [MASKED] code is secure, ✓ Ünïcödé, not a se")]),
        texts(&[
            ("tool:0:0", r#"{"word":"[MASKED]"}"#),
            ("tool:0:1", r#"{"q":"top se"#),
        ]),
        texts(&[("text:0", "Keep it [MASKED], séance over se")]),
        texts(&[
            ("text:0:0", "Your [MASKED] is safe with me, se"),
            ("tool:1", r#"{"value":"[MASKED]"}"#),
        ]),
        texts(&[
            ("text:0", "Hello! The [MASKED] word is 🎉, not secr"),
            ("tool:1", r#"{"word": "[MASKED]"}"#),
        ]),
    ];
    for ((api, stream), expected) in streams().into_iter().zip(expected) {
        let out = masked(api, &stream);
        assert!(!out.contains(WORD), "{api:?} leaked:\n{out}");
        assert_eq!(client_texts(api, out.as_bytes()), expected, "{api:?}");
    }
}

#[test]
fn upper_case_reaches_every_text_field() {
    let out = run(StreamApi::OpenAiChat, Box::new(Upper), [CHAT.as_bytes()]);
    assert_eq!(
        client_texts(StreamApi::OpenAiChat, &out),
        texts(&[("text:0", "THE SECRET CODE IS SECURE, ✓ ÜNÏCÖDÉ, NOT A SE")])
    );
    let out = run(
        StreamApi::Anthropic,
        Box::new(Upper),
        [ANTHROPIC.as_bytes()],
    );
    assert_eq!(
        client_texts(StreamApi::Anthropic, &out),
        texts(&[
            ("text:0", "HELLO! THE SECRET WORD IS 🎉, NOT SECR"),
            ("tool:1", r#"{"WORD": "SECRET"}"#),
        ])
    );
}

#[test]
fn events_without_changes_pass_through_byte_for_byte() {
    for (api, stream) in streams().into_iter().take(5) {
        let out = run(api, Box::new(Record::default()), [stream.as_bytes()]);
        assert_eq!(String::from_utf8(out).unwrap(), stream, "{api:?}");
    }
}

#[test]
fn channels_follow_each_api_layout() {
    let record = Record::default();
    run(
        StreamApi::OpenAiChat,
        Box::new(record.clone()),
        [CHAT_TOOLS.as_bytes()],
    );
    // Channels only: names and other whole texts are read apart.
    let calls: Vec<Call> = record
        .0
        .borrow()
        .iter()
        .filter(|(c, _)| c.index != u64::MAX)
        .cloned()
        .collect();
    let tool = |index| Channel {
        index,
        kind: ChannelKind::ToolArguments,
    };
    assert_eq!(
        calls,
        vec![
            (tool(0), Some("{\"wo".into())),
            (tool(0), Some("rd\":\"sec".into())),
            (tool(0), Some("ret\"}".into())),
            (tool(1), Some("{\"q\":\"top se".into())),
            (tool(0), None),
            (tool(1), None),
        ]
    );

    let record = Record::default();
    run(
        StreamApi::OpenAiResponses,
        Box::new(record.clone()),
        [RESPONSES.as_bytes()],
    );
    let channels: Vec<Channel> = record
        .0
        .borrow()
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| c.index != u64::MAX)
        .collect();
    let text = Channel {
        index: 0,
        kind: ChannelKind::Text,
    };
    assert_eq!(
        channels,
        vec![text, text, text, text, tool(1), tool(1), tool(1)]
    );
}

// ---- (c) text before a held-back tail goes out at once ---------------------

#[test]
fn text_before_a_held_back_tail_is_sent_at_once() {
    let mut rewriter = StreamRewriter::new(StreamApi::OpenAiChat, Box::new(Mask::default()));
    // Role chunk, comment, and "The se".
    let (head, rest) = split_after_event(CHAT, 3);
    let out = String::from_utf8(rewriter.feed(head.as_bytes())).unwrap();
    assert!(out.contains(r#""content":"The ""#), "{out}");
    assert!(out.contains(": keep-alive\n\n"));
    // "cret" completes the word.
    let (next, rest) = split_after_event(rest, 1);
    let out = String::from_utf8(rewriter.feed(next.as_bytes())).unwrap();
    assert!(out.contains(r#""content":"[MASKED]""#), "{out}");
    // Half an event: nothing yet.
    let (half, rest) = rest.split_at(40);
    assert!(rewriter.feed(half.as_bytes()).is_empty());
    let out = String::from_utf8(rewriter.feed(rest.as_bytes())).unwrap();
    assert!(out.ends_with("data: [DONE]\n\n"));
    assert!(rewriter.finish().is_empty());

    // The same for the other APIs: the first delta's safe prefix is out
    // before the stream ends.
    let (head, _) = split_after_event(ANTHROPIC, 4);
    let mut rewriter = StreamRewriter::new(StreamApi::Anthropic, Box::new(Mask::default()));
    let out = String::from_utf8(rewriter.feed(head.as_bytes())).unwrap();
    assert!(out.contains(r#""text":"Hello! The ""#), "{out}");
    let (head, _) = split_after_event(RESPONSES, 5);
    let mut rewriter = StreamRewriter::new(StreamApi::OpenAiResponses, Box::new(Mask::default()));
    let out = String::from_utf8(rewriter.feed(head.as_bytes())).unwrap();
    assert!(out.contains(r#""delta":"Your ""#), "{out}");
}

#[test]
fn held_back_text_goes_out_before_the_event_ending_its_channel() {
    let out = masked(StreamApi::OpenAiChat, CHAT);
    let flush = out.find(r#""content":"se""#).unwrap();
    let stop = out.find(r#""finish_reason":"stop""#).unwrap();
    assert!(flush < stop);
    // The extra chunk looks like the provider's.
    let (_, extra) = &events(out.as_bytes())[6];
    assert_eq!(extra["id"], "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG");
    assert_eq!(extra["object"], "chat.completion.chunk");
    assert_eq!(extra["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(extra["usage"], Value::Null);

    // A completions chunk that ends its choice and carries text itself gets
    // the held-back text appended in place: no extra event is needed.
    let out = masked(StreamApi::OpenAiCompletions, COMPLETIONS);
    let events = events(out.as_bytes());
    assert_eq!(events.len(), 6);
    assert_eq!(events[3].1["choices"][0]["text"], " se");
    assert_eq!(events[3].1["choices"][0]["finish_reason"], "length");

    // Anthropic: before content_block_stop.
    let out = masked(StreamApi::Anthropic, ANTHROPIC);
    let flush = out.find(r#""text":"secr""#).unwrap();
    let stop = out
        .find(r#"{"type":"content_block_stop","index":0}"#)
        .unwrap();
    assert!(flush < stop, "{out}");
}

#[test]
fn a_stream_cut_short_still_flushes_held_text_at_finish() {
    // No finish_reason, no [DONE]: finish() ends the channels.
    let (head, _) = split_after_event(CHAT, 7);
    let out = masked(StreamApi::OpenAiChat, head);
    assert!(out.ends_with("\n\n"));
    assert_eq!(
        client_texts(StreamApi::OpenAiChat, out.as_bytes())["text:0"],
        "The [MASKED] code is secure, ✓ Ünïcödé, not a se"
    );
    assert!(!out.contains("[DONE]"));
}

#[test]
fn an_empty_rewrite_still_sends_the_event() {
    // "se" alone is all held back: the event goes out with "".
    let stream = r#"data: {"choices":[{"index":0,"delta":{"content":"se"}}]}

"#;
    let mut rewriter = StreamRewriter::new(StreamApi::OpenAiChat, Box::new(Mask::default()));
    let out = rewriter.feed(stream.as_bytes());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "data: {\"choices\":[{\"delta\":{\"content\":\"\"},\"index\":0}]}\n\n"
    );
}

// ---- (d) a block mid-stream -------------------------------------------------

#[test]
fn a_block_ends_the_stream_with_an_error_in_its_format() {
    for (api, stream) in streams().into_iter().take(5) {
        let mut rewriter = StreamRewriter::new(api, Box::new(Block::at_push(2)));
        let mut out = rewriter.feed(stream.as_bytes());
        assert!(rewriter.feed(b"data: {}\n\n").is_empty());
        out.extend(rewriter.finish());
        assert_eq!(rewriter.blocked(), Some(&Block::block()));

        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains(WORD), "{api:?}: {text}");
        assert!(!text.contains("[DONE]"));
        let events = events(&out);
        let (name, error) = events.last().unwrap();
        let message = "Warden blocked a response (rule pii.hidden_word)";
        match api {
            StreamApi::OpenAiChat | StreamApi::OpenAiCompletions => {
                assert_eq!(name, &None);
                assert_eq!(
                    error,
                    &json!({"error": {"message": message, "type": "permission_error", "code": "warden.blocked"}})
                );
            }
            StreamApi::OpenAiResponses => {
                assert_eq!(name.as_deref(), Some("error"));
                assert_eq!(error["type"], "error");
                assert_eq!(error["code"], "warden.blocked");
                assert_eq!(error["message"], message);
                // Numbered after the last event sent.
                let (_, before) = &events[events.len() - 2];
                assert_eq!(
                    error["sequence_number"].as_u64(),
                    before["sequence_number"].as_u64().map(|n| n + 1)
                );
            }
            StreamApi::Anthropic => {
                assert_eq!(name.as_deref(), Some("error"));
                assert_eq!(
                    error,
                    &json!({"type": "error", "error": {"type": "permission_error", "message": message}})
                );
            }
        }
        // Only the error event is new: everything before it is what the
        // stream had sent up to the blocked delta.
        let errors = events
            .iter()
            .filter(|(name, value)| {
                name.as_deref() == Some("error") || value.get("error").is_some()
            })
            .count();
        assert_eq!(errors, 1, "{api:?}");
    }
}

#[test]
fn a_block_when_a_channel_ends_sends_none_of_its_held_text() {
    let mut rewriter = StreamRewriter::new(StreamApi::OpenAiChat, Box::new(Block::at_finish()));
    let (head, rest) = split_after_event(CHAT, 7);
    let out = String::from_utf8(rewriter.feed(head.as_bytes())).unwrap();
    assert!(out.contains("not a \""));
    let out = String::from_utf8(rewriter.feed(rest.as_bytes())).unwrap();
    let events = events(out.as_bytes());
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0].1["error"]["code"], "warden.blocked");
    assert!(rewriter.finish().is_empty());
}

#[test]
fn a_stream_over_the_limits_is_stopped_not_forwarded_unread() {
    let head = "event: ping\ndata: {\"type\":\"ping\"}\n\n";
    let long = concat!(
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello, a long line"}}"#,
        "\n\n",
    );
    let parser = SseParser::with_limits(64, 256);
    let mut rewriter =
        StreamRewriter::with_parser(StreamApi::Anthropic, Box::new(Mask::default()), parser);
    let first = rewriter.feed(head.as_bytes());
    assert_eq!(first, head.as_bytes());
    let out = String::from_utf8(rewriter.feed(long.as_bytes())).unwrap();
    assert!(out.starts_with("event: error\n"), "{out}");
    assert!(!out.contains("Hello"));
    assert_eq!(rewriter.blocked().unwrap().rule, "warden.stream_framing");
    assert!(rewriter.finish().is_empty());

    // Cut anywhere, the same: the ping, then the error.
    let whole = format!("{head}{long}");
    let expected = {
        let parser = SseParser::with_limits(64, 256);
        let mut rewriter =
            StreamRewriter::with_parser(StreamApi::Anthropic, Box::new(Upper), parser);
        let mut out = rewriter.feed(whole.as_bytes());
        out.extend(rewriter.finish());
        out
    };
    assert!(expected.starts_with(head.as_bytes()));
    for cut in 0..=whole.len() {
        let (a, b) = whole.as_bytes().split_at(cut);
        let parser = SseParser::with_limits(64, 256);
        let mut rewriter =
            StreamRewriter::with_parser(StreamApi::Anthropic, Box::new(Upper), parser);
        let mut out = rewriter.feed(a);
        out.extend(rewriter.feed(b));
        out.extend(rewriter.finish());
        assert_eq!(out, expected, "cut at {cut}");
    }
}

// ---- (e) the Responses API's done events -------------------------------------

#[test]
fn responses_done_events_carry_the_rewritten_full_text() {
    let out = masked(StreamApi::OpenAiResponses, RESPONSES);
    let text = "Your [MASKED] is safe with me, se";
    let arguments = r#"{"value":"[MASKED]"}"#;
    let events = events(out.as_bytes());
    let find = |kind: &str, output: u64| {
        events
            .iter()
            .map(|(_, value)| value)
            .find(|value| {
                value["type"] == kind
                    && value
                        .get("output_index")
                        .is_none_or(|index| index == output)
            })
            .unwrap()
    };
    assert_eq!(find("response.output_text.done", 0)["text"], text);
    assert_eq!(find("response.content_part.done", 0)["part"]["text"], text);
    assert_eq!(
        find("response.output_item.done", 0)["item"]["content"][0]["text"],
        text
    );
    assert_eq!(
        find("response.function_call_arguments.done", 1)["arguments"],
        arguments
    );
    assert_eq!(
        find("response.output_item.done", 1)["item"]["arguments"],
        arguments
    );
    let completed = &find("response.completed", 0)["response"]["output"];
    assert_eq!(completed[0]["content"][0]["text"], text);
    assert_eq!(completed[1]["arguments"], arguments);

    // The held-back "se" went out as a delta just before output_text.done,
    // and the numbering stays consecutive.
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, v)| v["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[7], "response.output_text.delta");
    assert_eq!(events[7].1["delta"], "se");
    assert_eq!(events[7].1["item_id"], "msg_67c9");
    assert_eq!(kinds[8], "response.output_text.done");
    for (n, (name, value)) in events.iter().enumerate() {
        assert_eq!(value["sequence_number"], json!(n), "{out}");
        assert_eq!(name.as_deref(), value["type"].as_str());
    }
}

#[test]
fn responses_text_only_in_done_events_is_inspected_too() {
    // No deltas at all: the done events alone carry the text.
    let stream = concat!(
        "event: response.output_text.done\n",
        r#"data: {"type":"response.output_text.done","sequence_number":1,"item_id":"m","output_index":0,"content_index":0,"text":"a secret"}"#,
        "\n\nevent: response.completed\n",
        r#"data: {"type":"response.completed","sequence_number":2,"response":{"output":[{"id":"m","type":"message","content":[{"type":"output_text","text":"a secret"}]},{"id":"f","type":"function_call","arguments":"{\"k\":\"secret\"}"}]}}"#,
        "\n\n",
    );
    let out = masked(StreamApi::OpenAiResponses, stream);
    assert!(!out.contains(WORD), "{out}");
    let events = events(out.as_bytes());
    assert_eq!(events[0].1["text"], "a [MASKED]");
    assert_eq!(
        events[1].1["response"]["output"][0]["content"][0]["text"],
        "a [MASKED]"
    );
    assert_eq!(
        events[1].1["response"]["output"][1]["arguments"],
        r#"{"k":"[MASKED]"}"#
    );
}

#[test]
fn logprobs_are_cleared_where_text_is_rewritten() {
    let chat = r#"data: {"choices":[{"index":0,"delta":{"content":"a secret"},"logprobs":{"content":[{"token":" secret","logprob":-0.1,"bytes":[32],"top_logprobs":[]}]},"finish_reason":null}]}

event: response.output_text.delta
data: {"type":"response.output_text.delta","output_index":0,"content_index":0,"delta":"x","logprobs":[{"token":"secret","logprob":-0.2}]}

"#;
    let out = masked(StreamApi::OpenAiChat, chat.split("event:").next().unwrap());
    assert!(!out.contains(WORD), "{out}");
    assert_eq!(
        events(out.as_bytes())[0].1["choices"][0]["logprobs"],
        Value::Null
    );
    let responses = format!("event:{}", chat.split("event:").nth(1).unwrap());
    let out = masked(StreamApi::OpenAiResponses, &responses);
    assert!(!out.contains(WORD), "{out}");
    assert_eq!(events(out.as_bytes())[0].1["logprobs"], json!([]));
}

// ---- (f) usage ----------------------------------------------------------------

#[test]
fn usage_is_captured_for_audit() {
    let usage = |api: StreamApi, stream: &str| {
        let mut rewriter = StreamRewriter::new(api, Box::new(Mask::default()));
        rewriter.feed(stream.as_bytes());
        rewriter.finish();
        rewriter.usage().cloned()
    };
    let chat = usage(StreamApi::OpenAiChat, CHAT).unwrap();
    assert_eq!(chat["total_tokens"], 29);
    assert_eq!(chat["completion_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(usage(StreamApi::OpenAiChat, CHAT_TOOLS), None);
    let completions = usage(StreamApi::OpenAiCompletions, COMPLETIONS).unwrap();
    assert_eq!(
        completions,
        json!({"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10})
    );
    let responses = usage(StreamApi::OpenAiResponses, RESPONSES).unwrap();
    assert_eq!(responses["total_tokens"], 21);
    // Anthropic: message_start's usage, updated by message_delta.
    let anthropic = usage(StreamApi::Anthropic, ANTHROPIC).unwrap();
    assert_eq!(anthropic["input_tokens"], 25);
    assert_eq!(anthropic["output_tokens"], 42);
    assert_eq!(anthropic["service_tier"], "standard");
}

// ---- odd input ----------------------------------------------------------------

#[test]
fn non_json_events_pass_through() {
    let stream = "event: weird\ndata: not json secret\n\ndata: [1,2]\n\nid: 5\n\n: ping\n\n";
    for api in [
        StreamApi::OpenAiChat,
        StreamApi::OpenAiCompletions,
        StreamApi::OpenAiResponses,
        StreamApi::Anthropic,
    ] {
        let out = run(api, Box::new(Upper), [stream.as_bytes()]);
        assert_eq!(String::from_utf8(out).unwrap(), stream, "{api:?}");
    }
}

#[test]
fn several_choices_are_separate_channels() {
    let stream = concat!(
        r#"data: {"choices":[{"index":0,"delta":{"content":"a se"}},{"index":1,"delta":{"content":"b se"}}]}"#,
        "\n\n",
        r#"data: {"choices":[{"index":1,"delta":{"content":"cret"}},{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        "\n\n",
        r#"data: {"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#,
        "\n\ndata: [DONE]\n\n",
    );
    let out = masked(StreamApi::OpenAiChat, stream);
    assert_eq!(
        client_texts(StreamApi::OpenAiChat, out.as_bytes()),
        texts(&[("text:0", "a se"), ("text:1", "b [MASKED]")])
    );
}

// ---- every string of every event ----------------------------------------------

/// Every string a client receives that a model could have written (all but
/// structural keys and binary payloads), as [`crate::inspect::body`] reads them.
fn model_strings(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for (_, mut value) in events(bytes) {
        crate::inspect::body::each_text(&mut value, &mut |s| {
            found.push(s.clone());
            false
        });
    }
    found
}

/// Streams with the fields beyond plain text: refusals, reasoning and
/// thinking, citations, annotations, and an event type nobody knows yet.
fn rich_streams() -> Vec<(StreamApi, String)> {
    let chat = concat!(
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","refusal":"i can't share the se"},"finish_reason":null}],"obfuscation":"q1"}"#,
        "\n\n",
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"refusal":"cret, sorry"},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":1,"delta":{"content":"see the doc","annotations":[{"type":"url_citation","url_citation":{"title":"the secret memo","url":"https://docs.example/p"}}]},"finish_reason":null}]}"#,
        "\n\n",
        r#"data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"},{"index":1,"delta":{"audio":{"id":"a1","transcript":"spoken secret"}},"finish_reason":"stop"}]}"#,
        "\n\ndata: [DONE]\n\n",
    );
    let responses = concat!(
        "event: response.output_item.added\n",
        r#"data: {"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"rs_1","type":"reasoning","summary":[]}}"#,
        "\n\nevent: response.reasoning_summary_part.added\n",
        r#"data: {"type":"response.reasoning_summary_part.added","sequence_number":2,"item_id":"rs_1","output_index":0,"summary_index":0,"part":{"type":"summary_text","text":""}}"#,
        "\n\nevent: response.reasoning_summary_text.delta\n",
        r#"data: {"type":"response.reasoning_summary_text.delta","sequence_number":3,"item_id":"rs_1","output_index":0,"summary_index":0,"delta":"thinking about the se"}"#,
        "\n\nevent: response.reasoning_summary_text.delta\n",
        r#"data: {"type":"response.reasoning_summary_text.delta","sequence_number":4,"item_id":"rs_1","output_index":0,"summary_index":0,"delta":"cret"}"#,
        "\n\nevent: response.reasoning_summary_text.done\n",
        r#"data: {"type":"response.reasoning_summary_text.done","sequence_number":5,"item_id":"rs_1","output_index":0,"summary_index":0,"text":"thinking about the secret"}"#,
        "\n\nevent: response.reasoning_summary_part.done\n",
        r#"data: {"type":"response.reasoning_summary_part.done","sequence_number":6,"item_id":"rs_1","output_index":0,"summary_index":0,"part":{"type":"summary_text","text":"thinking about the secret"}}"#,
        "\n\nevent: response.output_item.done\n",
        r#"data: {"type":"response.output_item.done","sequence_number":7,"output_index":0,"item":{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"thinking about the secret"}],"encrypted_content":"Z2FyYmxlZA=="}}"#,
        "\n\nevent: response.refusal.delta\n",
        r#"data: {"type":"response.refusal.delta","sequence_number":8,"item_id":"msg_1","output_index":1,"content_index":0,"delta":"no se"}"#,
        "\n\nevent: response.refusal.delta\n",
        r#"data: {"type":"response.refusal.delta","sequence_number":9,"item_id":"msg_1","output_index":1,"content_index":0,"delta":"crets"}"#,
        "\n\nevent: response.refusal.done\n",
        r#"data: {"type":"response.refusal.done","sequence_number":10,"item_id":"msg_1","output_index":1,"content_index":0,"refusal":"no secrets"}"#,
        "\n\nevent: response.output_text.annotation.added\n",
        r#"data: {"type":"response.output_text.annotation.added","sequence_number":11,"item_id":"msg_1","output_index":1,"content_index":1,"annotation_index":0,"annotation":{"type":"url_citation","title":"a secret source","url":"https://docs.example/q","start_index":0,"end_index":3}}"#,
        "\n\nevent: response.future_thing.delta\n",
        r#"data: {"type":"response.future_thing.delta","sequence_number":12,"output_index":2,"delta":"a secret in a new place"}"#,
        "\n\nevent: response.completed\n",
        r#"data: {"type":"response.completed","sequence_number":13,"response":{"id":"resp_1","object":"response","status":"completed","instructions":"keep the secret","output":[{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"thinking about the secret"}]},{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"refusal","refusal":"no secrets"}]}]}}"#,
        "\n\n",
    );
    let anthropic = concat!(
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"the user wants the se"}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"cret"}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"RXVnZW5pY3NTaWduYXR1cmU="}}"#,
        "\n\nevent: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\nevent: content_block_start\n",
        r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"web_search_tool_result","tool_use_id":"srvtoolu_1","content":[{"type":"web_search_result","title":"secret page","url":"https://docs.example/r","encrypted_content":"RW5jcnlwdGVk"}]}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":2,"delta":{"type":"citations_delta","citation":{"type":"char_location","cited_text":"the secret is out","document_index":0,"document_title":"memo","start_char_index":0,"end_char_index":17}}}"#,
        "\n\nevent: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );
    vec![
        (StreamApi::OpenAiChat, chat.to_owned()),
        (StreamApi::OpenAiResponses, responses.to_owned()),
        (StreamApi::Anthropic, anthropic.to_owned()),
    ]
}

#[test]
fn every_string_of_every_event_is_read() {
    for (api, stream) in rich_streams().into_iter().chain(streams()) {
        let before = model_strings(stream.as_bytes());
        assert!(!before.is_empty(), "{api:?}");
        let out = run(api, Box::new(Upper), [stream.as_bytes()]);
        for s in model_strings(&out) {
            assert_eq!(s, s.to_uppercase(), "{api:?}: a string passed unread");
        }
    }
}

#[test]
fn refusals_and_reasoning_are_channels_masked_across_deltas() {
    for (api, stream) in rich_streams() {
        let out = masked(api, &stream);
        // "se" + "cret" arrived in two deltas of the same channel.
        assert!(!out.contains("secret"), "{api:?}: {out}");
        assert!(out.contains(MASK), "{api:?}");
    }
    let record = Record::default();
    let (_, responses) = &rich_streams()[1];
    run(
        StreamApi::OpenAiResponses,
        Box::new(record.clone()),
        [responses.as_bytes()],
    );
    let kinds: Vec<ChannelKind> = record
        .0
        .borrow()
        .iter()
        .filter(|(c, text)| c.index != u64::MAX && text.is_some())
        .map(|(c, _)| c.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            ChannelKind::Reasoning,
            ChannelKind::Reasoning,
            ChannelKind::Refusal,
            ChannelKind::Refusal
        ]
    );
}

#[test]
fn signed_and_encrypted_payloads_are_left_alone() {
    let (_, anthropic) = &rich_streams()[2];
    let out = String::from_utf8(run(
        StreamApi::Anthropic,
        Box::new(Upper),
        [anthropic.as_bytes()],
    ))
    .unwrap();
    assert!(
        out.contains(r#""signature":"RXVnZW5pY3NTaWduYXR1cmU=""#),
        "{out}"
    );
    assert!(
        out.contains(r#""encrypted_content":"RW5jcnlwdGVk""#),
        "{out}"
    );
    assert!(out.contains("THE SECRET IS OUT"), "{out}");
}
