//! OpenAI chat and completions chunks: `choices[].delta` (content, refusal,
//! tool-call arguments) and `choices[].text`, a choice ending at its
//! `finish_reason`.

use serde_json::{json, Map, Value};

use super::*;

impl StreamRewriter {
    /// An OpenAI chunk like the last one seen, with one `choice`.
    pub(super) fn openai_event(&self, choice: Value) -> SseEvent {
        let mut chunk = self.template.clone().unwrap_or_default();
        chunk.insert("choices".into(), Value::Array(vec![choice]));
        SseEvent::data(json_text(&Value::Object(chunk)))
    }

    pub(super) fn openai_chunk(
        &mut self,
        chunk: &mut Map<String, Value>,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        if let Some(usage) = chunk.get("usage").filter(|usage| usage.is_object()) {
            self.usage = Some(usage.clone());
        }
        if !chunk.get("choices").is_some_and(Value::is_array) {
            return Ok(());
        }
        // Extra chunks added while handling this one look like it.
        let template = chunk
            .iter()
            .filter(|(key, _)| key.as_str() != "choices")
            .map(|(key, value)| {
                let value = if key == "usage" {
                    Value::Null
                } else {
                    value.clone()
                };
                (key.clone(), value)
            })
            .collect();
        self.template = Some(template);
        let Some(Value::Array(choices)) = chunk.get_mut("choices") else {
            return Ok(());
        };
        for (position, choice) in choices.iter_mut().enumerate() {
            let Value::Object(choice) = choice else {
                continue;
            };
            let index = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(to_u64(position));
            self.openai_choice(index, choice, edit)?;
        }
        Ok(())
    }

    pub(super) fn openai_choice(
        &mut self,
        index: u64,
        choice: &mut Map<String, Value>,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        let finishing = choice
            .get("finish_reason")
            .is_some_and(|reason| !reason.is_null());
        if self.api == StreamApi::OpenAiCompletions {
            if let Some(Value::String(text)) = choice.get_mut("text") {
                let slot = Slot::CompletionText { choice: index };
                self.openai_delta(slot, text, finishing, edit)?;
                edit.read(&["choices"], "text");
            }
        } else if let Some(Value::Object(delta)) = choice.get_mut("delta") {
            if let Some(Value::String(text)) = delta.get_mut("content") {
                let slot = Slot::ChatContent { choice: index };
                self.openai_delta(slot, text, finishing, edit)?;
                edit.read(&["choices", "delta"], "content");
            }
            if let Some(Value::String(text)) = delta.get_mut("refusal") {
                let slot = Slot::ChatRefusal { choice: index };
                self.openai_delta(slot, text, finishing, edit)?;
                edit.read(&["choices", "delta"], "refusal");
            }
            if let Some(Value::String(text)) = delta
                .get_mut("function_call")
                .and_then(|call| call.get_mut("arguments"))
            {
                let slot = Slot::ChatFunction { choice: index };
                self.openai_delta(slot, text, finishing, edit)?;
                edit.read(&["choices", "delta", "function_call"], "arguments");
            }
            if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                for (position, call) in calls.iter_mut().enumerate() {
                    let tool = call
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(to_u64(position));
                    if let Some(Value::String(text)) = call
                        .get_mut("function")
                        .and_then(|function| function.get_mut("arguments"))
                    {
                        let slot = Slot::ChatTool {
                            choice: index,
                            tool,
                        };
                        self.openai_delta(slot, text, finishing, edit)?;
                        edit.read(&["choices", "delta", "tool_calls", "function"], "arguments");
                    }
                }
            }
        }
        if choice
            .get("logprobs")
            .is_some_and(|logprobs| !logprobs.is_null())
        {
            choice.insert("logprobs".into(), Value::Null);
            edit.changed = true;
        }
        if finishing {
            // Channels of the choice with no field in this chunk.
            for slot in self.open_slots(|slot| slot.choice() == Some(index)) {
                self.close_with_delta(slot, edit)?;
            }
        }
        Ok(())
    }

    /// One OpenAI text field, rewritten in place. In the chunk that ends its
    /// choice, the channel ends here too, and what it held back is appended
    /// to the field: it follows the field's own text, and comes before the
    /// end.
    pub(super) fn openai_delta(
        &mut self,
        slot: Slot,
        text: &mut String,
        finishing: bool,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        let mut rewritten = if text.is_empty() {
            String::new()
        } else {
            self.push(slot, None, text)?
        };
        if finishing {
            rewritten.push_str(&self.close(slot)?);
        }
        edit.set(text, rewritten);
        Ok(())
    }
}

/// One choice of an OpenAI chat chunk, carrying `delta`.
pub(super) fn chat_choice(choice: u64, delta: Value) -> Value {
    json!({"index": choice, "delta": delta, "logprobs": null, "finish_reason": null})
}
