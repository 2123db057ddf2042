//! OpenAI's endpoints: chat completions, (legacy) completions, embeddings,
//! the Responses API and models, with OpenAI's response, stream and error
//! shapes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::sse::{SseWriter, StreamSettings};
use crate::text::{count_message_tokens, count_tokens, deltas, last_user_text, new_id, unix_time};
use crate::AppState;

/// Part types whose text counts in chat messages.
const CHAT_PARTS: &[&str] = &["text"];
/// Part types whose text counts in Responses API input items.
const RESPONSES_PARTS: &[&str] = &["input_text", "output_text", "text"];
/// The length of an embedding unless the request asks for `dimensions`.
const DEFAULT_EMBEDDING_DIMENSIONS: usize = 8;
/// The longest embedding the stand-in makes.
const MAX_EMBEDDING_DIMENSIONS: usize = 4096;
/// The fingerprint OpenAI puts on chat completions.
const SYSTEM_FINGERPRINT: &str = "fp_warden_stand_in";
/// Models listed by `GET /v1/models`.
const MODELS: &[&str] = &[
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o4-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
];
/// The creation time given to every listed model.
const MODEL_CREATED: u64 = 1_715_367_049;

/// An error answered in OpenAI's format: `{"error": {"message", "type":
/// "invalid_request_error", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    /// An error with `status` and `message`, and a null `param` and `code`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// The 400 OpenAI answers when a required parameter is missing.
    fn missing_parameter(name: &str) -> Self {
        Self {
            param: Some(name.to_owned()),
            code: Some("missing_required_parameter"),
            ..Self::bad_request(format!("Missing required parameter: '{name}'."))
        }
    }

    fn with_param(self, param: &str) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..self
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({
                "error": {
                    "message": self.message,
                    "type": "invalid_request_error",
                    "param": self.param,
                    "code": self.code,
                }
            })),
        )
            .into_response()
    }
}

/// A request body that is a JSON object with a `model`.
struct ModelRequest {
    body: Map<String, Value>,
    model: String,
}

impl ModelRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
            return Err(ApiError::bad_request(
                "We could not parse the JSON body of your request. (HINT: This likely means you \
                 aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
                 but what was sent was not valid JSON.)",
            ));
        };
        let model = match body.get("model").and_then(Value::as_str) {
            Some(model) if !model.is_empty() => model.to_owned(),
            _ => return Err(ApiError::bad_request("you must provide a model parameter")),
        };
        Ok(Self { body, model })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.body.get(key)
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    /// Whether `stream_options.include_usage` is true.
    fn include_usage(&self) -> bool {
        self.get("stream_options")
            .and_then(|options| options.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// The stream settings if the request asks to stream, `None` if not.
    fn stream_settings(
        &self,
        state: &AppState,
        headers: &HeaderMap,
    ) -> Result<Option<StreamSettings>, ApiError> {
        if !self.flag("stream") {
            return Ok(None);
        }
        state
            .stream_settings()
            .with_overrides(headers)
            .map(Some)
            .map_err(ApiError::bad_request)
    }
}

fn chat_usage(prompt_tokens: u64, completion_tokens: u64) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0
        }
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = ModelRequest::parse(&body)?;
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return Err(ApiError::missing_parameter("messages"));
    };
    let stream = request.stream_settings(&state, &headers)?;
    let prompt_tokens = count_message_tokens(messages, CHAT_PARTS);
    let reply = state.next_reply(&last_user_text(messages, CHAT_PARTS));
    let usage = chat_usage(prompt_tokens, count_tokens(&reply));
    let id = new_id("chatcmpl-", 29);
    let created = unix_time();
    let model = request.model.as_str();

    let Some(settings) = stream else {
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply,
                    "refusal": null,
                    "annotations": []
                },
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT
        }))
        .into_response());
    };

    let include_usage = request.include_usage();
    let chunk = |choices: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let choice = |delta: Value, finish_reason: Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]);

    let mut events = SseWriter::default();
    events.data(&chunk(choice(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )));
    for piece in deltas(&reply) {
        events.data(&chunk(choice(json!({"content": piece}), Value::Null)));
    }
    events.data(&chunk(choice(json!({}), json!("stop"))));
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.data(&last);
    }
    events.done();
    Ok(events.into_response(settings))
}

