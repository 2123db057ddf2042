//! One request's whole life at the gateway, request and response, as a state
//! machine the proxy-wasm adapter drives: each host callback is an event
//! ([`Exchange::on_request_headers`], ..., [`Exchange::finish`]), and what
//! the gateway does about it goes through the [`Host`] it is handed (reads
//! of the request, header and body edits, local replies, calls to the
//! control plane, filter state for the access log). The adapter implements
//! [`Host`] with proxy-wasm host calls; tests with a recording fake and a
//! clock they drive, so every transition runs natively and in V8.
//!
//! ```text
//! New ── headers: route, cluster, staleness ── Authenticating ─┬─ unknown kid: fetch keys (paused), once
//!                                                               ├─ rejected: Answered (local reply)
//!                                                               └─ verified ─┬─ no body: authorize ── Forwarded
//!                                                                            └─ body: ReadingBody ── complete:
//!      parse, model, authorize, query, inspect ─┬─ refused: Answered
//!                                               ├─ approval rule: AwaitingApproval ── approved: Forwarded
//!                                               └─ Forwarded ── response: pass, read whole, or rewrite the stream
//! ```
//!
//! Each phase owns what is known in it, so a state that cannot happen cannot
//! be written. Headers are held (`Flow::Pause`) until a decision: a request
//! ends with its body (data with `end_of_stream`) or with trailers, and every
//! callback answers `Continue` only once the request is `Forwarded`. What the
//! audit trail says is kept in one place ([`Audit`]), whatever way the
//! exchange ends.

use crate::protocol::Reason;
use std::rc::Rc;

use serde_json::Value;

use crate::auth::machine_keys::MachineKeys;
use crate::auth::Identity;
use crate::config::FilterConfig;
use crate::control::{ApprovalFlow, Call, Next};
use crate::endpoint::{endpoint_of, Endpoint};
use crate::headers::Headers;
use crate::inspect::apply::{
    inspect_json_then, inspect_text, MaskingStream, Outcome, SharedMasking,
};
use crate::inspect::body::Shape;
use crate::inspect::calls::{self, SharedCalls, StreamCallJudge, ToolEntry};
use crate::inspect::mask::{Action as RuleAction, Vault};
use crate::inspect::sse::{StreamApi, StreamRewriter, Verdict};
use crate::mcp;
use crate::policy::{ActiveRules, Direction, Policy};
use crate::protocol::{ApprovalRequest, Decision, Record, SessionRecord};
use crate::provider::{Api, ErrorKind, LocalReply, Rejection};
use crate::request::{self, AuthStep};

/// Header set on every response the filter handled (proxied or answered).
pub const MARK_HEADER: &str = "x-warden";

/// The most streamed text one session record keeps (masked, per response).
const RECORDED_STREAM_TEXT: usize = 256 * 1024;

/// Filter state the access log reads (`%FILTER_STATE(wasm.<key>:PLAIN)%`).
pub mod state {
    pub const DECISION: &str = "warden.decision";
    pub const REASON: &str = "warden.reason";
    pub const USER: &str = "warden.user";
    pub const GROUPS: &str = "warden.groups";
    pub const ISSUER: &str = "warden.issuer";
    pub const MODEL: &str = "warden.model";
    pub const PROVIDER: &str = "warden.provider";
    pub const ROUTE: &str = "warden.route";
    pub const POLICY_VERSION: &str = "warden.policy_version";
    pub const RULES: &str = "warden.rules";
    pub const USAGE: &str = "warden.usage";
    pub const APPROVAL_ID: &str = "warden.approval_id";
    pub const TOOLS: &str = "warden.tools";
    /// The JSON-RPC method of an MCP request (`tools/call`).
    pub const MCP_METHOD: &str = "warden.mcp_method";
}

/// What the host should do with the callback's data: let it go on, or hold
/// it (headers and body) until the exchange says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// A host call that failed, described for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError(pub String);

pub type HostResult<T> = Result<T, HostError>;

/// What asking for an issuer's keys again did ([`Host::refetch_keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// Nothing to wait for: the token's key is unknown (or rate-limited).
    No,
    /// The worker's keys changed since it last read them: try again now.
    Refreshed,
    /// A JWKS call is in flight; its answer arrives as
    /// [`Exchange::on_call_response`] with this token.
    Started(u32),
}

/// Everything outside the engine that one exchange uses: the request and
/// response in flight, the worker's keys and token cache, calls out, and
/// the access log's filter state.
pub trait Host {
    fn now_millis(&self) -> u64;
    fn log(&mut self, level: Level, message: &str);
    /// Adds to a counter of the worker (a stat to Envoy).
    fn count(&mut self, counter: &str, n: u64);
    fn set_filter_state(&mut self, key: &str, value: &[u8]);

    fn request_headers(&mut self) -> HostResult<Vec<(String, Vec<u8>)>>;
    /// The cluster Envoy's route chose (`xds.cluster_name`), if any.
    fn routed_cluster(&mut self) -> Option<Vec<u8>>;
    fn request_body(&mut self, size: usize) -> HostResult<Vec<u8>>;
    fn set_request_body(&mut self, size: usize, body: &[u8]) -> HostResult<()>;
    fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) -> HostResult<()>;
    fn clear_request_trailers(&mut self) -> HostResult<()>;
    fn send_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()>;
    /// Lets a paused request go on (after an answer to a call).
    fn resume_request(&mut self) -> HostResult<()>;
    /// Lets a paused response go on (after an answer to a call).
    fn resume_response(&mut self) -> HostResult<()>;

    /// Verifies the request's token with the keys and cache the worker holds
    /// (a machine key: with the policy's `machine_keys`).
    fn authenticate(
        &mut self,
        config: &FilterConfig,
        provider: usize,
        headers: Headers<'_>,
        machine_keys: &MachineKeys,
        now: u64,
        may_fetch: bool,
    ) -> AuthStep;
    /// For a token naming a key the worker does not hold.
    fn refetch_keys(&mut self, issuer: usize, now: u64) -> Refetch;
    /// The answer to the key fetch [`Host::refetch_keys`] started.
    fn keys_arrived(&mut self, issuer: usize, body_size: usize);

    /// An HTTP call through a cluster; its answer comes back as
    /// [`Exchange::on_call_response`] with the token returned.
    fn dispatch(
        &mut self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> HostResult<u32>;
    /// Status (`None` when the call failed) and body of the answer being delivered.
    fn call_response(&mut self, body_size: usize) -> (Option<u32>, Vec<u8>);

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>>;
    fn set_response_header(&mut self, name: &str, value: Option<&[u8]>) -> HostResult<()>;
    fn response_body(&mut self, size: usize) -> HostResult<Vec<u8>>;
    fn set_response_body(&mut self, size: usize, body: &[u8]) -> HostResult<()>;

    /// Envoy's id of the request, for the session record.
    fn request_id(&mut self) -> Option<String>;
    /// The status the client got, for the session record.
    fn response_status(&mut self) -> Option<u64>;
}

/// What the worker gives a request at its start.
pub struct Start {
    pub config: Rc<FilterConfig>,
    /// The policy the request runs under, start to end.
    pub policy: Option<Rc<Policy>>,
    /// How long the control plane has been silent, when that is longer than
    /// the policy may be used without it.
    pub policy_silent_for: Option<u64>,
    /// Seconds since the epoch: the request's one clock reading for tokens.
    pub now_secs: u64,
}

/// What is known of a request once it is routed.
struct Request {
    config: Rc<FilterConfig>,
    policy: Option<Rc<Policy>>,
    provider: usize,
    api: Api,
    /// As the client sent them, read once.
    headers: Vec<(String, Vec<u8>)>,
    /// After the route prefix, query included (the API shape, the model).
    upstream_path: String,
    endpoint: Endpoint,
    /// The method takes no body (GET, DELETE, ...): one that comes anyway
    /// is refused, an empty one is none.
    bodiless_method: bool,
    /// Whether a body follows the headers.
    expects_body: bool,
    /// Body bytes buffered so far, and whether they are all of it.
    body_size: usize,
    body_complete: bool,
    /// MCP: the server's id of the caller's session, once the tag on the
    /// one the client sent was checked.
    mcp_session: Option<String>,
}

impl Request {
    fn headers(&self) -> Headers<'_> {
        Headers::new(&self.headers)
    }

    fn provider_name(&self) -> &str {
        self.config
            .providers
            .get(self.provider)
            .map_or("", |p| p.name.as_str())
    }
}

/// A request whose caller is known and whose model was read, past its
/// authorization.
struct Authorized {
    request: Request,
    identity: Identity,
    model: Option<String>,
}

enum Phase {
    /// Waiting for the request's headers.
    New,
    /// Routed; the token is being verified, paused while the issuer's keys
    /// are fetched for an unknown `kid` (`keys_call`: token and issuer).
    Authenticating {
        request: Request,
        keys_call: Option<(u32, usize)>,
    },
    /// Authenticated; paused until the whole body has arrived.
    ReadingBody {
        request: Request,
        identity: Identity,
    },
    /// Paused while the control plane decides an approval (`call`: the
    /// token of the call in flight).
    AwaitingApproval {
        authorized: Authorized,
        flow: Box<ApprovalFlow>,
        call: u32,
    },
    /// Let go upstream; the response is handled as `response` says.
    Forwarded {
        authorized: Authorized,
        response: Response,
    },
    /// The gateway answered itself; nothing else passes.
    Answered,
    /// Logged ([`Exchange::finish`]): the client is gone or the exchange
    /// ended; a late answer to a call is dropped, nothing resumes.
    Finished,
}

/// What a body read whole is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WholeBody {
    Json,
    /// `text/*` (not an event stream): one text.
    Text,
}

