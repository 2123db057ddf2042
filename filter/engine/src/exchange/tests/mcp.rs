//! MCP requests through the whole exchange: a tool call refused before the
//! server sees it, one held for an approval, a tool list filtered, answers
//! masked whole and streamed, the error shape and the 401 that points MCP
//! clients to the resource's metadata.

use super::*;
use crate::testing::test;

const FILES: &str = "/mcp/files/mcp";

const MCP_POLICY: &str = r#"
version: 1
groups:
  engineering:
    models: ["gpt-4o*"]
    endpoints: [inference, mcp]
    tools: {allow: ["mcp.files.*"], deny: [mcp.files.delete_everything]}
approval: {approvers: [security]}
rules:
  - {name: pii, detect: email, action: mask}
  - {name: prod, tools: ["mcp.*.run_sql"], keywords: [production], action: require_approval}
"#;

fn mcp_config() -> Rc<FilterConfig> {
    let doc = json!({
        "providers": [
            {"name": "openai", "api": "openai", "path_prefix": "/openai/", "credential": {"env": "OK"}},
            {"name": "files", "api": "mcp", "path_prefix": "/mcp/files/"}
        ],
        "authentication": {"issuers": [{"issuer": ISS, "audiences": ["warden"],
            "inline_jwks": {"keys": [RawSigner::new(1, "k1").jwk()]}}]},
        "control_plane": {"cluster": "warden_cp", "authority": "cp.local"}
    });
    Rc::new(
        // Every variable set but the MCP server's (it names none).
        FilterConfig::from_bytes(doc.to_string().as_bytes(), &|name| {
            (name != "WARDEN_HASH_KEY").then(|| format!("secret-{name}"))
        })
        .unwrap(),
    )
}

fn mcp_policy() -> Rc<Policy> {
    Rc::new(Policy::from_bytes(MCP_POLICY.as_bytes()).unwrap())
}

fn rpc(id: i64, method: &str, params: serde_json::Value) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn post(body: &serde_json::Value) -> (FakeHost, Exchange, Flow) {
    let mut host = FakeHost::new("POST", FILES, Some(&token())).with_body(body);
    host.request_headers
        .push((":authority".into(), b"gw.example.com".to_vec()));
    let mut ex = Exchange::new();
    let flow = send(&mut host, &mut ex, &mcp_config(), &mcp_policy());
    (host, ex, flow)
}

fn reply_json(host: &FakeHost) -> serde_json::Value {
    serde_json::from_slice(&host.replies.last().expect("a reply").1).unwrap()
}

#[test]
fn a_denied_tool_call_never_reaches_the_server_and_is_answered_as_json_rpc() {
    let (mut host, mut ex, flow) = post(&rpc(
        5,
        "tools/call",
        json!({"name": "delete_everything", "arguments": {}}),
    ));
    assert_eq!(flow, Flow::Pause);
    assert_eq!(host.reply_status(), Some(403));
    let error = reply_json(&host);
    assert_eq!(
        (error["jsonrpc"].as_str(), &error["id"]),
        (Some("2.0"), &json!(5))
    );
    assert_eq!(error["error"]["code"], -32003);
    assert_eq!(error["error"]["data"]["reason"], "warden.tool_denied");
    assert_eq!(host.state(state::MCP_METHOD), "tools/call");
    assert_eq!(
        host.state(state::TOOLS),
        "mcp.files.delete_everything:refused"
    );
    assert_eq!(ex.decision(), Decision::Denied);
    assert!(!host.credentials_swapped() && host.resumed == 0);
    let record: serde_json::Value = serde_json::from_slice(&ex.finish(&mut host).unwrap()).unwrap();
    assert_eq!(
        (record["mcp_method"].as_str(), record["tools"].as_str()),
        (
            Some("tools/call"),
            Some("mcp.files.delete_everything:refused")
        )
    );
    assert_eq!(host.counters.get("warden.requests.files.denied"), Some(&1));
    assert_eq!(host.counters.get("warden.tools.refused"), Some(&1));
}