/// The prompt of a legacy completion: a string, or the first of a list.
fn completion_prompt(prompt: &Value) -> String {
    match prompt {
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = ModelRequest::parse(&body)?;
    let Some(prompt) = request.get("prompt") else {
        return Err(ApiError::missing_parameter("prompt"));
    };
    let stream = request.stream_settings(&state, &headers)?;
    let prompt_tokens = match prompt {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(count_tokens)
            .sum(),
        other => count_tokens(&completion_prompt(other)),
    };
    let reply = state.next_reply(&completion_prompt(prompt));
    let completion_tokens = count_tokens(&reply);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    });
    let id = new_id("cmpl-", 29);
    let created = unix_time();
    let model = request.model.as_str();
    let completion = |choices: Value| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        })
    };
    let choice = |text: &str, finish_reason: Value| json!([{"text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason}]);

    let Some(settings) = stream else {
        let mut body = completion(choice(&reply, json!("stop")));
        body["usage"] = usage;
        return Ok(Json(body).into_response());
    };

    let mut events = SseWriter::default();
    for piece in deltas(&reply) {
        events.data(&completion(choice(&piece, Value::Null)));
    }
    events.data(&completion(choice("", json!("stop"))));
    if request.include_usage() {
        let mut last = completion(json!([]));
        last["usage"] = usage;
        events.data(&last);
    }
    events.done();
    Ok(events.into_response(settings))
}

/// The texts to embed: a string, a list of strings, a list of token ids, or
/// a list of lists of token ids (embedded by their JSON text).
fn embedding_inputs(input: &Value) -> Vec<String> {
    match input {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) if items.iter().all(Value::is_number) => vec![input.to_string()],
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect(),
        other => vec![other.to_string()],
    }
}

/// FNV-1a, 64 bits: a hash that stays the same across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A deterministic unit-length vector derived from `text`.
fn embedding_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut state = fnv1a(text.as_bytes());
    let mut next = || {
        // SplitMix64.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    #[allow(clippy::cast_precision_loss)]
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| (next() >> 11) as f64 / (1_u64 << 53) as f64 * 2.0 - 1.0)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    #[allow(clippy::cast_possible_truncation)]
    raw.iter()
        .map(|x| if norm > 0.0 { (x / norm) as f32 } else { 0.0 })
        .collect()
}

/// `POST /v1/embeddings`. Honours `dimensions` and `encoding_format`
/// (`float`, or `base64` of little-endian `f32`s, which the official Python
/// SDK asks for by default).
pub async fn embeddings(body: Bytes) -> Result<Response, ApiError> {
    let request = ModelRequest::parse(&body)?;
    let Some(input) = request.get("input") else {
        return Err(ApiError::missing_parameter("input"));
    };
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_EMBEDDING_DIMENSIONS,
        Some(value) => match value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=MAX_EMBEDDING_DIMENSIONS).contains(n))
        {
            Some(n) => n,
            None => {
                return Err(ApiError::bad_request(format!(
                    "dimensions must be a whole number from 1 to {MAX_EMBEDDING_DIMENSIONS}"
                ))
                .with_param("dimensions"))
            }
        },
    };
    let base64 = match request.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "'{other}' is not one of ['float', 'base64'] - 'encoding_format'"
            ))
            .with_param("encoding_format"))
        }
    };
    let inputs = embedding_inputs(input);
    let prompt_tokens: u64 = inputs.iter().map(|text| count_tokens(text)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = embedding_vector(text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    }))
    .into_response())
}

/// The Responses API's `input`: the last user message's text, and the token
/// count of all input text.
fn responses_input(input: Option<&Value>) -> (String, u64) {
    match input {
        Some(Value::String(text)) => (text.clone(), count_tokens(text)),
        Some(Value::Array(items)) => {
            let messages: Vec<Value> = items
                .iter()
                .filter(|item| {
                    matches!(
                        item.get("type").and_then(Value::as_str),
                        None | Some("message")
                    )
                })
                .cloned()
                .collect();
            (
                last_user_text(&messages, RESPONSES_PARTS),
                count_message_tokens(&messages, RESPONSES_PARTS),
            )
        }
        _ => (String::new(), 0),
    }
}

