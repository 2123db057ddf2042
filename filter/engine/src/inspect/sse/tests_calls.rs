//! The call gate on the recorded streams of every API that makes calls:
//! allowed calls byte for byte, refused ones replaced by a well-formed
//! ending, the same bytes wherever the stream is cut, text flowing while a
//! call is held, and nothing unjudged when a call is cut off, too large or
//! continued after its verdict.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{json, Value};

use super::tests::{events, Mask, ANTHROPIC, CHAT_TOOLS, MASK, RESPONSES};
use super::*;
use crate::testing::test;

/// What a judge was asked: tool, argument forms, complete.
type Asked = Rc<RefCell<Vec<(String, Vec<Value>, bool)>>>;

/// Refuses the tools it names, allows the rest, and notes every call.
#[derive(Clone, Default)]
struct Judge {
    refuse: Vec<&'static str>,
    asked: Asked,
}

impl Judge {
    fn refusing(tools: &[&'static str]) -> Self {
        Self {
            refuse: tools.to_vec(),
            ..Self::default()
        }
    }
}

impl CallJudge for Judge {
    fn judge(&mut self, call: &StreamedCall<'_>) -> Verdict {
        self.asked.borrow_mut().push((
            call.tool.to_owned(),
            call.arguments.to_vec(),
            call.complete,
        ));
        if self.refuse.contains(&call.tool) || !call.complete {
            Verdict::Refuse(format!("NOTE({})", call.tool))
        } else {
            Verdict::Allow
        }
    }
}

fn run<'a>(
    api: StreamApi,
    judge: Option<Judge>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut rewriter = StreamRewriter::new(api, Box::new(Mask::default()));
    if let Some(judge) = judge {
        rewriter = rewriter.judging_calls(Box::new(judge));
    }
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(rewriter.feed(chunk));
    }
    out.extend(rewriter.finish());
    out
}

fn whole(api: StreamApi, judge: Option<Judge>, stream: &str) -> String {
    String::from_utf8(run(api, judge, [stream.as_bytes()])).unwrap()
}

fn tool_streams() -> [(StreamApi, &'static str); 3] {
    [
        (StreamApi::OpenAiChat, CHAT_TOOLS),
        (StreamApi::OpenAiResponses, RESPONSES),
        (StreamApi::Anthropic, ANTHROPIC),
    ]
}

#[test]
fn allowed_calls_pass_byte_for_byte_and_are_judged_as_the_client_reads_them() {
    for (api, stream) in tool_streams() {
        let judge = Judge::default();
        let gated = whole(api, Some(judge.clone()), stream);
        assert_eq!(gated, whole(api, None, stream), "{api:?}");
        let asked = judge.asked.borrow().clone();
        let expected: Vec<(String, Vec<Value>, bool)> = match api {
            StreamApi::OpenAiChat => vec![
                ("remember".into(), vec![json!({"word": MASK})], true),
                // Cut JSON is judged as the text it is.
                ("lookup".into(), vec![json!("{\"q\":\"top se")], true),
            ],
            StreamApi::OpenAiResponses => {
                vec![("store".into(), vec![json!({"value": MASK})], true)]
            }
            _ => vec![("remember".into(), vec![json!({"word": MASK})], true)],
        };
        assert_eq!(asked, expected, "{api:?}");
    }
}

#[test]
fn a_refused_chat_call_becomes_content_and_the_choice_stops() {
    let out = whole(
        StreamApi::OpenAiChat,
        Some(Judge::refusing(&["remember", "lookup"])),
        CHAT_TOOLS,
    );
    assert!(!out.contains("word") && !out.contains("top se"), "{out}");
    let mut content = String::new();
    let mut finish = Vec::new();
    for (_, event) in events(out.as_bytes()) {
        for choice in event["choices"].as_array().into_iter().flatten() {
            assert!(choice["delta"].get("tool_calls").is_none(), "{choice}");
            content.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish.push(reason.to_owned());
            }
        }
    }
    assert_eq!(content, "\n\nNOTE(remember)\n\nNOTE(lookup)");
    assert_eq!(finish, ["stop"]);
    assert!(out.ends_with("data: [DONE]\n\n"));
}

