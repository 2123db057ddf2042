//! End-to-end tests of the stand-in's router: in process through
//! `tower::ServiceExt::oneshot` (reading the body frame by frame), and once
//! over a real socket to see the frames on the wire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use warden_stand_in_provider::{app, serve, AppState, StreamSettings};

/// A router whose streams use 4-byte frames and no delay.
fn router() -> Router {
    app(AppState::new(StreamSettings {
        chunk_size: 4,
        chunk_delay: Duration::ZERO,
    }))
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    frames: Vec<Bytes>,
}

impl Reply {
    fn bytes(&self) -> Vec<u8> {
        self.frames.concat()
    }

    fn text(&self) -> String {
        String::from_utf8(self.bytes()).expect("body is UTF-8 once reassembled")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes()).expect("body is JSON")
    }

    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(|value| value.to_str().unwrap())
            .unwrap_or_default()
    }
}

async fn call(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::from(body.to_owned())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push(data);
        }
    }
    Reply {
        status,
        headers,
        frames,
    }
}

async fn post_json(app: &Router, path: &str, body: &Value) -> Reply {
    call(
        app,
        "POST",
        path,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await
}

fn chat(text: &str) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

fn anthropic(text: &str) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
}

/// The events of an SSE body: `(event name, data)` pairs.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    assert!(text.ends_with("\n\n"), "stream ends mid-event: {text:?}");
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = Some(value.to_owned());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = Some(value.to_owned());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (name, data.expect("every event has data"))
        })
        .collect()
}

fn chat_content(reply: &Reply) -> String {
    reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn chat_completion_echoes_the_last_user_message() {
    let app = router();
    let request = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "an older question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [
                {"type": "text", "text": "what is"},
                {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
                {"type": "text", "text": "the answer?"}
            ]}
        ]
    });
    let reply = post_json(&app, "/v1/chat/completions", &request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.content_type().starts_with("application/json"));
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "what is the answer?");
    // 2 + 3 + 2 + 4 words in, 4 words out.
    assert_eq!(body["usage"]["prompt_tokens"], 11);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    assert_eq!(body["usage"]["total_tokens"], 15);
}

#[tokio::test]
async fn reply_with_returns_the_rest_verbatim() {
    let app = router();
    let reply = post_json(
        &app,
        "/v1/chat/completions",
        &chat("reply with:   The sky is GREEN."),
    )
    .await;
    assert_eq!(chat_content(&reply), "The sky is GREEN.");

    let reply = post_json(&app, "/v1/messages", &anthropic("reply with: from claude")).await;
    assert_eq!(reply.json()["content"][0]["text"], "from claude");
}