/// How the response body is handled.
enum Response {
    /// Its headers have not arrived.
    Awaited,
    /// Nothing to inspect: bytes pass as they come.
    Pass,
    /// A JSON or text body, read whole (`size` buffered so far), inspected,
    /// replaced.
    Whole {
        kind: WholeBody,
        active: ActiveRules,
        /// Whether the policy judges the caller's tool calls in it.
        calls: bool,
        size: usize,
    },
    /// An event stream, rewritten event by event (the masking handle reads
    /// what the rules found once it ends, the calls handle what the policy
    /// made of its tool calls).
    Stream(Box<StreamRewriter>, SharedMasking, SharedCalls),
    /// An MCP server's JSON answer, read whole (`size` buffered so far),
    /// inspected, replaced.
    Rpc {
        answer: Box<mcp::Answer>,
        size: usize,
    },
    /// An MCP server's event stream, inspected message by message.
    RpcStream(Box<mcp::MessageStream>),
    /// A whole answer with tool calls that wait for approvals: held (Envoy
    /// buffers it, headers too) while the control plane decides each call
    /// in turn, then sent with the calls let through or replaced.
    HoldingCalls(Box<CallHold>),
    /// A stream the filter ended early (a chunk it could not read, or one
    /// ended with trailers): later chunks are dropped.
    Closed,
}

/// A whole answer held while its tool calls wait for approvals.
struct CallHold {
    shape: Shape,
    /// The answer as the client would get it, its calls not yet replaced.
    doc: Value,
    /// The body's bytes Envoy holds.
    size: usize,
    /// Calls to replace once every held call is decided, with their sentences.
    refused: Vec<(crate::inspect::tools::CallAt, String)>,
    /// The held calls not yet decided; the first is the one asked about.
    held: std::collections::VecDeque<calls::HeldCall>,
    entries: Vec<ToolEntry>,
    /// The first held call's approval, and its call in flight.
    flow: Option<(Box<ApprovalFlow>, u32)>,
    approved: bool,
}

/// What the audit trail says of the exchange: filled as things become
/// known, read once at the end ([`Exchange::finish`]).
#[derive(Default)]
struct Audit {
    decision: Decision,
    /// Why the gateway answered itself, if it did.
    reason: Option<Reason>,
    identity: Option<Identity>,
    provider: Option<String>,
    model: Option<String>,
    /// The upstream path without its query.
    route: String,
    policy: Option<Rc<Policy>>,
    records_to_control_plane: bool,
    /// What the rules found, request and response together.
    outcome: Outcome,
    /// What the policy did to the tools offered and called.
    tools: Vec<ToolEntry>,
    /// MCP: the request's JSON-RPC method.
    mcp_method: Option<String>,
    /// The provider's token usage, when it reported one.
    usage: Option<Value>,
    /// Whether a rule asked for an approval, and its id once known.
    asked_approval: bool,
    approval_id: Option<String>,
    /// With `record: masked`: the bodies after masking.
    recorded_request: Option<Value>,
    recorded_response: Option<Value>,
}

/// One request and its response.
pub struct Exchange {
    phase: Phase,
    /// The request's clock reading, seconds (tokens are judged at it, also
    /// after a key fetch).
    started_at: u64,
    /// Values `tokenize` took out of the prompt, to put back in the answer.
    vault: Vault,
    audit: Audit,
    /// MCP: the id of the JSON-RPC request, which the gateway's own
    /// answers name; and the metadata URL a 401 points MCP clients to.
    rpc_id: Value,
    resource_metadata: Option<String>,
    /// A streamed answer's calls that wait for approvals.
    stream_holds: StreamHolds,
}

/// A streamed answer's tool calls that wait for approvals: the gate holds
/// their events (and every later one) while the control plane decides each
/// in turn.
#[derive(Default)]
struct StreamHolds {
    /// The call asked about, its approval, and the call to the control
    /// plane in flight.
    asking: Option<(calls::HeldCall, Box<ApprovalFlow>, u32)>,
    /// What decisions released since the last chunk: sent before the next.
    backlog: Vec<u8>,
    /// The body ended while calls waited: the bytes Envoy holds (what the
    /// last chunk became), and what they become with what was released since.
    paused_end: Option<(usize, Vec<u8>)>,
}

/// Where an approval flow stands after an answer.
enum FlowStep {
    /// Another call to the control plane is in flight.
    Asking(Box<ApprovalFlow>, u32),
    /// Decided: let through, or not, and why.
    Decided(Result<(), String>),
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

impl Exchange {
    pub fn new() -> Self {
        Self {
            phase: Phase::New,
            started_at: 0,
            vault: Vault::default(),
            audit: Audit::default(),
            rpc_id: Value::Null,
            resource_metadata: None,
            stream_holds: StreamHolds::default(),
        }
    }

    /// The decision so far (`undecided` until one is made).
    pub fn decision(&self) -> Decision {
        self.audit.decision
    }

    /// Whether the request was let go upstream. Only a decision that
    /// forwards leads here, but the decision may change after it: a
    /// response the policy stopped makes it `blocked`.
    pub fn forwarded(&self) -> bool {
        matches!(self.phase, Phase::Forwarded { .. })
    }

    // ---------------------------------------------------------------------
    // Request events

    /// The request's headers arrived. `start` is `None` on a worker without
    /// a valid configuration: refused, fail closed.
    pub fn on_request_headers(
        &mut self,
        host: &mut dyn Host,
        start: Option<Start>,
        end_of_stream: bool,
    ) -> Flow {
        self.set_decision(host, Decision::Undecided);
        let Some(start) = start else {
            return self.reply(host, request::not_configured());
        };
        self.started_at = start.now_secs;
        let config = start.config;
        if let Some(p) = start.policy.as_ref() {
            // 0: the policy of the Envoy configuration (nothing published yet).
            let version = p.published_version.unwrap_or(0).to_string();
            host.set_filter_state(state::POLICY_VERSION, version.as_bytes());
        }
        self.audit.policy = start.policy.clone();
        self.audit.records_to_control_plane = config.control_plane.is_some();
        let headers = match host.request_headers() {
            Ok(h) => h,
            Err(e) => {
                return self.internal_error(
                    host,
                    Api::Openai,
                    &format!("cannot read request headers: {}", e.0),
                )
            }
        };
        if let Some(reply) = mcp::metadata_reply(&config, Headers::new(&headers)) {
            // Public by design: the document MCP clients discover the IdP
            // with, before they hold a token.
            self.set_decision(host, Decision::Allowed);
            return self.send_local(host, reply);
        }
        let provider = match request::route(&config, Headers::new(&headers)) {
            Ok(p) => p,
            Err(rejection) => return self.reply(host, rejection),
        };
        if let Err(rejection) = request::check_cluster(&config, provider, || host.routed_cluster())
        {
            return self.reply(host, rejection);
        }
        let api = config
            .providers
            .get(provider)
            .map_or(Api::Openai, |p| p.api);
        let path = Headers::new(&headers).get(":path").unwrap_or_default();
        let upstream_path = request::upstream_path(&config, provider, path);
        if api == Api::Mcp {
            self.resource_metadata = mcp::metadata_url(Headers::new(&headers));
        }
        if let Some(p) = config.providers.get(provider) {
            host.set_filter_state(state::PROVIDER, p.name.as_bytes());
            self.audit.provider = Some(p.name.clone());
        }
        self.audit.route = request::route_of(&upstream_path);
        host.set_filter_state(state::ROUTE, self.audit.route.as_bytes());
        if let Some(silent_for) = start.policy_silent_for {
            return self.reply(host, request::policy_stale(api, silent_for));
        }
        let method = Headers::new(&headers).get(":method").unwrap_or_default();
        let request = Request {
            endpoint: endpoint_of(api, method, &upstream_path),
            bodiless_method: request::is_bodiless_method(Headers::new(&headers)),
            expects_body: request::has_body(end_of_stream),
            config,
            policy: start.policy,
            provider,
            api,
            headers,
            upstream_path,
            body_size: 0,
            body_complete: false,
            mcp_session: None,
        };
        self.authenticate(host, request, true)
    }

    /// Request body bytes arrived (`size`: all buffered so far).
    pub fn on_request_body(
        &mut self,
        host: &mut dyn Host,
        size: usize,
        end_of_stream: bool,
    ) -> Flow {
        match std::mem::replace(&mut self.phase, Phase::Answered) {
            Phase::Authenticating {
                mut request,
                keys_call,
            } => {
                if let Err(flow) = self.buffer_body(host, &mut request, size, end_of_stream) {
                    return flow;
                }
                self.phase = Phase::Authenticating { request, keys_call };
                Flow::Pause
            }
            Phase::ReadingBody {
                mut request,
                identity,
            } => {
                if let Err(flow) = self.buffer_body(host, &mut request, size, end_of_stream) {
                    return flow;
                }
                if end_of_stream {
                    return self.decide_with_body(host, request, identity);
                }
                self.phase = Phase::ReadingBody { request, identity };
                Flow::Pause
            }
            forwarded @ Phase::Forwarded { .. } => {
                self.phase = forwarded;
                Flow::Continue
            }
            other => {
                self.phase = other;
                Flow::Pause
            }
        }
    }

