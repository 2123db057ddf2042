//! MCP through the gateway, on any bytes (first byte: which side):
//! - a client's message (even): read as the policy reads it, never a
//!   panic; a `tools/call` it accepts names the tool its body names, and
//!   routing headers that say otherwise are refused;
//! - a server's event stream (odd), cut where the input chooses: the
//!   client gets the same bytes cut or whole; every message it gets is one
//!   JSON document; the answer to the `tools/list` never lists a tool the
//!   policy denies (`mcp.fuzz.x*`); what the rules mask in the server's
//!   messages is gone from the client's.
#![no_main]

use std::rc::Rc;

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use warden_engine::headers::Headers;
use warden_engine::inspect::apply::Outcome;
use warden_engine::inspect::body::parse_strict;
use warden_engine::inspect::mask::{HashKey, Vault};
use warden_engine::inspect::sse::SseParser;
use warden_engine::mcp::{self, Answer, MessageStream};
use warden_engine::policy::{Direction, Policy};
use warden_engine_fuzz::{
    caller, check_masked_values_gone, cuts, pieces, policy_text, scanned_texts,
};

thread_local! {
    static POLICY: Rc<Policy> = Rc::new(
        Policy::from_bytes(
            policy_text("mask")
                .replace(
                    "groups: {all: {models: [\"*\"]}}",
                    "groups: {all: {models: [\"*\"], endpoints: [mcp], tools: {deny: [\"mcp.fuzz.x*\"]}}}",
                )
                .as_bytes(),
        )
        .expect("the fuzz policy compiles"),
    );
}

fn client_message(data: &[u8]) {
    let Ok(doc) = parse_strict(data) else {
        return;
    };
    let Ok(message) = mcp::read_message(&doc) else {
        return;
    };
    let Some((tool, arguments)) = &message.call else {
        return;
    };
    assert_eq!(doc.pointer("/params/name").and_then(Value::as_str), Some(tool.as_str()));
    POLICY.with(|p| mcp::judge_tool_call(p, &caller(), "fuzz", tool, arguments));
    let other = format!("{tool}x");
    let headers = vec![("mcp-name".to_string(), other.into_bytes())];
    assert!(mcp::check_routing_headers(Headers::new(&headers), &message).is_err());
}

fn run(chunks: &[&[u8]]) -> Vec<u8> {
    let policy = POLICY.with(Rc::clone);
    let identity = caller();
    let active = policy.active_rules(&identity, "fuzz", None, Direction::Response);
    let mut stream = MessageStream::new(Answer {
        policy,
        identity,
        server: "fuzz".into(),
        active,
        key: HashKey::new(b"fuzz-hash-key-0123456789".to_vec()),
        vault: Vault::default(),
        request_id: json!(1),
        outcome: Outcome::default(),
        entries: Vec::new(),
        blocked: None,
    });
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(stream.feed(chunk));
    }
    out.extend(stream.finish());
    out
}

fn server_stream(data: &[u8]) {
    let (offsets, stream) = cuts(data, 16);
    let whole = run(&[stream]);
    let cut = run(&pieces(stream, &offsets));
    assert!(
        whole == cut,
        "the stream depends on the cuts {offsets:?}:\nwhole: {}\n  cut: {}",
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&cut)
    );
    let mut texts_out = Vec::new();
    for data in event_data(&whole, true) {
        let message = parse_strict(data.as_bytes())
            .unwrap_or_else(|e| panic!("a message the client gets is not JSON ({e}): {data}"));
        texts_out.extend(scanned_texts(&message));
        if message.get("id") == Some(&json!(1)) {
            for tool in message
                .pointer("/result/tools")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
                assert!(!name.starts_with('x'), "a denied tool was listed: {data}");
            }
        }
    }
    // What the rules mask in the server's messages is gone from the client's.
    let policy = POLICY.with(Rc::clone);
    let rules = policy.active_rules(&caller(), "fuzz", None, Direction::Response);
    let texts_in: Vec<String> = event_data(stream, false)
        .iter()
        .filter_map(|d| parse_strict(d.as_bytes()).ok())
        .flat_map(|m| scanned_texts(&m))
        .collect();
    let mut values = Vec::new();
    for t in &texts_in {
        let (edits, _) = policy.scan(&rules, t);
        values.extend(edits.iter().filter_map(|e| t.get(e.start..e.end)).map(str::to_owned));
    }
    check_masked_values_gone(&texts_in, &texts_out, values.iter().map(String::as_str));
}

/// The data of each event of a stream (`strict`: the stream must parse).
fn event_data(stream: &[u8], strict: bool) -> Vec<String> {
    let mut parser = SseParser::new();
    let events = parser.feed(stream).and_then(|mut events| {
        events.extend(parser.finish()?);
        Ok(events)
    });
    let events = match events {
        Ok(events) => events,
        Err(e) if strict => panic!("the gateway's own stream does not parse: {e:?}"),
        Err(_) => return Vec::new(),
    };
    events
        .into_iter()
        .filter_map(|e| e.data.filter(|d| !d.is_empty()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&side, rest)) = data.split_first() else {
        return;
    };
    if side % 2 == 0 {
        client_message(rest);
    } else {
        server_stream(rest);
    }
});