/// `POST /v1/responses`.
pub async fn responses(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = ModelRequest::parse(&body)?;
    let stream = request.stream_settings(&state, &headers)?;
    let instructions = request.get("instructions").cloned().unwrap_or(Value::Null);
    let (prompt, input_tokens) = responses_input(request.get("input"));
    let input_tokens = input_tokens + instructions.as_str().map_or(0, count_tokens);
    let reply = state.next_reply(&prompt);
    let output_tokens = count_tokens(&reply);
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens
    });
    let response_id = new_id("resp_", 48);
    let item_id = new_id("msg_", 48);
    let created_at = unix_time();

    let part = |text: &str| json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
    let item = |status: &str, content: Vec<Value>| {
        json!({
            "id": item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content
        })
    };
    let response = |status: &str, output: Vec<Value>, usage: Value| {
        json!({
            "id": response_id,
            "object": "response",
            "created_at": created_at,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": instructions,
            "max_output_tokens": request.get("max_output_tokens").cloned().unwrap_or(Value::Null),
            "model": request.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": request.get("previous_response_id").cloned().unwrap_or(Value::Null),
            "reasoning": {"effort": null, "summary": null},
            "service_tier": "default",
            "store": request.get("store").and_then(Value::as_bool).unwrap_or(true),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": request.get("metadata").cloned().unwrap_or_else(|| json!({}))
        })
    };
    let done_item = item("completed", vec![part(&reply)]);
    let completed = response("completed", vec![done_item.clone()], usage);

    let Some(settings) = stream else {
        return Ok(Json(completed).into_response());
    };

    let mut events = SseWriter::default();
    let mut sequence_number: u64 = 0;
    let mut send = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["sequence_number"] = json!(sequence_number);
        sequence_number += 1;
        events.event(name, &data);
    };
    let in_progress = response("in_progress", vec![], Value::Null);
    send("response.created", json!({"response": in_progress}));
    send("response.in_progress", json!({"response": in_progress}));
    send(
        "response.output_item.added",
        json!({"output_index": 0, "item": item("in_progress", vec![])}),
    );
    let position = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
    let at = |extra: Value| {
        let mut data = position.clone();
        if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        data
    };
    send("response.content_part.added", at(json!({"part": part("")})));
    for piece in deltas(&reply) {
        send(
            "response.output_text.delta",
            at(json!({"delta": piece, "logprobs": []})),
        );
    }
    send(
        "response.output_text.done",
        at(json!({"text": reply, "logprobs": []})),
    );
    send(
        "response.content_part.done",
        at(json!({"part": part(&reply)})),
    );
    send(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_item}),
    );
    send("response.completed", json!({"response": completed}));
    Ok(events.into_response(settings))
}

/// Whether a request comes from an Anthropic client, which sends
/// `anthropic-version` on every request.
fn is_anthropic(headers: &HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

fn openai_model(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": MODEL_CREATED, "owned_by": "system"})
}

/// `GET /v1/models`: OpenAI's list, or Anthropic's when the request carries
/// `anthropic-version` (both providers use this path).
pub async fn list_models(headers: HeaderMap) -> Json<Value> {
    if is_anthropic(&headers) {
        let data: Vec<Value> = crate::anthropic::MODELS
            .iter()
            .map(|id| crate::anthropic::model(id))
            .collect();
        return Json(json!({
            "data": data,
            "has_more": false,
            "first_id": crate::anthropic::MODELS.first(),
            "last_id": crate::anthropic::MODELS.last()
        }));
    }
    let data: Vec<Value> = MODELS.iter().map(|id| openai_model(id)).collect();
    Json(json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: any id is a model the stand-in serves.
pub async fn retrieve_model(headers: HeaderMap, Path(id): Path<String>) -> Json<Value> {
    if is_anthropic(&headers) {
        Json(crate::anthropic::model(&id))
    } else {
        Json(openai_model(&id))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding_vector("hello", 8);
        assert_eq!(a, embedding_vector("hello", 8));
        assert_ne!(a, embedding_vector("hello!", 8));
        assert_eq!(a.len(), 8);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert!(a.iter().any(|x| *x < 0.0) && a.iter().any(|x| *x > 0.0));
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn embedding_inputs_accepts_every_input_shape() {
        assert_eq!(embedding_inputs(&json!("x")), vec!["x"]);
        assert_eq!(embedding_inputs(&json!(["x", "y"])), vec!["x", "y"]);
        assert_eq!(embedding_inputs(&json!([1, 2])), vec!["[1,2]"]);
        assert_eq!(embedding_inputs(&json!([[1], [2]])), vec!["[1]", "[2]"]);
    }

    #[test]
    fn responses_input_takes_last_user_message() {
        let input = json!([
            {"role": "user", "content": "first question"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "an answer"}]},
            {"type": "function_call_output", "call_id": "c", "output": "ignored words here"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "second"},
                {"type": "input_image", "image_url": "x"},
                {"type": "input_text", "text": "question"}
            ]}
        ]);
        let (prompt, tokens) = responses_input(Some(&input));
        assert_eq!(prompt, "second question");
        assert_eq!(tokens, 2 + 2 + 2);
    }
}
