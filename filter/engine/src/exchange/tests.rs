//! The whole exchange without Envoy: a recording [`Host`] whose clock and
//! answers the tests drive.

use std::collections::HashMap;

use serde_json::json;

use super::*;
use crate::auth::cache::TokenCache;
use crate::auth::jwks::KeySet;
use crate::request::KeyView;
use crate::testing::{test, RawSigner};

const ISS: &str = "https://idp.example.com";
const NOW: u64 = 1_800_000_000;
const CHAT: &str = "/openai/v1/chat/completions";
const EMAIL: &str = "jane.doe@example.com";

const POLICY: &str = r#"
version: 1
groups: {engineering: {models: ["gpt-4o*", "claude-*"]}}
approval: {approvers: [security]}
rules:
  - {name: pii, detect: email, action: mask}
  - {name: keys, detect: aws_access_key_id, action: block}
  - {name: cards, detect: payment_card, action: require_approval}
"#;

fn config(control_plane: bool) -> Rc<FilterConfig> {
    let mut doc = json!({
        "providers": [
            {"name": "openai", "api": "openai", "path_prefix": "/openai/", "credential": {"env": "OK"}},
            {"name": "anthropic", "api": "anthropic", "path_prefix": "/anthropic/", "credential": {"env": "AK"}}
        ],
        "authentication": {"issuers": [{"issuer": ISS, "audiences": ["warden"],
            "inline_jwks": {"keys": [RawSigner::new(1, "k1").jwk()]}}]},
        "max_body_bytes": 4096
    });
    if control_plane {
        doc["control_plane"] = json!({"cluster": "warden_cp", "authority": "cp.local"});
    }
    Rc::new(
        FilterConfig::from_bytes(doc.to_string().as_bytes(), &|name| {
            Some(format!("secret-{name}"))
        })
        .unwrap(),
    )
}

fn policy(record: &str) -> Rc<Policy> {
    let doc = format!("{POLICY}record: {record}\n");
    Rc::new(Policy::from_bytes(doc.as_bytes()).unwrap())
}

fn token_with(kid_seed: u8, kid: &'static str) -> String {
    RawSigner::new(kid_seed, kid).token(
        &json!({"iss": ISS, "aud": "warden", "sub": "alice", "groups": ["engineering"], "exp": NOW + 60}),
    )
}

fn token() -> String {
    token_with(1, "k1")
}

/// A host that records what the exchange did and answers as the test set it up.
struct FakeHost {
    now_ms: u64,
    request_headers: Vec<(String, Vec<u8>)>,
    request_body: Vec<u8>,
    response_headers: Vec<(String, String)>,
    response_chunk: Result<Vec<u8>, HostError>,
    keys: KeySet,
    cache: TokenCache,
    /// What a key fetch does, and the keys its answer brings.
    refetch: Refetch,
    fetched_keys: Option<KeySet>,
    /// Answers to calls, by token.
    call_answers: HashMap<u32, (Option<u32>, Vec<u8>)>,
    next_call: u32,

    state: HashMap<String, String>,
    logs: Vec<String>,
    counters: HashMap<String, u64>,
    replies: Vec<(u32, Vec<u8>)>,
    /// The headers of each reply, by lowercase name.
    reply_headers: Vec<HashMap<String, String>>,
    header_edits: Vec<(String, Option<Vec<u8>>)>,
    new_request_body: Option<Vec<u8>>,
    response_body_out: Vec<Vec<u8>>,
    response_header_edits: Vec<(String, Option<Vec<u8>>)>,
    dispatched: Vec<(String, Option<Vec<u8>>)>,
    resumed: u32,
    responses_resumed: u32,
    trailers_cleared: bool,
    /// Dropping the request's trailers fails (a host error).
    trailers_fail: bool,
}

impl FakeHost {
    fn new(method: &str, path: &str, token: Option<&str>) -> Self {
        let mut request_headers = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
            ("content-type".to_string(), b"application/json".to_vec()),
        ];
        if let Some(t) = token {
            request_headers.push(("authorization".into(), format!("Bearer {t}").into_bytes()));
        }
        let jwks = json!({"keys": [RawSigner::new(1, "k1").jwk()]}).to_string();
        Self {
            now_ms: NOW * 1000,
            request_headers,
            request_body: Vec::new(),
            response_headers: Vec::new(),
            response_chunk: Ok(Vec::new()),
            keys: KeySet::from_jwks(jwks.as_bytes()).unwrap().0,
            cache: TokenCache::new(8, 60),
            refetch: Refetch::No,
            fetched_keys: None,
            call_answers: HashMap::new(),
            next_call: 1,
            state: HashMap::new(),
            logs: Vec::new(),
            counters: HashMap::new(),
            replies: Vec::new(),
            reply_headers: Vec::new(),
            header_edits: Vec::new(),
            new_request_body: None,
            response_body_out: Vec::new(),
            response_header_edits: Vec::new(),
            dispatched: Vec::new(),
            resumed: 0,
            responses_resumed: 0,
            trailers_cleared: false,
            trailers_fail: false,
        }
    }

    fn with_body(mut self, body: &serde_json::Value) -> Self {
        self.request_body = body.to_string().into_bytes();
        self
    }

    fn state(&self, key: &str) -> &str {
        self.state.get(key).map_or("", String::as_str)
    }

    fn reply_status(&self) -> Option<u32> {
        self.replies.last().map(|(s, _)| *s)
    }

    fn reply_code(&self) -> String {
        let (_, body) = self.replies.last().expect("a reply");
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }

    /// The provider key went in and the client's token came out.
    fn credentials_swapped(&self) -> bool {
        self.header_edits
            .contains(&("authorization".into(), Some(b"Bearer secret-OK".to_vec())))
    }
}

