//! Engine microbenchmarks: the masking engine and token verification.
//!
//! The same workloads run twice: natively under criterion (`cargo bench -p
//! warden-engine --bench engine`), and built for `wasm32-wasip1` and run in
//! Node's V8 (`scripts/bench-engine.sh`), the engine Envoy embeds, with a
//! plain timing loop (criterion does not run in a WASI sandbox). The ratio of
//! the two is the price of the wasm sandbox for each workload.
//!
//! Workloads mirror `tests/bench/bench.py`: the 8 KB and 64 KB chat requests
//! with personal data, the JSON response of scenario 1, a ~500-event stream
//! whose emails are split across events, cold RS256/ES256/EdDSA tokens and
//! a token-cache hit. The policy is `examples/policies/default.yaml`, the one
//! `envoy/envoy.yaml` runs.

// Benchmarks are test code: a broken fixture should stop the run loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::rc::Rc;

use base64::Engine as _;
use jwt_simple::prelude::*;
use serde_json::{json, Value};
use warden_engine::auth::cache::TokenCache;
use warden_engine::auth::jwks::KeySet;
use warden_engine::auth::machine_keys::MachineKeys;
use warden_engine::auth::{AuthenticationDoc, Authenticator, Identity};
use warden_engine::config::FilterConfig;
use warden_engine::exchange::{Exchange, Flow, Host, HostResult, Level, Refetch, Start};
use warden_engine::headers::Headers;
use warden_engine::inspect::apply::{inspect_json, MaskingStream};
use warden_engine::inspect::calls::{SharedCalls, StreamCallJudge};
use warden_engine::inspect::mask::{HashKey, Vault};
use warden_engine::inspect::sse::{StreamApi, StreamRewriter};
use warden_engine::policy::{Direction, Policy};
use warden_engine::request::{self, AuthStep, KeyView};

const POLICY: &str = include_str!("../../../examples/policies/default.yaml");
const RSA_PEM: &str = include_str!("../src/auth/testdata/rsa-a.pem");
const ISS: &str = "http://127.0.0.1:8080/dev";
const PERSONAL: &str =
    "Contact jane.doe@example.com or +1 415 555 2671; card 4111 1111 1111 1111. ";

/// The chat request `tests/bench/bench.py` sends: personal data every ~4 KB.
fn chat_body(size: usize) -> Vec<u8> {
    let filler = "The quarterly numbers look fine. ";
    let mut text = String::from(PERSONAL);
    while text.len() + 200 < size {
        text.push_str(filler);
        if text.len() % 4096 < filler.len() {
            text.push_str(PERSONAL);
        }
    }
    serde_json::to_vec(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}))
        .unwrap()
}

/// A chat request of prose with the punctuation, digits and times of
/// ordinary writing and no personal data: every detector's prefilter sees
/// some of what it needs, and nothing is masked.
fn prose_body(size: usize) -> Vec<u8> {
    let para = "The quarterly review covers revenue, hiring and the roadmap for the next release. \
        Engineering shipped the new onboarding flow, fixed forty-two bugs, and reduced p99 latency by 18%. \
        Please send feedback to the team before Friday; we will discuss it in the planning meeting at 10:30. \
        Internationalization work continues, with translations for seven additional languages.\n";
    let text = para.repeat(size / para.len() + 1);
    serde_json::to_vec(
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": &text[..size]}]}),
    )
    .unwrap()
}

/// The stand-in provider's `GET /v1/models` answer (scenario 1's response).
fn models_body() -> Vec<u8> {
    let data: Vec<Value> = [
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "o3-mini",
        "text-embedding-3-small",
    ]
    .iter()
    .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "openai"}))
    .collect();
    serde_json::to_vec(&json!({"object": "list", "data": data})).unwrap()
}

