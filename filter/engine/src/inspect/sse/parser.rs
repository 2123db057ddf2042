//! The `text/event-stream` parser ([`SseParser`]) and the event it yields,
//! which re-serializes itself ([`SseEvent::to_bytes`]).
//!
//! The parser follows the WHATWG "event stream interpretation" rules with two
//! deliberate differences, both because it sits in a proxy that must forward
//! what it does not understand rather than interpret it for a browser:
//! - An event is yielded whenever any of `event`, `data`, `id` or `retry` was
//!   set, not only when it has data, and `id` is not carried over to later
//!   events: the proxy re-sends each event as it came.
//! - Comment lines (`: ping`) are yielded at once as events of their own, so
//!   keep-alives reach the client while the connection is idle.
//!
//! Bytes are buffered until a line is complete and only whole lines are
//! decoded, so a UTF-8 character cut between two chunks is never mangled;
//! bytes that are not UTF-8 become U+FFFD (the spec's "UTF-8 decode"), never a
//! panic. Memory is bounded: a line or an event over its limit is an error.

use thiserror::Error;

/// The default longest line, in bytes, without its line ending.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;
/// The default largest event, in bytes: all its lines with their endings.
pub const DEFAULT_MAX_EVENT: usize = 4 << 20;

/// One event of an event stream, or one comment line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (the event type); `None` means `message`.
    pub event: Option<String>,
    /// The `data:` lines joined with `"\n"`; `None` when there was no `data:`
    /// line (`Some("")` for a bare `data:`).
    pub data: Option<String>,
    /// The `id:` field.
    pub id: Option<String>,
    /// The `retry:` field (reconnection time, milliseconds).
    pub retry: Option<u64>,
    /// The text after the `:` of a comment line, space included, so that
    /// `: ping` is sent on as `: ping`. Comment events carry nothing else.
    pub comment: Option<String>,
}

impl SseEvent {
    /// An unnamed event carrying `data`, as OpenAI's chat stream sends them.
    pub fn data(data: impl Into<String>) -> Self {
        Self {
            data: Some(data.into()),
            ..Self::default()
        }
    }

    /// A named event carrying `data`, as Anthropic and the Responses API send
    /// them.
    pub fn named(event: impl Into<String>, data: impl Into<String>) -> Self {
        Self {
            event: Some(event.into()),
            data: Some(data.into()),
            ..Self::default()
        }
    }

    /// The event's wire form: comment lines, then `event:`, `id:`, `retry:`
    /// and one `data:` line per line of data, then the blank line that ends
    /// the event.
    ///
    /// A comment event also ends with a blank line: it dispatches nothing
    /// (it has no data), and makes every serialized event self-contained, so
    /// events can be concatenated in any order. Line breaks (CR, LF, CRLF)
    /// inside `data` or a comment become separate lines; inside `event` or
    /// `id`, where they would forge fields, they are dropped.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_text().into_bytes()
    }

    /// [`Self::to_bytes`], as text.
    pub fn to_text(&self) -> String {
        // Sized once: growing from empty reallocated several times per event.
        let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let mut out = String::with_capacity(
            len(&self.comment) + len(&self.event) + len(&self.id) + len(&self.data) + 48,
        );
        if let Some(comment) = &self.comment {
            for line in lines(comment) {
                out.push(':');
                out.push_str(line);
                out.push('\n');
            }
        }
        if let Some(event) = &self.event {
            push_field(&mut out, "event", &single_line(event));
        }
        if let Some(id) = &self.id {
            push_field(&mut out, "id", &single_line(id));
        }
        if let Some(retry) = self.retry {
            push_field(&mut out, "retry", &retry.to_string());
        }
        if let Some(data) = &self.data {
            for line in lines(data) {
                push_field(&mut out, "data", line);
            }
        }
        out.push('\n');
        out
    }
}

/// `name: value\n`, or `name:\n` for an empty value (no trailing space).
fn push_field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push(':');
    if !value.is_empty() {
        out.push(' ');
        out.push_str(value);
    }
    out.push('\n');
}

