//! The call gate of a streamed answer, on any bytes cut where the input
//! chooses (first byte: the API and the judge; then the cuts, see `cuts`;
//! then the stream):
//! - cut or whole, the client gets the same bytes;
//! - with a judge that refuses every call, no event the client receives
//!   carries a call in any shape its SDK reads (chat `tool_calls` and
//!   `function_call` deltas; Anthropic `tool_use` blocks and their JSON
//!   deltas, in a block or in `message_start`; Responses call items in any
//!   event, their argument events, and calls in a repeated response);
//! - with a judge that allows every call, the stream is what the rewriter
//!   sends without a gate, byte for byte (unless the gate stopped it, or a
//!   call was cut off by the stream's end, which is always withheld);
//! - a judge that leaves every call pending (an approval) and has the same
//!   verdicts given later, after each chunk or only once the stream ended:
//!   no call reaches the client when every call is refused, and, when none
//!   is, the client gets the same bytes as from a judge that decides at
//!   once. (With refusals the bytes may differ where a stream reuses a
//!   refused call's place for something else: the gate passes what follows
//!   a decided call unread while nothing is held.)
#![no_main]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use warden_engine::inspect::sse::Channel;
use warden_engine::inspect::sse::{
    CallJudge, SseParser, StreamApi, StreamBlock, StreamRewriter, StreamText, StreamedCall, Verdict,
};
use warden_engine::inspect::tools::responses_call;
use warden_engine_fuzz::{cuts, pieces};

const APIS: [StreamApi; 3] = [
    StreamApi::OpenAiChat,
    StreamApi::OpenAiResponses,
    StreamApi::Anthropic,
];

/// Passes text through, holding back nothing.
struct Same;

