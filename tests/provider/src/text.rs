//! Small helpers shared by both providers: pulling text out of message
//! contents, deciding the reply, counting "tokens", making ids and cutting the
//! reply into stream deltas.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::Value;

/// The prefix that makes the stand-in answer with the rest of the prompt.
const REPLY_WITH: &str = "reply with:";

/// How many characters (not bytes) each streamed text delta carries.
const DELTA_CHARS: usize = 4;

/// The reply for a prompt when no reply was queued: the text after a leading
/// `reply with:` (case-insensitive, leading whitespace trimmed), otherwise the
/// prompt itself, unchanged.
pub fn reply_from_prompt(prompt: &str) -> String {
    let trimmed = prompt.trim_start();
    match trimmed.get(..REPLY_WITH.len()) {
        Some(head) if head.eq_ignore_ascii_case(REPLY_WITH) => trimmed
            .get(REPLY_WITH.len()..)
            .unwrap_or_default()
            .trim_start()
            .to_owned(),
        _ => prompt.to_owned(),
    }
}

/// The stand-in's token count: whitespace-separated words.
pub fn count_tokens(text: &str) -> u64 {
    u64::try_from(text.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// The text of a message `content`: a string as is, or the `text` of the
/// parts whose `type` is one of `part_types`, joined with a space.
pub fn content_text(content: Option<&Value>, part_types: &[&str]) -> String {
    match content {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|part| {
                part.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|kind| part_types.contains(&kind))
            })
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The content text of the last message in `messages` whose `role` is `user`,
/// or an empty string when there is none.
pub fn last_user_text(messages: &[Value], part_types: &[&str]) -> String {
    messages
        .iter()
        .rev()
        .find(|message| message.get("role").and_then(Value::as_str) == Some("user"))
        .map(|message| content_text(message.get("content"), part_types))
        .unwrap_or_default()
}

/// The token count of every message's content text added up.
pub fn count_message_tokens(messages: &[Value], part_types: &[&str]) -> u64 {
    messages
        .iter()
        .map(|message| count_tokens(&content_text(message.get("content"), part_types)))
        .sum()
}

/// Cuts `text` into the pieces sent as stream deltas: a few characters each,
/// never splitting a character. Concatenated, they are `text` again.
pub fn deltas(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(DELTA_CHARS)
        .map(|piece| piece.iter().collect())
        .collect()
}

/// A provider-looking id: `prefix` followed by `len` random letters and digits.
pub fn new_id(prefix: &str, len: usize) -> String {
    let suffix: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

/// Seconds since the Unix epoch, as OpenAI's `created` fields carry them.
pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reply_with_prefix_returns_the_rest() {
        assert_eq!(
            reply_from_prompt("reply with:   exactly this "),
            "exactly this "
        );
        assert_eq!(reply_from_prompt("  Reply With: x"), "x");
        assert_eq!(
            reply_from_prompt("please reply with: x"),
            "please reply with: x"
        );
        assert_eq!(reply_from_prompt("  echo me  "), "  echo me  ");
        assert_eq!(reply_from_prompt("réply"), "réply");
    }

    #[test]
    fn content_text_joins_text_parts() {
        let content = json!([
            {"type": "text", "text": "one"},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": "two"}
        ]);
        assert_eq!(content_text(Some(&content), &["text"]), "one two");
        assert_eq!(content_text(Some(&json!("plain")), &["text"]), "plain");
        assert_eq!(content_text(None, &["text"]), "");
    }

    #[test]
    fn deltas_reassemble_and_keep_characters_whole() {
        let text = "héllo wörld ✓ done";
        let pieces = deltas(text);
        assert!(pieces.len() > 3);
        assert!(pieces
            .iter()
            .all(|piece| piece.chars().count() <= DELTA_CHARS));
        assert_eq!(pieces.concat(), text);
        assert!(deltas("").is_empty());
    }

    #[test]
    fn ids_have_prefix_and_length() {
        let id = new_id("chatcmpl-", 29);
        assert!(id.starts_with("chatcmpl-"));
        assert_eq!(id.len(), 9 + 29);
        assert_ne!(id, new_id("chatcmpl-", 29));
    }
}