#[test]
fn an_allowed_tool_call_goes_on_with_its_arguments_masked() {
    let (host, ex, flow) = post(&rpc(
        6,
        "tools/call",
        json!({"name": "read_file", "arguments": {"path": format!("/home/{EMAIL}")}}),
    ));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(host.state(state::TOOLS), "mcp.files.read_file:allowed");
    let body = String::from_utf8(host.new_request_body.clone().unwrap()).unwrap();
    assert!(
        !body.contains(EMAIL) && body.contains("read_file"),
        "{body}"
    );
    assert_eq!(ex.decision(), Decision::Masked);
    // The caller's token never reaches the server; no key is put in its place.
    assert!(host.header_edits.contains(&("authorization".into(), None)));
    assert!(!host
        .header_edits
        .iter()
        .any(|(n, v)| n == "authorization" && v.is_some()));
}

#[test]
fn a_tool_call_a_rule_holds_waits_for_an_approval() {
    let (host, ex, flow) = post(&rpc(
        7,
        "tools/call",
        json!({"name": "run_sql", "arguments": {"query": "drop table production.users"}}),
    ));
    assert_eq!(flow, Flow::Pause);
    assert!(host.replies.is_empty());
    assert_eq!(host.dispatched.len(), 1);
    assert_eq!(host.dispatched[0].0, "/v1/approvals");
    assert_eq!(host.state(state::TOOLS), "mcp.files.run_sql:held:prod");
    assert_eq!(ex.decision(), Decision::Undecided);
}

#[test]
fn a_message_that_is_not_one_is_refused_with_the_protocol_error() {
    let batch = json!([rpc(1, "tools/call", json!({"name": "read_file"}))]);
    let (host, _, _) = post(&batch);
    assert_eq!(host.reply_status(), Some(400));
    let error = reply_json(&host);
    assert_eq!(error["error"]["code"], -32600);
    assert_eq!(error["error"]["data"]["reason"], "warden.mcp_message");
}

#[test]
fn a_tool_list_is_filtered_and_answers_are_masked_whole_and_streamed() {
    let (mut host, mut ex, flow) = post(&rpc(8, "tools/list", json!({})));
    assert_eq!(flow, Flow::Continue);
    host.response_headers = vec![("content-type".into(), "application/json".into())];
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Pause);
    let list = json!({"jsonrpc": "2.0", "id": 8, "result": {"tools": [
        {"name": "read_file", "description": format!("ask {EMAIL}")},
        {"name": "delete_everything"}]}});
    host.response_chunk = Ok(list.to_string().into_bytes());
    assert_eq!(ex.on_response_body(&mut host, 99, true), Flow::Continue);
    let out: serde_json::Value =
        serde_json::from_slice(&host.response_body_out.pop().unwrap()).unwrap();
    assert_eq!(out["result"]["tools"].as_array().unwrap().len(), 1);
    assert!(!out.to_string().contains(EMAIL));
    assert_eq!(
        host.state(state::TOOLS),
        "mcp.files.delete_everything:removed"
    );
    assert_eq!(ex.decision(), Decision::Masked);

    let (mut host, mut ex, _) = post(&rpc(
        9,
        "tools/call",
        json!({"name": "read_file", "arguments": {"path": "/a"}}),
    ));
    host.response_headers = vec![("content-type".into(), "text/event-stream".into())];
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Continue);
    let event = format!(
        "event: message\ndata: {}\n\n",
        json!({"jsonrpc": "2.0", "id": 9, "result": {"content": [{"type": "text", "text": EMAIL}],
            "structuredContent": {"result": EMAIL}}})
    );
    let (a, b) = event.as_bytes().split_at(40);
    host.response_chunk = Ok(a.to_vec());
    ex.on_response_body(&mut host, a.len(), false);
    host.response_chunk = Ok(b.to_vec());
    ex.on_response_body(&mut host, b.len(), true);
    let sent: Vec<u8> = host.response_body_out.concat();
    let sent = String::from_utf8(sent).unwrap();
    assert!(sent.contains("\"id\":9") && !sent.contains(EMAIL), "{sent}");
    ex.finish(&mut host);
    assert_eq!(host.state(state::RULES), "pii:mask:2");
}