impl StreamText for Same {
    fn push(&mut self, _: &Channel, text: &str) -> Result<String, StreamBlock> {
        Ok(text.to_owned())
    }
    fn finish(&mut self, _: &Channel) -> Result<String, StreamBlock> {
        Ok(String::new())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Judging {
    AllowAll,
    RefuseAll,
    OddNames,
}

/// Refuses as its mode says (a call the stream cut off, always), and notes
/// whether it refused anything.
struct Judge(Judging, Rc<Cell<bool>>);

impl CallJudge for Judge {
    fn judge(&mut self, call: &StreamedCall<'_>) -> Verdict {
        let refuse = match self.0 {
            Judging::AllowAll => !call.complete,
            Judging::RefuseAll => true,
            Judging::OddNames => !call.complete || call.tool.len() % 2 == 1,
        };
        if refuse {
            self.1.set(true);
            Verdict::Refuse(format!("refused {}", call.tool.len()))
        } else {
            Verdict::Allow
        }
    }
}

/// Leaves every complete call pending and notes the verdict [`Judge`] would
/// give it, for the test to decide later.
struct Deferring(Judge, Rc<RefCell<Vec<(usize, Verdict)>>>);

impl CallJudge for Deferring {
    fn judge(&mut self, call: &StreamedCall<'_>) -> Verdict {
        let verdict = self.0.judge(call);
        if !call.complete {
            return verdict;
        }
        self.1.borrow_mut().push((call.id, verdict));
        Verdict::Pending
    }
}

/// As [`run`], every verdict given later: after each chunk (`eager`) or
/// once the stream ended. The client's bytes, and whether it was stopped.
fn run_deferred(api: StreamApi, judging: Judging, chunks: &[&[u8]], eager: bool) -> (Vec<u8>, bool) {
    let mut rewriter = StreamRewriter::new(api, Box::new(Same));
    let pending = Rc::new(RefCell::new(Vec::new()));
    let judge = Judge(judging, Rc::new(Cell::new(false)));
    rewriter = rewriter.judging_calls(Box::new(Deferring(judge, pending.clone())));
    let mut out = Vec::new();
    let decide = |rewriter: &mut StreamRewriter, out: &mut Vec<u8>| {
        let decided: Vec<(usize, Verdict)> = pending.borrow_mut().drain(..).collect();
        for (id, verdict) in decided {
            out.extend(rewriter.decide_call(id, verdict));
        }
    };
    for chunk in chunks {
        out.extend(rewriter.feed(chunk));
        if eager {
            decide(&mut rewriter, &mut out);
        }
    }
    out.extend(rewriter.finish());
    decide(&mut rewriter, &mut out);
    assert!(!rewriter.awaiting_calls(), "a call still waits after every verdict was given");
    (out, rewriter.blocked().is_some())
}

/// The client's bytes, whether the stream was stopped, whether a call was
/// refused.
fn run(api: StreamApi, judging: Option<Judging>, chunks: &[&[u8]]) -> (Vec<u8>, bool, bool) {
    let mut rewriter = StreamRewriter::new(api, Box::new(Same));
    let refused = Rc::new(Cell::new(false));
    if let Some(judging) = judging {
        rewriter = rewriter.judging_calls(Box::new(Judge(judging, refused.clone())));
    }
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(rewriter.feed(chunk));
    }
    out.extend(rewriter.finish());
    (out, rewriter.blocked().is_some(), refused.get())
}

/// A call the client's SDK would read in this event, if any.
fn carries_a_call(api: StreamApi, name: Option<&str>, body: &Value) -> Option<String> {
    let kind = body
        .get("type")
        .and_then(Value::as_str)
        .or(name)
        .unwrap_or_default();
    match api {
        StreamApi::OpenAiChat => {
            for choice in body.get("choices")?.as_array()? {
                let delta = choice.get("delta");
                // (Anything else under these keys is no call an SDK reads.)
                let listed = delta
                    .and_then(|d| d.get("tool_calls"))
                    .and_then(Value::as_array)
                    .is_some_and(|calls| calls.iter().any(Value::is_object));
                let legacy = delta
                    .and_then(|d| d.get("function_call"))
                    .is_some_and(Value::is_object);
                if listed || legacy {
                    return Some("a chat tool call delta".into());
                }
            }
            None
        }
        StreamApi::Anthropic => {
            let tool_use = |b: &Value| b.get("type").and_then(Value::as_str) == Some("tool_use");
            if body.get("content_block").is_some_and(tool_use) {
                return Some("a tool_use block".into());
            }
            if body.pointer("/delta/type").and_then(Value::as_str) == Some("input_json_delta") {
                return Some("an input_json_delta".into());
            }
            let content = body.pointer("/message/content").and_then(Value::as_array);
            if content.into_iter().flatten().any(tool_use) {
                return Some("a tool_use in message_start".into());
            }
            None
        }
        _ => {
            if body.get("item").and_then(responses_call).is_some() {
                return Some(format!("a call item in {kind}"));
            }
            // An event a client reads as a call's arguments, by its type or
            // its SSE name. (Other `*_call_arguments` events are the
            // provider's own tools, run on its side: an MCP server it calls.)
            let arguments = [
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.custom_tool_call_input.delta",
                "response.custom_tool_call_input.done",
            ];
            let named =
                |k: &str| body.get("type").and_then(Value::as_str) == Some(k) || name == Some(k);
            let carries = ["delta", "arguments", "input"]
                .iter()
                .any(|k| body.get(k).is_some());
            if carries && arguments.into_iter().any(named) {
                return Some(format!("a {kind} event"));
            }
            let output = body.pointer("/response/output").and_then(Value::as_array);
            if output
                .into_iter()
                .flatten()
                .any(|i| responses_call(i).is_some())
            {
                return Some(format!("a call in the response of {kind}"));
            }
            None
        }
    }
}

/// No event of `out` carries a call in a shape the client's SDK reads.
fn assert_no_call(api: StreamApi, out: &[u8]) {
    let mut parser = SseParser::new();
    let mut events = parser.feed(out).unwrap_or_default();
    events.extend(parser.finish().unwrap_or_default());
    for event in events {
        let Some(Ok(body)) = event.data.as_deref().map(serde_json::from_str::<Value>) else {
            continue;
        };
        if let Some(what) = carries_a_call(api, event.event.as_deref(), &body) {
            panic!(
                "{what} reached the client although every call is refused:\n{}",
                String::from_utf8_lossy(out)
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let api = APIS[(mode % 3) as usize];
    let judging = match (mode / 3) % 3 {
        0 => Judging::AllowAll,
        1 => Judging::RefuseAll,
        _ => Judging::OddNames,
    };
    let (offsets, stream) = cuts(rest, 16);
    let chunks = pieces(stream, &offsets);

    let (out, stopped, refused) = run(api, Some(judging), &[stream]);
    let (cut_out, cut_stopped, _) = run(api, Some(judging), &chunks);
    assert_eq!(
        stopped, cut_stopped,
        "a stop depends on the cuts {offsets:?}"
    );
    assert!(
        out == cut_out,
        "the gated stream depends on the cuts {offsets:?}:\nwhole: {}\n  cut: {}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&cut_out)
    );

    for eager in [true, false] {
        let (deferred, deferred_stopped) = run_deferred(api, judging, &chunks, eager);
        if judging == Judging::RefuseAll {
            assert_no_call(api, &deferred);
        }
        // Held longer, more may be held at once: a stop for size is allowed.
        if !stopped && !deferred_stopped && !refused {
            assert!(
                deferred == out,
                "verdicts given later (eager: {eager}) changed the stream:\nat once: {}\n  later: {}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&deferred)
            );
        }
    }

    match judging {
        Judging::RefuseAll => assert_no_call(api, &out),
        Judging::AllowAll if !stopped && !refused => {
            let (ungated, _, _) = run(api, None, &[stream]);
            assert!(
                ungated == out,
                "allowing every call changed the stream:\nungated: {}\n  gated: {}",
                String::from_utf8_lossy(&ungated),
                String::from_utf8_lossy(&out)
            );
        }
        _ => {}
    }
});
