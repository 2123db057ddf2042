//! A stand-in model provider for Warden's end-to-end tests and demo. It is
//! not part of the product: it answers on the real OpenAI and Anthropic paths
//! in their real wire formats (JSON and server-sent events), with replies that
//! are deterministic, and it records every request it receives so that tests
//! can see what the gateway forwarded.
//!
//! Layout:
//! - `lib.rs` (this file): the shared state ([`AppState`]), the router
//!   ([`app`]), the middleware that records and logs requests, the
//!   `/_warden/...` control endpoints, the 404 fallback, and [`serve`].
//! - `openai.rs`: `/v1/chat/completions`, `/v1/completions`,
//!   `/v1/embeddings`, `/v1/responses`, `/v1/models`, and OpenAI's error body.
//! - `anthropic.rs`: `/v1/messages` (and `/v1/messages/count_tokens`), and
//!   Anthropic's error body.
//! - `sse.rs`: writing event streams and sending them cut into small frames.
//! - `text.rs`: helpers shared by both providers (prompt text, reply choice,
//!   token counts, ids).
//! - `main.rs`: the command line, logging, and signal handling.
//! - `tests/api.rs`: the router's tests; `sdk_check.py`: a manual check that
//!   the official Python SDKs parse what the stand-in sends.
//!
//! Control endpoints (never recorded): `GET /_warden/health`,
//! `GET`/`DELETE /_warden/received`, `GET`/`POST`/`DELETE
//! /_warden/replies`, and `POST`/`DELETE /_warden/raw`: answers sent
//! verbatim (status, content type, body) to the next requests, whatever
//! they ask, so tests can send what a provider might (a `text/plain` page,
//! an event stream with refusals or thinking) to the gateway.

mod anthropic;
mod openai;
mod sse;
mod text;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures_util::stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use sse::{parse_chunk_size, StreamSettings, CHUNK_DELAY_HEADER, CHUNK_SIZE_HEADER};

/// The largest request body accepted (and recorded).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Paths under this prefix control the stand-in and are never recorded.
const CONTROL_PREFIX: &str = "/_warden/";

/// One request as the stand-in received it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordedRequest {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The path with its query string, if any.
    pub path: String,
    /// Header names lowercased; the values of a repeated header joined with
    /// `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body, decoded as UTF-8 with invalid bytes replaced.
    pub body: String,
}

impl RecordedRequest {
    fn new(parts: &Parts, body: &[u8]) -> Self {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        Self {
            method: parts.method.to_string(),
            path: path_and_query(&parts.uri),
            headers,
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }
}

fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

/// The state shared by all requests: stream settings, the queue of replies,
/// and the requests received so far. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    stream: StreamSettings,
    replies: Mutex<VecDeque<String>>,
    raw: Mutex<VecDeque<RawAnswer>>,
    /// How each held answer that is still being sent will end.
    held: Mutex<Vec<oneshot::Sender<Ending>>>,
    /// Held answers whose body is still open (the gateway has not closed it).
    open: Arc<AtomicUsize>,
    received: Mutex<Vec<RecordedRequest>>,
}

/// An answer sent as it is, instead of the endpoint's own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnswer {
    #[serde(default = "ok")]
    pub status: u16,
    pub content_type: String,
    pub body: String,
    /// Sends the body in pieces of this many bytes (a stream cut inside its
    /// events, as networks cut them), `chunk_delay_ms` apart.
    #[serde(default)]
    pub chunk_size: Option<usize>,
    #[serde(default)]
    pub chunk_delay_ms: u64,
    /// What follows the body.
    #[serde(default)]
    pub then: Then,
}

/// What a raw answer does after its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Then {
    /// The response ends.
    #[default]
    End,
    /// The response stays open until `POST /_warden/raw/open` ends it.
    Hold,
}

/// How the held answers end (the body of `POST /_warden/raw/open`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ending {
    /// Bytes sent before the end.
    #[serde(default)]
    pub more: String,
    /// Whether the connection is then cut (a reset mid-response) instead of
    /// the response ending cleanly.
    #[serde(default)]
    pub reset: bool,
}

fn ok() -> u16 {
    200
}

