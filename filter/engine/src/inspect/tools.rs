//! Where each provider API puts the tools a client offers a model and the
//! tool calls a model answers with: plain JSON, no policy (the policy's side
//! is `policy::tools`, the two meet in `inspect::calls`).
//!
//! A tool is known by one name in offers and calls alike, so one glob in a
//! policy covers both:
//! - a function (or custom) tool by its name, in every API;
//! - OpenAI Responses built-ins by their kind: `computer` (the
//!   `computer_use_preview` tool, `computer_call`), `local_shell`, `shell`,
//!   `apply_patch`, `web_search`, `file_search`, `code_interpreter`,
//!   `image_generation`, and `mcp.<server_label>` for a remote MCP server;
//! - Anthropic's tools by their `name` (`bash`, `computer`,
//!   `str_replace_based_edit_tool`, `web_search`), whatever their version.
//!
//! Only calls the client's agent runs are calls here: a function, custom,
//! shell, computer or patch call. The provider's own server-side tools (web
//! search, code interpreter, remote MCP) have already run when their answer
//! arrives, so they are governed where they are offered.

use serde_json::{Map, Value};

use super::body::{parse_strict, Shape};

/// The name a policy knows an offered tool by, `None` for an entry this
/// API does not define (left to the provider to refuse).
fn offered_name(shape: Shape, tool: &Value) -> Option<String> {
    let kind = tool.get("type").and_then(Value::as_str);
    let name_at = |path: &[&str]| {
        let mut v = tool;
        for key in path {
            v = v.get(key)?;
        }
        v.as_str().map(str::to_owned)
    };
    match shape {
        Shape::OpenAiChat => match kind {
            Some("function") | None => {
                name_at(&["function", "name"]).or_else(|| name_at(&["name"]))
            }
            Some("custom") => name_at(&["custom", "name"]),
            Some(other) => Some(responses_builtin(other, tool)),
        },
        Shape::OpenAiResponses => match kind {
            Some("function" | "custom") => name_at(&["name"]),
            Some(other) => Some(responses_builtin(other, tool)),
            None => None,
        },
        Shape::AnthropicMessages => name_at(&["name"]).or_else(|| kind.map(str::to_owned)),
        _ => None,
    }
}

/// The policy name of an OpenAI built-in tool (see the module's list).
fn responses_builtin(kind: &str, tool: &Value) -> String {
    match kind {
        "computer_use_preview" | "computer_use" | "computer" => "computer".into(),
        "mcp" => format!(
            "mcp.{}",
            tool.get("server_label")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
        k if k.starts_with("web_search") => "web_search".into(),
        k => k.to_owned(),
    }
}

/// The arrays of a request that offer tools: `tools`, and the legacy
/// `functions` of OpenAI chat.
fn offer_keys(shape: Shape) -> &'static [&'static str] {
    match shape {
        Shape::OpenAiChat => &["tools", "functions"],
        Shape::OpenAiResponses | Shape::AnthropicMessages => &["tools"],
        _ => &[],
    }
}

/// The names of the tools a request offers, in order (entries with no
/// name this API defines are left out).
pub fn offered_tools(shape: Shape, doc: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for key in offer_keys(shape) {
        if let Some(Value::Array(tools)) = doc.get(*key) {
            // A legacy `functions` entry is the function itself: named at
            // its top, as `offered_name` reads an entry without a type.
            names.extend(tools.iter().filter_map(|t| offered_name(shape, t)));
        }
    }
    names
}

/// Removes the offered tools `remove` says to, and the fields that make no
/// sense without tools once none is left (`parallel_tool_calls`, a
/// `tool_choice` of `auto` or `none`). The names removed, in order.
pub fn remove_offered(
    shape: Shape,
    doc: &mut Value,
    remove: &mut dyn FnMut(&str) -> bool,
) -> Vec<String> {
    let mut removed = Vec::new();
    let Some(object) = doc.as_object_mut() else {
        return removed;
    };
    for key in offer_keys(shape) {
        let now_empty = match object.get_mut(*key) {
            Some(Value::Array(tools)) => {
                let before = tools.len();
                tools.retain(|t| match offered_name(shape, t) {
                    Some(name) if remove(&name) => {
                        removed.push(name);
                        false
                    }
                    _ => true,
                });
                tools.is_empty() && before > 0
            }
            _ => false,
        };
        if now_empty {
            object.remove(*key);
        }
    }
    if !removed.is_empty() && offer_keys(shape).iter().all(|k| !object.contains_key(*k)) {
        object.remove("parallel_tool_calls");
        if matches!(choice_in(shape, object), Choice::Free) {
            object.remove("tool_choice");
            object.remove("function_call");
        }
    }
    removed
}

