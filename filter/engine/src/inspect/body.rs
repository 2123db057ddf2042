//! Where the text is in each provider API's JSON, and a strict JSON reader.
//!
//! Masking edits decoded string values, never the raw bytes of serialized
//! JSON (a `\u0040` escape or a key order must not hide a value, and an edit
//! must not break the document). Every string of a document is read except
//! an explicit list of structural and binary fields ([`each_text`]): a list of
//! the fields known to carry text would miss the next one a provider adds.
//! [`Shape`] names the endpoint's API, for its event stream.

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
    /// Whether answers of this shape can call tools (see `inspect::tools`).
    pub fn has_tool_calls(self) -> bool {
        matches!(
            self,
            Shape::OpenAiChat | Shape::OpenAiResponses | Shape::AnthropicMessages
        )
    }

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

/// Calls `f` (which says whether it changed the string) on every string of a
/// request or response document that a model could read or write: every
/// string value and every key that is not an identifier, at any depth, in
/// any shape. What is skipped is listed, not
/// what is read (a field the gateway has never heard of is read too):
/// - values of [`STRUCTURAL_KEYS`] (types, ids, enum values, the model) while
///   they look like identifiers ([`is_identifier`]); text put under such a
///   key is read like any other;
/// - opaque binary payloads ([`BINARY_KEYS`], `data:` URLs) whose media type
///   is not text; base64 payloads of a text media type are decoded, read,
///   and encoded again when changed.
///
/// A `logprobs` value spells out the tokens of its siblings' text: when
/// anything next to it was rewritten, it is replaced by `null` rather than
/// left to reveal what was masked. Returns whether anything changed.
pub fn each_text(doc: &mut Value, f: &mut dyn FnMut(&mut String) -> bool) -> bool {
    Walker {
        f,
        skip: None,
        path: Vec::new(),
        outside_groups: false,
    }
    .walk(doc)
}

/// As [`each_text`], without the strings [`each_part_group`] hands out
/// (whoever reads the groups joined has read them).
pub fn each_text_outside_groups(doc: &mut Value, f: &mut dyn FnMut(&mut String) -> bool) -> bool {
    Walker {
        f,
        skip: None,
        path: Vec::new(),
        outside_groups: true,
    }
    .walk(doc)
}

/// As [`each_text`] on an object, without the values at the paths `skip`
/// accepts: the keys from the object down to the value, arrays adding
/// nothing (`["choices", "delta", "content"]` is every choice's content).
/// A stream rewriter reads the fields it has channels for itself, and
/// everything else in the event through this.
pub fn each_text_except(
    object: &mut Map<String, Value>,
    skip: Skip<'_>,
    f: &mut dyn FnMut(&mut String) -> bool,
) -> bool {
    Walker {
        f,
        skip: Some(skip),
        path: Vec::new(),
        outside_groups: false,
    }
    .walk_object(object, false)
}

/// Calls `f` on the text parts of every array that holds two or more: the
/// `text` strings of its objects, in order (a message's content parts, a
/// system prompt's blocks, a tool result's content). A model reads the parts
/// of one message as one text, so a value split across them (`AKIA…` in one
/// part, the rest in the next) is whole to it: `f` scans them joined, and
/// may rewrite any of them. When `f` changed a group, the `logprobs` of its
/// parts are dropped, as in [`each_text`]. Returns whether anything changed.
pub fn each_part_group(doc: &mut Value, f: &mut dyn FnMut(&mut [&mut String]) -> bool) -> bool {
    match doc {
        Value::Array(items) => {
            let mut changed = items
                .iter_mut()
                .fold(false, |changed, item| each_part_group(item, f) | changed);
            if is_group(items) {
                let mut parts: Vec<&mut String> = items.iter_mut().filter_map(part_text).collect();
                if f(&mut parts) {
                    changed = true;
                    for item in items.iter_mut().filter(|item| is_part(item)) {
                        if let Some(logprobs) = item.get_mut("logprobs").filter(|l| !l.is_null()) {
                            *logprobs = Value::Null;
                        }
                    }
                }
            }
            changed
        }
        Value::Object(map) => map
            .values_mut()
            .fold(false, |changed, value| each_part_group(value, f) | changed),
        _ => false,
    }
}

/// A content part: an object with a `text` string.
fn is_part(item: &Value) -> bool {
    matches!(item.get("text"), Some(Value::String(_)))
}