/// `text` cut at CRLF, CR or LF, the line endings an event stream knows.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\r', '\n']) {
            Some(at) => {
                // At an ASCII line ending: a boundary.
                let (line, tail) = current.split_at_checked(at)?;
                rest = Some(
                    tail.strip_prefix("\r\n")
                        .or_else(|| tail.get(1..))
                        .unwrap_or_default(),
                );
                Some(line)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// `text` without CR and LF.
fn single_line(text: &str) -> String {
    text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect()
}

/// Why a stream could not be parsed. The parser stops at the first error.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SseError {
    /// A line (without its ending) is longer than the limit.
    #[error("an event-stream line is longer than {limit} bytes")]
    LineTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// An event's lines add up to more than the limit.
    #[error("an event-stream event is larger than {limit} bytes")]
    EventTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}

/// An event with the text it was parsed from, so that the rewriter can send
/// an event it leaves alone exactly as it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Framed {
    pub event: SseEvent,
    /// The event's lines as decoded, each ending in `"\n"` (whatever ending
    /// it had: the same bytes however the stream was cut), then the blank
    /// line. For a comment, its [`SseEvent::to_bytes`].
    pub raw: String,
}

/// The fields of the event being read.
#[derive(Debug, Default)]
struct Pending {
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
    raw: String,
}

impl Pending {
    fn has_fields(&self) -> bool {
        self.event.is_some() || self.data.is_some() || self.id.is_some() || self.retry.is_some()
    }
}