/// A streamed answer that calls tools: ~100 text events, then four calls
/// (a shell command, checked by a tool rule), each streamed as ~100
/// argument fragments of 4 characters, then the end: ~500 events.
pub fn tool_stream_bytes() -> (Vec<u8>, usize) {
    let chunk = |delta: Value, finish: Value| {
        let event = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "gpt-4o", "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        format!("data: {event}\n\n")
    };
    let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    let mut events = 1;
    let text = "Let me look at the files and clean up what is not needed. ".repeat(7);
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(4) {
        out.push_str(&chunk(
            json!({"content": piece.iter().collect::<String>()}),
            Value::Null,
        ));
        events += 1;
    }
    for call in 0..4 {
        let command = format!(
            "ls -la /srv/data/{call} && du -sh /srv/data/{call}/* | sort -h | tail -n 20 # "
        ) + &"x".repeat(300);
        let arguments = json!({"command": command}).to_string();
        out.push_str(&chunk(
            json!({"tool_calls": [{"index": call, "id": format!("call_{call}"), "type": "function",
                "function": {"name": "bash", "arguments": ""}}]}),
            Value::Null,
        ));
        events += 1;
        let chars: Vec<char> = arguments.chars().collect();
        for piece in chars.chunks(4) {
            out.push_str(&chunk(
                json!({"tool_calls": [{"index": call, "function": {"arguments": piece.iter().collect::<String>()}}]}),
                Value::Null,
            ));
            events += 1;
        }
    }
    out.push_str(&chunk(json!({}), json!("tool_calls")));
    out.push_str("data: [DONE]\n\n");
    (out.into_bytes(), events + 2)
}

/// ~500 `chat.completion.chunk` events of 4 characters each (as the stand-in
/// cuts them), an email every ~250 characters, so each is split across events.
pub fn stream_bytes() -> (Vec<u8>, usize) {
    let mut text = String::new();
    while text.len() < 2000 {
        text.push_str(&format!(
            "Write to jane.doe{}@example.com today. {}",
            text.len(),
            "The stream goes on with ordinary words. ".repeat(5)
        ));
    }
    text.truncate(2000);
    let chunk = |delta: Value| {
        let event = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "gpt-4o", "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]});
        format!("data: {event}\n\n")
    };
    let mut out = chunk(json!({"role": "assistant", "content": ""}));
    let chars: Vec<char> = text.chars().collect();
    let mut events = 1;
    for piece in chars.chunks(4) {
        out.push_str(&chunk(json!({"content": piece.iter().collect::<String>()})));
        events += 1;
    }
    out.push_str("data: [DONE]\n\n");
    (out.into_bytes(), events + 1)
}

/// `examples/policies/default.yaml` plus one tool rule (a destructive
/// shell command is blocked), so calls are judged where asked.
fn policy_with_tool_rule() -> String {
    POLICY.replacen(
        "\nrules:\n",
        "\nrules:\n  - {name: destructive-shell, tools: [bash], argument: command, regex: '\\brm\\s+-[a-z]*r', action: block}\n",
        1,
    )
}

fn identity() -> Identity {
    Identity {
        issuer: ISS.into(),
        subject: "bench".into(),
        token_subject: Some("bench".into()),
        email: None,
        groups: vec!["engineering".into()],
        expires_at: u64::MAX,
    }
}

pub struct Masking {
    policy: Rc<Policy>,
    key: HashKey,
}

impl Masking {
    pub fn new() -> Self {
        Self {
            policy: Rc::new(Policy::from_bytes(policy_with_tool_rule().as_bytes()).unwrap()),
            key: HashKey::new(vec![7; 32]),
        }
    }

    /// One request body through the rules, as the filter does per request
    /// (the active rules are derived per request too).
    pub fn request(&self, body: &[u8]) -> usize {
        let active =
            self.policy
                .active_rules(&identity(), "openai", Some("gpt-4o"), Direction::Request);
        let mut vault = Vault::default();
        let out = inspect_json(
            &self.policy,
            &active,
            Direction::Request,
            body,
            &mut vault,
            &self.key,
            false,
        )
        .unwrap();
        out.body.map_or(0, |b| b.len())
    }

    pub fn response(&self, body: &[u8]) -> usize {
        let active =
            self.policy
                .active_rules(&identity(), "openai", Some("gpt-4o"), Direction::Response);
        let mut vault = Vault::default();
        let out = inspect_json(
            &self.policy,
            &active,
            Direction::Response,
            body,
            &mut vault,
            &self.key,
            false,
        )
        .unwrap();
        out.body.map_or(0, |b| b.len())
    }

    /// A whole stream fed in 512-byte frames through the rewriter.
    pub fn stream(&self, bytes: &[u8]) -> usize {
        self.stream_judging(bytes, false)
    }