impl Host for FakeHost {
    fn now_millis(&self) -> u64 {
        self.now_ms
    }
    fn log(&mut self, _level: Level, message: &str) {
        self.logs.push(message.to_string());
    }
    fn count(&mut self, counter: &str, n: u64) {
        *self.counters.entry(counter.to_string()).or_default() += n;
    }
    fn set_filter_state(&mut self, key: &str, value: &[u8]) {
        self.state
            .insert(key.to_string(), String::from_utf8_lossy(value).into_owned());
    }
    fn request_headers(&mut self) -> HostResult<Vec<(String, Vec<u8>)>> {
        Ok(self.request_headers.clone())
    }
    fn routed_cluster(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn request_body(&mut self, size: usize) -> HostResult<Vec<u8>> {
        Ok(self.request_body.iter().copied().take(size).collect())
    }
    fn set_request_body(&mut self, _size: usize, body: &[u8]) -> HostResult<()> {
        self.new_request_body = Some(body.to_vec());
        Ok(())
    }
    fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) -> HostResult<()> {
        self.header_edits
            .push((name.to_string(), value.map(<[u8]>::to_vec)));
        Ok(())
    }
    fn clear_request_trailers(&mut self) -> HostResult<()> {
        if self.trailers_fail {
            return Err(HostError("cannot remove trailers".into()));
        }
        self.trailers_cleared = true;
        Ok(())
    }
    fn send_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
        self.replies.push((status, body.to_vec()));
        self.reply_headers.push(
            headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect(),
        );
        Ok(())
    }
    fn resume_request(&mut self) -> HostResult<()> {
        self.resumed += 1;
        Ok(())
    }
    fn resume_response(&mut self) -> HostResult<()> {
        self.responses_resumed += 1;
        Ok(())
    }
    fn authenticate(
        &mut self,
        config: &FilterConfig,
        provider: usize,
        headers: Headers<'_>,
        machine_keys: &MachineKeys,
        now: u64,
        may_fetch: bool,
    ) -> AuthStep {
        let keys = &self.keys;
        let view = |_: usize| KeyView::Ready(keys);
        request::authenticate(
            config,
            provider,
            headers,
            machine_keys,
            &mut self.cache,
            &view,
            now,
            may_fetch,
        )
    }
    fn refetch_keys(&mut self, _issuer: usize, _now: u64) -> Refetch {
        self.refetch
    }
    fn keys_arrived(&mut self, _issuer: usize, _body_size: usize) {
        if let Some(keys) = self.fetched_keys.take() {
            self.keys = keys;
        }
    }
    fn dispatch(
        &mut self,
        _cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        _timeout_ms: u64,
    ) -> HostResult<u32> {
        let path = headers
            .iter()
            .find(|(n, _)| *n == ":path")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        self.dispatched.push((path, body.map(<[u8]>::to_vec)));
        self.next_call += 1;
        Ok(self.next_call)
    }
    fn call_response(&mut self, _body_size: usize) -> (Option<u32>, Vec<u8>) {
        self.call_answers
            .remove(&self.next_call)
            .unwrap_or((None, Vec::new()))
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes().to_vec())
    }
    fn set_response_header(&mut self, name: &str, value: Option<&[u8]>) -> HostResult<()> {
        if name != MARK_HEADER {
            self.response_header_edits
                .push((name.to_string(), value.map(<[u8]>::to_vec)));
        }
        Ok(())
    }
    fn response_body(&mut self, _size: usize) -> HostResult<Vec<u8>> {
        self.response_chunk.clone()
    }
    fn set_response_body(&mut self, _size: usize, body: &[u8]) -> HostResult<()> {
        self.response_body_out.push(body.to_vec());
        Ok(())
    }
    fn request_id(&mut self) -> Option<String> {
        Some("req-1".into())
    }
    fn response_status(&mut self) -> Option<u64> {
        Some(200)
    }
}

fn start(config: &Rc<FilterConfig>, policy: &Rc<Policy>) -> Option<Start> {
    Some(Start {
        config: config.clone(),
        policy: Some(policy.clone()),
        policy_silent_for: None,
        now_secs: NOW,
    })
}