    /// The request ended with trailers (HTTP/2): its body is complete.
    pub fn on_request_trailers(&mut self, host: &mut dyn Host) -> Flow {
        // Answered (or ended): nothing goes upstream, trailers included, and
        // the client has its one reply.
        if matches!(self.phase, Phase::Answered | Phase::Finished) {
            return Flow::Pause;
        }
        // No provider API takes request trailers; whatever a client puts
        // there would reach the provider uninspected.
        if let Err(e) = host.clear_request_trailers() {
            let api = self.api();
            return self.internal_error(
                host,
                api,
                &format!("cannot drop request trailers: {}", e.0),
            );
        }
        match std::mem::replace(&mut self.phase, Phase::Answered) {
            forwarded @ Phase::Forwarded { .. } => {
                self.phase = forwarded;
                Flow::Continue
            }
            Phase::ReadingBody {
                mut request,
                identity,
            } => {
                request.body_complete = true;
                self.decide_with_body(host, request, identity)
            }
            // Still authenticating: the decision comes when the keys do,
            // with the body known to be complete.
            Phase::Authenticating {
                mut request,
                keys_call,
            } => {
                request.body_complete = true;
                self.phase = Phase::Authenticating { request, keys_call };
                Flow::Pause
            }
            other => {
                self.phase = other;
                Flow::Pause
            }
        }
    }

    /// The answer to a call this exchange made (keys, approvals) arrived;
    /// a request that may now go on is resumed.
    pub fn on_call_response(&mut self, host: &mut dyn Host, token: u32, body_size: usize) {
        if matches!(&self.stream_holds.asking, Some((_, _, call)) if *call == token) {
            return self.on_stream_approval_answer(host, body_size);
        }
        if let Phase::Forwarded {
            response: response @ Response::HoldingCalls(_),
            ..
        } = &mut self.phase
        {
            let Response::HoldingCalls(mut hold) = std::mem::replace(response, Response::Pass)
            else {
                return;
            };
            let Some((flow, call)) = hold.flow.take() else {
                *response = Response::HoldingCalls(hold);
                return;
            };
            if call != token {
                hold.flow = Some((flow, call));
                *response = Response::HoldingCalls(hold);
                return;
            }
            let (status, body) = host.call_response(body_size);
            if self.on_call_approval_answer(host, hold, flow, status, &body) == Flow::Continue {
                if let Err(e) = host.resume_response() {
                    host.log(
                        Level::Error,
                        &format!("warden: cannot resume a response: {}", e.0),
                    );
                }
            }
            return;
        }
        let flow = match std::mem::replace(&mut self.phase, Phase::Answered) {
            Phase::AwaitingApproval {
                authorized,
                flow,
                call,
            } if call == token => {
                let (status, body) = host.call_response(body_size);
                self.on_approval_answer(host, authorized, flow, status, &body)
            }
            Phase::Authenticating {
                request,
                keys_call: Some((call, issuer)),
            } if call == token => {
                host.keys_arrived(issuer, body_size);
                self.authenticate(host, request, false)
            }
            other => {
                self.phase = other;
                return;
            }
        };
        if flow == Flow::Continue {
            if let Err(e) = host.resume_request() {
                host.log(
                    Level::Error,
                    &format!("warden: cannot resume a request: {}", e.0),
                );
            }
        }
    }

    // ---------------------------------------------------------------------
    // Response events

    pub fn on_response_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Flow {
        let _ = host.set_response_header(MARK_HEADER, Some(crate::VERSION.as_bytes()));
        if let Phase::Forwarded { authorized, .. } = &self.phase {
            if authorized.request.api == Api::Mcp {
                // The server's session id, tagged for this caller.
                if let Some(id) = host.response_header(mcp::SESSION_HEADER) {
                    let sessions = mcp::SessionIds {
                        key: &authorized.request.config.hash_key,
                        identity: &authorized.identity,
                    };
                    let tagged = sessions.for_client(&String::from_utf8_lossy(&id));
                    let _ = host.set_response_header(mcp::SESSION_HEADER, Some(tagged.as_bytes()));
                }
            }
        }
        match std::mem::replace(&mut self.phase, Phase::Answered) {
            Phase::Forwarded {
                authorized,
                response: Response::Awaited,
            } if !end_of_stream => {
                let (response, flow) = self.plan_response(host, &authorized);
                if let Some(response) = response {
                    self.phase = Phase::Forwarded {
                        authorized,
                        response,
                    };
                }
                flow
            }
            other => {
                self.phase = other;
                Flow::Continue
            }
        }
    }

    pub fn on_response_body(
        &mut self,
        host: &mut dyn Host,
        size: usize,
        end_of_stream: bool,
    ) -> Flow {
        let (api, limit) = (
            self.api(),
            self.request().map_or(0, |r| r.config.max_body_bytes),
        );
        let Phase::Forwarded { response, .. } = &mut self.phase else {
            return Flow::Continue;
        };
        match std::mem::replace(response, Response::Pass) {
            Response::Awaited | Response::Pass => Flow::Continue,
            Response::HoldingCalls(hold) => {
                // The answer ended before its calls were held; nothing
                // more can come. Kept held.
                *response = Response::HoldingCalls(hold);
                Flow::Pause
            }
            Response::Closed => {
                // The rest of a stream that was ended: dropped, not passed.
                let _ = host.set_response_body(size, &[]);
                *response = Response::Closed;
                Flow::Continue
            }
            Response::Whole {
                kind,
                active,
                calls,
                ..
            } => {
                if size > limit {
                    return self.block_response(host, api, Reason::ResponseUninspectable);
                }
                if !end_of_stream {
                    *response = Response::Whole {
                        kind,
                        active,
                        calls,
                        size,
                    };
                    return Flow::Pause;
                }
                self.inspect_whole_response(host, size, kind, &active, calls)
            }
            Response::Rpc { answer, .. } => {
                if size > limit {
                    return self.block_response(host, api, Reason::ResponseUninspectable);
                }
                if !end_of_stream {
                    *response = Response::Rpc { answer, size };
                    return Flow::Pause;
                }
                self.inspect_rpc_answer(host, size, answer)
            }
            Response::RpcStream(mut stream) => {
                let Some(chunk) = stream_chunk(host, size) else {
                    *response = Response::Closed;
                    self.end_rpc_stream(host, &mut stream);
                    return Flow::Continue;
                };
                let mut out = stream.feed(&chunk);
                if end_of_stream {
                    out.extend(stream.finish());
                }
                write_stream_chunk(host, size, &out);
                if end_of_stream || stream.ended().is_some() {
                    // Ended by the gateway: what the server sends after is
                    // dropped.
                    *response = Response::Closed;
                    self.end_rpc_stream(host, &mut stream);
                } else {
                    *response = Response::RpcStream(stream);
                }
                Flow::Continue
            }
            Response::Stream(mut rewriter, text, calls) => {
                let Some(chunk) = stream_chunk(host, size) else {
                    // What the rewriter held back is withheld too.
                    *response = Response::Closed;
                    self.end_stream(host, &rewriter, &text, &calls);
                    return Flow::Continue;
                };
                let mut out = std::mem::take(&mut self.stream_holds.backlog);
                out.extend(rewriter.feed(&chunk));
                out.extend(self.ask_stream_approvals(host, &mut rewriter, &calls));
                if end_of_stream {
                    out.extend(rewriter.finish());
                    out.extend(self.ask_stream_approvals(host, &mut rewriter, &calls));
                }
                write_stream_chunk(host, size, &out);
                let next = if end_of_stream && rewriter.awaiting_calls() {
                    // The body ended while calls wait: Envoy holds what this
                    // chunk became until they are decided.
                    self.stream_holds.paused_end = Some((out.len(), out));
                    Response::Stream(rewriter, text, calls)
                } else if end_of_stream {
                    self.end_stream(host, &rewriter, &text, &calls);
                    Response::Closed
                } else {
                    Response::Stream(rewriter, text, calls)
                };
                let paused = matches!(next, Response::Stream(..)) && end_of_stream;
                self.set_response(next);
                if paused {
                    Flow::Pause
                } else {
                    Flow::Continue
                }
            }
        }
    }

    /// Trailers end the response: whatever was held for inspection is
    /// decided now, as it would be on a last chunk.
    pub fn on_response_trailers(&mut self, host: &mut dyn Host) -> Flow {
        let Phase::Forwarded { response, .. } = &mut self.phase else {
            return Flow::Continue;
        };
        match std::mem::replace(response, Response::Closed) {
            Response::Awaited | Response::Pass | Response::Closed => Flow::Continue,
            Response::HoldingCalls(hold) => {
                *response = Response::HoldingCalls(hold);
                Flow::Pause
            }
            Response::Whole {
                kind,
                active,
                calls,
                size,
            } => self.inspect_whole_response(host, size, kind, &active, calls),
            Response::Rpc { answer, size } => self.inspect_rpc_answer(host, size, answer),
            Response::RpcStream(mut stream) => {
                // As for a rewritten stream: what is held cannot follow
                // trailers, so it is withheld.
                if !stream.finish().is_empty() {
                    host.count("warden.stream.trailers_withheld", 1);
                }
                self.end_rpc_stream(host, &mut stream);
                Flow::Continue
            }
            Response::Stream(mut rewriter, text, calls) => {
                // The chunks have gone downstream; what the rewriter still
                // holds (an unfinished event, text awaiting its context)
                // cannot be appended after trailers, so it is withheld,
                // never sent unmasked.
                // So are calls still waiting for approvals (no approver
                // is asked any more) and what decisions released since
                // the last chunk.
                let mut held = std::mem::take(&mut self.stream_holds.backlog);
                held.extend(rewriter.finish());
                let waiting = rewriter.awaiting_calls();
                self.stream_holds.asking = None;
                calls.0.borrow_mut().held.clear();
                if !held.is_empty() || waiting {
                    host.log(
                        Level::Warn,
                        &format!(
                            "warden: a stream ended with trailers; {} held bytes withheld{}",
                            held.len(),
                            if waiting {
                                ", calls awaiting approval withheld"
                            } else {
                                ""
                            }
                        ),
                    );
                    host.count("warden.stream.trailers_withheld", 1);
                }
                self.end_stream(host, &rewriter, &text, &calls);
                Flow::Continue
            }
        }
    }

