//! Anthropic's Messages API: `POST /v1/messages` (JSON or its event stream),
//! `POST /v1/messages/count_tokens`, Anthropic's model objects and its error
//! body.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::sse::SseWriter;
use crate::text::{
    content_text, count_message_tokens, count_tokens, deltas, last_user_text, new_id,
};
use crate::AppState;

/// Content block types whose text counts.
const TEXT_BLOCKS: &[&str] = &["text"];

/// Models listed by `GET /v1/models` for Anthropic clients.
pub const MODELS: &[&str] = &[
    "claude-sonnet-4-5",
    "claude-opus-4-1",
    "claude-3-5-haiku-latest",
];

/// Anthropic's model object.
pub fn model(id: &str) -> Value {
    json!({
        "type": "model",
        "id": id,
        "display_name": id,
        "created_at": "2025-01-01T00:00:00Z"
    })
}

/// An error answered in Anthropic's format: `{"type": "error", "error":
/// {"type", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    /// An error with `status`, error type `kind` and `message`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"type": "error", "error": {"type": self.kind, "message": self.message}})),
        )
            .into_response()
    }
}

/// A Messages request: a JSON object with a `model` and a `messages` list.
struct MessagesRequest {
    body: Map<String, Value>,
    model: String,
}

impl MessagesRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let body = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(body)) => body,
            Ok(_) => {
                return Err(ApiError::invalid_request(
                    "Input should be a valid dictionary",
                ))
            }
            Err(err) => {
                return Err(ApiError::invalid_request(format!(
                    "The request body is not valid JSON: {err}"
                )))
            }
        };
        let model = match body.get("model").and_then(Value::as_str) {
            Some(model) if !model.is_empty() => model.to_owned(),
            _ => return Err(ApiError::invalid_request("model: Field required")),
        };
        if !body.get("messages").is_some_and(Value::is_array) {
            return Err(ApiError::invalid_request("messages: Field required"));
        }
        Ok(Self { body, model })
    }

    fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// Tokens in `system` (a string or text blocks) and every message.
    fn input_tokens(&self) -> u64 {
        count_tokens(&content_text(self.body.get("system"), TEXT_BLOCKS))
            + count_message_tokens(self.messages(), TEXT_BLOCKS)
    }
}

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = MessagesRequest::parse(&body)?;
    let stream = request.body.get("stream").and_then(Value::as_bool) == Some(true);
    let settings = if stream {
        let settings = state.stream_settings().with_overrides(&headers);
        Some(settings.map_err(ApiError::invalid_request)?)
    } else {
        None
    };
    let input_tokens = request.input_tokens();
    let reply = state.next_reply(&last_user_text(request.messages(), TEXT_BLOCKS));
    let output_tokens = count_tokens(&reply);
    let id = new_id("msg_01", 22);
    let model = request.model.as_str();
    let message = |content: Value, stop_reason: Value, output_tokens: u64| {
        json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": output_tokens,
                "service_tier": "standard"
            }
        })
    };

    let Some(settings) = settings else {
        return Ok(Json(message(
            json!([{"type": "text", "text": reply}]),
            json!("end_turn"),
            output_tokens,
        ))
        .into_response());
    };

    let mut events = SseWriter::default();
    let mut send = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        events.event(name, &data);
    };
    send(
        "message_start",
        json!({"message": message(json!([]), Value::Null, 1)}),
    );
    send(
        "content_block_start",
        json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    send("ping", json!({}));
    for piece in deltas(&reply) {
        send(
            "content_block_delta",
            json!({"index": 0, "delta": {"type": "text_delta", "text": piece}}),
        );
    }
    send("content_block_stop", json!({"index": 0}));
    send(
        "message_delta",
        json!({
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": output_tokens}
        }),
    );
    send("message_stop", json!({}));
    Ok(events.into_response(settings))
}

/// `POST /v1/messages/count_tokens`.
pub async fn token_count(body: Bytes) -> Result<Json<Value>, ApiError> {
    let request = MessagesRequest::parse(&body)?;
    Ok(Json(json!({"input_tokens": request.input_tokens()})))
}