fn part_text(item: &mut Value) -> Option<&mut String> {
    match item.get_mut("text") {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

/// An array of two or more parts (other items may stand between them).
fn is_group(items: &[Value]) -> bool {
    items.iter().filter(|item| is_part(item)).nth(1).is_some()
}

/// Keys whose value names or identifies (a type, an id, an enum value, a
/// model) rather than carries text.
pub const STRUCTURAL_KEYS: &[&str] = &[
    "type",
    "object",
    "id",
    "role",
    "model",
    "tool_use_id",
    "tool_call_id",
    "call_id",
    "item_id",
    "previous_response_id",
    "response_id",
    "finish_reason",
    "stop_reason",
    "status",
    "service_tier",
    "system_fingerprint",
    "media_type",
    "mime_type",
    "encoding_format",
    "detail",
    "format",
    "voice",
    "effort",
    "reasoning_effort",
    "verbosity",
    "truncation",
    "tool_choice",
    "modalities",
    "include",
];

/// Keys whose value is an opaque binary or signed payload (base64): images,
/// audio, files, thinking signatures, encrypted reasoning.
pub const BINARY_KEYS: &[&str] = &[
    "data",
    "file_data",
    "b64_json",
    "signature",
    "encrypted_content",
];

/// The longest value a structural key may have and still be skipped.
const MAX_IDENTIFIER: usize = 256;

/// A name, id or enum value: short, and only characters such values use (no
/// spaces, no `@`), so text cannot pass for one.
pub fn is_identifier(s: &str) -> bool {
    s.len() <= MAX_IDENTIFIER
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

/// Which values [`each_text_except`] leaves out, by their path.
type Skip<'a> = &'a dyn Fn(&[String]) -> bool;

struct Walker<'a> {
    f: &'a mut dyn FnMut(&mut String) -> bool,
    skip: Option<Skip<'a>>,
    /// The keys down to the value being walked, kept only for `skip`.
    path: Vec<String>,
    /// Leave out the `text` of the parts of a group ([`each_part_group`]).
    outside_groups: bool,
}

impl Walker<'_> {
    /// Walks `v`; whether anything in it changed.
    fn walk(&mut self, v: &mut Value) -> bool {
        match v {
            Value::String(s) => (self.f)(s),
            Value::Array(items) => {
                let grouped = self.outside_groups && is_group(items);
                items.iter_mut().fold(false, |changed, item| {
                    let changed_item = match item {
                        Value::Object(map) if grouped => self.walk_object(map, true),
                        _ => self.walk(item),
                    };
                    changed_item | changed
                })
            }
            Value::Object(map) => self.walk_object(map, false),
            _ => false,
        }
    }

    /// Whether `skip` takes the value under `key` (of the object walked).
    fn skips(&mut self, key: &str) -> bool {
        let Some(skip) = self.skip else {
            return false;
        };
        self.path.push(key.to_owned());
        let skipped = skip(&self.path);
        self.path.pop();
        skipped
    }

    /// `value`, under `key`, unless skipped.
    fn walk_under(&mut self, key: &str, value: &mut Value) -> bool {
        let Some(skip) = self.skip else {
            return self.walk(value);
        };
        self.path.push(key.to_owned());
        let changed = !skip(&self.path) && self.walk(value);
        self.path.pop();
        changed
    }

    /// An object's values and keys; without its `text` when it is a part
    /// of a group read elsewhere (`part_read`).
    fn walk_object(&mut self, map: &mut Map<String, Value>, part_read: bool) -> bool {
        let binary_kind = binary_kind(map);
        let mut changed = false;
        for (key, value) in map.iter_mut() {
            let key = key.as_str();
            if key == "logprobs"
                || STRUCTURAL_KEYS.contains(&key) && structural(value)
                || part_read && key == "text" && value.is_string()
            {
                continue;
            }
            changed |= match value {
                Value::String(payload) if BINARY_KEYS.contains(&key) || key == "url" => {
                    !self.skips(key)
                        && visit_payload(payload, binary_kind, BINARY_KEYS.contains(&key), self.f)
                }
                _ => self.walk_under(key, value),
            };
        }
        if let Some(logprobs) = map.get_mut("logprobs") {
            if changed && !logprobs.is_null() {
                *logprobs = Value::Null;
            } else {
                changed |= self.walk_under("logprobs", logprobs);
            }
        }
        rename_keys(map, self.f) | changed
    }
}

/// Whether a structural key's value may be skipped: an identifier, or a
/// list of them. Anything else (an object, text) is read.
fn structural(value: &Value) -> bool {
    match value {
        Value::String(s) => is_identifier(s),
        Value::Array(items) => items
            .iter()
            .all(|item| matches!(item, Value::String(s) if is_identifier(s))),
        _ => !matches!(value, Value::Object(_)),
    }
}

/// What an object's declared media type says its binary field holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BinaryKind {
    /// A text media type (`text/*`, JSON, XML): decoded and read.
    Text,
    /// Declared as text, not base64 (an Anthropic `{"type": "text"}` source).
    Plain,
    /// Anything else, or nothing declared.
    Opaque,
}

