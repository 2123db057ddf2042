//! Server-sent events: building an event stream's bytes, and sending them cut
//! into small body frames.
//!
//! A stream's events are written out whole first ([`SseWriter`]); the bytes
//! are then sent in frames of `chunk_size` bytes with `chunk_delay` between
//! them ([`response`]). The cuts ignore event boundaries and UTF-8 characters
//! on purpose, so that a consumer that assumes a frame holds whole events or
//! whole characters shows its bug.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde_json::Value;

/// Request header that overrides the frame size for one request.
pub const CHUNK_SIZE_HEADER: &str = "x-stand-in-chunk-size";
/// Request header that overrides the delay between frames (milliseconds).
pub const CHUNK_DELAY_HEADER: &str = "x-stand-in-chunk-delay-ms";

/// How a streamed response body is cut up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// Bytes per body frame, at least 1.
    pub chunk_size: usize,
    /// Pause between two frames.
    pub chunk_delay: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            chunk_size: 4,
            chunk_delay: Duration::from_millis(1),
        }
    }
}

impl StreamSettings {
    /// These settings with the per-request overrides in `headers` applied.
    ///
    /// # Errors
    /// The message to return when an override header is not a valid value.
    pub fn with_overrides(self, headers: &HeaderMap) -> Result<Self, String> {
        let mut settings = self;
        if let Some(value) = headers.get(CHUNK_SIZE_HEADER) {
            let text = value.to_str().map_err(|_| bad_header(CHUNK_SIZE_HEADER))?;
            settings.chunk_size = parse_chunk_size(text.trim())
                .map_err(|err| format!("{CHUNK_SIZE_HEADER}: {err}"))?;
        }
        if let Some(value) = headers.get(CHUNK_DELAY_HEADER) {
            let millis = value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| bad_header(CHUNK_DELAY_HEADER))?;
            settings.chunk_delay = Duration::from_millis(millis);
        }
        Ok(settings)
    }
}

fn bad_header(name: &str) -> String {
    format!("{name}: expected a whole number")
}

/// Parses a frame size: a whole number of bytes, at least 1.
///
/// # Errors
/// A message saying what is wrong with `text`.
pub fn parse_chunk_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("the chunk size must be at least 1 byte".to_owned()),
        Ok(size) => Ok(size),
        Err(_) => Err(format!("expected a whole number of bytes, got {text:?}")),
    }
}

/// Collects the events of one stream as text.
#[derive(Debug, Default)]
pub struct SseWriter {
    text: String,
}

impl SseWriter {
    /// An unnamed event, as OpenAI's chat and completions streams send them:
    /// `data: {json}`.
    pub fn data(&mut self, value: &Value) {
        self.text.push_str("data: ");
        self.text.push_str(&value.to_string());
        self.text.push_str("\n\n");
    }

    /// A named event, as the Responses API and Anthropic send them:
    /// `event: name` then `data: {json}`.
    pub fn event(&mut self, name: &str, value: &Value) {
        self.text.push_str("event: ");
        self.text.push_str(name);
        self.text.push('\n');
        self.data(value);
    }

    /// OpenAI's end-of-stream marker, `data: [DONE]`.
    pub fn done(&mut self) {
        self.text.push_str("data: [DONE]\n\n");
    }

    /// The 200 `text/event-stream` response sending these events, cut up as
    /// `settings` say.
    pub fn into_response(self, settings: StreamSettings) -> Response {
        response(Bytes::from(self.text), settings)
    }
}

/// A 200 `text/event-stream` response whose body is `bytes` sent in frames
/// of `settings.chunk_size` bytes, `settings.chunk_delay` apart.
pub fn response(bytes: Bytes, settings: StreamSettings) -> Response {
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames(bytes, settings)),
    )
        .into_response()
}

/// `bytes` as a stream of frames of at most `chunk_size` bytes, cut on byte
/// offsets only, with `chunk_delay` before every frame but the first.
pub(crate) fn frames(
    bytes: Bytes,
    settings: StreamSettings,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let size = settings.chunk_size.max(1);
    let delay = settings.chunk_delay;
    stream::unfold((bytes, 0_usize), move |(bytes, offset)| async move {
        if offset >= bytes.len() {
            return None;
        }
        if offset > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let end = offset.saturating_add(size).min(bytes.len());
        let frame = bytes.slice(offset..end);
        Some((Ok(frame), (bytes, end)))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use futures_util::StreamExt;
    use serde_json::json;

    #[test]
    fn writer_formats_both_event_kinds() {
        let mut writer = SseWriter::default();
        writer.event("ping", &json!({"type": "ping"}));
        writer.data(&json!({"a": 1}));
        writer.done();
        assert_eq!(
            writer.text,
            "event: ping\ndata: {\"type\":\"ping\"}\n\ndata: {\"a\":1}\n\ndata: [DONE]\n\n"
        );
    }

    #[tokio::test]
    async fn frames_cut_on_bytes_and_reassemble() {
        let text = "data: ✓✓✓ héllo\n\n";
        let settings = StreamSettings {
            chunk_size: 3,
            chunk_delay: Duration::ZERO,
        };
        let frames: Vec<Bytes> = frames(Bytes::from(text), settings)
            .map(|frame| frame.unwrap())
            .collect()
            .await;
        assert_eq!(frames.len(), text.len().div_ceil(3));
        assert!(frames
            .iter()
            .all(|frame| !frame.is_empty() && frame.len() <= 3));
        // Some frame must split a multi-byte character.
        assert!(frames
            .iter()
            .any(|frame| std::str::from_utf8(frame).is_err()));
        assert_eq!(frames.concat(), text.as_bytes());
    }

    #[test]
    fn overrides_apply_and_reject_bad_values() {
        let defaults = StreamSettings::default();
        let mut headers = HeaderMap::new();
        assert_eq!(defaults.with_overrides(&headers).unwrap(), defaults);

        headers.insert(CHUNK_SIZE_HEADER, HeaderValue::from_static("16"));
        headers.insert(CHUNK_DELAY_HEADER, HeaderValue::from_static("0"));
        let settings = defaults.with_overrides(&headers).unwrap();
        assert_eq!(settings.chunk_size, 16);
        assert_eq!(settings.chunk_delay, Duration::ZERO);

        headers.insert(CHUNK_SIZE_HEADER, HeaderValue::from_static("0"));
        assert!(defaults.with_overrides(&headers).is_err());
        headers.insert(CHUNK_SIZE_HEADER, HeaderValue::from_static("4"));
        headers.insert(CHUNK_DELAY_HEADER, HeaderValue::from_static("-1"));
        assert!(defaults.with_overrides(&headers).is_err());
    }
}
