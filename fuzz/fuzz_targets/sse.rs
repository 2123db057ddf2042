//! The SSE parser and the stream rewriter, on any bytes cut where the input
//! chooses (first byte: the API and the parser's limits; then the cuts,
//! see `cuts`; then the stream):
//! - the parser yields the same events, and the same error, however the
//!   stream is cut; each event it yields reads back the same from its own
//!   wire form;
//! - the rewriter, masking with the fuzz policy, sends exactly the same
//!   bytes cut as whole (and stops the same way);
//! - with a transformer that replaces each piece of text it releases by a
//!   numbered marker (holding some back until its channel ends), every
//!   marker reaches the client, and none twice: nothing is emitted twice,
//!   nothing released is lost (the Responses API's done events repeat the
//!   text sent, by design, so there only its delta events count).
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use warden_engine::inspect::apply::MaskingStream;
use warden_engine::inspect::mask::{HashKey, Vault};
use warden_engine::inspect::sse::{
    Channel, SseError, SseEvent, SseParser, StreamApi, StreamBlock, StreamRewriter, StreamText,
};
use warden_engine::policy::Direction;
use warden_engine_fuzz::{active, cuts, masking_policy, pieces};

const APIS: [StreamApi; 4] = [
    StreamApi::OpenAiChat,
    StreamApi::OpenAiCompletions,
    StreamApi::OpenAiResponses,
    StreamApi::Anthropic,
];

fn parser(small: bool) -> SseParser {
    if small {
        SseParser::with_limits(200, 600)
    } else {
        SseParser::new()
    }
}

/// Events until the first error, and that error.
fn parse(chunks: &[&[u8]], small: bool) -> (Vec<SseEvent>, Option<SseError>) {
    let mut p = parser(small);
    let mut events = Vec::new();
    for c in chunks {
        match p.feed(c) {
            Ok(e) => events.extend(e),
            Err(e) => return (events, Some(e)),
        }
    }
    match p.finish() {
        Ok(e) => events.extend(e),
        Err(e) => return (events, Some(e)),
    }
    (events, p.error().cloned())
}

fn rewrite(
    api: StreamApi,
    small: bool,
    chunks: &[&[u8]],
    text: Box<dyn StreamText>,
) -> (Vec<u8>, Option<StreamBlock>) {
    let mut rw = StreamRewriter::with_parser(api, text, parser(small));
    let mut out = Vec::new();
    for c in chunks {
        out.extend(rw.feed(c));
    }
    out.extend(rw.finish());
    (out, rw.blocked().cloned())
}

fn masking() -> Box<dyn StreamText> {
    let policy = masking_policy();
    let rules = active(&policy, Direction::Response);
    Box::new(MaskingStream::new(
        policy,
        rules,
        Vault::default(),
        HashKey::new(b"fuzz-hash-key-0123456789".to_vec()),
    ))
}

/// Replaces each piece of text it releases with a fresh marker; holds a
/// piece of odd length back until the channel's next piece or its end.
struct Marker {
    issued: Rc<RefCell<Vec<String>>>,
    held: HashMap<Channel, bool>,
}

impl Marker {
    fn mark(&mut self) -> String {
        let mut issued = self.issued.borrow_mut();
        let m = format!("\u{E000}{}\u{E001}", issued.len());
        issued.push(m.clone());
        m
    }
}

impl StreamText for Marker {
    fn push(&mut self, channel: &Channel, text: &str) -> Result<String, StreamBlock> {
        if text.is_empty() {
            return Ok(String::new());
        }
        let held = self.held.entry(*channel).or_default();
        if text.len() % 2 == 1 && !*held {
            *held = true;
            return Ok(String::new());
        }
        *held = false;
        Ok(self.mark())
    }
    fn finish(&mut self, channel: &Channel) -> Result<String, StreamBlock> {
        if self.held.remove(channel).unwrap_or(false) {
            Ok(self.mark())
        } else {
            Ok(String::new())
        }
    }
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let api = APIS[(mode & 3) as usize];
    let small = mode & 4 != 0;
    let (offsets, stream) = cuts(rest, 16);
    let chunks = pieces(stream, &offsets);
    let whole: [&[u8]; 1] = [stream];

    // The parser: cut or whole, the same events and error.
    let (events, error) = parse(&whole, small);
    let (cut_events, cut_error) = parse(&chunks, small);
    assert_eq!(
        events, cut_events,
        "the parser's events depend on the cuts {offsets:?}"
    );
    assert_eq!(
        error, cut_error,
        "the parser's error depends on the cuts {offsets:?}"
    );
    if !small {
        let bytes_at_a_time: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            parse(&bytes_at_a_time, small).0,
            events,
            "one byte at a time"
        );
    }
    // Each event reads back the same from its wire form.
    for e in &events {
        let (again, err) = parse(&[&e.to_bytes()], false);
        assert!(err.is_none());
        assert_eq!(
            again,
            vec![e.clone()],
            "an event does not read back from {:?}",
            String::from_utf8_lossy(&e.to_bytes())
        );
    }

    // The rewriter with the masking engine: cut or whole, the same bytes.
    let (out, blocked) = rewrite(api, small, &whole, masking());
    let (cut_out, cut_blocked) = rewrite(api, small, &chunks, masking());
    assert_eq!(
        blocked, cut_blocked,
        "a block depends on the cuts {offsets:?}"
    );
    assert!(
        out == cut_out,
        "the rewritten stream depends on the cuts {offsets:?}:\nwhole: {}\n  cut: {}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&cut_out)
    );
    // What it sends is an event stream.
    let (_, err) = parse(&[&out], false);
    assert!(
        err.is_none(),
        "the rewritten stream does not parse: {err:?}"
    );

    // Every released piece of text reaches the client, once.
    if stream.windows(3).any(|w| w == "\u{E000}".as_bytes()) {
        return;
    }
    let issued = Rc::new(RefCell::new(Vec::new()));
    let marker = Box::new(Marker {
        issued: issued.clone(),
        held: HashMap::new(),
    });
    let (out, blocked) = rewrite(api, small, &chunks, marker);
    let text = String::from_utf8_lossy(&out);
    let (sent, _) = parse(&[&out], false);
    // Which events count: all but the Responses API's that repeat a text
    // (an event is what its `type` says, else its SSE event name).
    let deltas: String = sent
        .iter()
        .filter(|e| {
            let data: Option<Value> = e.data.as_deref().and_then(|d| serde_json::from_str(d).ok());
            let kind = data
                .as_ref()
                .and_then(|v| v.get("type"))
                .and_then(Value::as_str)
                .or(e.event.as_deref())
                .unwrap_or_default();
            api != StreamApi::OpenAiResponses || kind.ends_with(".delta")
        })
        .filter_map(|e| e.data.as_deref())
        .collect::<Vec<_>>()
        .join("\n");
    for m in issued.borrow().iter() {
        let n = count(&deltas, m);
        assert!(n <= 1, "{m:?} was sent {n} times:\n{text}");
        if blocked.is_none() {
            assert!(
                count(&text, m) >= 1,
                "{m:?} was released but never sent:\n{text}"
            );
        }
    }
});
