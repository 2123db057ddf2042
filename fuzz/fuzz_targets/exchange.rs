//! The whole exchange as a value: a request (method, path, token, body
//! chosen from the input: real-looking shapes or arbitrary bytes), then a
//! sequence of host events the input chooses (body chunks with or without
//! the end of the stream, trailers, answers to key fetches and approval
//! calls, late or for the wrong call, response headers, chunks and
//! trailers, the client leaving, the clock moving). Never a panic, and
//! nothing forwarded without a decision: a request callback answers
//! `Continue`, or the host is asked to resume the request, only while the
//! decision is one that forwards (allowed, masked, approved), never after
//! the gateway answered itself, and at most one local reply is sent.
#![no_main]

use std::collections::HashMap;
use std::rc::Rc;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use warden_engine::auth::cache::TokenCache;
use warden_engine::auth::jwks::KeySet;
use warden_engine::auth::machine_keys::MachineKeys;
use warden_engine::config::FilterConfig;
use warden_engine::exchange::{Exchange, Flow, Host, HostError, HostResult, Level, Refetch, Start};
use warden_engine::headers::Headers;
use warden_engine::policy::Policy;
use warden_engine::protocol::Decision;
use warden_engine::request::{self, AuthStep, KeyView};
use warden_engine_fuzz::tokens::{ed_jwk, ed_sign};

const ISS: &str = "https://idp.example.com";
const NOW: u64 = 1_800_000_000;

const POLICY: &str = r#"
version: 1
groups: {engineering: {models: ["gpt-4o*", "claude-*"], endpoints: [inference, files]}}
approval: {approvers: [security], timeout_seconds: 5}
rules:
  - {name: pii, detect: [email, phone], action: mask}
  - {name: people, detect: iban, action: tokenize}
  - {name: keys, detect: aws_access_key_id, action: block}
  - {name: cards, detect: payment_card, action: require_approval}
  - {name: tickets, keywords: [merger], action: require_approval, approval: {mode: ticket}}
"#;

fn config(control_plane: bool) -> Rc<FilterConfig> {
    let mut doc = json!({
        "providers": [
            {"name": "openai", "api": "openai", "path_prefix": "/openai/", "credential": {"env": "OK"}},
            {"name": "anthropic", "api": "anthropic", "path_prefix": "/anthropic/", "credential": {"env": "AK"}}
        ],
        "authentication": {"issuers": [{"issuer": ISS, "audiences": ["warden"],
            "inline_jwks": {"keys": [ed_jwk(1, "k1")]}}]},
        "max_body_bytes": 4096
    });
    if control_plane {
        doc["control_plane"] = json!({"cluster": "warden_cp", "authority": "cp.local"});
    }
    Rc::new(
        FilterConfig::from_bytes(doc.to_string().as_bytes(), &|name| {
            Some(format!("secret-{name}"))
        })
        .expect("the fuzz configuration compiles"),
    )
}

thread_local! {
    static CONFIGS: [Rc<FilterConfig>; 2] = [config(false), config(true)];
    static POLICY_: Rc<Policy> = Rc::new(Policy::from_bytes(POLICY.as_bytes()).expect("the policy compiles"));
}

fn token(seed: u8, kid: &str, exp: u64) -> String {
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string();
    let claims =
        json!({"iss": ISS, "aud": "warden", "sub": "alice", "groups": ["engineering"], "exp": exp});
    ed_sign(seed, header.as_bytes(), claims.to_string().as_bytes())
}

fn keys(seeds: &[(u8, &str)]) -> KeySet {
    let jwks = json!({"keys": seeds.iter().map(|(s, k)| ed_jwk(*s, k)).collect::<Vec<_>>()});
    KeySet::from_jwks(jwks.to_string().as_bytes())
        .expect("keys")
        .0
}

/// A host that answers as the input says and checks what the exchange does.
struct FuzzHost {
    now_ms: u64,
    request_headers: Vec<(String, Vec<u8>)>,
    request_body: Vec<u8>,
    response_headers: Vec<(String, String)>,
    response_chunk: Vec<u8>,
    keys: KeySet,
    cache: TokenCache,
    refetch: Refetch,
    fetched_keys: Option<KeySet>,
    call_answer: (Option<u32>, Vec<u8>),
    next_call: u32,
    replies: usize,
    /// The exchange's decision, as the filter state says, for the checks
    /// in `resume_request`.
    decision: String,
    fail_host: bool,
    state: HashMap<String, String>,
}

impl FuzzHost {
    fn fail<T>(&self, ok: T) -> HostResult<T> {
        if self.fail_host {
            Err(HostError("fuzz: the host call failed".into()))
        } else {
            Ok(ok)
        }
    }
}

fn forwards(decision: &str) -> bool {
    ["allowed", "masked", "approved"].contains(&decision)
}