fn chat(text: &str) -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
}

/// Headers, then the whole body in one piece: the request's flow at the end.
fn send(
    host: &mut FakeHost,
    ex: &mut Exchange,
    config: &Rc<FilterConfig>,
    policy: &Rc<Policy>,
) -> Flow {
    assert_eq!(
        ex.on_request_headers(host, start(config, policy), false),
        Flow::Pause
    );
    let size = host.request_body.len();
    ex.on_request_body(host, size, true)
}

#[test]
fn an_allowed_request_is_masked_and_forwarded_with_the_provider_key() {
    let (config, policy) = (config(false), policy("off"));
    let mut host =
        FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat(&format!("mail {EMAIL}")));
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Continue);
    assert!(host.credentials_swapped());
    let body = String::from_utf8(host.new_request_body.clone().unwrap()).unwrap();
    assert!(body.contains("[EMAIL]") && !body.contains(EMAIL), "{body}");
    assert_eq!(ex.decision(), Decision::Masked);
    assert_eq!(host.state(state::DECISION), "masked");
    assert_eq!(host.state(state::USER), "alice");
    assert_eq!(host.state(state::RULES), "pii:mask:1");
    // Later body callbacks of a forwarded request continue.
    assert_eq!(ex.on_request_body(&mut host, 10, true), Flow::Continue);
    ex.finish(&mut host);
    assert_eq!(host.counters.get("warden.requests.openai.masked"), Some(&1));
    assert_eq!(host.counters.get("warden.rule.pii.mask"), Some(&1));
}

#[test]
fn nothing_continues_before_a_decision_and_trailers_end_the_body() {
    let (config, policy) = (config(false), policy("off"));
    let mut host = FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat("hello"));
    let mut ex = Exchange::new();
    assert_eq!(
        ex.on_request_headers(&mut host, start(&config, &policy), false),
        Flow::Pause
    );
    // Data without end_of_stream: held.
    assert_eq!(ex.on_request_body(&mut host, 5, false), Flow::Pause);
    assert!(
        host.header_edits.is_empty(),
        "nothing may change before a decision"
    );
    assert_eq!(ex.decision(), Decision::Undecided);
    // HTTP/2 trailers end the request: the decision runs, trailers dropped.
    let size = host.request_body.len();
    assert_eq!(ex.on_request_body(&mut host, size, false), Flow::Pause);
    assert_eq!(ex.on_request_trailers(&mut host), Flow::Continue);
    assert!(host.trailers_cleared);
    assert!(host.credentials_swapped());
    assert_eq!(ex.decision(), Decision::Allowed);
}

/// Found by the `exchange` fuzz target: trailers arriving after the
/// gateway answered, with a host that cannot drop them, made a second
/// local reply (and turned the decision into `error`). An answered request
/// sends nothing upstream, trailers included: they are left alone.
#[test]
fn trailers_after_a_local_reply_send_no_second_reply() {
    let (config, policy) = (config(false), policy("off"));
    let mut host = FakeHost::new("POST", CHAT, None).with_body(&chat("hello"));
    let mut ex = Exchange::new();
    assert_eq!(
        ex.on_request_headers(&mut host, start(&config, &policy), false),
        Flow::Pause
    );
    assert_eq!(host.replies.len(), 1);
    assert_eq!(ex.decision(), Decision::Unauthenticated);
    host.trailers_fail = true;
    assert_eq!(ex.on_request_trailers(&mut host), Flow::Pause);
    assert_eq!(host.replies.len(), 1, "a second local reply");
    assert_eq!(ex.decision(), Decision::Unauthenticated);
    ex.finish(&mut host);
    assert_eq!(ex.on_request_trailers(&mut host), Flow::Pause);
    assert_eq!(host.replies.len(), 1, "a reply after the exchange ended");
}

#[test]
fn a_request_that_never_ends_is_recorded_undecided() {
    let (config, policy) = (config(true), policy("metadata"));
    let mut host = FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat("hello"));
    let mut ex = Exchange::new();
    ex.on_request_headers(&mut host, start(&config, &policy), false);
    ex.on_request_body(&mut host, 3, false);
    // The client left: Envoy logs the request.
    let record: serde_json::Value = serde_json::from_slice(&ex.finish(&mut host).unwrap()).unwrap();
    assert_eq!(record["decision"], "undecided");
    assert_eq!(host.counters.get("warden.requests.openai.undecided"), Some(&1));
    assert!(host.header_edits.is_empty());
}