fn binary_kind(map: &Map<String, Value>) -> BinaryKind {
    if map.get("type").and_then(Value::as_str) == Some("text") {
        return BinaryKind::Plain;
    }
    let declared = ["media_type", "mime_type"]
        .iter()
        .find_map(|key| map.get(*key).and_then(Value::as_str));
    match declared {
        Some(media) if is_text_media(media) => BinaryKind::Text,
        _ => BinaryKind::Opaque,
    }
}

fn is_text_media(media: &str) -> bool {
    let media = media.trim().to_ascii_lowercase();
    media.starts_with("text/")
        || media.starts_with("application/json")
        || media.starts_with("application/xml")
        || media.ends_with("+json")
        || media.ends_with("+xml")
}

/// A binary field's value (or a `url`): a `data:` URL by its own media type,
/// a bare payload by its object's; text in the clear is read as text.
/// Whether it changed.
fn visit_payload(
    payload: &mut String,
    kind: BinaryKind,
    binary_key: bool,
    f: &mut dyn FnMut(&mut String) -> bool,
) -> bool {
    if let Some(rest) = payload.strip_prefix("data:") {
        let Some((header, encoded)) = rest.split_once(',') else {
            return f(payload);
        };
        let is_base64 = header.to_ascii_lowercase().ends_with(";base64");
        let media = header.split(';').next().unwrap_or_default();
        if !is_base64 {
            // Percent-encoded or plain: read the whole URL as text.
            return f(payload);
        }
        if !is_text_media(media) {
            return false;
        }
        let prefix = format!("data:{header},");
        let encoded = encoded.to_owned();
        return match visit_base64(&encoded, f) {
            Some(Some(new)) => {
                *payload = prefix + &new;
                true
            }
            Some(None) => false,
            // Declared text that is not base64: read it as it is.
            None => f(payload),
        };
    }
    if !binary_key || kind == BinaryKind::Plain || !looks_base64(payload) {
        return f(payload);
    }
    if kind == BinaryKind::Opaque {
        return false;
    }
    match visit_base64(payload, f) {
        Some(Some(new)) => {
            *payload = new;
            true
        }
        Some(None) => false,
        None => f(payload),
    }
}

/// Decodes base64 text, reads it, and encodes it again when it changed:
/// `None` when it is not base64 of UTF-8 text, `Some(None)` when unchanged.
fn visit_base64(encoded: &str, f: &mut dyn FnMut(&mut String) -> bool) -> Option<Option<String>> {
    use base64::Engine;
    let compact: String = encoded
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .ok()?;
    let mut text = String::from_utf8(bytes).ok()?;
    if !f(&mut text) {
        return Some(None);
    }
    Some(Some(
        base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
    ))
}

/// Only base64 characters (standard or URL-safe alphabet, padding, line breaks).
fn looks_base64(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'\n' | b'\r')
        })
}

