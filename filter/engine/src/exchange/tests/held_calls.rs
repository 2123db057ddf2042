//! A model's tool call that a rule holds for an approval, in a whole
//! answer: the answer waits (Envoy holds it) while the control plane
//! decides, then goes out with the call let through (approved) or replaced
//! by a sentence that says why not (denied, pending ticket, unreachable
//! control plane); a client that leaves meanwhile gets nothing.

use super::*;
use crate::testing::test;

const TOOL_POLICY: &str = r#"
version: 1
groups: {engineering: {models: ["gpt-4o*"]}}
approval: {approvers: [security]}
rules:
  - {name: pii, detect: email, action: mask}
  - {name: prod-sql, tools: [run_sql], argument: query, keywords: [production], action: require_approval}
  - name: prod-ticket
    tools: [deploy]
    action: require_approval
    approval: {mode: ticket}
  - {name: destructive, tools: [bash], argument: command, regex: 'rm\s+-rf', action: block}
"#;

fn tool_policy() -> Rc<Policy> {
    Rc::new(Policy::from_bytes(format!("{TOOL_POLICY}record: masked\n").as_bytes()).unwrap())
}

fn call(name: &str, arguments: serde_json::Value) -> serde_json::Value {
    json!({"id": format!("call_{name}"), "type": "function",
           "function": {"name": name, "arguments": arguments.to_string()}})
}

fn answer(calls: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": null, "tool_calls": calls},
        "finish_reason": "tool_calls"}]})
}

/// The request forwarded and the answer read to its end; the flow the
/// answer's last chunk got.
fn answered(config: &Rc<FilterConfig>, body: &serde_json::Value) -> (FakeHost, Exchange, Flow) {
    let policy = tool_policy();
    let mut host = FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat("clean up"));
    host.response_headers = vec![("content-type".into(), "application/json".into())];
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, config, &policy), Flow::Continue);
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Pause);
    let bytes = body.to_string().into_bytes();
    let size = bytes.len();
    host.response_chunk = Ok(bytes);
    let flow = ex.on_response_body(&mut host, size, true);
    (host, ex, flow)
}

/// Answers the call in flight.
fn answer_call(host: &mut FakeHost, ex: &mut Exchange, status: u32, body: serde_json::Value) {
    let call = host.next_call;
    host.call_answers
        .insert(call, (Some(status), body.to_string().into_bytes()));
    ex.on_call_response(host, call, 0);
}

fn sent(host: &FakeHost) -> serde_json::Value {
    serde_json::from_slice(host.response_body_out.last().expect("the answer went out")).unwrap()
}

const PROD: &str = "delete from production.users where email = 'jane@example.com'";