    /// The exchange is over (Envoy's `on_log`): counts it, and returns its
    /// session record for the control plane, if the policy records them.
    pub fn finish(&mut self, host: &mut dyn Host) -> Option<Vec<u8>> {
        if matches!(self.phase, Phase::Finished) {
            return None;
        }
        if let Phase::Forwarded { response, .. } = &mut self.phase {
            // The client left (or the provider cut the connection)
            // mid-stream: what was read and decided so far is the record,
            // as for a stream that ended.
            match std::mem::replace(response, Response::Closed) {
                Response::Stream(rewriter, text, calls) => {
                    self.end_stream(host, &rewriter, &text, &calls)
                }
                Response::RpcStream(mut stream) => self.end_rpc_stream(host, &mut stream),
                Response::HoldingCalls(hold) => {
                    // Nothing of the answer went out; the held calls were
                    // never decided (their entries say `held`), and the
                    // decision stays the request's, as for a stream.
                    self.record_tools(host, hold.entries);
                }
                _ => {}
            }
        }
        let decision = self.audit.decision.as_str();
        // The provider is a configured name (a-z, 0-9, '-', '_'): a bounded
        // set, which Envoy's `stats_tags` turn into a label beside the decision.
        let provider = self.audit.provider.as_deref().unwrap_or(NO_PROVIDER);
        host.count(&format!("warden.requests.{provider}.{decision}"), 1);
        if self.audit.asked_approval {
            host.count(&format!("warden.approvals.{decision}"), 1);
        }
        for (rule, count) in &self.audit.outcome.rules {
            let mode = if count.observe { "observe_" } else { "" };
            let name = format!(
                "warden.rule.{}.{mode}{}",
                stat_segment(rule),
                count.action.name()
            );
            host.count(&name, count.count as u64);
        }
        // By decision only: tool names come from clients and models, and a
        // stat per name would let them create stats without bound.
        for entry in &self.audit.tools {
            let decision = stat_segment(entry.decision.name());
            host.count(&format!("warden.tools.{decision}"), 1);
        }
        let record = self.session_record(host);
        self.phase = Phase::Finished;
        record
    }

    // ---------------------------------------------------------------------
    // The request's way

    /// The routed request, in the phases that have one.
    fn request(&self) -> Option<&Request> {
        match &self.phase {
            Phase::Authenticating { request, .. } | Phase::ReadingBody { request, .. } => {
                Some(request)
            }
            Phase::AwaitingApproval { authorized, .. } | Phase::Forwarded { authorized, .. } => {
                Some(&authorized.request)
            }
            Phase::New | Phase::Answered | Phase::Finished => None,
        }
    }

    fn api(&self) -> Api {
        self.request().map_or(Api::Openai, |r| r.api)
    }

    /// Notes more of the body; `Err` holds the answer when it is too large.
    fn buffer_body(
        &mut self,
        host: &mut dyn Host,
        request: &mut Request,
        size: usize,
        end_of_stream: bool,
    ) -> Result<(), Flow> {
        let limit = request.config.max_body_bytes;
        if size > limit {
            return Err(self.reply(host, request::too_large(request.api, limit)));
        }
        request.body_size = size;
        request.body_complete = end_of_stream;
        Ok(())
    }

    /// Authenticates with the keys at hand; `may_fetch` allows one fetch of
    /// the issuer's keys for an unknown `kid`.
    fn authenticate(&mut self, host: &mut dyn Host, request: Request, may_fetch: bool) -> Flow {
        let now = self.started_at;
        // A policy from the Envoy configuration serves no machine keys.
        let no_keys = MachineKeys::default();
        let machine_keys = request.policy.as_ref().map_or(&no_keys, |p| &p.machine_keys);
        let step = host.authenticate(
            &request.config,
            request.provider,
            request.headers(),
            machine_keys,
            now,
            may_fetch,
        );
        match step {
            AuthStep::Verified(identity) => self.after_authentication(host, request, identity),
            AuthStep::Rejected(rejection) => self.reply(host, rejection),
            AuthStep::FetchKeys { issuer } => match host.refetch_keys(issuer, now) {
                Refetch::Started(call) => {
                    self.phase = Phase::Authenticating {
                        request,
                        keys_call: Some((call, issuer)),
                    };
                    Flow::Pause
                }
                Refetch::Refreshed | Refetch::No => self.authenticate(host, request, false),
            },
        }
    }

    fn after_authentication(
        &mut self,
        host: &mut dyn Host,
        mut request: Request,
        identity: Identity,
    ) -> Flow {
        host.set_filter_state(state::USER, identity.subject.as_bytes());
        host.set_filter_state(state::GROUPS, identity.groups.join(",").as_bytes());
        host.set_filter_state(state::ISSUER, identity.issuer.as_bytes());
        self.audit.identity = Some(identity.clone());
        if request.api == Api::Mcp {
            let sessions = mcp::SessionIds {
                key: &request.config.hash_key,
                identity: &identity,
            };
            let session = sessions.of_request(request.headers());
            match session {
                Ok(session) => request.mcp_session = session,
                Err(rejection) => return self.reply(host, rejection),
            }
        }
        if request.expects_body {
            if !request.bodiless_method {
                if let Err(rejection) = request::check_body_headers(
                    &request.config,
                    request.provider,
                    request.headers(),
                ) {
                    return self.reply(host, rejection);
                }
            }
            if request.body_complete {
                return self.decide_with_body(host, request, identity);
            }
            self.phase = Phase::ReadingBody { request, identity };
            return Flow::Pause;
        }
        let model = request::model_from_path(&request.upstream_path);
        self.decide(host, request, identity, model)
    }

    /// A request without a body (or an empty one where none is taken).
    fn decide(
        &mut self,
        host: &mut dyn Host,
        request: Request,
        identity: Identity,
        model: Option<String>,
    ) -> Flow {
        if let Err(rejection) = self.authorize(host, &request, &identity, model.as_deref()) {
            return self.reply(host, rejection);
        }
        if let Err(rejection) = self.inspect_query(host, &request, &identity, model.as_deref()) {
            return self.reply(host, rejection);
        }
        self.forward(
            host,
            Authorized {
                request,
                identity,
                model,
            },
        )
    }

    fn decide_with_body(
        &mut self,
        host: &mut dyn Host,
        request: Request,
        identity: Identity,
    ) -> Flow {
        let api = request.api;
        if request.bodiless_method {
            if let Err(rejection) = request::check_bodiless(api, request.body_size) {
                return self.reply(host, rejection);
            }
            let model = request::model_from_path(&request.upstream_path);
            return self.decide(host, request, identity, model);
        }
        let body = match host.request_body(request.body_size) {
            Ok(b) => b,
            Err(e) => {
                return self.internal_error(
                    host,
                    api,
                    &format!("cannot read the request body: {}", e.0),
                )
            }
        };
        let mut doc = match request::parse_body(api, &body) {
            Ok(d) => d,
            Err(rejection) => return self.reply(host, rejection),
        };
        // An MCP message names no model (a `model` key in it is the
        // server's business).
        let model = match api {
            Api::Mcp => None,
            _ => match request::model_of(api, &doc) {
                Ok(m) => m,
                Err(rejection) => return self.reply(host, rejection),
            },
        };
        if let Err(rejection) = self.authorize(host, &request, &identity, model.as_deref()) {
            return self.reply(host, rejection);
        }
        if let Err(rejection) = self.inspect_query(host, &request, &identity, model.as_deref()) {
            return self.reply(host, rejection);
        }
        // Authorized, so there is a policy: its rules on the prompt.
        let Some(policy) = request.policy.clone() else {
            return self.internal_error(host, api, "inspection without policy");
        };
        if api == Api::Mcp {
            if let Err(rejection) = self.govern_message(host, &request, &policy, &identity, &doc) {
                return self.reply(host, rejection);
            }
        }
        let shape = Shape::of(api, &request.upstream_path);
        let (entries, offers) = request::govern_offers(api, &policy, &identity, shape, &mut doc);
        self.record_tools(host, entries);
        let offers_changed = match offers {
            Ok(changed) => changed,
            Err(rejection) => return self.reply(host, rejection),
        };
        let (outcome, verdict) = request::inspect_request(
            &request.config,
            &policy,
            request.provider,
            &identity,
            model.as_deref(),
            &mut doc,
            offers_changed,
            &mut self.vault,
        );
        // Refused or not, the audit record names the rules that matched.
        self.record_outcome(host, outcome);
        match verdict {
            Ok(Some(new_body)) => {
                if let Err(e) = host.set_request_body(request.body_size, &new_body) {
                    return self.internal_error(
                        host,
                        api,
                        &format!("cannot replace the request body: {}", e.0),
                    );
                }
                let _ = host.set_request_header(
                    "content-length",
                    Some(new_body.len().to_string().as_bytes()),
                );
            }
            Ok(None) => {}
            Err(rejection) => return self.reply(host, rejection),
        }
        if policy.record == Record::Masked {
            self.audit.recorded_request = Some(doc.clone());
        }
        let authorized = Authorized {
            request,
            identity,
            model,
        };
        if let Some((rule, RuleAction::RequireApproval)) = self.audit.outcome.stop() {
            return self.ask_approval(host, authorized, &policy, &rule, &body, &mut doc);
        }
        self.forward(host, authorized)
    }