/// Counts a held answer as open for as long as its body lives: the server
/// drops the body when the gateway closes the connection.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(open))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The states of a held answer's body.
enum Held {
    Body(Bytes, oneshot::Receiver<Ending>, OpenGuard),
    Waiting(oneshot::Receiver<Ending>, OpenGuard),
    Ending(bool, OpenGuard),
    Done,
}

impl Held {
    async fn next(self) -> Option<(io::Result<Bytes>, Self)> {
        match self {
            Self::Body(body, ending, open) => Some((Ok(body), Self::Waiting(ending, open))),
            Self::Waiting(ending, open) => {
                // A dropped sender (the raw answers were cleared) cuts the
                // connection: nobody will end it otherwise.
                let ending = ending.await.unwrap_or(Ending {
                    more: String::new(),
                    reset: true,
                });
                if ending.more.is_empty() {
                    Self::end(ending.reset)
                } else {
                    Some((
                        Ok(Bytes::from(ending.more)),
                        Self::Ending(ending.reset, open),
                    ))
                }
            }
            Self::Ending(reset, _open) => Self::end(reset),
            Self::Done => None,
        }
    }

    /// The body's end: an error (the server then cuts the connection) or none.
    fn end(reset: bool) -> Option<(io::Result<Bytes>, Self)> {
        reset.then(|| {
            let cut = io::Error::new(io::ErrorKind::ConnectionReset, "reset by the test");
            (Err(cut), Self::Done)
        })
    }
}

/// Locks `mutex`, carrying on past a poisoned lock: the data is plain lists
/// that a panicking holder cannot leave half-updated.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AppState {
    /// Fresh state whose streams are cut as `stream` says unless a request
    /// overrides it.
    pub fn new(stream: StreamSettings) -> Self {
        Self {
            inner: Arc::new(Shared {
                stream,
                ..Shared::default()
            }),
        }
    }

    /// The default stream settings.
    pub fn stream_settings(&self) -> StreamSettings {
        self.inner.stream
    }

    /// The reply to a request whose last user text is `prompt`: the oldest
    /// queued reply if there is one, otherwise [`text::reply_from_prompt`].
    pub fn next_reply(&self, prompt: &str) -> String {
        lock(&self.inner.replies)
            .pop_front()
            .unwrap_or_else(|| text::reply_from_prompt(prompt))
    }

    /// Queues `replies` after those already queued.
    pub fn queue_replies(&self, replies: impl IntoIterator<Item = String>) {
        lock(&self.inner.replies).extend(replies);
    }

    /// The queued replies, oldest first.
    pub fn queued_replies(&self) -> Vec<String> {
        lock(&self.inner.replies).iter().cloned().collect()
    }

    /// Drops every queued reply.
    pub fn clear_replies(&self) {
        lock(&self.inner.replies).clear();
    }

    /// The requests received so far, oldest first.
    pub fn received(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.received).clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_received(&self) {
        lock(&self.inner.received).clear();
    }

    fn record(&self, request: RecordedRequest) {
        lock(&self.inner.received).push(request);
    }

    /// The response for a raw answer.
    fn raw_response(&self, raw: RawAnswer) -> Response {
        let status = StatusCode::from_u16(raw.status).unwrap_or(StatusCode::OK);
        let headers = [("content-type", raw.content_type)];
        match (raw.then, raw.chunk_size) {
            (Then::End, None) => (status, headers, raw.body).into_response(),
            (Then::End, Some(chunk_size)) => {
                let settings = StreamSettings {
                    chunk_size,
                    chunk_delay: std::time::Duration::from_millis(raw.chunk_delay_ms),
                };
                let body = Body::from_stream(sse::frames(Bytes::from(raw.body), settings));
                (status, headers, body).into_response()
            }
            (Then::Hold, _) => {
                let (tx, rx) = oneshot::channel();
                lock(&self.inner.held).push(tx);
                let open = OpenGuard::new(&self.inner.open);
                let held = Held::Body(Bytes::from(raw.body), rx, open);
                let body = Body::from_stream(stream::unfold(held, Held::next));
                (status, headers, body).into_response()
            }
        }
    }
}