#[test]
fn a_held_call_waits_for_the_approver_and_goes_out_as_the_model_wrote_it() {
    let config = config(true);
    let body = answer(vec![
        call("run_sql", json!({"query": PROD})),
        call("list", json!({})),
    ]);
    let (mut host, mut ex, flow) = answered(&config, &body);
    assert_eq!(flow, Flow::Pause, "the answer is held");
    assert!(host.response_body_out.is_empty());
    let (path, ask) = &host.dispatched[0];
    assert_eq!(path, "/v1/approvals");
    let ask: serde_json::Value = serde_json::from_slice(ask.as_ref().unwrap()).unwrap();
    assert_eq!(ask["rule"], "prod-sql");
    let shown = ask["masked_prompt"].as_str().unwrap();
    assert!(
        shown.starts_with("run_sql ") && shown.contains("production.users"),
        "{shown}"
    );
    assert!(
        !shown.contains("jane@example.com"),
        "approvers see the call masked: {shown}"
    );

    answer_call(
        &mut host,
        &mut ex,
        201,
        json!({"id": "apr_7", "status": "pending", "consumed": false}),
    );
    assert!(host.dispatched[1].0.starts_with("/v1/approvals/apr_7/wait"));
    answer_call(
        &mut host,
        &mut ex,
        200,
        json!({"id": "apr_7", "status": "approved", "consumed": false}),
    );
    assert!(host.dispatched[2].0.ends_with("/consume"));
    assert_eq!(host.responses_resumed, 0);
    answer_call(
        &mut host,
        &mut ex,
        200,
        json!({"id": "apr_7", "status": "consumed", "consumed": true}),
    );
    assert_eq!(host.responses_resumed, 1);
    let out = sent(&host);
    let calls = out["choices"][0]["message"]["tool_calls"]
        .as_array()
        .unwrap();
    assert_eq!(calls.len(), 2);
    let arguments: serde_json::Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        arguments["query"],
        PROD.replace("jane@example.com", "[EMAIL]")
    );
    assert_eq!(ex.decision(), Decision::Approved);
    assert_eq!(host.state(state::APPROVAL_ID), "apr_7");
    assert_eq!(
        host.state(state::TOOLS),
        "run_sql:approved:prod-sql,list:allowed"
    );
    let content_length = host
        .response_header_edits
        .iter()
        .rfind(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(
        content_length,
        host.response_body_out
            .last()
            .unwrap()
            .len()
            .to_string()
            .into_bytes()
    );
    ex.finish(&mut host);
    assert_eq!(host.counters.get("warden.approvals.approved"), Some(&1));
    assert_eq!(host.counters.get("warden.tools.approved"), Some(&1));
}

#[test]
fn a_denied_or_unanswered_held_call_is_replaced_and_the_rest_of_the_answer_kept() {
    let config = config(true);
    let body = answer(vec![
        call("bash", json!({"command": "rm -rf /srv"})),
        call("run_sql", json!({"query": PROD})),
        call("list", json!({})),
    ]);
    let (mut host, mut ex, flow) = answered(&config, &body);
    assert_eq!(flow, Flow::Pause);
    answer_call(
        &mut host,
        &mut ex,
        201,
        json!({"id": "apr_8", "status": "denied", "consumed": false,
        "decided_by": "bob", "reason": "not on a Friday"}),
    );
    assert_eq!(host.responses_resumed, 1);
    let out = sent(&host);
    let message = &out["choices"][0]["message"];
    assert_eq!(message["tool_calls"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "list");
    let text = message["content"].as_str().unwrap();
    assert!(
        text.contains("'bash'") && text.contains("'destructive'"),
        "{text}"
    );
    assert!(
        text.contains("'run_sql'") && text.contains("denied by bob: not on a Friday"),
        "{text}"
    );
    assert!(!out.to_string().contains("production.users") && !out.to_string().contains("rm -rf"));
    assert_eq!(ex.decision(), Decision::Masked);
    assert_eq!(
        host.state(state::TOOLS),
        "bash:refused:destructive,run_sql:refused:prod-sql,list:allowed"
    );
    let record: serde_json::Value = serde_json::from_slice(&ex.finish(&mut host).unwrap()).unwrap();
    assert!(
        !record.to_string().contains("production.users"),
        "the record is what the client got"
    );
    assert_eq!(
        record["tools"],
        "bash:refused:destructive,run_sql:refused:prod-sql,list:allowed"
    );
    assert!(record.get("mcp_method").is_none());

    // The control plane does not answer: withheld, saying so.
    let body = answer(vec![call("run_sql", json!({"query": PROD}))]);
    let (mut host, mut ex, _) = answered(&config, &body);
    let call_token = host.next_call;
    ex.on_call_response(&mut host, call_token, 0);
    let out = sent(&host);
    let text = out["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        text.contains("cannot reach its control plane") && text.contains("withheld"),
        "{text}"
    );
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(host.responses_resumed, 1);
}

#[test]
fn a_ticket_call_is_replaced_by_its_pending_approval_and_passes_once_approved() {
    let config = config(true);
    let body = answer(vec![call("deploy", json!({"service": "billing"}))]);
    let (mut host, mut ex, _) = answered(&config, &body);
    answer_call(
        &mut host,
        &mut ex,
        201,
        json!({"id": "apr_9", "status": "pending", "consumed": false}),
    );
    let out = sent(&host);
    let text = out["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        text.contains("apr_9") && text.contains("the same call passes once"),
        "{text}"
    );
    assert_eq!(host.dispatched.len(), 1, "a ticket does not wait");

    // The same call in a later answer: the approval found approved is used.
    let (mut again, mut ex2, _) = answered(&config, &body);
    let (_, first) = &host.dispatched[0];
    let (_, second) = &again.dispatched[0];
    let binding = |b: &Option<Vec<u8>>| {
        serde_json::from_slice::<serde_json::Value>(b.as_ref().unwrap()).unwrap()["body_sha256"]
            .clone()
    };
    assert_eq!(
        binding(first),
        binding(second),
        "bound to the call, not the answer"
    );
    answer_call(
        &mut again,
        &mut ex2,
        200,
        json!({"id": "apr_9", "status": "consumed", "consumed": true}),
    );
    let out = sent(&again);
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "deploy"
    );
    assert_eq!(ex2.decision(), Decision::Approved);

    // Another call is another approval.
    let other = answer(vec![call("deploy", json!({"service": "search"}))]);
    let (third, _, _) = answered(&config, &other);
    assert_ne!(binding(first), binding(&third.dispatched[0].1));
}