    /// An MCP message: read (what is not one message is refused), and a
    /// tool call judged before the server sees it. A call a rule holds for
    /// approval leaves its finding in the outcome, where the approval
    /// step finds it as for any request.
    fn govern_message(
        &mut self,
        host: &mut dyn Host,
        request: &Request,
        policy: &Policy,
        identity: &Identity,
        doc: &Value,
    ) -> Result<(), Rejection> {
        let message = mcp::read_message(doc)?;
        self.rpc_id = message.id.clone();
        mcp::check_routing_headers(request.headers(), &message)?;
        if let Some(method) = &message.method {
            host.set_filter_state(state::MCP_METHOD, method.as_bytes());
            self.audit.mcp_method = Some(method.clone());
        }
        let Some((tool, arguments)) = &message.call else {
            return Ok(());
        };
        let decided =
            mcp::judge_tool_call(policy, identity, request.provider_name(), tool, arguments);
        let refused = (decided.entry.decision == calls::ToolDecision::Refused)
            .then(|| mcp::refusal(&decided.entry));
        self.record_outcome(host, decided.outcome);
        self.record_tools(host, vec![decided.entry]);
        refused.map_or(Ok(()), Err)
    }

    fn authorize(
        &mut self,
        host: &mut dyn Host,
        request: &Request,
        identity: &Identity,
        model: Option<&str>,
    ) -> Result<(), Rejection> {
        if let Some(m) = model {
            host.set_filter_state(state::MODEL, m.as_bytes());
        }
        request::authorize(
            &request.config,
            request.policy.as_deref(),
            request.provider,
            identity,
            request.endpoint,
            model,
        )
    }

    /// The policy's rules on the URL's query string: a finding refuses the
    /// request (see [`request::inspect_query`]).
    fn inspect_query(
        &mut self,
        host: &mut dyn Host,
        request: &Request,
        identity: &Identity,
        model: Option<&str>,
    ) -> Result<(), Rejection> {
        let Some(policy) = request.policy.as_ref() else {
            return Err(internal(request.api));
        };
        let (outcome, verdict) = request::inspect_query(
            &request.config,
            policy,
            request.provider,
            identity,
            model,
            &request.upstream_path,
            &mut self.vault,
        );
        self.record_outcome(host, outcome);
        verdict
    }

    /// Opens (or finds) the approval a rule asks for and pauses until the
    /// control plane answers. The body is already in its masked form.
    fn ask_approval(
        &mut self,
        host: &mut dyn Host,
        authorized: Authorized,
        policy: &Policy,
        rule: &str,
        original: &[u8],
        masked: &mut Value,
    ) -> Flow {
        let api = authorized.request.api;
        self.audit.model = authorized.model.clone();
        let config = authorized.request.config.clone();
        let Some(cp) = config.control_plane.as_ref() else {
            return self.reply(host, request::approvals_disabled(api, rule));
        };
        let Some(spec) = policy
            .rules
            .iter()
            .find(|r| r.name == rule)
            .map(|r| &r.approval)
        else {
            return self.internal_error(host, api, "approval rule not in the policy");
        };
        // Bound to the request as the client sent it, so the same request
        // sent again (ticket mode) matches and an edited one does not.
        let body_sha256 = match request::parse_body(api, original) {
            Ok(doc) if api == Api::Mcp => {
                crate::protocol::canonical_sha256(&mcp::approval_binding(&doc))
            }
            Ok(doc) => crate::protocol::canonical_sha256(&doc),
            Err(rejection) => return self.reply(host, rejection),
        };
        let ask = ApprovalRequest::new(
            &authorized.identity,
            authorized.request.provider_name(),
            authorized.model.as_deref(),
            &self.audit.route,
            rule,
            spec,
            policy.published_version,
            body_sha256,
            request::prompt_text(masked),
        );
        self.audit.asked_approval = true;
        let (flow, call) = ApprovalFlow::start(
            api,
            &ask,
            spec.timeout_seconds,
            cp.timeout_ms,
            host.now_millis(),
        );
        self.call_control_plane(host, authorized, Box::new(flow), call)
    }

    fn call_control_plane(
        &mut self,
        host: &mut dyn Host,
        authorized: Authorized,
        flow: Box<ApprovalFlow>,
        call: Call,
    ) -> Flow {
        let config = authorized.request.config.clone();
        let Some(cp) = config.control_plane.as_ref() else {
            let api = authorized.request.api;
            return self.internal_error(host, api, "approval without a control plane");
        };
        match dispatch_approval_call(host, cp, &call) {
            Some(token) => {
                self.phase = Phase::AwaitingApproval {
                    authorized,
                    flow,
                    call: token,
                };
                Flow::Pause
            }
            None => self.on_approval_answer(host, authorized, flow, None, &[]),
        }
    }

    /// The control plane answered (or failed to): the next call, or the end.
    fn on_approval_answer(
        &mut self,
        host: &mut dyn Host,
        authorized: Authorized,
        mut flow: Box<ApprovalFlow>,
        status: Option<u32>,
        body: &[u8],
    ) -> Flow {
        let next = flow.on_answer(status, body, host.now_millis());
        if let Some(id) = flow.approval_id() {
            host.set_filter_state(state::APPROVAL_ID, id.as_bytes());
            self.audit.approval_id = Some(id.to_owned());
        }
        match next {
            Next::Call(call) => self.call_control_plane(host, authorized, flow, call),
            Next::Forward { .. } => {
                let flow = self.forward(host, authorized);
                if flow == Flow::Continue {
                    self.set_decision(host, Decision::Approved);
                }
                flow
            }
            Next::Reply { rejection, .. } => self.reply(host, rejection),
        }
    }

    /// The request is allowed: swap credentials and let it go upstream.
    fn forward(&mut self, host: &mut dyn Host, authorized: Authorized) -> Flow {
        let request = &authorized.request;
        let plan = request::forward_plan(&request.config, request.provider, request.headers());
        for name in &plan.remove {
            if let Err(e) = host.set_request_header(name, None) {
                return self.internal_error(
                    host,
                    request.api,
                    &format!("cannot remove a request header: {}", e.0),
                );
            }
        }
        let session = request
            .mcp_session
            .as_ref()
            .map(|id| (mcp::SESSION_HEADER.to_owned(), id.as_bytes().to_vec()));
        for (name, value) in plan.set.iter().chain(&session) {
            if let Err(e) = host.set_request_header(name, Some(value)) {
                return self.internal_error(
                    host,
                    request.api,
                    &format!("cannot set a request header: {}", e.0),
                );
            }
        }
        let decision = if self.audit.outcome.rewrote() {
            Decision::Masked
        } else {
            Decision::Allowed
        };
        self.set_decision(host, decision);
        self.audit.model = authorized.model.clone();
        self.phase = Phase::Forwarded {
            authorized,
            response: Response::Awaited,
        };
        Flow::Continue
    }

    // ---------------------------------------------------------------------
    // The response's way

    /// How to handle the response body, from its headers: `None` when the
    /// exchange answered instead.
    fn plan_response(
        &mut self,
        host: &mut dyn Host,
        authorized: &Authorized,
    ) -> (Option<Response>, Flow) {
        let Authorized {
            request,
            identity,
            model,
        } = authorized;
        let (Some(policy), Some(provider)) = (
            request.policy.clone(),
            request.config.providers.get(request.provider),
        ) else {
            return (Some(Response::Pass), Flow::Continue);
        };
        if request.endpoint.answers_metadata_only() {
            return (Some(Response::Pass), Flow::Continue);
        }
        let active = policy.active_rules(
            identity,
            &provider.name,
            model.as_deref(),
            Direction::Response,
        );
        if provider.api == Api::Mcp {
            let answer = mcp::Answer {
                policy: policy.clone(),
                identity: identity.clone(),
                server: provider.name.clone(),
                active,
                key: request.config.hash_key.clone(),
                vault: Vault::default(),
                request_id: self.rpc_id.clone(),
                outcome: Outcome::default(),
                entries: Vec::new(),
                blocked: None,
            };
            return self.plan_rpc_response(host, answer);
        }
        let shape = Shape::of(provider.api, &request.upstream_path);
        let governs_calls =
            shape.has_tool_calls() && policy.governs_calls(identity, model.as_deref());
        if active.is_empty() && self.vault.is_empty() && !governs_calls {
            return (Some(Response::Pass), Flow::Continue);
        }
        let content_type = host.response_header("content-type").unwrap_or_default();
        let content_type = String::from_utf8_lossy(&content_type).to_ascii_lowercase();
        let api_of_provider = provider.api;
        if content_type.starts_with("text/event-stream") {
            let api = match shape {
                Shape::OpenAiChat => StreamApi::OpenAiChat,
                Shape::OpenAiCompletions => StreamApi::OpenAiCompletions,
                Shape::OpenAiResponses => StreamApi::OpenAiResponses,
                Shape::AnthropicMessages => StreamApi::Anthropic,
                // Streams of unknown shape cannot be rewritten safely.
                Shape::OpenAiEmbeddings | Shape::Unknown => {
                    return (
                        None,
                        self.block_response(host, api_of_provider, Reason::StreamUnknown),
                    )
                }
            };
            let vault = std::mem::take(&mut self.vault);
            let records = policy.record == Record::Masked;
            let mut masking = MaskingStream::new(
                policy.clone(),
                active,
                vault,
                request.config.hash_key.clone(),
            );
            if records {
                masking = masking.with_transcript(RECORDED_STREAM_TEXT);
            }
            let text = SharedMasking::new(masking);
            let mut rewriter = StreamRewriter::new(api, Box::new(text.clone()));
            let calls = SharedCalls::default();
            if governs_calls {
                rewriter = rewriter.judging_calls(Box::new(StreamCallJudge {
                    policy: policy.clone(),
                    identity: identity.clone(),
                    model: model.clone(),
                    calls: calls.clone(),
                    can_hold: request.config.control_plane.is_some(),
                }));
            }
            let _ = host.set_response_header("content-length", None);
            return (
                Some(Response::Stream(Box::new(rewriter), text, calls)),
                Flow::Continue,
            );
        }
        // A body the filter cannot read (binary, compressed) while rules
        // apply to it: refused rather than passed uninspected.
        if host.response_header("content-encoding").is_some() {
            return (
                None,
                self.block_response(host, api_of_provider, Reason::ResponseUninspectable),
            );
        }
        let kind = if content_type.starts_with("application/json") {
            WholeBody::Json
        } else if content_type.starts_with("text/") {
            WholeBody::Text
        } else {
            return (
                None,
                self.block_response(host, api_of_provider, Reason::ResponseUninspectable),
            );
        };
        // Held until the body is read, so a block can still change the status.
        (
            Some(Response::Whole {
                kind,
                active,
                calls: governs_calls,
                size: 0,
            }),
            Flow::Pause,
        )
    }