#[test]
fn refusals_answer_in_the_providers_format_and_send_nothing_upstream() {
    let (config, policy) = (config(false), policy("off"));
    // No token.
    let mut host = FakeHost::new("POST", CHAT, None).with_body(&chat("hi"));
    let mut ex = Exchange::new();
    assert_eq!(
        ex.on_request_headers(&mut host, start(&config, &policy), false),
        Flow::Pause
    );
    assert_eq!(
        (host.reply_status(), host.reply_code().as_str()),
        (Some(401), "warden.no_token")
    );
    assert_eq!(ex.decision(), Decision::Unauthenticated);
    // Later callbacks of an answered request never continue.
    assert_eq!(ex.on_request_body(&mut host, 4, true), Flow::Pause);
    assert_eq!(ex.on_request_trailers(&mut host), Flow::Pause);
    assert!(!host.credentials_swapped());
    // A block rule.
    let mut host = FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat(concat!(
        "key AK",
        "IA",
        "QYLPMN5RTB7DZ4UF"
    )));
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Pause);
    assert_eq!(host.reply_status(), Some(403));
    assert_eq!(ex.decision(), Decision::Blocked);
    assert!(host.new_request_body.is_none() && !host.credentials_swapped());
    // Too large.
    let mut host = FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat(&"x".repeat(5000)));
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Pause);
    assert_eq!(host.reply_status(), Some(413));
    // No configuration: fail closed.
    let mut host = FakeHost::new("POST", CHAT, Some(&token()));
    let mut ex = Exchange::new();
    assert_eq!(ex.on_request_headers(&mut host, None, false), Flow::Pause);
    assert_eq!(host.reply_code(), "warden.not_configured");
    // The control plane silent too long: fail closed.
    let mut host = FakeHost::new("POST", CHAT, Some(&token()));
    let mut ex = Exchange::new();
    let mut stale = start(&config, &policy).unwrap();
    stale.policy_silent_for = Some(900);
    assert_eq!(
        ex.on_request_headers(&mut host, Some(stale), false),
        Flow::Pause
    );
    assert_eq!(host.reply_code(), "warden.policy_stale");
}

#[test]
fn keys_fetched_mid_request_let_it_go_on_once() {
    let (config, policy) = (config(false), policy("off"));
    let mut host = FakeHost::new("POST", CHAT, Some(&token_with(2, "k2"))).with_body(&chat("hi"));
    host.refetch = Refetch::Started(41);
    let jwks = json!({"keys": [RawSigner::new(1, "k1").jwk(), RawSigner::new(2, "k2").jwk()]});
    host.fetched_keys = Some(KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap().0);
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Pause);
    assert!(host.replies.is_empty(), "waits for the keys");
    // Another call's answer is not this one.
    ex.on_call_response(&mut host, 40, 0);
    assert_eq!(host.resumed, 0);
    ex.on_call_response(&mut host, 41, 100);
    assert_eq!(host.resumed, 1);
    assert!(host.credentials_swapped());
    assert_eq!(ex.decision(), Decision::Allowed);

    // The keys come back without it: 401, and no second fetch.
    let mut host = FakeHost::new("POST", CHAT, Some(&token_with(2, "k2"))).with_body(&chat("hi"));
    host.refetch = Refetch::Started(41);
    let mut ex = Exchange::new();
    send(&mut host, &mut ex, &config, &policy);
    ex.on_call_response(&mut host, 41, 100);
    assert_eq!(host.resumed, 0);
    assert_eq!(host.reply_status(), Some(401));
}

/// A request whose card number needs an approval, sent whole: held, with its
/// first control-plane call (the token returned) in flight.
fn held_for_approval(config: &Rc<FilterConfig>, policy: &Rc<Policy>) -> (FakeHost, Exchange, u32) {
    let mut host =
        FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat("pay 4111 1111 1111 1111"));
    let mut ex = Exchange::new();
    send(&mut host, &mut ex, config, policy);
    let call = host.next_call;
    (host, ex, call)
}

fn approval_answer(status: &str) -> Vec<u8> {
    json!({"id": "apr_1", "status": status, "consumed": false})
        .to_string()
        .into_bytes()
}

#[test]
fn an_approval_holds_the_request_until_the_control_plane_decides() {
    let (config, policy) = (config(true), policy("masked"));
    let card = "4111 1111 1111 1111";
    let mut host =
        FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat(&format!("pay {card}")));
    let mut ex = Exchange::new();
    // `hold` is the default mode: the create call, then a wait.
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Pause);
    assert_eq!(host.dispatched.len(), 1);
    let (path, body) = &host.dispatched[0];
    assert_eq!(path, "/v1/approvals");
    assert!(
        String::from_utf8_lossy(body.as_ref().unwrap()).contains(card),
        "approvers see the prompt"
    );
    let call = host.next_call;
    host.call_answers
        .insert(call, (Some(201), approval_answer("pending")));
    ex.on_call_response(&mut host, call, 0);
    assert_eq!(host.dispatched.len(), 2, "waits for a decision");
    assert_eq!(host.state(state::APPROVAL_ID), "apr_1");
    let call = host.next_call;
    host.call_answers
        .insert(call, (Some(200), approval_answer("approved")));
    ex.on_call_response(&mut host, call, 0);
    assert!(host.dispatched[2].0.ends_with("/consume"));
    assert_eq!(host.resumed, 0);
    let call = host.next_call;
    host.call_answers
        .insert(call, (Some(200), approval_answer("consumed")));
    ex.on_call_response(&mut host, call, 0);
    assert_eq!(host.resumed, 1);
    assert!(host.credentials_swapped());
    assert_eq!(ex.decision(), Decision::Approved);
    ex.finish(&mut host);
    assert_eq!(host.counters.get("warden.approvals.approved"), Some(&1));
}