/// Text the masking held back (a tail that could start a match) goes out
/// when the choice ends, after the call's events: a refused call's
/// sentence waits for the choice's end too, so it comes after the whole
/// text, never inside it (found by `make demo`: "Freeing disk \n\n[warden]
/// ... space."), and the held-back text is never released early.
#[test]
fn a_refused_calls_sentence_comes_after_text_held_back_before_it() {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "c", "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    // "se" could be the start of the masked word: held back.
    let stream = [
        chunk(
            json!({"role": "assistant", "content": "Freeing disk se"}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_0", "type": "function",
            "function": {"name": "bash", "arguments": "{\"command\": \"rm -rf /\"}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    for judge in [
        Some(Judge::refusing(&["bash"])),
        Some(Judge::default()),
        None,
    ] {
        let refusing = judge.as_ref().is_some_and(|j| !j.refuse.is_empty());
        let bytes = stream.as_bytes();
        let pieces: Vec<&[u8]> = bytes.chunks(7).collect();
        let out = String::from_utf8(run(StreamApi::OpenAiChat, judge, pieces)).unwrap();
        let mut content = String::new();
        for (_, event) in events(out.as_bytes()) {
            for choice in event["choices"].as_array().into_iter().flatten() {
                content.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            }
        }
        let expected = if refusing {
            "Freeing disk se\n\nNOTE(bash)"
        } else {
            "Freeing disk se"
        };
        assert_eq!(content, expected, "{out}");
    }
}

#[test]
fn chat_calls_after_a_refused_one_move_up() {
    let out = whole(
        StreamApi::OpenAiChat,
        Some(Judge::refusing(&["remember"])),
        CHAT_TOOLS,
    );
    let mut calls = Vec::new();
    let mut finish = Vec::new();
    for (_, event) in events(out.as_bytes()) {
        for choice in event["choices"].as_array().into_iter().flatten() {
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                calls.push((call["index"].clone(), call["id"].clone()));
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish.push(reason.to_owned());
            }
        }
    }
    // Its start, then the tail the masking held back, flushed at its end.
    assert_eq!(
        calls,
        [(json!(0), json!("call_Qx2")), (json!(0), Value::Null)]
    );
    assert_eq!(finish, ["tool_calls"]);
}

#[test]
fn a_refused_anthropic_call_becomes_a_text_block_and_the_turn_ends() {
    let out = whole(
        StreamApi::Anthropic,
        Some(Judge::refusing(&["remember"])),
        ANTHROPIC,
    );
    assert!(
        !out.contains("input_json_delta") && !out.contains("tool_use\""),
        "{out}"
    );
    let events = events(out.as_bytes());
    let block_1: Vec<&Value> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e["index"] == 1)
        .collect();
    assert_eq!(block_1.len(), 3, "{block_1:?}");
    assert_eq!(
        block_1[0]["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(
        block_1[1]["delta"],
        json!({"type": "text_delta", "text": "NOTE(remember)"})
    );
    assert_eq!(block_1[2]["type"], "content_block_stop");
    let stop: Vec<&Value> = events
        .iter()
        .filter_map(|(_, e)| e.pointer("/delta/stop_reason"))
        .collect();
    assert_eq!(stop, [&json!("end_turn")]);
    assert!(out.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
}

#[test]
fn a_refused_responses_call_becomes_a_message_item_and_numbers_stay_consecutive() {
    let out = whole(
        StreamApi::OpenAiResponses,
        Some(Judge::refusing(&["store"])),
        RESPONSES,
    );
    assert!(!out.contains("function_call"), "{out}");
    let events = events(out.as_bytes());
    let numbers: Vec<u64> = events
        .iter()
        .filter_map(|(_, e)| e["sequence_number"].as_u64())
        .collect();
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
    let item_1: Vec<&Value> = events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e["output_index"] == 1)
        .collect();
    assert_eq!(item_1.len(), 2, "{item_1:?}");
    for event in item_1 {
        assert_eq!(event["item"]["type"], "message");
        assert_eq!(event["item"]["content"][0]["text"], "NOTE(store)");
    }
    let completed = &events.last().unwrap().1;
    assert_eq!(completed["type"], "response.completed");
    assert_eq!(completed["response"]["output"][1]["type"], "message");
    assert_eq!(completed["response"]["output"][0]["type"], "message");
}

/// Fed whole, at every cut in two, and in 1- and 7-byte pieces: the same
/// bytes, whatever the judge decides.
fn assert_same_when_cut(api: StreamApi, stream: &str, refuse: &[&'static str]) {
    let bytes = stream.as_bytes();
    let judge = || Some(Judge::refusing(refuse));
    let whole = run(api, judge(), [bytes]);
    for cut in 0..=bytes.len() {
        let (a, b) = bytes.split_at(cut);
        assert!(
            run(api, judge(), [a, b]) == whole,
            "{api:?} {refuse:?}: cut at {cut}"
        );
    }
    assert_eq!(run(api, judge(), bytes.chunks(1)), whole, "{api:?}: bytes");
    assert_eq!(run(api, judge(), bytes.chunks(7)), whole, "{api:?}: 7s");
}

#[test]
fn every_cut_gives_the_same_bytes_chat() {
    for refuse in [&[][..], &["remember"], &["remember", "lookup"]] {
        assert_same_when_cut(StreamApi::OpenAiChat, CHAT_TOOLS, refuse);
    }
}

#[test]
fn every_cut_gives_the_same_bytes_responses() {
    for refuse in [&[][..], &["store"]] {
        assert_same_when_cut(StreamApi::OpenAiResponses, RESPONSES, refuse);
    }
}

#[test]
fn every_cut_gives_the_same_bytes_anthropic() {
    for refuse in [&[][..], &["remember"]] {
        assert_same_when_cut(StreamApi::Anthropic, ANTHROPIC, refuse);
    }
}

fn chunk(delta: Value, finish: Value) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "c", "object": "chat.completion.chunk", "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish}]})
    )
}

fn call_chunk(index: u64, name: Option<&str>, arguments: &str) -> String {
    let mut function = json!({"arguments": arguments});
    if let Some(name) = name {
        function["name"] = name.into();
    }
    chunk(
        json!({"tool_calls": [{"index": index, "function": function}]}),
        Value::Null,
    )
}

#[test]
fn text_flows_until_a_call_starts_and_the_call_waits_for_its_end() {
    let judge = Judge::default();
    let mut rewriter = StreamRewriter::new(StreamApi::OpenAiChat, Box::new(Mask::default()))
        .judging_calls(Box::new(judge.clone()));
    let text = chunk(json!({"content": "Let me look."}), Value::Null);
    assert_eq!(rewriter.feed(text.as_bytes()), text.as_bytes());
    assert!(rewriter
        .feed(call_chunk(0, Some("bash"), "{\"command\":").as_bytes())
        .is_empty());
    assert!(rewriter
        .feed(call_chunk(0, None, "\"ls\"}").as_bytes())
        .is_empty());
    assert!(judge.asked.borrow().is_empty());
    let end = chunk(json!({}), json!("tool_calls"));
    let released = String::from_utf8(rewriter.feed(end.as_bytes())).unwrap();
    assert_eq!(
        released,
        call_chunk(0, Some("bash"), "{\"command\":") + &call_chunk(0, None, "\"ls\"}") + &end
    );
    assert_eq!(
        judge.asked.borrow().clone(),
        [("bash".to_owned(), vec![json!({"command": "ls"})], true)]
    );
}

#[test]
fn a_call_cut_off_by_the_end_of_the_stream_is_withheld() {
    let judge = Judge::default();
    let stream = chunk(json!({"content": "ok"}), Value::Null)
        + &call_chunk(0, Some("bash"), "{\"command\": \"rm -");
    let out = whole(StreamApi::OpenAiChat, Some(judge.clone()), &stream);
    assert!(!out.contains("rm -"), "{out}");
    assert!(out.contains("NOTE(bash)"), "{out}");
    assert!(!judge.asked.borrow()[0].2);
}

#[test]
fn a_call_too_large_to_hold_ends_the_stream() {
    let big = "x".repeat(64 * 1024);
    let mut stream = call_chunk(0, Some("bash"), "{\"command\": \"");
    for _ in 0..(MAX_HELD / big.len() + 1) {
        stream.push_str(&call_chunk(0, None, &big));
    }
    let out = whole(StreamApi::OpenAiChat, Some(Judge::default()), &stream);
    assert!(!out.contains("xxxx"), "{} bytes", out.len());
    assert!(out.contains("warden.tool_call_uninspectable"), "{out}");
}

#[test]
fn a_fragment_after_its_call_was_judged_ends_the_stream() {
    let stream = call_chunk(0, Some("bash"), "{\"command\": \"ls\"}")
        + &call_chunk(1, Some("bash"), "{}")
        + &call_chunk(0, None, " ; rm -rf /");
    let out = whole(StreamApi::OpenAiChat, Some(Judge::default()), &stream);
    assert!(!out.contains("rm -rf"), "{out}");
    assert!(out.contains("warden.tool_call_uninspectable"), "{out}");
}

#[test]
fn a_call_spelt_with_escapes_is_still_judged() {
    let escaped = "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool\\u005fcalls\":[{\"index\":0,\"function\":{\"name\":\"bash\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n";
    let out = whole(
        StreamApi::OpenAiChat,
        Some(Judge::refusing(&["bash"])),
        escaped,
    );
    assert!(!out.contains("arguments"), "{out}");
    assert!(out.contains("NOTE(bash)"), "{out}");
}

#[test]
fn streams_without_calls_pass_untouched() {
    let stream = super::tests::CHAT;
    let judge = Judge::default();
    assert_eq!(
        whole(StreamApi::OpenAiChat, Some(judge.clone()), stream),
        whole(StreamApi::OpenAiChat, None, stream)
    );
    assert!(judge.asked.borrow().is_empty());
}

/// Leaves the tools it names pending, allows the rest.
struct Pending(&'static str);

impl CallJudge for Pending {
    fn judge(&mut self, call: &StreamedCall<'_>) -> Verdict {
        if call.tool == self.0 {
            Verdict::Pending
        } else {
            Verdict::Allow
        }
    }
}

#[test]
fn a_pending_call_holds_everything_after_it_until_it_is_decided() {
    let stream = chunk(json!({"content": "Two calls."}), Value::Null)
        + &call_chunk(0, Some("hold_me"), "{\"a\":")
        + &call_chunk(0, None, "1}")
        + &call_chunk(1, Some("fine"), "{}")
        + &chunk(json!({}), json!("tool_calls"))
        + "data: [DONE]\n\n";
    let ungated = whole(StreamApi::OpenAiChat, None, &stream);
    let run_until_end = |decide_early: Option<Verdict>, verdict: Verdict| {
        let mut rewriter = StreamRewriter::new(StreamApi::OpenAiChat, Box::new(Mask::default()))
            .judging_calls(Box::new(Pending("hold_me")));
        let (head, tail) = stream.split_at(stream.find("data: [DONE]").unwrap());
        let mut out = rewriter.feed(head.as_bytes());
        assert!(!String::from_utf8_lossy(&out).contains("hold_me"));
        assert!(
            !String::from_utf8_lossy(&out).contains("fine"),
            "held behind the pending call"
        );
        assert!(rewriter.awaiting_calls());
        if let Some(early) = decide_early {
            out.extend(rewriter.decide_call(0, early));
        }
        out.extend(rewriter.feed(tail.as_bytes()));
        out.extend(rewriter.finish());
        out.extend(rewriter.decide_call(0, verdict));
        assert!(!rewriter.awaiting_calls());
        String::from_utf8(out).unwrap()
    };
    // Allowed, late or early: the stream as if ungated.
    assert_eq!(run_until_end(None, Verdict::Allow), ungated);
    assert_eq!(
        run_until_end(Some(Verdict::Allow), Verdict::Refuse("x".into())),
        ungated,
        "a call keeps its first decision"
    );
    // Refused: the next call moves up to index 0, the sentence at the choice's end.
    let refused = run_until_end(None, Verdict::Refuse("NOTE(hold_me)".into()));
    assert_eq!(
        refused,
        run_until_end(
            Some(Verdict::Refuse("NOTE(hold_me)".into())),
            Verdict::Allow
        )
    );
    let mut calls = Vec::new();
    for (_, event) in events(refused.as_bytes()) {
        for choice in event["choices"].as_array().into_iter().flatten() {
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                calls.push((call["index"].clone(), call["function"]["name"].clone()));
            }
        }
    }
    assert_eq!(calls, [(json!(0), json!("fine"))]);
    assert!(
        refused.contains("NOTE(hold_me)") && refused.ends_with("data: [DONE]\n\n"),
        "{refused}"
    );
}

#[test]
fn a_final_copy_of_a_call_that_differs_from_the_judged_one_stops_the_stream() {
    // A custom tool's input streams as one thing; the final response (which
    // clients such as agent loops run calls from) repeats another.
    let item = |input: &str, status: &str| {
        json!({"id": "ct_1", "type": "custom_tool_call", "status": status, "call_id": "call_1",
               "name": "shell", "input": input})
    };
    let event = |n: u64, body: Value| {
        let kind = body["type"].as_str().unwrap().to_owned();
        let mut body = body;
        body["sequence_number"] = n.into();
        format!("event: {kind}\ndata: {body}\n\n")
    };
    let stream = |final_input: &str| {
        [
            event(0, json!({"type": "response.output_item.added", "output_index": 0, "item": item("", "in_progress")})),
            event(1, json!({"type": "response.custom_tool_call_input.delta", "output_index": 0, "item_id": "ct_1", "delta": "ls -la"})),
            event(2, json!({"type": "response.output_item.done", "output_index": 0, "item": item("ls -la", "completed")})),
            event(3, json!({"type": "response.completed", "response": {"id": "r", "status": "completed",
                "output": [item(final_input, "completed")]}})),
        ]
        .concat()
    };
    let out = whole(
        StreamApi::OpenAiResponses,
        Some(Judge::default()),
        &stream("rm -rf /"),
    );
    assert!(!out.contains("rm -rf"), "{out}");
    assert!(out.contains("a copy of a tool call differs"), "{out}");
    // A final copy that is the call judged passes untouched.
    let same = stream("ls -la");
    assert_eq!(
        whole(StreamApi::OpenAiResponses, Some(Judge::default()), &same),
        whole(StreamApi::OpenAiResponses, None, &same)
    );
}