/// Keys are text too (a JSON schema's property names, `metadata` keys):
/// those that are not identifiers are read, and renamed when rewritten. A
/// renamed key that would collide with another gets a numbered suffix.
fn rename_keys(map: &mut Map<String, Value>, f: &mut dyn FnMut(&mut String) -> bool) -> bool {
    let renames: Vec<(String, String)> = map
        .keys()
        .filter(|key| !is_identifier(key))
        .filter_map(|key| {
            let mut new = key.clone();
            (f(&mut new) && new != *key).then(|| (key.clone(), new))
        })
        .collect();
    let renamed = !renames.is_empty();
    for (old, mut new) in renames {
        let Some(value) = map.remove(&old) else {
            continue;
        };
        let base = new.clone();
        let mut n = 2u32;
        while map.contains_key(&new) {
            new = format!("{base}#{n}");
            n = n.saturating_add(1);
        }
        map.insert(new, value);
    }
    renamed
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
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        number_text(&v.to_string())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        number_text(&v.to_string())
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
            // serde_json hands a number that no machine type holds exactly
            // (a 30-digit id, `1.10`) over as this one-key map, its text the
            // value: kept as text, written back as it came.
            if key == NUMBER_TOKEN && out.is_empty() {
                let text: String = map.next_value()?;
                return number_text(&text);
            }
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

/// The key under which serde_json (`arbitrary_precision`) passes a number's
/// text to a visitor.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

fn number_text<E: de::Error>(text: &str) -> Result<Value, E> {
    text.parse::<serde_json::Number>()
        .map(Value::Number)
        .map_err(E::custom)
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

    fn texts(mut v: Value) -> Vec<String> {
        let mut seen = Vec::new();
        each_text(&mut v, &mut |s: &mut String| {
            seen.push(s.clone());
            false
        });
        seen
    }

    /// Replaces `needle` wherever it is read; the document after, and
    /// whether the walker said it changed.
    fn masked(mut v: Value, needle: &str) -> (Value, bool) {
        let changed = each_text(&mut v, &mut |s: &mut String| {
            if !s.contains(needle) {
                return false;
            }
            *s = s.replace(needle, "[X]");
            true
        });
        (v, changed)
    }

    #[test]
    fn the_parts_of_a_message_are_handed_out_together_and_only_once() {
        let mut doc = json!({
            "system": [{"type": "text", "text": "s1"}, {"type": "text", "text": "s2"}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "https://x.example/i.png"}},
                    {"type": "tool_result", "content": [{"type": "text", "text": "t1"}, {"type": "text", "text": "t2"}]},
                    {"type": "text", "text": "b", "logprobs": [{"token": "b"}]}]},
                {"role": "user", "content": [{"type": "text", "text": "alone"}]},
            ],
        });
        let mut groups = Vec::new();
        each_part_group(&mut doc, &mut |parts| {
            groups.push(parts.iter().map(|p| p.to_string()).collect::<Vec<_>>());
            parts[0].push('!');
            true
        });
        assert_eq!(groups, [vec!["t1", "t2"], vec!["a", "b"], vec!["s1", "s2"]]);
        assert_eq!(doc["messages"][0]["content"][3]["logprobs"], Value::Null);
        let mut rest = Vec::new();
        each_text_outside_groups(&mut doc, &mut |s| {
            rest.push(s.clone());
            false
        });
        assert_eq!(rest, ["https://x.example/i.png", "alone"]);
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

    /// Every field of the penetration test's F3 list (request) and F8 list
    /// (non-streamed response) is read: each carries the marker, and no
    /// marker is left after masking.
    #[test]
    fn every_text_field_of_every_api_is_read() {
        const M: &str = "SECRET-MARKER";
        let request = json!({
            "model": "claude-x",
            "system": [{"type": "text", "text": M}],
            "metadata": {"user_id": M, "note": M},
            "stop": [M], "stop_sequences": [M], "suffix": M, "user": M,
            "prediction": {"type": "content", "content": M},
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {
                "type": "object", "properties": {"a": {"type": "string", "description": M}}}}},
            "tools": [{"name": "t", "description": M, "input_schema": {"type": "object",
                "properties": {"q": {"type": "string", "enum": [M]}}}}],
            "mcp_servers": [{"type": "url", "url": format!("https://mcp.example/{M}"), "name": "n",
                "authorization_token": M}],
            "prompt": {"id": "pmpt_1", "variables": {"city": M}},
            "reasoning": {"effort": "high", "summary": M},
            "messages": [
                {"role": "user", "name": M, "content": [
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": M}},
                    {"type": "tool_result", "tool_use_id": "t1", "content": [
                        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": M}}]},
                    {"type": "image_url", "image_url": {"url": format!("https://img.example/a.png?k={M}")}},
                    {"type": "file", "file": {"filename": M, "file_data": format!("data:text/plain;base64,{}",
                        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, M))}},
                ]},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": M, "arguments": M}}]},
            ],
            "input": [{"type": "function_call_output", "call_id": "c", "output": [
                {"type": "input_text", "text": M}]}],
        });
        let response = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
                "content": M, "refusal": M,
                "audio": {"id": "a1", "data": "UklGRg==", "transcript": M},
                "annotations": [{"type": "url_citation", "url_citation": {"url": "https://x.example/", "title": M}}]},
                "logprobs": {"content": [{"token": "SECRET", "bytes": [83], "logprob": -0.1}]}}],
            "content": [{"type": "thinking", "thinking": M, "signature": "c2lnbmF0dXJl"},
                {"type": "text", "text": "t", "citations": [{"type": "char_location", "cited_text": M}]}],
            "output": [{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": M}]}],
        });
        for doc in [request, response] {
            let expected = doc.to_string().matches(M).count();
            let seen = texts(doc.clone());
            let read = seen.iter().map(|t| t.matches(M).count()).sum::<usize>();
            // The base64 file is read decoded: one more than the raw JSON shows.
            let encoded_extra = usize::from(doc.to_string().contains("data:text/plain;base64"));
            assert_eq!(read, expected + encoded_extra, "{seen:#?}");
            let (after, changed) = masked(doc, M);
            assert!(changed);
            let after = after.to_string();
            assert!(!after.contains(M), "{after}");
            assert!(!after.contains(&base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                M
            )));
        }
    }

    #[test]
    fn structural_values_are_skipped_only_while_they_are_identifiers() {
        let doc = json!({"model": "gpt-4o", "role": "user", "type": "message", "id": "msg_01",
            "include": ["reasoning.encrypted_content"], "content": "hello"});
        assert_eq!(texts(doc), vec!["hello"]);
        // Text under a structural key is read like any other.
        let doc =
            json!({"type": "mail bob@example.com", "role": ["user", "a b"], "model": {"x": "y"}});
        assert_eq!(texts(doc), vec!["y", "user", "a b", "mail bob@example.com"]);
    }

    #[test]
    fn binary_payloads_are_skipped_and_text_payloads_read() {
        let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
        // An image, audio, a PDF, a signature: opaque.
        let doc = json!({"messages": [{"content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64("png bytes")}},
            {"type": "input_audio", "input_audio": {"data": b64("wav"), "format": "wav"}},
            {"type": "file", "file": {"file_data": format!("data:application/pdf;base64,{}", b64("pdf"))}},
            {"type": "thinking", "thinking": "hmm", "signature": b64("sig")},
        ]}]});
        assert_eq!(texts(doc), vec!["hmm"]);
        // A text media type is decoded; a value that is not base64 is text.
        let doc = json!({"source": {"type": "base64", "media_type": "text/plain", "data": b64("plain words")}});
        assert_eq!(texts(doc), vec!["plain words"]);
        let doc = json!({"data": "not base64, just words"});
        assert_eq!(texts(doc), vec!["not base64, just words"]);
        let doc = json!({"source": {"type": "text", "data": "AKIAIOSFODNN7EXAMPLE"}});
        assert_eq!(texts(doc), vec!["AKIAIOSFODNN7EXAMPLE"]);
        let (after, changed) = masked(
            json!({"source": {"type": "base64", "media_type": "text/plain", "data": b64("a SECRET b")}}),
            "SECRET",
        );
        assert!(changed);
        assert_eq!(after["source"]["data"], b64("a [X] b"));
        // A data URL that is not base64 is read whole.
        assert_eq!(
            texts(json!({"url": "data:,hi%20there"})),
            vec!["data:,hi%20there"]
        );
    }

    #[test]
    fn keys_that_are_text_are_read_and_renamed() {
        let doc = json!({"metadata": {"bob@example.com": "v", "plain_key": "w", "[X]": "taken"}});
        assert_eq!(
            texts(doc.clone()),
            vec!["taken", "v", "w", "[X]", "bob@example.com"]
        );
        let (after, changed) = masked(doc, "bob@example.com");
        assert!(changed);
        assert_eq!(after["metadata"]["[X]#2"], "v");
        assert_eq!(after["metadata"]["[X]"], "taken");
    }

    #[test]
    fn logprobs_go_when_their_text_was_rewritten() {
        let doc = json!({"choices": [
            {"message": {"content": "a SECRET"}, "logprobs": {"content": [{"token": "SECRET", "bytes": [83]}]}},
            {"message": {"content": "clean"}, "logprobs": {"content": [{"token": "clean", "bytes": [99]}]}},
        ]});
        let (after, _) = masked(doc, "SECRET");
        assert_eq!(after["choices"][0]["logprobs"], Value::Null);
        assert_eq!(
            after["choices"][1]["logprobs"]["content"][0]["token"],
            "clean"
        );
    }

    #[test]
    fn rewriting_edits_decoded_values() {
        let body = parse_strict(
            br#"{"messages":[{"role":"user","content":"mail bob\u0040example.com"}]}"#,
        )
        .unwrap();
        let (body, changed) = masked(body, "bob@example.com");
        assert!(changed);
        assert_eq!(body["messages"][0]["content"], "mail [X]");
    }

    #[test]
    fn numbers_are_written_back_as_they_came() {
        let body = br#"{"n":[12345678901234567890123,-98765432109876543210,1.10,1e400,0.1,7,-0.0,2.5E-3],"t":"mail bob@example.com"}"#;
        let (doc, changed) = masked(parse_strict(body).unwrap(), "bob@example.com");
        assert!(changed);
        assert_eq!(
            String::from_utf8(to_json(&doc)).unwrap(),
            // Digits as sent; only an exponent's spelling is serde_json's.
            r#"{"n":[12345678901234567890123,-98765432109876543210,1.10,1e+400,0.1,7,-0.0,2.5e-3],"t":"mail [X]"}"#
        );
        assert_eq!(doc["n"][5].as_u64(), Some(7));
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