#[test]
fn an_unreachable_control_plane_refuses_an_approval() {
    let (config, policy) = (config(true), policy("off"));
    let (mut host, mut ex, call) = held_for_approval(&config, &policy);
    ex.on_call_response(&mut host, call, 0); // no answer: None
    assert_eq!(host.resumed, 0);
    assert_eq!(
        (host.reply_status(), host.reply_code().as_str()),
        (Some(503), "warden.approvals_unavailable")
    );
    assert!(!host.credentials_swapped());
}

fn forwarded(
    config: &Rc<FilterConfig>,
    policy: &Rc<Policy>,
    content_type: &str,
) -> (FakeHost, Exchange) {
    let mut host = FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat("hi"));
    host.response_headers = vec![("content-type".into(), content_type.into())];
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, config, policy), Flow::Continue);
    (host, ex)
}

#[test]
fn a_json_answer_is_read_whole_and_masked_and_a_block_withholds_it() {
    let (config, policy) = (config(false), policy("off"));
    let (mut host, mut ex) = forwarded(&config, &policy, "application/json");
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Pause);
    assert_eq!(ex.on_response_body(&mut host, 10, false), Flow::Pause);
    let answer = json!({"choices": [{"message": {"content": format!("write {EMAIL}")}}]});
    host.response_chunk = Ok(answer.to_string().into_bytes());
    assert_eq!(ex.on_response_body(&mut host, 20, true), Flow::Continue);
    let out = String::from_utf8(host.response_body_out.pop().unwrap()).unwrap();
    assert!(out.contains("[EMAIL]") && !out.contains(EMAIL), "{out}");
    assert_eq!(ex.decision(), Decision::Masked);

    let (mut host, mut ex) = forwarded(&config, &policy, "application/json");
    ex.on_response_headers(&mut host, false);
    host.response_chunk = Ok(json!({"text": concat!("AK", "IA", "QYLPMN5RTB7DZ4UF")})
        .to_string()
        .into_bytes());
    // Trailers end it just as a last chunk would.
    ex.on_response_body(&mut host, 20, false);
    assert_eq!(ex.on_response_trailers(&mut host), Flow::Pause);
    assert_eq!(
        (host.reply_status(), host.reply_code().as_str()),
        (Some(403), "warden.blocked")
    );
    assert_eq!(ex.decision(), Decision::Blocked);

    // A compressed answer cannot be read: withheld.
    let (mut host, mut ex) = forwarded(&config, &policy, "application/json");
    host.response_headers
        .push(("content-encoding".into(), "gzip".into()));
    ex.on_response_headers(&mut host, false);
    assert_eq!(host.reply_code(), "warden.response_uninspectable");
}

#[test]
fn a_stream_is_rewritten_and_an_unreadable_chunk_ends_it() {
    let (config, policy) = (config(false), policy("off"));
    let (mut host, mut ex) = forwarded(&config, &policy, "text/event-stream");
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Continue);
    let event = |t: &str| {
        format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {"content": t}}]})
        )
    };
    host.response_chunk = Ok(event("mail jane.doe@exa").into_bytes());
    ex.on_response_body(&mut host, 1, false);
    host.response_chunk = Err(HostError("gone".into()));
    assert_eq!(ex.on_response_body(&mut host, 1, false), Flow::Continue);
    // Replaced by nothing, and so is anything after.
    assert_eq!(host.response_body_out.last().unwrap(), &Vec::<u8>::new());
    host.response_chunk = Ok(event("mple.com").into_bytes());
    ex.on_response_body(&mut host, 1, true);
    assert_eq!(host.response_body_out.last().unwrap(), &Vec::<u8>::new());
    let sent: Vec<u8> = host.response_body_out.concat();
    assert!(!String::from_utf8_lossy(&sent).contains("jane.doe"));
    assert!(host
        .logs
        .iter()
        .any(|l| l.contains("cannot read a stream chunk")));
}