    /// As [`Self::stream`]; with `judge_calls`, its tool calls held and
    /// judged by the policy's tool rules (as when a policy governs calls).
    pub fn stream_judging(&self, bytes: &[u8], judge_calls: bool) -> usize {
        let active =
            self.policy
                .active_rules(&identity(), "openai", Some("gpt-4o"), Direction::Response);
        let text = MaskingStream::new(
            self.policy.clone(),
            active,
            Vault::default(),
            self.key.clone(),
        );
        let mut rewriter = StreamRewriter::new(StreamApi::OpenAiChat, Box::new(text));
        if judge_calls {
            rewriter = rewriter.judging_calls(Box::new(StreamCallJudge {
                policy: self.policy.clone(),
                identity: identity(),
                model: Some("gpt-4o".into()),
                calls: SharedCalls::default(),
                can_hold: false,
            }));
        }
        let mut out = 0;
        for frame in bytes.chunks(512) {
            out += rewriter.feed(frame).len();
        }
        out += rewriter.finish().len();
        assert!(rewriter.blocked().is_none());
        out
    }
}

impl Default for Masking {
    fn default() -> Self {
        Self::new()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An issuer with an RS256, an ES256 and an EdDSA key, and a token for each.
pub struct Tokens {
    auth: Authenticator,
    keys: KeySet,
    jwks: String,
    pub rs256: String,
    pub es256: String,
    pub eddsa: String,
}

impl Tokens {
    pub fn new() -> Self {
        let rsa = RS256KeyPair::from_pem(RSA_PEM).unwrap().with_key_id("rsa");
        let ec = ES256KeyPair::generate().with_key_id("ec");
        let ed = Ed25519KeyPair::generate().with_key_id("ed");
        let rsa_jwk: Value = serde_json::from_str(&rsa.public_key().to_jwk()).unwrap();
        let ec_jwk: Value = serde_json::from_str(&ec.public_key().to_jwk()).unwrap();
        let ed_jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "use": "sig",
                            "x": b64(&ed.public_key().to_bytes())});
        let jwks = json!({"keys": [rsa_jwk, ec_jwk, ed_jwk]}).to_string();
        let (keys, skipped) = KeySet::from_jwks(jwks.as_bytes()).unwrap();
        // The issuer's inline set is the same one; verify() takes it as an argument, as the
        // filter passes the issuer's current (remote) set.
        assert_eq!((keys.len(), skipped), (3, 0));
        let doc: AuthenticationDoc = serde_json::from_value(json!({
            "issuers": [{"issuer": ISS, "audiences": ["warden"], "inline_jwks": jwks.clone()}]
        }))
        .unwrap();
        let auth = Authenticator::compile(doc, &|_| None).unwrap();
        let claims = || {
            Claims::with_custom_claims(
                json!({"groups": ["engineering"], "email": "bench@example.com"}),
                Duration::from_hours(2),
            )
            .with_issuer(ISS)
            .with_audience("warden")
            .with_subject("bench")
        };
        Self {
            rs256: rsa.sign(claims()).unwrap(),
            es256: ec.sign(claims()).unwrap(),
            eddsa: ed.sign(claims()).unwrap(),
            auth,
            keys,
            jwks,
        }
    }

    pub fn now() -> u64 {
        Clock::now_since_epoch().as_secs()
    }

    /// What the filter does for a token it has not seen: read, pick the key, verify.
    pub fn verify(&self, token: &str) -> Identity {
        let unverified = self.auth.inspect(token).unwrap();
        self.auth
            .verify(token, unverified, &self.keys, Self::now())
            .unwrap()
    }
}

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}

/// Row 2 of `make bench` through the engine: one whole exchange (request
/// headers, the body masked, the provider's answer read and scanned, the
/// audit record), with a host that only hands over bytes. Its time against
/// `inspect_json` alone is what the exchange adds around the inspection;
/// against Envoy's row 2 minus row 2h, what the engine cannot explain.
pub struct WholeExchange {
    config: Rc<FilterConfig>,
    policy: Rc<Policy>,
    host: BenchHost,
}

