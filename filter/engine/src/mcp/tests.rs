//! MCP messages as the policy reads them, tool lists filtered by group,
//! answers inspected whole and streamed (cut anywhere), and the metadata
//! MCP clients discover the IdP with.

use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::inspect::calls::summary;
use crate::testing::{headers, member_of, test, RawSigner};

const POLICY: &str = r#"
version: 1
groups:
  eng: {endpoints: [mcp], tools: {allow: ["mcp.files.*"], deny: [mcp.files.delete_everything]}}
  ops: {endpoints: [mcp], tools: {allow: ["mcp.*"]}}
approval: {approvers: [security]}
rules:
  - {name: pii, detect: email, action: mask}
  - {name: keys, detect: aws_access_key_id, action: block}
  - {name: no-rm, tools: ["mcp.*.run_shell"], argument: command, regex: 'rm\s+-rf', action: block}
  - {name: prod, tools: ["mcp.*.run_sql"], keywords: [production], action: require_approval}
"#;

fn policy() -> Rc<Policy> {
    Rc::new(Policy::from_bytes(POLICY.as_bytes()).unwrap())
}

fn answer(group: &str) -> Answer {
    let policy = policy();
    let identity = member_of(group);
    let active = policy.active_rules(&identity, "files", None, Direction::Response);
    Answer {
        policy,
        identity,
        server: "files".into(),
        active,
        key: HashKey::unset(),
        vault: Vault::default(),
        request_id: json!(3),
        outcome: Outcome::default(),
        entries: Vec::new(),
        blocked: None,
    }
}

fn call(tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}})
}

#[test]
fn messages_are_read_and_what_is_not_one_refused() {
    let m = read_message(&call("read_file", json!({"path": "/etc/hosts"}))).unwrap();
    assert_eq!(m.id, json!(3));
    assert_eq!(m.method.as_deref(), Some("tools/call"));
    assert_eq!(
        m.call,
        Some(("read_file".into(), json!({"path": "/etc/hosts"})))
    );
    let no_arguments = json!({"jsonrpc": "2.0", "id": "a", "method": "tools/call",
        "params": {"name": "delete_everything"}});
    assert_eq!(
        read_message(&no_arguments).unwrap().call,
        Some(("delete_everything".into(), json!({})))
    );
    let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let n = read_message(&notification).unwrap();
    assert_eq!((n.id, n.call), (Value::Null, None));
    let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {}});
    assert_eq!(read_message(&answer).unwrap().method, None);

    for bad in [
        json!([call("read_file", json!({}))]),
        json!("tools/call"),
        json!({"id": 1, "method": "tools/call"}),
        json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}),
        json!({"jsonrpc": "2.0", "id": 1, "method": 7}),
        json!({"jsonrpc": "2.0", "id": 1}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "x", "arguments": "rm -rf /"}}),
    ] {
        let refused = read_message(&bad).unwrap_err();
        assert_eq!(refused.api, Api::Mcp, "{bad}");
        assert_eq!(refused.error.code, Reason::McpMessage, "{bad}");
    }
}

#[test]
fn tool_calls_are_judged_by_access_and_by_the_tool_rules() {
    let p = policy();
    let judge = |group: &str, tool: &str, arguments: Value| {
        judge_tool_call(&p, &member_of(group), "files", tool, &arguments).entry
    };
    let e = judge("eng", "read_file", json!({"path": "a"}));
    assert_eq!(
        (e.tool.as_str(), e.decision),
        ("mcp.files.read_file", ToolDecision::Allowed)
    );
    assert_eq!(
        judge("eng", "delete_everything", json!({})).decision,
        ToolDecision::Refused
    );
    assert_eq!(
        judge("ops", "delete_everything", json!({})).decision,
        ToolDecision::Allowed
    );
    let rm = judge("ops", "run_shell", json!({"command": "rm  -rf /srv"}));
    assert_eq!(
        (rm.decision, rm.rule.as_deref()),
        (ToolDecision::Refused, Some("no-rm"))
    );
    assert_eq!(
        judge("ops", "run_shell", json!({"command": "ls"})).decision,
        ToolDecision::Allowed
    );
    let sql = judge(
        "ops",
        "run_sql",
        json!({"query": "delete from production.users"}),
    );
    assert_eq!(
        (sql.decision, sql.rule.as_deref()),
        (ToolDecision::Held, Some("prod"))
    );
    // The refusal names the tool and the rule, never the arguments.
    let refused = refusal(&rm);
    assert_eq!(refused.error.code, Reason::ToolDenied);
    assert!(refused.error.message.contains("no-rm"));
    assert!(!refused.error.message.contains("rm  -rf"));
}