/// The stand-in's router: both providers' endpoints, the control endpoints,
/// request recording and request logging.
pub fn app(state: AppState) -> Router {
    Router::new()
        // OpenAI.
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/responses", post(openai::responses))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{id}", get(openai::retrieve_model))
        // Anthropic.
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::token_count))
        // Control.
        .route("/_warden/health", get(health))
        .route(
            "/_warden/received",
            get(list_received).delete(clear_received),
        )
        .route(
            "/_warden/replies",
            get(list_replies).post(queue_replies).delete(clear_replies),
        )
        .route(
            "/_warden/raw",
            get(raw_status).post(queue_raw).delete(clear_raw),
        )
        .route("/_warden/raw/open", post(end_held))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_request,
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Serves [`app`] on `listener`, with `TCP_NODELAY` on every accepted socket
/// so that small stream frames leave at once, until `shutdown` completes.
///
/// # Errors
/// When serving fails.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = listener.tap_io(|socket| {
        if let Err(err) = socket.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Records every request outside `/_warden/`, body included, before it is
/// handled, so that requests that fail are recorded too.
async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.uri().path().starts_with(CONTROL_PREFIX) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => {
            state.record(RecordedRequest::new(&parts, &bytes));
            let raw = lock(&state.inner.raw).pop_front();
            if let Some(raw) = raw {
                return state.raw_response(raw);
            }
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(_) => {
            state.record(RecordedRequest::new(&parts, &[]));
            openai::ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The request body could not be read or exceeds {MAX_BODY_BYTES} bytes."),
            )
            .into_response()
        }
    }
}

/// Logs one line per request: method, path and status. Never bodies or
/// headers, which carry prompts and keys.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::info!(%method, %path, status = response.status().as_u16(), "request");
    response
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn list_received(State(state): State<AppState>) -> Json<Vec<RecordedRequest>> {
    Json(state.received())
}

async fn clear_received(State(state): State<AppState>) -> StatusCode {
    state.clear_received();
    StatusCode::NO_CONTENT
}

async fn list_replies(State(state): State<AppState>) -> Json<Vec<String>> {
    Json(state.queued_replies())
}

async fn queue_replies(State(state): State<AppState>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(replies) => {
            state.queue_replies(replies);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => {
            openai::ApiError::bad_request(format!("expected a JSON list of strings: {err}"))
                .into_response()
        }
    }
}

async fn queue_raw(State(state): State<AppState>, body: Bytes) -> Response {
    match serde_json::from_slice::<Vec<RawAnswer>>(&body) {
        Ok(answers) => {
            lock(&state.inner.raw).extend(answers);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => openai::ApiError::bad_request(format!(
            "expected a JSON list of {{status, content_type, body}}: {err}"
        ))
        .into_response(),
    }
}

async fn raw_status(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "queued": lock(&state.inner.raw).len(),
        "open": state.inner.open.load(Ordering::SeqCst),
    }))
}

/// Ends every held answer still being sent, as the body says; answers with
/// how many there were.
async fn end_held(State(state): State<AppState>, body: Bytes) -> Response {
    match serde_json::from_slice::<Ending>(&body) {
        Ok(ending) => {
            let held = std::mem::take(&mut *lock(&state.inner.held));
            let ended = held
                .into_iter()
                .filter_map(|tx| tx.send(ending.clone()).ok())
                .count();
            Json(json!({ "ended": ended })).into_response()
        }
        Err(err) => openai::ApiError::bad_request(format!(
            "expected {{\"more\": \"...\", \"reset\": true|false}}: {err}"
        ))
        .into_response(),
    }
}

async fn clear_raw(State(state): State<AppState>) -> StatusCode {
    lock(&state.inner.raw).clear();
    // Held answers nobody will end are cut (their senders are dropped).
    lock(&state.inner.held).clear();
    StatusCode::NO_CONTENT
}

async fn clear_replies(State(state): State<AppState>) -> StatusCode {
    state.clear_replies();
    StatusCode::NO_CONTENT
}

/// Unknown paths and methods: 404, in Anthropic's format on Anthropic's
/// paths and in OpenAI's everywhere else.
async fn not_found(method: Method, uri: Uri) -> Response {
    if uri.path().starts_with("/v1/messages") {
        anthropic::ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "Not Found")
            .into_response()
    } else {
        openai::ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Invalid URL ({method} {})", uri.path()),
        )
        .into_response()
    }
}