    /// How to handle an MCP server's answer: each JSON-RPC message in it
    /// inspected, whether it comes whole or as an event stream.
    fn plan_rpc_response(
        &mut self,
        host: &mut dyn Host,
        mut answer: mcp::Answer,
    ) -> (Option<Response>, Flow) {
        // Any answer may list tools (a server replays a list on a GET
        // too): only a caller who may use every tool needs none filtered.
        let lists_tools = answer.policy.governs_calls(&answer.identity, None);
        if answer.active.is_empty() && self.vault.is_empty() && !lists_tools {
            return (Some(Response::Pass), Flow::Continue);
        }
        answer.vault = std::mem::take(&mut self.vault);
        let content_type = host.response_header("content-type").unwrap_or_default();
        let content_type = String::from_utf8_lossy(&content_type).to_ascii_lowercase();
        if content_type.starts_with("text/event-stream") {
            let _ = host.set_response_header("content-length", None);
            let stream = mcp::MessageStream::new(answer);
            return (Some(Response::RpcStream(Box::new(stream))), Flow::Continue);
        }
        if host.response_header("content-encoding").is_some() {
            return (
                None,
                self.block_response(host, Api::Mcp, Reason::ResponseUninspectable),
            );
        }
        if content_type.starts_with("application/json") {
            let answer = Box::new(answer);
            return (Some(Response::Rpc { answer, size: 0 }), Flow::Pause);
        }
        // The server's plain-text errors (a 405 for a GET it does not
        // stream on) are text like any other.
        if content_type.starts_with("text/") {
            let response = Response::Whole {
                kind: WholeBody::Text,
                active: answer.active,
                calls: false,
                size: 0,
            };
            self.vault = answer.vault;
            return (Some(response), Flow::Pause);
        }
        (
            None,
            self.block_response(host, Api::Mcp, Reason::ResponseUninspectable),
        )
    }

    /// An MCP server's JSON answer, read whole: inspected, replaced when
    /// the policy changed it, withheld when it is not one message.
    fn inspect_rpc_answer(
        &mut self,
        host: &mut dyn Host,
        size: usize,
        mut answer: Box<mcp::Answer>,
    ) -> Flow {
        let inspected = host
            .response_body(size)
            .map_err(|_| ())
            .and_then(|body| answer.inspect_body(&body).map_err(|_| ()));
        self.record_answer(host, &mut answer);
        match inspected {
            Err(()) => self.block_response(host, Api::Mcp, Reason::ResponseUninspectable),
            Ok(None) => Flow::Continue,
            Ok(Some(new_body)) => {
                if host.set_response_body(size, &new_body).is_err() {
                    return self.block_response(host, Api::Mcp, Reason::ResponseUninspectable);
                }
                let _ = host.set_response_header(
                    "content-length",
                    Some(new_body.len().to_string().as_bytes()),
                );
                Flow::Continue
            }
        }
    }

    /// An MCP event stream ended (or was ended): what it found.
    fn end_rpc_stream(&mut self, host: &mut dyn Host, stream: &mut mcp::MessageStream) {
        let ended = stream.ended();
        self.record_answer(host, &mut stream.answer);
        if let Some(reason) = ended {
            self.set_decision(host, Decision::Blocked);
            self.set_reason(host, reason);
        }
    }

    /// What the policy found in an MCP answer, for the audit record; a
    /// message it stopped makes the exchange `blocked`.
    fn record_answer(&mut self, host: &mut dyn Host, answer: &mut mcp::Answer) {
        let removed = answer
            .entries
            .iter()
            .any(|e| e.decision == calls::ToolDecision::Removed);
        self.record_outcome(host, std::mem::take(&mut answer.outcome));
        self.record_tools(host, std::mem::take(&mut answer.entries));
        if removed && self.audit.decision == Decision::Allowed {
            self.set_decision(host, Decision::Masked);
        }
        if answer.blocked.take().is_some() {
            self.set_decision(host, Decision::Blocked);
            self.set_reason(host, Reason::Blocked);
        }
    }

    /// Answers with a gateway error instead of the provider's response (whose
    /// headers have not gone downstream yet).
    fn block_response(&mut self, host: &mut dyn Host, api: Api, code: Reason) -> Flow {
        let message = match code {
            Reason::Blocked => "the provider's response was blocked by the gateway's policy",
            _ => "the provider's response cannot be inspected, so the gateway withholds it",
        };
        self.reply(
            host,
            Rejection::new(api, ErrorKind::PermissionDenied, code, message),
        )
    }

    fn inspect_whole_response(
        &mut self,
        host: &mut dyn Host,
        size: usize,
        kind: WholeBody,
        active: &ActiveRules,
        governs_calls: bool,
    ) -> Flow {
        let Phase::Forwarded { authorized, .. } = &self.phase else {
            return Flow::Continue;
        };
        let request = &authorized.request;
        let (api, config, policy) = (request.api, request.config.clone(), request.policy.clone());
        let Some(policy) = policy else {
            return Flow::Continue;
        };
        let shape = Shape::of(api, &request.upstream_path);
        let (identity, model) = (authorized.identity.clone(), authorized.model.clone());
        let body = match host.response_body(size) {
            Ok(b) => b,
            Err(_) => return self.block_response(host, api, Reason::ResponseUninspectable),
        };
        let record = policy.record == Record::Masked;
        let mut calls = calls::Calls::default();
        // Calls that need an approval are held for one where a control
        // plane can give it; the answer as the client would get it is kept.
        let can_hold = config.control_plane.is_some();
        let mut held_doc = None;
        let inspected = match kind {
            WholeBody::Json => {
                let mut judge = |doc: &mut Value| {
                    if !governs_calls {
                        return false;
                    }
                    calls = calls::govern_calls(
                        &policy,
                        &identity,
                        model.as_deref(),
                        shape,
                        doc,
                        can_hold,
                    );
                    if !calls.held.is_empty() {
                        held_doc = Some(doc.clone());
                    }
                    calls.changed
                };
                inspect_json_then(
                    &policy,
                    active,
                    Direction::Response,
                    &body,
                    &mut self.vault,
                    &config.hash_key,
                    record,
                    &mut judge,
                )
            }
            WholeBody::Text => inspect_text(
                &policy,
                active,
                Direction::Response,
                &body,
                &mut self.vault,
                &config.hash_key,
                record,
            ),
        };
        let calls_changed = calls.changed;
        self.record_outcome(host, std::mem::take(&mut calls.outcome));
        if calls.held.is_empty() {
            self.record_tools(host, std::mem::take(&mut calls.entries));
        }
        if calls_changed && self.audit.decision == Decision::Allowed {
            self.set_decision(host, Decision::Masked);
        }
        let inspected = match inspected {
            Ok(i) => i,
            // Not the JSON or UTF-8 text it was declared as: withheld.
            Err(_) => return self.block_response(host, api, Reason::ResponseUninspectable),
        };
        // Only the response's own findings can stop the response (the
        // request's were decided before it went upstream).
        let stop = inspected.outcome.stop();
        if let Some(usage) = &inspected.usage {
            host.set_filter_state(state::USAGE, usage.to_string().as_bytes());
            self.audit.usage = Some(usage.clone());
        }
        if stop.is_none() {
            self.audit.recorded_response = inspected.recorded;
        }
        self.record_outcome(host, inspected.outcome);
        if let Some((rule, _)) = stop {
            host.log(
                Level::Info,
                &format!("warden: response blocked by rule '{rule}'"),
            );
            return self.block_response(host, api, Reason::Blocked);
        }
        if let Some(doc) = held_doc {
            let hold = Box::new(CallHold {
                shape,
                doc,
                size,
                refused: calls.refused,
                held: calls.held.into(),
                entries: calls.entries,
                flow: None,
                approved: false,
            });
            return self.ask_call_approval(host, hold);
        }
        if let Some(new_body) = inspected.body {
            if host.set_response_body(size, &new_body).is_err() {
                return self.block_response(host, api, Reason::ResponseUninspectable);
            }
            let _ = host.set_response_header(
                "content-length",
                Some(new_body.len().to_string().as_bytes()),
            );
        }
        Flow::Continue
    }

    /// Asks for the approval of the first held call of a whole answer
    /// (the answer stays held), or, once none is left, sends the answer.
    fn ask_call_approval(&mut self, host: &mut dyn Host, mut hold: Box<CallHold>) -> Flow {
        loop {
            let Some(held) = hold.held.front() else {
                return self.release_calls(host, *hold);
            };
            self.audit.asked_approval = true;
            let started = self.start_call_flow(host, held);
            let (flow, call) = match started {
                Ok(started) => started,
                Err(why) => {
                    self.settle_held_call(&mut hold, Err(why));
                    continue;
                }
            };
            match self.dispatch_approval_call(host, &call) {
                Some(token) => {
                    hold.flow = Some((flow, token));
                    self.set_response(Response::HoldingCalls(hold));
                    return Flow::Pause;
                }
                None => {
                    let mut flow = flow;
                    let next = flow.on_answer(None, &[], host.now_millis());
                    if let Some(flow) = self.after_call_answer(host, &mut hold, flow, next) {
                        hold.flow = Some(flow);
                        self.set_response(Response::HoldingCalls(hold));
                        return Flow::Pause;
                    }
                }
            }
        }
    }