#[test]
fn a_stream_the_client_leaves_is_recorded_as_far_as_it_went() {
    let (config, policy) = (config(true), policy("masked"));
    let (mut host, mut ex) = forwarded(&config, &policy, "text/event-stream");
    ex.on_response_headers(&mut host, false);
    let event = format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": format!("to {EMAIL} and more text")}}]})
    );
    host.response_chunk = Ok(event.into_bytes());
    ex.on_response_body(&mut host, 1, false);
    let record: serde_json::Value = serde_json::from_slice(&ex.finish(&mut host).unwrap()).unwrap();
    let text = record["response"]["channels"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        text.contains("[EMAIL]") && !text.contains(EMAIL),
        "{record}"
    );
    // What was masked before the client left counts, in the record, the
    // access log's filter state and the counters alike.
    assert_eq!(record["decision"], "masked");
    assert_eq!(host.state(state::DECISION), "masked");
    assert_eq!(host.state(state::RULES), "pii:mask:1");
    assert_eq!(host.counters.get("warden.requests.openai.masked"), Some(&1));
    assert_eq!(host.counters.get("warden.requests.openai.allowed"), None);
    // Envoy's log callback can come twice: nothing is counted again.
    assert!(ex.finish(&mut host).is_none());
    assert_eq!(host.counters.get("warden.requests.openai.masked"), Some(&1));
}

#[test]
fn a_stream_stopped_mid_way_is_recorded_as_blocked_with_its_reason() {
    let (config, policy) = (config(false), policy("off"));
    let (mut host, mut ex) = forwarded(&config, &policy, "text/event-stream");
    ex.on_response_headers(&mut host, false);
    // A line longer than any the parser keeps: the stream cannot be read.
    let line = format!(
        "data: {}",
        "a".repeat(crate::inspect::sse::DEFAULT_MAX_LINE + 1)
    );
    host.response_chunk = Ok(line.into_bytes());
    ex.on_response_body(&mut host, 1, false);
    let sent = String::from_utf8(host.response_body_out.concat()).unwrap();
    assert!(
        sent.contains("warden.blocked") && !sent.contains("aaaa"),
        "{sent}"
    );
    // The client leaves on the error event, before the provider's end.
    ex.finish(&mut host);
    assert_eq!(ex.decision(), Decision::Blocked);
    assert_eq!(host.state(state::REASON), "warden.stream_framing");
    assert_eq!(host.counters.get("warden.requests.openai.blocked"), Some(&1));
}

#[test]
fn a_ticket_approval_refuses_now_and_names_the_approval() {
    let (config, _) = (config(true), ());
    let doc = POLICY.replace(
        "action: require_approval}",
        "action: require_approval, approval: {mode: ticket}}",
    );
    let policy = Rc::new(Policy::from_bytes(doc.as_bytes()).unwrap());
    let (mut host, mut ex, call) = held_for_approval(&config, &policy);
    host.call_answers
        .insert(call, (Some(201), approval_answer("pending")));
    ex.on_call_response(&mut host, call, 0);
    assert_eq!(host.dispatched.len(), 1, "no wait in ticket mode");
    assert_eq!(
        (host.reply_status(), host.reply_code().as_str()),
        (Some(403), "warden.approval_pending")
    );
    assert_eq!(ex.decision(), Decision::ApprovalPending);
    assert_eq!(host.resumed, 0);
}

#[test]
fn a_request_without_a_body_is_decided_on_its_headers_and_one_with_an_unexpected_body_is_refused() {
    let (config, policy) = (config(false), policy("off"));
    let doc = POLICY.replace(
        "engineering: {models: [\"gpt-4o*\", \"claude-*\"]}",
        "engineering: {models: [\"gpt-4o*\"], endpoints: [models]}",
    );
    let models_policy = Rc::new(Policy::from_bytes(doc.as_bytes()).unwrap());
    let mut host = FakeHost::new("GET", "/openai/v1/models/gpt-4o", Some(&token()));
    let mut ex = Exchange::new();
    assert_eq!(
        ex.on_request_headers(&mut host, start(&config, &models_policy), true),
        Flow::Continue,
        "{:?}",
        host.replies
    );
    assert!(host.credentials_swapped());
    // The listing is metadata: it passes unheld and unread, even compressed,
    // where a chat answer with the same headers is held (see
    // a_json_answer_is_read_whole_and_masked_and_a_block_withholds_it).
    host.response_headers = vec![
        ("content-type".into(), "application/json".into()),
        ("content-encoding".into(), "gzip".into()),
    ];
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Continue);
    host.response_chunk = Ok(json!({"id": format!("{EMAIL}")}).to_string().into_bytes());
    assert_eq!(ex.on_response_body(&mut host, 20, true), Flow::Continue);
    assert!(host.response_body_out.is_empty() && host.replies.is_empty());
    // A GET that carries a body: read, and refused.
    let mut host = FakeHost::new("GET", "/openai/v1/models/gpt-4o", Some(&token()));
    host.request_body = b"{\"x\":1}".to_vec();
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Pause);
    assert_eq!(host.reply_status(), Some(400));
    assert!(!host.credentials_swapped());
}