#[tokio::test]
async fn queued_replies_are_used_in_order_across_endpoints_then_echo() {
    let app = router();
    let queued = call(
        &app,
        "POST",
        "/_warden/replies",
        &[],
        r#"["first", "second", "third"]"#,
    )
    .await;
    assert_eq!(queued.status, StatusCode::NO_CONTENT);
    let pending = call(&app, "GET", "/_warden/replies", &[], "").await;
    assert_eq!(pending.json(), json!(["first", "second", "third"]));

    let reply = post_json(&app, "/v1/chat/completions", &chat("ignored")).await;
    assert_eq!(chat_content(&reply), "first");
    let reply = post_json(&app, "/v1/messages", &anthropic("ignored too")).await;
    assert_eq!(reply.json()["content"][0]["text"], "second");
    let reply = post_json(
        &app,
        "/v1/responses",
        &json!({"model": "gpt-4.1", "input": "also ignored"}),
    )
    .await;
    assert_eq!(reply.json()["output"][0]["content"][0]["text"], "third");

    // The queue is empty: back to echoing.
    let reply = post_json(&app, "/v1/chat/completions", &chat("echo now")).await;
    assert_eq!(chat_content(&reply), "echo now");

    // Clearing drops what is left.
    call(&app, "POST", "/_warden/replies", &[], r#"["never used"]"#).await;
    let cleared = call(&app, "DELETE", "/_warden/replies", &[], "").await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    let reply = post_json(&app, "/v1/chat/completions", &chat("echo again")).await;
    assert_eq!(chat_content(&reply), "echo again");

    let bad = call(
        &app,
        "POST",
        "/_warden/replies",
        &[],
        r#"{"not": "a list"}"#,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn invalid_requests_do_not_consume_queued_replies() {
    let app = router();
    call(&app, "POST", "/_warden/replies", &[], r#"["kept"]"#).await;
    let bad = post_json(&app, "/v1/chat/completions", &json!({"messages": []})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let reply = post_json(&app, "/v1/chat/completions", &chat("x")).await;
    assert_eq!(chat_content(&reply), "kept");
}

#[tokio::test]
async fn every_request_is_recorded_except_control_ones() {
    let app = router();
    post_json(&app, "/v1/chat/completions", &chat("hi")).await;
    call(
        &app,
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", "sk-ant-test"),
            ("x-multi", "one"),
            ("X-Multi", "two"),
        ],
        "not json \u{fffd}",
    )
    .await;
    call(
        &app,
        "GET",
        "/nowhere?a=1&b=two",
        &[("authorization", "Bearer sk-test")],
        "",
    )
    .await;
    call(&app, "GET", "/_warden/health", &[], "").await;

    let received = call(&app, "GET", "/_warden/received", &[], "").await;
    assert_eq!(received.status, StatusCode::OK);
    let received = received.json();
    let received = received.as_array().unwrap();
    assert_eq!(received.len(), 3, "{received:?}");

    assert_eq!(received[0]["method"], "POST");
    assert_eq!(received[0]["path"], "/v1/chat/completions");
    assert_eq!(received[0]["headers"]["content-type"], "application/json");
    let body: Value = serde_json::from_str(received[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, chat("hi"));

    assert_eq!(received[1]["path"], "/v1/messages");
    assert_eq!(received[1]["headers"]["x-api-key"], "sk-ant-test");
    assert_eq!(received[1]["headers"]["x-multi"], "one, two");
    assert_eq!(received[1]["body"], "not json \u{fffd}");

    assert_eq!(received[2]["method"], "GET");
    assert_eq!(received[2]["path"], "/nowhere?a=1&b=two");
    assert_eq!(received[2]["headers"]["authorization"], "Bearer sk-test");
    assert_eq!(received[2]["body"], "");

    let cleared = call(&app, "DELETE", "/_warden/received", &[], "").await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    let received = call(&app, "GET", "/_warden/received", &[], "").await;
    assert_eq!(received.json(), json!([]));
}

#[tokio::test]
async fn health_answers_ok() {
    let reply = call(&router(), "GET", "/_warden/health", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn chat_stream_reassembles_to_the_reply_and_ends_with_done() {
    let app = router();
    let mut request = chat("reply with: Streaming works, even for ünïcödé ✓.");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let reply = post_json(&app, "/v1/chat/completions", &request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "text/event-stream");

    let events = sse_events(&reply.text());
    assert!(events.iter().all(|(name, _)| name.is_none()));
    let (last, chunks) = events.split_last().unwrap();
    assert_eq!(last.1, "[DONE]");
    let chunks: Vec<Value> = chunks
        .iter()
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    assert!(chunks.iter().all(|chunk| chunk["id"] == id
        && chunk["object"] == "chat.completion.chunk"
        && chunk["model"] == "gpt-4o-mini"));

    let first = &chunks[0]["choices"][0];
    assert_eq!(first["delta"]["role"], "assistant");
    assert_eq!(first["delta"]["content"], "");

    let content: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Streaming works, even for ünïcödé ✓.");
    let content_chunks = chunks
        .iter()
        .filter(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|piece| !piece.is_empty())
        })
        .count();
    assert!(content_chunks >= 5, "only {content_chunks} content deltas");

    let finishes: Vec<&Value> = chunks
        .iter()
        .filter(|chunk| chunk["choices"][0]["finish_reason"] == "stop")
        .collect();
    assert_eq!(finishes.len(), 1);

    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    assert_eq!(usage["usage"]["prompt_tokens"], 8);
    assert_eq!(usage["usage"]["total_tokens"], 14);
}

#[tokio::test]
async fn chat_stream_without_include_usage_has_no_usage_chunk() {
    let app = router();
    let mut request = chat("short");
    request["stream"] = json!(true);
    let reply = post_json(&app, "/v1/chat/completions", &request).await;
    let events = sse_events(&reply.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn anthropic_message_has_the_real_shape() {
    let app = router();
    let request = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "system": [{"type": "text", "text": "you are terse"}],
        "messages": [
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [
                {"type": "text", "text": "hello"},
                {"type": "text", "text": "claude"}
            ]}
        ]
    });
    let reply = post_json(&app, "/v1/messages", &request).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "hello claude"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(body["usage"]["input_tokens"], 3 + 1 + 1 + 2);
    assert_eq!(body["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn anthropic_stream_sends_events_in_order() {
    let app = router();
    let mut request = anthropic("reply with: A streamed Claude answer.");
    request["stream"] = json!(true);
    let reply = post_json(&app, "/v1/messages", &request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "text/event-stream");

    let events = sse_events(&reply.text());
    let names: Vec<&str> = events
        .iter()
        .map(|(name, _)| name.as_deref().expect("every Anthropic event is named"))
        .collect();
    let deltas = names
        .iter()
        .filter(|name| **name == "content_block_delta")
        .count();
    assert!(deltas >= 3, "only {deltas} deltas");
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);

    let data: Vec<Value> = events
        .iter()
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    for (name, data) in names.iter().zip(&data) {
        assert_eq!(data["type"], *name);
    }
    let message = &data[0]["message"];
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["model"], "claude-sonnet-4-5");
    assert_eq!(message["content"], json!([]));
    let text: String = data
        .iter()
        .filter(|event| event["type"] == "content_block_delta")
        .map(|event| {
            assert_eq!(event["delta"]["type"], "text_delta");
            event["delta"]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "A streamed Claude answer.");
    let message_delta = &data[data.len() - 2];
    assert_eq!(message_delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(message_delta["usage"]["output_tokens"], 4);
}

#[tokio::test]
async fn responses_api_returns_output_text_and_usage() {
    let app = router();
    let request = json!({
        "model": "gpt-4.1",
        "instructions": "answer kindly",
        "input": [
            {"role": "user", "content": "ignored older"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "newest words"}]}
        ]
    });
    let reply = post_json(&app, "/v1/responses", &request).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("resp_"));
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["model"], "gpt-4.1");
    let item = &body["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["text"], "newest words");
    assert_eq!(body["usage"]["input_tokens"], 2 + 2 + 2);
    assert_eq!(body["usage"]["output_tokens"], 2);
    assert_eq!(body["usage"]["total_tokens"], 8);

    let reply = post_json(
        &app,
        "/v1/responses",
        &json!({"model": "gpt-4.1", "input": "plain string"}),
    )
    .await;
    assert_eq!(
        reply.json()["output"][0]["content"][0]["text"],
        "plain string"
    );
}

#[tokio::test]
async fn responses_stream_sends_openai_events() {
    let app = router();
    let request =
        json!({"model": "gpt-4.1", "input": "reply with: Responses stream here.", "stream": true});
    let reply = post_json(&app, "/v1/responses", &request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "text/event-stream");
    let events = sse_events(&reply.text());
    let names: Vec<&str> = events
        .iter()
        .map(|(name, _)| name.as_deref().unwrap())
        .collect();
    let deltas = names
        .iter()
        .filter(|name| **name == "response.output_text.delta")
        .count();
    assert!(deltas >= 3, "only {deltas} deltas");
    let mut expected = vec![
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names, expected);

    let data: Vec<Value> = events
        .iter()
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    for (index, (name, event)) in names.iter().zip(&data).enumerate() {
        assert_eq!(event["type"], *name);
        assert_eq!(event["sequence_number"], index);
    }
    let text: String = data
        .iter()
        .filter(|event| event["type"] == "response.output_text.delta")
        .map(|event| event["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Responses stream here.");
    let done = data
        .iter()
        .find(|event| event["type"] == "response.output_text.done")
        .unwrap();
    assert_eq!(done["text"], "Responses stream here.");
    let completed = &data.last().unwrap()["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        "Responses stream here."
    );
    assert_eq!(completed["usage"]["output_tokens"], 3);
    assert_eq!(data[0]["response"]["status"], "in_progress");
}

#[tokio::test]
async fn completions_echo_and_stream() {
    let app = router();
    let request = json!({"model": "gpt-3.5-turbo-instruct", "prompt": ["first prompt", "second"]});
    let reply = post_json(&app, "/v1/completions", &request).await;
    let body = reply.json();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "gpt-3.5-turbo-instruct");
    assert_eq!(body["choices"][0]["text"], "first prompt");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["completion_tokens"], 2);

    let request =
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "stream this text", "stream": true});
    let reply = post_json(&app, "/v1/completions", &request).await;
    let events = sse_events(&reply.text());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, data)| serde_json::from_str(data).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|chunk| chunk["object"] == "text_completion"));
    let text: String = chunks
        .iter()
        .map(|chunk| chunk["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "stream this text");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn embeddings_are_deterministic_and_follow_the_input() {
    let app = router();
    let one = post_json(
        &app,
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": "alpha"}),
    )
    .await;
    let one = one.json();
    assert_eq!(one["object"], "list");
    assert_eq!(one["model"], "text-embedding-3-small");
    assert_eq!(one["data"][0]["object"], "embedding");
    let alpha = one["data"][0]["embedding"].as_array().unwrap().clone();
    assert_eq!(alpha.len(), 8);

    let two = post_json(
        &app,
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": ["beta gamma", "alpha"]}),
    )
    .await
    .json();
    let data = two["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["index"], 0);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[1]["embedding"].as_array().unwrap(), &alpha);
    assert_ne!(data[0]["embedding"].as_array().unwrap(), &alpha);
    assert_eq!(two["usage"]["prompt_tokens"], 3);
    assert_eq!(two["usage"]["total_tokens"], 3);

    // What the Python SDK asks for by default: base64 of little-endian f32s.
    let encoded = post_json(
        &app,
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": "alpha", "encoding_format": "base64", "dimensions": 8}),
    )
    .await
    .json();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    let expected: Vec<f64> = alpha.iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(decoded.len(), 8);
    for (got, want) in decoded.iter().zip(&expected) {
        assert!((got - want).abs() < 1e-6, "{got} != {want}");
    }
}

#[tokio::test]
async fn models_are_listed_in_each_providers_format() {
    let app = router();
    let list = call(&app, "GET", "/v1/models", &[], "").await.json();
    assert_eq!(list["object"], "list");
    assert!(list["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|model| model["id"] == "gpt-4o-mini"));
    let one = call(&app, "GET", "/v1/models/my-model", &[], "")
        .await
        .json();
    assert_eq!(
        one,
        json!({"id": "my-model", "object": "model", "created": one["created"], "owned_by": "system"})
    );

    let list = call(
        &app,
        "GET",
        "/v1/models",
        &[("anthropic-version", "2023-06-01")],
        "",
    )
    .await
    .json();
    assert_eq!(list["has_more"], false);
    assert_eq!(list["data"][0]["type"], "model");
}

#[tokio::test]
async fn stream_is_cut_into_frames_of_at_most_chunk_size_bytes() {
    let app = router();
    let mut request = chat("reply with: Cut me into many tiny frames — ünïcödé too ✓");
    request["stream"] = json!(true);

    // The router's default: 4 bytes.
    let reply = post_json(&app, "/v1/chat/completions", &request).await;
    let total = reply.bytes().len();
    assert!(total > 400, "stream is only {total} bytes");
    assert_eq!(reply.frames.len(), total.div_ceil(4));
    assert!(reply
        .frames
        .iter()
        .all(|frame| !frame.is_empty() && frame.len() <= 4));
    // Byte cuts split multi-byte characters somewhere.
    assert!(reply
        .frames
        .iter()
        .any(|frame| std::str::from_utf8(frame).is_err()));
    assert!(reply.text().contains("data: [DONE]\n\n"));

    // A per-request override.
    let reply = call(
        &app,
        "POST",
        "/v1/chat/completions",
        &[
            ("x-stand-in-chunk-size", "11"),
            ("x-stand-in-chunk-delay-ms", "0"),
        ],
        &request.to_string(),
    )
    .await;
    let total = reply.bytes().len();
    assert_eq!(reply.frames.len(), total.div_ceil(11));
    assert!(reply.frames.iter().all(|frame| frame.len() <= 11));
    assert!(
        reply
            .frames
            .iter()
            .filter(|frame| frame.len() == 11)
            .count()
            > 10
    );

    // Non-streamed responses are not cut.
    let reply = post_json(&app, "/v1/chat/completions", &chat("whole")).await;
    assert_eq!(reply.frames.len(), 1);
}

#[tokio::test]
async fn bad_chunk_override_is_a_400() {
    let app = router();
    let mut request = anthropic("x");
    request["stream"] = json!(true);
    let reply = call(
        &app,
        "POST",
        "/v1/messages",
        &[("x-stand-in-chunk-size", "0")],
        &request.to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn openai_errors_use_openai_format() {
    let app = router();
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
    ] {
        let reply = call(&app, "POST", path, &[], "{not json").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        let body = reply.json();
        assert_eq!(body["error"]["type"], "invalid_request_error", "{path}");
        assert_eq!(body["error"]["param"], Value::Null);
        assert_eq!(body["error"]["code"], Value::Null);
        assert!(body["error"]["message"].as_str().unwrap().contains("JSON"));

        let reply = post_json(
            &app,
            path,
            &json!({"messages": [], "input": "x", "prompt": "x"}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            reply.json(),
            json!({"error": {
                "message": "you must provide a model parameter",
                "type": "invalid_request_error",
                "param": null,
                "code": null
            }})
        );
    }

    let reply = post_json(&app, "/v1/chat/completions", &json!({"model": "gpt-4o"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["param"], "messages");

    let reply = call(&app, "POST", "/v1/unknown/thing", &[], "{}").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.json(),
        json!({"error": {
            "message": "Invalid URL (POST /v1/unknown/thing)",
            "type": "invalid_request_error",
            "param": null,
            "code": null
        }})
    );
    let reply = call(&app, "GET", "/v1/chat/completions", &[], "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn anthropic_errors_use_anthropic_format() {
    let app = router();
    let reply = call(&app, "POST", "/v1/messages", &[], "{not json").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let body = reply.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].is_string());
    assert!(body.get("message").is_none());

    let reply = post_json(
        &app,
        "/v1/messages",
        &json!({"max_tokens": 5, "messages": []}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.json(),
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "model: Field required"}})
    );
}

/// Reads a whole HTTP/1.1 response (the server closes the connection) and
/// returns its head and the sizes and bytes of its chunked body.
fn parse_chunked(raw: &[u8]) -> (String, Vec<usize>, Vec<u8>) {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut rest = &raw[split + 4..];
    let mut sizes = Vec::new();
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        sizes.push(size);
        body.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n");
        rest = &rest[size + 2..];
    }
    (head, sizes, body)
}

#[tokio::test]
async fn frames_reach_the_wire_as_separate_chunks() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(StreamSettings {
        chunk_size: 5,
        chunk_delay: Duration::from_millis(1),
    });
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));

    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "stream": true,
        "messages": [{"role": "user", "content": "over the wire"}]
    })
    .to_string();
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         x-api-key: sk-wire\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();

    let (head, sizes, body) = parse_chunked(&raw);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream"));
    assert_eq!(sizes.len(), body.len().div_ceil(5));
    assert!(sizes.iter().all(|size| *size <= 5));
    let text = String::from_utf8(body).unwrap();
    assert!(text.starts_with("event: message_start\n"));
    assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after the shutdown signal")
        .unwrap()
        .unwrap();
}