#[test]
fn a_client_that_leaves_while_a_call_is_held_gets_nothing() {
    let config = config(true);
    let body = answer(vec![call("run_sql", json!({"query": PROD}))]);
    let (mut host, mut ex, _) = answered(&config, &body);
    let record: serde_json::Value = serde_json::from_slice(&ex.finish(&mut host).unwrap()).unwrap();
    // The decision stays what it was (the answer's address was masked);
    // the call's entry says it was never decided.
    assert_eq!(record["decision"], "masked");
    assert!(host.response_body_out.is_empty());
    assert_eq!(host.state(state::TOOLS), "run_sql:held:prod-sql");
    // The control plane's late answer changes nothing.
    answer_call(
        &mut host,
        &mut ex,
        200,
        json!({"id": "apr_1", "status": "approved", "consumed": false}),
    );
    assert!(host.response_body_out.is_empty());
    assert_eq!(host.responses_resumed, 0);
}

#[test]
fn without_a_control_plane_a_held_call_is_refused_at_once() {
    let config = config(false);
    let body = answer(vec![call("run_sql", json!({"query": PROD}))]);
    let (host, ex, flow) = answered(&config, &body);
    assert_eq!(flow, Flow::Continue);
    let out = sent(&host);
    assert!(
        out["choices"][0]["message"].get("tool_calls").is_none(),
        "{out}"
    );
    assert_eq!(host.state(state::TOOLS), "run_sql:refused:prod-sql");
    assert_eq!(ex.decision(), Decision::Masked);
}

// --- streamed answers --------------------------------------------------------

fn chunk(delta: serde_json::Value, finish: Option<&str>) -> String {
    let event = json!({"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {event}\n\n")
}

/// Text, then a `run_sql` call in two fragments; then the choice's finish
/// (which ends the call: it is judged then), then `[DONE]`.
fn sql_stream(query: &str) -> (String, String, String) {
    let arguments = json!({"query": query}).to_string();
    let (first, second) = arguments.split_at(10);
    let start = chunk(json!({"role": "assistant", "content": "Checking. "}), None)
        + &chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "run_sql", "arguments": first}}]}),
            None,
        )
        + &chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": second}}]}),
            None,
        );
    let finish = chunk(json!({}), Some("tool_calls"));
    (start, finish, "data: [DONE]\n\n".to_owned())
}