#[test]
fn tokenized_values_come_back_in_the_answer() {
    let doc = POLICY.replace(
        "{name: pii, detect: email, action: mask}",
        "{name: pii, detect: email, action: tokenize}",
    );
    let (config, policy) = (
        config(false),
        Rc::new(Policy::from_bytes(doc.as_bytes()).unwrap()),
    );
    let mut host =
        FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat(&format!("mail {EMAIL}")));
    host.response_headers = vec![("content-type".into(), "application/json".into())];
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Continue);
    let upstream = String::from_utf8(host.new_request_body.clone().unwrap()).unwrap();
    assert!(
        upstream.contains("<EMAIL_1>") && !upstream.contains(EMAIL),
        "{upstream}"
    );
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Pause);
    host.response_chunk = Ok(
        json!({"choices": [{"message": {"content": "sent to <EMAIL_1>"}}]})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(ex.on_response_body(&mut host, 40, true), Flow::Continue);
    let answer = String::from_utf8(host.response_body_out.pop().unwrap()).unwrap();
    assert!(answer.contains(&format!("sent to {EMAIL}")), "{answer}");
}

#[test]
fn a_response_is_passed_untouched_when_no_rule_applies_and_refused_when_it_cannot_be_rewritten() {
    // No response rule and nothing tokenized: bytes pass.
    let doc = POLICY
        .replace("action: mask}", "action: mask, where: request}")
        .replace("action: block}", "action: block, where: request}")
        .replace(
            "action: require_approval}",
            "action: require_approval, where: request}",
        );
    let (config, policy) = (
        config(false),
        Rc::new(Policy::from_bytes(doc.as_bytes()).unwrap()),
    );
    let (mut host, mut ex) = forwarded(&config, &policy, "application/json");
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Continue);
    assert_eq!(ex.on_response_body(&mut host, 10, true), Flow::Continue);
    assert!(host.response_body_out.is_empty(), "nothing rewritten");
    // A stream of a shape the gateway cannot rewrite: refused.
    let policy = policy_of_off();
    let mut host = FakeHost::new("POST", "/openai/v1/embeddings", Some(&token()))
        .with_body(&json!({"model": "gpt-4o-mini", "input": "hi"}));
    host.response_headers = vec![("content-type".into(), "text/event-stream".into())];
    let mut ex = Exchange::new();
    assert_eq!(send(&mut host, &mut ex, &config, &policy), Flow::Continue);
    ex.on_response_headers(&mut host, false);
    assert_eq!(host.reply_code(), "warden.stream_unknown");
    assert_eq!(ex.decision(), Decision::Blocked);
}

fn policy_of_off() -> Rc<Policy> {
    policy("off")
}

#[test]
fn a_stream_ended_by_trailers_withholds_what_it_held() {
    let (config, policy) = (config(false), policy("off"));
    let (mut host, mut ex) = forwarded(&config, &policy, "text/event-stream");
    ex.on_response_headers(&mut host, false);
    // An unfinished event (no blank line yet) carrying a value.
    host.response_chunk = Ok(format!(
        "data: {}",
        json!({"choices": [{"index": 0, "delta": {"content": EMAIL}}]})
    )
    .into_bytes());
    ex.on_response_body(&mut host, 1, false);
    assert_eq!(ex.on_response_trailers(&mut host), Flow::Continue);
    assert_eq!(
        host.counters.get("warden.stream.trailers_withheld"),
        Some(&1)
    );
    let sent = host.response_body_out.concat();
    assert!(!String::from_utf8_lossy(&sent).contains("jane.doe"));
    // Anything after is dropped.
    host.response_chunk = Ok(b"data: x\n\n".to_vec());
    ex.on_response_body(&mut host, 9, true);
    assert_eq!(host.response_body_out.last().unwrap(), &Vec::<u8>::new());
}

/// A request that starts under one policy ends under it, whatever is
/// published while it is in flight; the next request gets the new one.
#[test]
fn a_policy_published_mid_request_applies_from_the_next_request_on() {
    let config = config(true);
    let mut old = Policy::from_bytes(format!("{POLICY}record: masked\n").as_bytes()).unwrap();
    old.published_version = Some(3);
    let old = Rc::new(old);
    let mut new = Policy::from_bytes(
        b"version: 1\ngroups: {engineering: {models: [\"*\"]}}\nrecord: masked\n",
    )
    .unwrap();
    new.published_version = Some(4);
    let new = Rc::new(new);

    let mut first = FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat(EMAIL));
    let mut ex1 = Exchange::new();
    assert_eq!(
        ex1.on_request_headers(&mut first, start(&config, &old), false),
        Flow::Pause
    );
    // Version 4 is published now; a second request starts under it.
    let mut second = FakeHost::new("POST", CHAT, Some(&token())).with_body(&chat(EMAIL));
    let mut ex2 = Exchange::new();
    assert_eq!(send(&mut second, &mut ex2, &config, &new), Flow::Continue);
    let size = first.request_body.len();
    assert_eq!(ex1.on_request_body(&mut first, size, true), Flow::Continue);

    let masked = String::from_utf8(first.new_request_body.clone().unwrap()).unwrap();
    assert!(!masked.contains(EMAIL), "{masked}");
    assert!(second.new_request_body.is_none(), "version 4 has no rule");
    assert_eq!(first.state(state::POLICY_VERSION), "3");
    assert_eq!(second.state(state::POLICY_VERSION), "4");
    // The answer to the first is read under version 3 too.
    first.response_headers = vec![("content-type".into(), "application/json".into())];
    ex1.on_response_headers(&mut first, false);
    let answer = json!({"choices": [{"message": {"content": format!("mail {EMAIL}")}}]});
    first.response_chunk = Ok(answer.to_string().into_bytes());
    ex1.on_response_body(&mut first, 1, true);
    let out = String::from_utf8(first.response_body_out.pop().unwrap()).unwrap();
    assert!(!out.contains(EMAIL), "{out}");
    let record: serde_json::Value =
        serde_json::from_slice(&ex1.finish(&mut first).unwrap()).unwrap();
    assert_eq!(record["policy_version"], 3);
}