fn tools_list() -> Value {
    json!({"jsonrpc": "2.0", "id": 3, "result": {"tools": [
        {"name": "read_file", "inputSchema": {"type": "object"}},
        {"name": "delete_everything", "inputSchema": {"type": "object"}},
        {"inputSchema": {"type": "object"}},
        {"name": "run_sql", "inputSchema": {"type": "object"}}]}})
}

fn names(message: &Value) -> Vec<&str> {
    message["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect()
}

#[test]
fn a_tool_list_keeps_only_the_tools_the_caller_may_use() {
    let mut eng = answer("eng");
    let mut list = tools_list();
    assert!(eng.inspect(&mut list));
    assert_eq!(names(&list), ["read_file", "run_sql"]);
    assert_eq!(summary(&eng.entries), "mcp.files.delete_everything:removed");

    let mut ops = answer("ops");
    let mut list = tools_list();
    ops.inspect(&mut list);
    assert_eq!(names(&list), ["read_file", "delete_everything", "run_sql"]);

    // Whatever the id (a client's `1.0`, an id the request's rules
    // rewrote, a list a server replays on a GET): every list is filtered.
    for id in [json!(4), json!(1.0), json!("[EMAIL]"), Value::Null] {
        let mut other = answer("eng");
        let mut list = tools_list();
        list["id"] = id.clone();
        assert!(other.inspect(&mut list), "{id}");
        assert_eq!(names(&list), ["read_file", "run_sql"], "{id}");
    }
}

#[test]
fn tool_results_are_masked_and_a_blocked_one_becomes_an_error() {
    let mut a = answer("eng");
    let mut result = json!({"jsonrpc": "2.0", "id": 3, "result": {"content": [
        {"type": "text", "text": "contact: jane.doe@example.com"}], "isError": false}});
    assert!(a.inspect(&mut result));
    let text = result["result"]["content"][0]["text"].as_str().unwrap();
    assert!(!text.contains("jane.doe@example.com"), "{text}");
    assert_eq!(a.outcome.summary(), "pii:mask:1");

    let mut a = answer("eng");
    let mut secret = json!({"jsonrpc": "2.0", "id": 3, "result": {"content": [
        {"type": "text", "text": "key AKIAQYLPMN5RTB7DZ4UF"}]}});
    assert!(a.inspect(&mut secret));
    assert_eq!(secret["id"], 3);
    assert_eq!(secret["error"]["data"]["reason"], "warden.blocked");
    assert!(!secret.to_string().contains("AKIA"));
    assert_eq!(a.blocked.as_deref(), Some("keys"));
}

const EVENTS: &str = "event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"data\":\"mail jane.doe@example.com\"}}\r\n\r\n: keep-alive\n\nid: 7\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"tools\":[{\"name\":\"read_file\"},{\"name\":\"delete_everything\"}]}}\n\n";

fn stream(group: &str, chunks: &[&[u8]]) -> (Vec<u8>, MessageStream) {
    let mut s = MessageStream::new(answer(group));
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(s.feed(chunk));
    }
    out.extend(s.finish());
    (out, s)
}

#[test]
fn a_streamed_answer_is_inspected_message_by_message_wherever_it_is_cut() {
    let (whole, s) = stream("eng", &[EVENTS.as_bytes()]);
    let text = String::from_utf8(whole.clone()).unwrap();
    assert!(!text.contains("jane.doe@example.com"), "{text}");
    assert!(
        text.contains("read_file") && !text.contains("delete_everything"),
        "{text}"
    );
    assert!(
        text.contains(": keep-alive") && text.contains("id: 7"),
        "{text}"
    );
    assert_eq!(s.ended(), None);
    assert_eq!(
        summary(&s.answer.entries),
        "mcp.files.delete_everything:removed"
    );
    let bytes = EVENTS.as_bytes();
    for cut in 0..bytes.len() {
        let (out, _) = stream("eng", &[&bytes[..cut], &bytes[cut..]]);
        assert_eq!(out, whole, "cut at {cut}");
    }
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(stream("eng", &singles).0, whole);
}

