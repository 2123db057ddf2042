//! Where the text is in each provider API's JSON, and a strict JSON reader.
//!
//! Masking edits decoded string values, never the raw bytes of serialized
//! JSON (a `\u0040` escape or a key order must not hide a value, and an edit
//! must not break the document). This module knows, per API, which string
//! values carry prompt or completion text; unknown shapes fall back to every
//! string value, so nothing is skipped because the gateway did not recognise it.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};

use crate::provider::Api;

/// The JSON shapes Warden knows, by endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    OpenAiChat,
    OpenAiCompletions,
    OpenAiEmbeddings,
    OpenAiResponses,
    AnthropicMessages,
    /// Anything else: every string value is text.
    Unknown,
}

impl Shape {
    /// The shape of an endpoint, from the API and the upstream path (the
    /// part after the route prefix, e.g. `v1/chat/completions`).
    pub fn of(api: Api, upstream_path: &str) -> Self {
        let path = upstream_path
            .split('?')
            .next()
            .unwrap_or_default()
            .trim_matches('/');
        match (api, path) {
            (Api::Openai | Api::AzureOpenai, p) if p.ends_with("chat/completions") => {
                Shape::OpenAiChat
            }
            (Api::Openai | Api::AzureOpenai, p) if p.ends_with("completions") => {
                Shape::OpenAiCompletions
            }
            (Api::Openai | Api::AzureOpenai, p) if p.ends_with("embeddings") => {
                Shape::OpenAiEmbeddings
            }
            (Api::Openai | Api::AzureOpenai, p) if p.ends_with("responses") => {
                Shape::OpenAiResponses
            }
            (Api::Anthropic, p) if p.ends_with("messages") => Shape::AnthropicMessages,
            _ => Shape::Unknown,
        }
    }
}

/// Calls `f` on every string of a request body that carries text.
pub fn each_request_text(shape: Shape, body: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match shape {
        Shape::OpenAiChat => {
            for message in items(body.get_mut("messages")) {
                content(message.get_mut("content"), f);
                for call in items(message.get_mut("tool_calls")) {
                    string(call.pointer_mut("/function/arguments"), f);
                }
                // Legacy single function call.
                string(message.pointer_mut("/function_call/arguments"), f);
            }
        }
        Shape::OpenAiCompletions => strings_or_list(body.get_mut("prompt"), f),
        Shape::OpenAiEmbeddings => strings_or_list(body.get_mut("input"), f),
        Shape::OpenAiResponses => {
            string(body.get_mut("instructions"), f);
            match body.get_mut("input") {
                Some(Value::String(s)) => f(s),
                Some(Value::Array(input)) => {
                    for item in input {
                        content(item.get_mut("content"), f);
                        string(item.get_mut("output"), f);
                        string(item.get_mut("arguments"), f);
                    }
                }
                _ => {}
            }
        }
        Shape::AnthropicMessages => {
            content(body.get_mut("system"), f);
            for message in items(body.get_mut("messages")) {
                content(message.get_mut("content"), f);
            }
        }
        Shape::Unknown => every_string(body, f),
    }
}

/// Calls `f` on every string of a (non-streamed) response body that carries text.
pub fn each_response_text(shape: Shape, body: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match shape {
        Shape::OpenAiChat => {
            for choice in items(body.get_mut("choices")) {
                if let Some(message) = choice.get_mut("message") {
                    content(message.get_mut("content"), f);
                    string(message.get_mut("refusal"), f);
                    for call in items(message.get_mut("tool_calls")) {
                        string(call.pointer_mut("/function/arguments"), f);
                    }
                }
            }
        }
        Shape::OpenAiCompletions => {
            for choice in items(body.get_mut("choices")) {
                string(choice.get_mut("text"), f);
            }
        }
        // Vectors carry no text.
        Shape::OpenAiEmbeddings => {}
        Shape::OpenAiResponses => {
            string(body.get_mut("output_text"), f);
            for item in items(body.get_mut("output")) {
                content(item.get_mut("content"), f);
                string(item.get_mut("arguments"), f);
            }
        }
        Shape::AnthropicMessages => content(body.get_mut("content"), f),
        Shape::Unknown => every_string(body, f),
    }
}

fn items(v: Option<&mut Value>) -> impl Iterator<Item = &mut Value> {
    v.and_then(Value::as_array_mut).into_iter().flatten()
}

fn string(v: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    if let Some(Value::String(s)) = v {
        f(s);
    }
}

fn strings_or_list(v: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    match v {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(list)) => {
            for item in list {
                if let Value::String(s) = item {
                    f(s);
                }
            }
        }
        _ => {}
    }
}