impl WholeExchange {
    /// A chat request with `body` (rows 2 and 5), or with `None` the models
    /// listing of row 1.
    pub fn new(tokens: &Tokens, body: Option<Vec<u8>>) -> Self {
        let doc = json!({
            "providers": [{"name": "openai", "api": "openai", "path_prefix": "/openai/",
                           "credential": {"env": "WARDEN_OPENAI_API_KEY"}}],
            "authentication": {"issuers": [{"issuer": ISS, "audiences": ["warden"],
                                            "inline_jwks": tokens.jwks.clone()}]},
        });
        let config = Rc::new(
            FilterConfig::from_bytes(doc.to_string().as_bytes(), &|name| {
                Some(format!("{name}-0123456789abcdef0123456789abcdef"))
            })
            .unwrap(),
        );
        let policy = Rc::new(Policy::from_bytes(policy_with_tool_rule().as_bytes()).unwrap());
        let authorization = (
            "authorization".into(),
            format!("Bearer {}", tokens.rs256).into_bytes(),
        );
        let headers = match &body {
            Some(body) => vec![
                (":method".into(), b"POST".to_vec()),
                (":path".into(), b"/openai/v1/chat/completions".to_vec()),
                (":authority".into(), b"127.0.0.1".to_vec()),
                ("content-type".into(), b"application/json".to_vec()),
                ("content-length".into(), body.len().to_string().into_bytes()),
                authorization,
            ],
            None => vec![
                (":method".into(), b"GET".to_vec()),
                (":path".into(), b"/openai/v1/models".to_vec()),
                (":authority".into(), b"127.0.0.1".to_vec()),
                authorization,
            ],
        };
        let listing = body.is_none();
        let host = BenchHost {
            headers,
            body: body.unwrap_or_default(),
            forwarded: Vec::new(),
            answer: Vec::new(),
            keys: KeySet::from_jwks(tokens.jwks.as_bytes()).unwrap().0,
            cache: TokenCache::new(64, 60),
        };
        let mut exchange = Self {
            config,
            policy,
            host,
        };
        if listing {
            exchange.host.answer = models_body();
            assert!(exchange.run() > 0);
            return exchange;
        }
        // The stand-in echoes the prompt it was sent: the masked one.
        exchange.run();
        let sent: Value = serde_json::from_slice(&exchange.host.forwarded).unwrap();
        let reply = sent["messages"][0]["content"].as_str().unwrap().to_owned();
        exchange.host.answer = serde_json::to_vec(&json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply,
                         "refusal": null, "annotations": []},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2000, "completion_tokens": 2000, "total_tokens": 4000}
        }))
        .unwrap();
        assert!(exchange.run() > 0);
        exchange
    }

    /// One exchange; the bytes forwarded and answered.
    pub fn run(&mut self) -> usize {
        let host = &mut self.host;
        let mut ex = Exchange::new();
        let start = Start {
            config: self.config.clone(),
            policy: Some(self.policy.clone()),
            policy_silent_for: None,
            now_secs: Tokens::now(),
        };
        let listing = host.body.is_empty();
        if listing {
            assert_eq!(
                ex.on_request_headers(host, Some(start), true),
                Flow::Continue
            );
        } else {
            assert_eq!(ex.on_request_headers(host, Some(start), false), Flow::Pause);
            let size = host.body.len();
            assert_eq!(ex.on_request_body(host, size, true), Flow::Continue);
        }
        assert!(ex.forwarded(), "the request is forwarded");
        if host.answer.is_empty() {
            return 0;
        }
        // A chat answer is held until it is read whole; a listing passes.
        let held = if listing { Flow::Continue } else { Flow::Pause };
        assert_eq!(ex.on_response_headers(host, false), held);
        let size = host.answer.len();
        assert_eq!(ex.on_response_body(host, size, true), Flow::Continue);
        let record = ex.finish(host).map_or(0, |r| r.len());
        host.forwarded.len() + size + record
    }
}

/// The host of [`WholeExchange`]: the request and answer as bytes, the
/// worker's keys and token cache; every other call succeeds and is dropped.
struct BenchHost {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    forwarded: Vec<u8>,
    answer: Vec<u8>,
    keys: KeySet,
    cache: TokenCache,
}