/// What a request's `tool_choice` asks of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Nothing, `auto` or `none`: the model may use any offered tool or none.
    Free,
    /// Some tool must be called (`required`, Anthropic's `any`).
    Any,
    /// These tools only (one named tool, or OpenAI's `allowed_tools`);
    /// `required` whether one of them must be called.
    Only { names: Vec<String>, required: bool },
}

/// What a request's tool choice asks for.
pub fn tool_choice(shape: Shape, doc: &Value) -> Choice {
    match doc.as_object() {
        Some(object) => choice_in(shape, object),
        None => Choice::Free,
    }
}

fn choice_in(shape: Shape, object: &Map<String, Value>) -> Choice {
    let named = |name: Option<String>| match name {
        Some(name) => Choice::Only {
            names: vec![name],
            required: true,
        },
        // A choice naming nothing this API defines: the provider refuses it.
        None => Choice::Free,
    };
    if shape == Shape::OpenAiChat {
        if let Some(legacy) = object.get("function_call").filter(|v| v.is_object()) {
            return named(
                legacy
                    .get("name")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            );
        }
    }
    let Some(choice) = object.get("tool_choice") else {
        return Choice::Free;
    };
    if let Some(word) = choice.as_str() {
        return match word {
            "required" | "any" => Choice::Any,
            _ => Choice::Free,
        };
    }
    let kind = choice
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (shape, kind) {
        (_, "auto" | "none") => Choice::Free,
        (Shape::AnthropicMessages, "any") => Choice::Any,
        (Shape::AnthropicMessages, "tool") => named(
            choice
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        (_, "allowed_tools") => {
            // Chat nests the list in `allowed_tools`, Responses does not.
            let inner = choice.get("allowed_tools").unwrap_or(choice);
            let names = inner
                .get("tools")
                .and_then(Value::as_array)
                .map(|tools| {
                    tools
                        .iter()
                        .filter_map(|t| offered_name(shape, t))
                        .collect()
                })
                .unwrap_or_default();
            let required = inner.get("mode").and_then(Value::as_str) == Some("required");
            Choice::Only { names, required }
        }
        (Shape::OpenAiChat | Shape::OpenAiResponses, _) => named(offered_name(shape, choice)),
        _ => Choice::Free,
    }
}

/// Where a call sits in a response: the choice and call index (OpenAI
/// chat; a legacy `function_call` is call `usize::MAX`), the output item
/// (Responses), or the content block (Anthropic, outer 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallAt {
    pub outer: usize,
    pub inner: usize,
}

/// One tool call a model answered with.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub at: CallAt,
    /// Its tool's name (see the module's naming).
    pub name: String,
    /// Its arguments: the JSON the model wrote, decoded when it is JSON,
    /// else the text as written (a custom tool's input, a cut document).
    pub arguments: Value,
}