impl Host for FuzzHost {
    fn now_millis(&self) -> u64 {
        self.now_ms
    }
    fn log(&mut self, _level: Level, _message: &str) {}
    fn count(&mut self, _counter: &str, _n: u64) {}
    fn set_filter_state(&mut self, key: &str, value: &[u8]) {
        let value = String::from_utf8_lossy(value).into_owned();
        if key == "warden.decision" {
            self.decision = value.clone();
        }
        self.state.insert(key.to_string(), value);
    }
    fn request_headers(&mut self) -> HostResult<Vec<(String, Vec<u8>)>> {
        self.fail(self.request_headers.clone())
    }
    fn routed_cluster(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn request_body(&mut self, size: usize) -> HostResult<Vec<u8>> {
        self.fail(self.request_body.iter().copied().take(size).collect())
    }
    fn set_request_body(&mut self, _size: usize, _body: &[u8]) -> HostResult<()> {
        self.fail(())
    }
    fn set_request_header(&mut self, _name: &str, _value: Option<&[u8]>) -> HostResult<()> {
        self.fail(())
    }
    fn clear_request_trailers(&mut self) -> HostResult<()> {
        self.fail(())
    }
    fn send_reply(
        &mut self,
        _status: u32,
        _headers: &[(&str, &str)],
        _body: &[u8],
    ) -> HostResult<()> {
        self.replies += 1;
        assert!(self.replies <= 1, "a second local reply");
        Ok(())
    }
    fn resume_request(&mut self) -> HostResult<()> {
        assert!(self.replies == 0, "resumed a request the gateway answered");
        assert!(
            forwards(&self.decision),
            "resumed with decision {:?}",
            self.decision
        );
        self.fail(())
    }
    fn resume_response(&mut self) -> HostResult<()> {
        assert!(self.replies == 0, "resumed a response the gateway answered");
        self.fail(())
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
        _headers: Vec<(&str, &str)>,
        _body: Option<&[u8]>,
        _timeout_ms: u64,
    ) -> HostResult<u32> {
        self.next_call += 1;
        self.fail(self.next_call)
    }
    fn call_response(&mut self, _body_size: usize) -> (Option<u32>, Vec<u8>) {
        self.call_answer.clone()
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.response_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes().to_vec())
    }
    fn set_response_header(&mut self, _name: &str, _value: Option<&[u8]>) -> HostResult<()> {
        self.fail(())
    }
    fn response_body(&mut self, _size: usize) -> HostResult<Vec<u8>> {
        self.fail(self.response_chunk.clone())
    }
    fn set_response_body(&mut self, _size: usize, _body: &[u8]) -> HostResult<()> {
        self.fail(())
    }
    fn request_id(&mut self) -> Option<String> {
        Some("req-1".into())
    }
    fn response_status(&mut self) -> Option<u64> {
        Some(200)
    }
}

const PATHS: &[&str] = &[
    "/openai/v1/chat/completions",
    "/openai/v1/responses",
    "/openai/v1/embeddings",
    "/openai/v1/files",
    "/openai/v1/models",
    "/anthropic/v1/messages",
    "/openai/v1/chat/completions?model=gpt-4o",
    "/other/v1/x",
    "/openai/../anthropic/v1/messages",
];

fn body(u: &mut Unstructured) -> Result<Vec<u8>> {
    let text = *u.choose(&[
        "hello",
        "mail jane.doe@example.com or +1 415 555 2671",
        "key AKIAZ37Q3XK5LMN2P4RT here",
        "card 4111 1111 1111 1111",
        "the merger is on",
        "IBAN GB82 WEST 1234 5698 7654 32",
    ])?;
    Ok(match u.int_in_range(0..=4)? {
        0 => json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}).to_string().into_bytes(),
        1 => json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]})
            .to_string()
            .into_bytes(),
        2 => json!({"model": "gpt-5", "input": text}).to_string().into_bytes(),
        3 => Vec::new(),
        _ => u.arbitrary::<Vec<u8>>()?,
    })
}

fn response_chunk(u: &mut Unstructured) -> Result<Vec<u8>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mail bob@exa\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"mple.com\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n".to_vec(),
        1 => json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "call +1 415 555 2671, <IBAN_1>"}}], "usage": {"total_tokens": 3}})
            .to_string()
            .into_bytes(),
        2 => b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"AKIAZ37Q3XK5LMN2P4RT\"}}\n\n".to_vec(),
        _ => u.arbitrary::<Vec<u8>>()?,
    })
}