impl Host for BenchHost {
    fn now_millis(&self) -> u64 {
        Tokens::now() * 1000
    }
    fn log(&mut self, _level: Level, _message: &str) {}
    fn count(&mut self, _counter: &str, _n: u64) {}
    fn set_filter_state(&mut self, _key: &str, value: &[u8]) {
        black_box(value);
    }
    fn request_headers(&mut self) -> HostResult<Vec<(String, Vec<u8>)>> {
        Ok(self.headers.clone())
    }
    fn routed_cluster(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn request_body(&mut self, size: usize) -> HostResult<Vec<u8>> {
        Ok(self.body.get(..size).unwrap_or_default().to_vec())
    }
    fn set_request_body(&mut self, _size: usize, body: &[u8]) -> HostResult<()> {
        self.forwarded.clear();
        self.forwarded.extend_from_slice(body);
        Ok(())
    }
    fn set_request_header(&mut self, _name: &str, _value: Option<&[u8]>) -> HostResult<()> {
        Ok(())
    }
    fn clear_request_trailers(&mut self) -> HostResult<()> {
        Ok(())
    }
    fn send_reply(
        &mut self,
        status: u32,
        _headers: &[(&str, &str)],
        body: &[u8],
    ) -> HostResult<()> {
        panic!(
            "row 2's request was answered by the gateway: {status} {}",
            String::from_utf8_lossy(body)
        );
    }
    fn resume_request(&mut self) -> HostResult<()> {
        Ok(())
    }
    fn resume_response(&mut self) -> HostResult<()> {
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
        Refetch::No
    }
    fn keys_arrived(&mut self, _issuer: usize, _body_size: usize) {}
    fn dispatch(
        &mut self,
        _cluster: &str,
        _headers: Vec<(&str, &str)>,
        _body: Option<&[u8]>,
        _timeout_ms: u64,
    ) -> HostResult<u32> {
        panic!("row 2 makes no call");
    }
    fn call_response(&mut self, _body_size: usize) -> (Option<u32>, Vec<u8>) {
        (None, Vec::new())
    }
    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        (name == "content-type").then(|| b"application/json".to_vec())
    }
    fn set_response_header(&mut self, _name: &str, _value: Option<&[u8]>) -> HostResult<()> {
        Ok(())
    }
    fn response_body(&mut self, size: usize) -> HostResult<Vec<u8>> {
        Ok(self.answer.get(..size).unwrap_or_default().to_vec())
    }
    fn set_response_body(&mut self, _size: usize, _body: &[u8]) -> HostResult<()> {
        Ok(())
    }
    fn request_id(&mut self) -> Option<String> {
        Some("bench".into())
    }
    fn response_status(&mut self) -> Option<u64> {
        Some(200)
    }
}

/// A workload: its name, the target for it, and one iteration.
pub type Workload = (&'static str, &'static str, Box<dyn FnMut() -> usize>);

