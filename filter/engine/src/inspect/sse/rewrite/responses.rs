//! OpenAI Responses events: the `.delta` events of each text channel, the
//! `.done`/`part.done`/`item.done`/`completed` events that repeat the text
//! (given what was actually sent), `sequence_number` renumbering.

use serde_json::{json, Map, Value};

use super::*;

impl StreamRewriter {
    /// A Responses event the rewriter adds, numbered after the last one sent.
    pub(super) fn responses_event(&mut self, kind: &str, mut body: Map<String, Value>) -> SseEvent {
        body.insert("type".into(), kind.into());
        if let Some(last) = self.last_sequence {
            let sequence = last.saturating_add(1);
            body.insert("sequence_number".into(), sequence.into());
            self.last_sequence = Some(sequence);
            self.sequence_offset = self.sequence_offset.saturating_add(1);
        }
        SseEvent::named(kind, json_text(&Value::Object(body)))
    }

    /// A Responses `.delta` event of `kind` carrying `text`.
    pub(super) fn responses_delta(
        &mut self,
        kind: &str,
        item_id: Option<String>,
        output: u64,
        index: Option<(&str, u64)>,
        text: &str,
    ) -> SseEvent {
        let mut body = Map::new();
        if let Some(item_id) = item_id {
            body.insert("item_id".into(), item_id.into());
        }
        body.insert("output_index".into(), output.into());
        if let Some((key, index)) = index {
            body.insert(key.into(), index.into());
        }
        body.insert("delta".into(), text.into());
        self.responses_event(kind, body)
    }