    /// The approval request for a held call: bound to the call, shown to
    /// approvers masked by the policy's rules.
    fn start_call_flow(
        &mut self,
        host: &mut dyn Host,
        held: &calls::HeldCall,
    ) -> Result<(Box<ApprovalFlow>, Call), String> {
        let Phase::Forwarded { authorized, .. } = &self.phase else {
            return Err("the exchange is over".into());
        };
        let request = &authorized.request;
        let (Some(policy), Some(cp)) = (&request.policy, request.config.control_plane.as_ref())
        else {
            return Err("no control plane is configured".into());
        };
        let Some(spec) = policy
            .rules
            .iter()
            .find(|r| r.name == held.rule)
            .map(|r| &r.approval)
        else {
            return Err("the rule is not in the policy".into());
        };
        let binding = held.binding();
        // What approvers read passes the rules of both directions again,
        // never putting a value back: one the answer carries to its client
        // (a tokenized value the vault restored, one a request rule caught
        // in the prompt) is shown as its placeholder.
        let mut shown = binding.clone();
        for direction in [Direction::Request, Direction::Response] {
            let active = policy.active_rules(
                &authorized.identity,
                request.provider_name(),
                authorized.model.as_deref(),
                direction,
            );
            crate::inspect::apply::mask_for_display(
                policy,
                &active,
                &mut shown,
                &request.config.hash_key,
            );
        }
        let ask = ApprovalRequest::new(
            &authorized.identity,
            request.provider_name(),
            authorized.model.as_deref(),
            &self.audit.route,
            &held.rule,
            spec,
            policy.published_version,
            crate::protocol::canonical_sha256(&binding),
            format!(
                "{} {}",
                held.tool,
                crate::protocol::canonical_json(shown.get("arguments").unwrap_or(&Value::Null))
            ),
        );
        let (flow, call) = ApprovalFlow::start(
            request.api,
            &ask,
            spec.timeout_seconds,
            cp.timeout_ms,
            host.now_millis(),
        );
        Ok((Box::new(flow.for_call(&held.tool)), call))
    }

    /// Sends a call of an approval flow for the response; its token, or
    /// None if it could not be sent.
    fn dispatch_approval_call(&mut self, host: &mut dyn Host, call: &Call) -> Option<u32> {
        let Phase::Forwarded { authorized, .. } = &self.phase else {
            return None;
        };
        let config = authorized.request.config.clone();
        dispatch_approval_call(host, config.control_plane.as_ref()?, call)
    }

    /// The control plane answered about a held call.
    fn on_call_approval_answer(
        &mut self,
        host: &mut dyn Host,
        mut hold: Box<CallHold>,
        mut flow: Box<ApprovalFlow>,
        status: Option<u32>,
        body: &[u8],
    ) -> Flow {
        let next = flow.on_answer(status, body, host.now_millis());
        if let Some(flow) = self.after_call_answer(host, &mut hold, flow, next) {
            hold.flow = Some(flow);
            self.set_response(Response::HoldingCalls(hold));
            return Flow::Pause;
        }
        self.ask_call_approval(host, hold)
    }

    /// What an approval flow's next step means for the held call: another
    /// call in flight (returned), or the call decided.
    fn after_call_answer(
        &mut self,
        host: &mut dyn Host,
        hold: &mut CallHold,
        flow: Box<ApprovalFlow>,
        next: Next,
    ) -> Option<(Box<ApprovalFlow>, u32)> {
        match self.step_call_approval(host, flow, next) {
            FlowStep::Asking(flow, token) => Some((flow, token)),
            FlowStep::Decided(decided) => {
                self.settle_held_call(hold, decided);
                None
            }
        }
    }

    /// Follows an approval flow of a held call: the next call to the
    /// control plane (one that cannot be sent counts as unanswered), or
    /// its end.
    fn step_call_approval(
        &mut self,
        host: &mut dyn Host,
        mut flow: Box<ApprovalFlow>,
        mut next: Next,
    ) -> FlowStep {
        loop {
            if let Some(id) = flow.approval_id() {
                host.set_filter_state(state::APPROVAL_ID, id.as_bytes());
                self.audit.approval_id = Some(id.to_owned());
            }
            match next {
                Next::Call(call) => match self.dispatch_approval_call(host, &call) {
                    Some(token) => return FlowStep::Asking(flow, token),
                    None => next = flow.on_answer(None, &[], host.now_millis()),
                },
                Next::Forward { .. } => return FlowStep::Decided(Ok(())),
                Next::Reply { rejection, .. } => {
                    return FlowStep::Decided(Err(rejection.error.message))
                }
            }
        }
    }

    /// Asks for the approvals of a stream's held calls, one at a time; the
    /// bytes that calls decided at once (a control plane out of reach)
    /// released.
    fn ask_stream_approvals(
        &mut self,
        host: &mut dyn Host,
        rewriter: &mut StreamRewriter,
        calls: &SharedCalls,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        if rewriter.blocked().is_some() {
            // The stream was stopped: its held calls will never be sent,
            // so no approver is asked about them (they stay `held`).
            calls.0.borrow_mut().held.clear();
            return out;
        }
        while self.stream_holds.asking.is_none() {
            let next = {
                let mut calls = calls.0.borrow_mut();
                (!calls.held.is_empty()).then(|| calls.held.remove(0))
            };
            let Some(held) = next else {
                break;
            };
            self.audit.asked_approval = true;
            let step = match self.start_call_flow(host, &held) {
                Err(why) => FlowStep::Decided(Err(why)),
                Ok((mut flow, call)) => match self.dispatch_approval_call(host, &call) {
                    Some(token) => FlowStep::Asking(flow, token),
                    None => {
                        let next = flow.on_answer(None, &[], host.now_millis());
                        self.step_call_approval(host, flow, next)
                    }
                },
            };
            out.extend(self.stream_call_step(rewriter, calls, held, step));
        }
        out
    }

    /// A stream's held call after a step of its approval: still asking
    /// (kept), or decided (the gate told; the bytes it released).
    fn stream_call_step(
        &mut self,
        rewriter: &mut StreamRewriter,
        calls: &SharedCalls,
        held: calls::HeldCall,
        step: FlowStep,
    ) -> Vec<u8> {
        let decided = match step {
            FlowStep::Asking(flow, token) => {
                self.stream_holds.asking = Some((held, flow, token));
                return Vec::new();
            }
            FlowStep::Decided(decided) => decided,
        };
        let calls::HeldAt::Stream(id) = held.at else {
            return Vec::new();
        };
        if rewriter.blocked().is_some() {
            // Stopped meanwhile: nothing of the call goes out, whatever
            // was decided.
            return Vec::new();
        }
        let mut shared = calls.0.borrow_mut();
        let (decision, verdict) = match decided {
            Ok(()) => (calls::ToolDecision::Approved, Verdict::Allow),
            Err(why) => {
                shared.changed = true;
                let text = calls::held_text(&held.tool, &held.rule, &why);
                (calls::ToolDecision::Refused, Verdict::Refuse(text))
            }
        };
        if let Some(entry) = shared.entries.get_mut(held.entry) {
            entry.decision = decision;
        }
        drop(shared);
        rewriter.decide_call(id, verdict)
    }

    /// The control plane answered about a stream's held call: the gate
    /// releases what it may; a stream whose body ended goes out once no
    /// call waits.
    fn on_stream_approval_answer(&mut self, host: &mut dyn Host, body_size: usize) {
        let Some((held, mut flow, _)) = self.stream_holds.asking.take() else {
            return;
        };
        let (status, body) = host.call_response(body_size);
        let Phase::Forwarded { response, .. } = &mut self.phase else {
            return;
        };
        let Response::Stream(mut rewriter, text, calls) =
            std::mem::replace(response, Response::Pass)
        else {
            // The stream ended meanwhile (a reset, trailers): nothing to release.
            return;
        };
        let next = flow.on_answer(status, &body, host.now_millis());
        let step = self.step_call_approval(host, flow, next);
        let mut out = self.stream_call_step(&mut rewriter, &calls, held, step);
        out.extend(self.ask_stream_approvals(host, &mut rewriter, &calls));
        let Some((held_len, mut ended)) = self.stream_holds.paused_end.take() else {
            self.stream_holds.backlog.extend(out);
            self.set_response(Response::Stream(rewriter, text, calls));
            return;
        };
        ended.extend(out);
        if rewriter.awaiting_calls() {
            self.stream_holds.paused_end = Some((held_len, ended));
            self.set_response(Response::Stream(rewriter, text, calls));
            return;
        }
        self.set_response(Response::Closed);
        if host.set_response_body(held_len, &ended).is_err() {
            host.log(
                Level::Error,
                "warden: cannot write a held stream's end; it is cut",
            );
            ended.clear();
        }
        self.end_stream(host, &rewriter, &text, &calls);
        if let Err(e) = host.resume_response() {
            host.log(
                Level::Error,
                &format!("warden: cannot resume a response: {}", e.0),
            );
        }
    }

    /// The first held call decided: let through, or replaced by a sentence
    /// that says why not.
    fn settle_held_call(&mut self, hold: &mut CallHold, decided: Result<(), String>) {
        let Some(held) = hold.held.pop_front() else {
            return;
        };
        let decision = match decided {
            Ok(()) => {
                hold.approved = true;
                calls::ToolDecision::Approved
            }
            Err(why) => {
                if let calls::HeldAt::Answer(at) = held.at {
                    let text = calls::held_text(&held.tool, &held.rule, &why);
                    hold.refused.push((at, text));
                }
                calls::ToolDecision::Refused
            }
        };
        if let Some(entry) = hold.entries.get_mut(held.entry) {
            entry.decision = decision;
        }
    }