/// A `feed(chunk)` / `finish()` parser of a `text/event-stream` body.
///
/// ```
/// use warden_engine::inspect::sse::SseParser;
/// let mut parser = SseParser::new();
/// assert!(parser.feed(b"data: hel").unwrap().is_empty());
/// let events = parser.feed(b"lo\r\n\r\n").unwrap();
/// assert_eq!(events[0].data.as_deref(), Some("hello"));
/// ```
#[derive(Debug)]
pub struct SseParser {
    max_line: usize,
    max_event: usize,
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// The last chunk ended with CR: an LF starting the next chunk belongs to
    /// the same line ending.
    pending_cr: bool,
    /// A line was read already (the byte order mark is only stripped from
    /// the first).
    started: bool,
    pending: Pending,
    error: Option<SseError>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

/// Lines longer than this do not keep their buffer's capacity after use, so
/// one large event does not pin memory for the rest of a long stream.
const KEEP_LINE_CAPACITY: usize = 64 * 1024;

impl SseParser {
    /// A parser with the default limits ([`DEFAULT_MAX_LINE`],
    /// [`DEFAULT_MAX_EVENT`]).
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_LINE, DEFAULT_MAX_EVENT)
    }

    /// A parser refusing lines longer than `max_line` bytes (line ending not
    /// counted) and events larger than `max_event` bytes.
    pub fn with_limits(max_line: usize, max_event: usize) -> Self {
        Self {
            max_line,
            max_event,
            line: Vec::new(),
            pending_cr: false,
            started: false,
            pending: Pending::default(),
            error: None,
        }
    }

    /// The events completed by `chunk`.
    ///
    /// # Errors
    /// A line or an event over its limit. When the same chunk completed
    /// events before the error, those are returned and the error comes from
    /// the next call (and [`Self::error`] reports it at once), so the events
    /// a stream yields do not depend on where it was cut. After an error,
    /// every call returns it.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.feed_framed(chunk)
            .map(|framed| framed.into_iter().map(|f| f.event).collect())
    }

    /// The end of the stream: an event still missing its blank line is
    /// yielded (as most SDK decoders do) rather than silently dropped, and
    /// the parser is ready for a new stream.
    ///
    /// # Errors
    /// As [`Self::feed`].
    pub fn finish(&mut self) -> Result<Vec<SseEvent>, SseError> {
        self.finish_framed()
            .map(|framed| framed.into_iter().map(|f| f.event).collect())
    }

    /// The error that stopped the parser, if any.
    pub fn error(&self) -> Option<&SseError> {
        self.error.as_ref()
    }

    /// [`Self::feed`], with each event's text.
    pub(crate) fn feed_framed(&mut self, chunk: &[u8]) -> Result<Vec<Framed>, SseError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        let mut out = Vec::new();
        if let Err(err) = self.read(chunk, &mut out) {
            self.fail(err.clone());
            if out.is_empty() {
                return Err(err);
            }
        }
        Ok(out)
    }

    /// [`Self::finish`], with each event's text.
    pub(crate) fn finish_framed(&mut self) -> Result<Vec<Framed>, SseError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        let mut out = Vec::new();
        // The end of the stream ends the last line and the last event.
        let line = std::mem::take(&mut self.line);
        let result = if line.is_empty() {
            Ok(())
        } else {
            self.line_done(&line, &mut out)
        }
        .and_then(|()| self.line_done(b"", &mut out));
        if let Err(err) = result {
            self.fail(err.clone());
            if out.is_empty() {
                return Err(err);
            }
            return Ok(out);
        }
        *self = Self::with_limits(self.max_line, self.max_event);
        Ok(out)
    }

    fn fail(&mut self, err: SseError) {
        self.error = Some(err);
        self.line = Vec::new();
        self.pending = Pending::default();
    }

    /// Splits `chunk` into lines, handing each complete one on.
    fn read(&mut self, chunk: &[u8], out: &mut Vec<Framed>) -> Result<(), SseError> {
        let mut rest = chunk;
        if self.pending_cr && !rest.is_empty() {
            self.pending_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(at) = rest.iter().position(|b| matches!(b, b'\n' | b'\r')) {
            let Some((head, tail)) = rest.split_at_checked(at) else {
                break;
            };
            self.grow_line(head)?;
            // `tail` starts with the line ending found above.
            rest = match tail.split_first() {
                Some((b'\r', after)) if after.is_empty() => {
                    self.pending_cr = true;
                    after
                }
                Some((b'\r', after)) => after.strip_prefix(b"\n").unwrap_or(after),
                Some((_, after)) => after,
                None => tail,
            };
            let mut line = std::mem::take(&mut self.line);
            let result = self.line_done(&line, out);
            line.clear();
            if line.capacity() <= KEEP_LINE_CAPACITY {
                self.line = line;
            }
            result?;
        }
        self.grow_line(rest)
    }

    fn grow_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len().saturating_add(bytes.len()) > self.max_line {
            return Err(SseError::LineTooLong {
                limit: self.max_line,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// One complete line (without its ending).
    fn line_done(&mut self, bytes: &[u8], out: &mut Vec<Framed>) -> Result<(), SseError> {
        let decoded = String::from_utf8_lossy(bytes);
        let mut line: &str = &decoded;
        if !self.started {
            self.started = true;
            line = line.strip_prefix('\u{feff}').unwrap_or(line);
        }
        if line.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            if pending.has_fields() {
                let mut raw = pending.raw;
                raw.push('\n');
                out.push(Framed {
                    event: SseEvent {
                        event: pending.event,
                        data: pending.data,
                        id: pending.id,
                        retry: pending.retry,
                        comment: None,
                    },
                    raw,
                });
            }
            return Ok(());
        }
        if let Some(comment) = line.strip_prefix(':') {
            let event = SseEvent {
                comment: Some(comment.to_owned()),
                ..SseEvent::default()
            };
            let raw = String::from_utf8_lossy(&event.to_bytes()).into_owned();
            out.push(Framed { event, raw });
            return Ok(());
        }
        // +2: this line's ending and the blank line still to come.
        if self.pending.raw.len().saturating_add(line.len() + 2) > self.max_event {
            return Err(SseError::EventTooLarge {
                limit: self.max_event,
            });
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        let pending = &mut self.pending;
        match field {
            "event" => pending.event = Some(value.to_owned()),
            "data" => match &mut pending.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => pending.data = Some(value.to_owned()),
            },
            // The spec ignores an id containing NUL.
            "id" if !value.contains('\0') => pending.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(retry) = value.parse() {
                    pending.retry = Some(retry);
                }
            }
            _ => {}
        }
        pending.raw.push_str(line);
        pending.raw.push('\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.feed(chunk).unwrap());
        }
        events.extend(parser.finish().unwrap());
        events
    }

    fn data(text: &str) -> SseEvent {
        SseEvent::data(text)
    }

    #[test]
    fn line_endings_lf_crlf_cr() {
        let stream = b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\r\n\n";
        assert_eq!(
            parse_all(&[stream]),
            vec![data("a"), data("b"), data("c"), data("d")]
        );
    }

    #[test]
    fn cr_at_chunk_end_then_lf_is_one_line_ending() {
        // Were the LF read as a second line ending, "a" would be dispatched
        // alone before "b".
        let events = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(events, vec![data("a\nb")]);
        // A CR alone at the end of a chunk still ends the line.
        let mut parser = SseParser::new();
        assert_eq!(parser.feed(b"data: x\r\r").unwrap(), vec![data("x")]);
        assert!(parser.feed(b"data: y\n\n").unwrap() == vec![data("y")]);
    }

    #[test]
    fn data_with_or_without_space_and_multi_line() {
        let events =
            parse_all(&[b"data:x\n\ndata:  two spaces\n\ndata\n\ndata: one\ndata:two\ndata\n\n"]);
        assert_eq!(
            events,
            vec![data("x"), data(" two spaces"), data(""), data("one\ntwo\n")]
        );
    }

    #[test]
    fn fields_event_id_retry_and_unknown() {
        let events = parse_all(&[
            b"event: delta\nid: 7\nretry: 1500\nfoo: bar\ndata: {}\n\nretry: 12x\nid: a\0b\ndata: y\n\nfoo: only\n\nid: 9\n\n",
        ]);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("delta".into()),
                    data: Some("{}".into()),
                    id: Some("7".into()),
                    retry: Some(1500),
                    comment: None
                },
                data("y"),
                SseEvent {
                    id: Some("9".into()),
                    ..SseEvent::default()
                },
            ]
        );
    }

    #[test]
    fn comments_are_events_of_their_own() {
        let mut parser = SseParser::new();
        // The comment is yielded before the blank line that follows it.
        let events = parser.feed(b": ping\n").unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].comment.as_deref(), Some(" ping"));
        assert_eq!(events[0].to_bytes(), b": ping\n\n");
        assert!(parser.feed(b"\n").unwrap().is_empty());
        let events = parser.feed(b"data: a\n:\ndata: b\n\n").unwrap();
        assert_eq!(events[0].comment.as_deref(), Some(""));
        assert_eq!(events[1], data("a\nb"));
    }

    #[test]
    fn utf8_split_across_chunks() {
        let stream = "data: ✓ héllo 🎉\n\n".as_bytes();
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&chunks), vec![data("✓ héllo 🎉")]);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_a_panic() {
        let events = parse_all(&[b"data: a\xff\xfeb\xe2\x9c\n\n"]);
        assert_eq!(events, vec![data("a\u{fffd}\u{fffd}b\u{fffd}")]);
    }

    #[test]
    fn byte_order_mark_is_stripped_once() {
        let events = parse_all(&["\u{feff}data: a\n\n\u{feff}data: b\n\n".as_bytes()]);
        // The second BOM starts a line whose field name is "\u{feff}data".
        assert_eq!(events, vec![data("a")]);
    }

    #[test]
    fn finish_yields_an_unterminated_event() {
        assert_eq!(
            parse_all(&[b"data: a\n\ndata: b"]),
            vec![data("a"), data("b")]
        );
        assert_eq!(parse_all(&[b"data: a\n"]), vec![data("a")]);
        assert_eq!(parse_all(&[b"data: a\r"]), vec![data("a")]);
        assert!(parse_all(&[b"\n\n: c"]).iter().all(|e| e.data.is_none()));
    }

    #[test]
    fn over_long_line_is_an_error() {
        let mut parser = SseParser::with_limits(8, 64);
        // Across chunks, with no line ending yet: the buffer stops growing.
        assert!(parser.feed(b"data: ").unwrap().is_empty());
        assert_eq!(parser.feed(b"abc"), Err(SseError::LineTooLong { limit: 8 }));
        assert_eq!(parser.error(), Some(&SseError::LineTooLong { limit: 8 }));
        assert!(parser.feed(b"\n\n").is_err());
        assert!(parser.finish().is_err());

        // Events completed before the error in the same chunk come first.
        let mut parser = SseParser::with_limits(8, 64);
        let events = parser.feed(b"data: a\n\ndata: 0123456789\n\n").unwrap();
        assert_eq!(events, vec![data("a")]);
        assert!(parser.error().is_some());
        assert_eq!(parser.finish(), Err(SseError::LineTooLong { limit: 8 }));

        // Exactly at the limit is fine.
        let mut parser = SseParser::with_limits(8, 64);
        assert_eq!(parser.feed(b"data: ab\n\n").unwrap(), vec![data("ab")]);
    }

    #[test]
    fn over_large_event_is_an_error() {
        let mut parser = SseParser::with_limits(16, 32);
        let err = parser.feed(b"data: 0123456789\ndata: 0123456789\ndata: x\n\n");
        assert_eq!(err, Err(SseError::EventTooLarge { limit: 32 }));
    }

    #[test]
    fn to_bytes_round_trips() {
        let events = vec![
            SseEvent::named("message_start", "{\"a\":1}"),
            data("line one\nline two\n"),
            data(""),
            SseEvent {
                event: Some(" spaced".into()),
                data: Some(" lead".into()),
                id: Some("42".into()),
                retry: Some(3000),
                comment: None,
            },
            SseEvent {
                comment: Some(" keep-alive".into()),
                ..SseEvent::default()
            },
        ];
        let bytes: Vec<u8> = events.iter().flat_map(SseEvent::to_bytes).collect();
        assert_eq!(parse_all(&[&bytes]), events);
        assert_eq!(
            SseEvent::named("x", "a\nb").to_bytes(),
            b"event: x\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn to_bytes_cannot_forge_fields() {
        let event = SseEvent {
            event: Some("a\ndata: forged".into()),
            data: Some("x\r\ny\rz".into()),
            ..SseEvent::default()
        };
        let parsed = parse_all(&[&event.to_bytes()]);
        assert_eq!(parsed[0].event.as_deref(), Some("adata: forged"));
        assert_eq!(parsed[0].data.as_deref(), Some("x\ny\nz"));
    }

    #[test]
    fn same_events_wherever_the_stream_is_cut() {
        let stream =
            "\u{feff}: hi\r\nevent: a\r\ndata: ✓1\r\ndata:2\r\n\r\ndata: é\r\r: x\ndata: end\n\n"
                .as_bytes();
        let whole = parse_all(&[stream]);
        assert_eq!(whole.len(), 5);
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(parse_all(&[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_all(&bytes), whole);
    }

    #[test]
    fn framed_text_is_the_same_wherever_cut() {
        let stream = b"event: a\r\ndata:x\r\n\r\ndata: y\r";
        let whole = {
            let mut parser = SseParser::new();
            let mut framed = parser.feed_framed(stream).unwrap();
            framed.extend(parser.finish_framed().unwrap());
            framed
        };
        assert_eq!(whole[0].raw, "event: a\ndata:x\n\n");
        assert_eq!(whole[1].raw, "data: y\n\n");
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            let mut parser = SseParser::new();
            let mut framed = parser.feed_framed(a).unwrap();
            framed.extend(parser.feed_framed(b).unwrap());
            framed.extend(parser.finish_framed().unwrap());
            assert_eq!(framed, whole, "cut at {cut}");
        }
    }
}