/// Opens a request answered by a held raw answer and returns its body after
/// its first frame (the raw body) was read.
async fn open_held(app: &Router, first: &str) -> Body {
    let queued = post_json(
        app,
        "/_warden/raw",
        &json!([{"content_type": "text/event-stream", "body": first, "then": "hold"}]),
    )
    .await;
    assert_eq!(queued.status, StatusCode::NO_CONTENT);
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(chat("held").to_string()))
        .unwrap();
    let mut body = app.clone().oneshot(request).await.unwrap().into_body();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, first.as_bytes());
    body
}

async fn open_count(app: &Router) -> u64 {
    let status = call(app, "GET", "/_warden/raw", &[], "").await.json();
    status["open"].as_u64().unwrap()
}

#[tokio::test]
async fn a_held_answer_stays_open_until_ended_then_sends_more_and_ends_cleanly() {
    let app = router();
    let mut body = open_held(&app, "data: one\n\n").await;
    assert_eq!(open_count(&app).await, 1);
    // Nothing more comes until the test ends it.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), body.frame())
            .await
            .is_err()
    );

    let ended = post_json(&app, "/_warden/raw/open", &json!({"more": "data: two\n\n"})).await;
    assert_eq!(ended.json(), json!({"ended": 1}));
    let more = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(more, "data: two\n\n".as_bytes());
    assert!(body.frame().await.is_none(), "a clean end after the bytes");
    drop(body);
    assert_eq!(open_count(&app).await, 0);
}

#[tokio::test]
async fn a_held_answer_can_end_with_a_cut_connection() {
    let app = router();
    let mut body = open_held(&app, "data: {\"partial\": ").await;
    post_json(&app, "/_warden/raw/open", &json!({"reset": true})).await;
    let cut = body.frame().await.unwrap();
    assert!(cut.is_err(), "the body ends with an error, not a clean end");
}

#[tokio::test]
async fn a_held_answer_is_closed_when_its_reader_leaves() {
    let app = router();
    let body = open_held(&app, "data: one\n\n").await;
    assert_eq!(open_count(&app).await, 1);
    drop(body);
    assert_eq!(open_count(&app).await, 0);
    // Ending it afterwards reaches nobody.
    let ended = post_json(&app, "/_warden/raw/open", &json!({"reset": false})).await;
    assert_eq!(ended.json(), json!({"ended": 0}));
}