/// The request forwarded and an event stream's headers read.
fn streaming(config: &Rc<FilterConfig>) -> (FakeHost, Exchange) {
    let policy = tool_policy();
    let mut host = FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat("clean up"));
    host.response_headers = vec![("content-type".into(), "text/event-stream".into())];
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, config, &policy), Flow::Continue);
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Continue);
    (host, ex)
}

fn feed(host: &mut FakeHost, ex: &mut Exchange, bytes: &str, end: bool) -> Flow {
    host.response_chunk = Ok(bytes.as_bytes().to_vec());
    ex.on_response_body(host, bytes.len(), end)
}

/// What the client got: every chunk written, in order.
fn streamed(host: &FakeHost) -> String {
    host.response_body_out
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

#[test]
fn a_streamed_call_a_rule_holds_waits_for_the_approver_while_the_text_before_it_flows() {
    let config = config(true);
    let (mut host, mut ex) = streaming(&config);
    let (start, finish, end) = sql_stream(PROD);
    assert_eq!(feed(&mut host, &mut ex, &start, false), Flow::Continue);
    assert!(host.dispatched.is_empty(), "judged once its arguments end");
    assert_eq!(feed(&mut host, &mut ex, &finish, false), Flow::Continue);
    let so_far = streamed(&host);
    assert!(
        so_far.contains("Checking."),
        "text before the call flows: {so_far}"
    );
    assert!(!so_far.contains("run_sql"), "the call waits: {so_far}");
    assert_eq!(host.dispatched[0].0, "/v1/approvals");
    answer_call(
        &mut host,
        &mut ex,
        201,
        json!({"id": "apr_5", "status": "pending", "consumed": false}),
    );
    // The body ends while the call waits: held (Envoy keeps what it became).
    assert_eq!(feed(&mut host, &mut ex, &end, true), Flow::Pause);
    assert!(!streamed(&host).contains("run_sql"));
    answer_call(
        &mut host,
        &mut ex,
        200,
        json!({"id": "apr_5", "status": "approved", "consumed": false}),
    );
    assert_eq!(host.responses_resumed, 0);
    answer_call(
        &mut host,
        &mut ex,
        200,
        json!({"id": "apr_5", "status": "consumed", "consumed": true}),
    );
    assert_eq!(host.responses_resumed, 1);
    let all = streamed(&host);
    let expected_query =
        serde_json::to_string(&PROD.replace("jane@example.com", "[EMAIL]")).unwrap();
    let joined: String = all
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        joined.contains(&expected_query[1..expected_query.len() - 1]),
        "{joined}"
    );
    assert!(
        all.contains("\"finish_reason\":\"tool_calls\"") && all.ends_with("data: [DONE]\n\n"),
        "{all}"
    );
    ex.finish(&mut host);
    assert_eq!(host.state(state::TOOLS), "run_sql:approved:prod-sql");
    assert_eq!(ex.decision(), Decision::Approved);
}

#[test]
fn a_denied_streamed_call_is_replaced_and_the_stream_ends_well_formed() {
    let config = config(true);
    let (mut host, mut ex) = streaming(&config);
    let (start, finish, end) = sql_stream(PROD);
    feed(&mut host, &mut ex, &start, false);
    feed(&mut host, &mut ex, &finish, false);
    answer_call(
        &mut host,
        &mut ex,
        201,
        json!({"id": "apr_6", "status": "pending", "consumed": false}),
    );
    // Decided before the body ends: released with the next chunk.
    answer_call(
        &mut host,
        &mut ex,
        200,
        json!({"id": "apr_6", "status": "denied", "consumed": false,
        "decided_by": "bob", "reason": "no"}),
    );
    assert_eq!(feed(&mut host, &mut ex, &end, true), Flow::Continue);
    let all = streamed(&host);
    assert!(
        !all.contains("\"tool_calls\"") && !all.contains("production"),
        "{all}"
    );
    assert!(
        all.contains("denied by bob: no") && all.contains("\"finish_reason\":\"stop\""),
        "{all}"
    );
    assert!(all.ends_with("data: [DONE]\n\n"), "{all}");
    ex.finish(&mut host);
    assert_eq!(host.state(state::TOOLS), "run_sql:refused:prod-sql");
    assert_eq!(ex.decision(), Decision::Masked);
}