#[test]
fn a_stream_that_is_not_messages_ends_with_an_error_for_the_request() {
    let (out, s) = stream(
        "eng",
        &[b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\ndata: not json jane.doe@example.com\n\ndata: {\"jsonrpc\":\"2.0\"}\n\n"],
    );
    let text = String::from_utf8(out).unwrap();
    assert_eq!(s.ended(), Some(Reason::ResponseUninspectable));
    assert!(!text.contains("jane.doe"), "{text}");
    let last = text.trim_end().rsplit("data: ").next().unwrap();
    let error: Value = serde_json::from_str(last).unwrap();
    assert_eq!(error["id"], 3);
    assert_eq!(
        error["error"]["data"]["reason"],
        "warden.response_uninspectable"
    );
    // An event cut off by the stream's end is withheld.
    let (cut, _) = stream(
        "eng",
        &[b"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"x\":\"jane.doe@exa"],
    );
    assert!(!String::from_utf8(cut).unwrap().contains("jane"));
}

fn mcp_config() -> FilterConfig {
    let doc = json!({
        "providers": [
            {"name": "openai", "api": "openai", "path_prefix": "/openai/", "credential": {"env": "OK"}},
            {"name": "files", "api": "mcp", "path_prefix": "/mcp/files/"}
        ],
        "authentication": {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["warden"],
            "inline_jwks": {"keys": [RawSigner::new(1, "k1").jwk()]}}]}
    });
    match FilterConfig::from_bytes(doc.to_string().as_bytes(), &|name| {
        (name == "OK").then(|| "k".into())
    }) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_protected_resource_metadata_names_the_resource_and_the_issuers() {
    let config = mcp_config();
    let get = |path: &str, authority: &str| {
        let h = headers(&[
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            (":scheme", "https"),
        ]);
        metadata_reply(&config, Headers::new(&h))
    };
    let reply = get(
        "/.well-known/oauth-protected-resource/mcp/files/mcp",
        "gw.example.com:8443",
    )
    .unwrap();
    assert_eq!(reply.status, 200);
    let doc: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(doc["resource"], "https://gw.example.com:8443/mcp/files/mcp");
    assert_eq!(
        doc["authorization_servers"],
        json!(["https://idp.example.com"])
    );
    assert!(get("/.well-known/oauth-protected-resource/mcp/files", "gw").is_some());
    // Not an MCP route, not a metadata path, or an authority unfit for a URL.
    assert!(get("/.well-known/oauth-protected-resource/openai/v1", "gw").is_none());
    assert!(get("/mcp/files/mcp", "gw").is_none());
    assert!(get("/.well-known/oauth-protected-resource/mcp/files/", "gw\"x").is_none());

    let h = headers(&[
        (":method", "POST"),
        (":path", "/mcp/files/mcp?x=1"),
        (":authority", "gw"),
    ]);
    assert_eq!(
        metadata_url(Headers::new(&h)).as_deref(),
        Some("http://gw/.well-known/oauth-protected-resource/mcp/files/mcp")
    );
}

#[test]
fn an_mcp_server_may_take_no_credential_and_a_provider_must() {
    let config = mcp_config();
    let files = &config.providers[1];
    assert_eq!(
        (
            files.credential_env.as_deref(),
            files.credential_value.is_none()
        ),
        (None, true)
    );
    let doc = json!({
        "providers": [{"name": "openai", "api": "openai", "path_prefix": "/openai/"}],
        "authentication": {"issuers": [{"issuer": "https://i", "audiences": ["w"],
            "inline_jwks": {"keys": [RawSigner::new(1, "k1").jwk()]}}]}
    });
    let err = FilterConfig::from_bytes(doc.to_string().as_bytes(), &|_| None).unwrap_err();
    assert!(
        err.to_string().contains("`credential` is required"),
        "{err}"
    );
}

