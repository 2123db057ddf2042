//! Anthropic events: `content_block_delta` (text, thinking, tool input
//! JSON), a block ending at `content_block_stop`, all at `message_stop`.

use serde_json::{json, Map, Value};

use super::*;

impl StreamRewriter {
    pub(super) fn anthropic(
        &mut self,
        name: Option<&str>,
        body: &mut Map<String, Value>,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        let block = u64_field(body, "index");
        match event_type(name, body).as_str() {
            "message_start" => {
                if let Some(usage) = body
                    .get("message")
                    .and_then(|message| message.get("usage"))
                    .filter(|usage| usage.is_object())
                {
                    self.usage = Some(usage.clone());
                }
            }
            "message_delta" => {
                if let Some(Value::Object(update)) = body.get("usage") {
                    match &mut self.usage {
                        Some(Value::Object(usage)) => {
                            for (key, value) in update {
                                usage.insert(key.clone(), value.clone());
                            }
                        }
                        _ => self.usage = Some(Value::Object(update.clone())),
                    }
                }
            }
            "content_block_start" | "content_block_delta" => {
                let base = if body.contains_key("delta") {
                    "delta"
                } else {
                    "content_block"
                };
                if let Some(Value::Object(fields)) = body.get_mut(base) {
                    for (key, slot) in [
                        ("text", Slot::AnthropicText { block }),
                        ("thinking", Slot::AnthropicThinking { block }),
                        ("partial_json", Slot::AnthropicJson { block }),
                    ] {
                        if let Some(Value::String(text)) = fields.get_mut(key) {
                            self.anthropic_delta(slot, text, edit)?;
                            edit.read(&[base], key);
                        }
                    }
                }
            }
            "content_block_stop" => {
                for slot in self.open_slots(|slot| slot.block() == Some(block)) {
                    self.close_with_delta(slot, edit)?;
                }
            }
            "message_stop" => self.close_all(edit)?,
            _ => {}
        }
        Ok(())
    }

    pub(super) fn anthropic_delta(
        &mut self,
        slot: Slot,
        text: &mut String,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        if !text.is_empty() {
            let rewritten = self.push(slot, None, text)?;
            edit.set(text, rewritten);
        }
        Ok(())
    }
}

/// An Anthropic `content_block_delta` event for content block `block`.
pub(super) fn anthropic_delta_event(block: u64, delta: Value) -> SseEvent {
    let body = json!({"type": "content_block_delta", "index": block, "delta": delta});
    SseEvent::named("content_block_delta", json_text(&body))
}