#[test]
fn a_client_that_leaves_a_stream_while_a_call_waits_gets_nothing_of_it() {
    let config = config(true);
    let (mut host, mut ex) = streaming(&config);
    let (start, finish, end) = sql_stream(PROD);
    feed(&mut host, &mut ex, &start, false);
    feed(&mut host, &mut ex, &finish, false);
    assert_eq!(feed(&mut host, &mut ex, &end, true), Flow::Pause);
    ex.finish(&mut host);
    answer_call(
        &mut host,
        &mut ex,
        201,
        json!({"id": "apr_1", "status": "approved", "consumed": true}),
    );
    assert!(!streamed(&host).contains("run_sql"));
    assert_eq!(host.responses_resumed, 0);
    assert_eq!(host.state(state::TOOLS), "run_sql:held:prod-sql");
}

#[test]
fn approvers_never_see_a_value_the_answer_carries_back_tokenized() {
    let config = config(true);
    let doc = TOOL_POLICY.replace(
        "{name: pii, detect: email, action: mask}",
        "{name: pii, detect: email, action: tokenize}",
    );
    let policy = Rc::new(Policy::from_bytes(doc.as_bytes()).unwrap());
    let mut host =
        FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat(&format!("purge {EMAIL}")));
    host.response_headers = vec![("content-type".into(), "application/json".into())];
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Continue);
    ex.on_response_headers(&mut host, false);
    // The model writes the placeholder; the client would get the address.
    let query = "delete from production.users where email = '<EMAIL_1>'";
    let body = answer(vec![call("run_sql", json!({"query": query}))]).to_string();
    host.response_chunk = Ok(body.clone().into_bytes());
    assert_eq!(
        ex.on_response_body(&mut host, body.len(), true),
        Flow::Pause
    );
    let (_, ask) = host.dispatched.last().unwrap();
    let ask: serde_json::Value = serde_json::from_slice(ask.as_ref().unwrap()).unwrap();
    let shown = ask["masked_prompt"].as_str().unwrap();
    assert!(
        !shown.contains(EMAIL),
        "approvers see a placeholder: {shown}"
    );
    assert!(shown.contains("production.users"), "{shown}");
    answer_call(
        &mut host,
        &mut ex,
        200,
        json!({"id": "apr_3", "status": "consumed", "consumed": true}),
    );
    assert!(
        streamed(&host).contains(EMAIL),
        "the client gets the value back"
    );
}

#[test]
fn a_stream_ended_by_trailers_while_a_call_waits_withholds_it_and_asks_no_more() {
    let config = config(true);
    let (mut host, mut ex) = streaming(&config);
    let (start, finish, _) = sql_stream(PROD);
    feed(&mut host, &mut ex, &start, false);
    feed(&mut host, &mut ex, &finish, false);
    let asked = host.dispatched.len();
    assert_eq!(ex.on_response_trailers(&mut host), Flow::Continue);
    assert_eq!(
        host.counters.get("warden.stream.trailers_withheld"),
        Some(&1)
    );
    answer_call(
        &mut host,
        &mut ex,
        200,
        json!({"id": "apr_2", "status": "approved", "consumed": false}),
    );
    assert_eq!(
        host.dispatched.len(),
        asked,
        "no approver is asked any more"
    );
    assert!(!streamed(&host).contains("run_sql"));
    assert_eq!(host.responses_resumed, 0);
    ex.finish(&mut host);
    assert_eq!(host.state(state::TOOLS), "run_sql:held:prod-sql");
}