#[test]
fn a_401_points_mcp_clients_to_the_metadata_and_the_metadata_is_served() {
    let mut host = FakeHost::new("POST", FILES, None).with_body(&rpc(1, "initialize", json!({})));
    host.request_headers
        .push((":authority".into(), b"gw.example.com".to_vec()));
    let mut ex = Exchange::new();
    send(&mut host, &mut ex, &mcp_config(), &mcp_policy());
    assert_eq!(host.reply_status(), Some(401));
    assert_eq!(reply_json(&host)["error"]["code"], -32001);
    let metadata = "/.well-known/oauth-protected-resource/mcp/files/mcp";
    assert_eq!(
        host.reply_headers
            .last()
            .and_then(|h| h.get("www-authenticate").cloned()),
        Some(format!(
            "Bearer resource_metadata=\"http://gw.example.com{metadata}\", error=\"invalid_token\""
        ))
    );

    let mut host = FakeHost::new("GET", metadata, None);
    host.request_headers
        .push((":authority".into(), b"gw.example.com".to_vec()));
    let mut ex = Exchange::new();
    let flow = ex.on_request_headers(&mut host, start(&mcp_config(), &mcp_policy()), true);
    assert_eq!((flow, host.reply_status()), (Flow::Pause, Some(200)));
    let doc = reply_json(&host);
    assert_eq!(doc["resource"], "http://gw.example.com/mcp/files/mcp");
    assert_eq!(doc["authorization_servers"], json!([ISS]));
}

#[test]
fn sessions_are_tagged_for_their_caller_and_refused_to_anyone_else() {
    let config = {
        let doc = json!({
            "providers": [{"name": "files", "api": "mcp", "path_prefix": "/mcp/files/"}],
            "authentication": {"issuers": [{"issuer": ISS, "audiences": ["warden"],
                "inline_jwks": {"keys": [RawSigner::new(1, "k1").jwk()]}}]}
        });
        Rc::new(
            FilterConfig::from_bytes(doc.to_string().as_bytes(), &|name| {
                (name == "WARDEN_HASH_KEY").then(|| "k".repeat(32))
            })
            .unwrap(),
        )
    };
    let policy = mcp_policy();
    // The server opens a session: the client gets its id tagged.
    let mut host =
        FakeHost::new("POST", FILES, Some(&token())).with_body(&rpc(1, "initialize", json!({})));
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Continue);
    host.response_headers = vec![
        ("content-type".into(), "application/json".into()),
        ("mcp-session-id".into(), "s-123".into()),
    ];
    ex.on_response_headers(&mut host, false);
    let tagged = host
        .response_header_edits
        .last()
        .cloned()
        .expect("the id rewritten");
    assert_eq!(tagged.0, "mcp-session-id");
    let tagged = String::from_utf8(tagged.1.unwrap()).unwrap();
    assert!(
        tagged.starts_with("s-123.") && tagged.len() > 10,
        "{tagged}"
    );

    // Its caller's next request reaches the server with the server's id.
    let mut host =
        FakeHost::new("POST", FILES, Some(&token())).with_body(&rpc(2, "tools/list", json!({})));
    host.request_headers
        .push(("mcp-session-id".into(), tagged.clone().into_bytes()));
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Continue);
    assert!(host
        .header_edits
        .contains(&("mcp-session-id".into(), Some(b"s-123".to_vec()))));

    // Someone else with the same id, or the untagged id: 404.
    let mallory = RawSigner::new(1, "k1").token(
        &json!({"iss": ISS, "aud": "warden", "sub": "mallory", "groups": ["engineering"], "exp": NOW + 60}),
    );
    for (who, id) in [(mallory.as_str(), tagged.as_str()), (&token(), "s-123")] {
        let mut host = FakeHost::new("GET", FILES, Some(who));
        host.request_headers
            .push(("mcp-session-id".into(), id.as_bytes().to_vec()));
        let mut ex = Exchange::new();
        ex.on_request_headers(&mut host, start(&config, &policy), true);
        assert_eq!(host.reply_status(), Some(404), "{id}");
        assert_eq!(
            reply_json(&host)["error"]["data"]["reason"],
            "warden.mcp_session"
        );
        assert!(!host.header_edits.iter().any(|(n, _)| n == "mcp-session-id"));
    }
}