    /// Every held call is decided: the answer goes out with the refused
    /// calls replaced.
    fn release_calls(&mut self, host: &mut dyn Host, hold: CallHold) -> Flow {
        let api = self.api();
        let CallHold {
            shape,
            mut doc,
            size,
            refused,
            entries,
            approved,
            ..
        } = hold;
        self.set_response(Response::Pass);
        self.record_tools(host, entries);
        if !refused.is_empty() {
            crate::inspect::tools::refuse_calls(shape, &mut doc, &refused);
            if let Some(recorded) = self.audit.recorded_response.as_mut() {
                crate::inspect::tools::refuse_calls(shape, recorded, &refused);
            }
        }
        let body = crate::inspect::body::to_json(&doc);
        if host.set_response_body(size, &body).is_err() {
            return self.block_response(host, api, Reason::ResponseUninspectable);
        }
        let _ = host.set_response_header("content-length", Some(body.len().to_string().as_bytes()));
        // As for a stream's calls ([`Exchange::end_stream`]).
        if !refused.is_empty() && self.audit.decision == Decision::Allowed {
            self.set_decision(host, Decision::Masked);
        } else if approved && refused.is_empty() {
            self.set_decision(host, Decision::Approved);
        }
        Flow::Continue
    }

    /// How the rest of a forwarded exchange's response is handled, after a
    /// step that took it out of the phase.
    fn set_response(&mut self, next: Response) {
        if let Phase::Forwarded { response, .. } = &mut self.phase {
            *response = next;
        }
    }

    /// A rewritten stream ended: its usage, record and findings.
    fn end_stream(
        &mut self,
        host: &mut dyn Host,
        rewriter: &StreamRewriter,
        text: &SharedMasking,
        calls: &SharedCalls,
    ) {
        if let Some(usage) = rewriter.usage() {
            host.set_filter_state(state::USAGE, usage.to_string().as_bytes());
            self.audit.usage = Some(usage.clone());
        }
        self.audit.recorded_response = stream_record(rewriter, text);
        self.record_outcome(host, text.outcome());
        let calls = calls.take();
        let approved = calls
            .entries
            .iter()
            .any(|e| e.decision == calls::ToolDecision::Approved);
        self.record_outcome(host, calls.outcome);
        self.record_tools(host, calls.entries);
        if calls.changed && self.audit.decision == Decision::Allowed {
            self.set_decision(host, Decision::Masked);
        } else if approved && !calls.changed {
            self.set_decision(host, Decision::Approved);
        }
        if let Some(block) = rewriter.blocked() {
            // The rest of the answer was withheld (an error event ended
            // it): the record says so, as for a whole answer blocked.
            self.set_decision(host, Decision::Blocked);
            self.set_reason(host, block.reason);
        }
    }

    // ---------------------------------------------------------------------
    // Answers and the audit record

    fn set_decision(&mut self, host: &mut dyn Host, decision: Decision) {
        self.audit.decision = decision;
        host.set_filter_state(state::DECISION, decision.as_str().as_bytes());
    }

    /// Adds what the rules found, for the access log; a forwarded request
    /// whose answer the rules rewrote is `masked`, not `allowed`.
    fn record_outcome(&mut self, host: &mut dyn Host, outcome: Outcome) {
        self.audit.outcome.merge(outcome);
        let summary = self.audit.outcome.summary();
        if !summary.is_empty() {
            host.set_filter_state(state::RULES, summary.as_bytes());
        }
        if self.audit.decision == Decision::Allowed && self.audit.outcome.rewrote() {
            self.set_decision(host, Decision::Masked);
        }
    }

    /// Adds what the policy did to tools, for the access log.
    fn record_tools(&mut self, host: &mut dyn Host, entries: Vec<ToolEntry>) {
        if entries.is_empty() {
            return;
        }
        self.audit.tools.extend(entries);
        host.set_filter_state(state::TOOLS, calls::summary(&self.audit.tools).as_bytes());
    }

    fn set_reason(&mut self, host: &mut dyn Host, reason: Reason) {
        self.audit.reason = Some(reason);
        host.set_filter_state(state::REASON, reason.as_str().as_bytes());
    }

    /// Answers the request in the provider's format; nothing goes upstream.
    fn reply(&mut self, host: &mut dyn Host, rejection: Rejection) -> Flow {
        self.set_decision(host, rejection.decision());
        self.set_reason(host, rejection.error.code);
        let mut local = rejection.error.render_rpc(rejection.api, &self.rpc_id);
        if let (Api::Mcp, ErrorKind::Unauthenticated, Some(url)) = (
            rejection.api,
            rejection.error.kind,
            self.resource_metadata.as_deref(),
        ) {
            // The MCP authorization spec: a 401 says where the resource's
            // metadata is, from which a client finds the IdP.
            for (name, value) in &mut local.headers {
                if name == "www-authenticate" {
                    *value = format!("Bearer resource_metadata=\"{url}\", error=\"invalid_token\"");
                }
            }
        }
        self.send_local(host, local)
    }

    /// Sends a reply of the gateway's own; nothing goes upstream.
    fn send_local(&mut self, host: &mut dyn Host, local: LocalReply) -> Flow {
        let mut headers: Vec<(&str, &str)> = local
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        headers.push((MARK_HEADER, crate::VERSION));
        if let Err(e) = host.send_reply(local.status, &headers, &local.body) {
            host.log(
                Level::Error,
                &format!("warden: cannot send a local reply: {}", e.0),
            );
        }
        self.phase = Phase::Answered;
        Flow::Pause
    }

    fn internal_error(&mut self, host: &mut dyn Host, api: Api, what: &str) -> Flow {
        host.log(Level::Error, &format!("warden: {what}"));
        self.reply(host, internal(api))
    }

    /// The session record of this exchange for the control plane, if the
    /// policy records sessions and a control plane is configured.
    fn session_record(&mut self, host: &mut dyn Host) -> Option<Vec<u8>> {
        if !self.audit.records_to_control_plane {
            return None;
        }
        let policy = self.audit.policy.clone()?;
        if policy.record == Record::Off {
            return None;
        }
        let id = host.request_id().filter(|v| !v.is_empty())?;
        let status = host.response_status();
        let audit = &mut self.audit;
        let forwarded = audit.decision.forwarded();
        let masked = policy.record == Record::Masked;
        let identity = audit.identity.as_ref();
        let record = SessionRecord {
            id,
            time: crate::protocol::rfc3339_millis(host.now_millis()),
            issuer: identity.map(|i| i.issuer.clone()),
            subject: identity.map(|i| i.subject.clone()),
            groups: identity.map(|i| i.groups.clone()).unwrap_or_default(),
            provider: audit.provider.clone(),
            model: audit.model.clone(),
            route: audit.route.clone(),
            policy_version: policy.published_version.unwrap_or(0),
            decision: audit.decision,
            reason: audit.reason,
            rules: audit.outcome.summary(),
            tools: (!audit.tools.is_empty()).then(|| calls::summary(&audit.tools)),
            mcp_method: audit.mcp_method.clone(),
            approval_id: audit.approval_id.clone(),
            status,
            usage: audit.usage.take(),
            record: policy.record,
            // A refused request's body may hold the value that refused it
            // (block and approval rules do not rewrite).
            request: if masked && forwarded {
                audit.recorded_request.take()
            } else {
                None
            },
            response: if masked {
                audit.recorded_response.take()
            } else {
                None
            },
        };
        serde_json::to_vec(&record).ok()
    }
}

/// A chunk of a stream the gateway rewrites, read; `None` when the host
/// cannot give it: never passed on unread, it is replaced by nothing and the
/// stream ends here.
fn stream_chunk(host: &mut dyn Host, size: usize) -> Option<Vec<u8>> {
    match host.response_body(size) {
        Ok(chunk) => Some(chunk),
        Err(e) => {
            host.log(
                Level::Error,
                &format!(
                    "warden: cannot read a stream chunk, ending the stream: {}",
                    e.0
                ),
            );
            let _ = host.set_response_body(size, &[]);
            None
        }
    }
}

/// Puts what the gateway sends in place of a stream chunk.
fn write_stream_chunk(host: &mut dyn Host, size: usize, out: &[u8]) {
    if let Err(e) = host.set_response_body(size, out) {
        host.log(
            Level::Error,
            &format!("warden: cannot write a stream chunk: {}", e.0),
        );
    }
}

fn internal(api: Api) -> Rejection {
    Rejection::new(
        api,
        ErrorKind::Unavailable,
        Reason::Internal,
        "the gateway could not process the request",
    )
}

/// The session record's `response` for a stream, from the transcript its
/// masking kept (none unless the policy records masked sessions).
fn stream_record(rewriter: &StreamRewriter, text: &SharedMasking) -> Option<Value> {
    text.take_transcript()
        .map(|t| t.to_record(rewriter.api(), rewriter.events()))
}

/// A policy-controlled name made safe for a stat name: `[a-z0-9_-]` only.
/// The provider segment of `warden.requests.<provider>.<decision>` for a
/// request that matched no provider (refused before routing).
pub const NO_PROVIDER: &str = "none";

pub fn stat_segment(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Sends a call of an approval flow to the control plane; its token, or
/// None if it could not be sent (logged; the flow takes it as unanswered).
fn dispatch_approval_call(
    host: &mut dyn Host,
    cp: &crate::control::ControlPlane,
    call: &Call,
) -> Option<u32> {
    let sent = host.dispatch(
        &cp.cluster,
        cp.headers(call.method, &call.path),
        call.body.as_deref(),
        call.timeout_ms,
    );
    match sent {
        Ok(token) => Some(token),
        Err(e) => {
            host.log(
                Level::Warn,
                &format!(
                    "warden: cannot call the control plane for an approval: {}",
                    e.0
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests;