/// Arguments sent as a string of JSON (OpenAI): decoded when they parse
/// strictly. JSON that names a key twice stays text
/// ([`ambiguous_arguments`] tells the judge): parsers disagree on which of
/// the two an agent would run.
pub(crate) fn decoded(arguments: Option<&Value>) -> Value {
    match arguments {
        Some(Value::String(text)) => {
            parse_strict(text.as_bytes()).unwrap_or_else(|_| Value::String(text.clone()))
        }
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

/// Whether a call's arguments are JSON only to a lenient parser (a key
/// given twice): `{"cmd": "rm -rf /", "cmd": "ls"}` is `ls` to one
/// parser and `rm -rf /` to another, so no judgment of it holds.
pub fn ambiguous_arguments(arguments: &Value) -> bool {
    match arguments {
        Value::String(text) => serde_json::from_str::<Value>(text).is_ok(),
        _ => false,
    }
}

/// The calls the client's agent would run, in the order they appear.
pub fn tool_calls(shape: Shape, doc: &Value) -> Vec<ToolCall> {
    let mut calls = Vec::new();
    let str_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    match shape {
        Shape::OpenAiChat => {
            let choices = doc.get("choices").and_then(Value::as_array);
            for (outer, choice) in choices.into_iter().flatten().enumerate() {
                let Some(message) = choice.get("message") else {
                    continue;
                };
                if let Some(legacy) = message.get("function_call").filter(|v| v.is_object()) {
                    calls.push(ToolCall {
                        at: CallAt {
                            outer,
                            inner: usize::MAX,
                        },
                        name: str_at(legacy, "name").unwrap_or_default(),
                        arguments: decoded(legacy.get("arguments")),
                    });
                }
                let listed = message.get("tool_calls").and_then(Value::as_array);
                for (inner, call) in listed.into_iter().flatten().enumerate() {
                    let (body, input) = match call.get("type").and_then(Value::as_str) {
                        Some("custom") => ("custom", "input"),
                        _ => ("function", "arguments"),
                    };
                    let part = call.get(body).unwrap_or(&Value::Null);
                    calls.push(ToolCall {
                        at: CallAt { outer, inner },
                        name: str_at(part, "name").unwrap_or_default(),
                        arguments: decoded(part.get(input)),
                    });
                }
            }
        }
        Shape::OpenAiResponses => {
            let output = doc.get("output").and_then(Value::as_array);
            for (outer, item) in output.into_iter().flatten().enumerate() {
                if let Some(call) = responses_call(item) {
                    calls.push(ToolCall {
                        at: CallAt { outer, inner: 0 },
                        name: call.0,
                        arguments: call.1,
                    });
                }
            }
        }
        Shape::AnthropicMessages => {
            let content = doc.get("content").and_then(Value::as_array);
            for (inner, block) in content.into_iter().flatten().enumerate() {
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    calls.push(ToolCall {
                        at: CallAt { outer: 0, inner },
                        name: str_at(block, "name").unwrap_or_default(),
                        arguments: block.get("input").cloned().unwrap_or(Value::Null),
                    });
                }
            }
        }
        _ => {}
    }
    calls
}

/// A Responses output item the client runs: its tool's name and arguments.
pub fn responses_call(item: &Value) -> Option<(String, Value)> {
    let kind = item.get("type").and_then(Value::as_str)?;
    let name = || {
        item.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let field = |key: &str| item.get(key).cloned().unwrap_or(Value::Null);
    Some(match kind {
        "function_call" => (name(), decoded(item.get("arguments"))),
        "custom_tool_call" => (name(), decoded(item.get("input"))),
        "computer_call" => ("computer".into(), field("action")),
        "local_shell_call" => ("local_shell".into(), field("action")),
        "shell_call" => ("shell".into(), field("action")),
        "apply_patch_call" => ("apply_patch".into(), field("operation")),
        _ => return None,
    })
}

/// Replaces refused calls (`refused`: where, and the sentence that says
/// why) with text the client's SDK reads as the model's answer, so the
/// response stays well-formed: a choice or message left with no call ends
/// as if the model had stopped (`stop`, `end_turn`). Never echoes a call's
/// arguments.
pub fn refuse_calls(shape: Shape, doc: &mut Value, refused: &[(CallAt, String)]) {
    match shape {
        Shape::OpenAiChat => {
            let Some(Value::Array(choices)) = doc.get_mut("choices") else {
                return;
            };
            for (outer, choice) in choices.iter_mut().enumerate() {
                let here: Vec<&(CallAt, String)> =
                    refused.iter().filter(|(at, _)| at.outer == outer).collect();
                if here.is_empty() {
                    continue;
                }
                let Some(Value::Object(message)) = choice.get_mut("message") else {
                    continue;
                };
                if here.iter().any(|(at, _)| at.inner == usize::MAX) {
                    message.remove("function_call");
                }
                let mut left = 0;
                if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
                    let mut inner = 0;
                    calls.retain(|_| {
                        let keep = !here.iter().any(|(at, _)| at.inner == inner);
                        inner += 1;
                        keep
                    });
                    left = calls.len();
                    if calls.is_empty() {
                        message.remove("tool_calls");
                    }
                }
                let notes: Vec<&str> = here.iter().map(|(_, why)| why.as_str()).collect();
                let text = match message.get("content").and_then(Value::as_str) {
                    Some(said) if !said.is_empty() => format!("{said}\n\n{}", notes.join("\n")),
                    _ => notes.join("\n"),
                };
                message.insert("content".into(), Value::String(text));
                let still_calls = left > 0 || message.contains_key("function_call");
                if let Value::Object(choice) = choice {
                    let ended_for_calls = matches!(
                        choice.get("finish_reason").and_then(Value::as_str),
                        Some("tool_calls" | "function_call")
                    );
                    if ended_for_calls && !still_calls {
                        choice.insert("finish_reason".into(), Value::from("stop"));
                    }
                }
            }
        }
        Shape::OpenAiResponses => {
            let Some(Value::Array(output)) = doc.get_mut("output") else {
                return;
            };
            for (at, why) in refused {
                if let Some(item) = output.get_mut(at.outer) {
                    *item = responses_note(at.outer, why);
                }
            }
        }
        Shape::AnthropicMessages => {
            let Some(object) = doc.as_object_mut() else {
                return;
            };
            if let Some(Value::Array(content)) = object.get_mut("content") {
                for (at, why) in refused {
                    if let Some(block) = content.get_mut(at.inner) {
                        *block = serde_json::json!({"type": "text", "text": why});
                    }
                }
                let any_call = content
                    .iter()
                    .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"));
                if !any_call
                    && object.get("stop_reason").and_then(Value::as_str) == Some("tool_use")
                {
                    object.insert("stop_reason".into(), Value::from("end_turn"));
                }
            }
        }
        _ => {}
    }
}

/// The Responses message item that stands where a refused call was.
pub fn responses_note(output_index: usize, why: &str) -> Value {
    serde_json::json!({
        "type": "message",
        "id": format!("msg_warden_{output_index}"),
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": why, "annotations": []}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;
    use serde_json::json;

    #[test]
    fn offers_are_named_alike_in_every_api() {
        let chat = json!({"tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
            {"type": "custom", "custom": {"name": "grammar"}}],
            "functions": [{"name": "legacy"}]});
        assert_eq!(
            offered_tools(Shape::OpenAiChat, &chat),
            ["get_weather", "grammar", "legacy"]
        );
        let responses = json!({"tools": [
            {"type": "function", "name": "f"},
            {"type": "computer_use_preview", "display_width": 1024},
            {"type": "local_shell"}, {"type": "shell"},
            {"type": "web_search_preview"},
            {"type": "mcp", "server_label": "github", "server_url": "https://x"}]});
        assert_eq!(
            offered_tools(Shape::OpenAiResponses, &responses),
            [
                "f",
                "computer",
                "local_shell",
                "shell",
                "web_search",
                "mcp.github"
            ]
        );
        let anthropic = json!({"tools": [
            {"type": "bash_20250124", "name": "bash"},
            {"type": "computer_20250124", "name": "computer", "display_width_px": 1024},
            {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
            {"name": "get_weather", "input_schema": {"type": "object"}}]});
        assert_eq!(
            offered_tools(Shape::AnthropicMessages, &anthropic),
            [
                "bash",
                "computer",
                "str_replace_based_edit_tool",
                "get_weather"
            ]
        );
    }

    #[test]
    fn removing_every_offer_drops_what_needs_one() {
        let mut chat = json!({"model": "m", "tools": [
            {"type": "function", "function": {"name": "shell"}}],
            "tool_choice": "auto", "parallel_tool_calls": true});
        let removed = remove_offered(Shape::OpenAiChat, &mut chat, &mut |n| n == "shell");
        assert_eq!(removed, ["shell"]);
        assert_eq!(chat, json!({"model": "m"}));

        // A choice that needs the tool is the caller's to settle: kept.
        let mut anthropic = json!({"tools": [{"name": "bash"}, {"name": "read"}],
            "tool_choice": {"type": "tool", "name": "bash"}});
        let removed = remove_offered(Shape::AnthropicMessages, &mut anthropic, &mut |n| {
            n == "bash"
        });
        assert_eq!(removed, ["bash"]);
        assert_eq!(anthropic["tools"], json!([{"name": "read"}]));
        assert_eq!(
            tool_choice(Shape::AnthropicMessages, &anthropic),
            Choice::Only {
                names: vec!["bash".into()],
                required: true
            }
        );
        let mut untouched = json!({"tools": [{"name": "read"}]});
        assert!(
            remove_offered(Shape::AnthropicMessages, &mut untouched, &mut |_| false).is_empty()
        );
        assert_eq!(untouched, json!({"tools": [{"name": "read"}]}));
    }

    #[test]
    fn choices_in_every_api() {
        let c = |shape, doc: Value| tool_choice(shape, &doc);
        let only = |n: &str| Choice::Only {
            names: vec![n.into()],
            required: true,
        };
        assert_eq!(c(Shape::OpenAiChat, json!({})), Choice::Free);
        assert_eq!(
            c(Shape::OpenAiChat, json!({"tool_choice": "required"})),
            Choice::Any
        );
        assert_eq!(
            c(
                Shape::OpenAiChat,
                json!({"tool_choice": {"type": "function", "function": {"name": "x"}}})
            ),
            only("x")
        );
        assert_eq!(
            c(Shape::OpenAiChat, json!({"function_call": {"name": "x"}})),
            only("x")
        );
        assert_eq!(
            c(
                Shape::OpenAiChat,
                json!({"tool_choice": {"type": "allowed_tools", "allowed_tools": {
                "mode": "auto", "tools": [{"type": "function", "function": {"name": "a"}}]}}})
            ),
            Choice::Only {
                names: vec!["a".into()],
                required: false
            }
        );
        assert_eq!(
            c(
                Shape::OpenAiResponses,
                json!({"tool_choice": {"type": "function", "name": "x"}})
            ),
            only("x")
        );
        assert_eq!(
            c(
                Shape::OpenAiResponses,
                json!({"tool_choice": {"type": "computer_use_preview"}})
            ),
            only("computer")
        );
        assert_eq!(
            c(
                Shape::AnthropicMessages,
                json!({"tool_choice": {"type": "any"}})
            ),
            Choice::Any
        );
        assert_eq!(
            c(
                Shape::AnthropicMessages,
                json!({"tool_choice": {"type": "auto"}})
            ),
            Choice::Free
        );
    }

    #[test]
    fn calls_in_every_api() {
        let chat = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{\"command\":\"ls\"}"}},
                {"id": "c2", "type": "custom", "custom": {"name": "sql", "input": "DROP TABLE t"}}]}}]});
        let calls = tool_calls(Shape::OpenAiChat, &chat);
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].name.as_str(), &calls[0].arguments),
            ("shell", &json!({"command": "ls"}))
        );
        assert_eq!(calls[1].arguments, json!("DROP TABLE t"));

        let responses = json!({"output": [
            {"type": "message", "content": []},
            {"type": "function_call", "name": "f", "arguments": "{bad", "call_id": "c"},
            {"type": "local_shell_call", "action": {"type": "exec", "command": ["rm", "-rf", "/"]}},
            {"type": "computer_call", "action": {"type": "click", "x": 1, "y": 2}},
            {"type": "web_search_call", "status": "completed"}]});
        let calls = tool_calls(Shape::OpenAiResponses, &responses);
        let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["f", "local_shell", "computer"]);
        assert_eq!(calls[0].arguments, json!("{bad"));
        assert_eq!(calls[1].at, CallAt { outer: 2, inner: 0 });

        let anthropic = json!({"content": [{"type": "text", "text": "ok"},
            {"type": "tool_use", "id": "t", "name": "bash", "input": {"command": "ls"}}],
            "stop_reason": "tool_use"});
        let calls = tool_calls(Shape::AnthropicMessages, &anthropic);
        assert_eq!(calls[0].at, CallAt { outer: 0, inner: 1 });
        assert_eq!(calls[0].arguments, json!({"command": "ls"}));
    }

    #[test]
    fn refused_calls_leave_a_well_formed_answer() {
        let mut chat = json!({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]}}]});
        refuse_calls(
            Shape::OpenAiChat,
            &mut chat,
            &[(CallAt { outer: 0, inner: 0 }, "refused".into())],
        );
        assert_eq!(
            chat,
            json!({"choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "refused"}}]})
        );

        let mut two = json!({"choices": [{"finish_reason": "tool_calls", "message": {
            "content": "Let me", "tool_calls": [{"function": {"name": "a"}}, {"function": {"name": "b"}}]}}]});
        refuse_calls(
            Shape::OpenAiChat,
            &mut two,
            &[(CallAt { outer: 0, inner: 1 }, "no b".into())],
        );
        assert_eq!(two["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(two["choices"][0]["message"]["content"], "Let me\n\nno b");
        assert_eq!(
            two["choices"][0]["message"]["tool_calls"],
            json!([{"function": {"name": "a"}}])
        );

        let mut anthropic = json!({"content": [{"type": "tool_use", "name": "bash", "input": {}}],
            "stop_reason": "tool_use"});
        refuse_calls(
            Shape::AnthropicMessages,
            &mut anthropic,
            &[(CallAt { outer: 0, inner: 0 }, "no".into())],
        );
        assert_eq!(
            anthropic,
            json!({"content": [{"type": "text", "text": "no"}], "stop_reason": "end_turn"})
        );

        let mut responses = json!({"output": [{"type": "local_shell_call", "action": {}}]});
        refuse_calls(
            Shape::OpenAiResponses,
            &mut responses,
            &[(CallAt { outer: 0, inner: 0 }, "no".into())],
        );
        assert_eq!(responses["output"][0]["type"], "message");
        assert_eq!(responses["output"][0]["content"][0]["text"], "no");
    }
}