/// Hold mode, step by step with the clock: a "no" refuses at once, and
/// silence past the rule's deadline refuses without a last call.
#[test]
fn a_held_request_is_refused_when_denied_or_when_its_time_runs_out() {
    let (config, policy) = (config(true), policy("off"));

    let (mut host, mut ex, call) = held_for_approval(&config, &policy);
    host.call_answers
        .insert(call, (Some(201), approval_answer("denied")));
    ex.on_call_response(&mut host, call, 0);
    assert_eq!(
        (host.reply_status(), host.reply_code().as_str()),
        (Some(403), "warden.approval_denied")
    );
    assert_eq!((host.resumed, ex.decision()), (0, Decision::Denied));
    assert!(!host.credentials_swapped());

    let (mut host, mut ex, call) = held_for_approval(&config, &policy);
    host.call_answers
        .insert(call, (Some(201), approval_answer("pending")));
    ex.on_call_response(&mut host, call, 0);
    let calls = host.dispatched.len();
    // The wait comes back "pending" after the default 60 s hold is over.
    host.now_ms += 61_000;
    let call = host.next_call;
    host.call_answers
        .insert(call, (Some(200), approval_answer("pending")));
    ex.on_call_response(&mut host, call, 0);
    assert_eq!(host.dispatched.len(), calls, "no call after the deadline");
    assert_eq!(host.reply_code(), "warden.approval_timeout");
    assert_eq!(host.resumed, 0);
}

/// The client leaves while its request is held: the exchange is over, and an
/// approval that arrives afterwards lets nothing through.
#[test]
fn an_approval_that_arrives_after_the_client_left_lets_nothing_through() {
    let (config, policy) = (config(true), policy("metadata"));
    let (mut host, mut ex, call) = held_for_approval(&config, &policy);
    let record: serde_json::Value = serde_json::from_slice(&ex.finish(&mut host).unwrap()).unwrap();
    assert_eq!(record["decision"], "undecided");
    assert_eq!(host.counters.get("warden.requests.openai.undecided"), Some(&1));
    host.call_answers
        .insert(call, (Some(201), approval_answer("approved")));
    ex.on_call_response(&mut host, call, 0);
    assert_eq!(host.resumed, 0);
    assert!(host.replies.is_empty() && !host.credentials_swapped());
    assert_eq!(
        host.dispatched.len(),
        1,
        "no consume for a request that is gone"
    );
    // Finishing twice counts once.
    assert!(ex.finish(&mut host).is_none());
    assert_eq!(host.counters.get("warden.requests.openai.undecided"), Some(&1));
}

/// A request the gateway answered itself: the local reply's own response
/// passes without inspection and the record says why.
#[test]
fn the_gateways_own_answer_is_not_inspected_again() {
    let (config, policy) = (config(true), policy("metadata"));
    let mut host = FakeHost::new("POST", CHAT, None).with_body(&chat(EMAIL));
    let mut ex = Exchange::new();
    assert_eq!(
        ex.on_request_headers(&mut host, start(&config, &policy), false),
        Flow::Pause
    );
    assert_eq!(host.reply_status(), Some(401));
    host.response_headers = vec![("content-type".into(), "application/json".into())];
    assert_eq!(ex.on_response_headers(&mut host, false), Flow::Continue);
    host.response_chunk = Ok(b"{\"error\":{}}".to_vec());
    assert_eq!(ex.on_response_body(&mut host, 12, true), Flow::Continue);
    assert!(host.response_body_out.is_empty());
    let record: serde_json::Value = serde_json::from_slice(&ex.finish(&mut host).unwrap()).unwrap();
    assert_eq!(
        (record["decision"].as_str(), record["reason"].as_str()),
        (Some("unauthenticated"), Some("warden.no_token"))
    );
}

mod held_calls;
mod mcp;