/// Message or block content in any of the APIs' forms: a string, or a list
/// of parts/blocks (`text`, `input_text`, `output_text`, `tool_use.input`,
/// `tool_result.content`, ...). Unknown block types: every string inside,
/// except the fields that name types and ids.
fn content(v: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    match v {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                match part {
                    Value::String(s) => f(s),
                    Value::Object(block) => block_text(block, f),
                    _ => {}
                }
            }
        }
        Some(Value::Object(block)) => block_text(block, f),
        _ => {}
    }
}

/// Fields of a content block that identify rather than carry text.
const STRUCTURAL_KEYS: [&str; 6] = [
    "type",
    "id",
    "tool_use_id",
    "call_id",
    "cache_control",
    "media_type",
];

fn block_text(block: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String)) {
    for (key, value) in block.iter_mut() {
        if STRUCTURAL_KEYS.contains(&key.as_str()) {
            continue;
        }
        match (key.as_str(), value) {
            // Images and files are base64 payloads, not text.
            ("source" | "image_url" | "file" | "input_image" | "data", _) => {}
            ("content", v) => content(Some(v), f),
            (_, v) => every_string(v, f),
        }
    }
}

fn every_string(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(list) => list.iter_mut().for_each(|item| every_string(item, f)),
        Value::Object(map) => map.values_mut().for_each(|item| every_string(item, f)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Strict JSON: duplicate keys are an error.

/// Parses JSON into a `Value`, refusing duplicate object keys: two parsers
/// that keep different duplicates (the gateway the first, the provider the
/// last) would let a prompt past inspection.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut list = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            list.push(v);
        }
        Ok(Value::Array(list))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One lookup: the vacant entry takes the value once it is read
            // (the duplicate is still refused before its value is parsed).
            match out.entry(key) {
                Entry::Occupied(dup) => {
                    return Err(de::Error::custom(format_args!(
                        "duplicate key `{}`",
                        dup.key()
                    )));
                }
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(StrictValue)?);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

// ---------------------------------------------------------------------------
// Writing a document back.

/// `value` as compact JSON, byte for byte what `serde_json::to_vec` writes,
/// with strings escaped eight bytes at a time: a masked body is written back
/// whole, and serde_json's byte-by-byte escaping was most of that cost.
pub fn to_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Numbers are rare and short: serde_json's own formatting (itoa,
        // ryu) keeps them identical. Writing to a Vec cannot fail.
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key, out);
                out.push(b':');
                write_value(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Whether any of the 8 bytes in `chunk` must be escaped: a control
/// character (below 0x20), `"` or `\\`.
fn needs_escape(chunk: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The classic word-at-a-time tests: "some byte is below n" is
    // `(x - n·ONES) & !x & HIGH`, and "some byte equals c" is that test for
    // a zero byte of `x ^ c·ONES`. Both are exact about whether any byte
    // qualifies (which one is found again byte by byte).
    let below = chunk.wrapping_sub(ONES * 0x20) & !chunk;
    let quote = chunk ^ (ONES * u64::from(b'"'));
    let slash = chunk ^ (ONES * u64::from(b'\\'));
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    (below | zero(quote) | zero(slash)) & HIGH != 0
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if !needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        // This byte (in a flagged chunk, or in the tail) one at a time.
        let Some(&b) = bytes.get(i) else {
            break;
        };
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0C => b"\\f",
            0x00..=0x1F => &[],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            let hex = |n: u8| HEX.get(usize::from(n)).copied().unwrap_or(b'0');
            out.push(hex(b >> 4));
            out.push(hex(b & 0xF));
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;
    use serde_json::json;

    fn texts(shape: Shape, mut v: Value, response: bool) -> Vec<String> {
        let mut seen = Vec::new();
        let mut f = |s: &mut String| seen.push(s.clone());
        if response {
            each_response_text(shape, &mut v, &mut f)
        } else {
            each_request_text(shape, &mut v, &mut f)
        }
        seen
    }

    #[test]
    fn shapes_by_endpoint() {
        assert_eq!(
            Shape::of(Api::Openai, "v1/chat/completions"),
            Shape::OpenAiChat
        );
        assert_eq!(
            Shape::of(Api::Openai, "/v1/completions?x=1"),
            Shape::OpenAiCompletions
        );
        assert_eq!(
            Shape::of(Api::AzureOpenai, "openai/deployments/d/embeddings"),
            Shape::OpenAiEmbeddings
        );
        assert_eq!(
            Shape::of(Api::Openai, "v1/responses"),
            Shape::OpenAiResponses
        );
        assert_eq!(
            Shape::of(Api::Anthropic, "v1/messages"),
            Shape::AnthropicMessages
        );
        assert_eq!(Shape::of(Api::Anthropic, "v1/complete"), Shape::Unknown);
    }

    #[test]
    fn openai_chat_request_text() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "data:..."}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"args\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "result"}
            ]
        });
        assert_eq!(
            texts(Shape::OpenAiChat, body, false),
            vec!["sys", "part", "{\"q\":\"args\"}", "result"]
        );
    }

    #[test]
    fn responses_and_completions_and_embeddings() {
        let body = json!({"instructions": "be nice", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call_output", "call_id": "c", "output": "out"}
        ]});
        assert_eq!(
            texts(Shape::OpenAiResponses, body, false),
            vec!["be nice", "hi", "out"]
        );
        assert_eq!(
            texts(Shape::OpenAiResponses, json!({"input": "plain"}), false),
            vec!["plain"]
        );
        assert_eq!(
            texts(
                Shape::OpenAiCompletions,
                json!({"prompt": ["a", "b"]}),
                false
            ),
            vec!["a", "b"]
        );
        assert_eq!(
            texts(
                Shape::OpenAiEmbeddings,
                json!({"input": "e", "model": "m"}),
                false
            ),
            vec!["e"]
        );
    }

    #[test]
    fn anthropic_request_text_including_tools() {
        let body = json!({
            "system": [{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "plain"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"email": "a@b.c", "n": 3}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "res"}]},
                                              {"type": "image", "source": {"type": "base64", "data": "AAAA"}}]}
            ]
        });
        // Within one block, fields come in key order.
        let seen = texts(Shape::AnthropicMessages, body, false);
        assert_eq!(seen, vec!["sys", "plain", "a@b.c", "lookup", "res"]);
    }

    #[test]
    fn responses_text() {
        let chat = json!({"choices": [{"message": {"content": "answer", "tool_calls": [{"function": {"arguments": "{}"}}]}}]});
        assert_eq!(texts(Shape::OpenAiChat, chat, true), vec!["answer", "{}"]);
        let claude = json!({"content": [{"type": "text", "text": "hello"}, {"type": "tool_use", "id": "x", "name": "n", "input": {"k": "v"}}]});
        assert_eq!(
            texts(Shape::AnthropicMessages, claude, true),
            vec!["hello", "v", "n"]
        );
        let unknown = json!({"a": ["x", {"b": "y"}], "n": 1});
        assert_eq!(texts(Shape::Unknown, unknown, true), vec!["x", "y"]);
    }

    #[test]
    fn rewriting_edits_decoded_values() {
        let mut body = parse_strict(
            br#"{"messages":[{"role":"user","content":"mail bob\u0040example.com"}]}"#,
        )
        .unwrap();
        each_request_text(Shape::OpenAiChat, &mut body, &mut |s| {
            *s = s.replace("bob@example.com", "[EMAIL]")
        });
        assert_eq!(body["messages"][0]["content"], "mail [EMAIL]");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err =
            parse_strict(br#"{"messages":[],"messages":[{"content":"hidden"}]}"#).unwrap_err();
        assert!(
            err.to_string().contains("duplicate key `messages`"),
            "{err}"
        );
        assert!(parse_strict(br#"{"a":{"b":1,"b":2}}"#).is_err());
        assert!(parse_strict(br#"{"a":1} trailing"#).is_err());
        assert_eq!(
            parse_strict(br#"{"a":[1,2.5,"x",null,true]}"#).unwrap(),
            json!({"a": [1, 2.5, "x", null, true]})
        );
    }

    #[test]
    fn written_back_exactly_as_serde_json_writes() {
        // Every byte that needs escaping, at every offset of an 8-byte
        // chunk and in the tail; non-ASCII; numbers of every kind.
        let mut strings: Vec<String> = Vec::new();
        for c in (0u8..0x80)
            .map(char::from)
            .chain(['é', '\u{2028}', '😀', '\u{7f}'])
        {
            for pad in 0..18 {
                strings.push(format!("{}{c}{}", "a".repeat(pad), "b".repeat(17 - pad)));
            }
        }
        strings.push(String::new());
        strings.push("\"\\\n\r\t\u{8}\u{c}\u{0}\u{1f}".repeat(5));
        strings.push("plain text without anything special in it at all".into());
        let doc = json!({
            "strings": strings,
            "numbers": [0, 1, -1, u64::MAX, i64::MIN, 2.5, -0.0, 1e300, 1.0e-7, 0.1],
            "nested": {"a": [null, true, false, {}, []], "é\"key": {"x": "y"}},
        });
        assert_eq!(to_json(&doc), serde_json::to_vec(&doc).unwrap());
        for s in &strings {
            let v = Value::String(s.clone());
            assert_eq!(to_json(&v), serde_json::to_vec(&v).unwrap(), "{s:?}");
        }
    }
}