    pub(super) fn responses(
        &mut self,
        name: Option<&str>,
        body: &mut Map<String, Value>,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        let kind = event_type(name, body);
        let output = u64_field(body, "output_index");
        let item_id = body
            .get("item_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let item_id = item_id.as_deref();
        let text_slot = Slot::ResponsesText {
            output,
            content: u64_field(body, "content_index"),
        };
        let content = u64_field(body, "content_index");
        let mode = if kind.ends_with(".done") {
            Mode::Close
        } else {
            Mode::Push
        };
        // A `.delta` event carries new text in `delta`; its `.done` event the
        // whole text under the field named here.
        let channel = match kind.as_str() {
            "response.output_text.delta" | "response.output_text.done" => Some((text_slot, "text")),
            "response.refusal.delta" | "response.refusal.done" => {
                Some((Slot::ResponsesRefusal { output, content }, "refusal"))
            }
            "response.reasoning_text.delta" | "response.reasoning_text.done" => {
                Some((Slot::ResponsesReasoning { output, content }, "text"))
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_summary_text.done" => {
                let summary = u64_field(body, "summary_index");
                Some((Slot::ResponsesSummary { output, summary }, "text"))
            }
            "response.function_call_arguments.delta" | "response.function_call_arguments.done" => {
                Some((Slot::ResponsesTool { output }, "arguments"))
            }
            _ => None,
        };
        if let Some((slot, whole_key)) = channel {
            let key = if mode == Mode::Push {
                "delta"
            } else {
                whole_key
            };
            self.responses_field(slot, item_id, body, key, mode, edit)?;
            edit.read(&[], key);
            clear_logprobs(body, edit);
        }
        match kind.as_str() {
            "response.content_part.added" | "response.content_part.done" => {
                if let Some(Value::Object(part)) = body.get_mut("part") {
                    let slot = part_slot(output, content, part);
                    self.responses_part(slot, item_id, part, &["part"], mode, edit)?;
                }
            }
            "response.reasoning_summary_part.added" | "response.reasoning_summary_part.done" => {
                let summary = u64_field(body, "summary_index");
                if let Some(Value::Object(part)) = body.get_mut("part") {
                    let slot = Slot::ResponsesSummary { output, summary };
                    self.responses_part(slot, item_id, part, &["part"], mode, edit)?;
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                if let Some(Value::Object(item)) = body.get_mut("item") {
                    self.responses_item(output, item, &["item"], mode, edit)?;
                }
            }
            "response.created" | "response.in_progress" | "response.queued" => {
                self.responses_response(body, Mode::Push, edit)?;
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.responses_response(body, Mode::Close, edit)?;
                self.close_all(edit)?;
            }
            _ => {}
        }
        // Number the event after any added before it.
        if let Some(sequence) = body.get("sequence_number").and_then(Value::as_u64) {
            let renumbered = sequence.saturating_add(self.sequence_offset);
            if renumbered != sequence {
                body.insert("sequence_number".into(), renumbered.into());
                edit.changed = true;
            }
            self.last_sequence = Some(renumbered);
        }
        Ok(())
    }

    /// `body[key]` as text of `slot`'s channel.
    pub(super) fn responses_field(
        &mut self,
        slot: Slot,
        item_id: Option<&str>,
        body: &mut Map<String, Value>,
        key: &str,
        mode: Mode,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        match body.get_mut(key) {
            Some(Value::String(text)) => self.responses_text(slot, item_id, text, mode, edit),
            // An end without the text still ends the channel.
            _ if mode == Mode::Close => self.close_with_delta(slot, edit),
            _ => Ok(()),
        }
    }

    /// A content part (`output_text`, `refusal`, `reasoning_text`,
    /// `summary_text`) at `base`: its text.
    pub(super) fn responses_part(
        &mut self,
        slot: Slot,
        item_id: Option<&str>,
        part: &mut Map<String, Value>,
        base: &[&'static str],
        mode: Mode,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        let key = if matches!(slot, Slot::ResponsesRefusal { .. }) {
            "refusal"
        } else {
            "text"
        };
        if let Some(Value::String(text)) = part.get_mut(key) {
            self.responses_text(slot, item_id, text, mode, edit)?;
            edit.read(base, key);
            clear_logprobs(part, edit);
        }
        Ok(())
    }

    /// An output item: a message's content parts, a function call's
    /// arguments.
    pub(super) fn responses_item(
        &mut self,
        output: u64,
        item: &mut Map<String, Value>,
        base: &[&'static str],
        mode: Mode,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        let item_id = item.get("id").and_then(Value::as_str).map(str::to_owned);
        let item_id = item_id.as_deref();
        let parts_base = [base, &["content"]].concat();
        if let Some(Value::Array(parts)) = item.get_mut("content") {
            for (content, part) in parts.iter_mut().enumerate() {
                if let Value::Object(part) = part {
                    let slot = part_slot(output, to_u64(content), part);
                    self.responses_part(slot, item_id, part, &parts_base, mode, edit)?;
                }
            }
        }
        let summary_base = [base, &["summary"]].concat();
        if let Some(Value::Array(parts)) = item.get_mut("summary") {
            for (summary, part) in parts.iter_mut().enumerate() {
                if let Value::Object(part) = part {
                    let slot = Slot::ResponsesSummary {
                        output,
                        summary: to_u64(summary),
                    };
                    self.responses_part(slot, item_id, part, &summary_base, mode, edit)?;
                }
            }
        }
        if let Some(Value::String(arguments)) = item.get_mut("arguments") {
            let slot = Slot::ResponsesTool { output };
            self.responses_text(slot, item_id, arguments, mode, edit)?;
            edit.read(base, "arguments");
        }
        Ok(())
    }

    /// A whole response object (`response.created` ... `response.completed`):
    /// every output item, and its usage.
    pub(super) fn responses_response(
        &mut self,
        body: &mut Map<String, Value>,
        mode: Mode,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        let Some(Value::Object(response)) = body.get_mut("response") else {
            return Ok(());
        };
        if let Some(usage) = response.get("usage").filter(|usage| usage.is_object()) {
            self.usage = Some(usage.clone());
        }
        if let Some(Value::Array(items)) = response.get_mut("output") {
            for (output, item) in items.iter_mut().enumerate() {
                if let Value::Object(item) = item {
                    self.responses_item(to_u64(output), item, &["response", "output"], mode, edit)?;
                }
            }
        }
        Ok(())
    }

    /// One text field of the Responses API: new text for the channel, or its
    /// full text, replaced by what was sent for the channel.
    pub(super) fn responses_text(
        &mut self,
        slot: Slot,
        item_id: Option<&str>,
        text: &mut String,
        mode: Mode,
        edit: &mut EventEdit,
    ) -> Result<(), StreamBlock> {
        if mode == Mode::Push {
            if !text.is_empty() {
                let rewritten = self.push(slot, item_id, text)?;
                edit.set(text, rewritten);
            }
            return Ok(());
        }
        let full = if self.position(slot).is_some() {
            self.close_with_delta(slot, edit)?;
            self.position(slot)
                .and_then(|at| self.channels.get(at))
                .map(|state| state.emitted.clone())
                .unwrap_or_default()
        } else if text.is_empty() {
            String::new()
        } else {
            // Text that was never streamed as deltas: inspect it whole now,
            // rather than let the repeat carry it out unread.
            let mut rewritten = self.push(slot, item_id, text)?;
            rewritten.push_str(&self.close(slot)?);
            rewritten
        };
        edit.set(text, full);
        Ok(())
    }
}

/// The channel of a Responses content part, by its type.
fn part_slot(output: u64, content: u64, part: &Map<String, Value>) -> Slot {
    match part.get("type").and_then(Value::as_str) {
        Some("refusal") => Slot::ResponsesRefusal { output, content },
        Some("reasoning_text") => Slot::ResponsesReasoning { output, content },
        Some("summary_text") => Slot::ResponsesSummary {
            output,
            summary: content,
        },
        _ => Slot::ResponsesText { output, content },
    }
}

/// Empties a Responses `logprobs` list: its tokens spell the original text.
fn clear_logprobs(body: &mut Map<String, Value>, edit: &mut EventEdit) {
    let keep = match body.get("logprobs") {
        None | Some(Value::Null) => true,
        Some(Value::Array(list)) => list.is_empty(),
        Some(_) => false,
    };
    if !keep {
        body.insert("logprobs".into(), json!([]));
        edit.changed = true;
    }
}