#[test]
fn routing_headers_must_say_what_the_body_says() {
    let message = read_message(&call("read_file", json!({}))).unwrap();
    let check = |pairs: &[(&str, &str)]| {
        let h = headers(pairs);
        check_routing_headers(Headers::new(&h), &message).is_ok()
    };
    assert!(check(&[]));
    assert!(check(&[
        ("mcp-method", "tools/call"),
        ("mcp-name", "read_file")
    ]));
    assert!(!check(&[("mcp-method", "tools/list")]));
    assert!(!check(&[
        ("mcp-method", "tools/call"),
        ("mcp-name", "delete_everything")
    ]));
}

#[test]
fn an_approval_binds_the_call_not_the_request_id() {
    let first = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run_sql", "arguments": {"query": "q"}, "_meta": {"progressToken": 1}}});
    let again = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "run_sql", "arguments": {"query": "q"}, "_meta": {"progressToken": 2}}});
    let other = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run_sql", "arguments": {"query": "q2"}}});
    assert_eq!(approval_binding(&first), approval_binding(&again));
    assert_ne!(approval_binding(&first), approval_binding(&other));
    // What else `_meta` carries reaches the server's tools: bound.
    let mut told = first.clone();
    told["params"]["_meta"]["tenant"] = json!("b");
    assert_ne!(approval_binding(&first), approval_binding(&told));
}

#[test]
fn routing_headers_sent_twice_are_refused() {
    let message = read_message(&call("read_file", json!({}))).unwrap();
    let check = |pairs: &[(&str, &str)]| {
        let h = headers(pairs);
        check_routing_headers(Headers::new(&h), &message).is_ok()
    };
    // Even both right: something behind the gateway may read either.
    assert!(!check(&[
        ("mcp-name", "read_file"),
        ("mcp-name", "read_file")
    ]));
    assert!(!check(&[
        ("mcp-method", "tools/call"),
        ("Mcp-Method", "tools/list")
    ]));
}

#[test]
fn the_metadata_url_of_a_401_cannot_be_given_parameters_through_the_path() {
    let h = headers(&[
        (
            ":path",
            "/mcp/files/x\",resource_metadata=\"https://evil.example/\" ü",
        ),
        (":authority", "gw"),
    ]);
    assert_eq!(
        metadata_url(Headers::new(&h)).as_deref(),
        Some("http://gw/.well-known/oauth-protected-resource/mcp/files/x%22%2Cresource_metadata%3D%22https%3A//evil.example/%22%20%C3%BC")
    );
}

#[test]
fn a_session_id_is_bound_to_its_caller() {
    let key = HashKey::new(b"a key of sixteen bytes or more".to_vec());
    let (alice, bob) = (member_of("eng"), {
        let mut b = member_of("eng");
        b.subject = "b".into();
        b
    });
    let for_alice = SessionIds {
        key: &key,
        identity: &alice,
    };
    let for_bob = SessionIds {
        key: &key,
        identity: &bob,
    };
    let given = for_alice.for_client("5ab316b5149145269c30b18befccae8b");
    assert!(
        given.starts_with("5ab316b5149145269c30b18befccae8b."),
        "{given}"
    );
    assert!(
        given.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "visible ASCII: {given}"
    );
    assert_eq!(
        for_alice.for_server(&given).unwrap(),
        "5ab316b5149145269c30b18befccae8b"
    );
    for stolen in [
        given.clone(),
        "5ab316b5149145269c30b18befccae8b".to_owned(),
        format!("{given}x"),
        given.replacen('5', "6", 1),
        String::new(),
        ".".to_owned(),
    ] {
        let refused = for_bob.for_server(&stolen).unwrap_err();
        assert_eq!(
            (refused.error.kind, refused.error.code),
            (ErrorKind::NotFound, Reason::McpSession),
            "{stolen:?}"
        );
    }
    assert!(for_alice
        .for_server("5ab316b5149145269c30b18befccae8b")
        .is_err());
    // Without a key, ids pass as they are.
    let none = HashKey::unset();
    let open = SessionIds {
        key: &none,
        identity: &alice,
    };
    assert_eq!(open.for_client("s1"), "s1");
    assert_eq!(open.for_server("s1").unwrap(), "s1");
}