fn run(u: &mut Unstructured) -> Result<()> {
    let control_plane: bool = u.arbitrary()?;
    let config = CONFIGS.with(|c| c[usize::from(control_plane)].clone());
    let policy = POLICY_.with(Rc::clone);
    let method = *u.choose(&["POST", "GET", "DELETE", "PUT", "post"])?;
    let path = if u.ratio(7, 8)? {
        u.choose(PATHS)?.to_string()
    } else {
        u.arbitrary::<String>()?
    };
    let mut request_headers = vec![
        (":method".to_string(), method.as_bytes().to_vec()),
        (":path".to_string(), path.into_bytes()),
        ("content-type".to_string(), b"application/json".to_vec()),
    ];
    match u.int_in_range(0..=5)? {
        0 => {}
        1 => request_headers.push((
            "authorization".into(),
            format!("Bearer {}", token(1, "k1", NOW + 60)).into_bytes(),
        )),
        2 => request_headers.push(("x-api-key".into(), token(1, "k1", NOW + 60).into_bytes())),
        // A key the worker does not hold yet (a fetch may bring it).
        3 => request_headers.push((
            "authorization".into(),
            format!("Bearer {}", token(2, "k2", NOW + 60)).into_bytes(),
        )),
        4 => request_headers.push((
            "authorization".into(),
            format!("Bearer {}", token(1, "k1", NOW - 3600)).into_bytes(),
        )),
        _ => request_headers.push(("authorization".into(), u.arbitrary::<Vec<u8>>()?)),
    }
    if u.arbitrary()? {
        request_headers.push(("content-encoding".into(), b"gzip".to_vec()));
    }
    let request_body = body(u)?;
    let call_answer = match u.int_in_range(0..=4)? {
        0 => (
            Some(200),
            json!({"id": "apr_1", "status": "approved"})
                .to_string()
                .into_bytes(),
        ),
        1 => (
            Some(200),
            json!({"id": "apr_1", "status": "pending"})
                .to_string()
                .into_bytes(),
        ),
        2 => (Some(403), b"denied".to_vec()),
        3 => (None, Vec::new()),
        _ => (Some(u.int_in_range(100..=599)?), u.arbitrary::<Vec<u8>>()?),
    };
    let mut host = FuzzHost {
        now_ms: NOW * 1000,
        request_headers,
        request_body,
        response_headers: vec![(
            "content-type".into(),
            u.choose(&[
                "text/event-stream",
                "application/json",
                "text/plain",
                "image/png",
            ])?
            .to_string(),
        )],
        response_chunk: response_chunk(u)?,
        keys: keys(&[(1, "k1")]),
        cache: TokenCache::new(8, 60),
        refetch: match u.int_in_range(0..=2)? {
            0 => Refetch::No,
            1 => Refetch::Refreshed,
            _ => Refetch::Started(u.int_in_range(1..=3)?),
        },
        fetched_keys: u
            .arbitrary::<bool>()?
            .then(|| keys(&[(1, "k1"), (2, "k2")])),
        call_answer,
        next_call: 0,
        replies: 0,
        decision: String::new(),
        fail_host: false,
        state: HashMap::new(),
    };

    let mut ex = Exchange::new();
    let start = match u.int_in_range(0..=9)? {
        0 => None,
        1 => Some(Start {
            config,
            policy: None,
            policy_silent_for: None,
            now_secs: NOW,
        }),
        2 => Some(Start {
            config,
            policy: Some(policy),
            policy_silent_for: Some(400),
            now_secs: NOW,
        }),
        _ => Some(Start {
            config,
            policy: Some(policy),
            policy_silent_for: None,
            now_secs: NOW,
        }),
    };
    let eos = u.ratio(1, 8)?;
    let flow = ex.on_request_headers(&mut host, start, eos);
    check(&ex, &host, flow, "request headers");

    let body_len = host.request_body.len();
    let mut size = 0;
    for _ in 0..u.int_in_range(0..=12)? {
        match u.int_in_range(0..=9)? {
            0 | 1 => {
                size = (size + u.int_in_range(0..=body_len.max(1))?).min(body_len);
                let end = size == body_len && u.ratio(3, 4)?;
                let flow = ex.on_request_body(&mut host, size, end);
                check(&ex, &host, flow, "request body");
            }
            2 => {
                size = body_len;
                let flow = ex.on_request_trailers(&mut host);
                check(&ex, &host, flow, "request trailers");
            }
            3 => {
                let token = u.int_in_range(0..=4)?;
                let body_size = host.call_answer.1.len();
                ex.on_call_response(&mut host, token, body_size);
                assert!(host.replies <= 1);
            }
            4 => {
                let _ = ex.on_response_headers(&mut host, u.ratio(1, 8)?);
            }
            5 | 6 => {
                let chunk = host.response_chunk.len();
                let _ = ex.on_response_body(&mut host, chunk, u.arbitrary()?);
            }
            7 => {
                let _ = ex.on_response_trailers(&mut host);
            }
            8 => host.now_ms += u.int_in_range(0..=600_000)?,
            _ => host.fail_host = u.ratio(1, 4)?,
        }
    }
    let _ = ex.finish(&mut host);
    Ok(())
}

/// A request callback may let the request go on only once it is decided so
/// (the decision may have changed since, when the response was stopped: a
/// request body can still be arriving while a response streams).
fn check(ex: &Exchange, host: &FuzzHost, flow: Flow, what: &str) {
    if flow == Flow::Continue {
        let d = ex.decision();
        assert!(
            ex.forwarded(),
            "{what}: Continue before the request was forwarded ({d:?})"
        );
        assert!(
            d.forwarded() || d == Decision::Blocked,
            "{what}: Continue with decision {d:?}"
        );
        assert_eq!(host.replies, 0, "{what}: Continue after a local reply");
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