/// Every workload by name, with its target where issue 7 sets one.
pub fn workloads() -> Vec<Workload> {
    let masking = Rc::new(Masking::new());
    let tokens = Rc::new(Tokens::new());
    let body8k = chat_body(8 * 1024);
    let body64k = chat_body(64 * 1024);
    let models = models_body();
    let prose = prose_body(16 * 1024);
    let (stream, _) = stream_bytes();
    let (tools, _) = tool_stream_bytes();
    let tools_judged = tools.clone();
    let mut cache = TokenCache::new(4096, 60);
    let hit = tokens.rs256.clone();
    cache.insert(TokenCache::key(&hit), tokens.verify(&hit));
    let (m1, m2, m3, m4, m5, m6, m7) = (
        masking.clone(),
        masking.clone(),
        masking.clone(),
        masking.clone(),
        masking.clone(),
        masking.clone(),
        masking,
    );
    let mut whole_models = WholeExchange::new(&tokens, None);
    let mut whole8k = WholeExchange::new(&tokens, Some(body8k.clone()));
    let mut whole64k = WholeExchange::new(&tokens, Some(body64k.clone()));
    let (t1, t2, t3) = (tokens.clone(), tokens.clone(), tokens);
    vec![
        (
            "inspect_json: 8 KB chat request, masked",
            "<= 100 µs added in Envoy (scenario 2)",
            Box::new(move || m1.request(black_box(&body8k))),
        ),
        (
            "inspect_json: 64 KB chat request, masked",
            "linear in size (scenario 5)",
            Box::new(move || m2.request(black_box(&body64k))),
        ),
        (
            "exchange: row 1 whole, models listing, cached token",
            "no target: what row 1 minus row 1h leaves, in the engine",
            Box::new(move || whole_models.run()),
        ),
        (
            "exchange: row 2 whole, 8 KB request masked, answer scanned",
            "no target: what row 2 minus row 2h leaves, in the engine",
            Box::new(move || whole8k.run()),
        ),
        (
            "exchange: row 5a whole, 64 KB request masked, answer scanned",
            "no target: what row 5a minus row 5ah leaves, in the engine",
            Box::new(move || whole64k.run()),
        ),
        (
            "inspect_json: 16 KB prose request, nothing to mask",
            "no target: prefilters that find candidates everywhere",
            Box::new(move || m5.request(black_box(&prose))),
        ),
        (
            "inspect_json: models response, nothing to mask",
            "<= 15 µs added (scenario 1)",
            Box::new(move || m3.response(black_box(&models))),
        ),
        (
            "stream rewriter: ~500 events, emails split",
            "<= 20 µs per event (scenario 3)",
            Box::new(move || m4.stream(black_box(&stream))),
        ),
        (
            "stream rewriter: ~500 events, 4 tool calls, calls not judged",
            "the baseline of the next",
            Box::new(move || m6.stream_judging(black_box(&tools), false)),
        ),
        (
            "stream rewriter: ~500 events, 4 tool calls held and judged",
            "added cost per event small against the rewriter's (issue 19)",
            Box::new(move || m7.stream_judging(black_box(&tools_judged), true)),
        ),
        (
            "verify cold RS256",
            "<= 500 µs (issue 20)",
            Box::new(move || t1.verify(black_box(&t1.rs256)).subject.len()),
        ),
        (
            "verify cold ES256",
            "<= 1.2 ms (scenario 4)",
            Box::new(move || t2.verify(black_box(&t2.es256)).subject.len()),
        ),
        (
            "verify cold EdDSA",
            "<= 1.2 ms (scenario 4)",
            Box::new(move || t3.verify(black_box(&t3.eddsa)).subject.len()),
        ),
        (
            "token cache hit",
            "<= 5 µs (scenario 4)",
            Box::new(move || {
                let key = TokenCache::key(black_box(&hit));
                cache
                    .get(&key, Tokens::now())
                    .map_or(0, |i| i.subject.len())
            }),
        ),
    ]
}

/// `--iters N NAME`: runs N iterations of the workloads whose name contains
/// NAME and nothing else, for callgrind (`--toggle-collect=*profile_loop*`
/// counts only these, not the setup): `scripts/bench-engine.sh --callgrind`.
#[cfg(not(target_arch = "wasm32"))]
#[inline(never)]
fn profile_loop(f: &mut dyn FnMut() -> usize, iters: u64) -> usize {
    (0..iters).map(|_| black_box(f())).sum()
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    use criterion::Criterion;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--iters") {
        let iters: u64 = args[i + 1].parse().unwrap();
        let name = &args[i + 2];
        for (n, _, mut f) in workloads() {
            if n.contains(name.as_str()) {
                println!("{n}: {iters} iterations, {}", profile_loop(&mut f, iters));
            }
        }
        return;
    }
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut c = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(if quick {
            200
        } else {
            1000
        }))
        .measurement_time(std::time::Duration::from_millis(if quick {
            600
        } else {
            3000
        }))
        .sample_size(if quick { 10 } else { 30 })
        .configure_from_args();
    for (name, _, mut f) in workloads() {
        c.bench_function(name, |b| b.iter(&mut f));
    }
    c.final_summary();
}

/// In V8 there is no criterion: a warm-up, then the median of a few timed
/// batches, each at least ~0.2 s, printed as one JSON line per workload.
#[cfg(target_arch = "wasm32")]
fn main() {
    use std::time::Instant;
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let (batches, batch_secs) = if quick { (3, 0.1) } else { (7, 0.3) };
    for (name, target, mut f) in workloads() {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < batch_secs {
            black_box(f());
            n += 1;
        }
        let mut per_iter = Vec::new();
        for _ in 0..batches {
            let start = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            per_iter.push(start.elapsed().as_secs_f64() * 1e9 / n as f64);
        }
        per_iter.sort_by(f64::total_cmp);
        println!(
            "{}",
            json!({"name": name, "ns": per_iter[per_iter.len() / 2], "target": target})
        );
    }
}
