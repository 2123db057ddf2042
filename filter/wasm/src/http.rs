//! One request: a small state machine over the engine's request steps.
//!
//! ```text
//! headers ── route ── authenticate ─┬─ verified ── body? ─┬─ no ── authorize ── forward
//!                                   │                     └─ yes: wait for the whole body,
//!                                   │                        read the model, authorize, forward
//!                                   ├─ unknown kid: fetch keys (paused), then authenticate once more
//!                                   └─ rejected: local reply in the provider's format
//!
//! inspect ── approval rule? ── ask the control plane (paused): hold mode long-polls
//!                              until decided; approved -> forward, else a local reply
//! ```
//!
//! Headers are held (`Action::Pause`) until the decision, so a denied request
//! sends zero bytes upstream.
//!
//! Every way a request can end is an end of its body: data with
//! `end_of_stream`, or trailers (HTTP/2). Each callback answers `Continue`
//! only once the request is `Forwarded`, i.e. a decision let it go; in every
//! other phase it pauses (what Envoy does with a callback the filter does not
//! implement is to continue, which is why the trailers callbacks exist).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use warden_engine::auth::Identity;
use warden_engine::config::FilterConfig;
use warden_engine::control::{ApprovalFlow, ApprovalRequest, Call, Next, SessionRecord};
use warden_engine::endpoint::{endpoint_of, Endpoint};
use warden_engine::headers::Headers;
use warden_engine::inspect::apply::{
    inspect_json, inspect_text, MaskingStream, Outcome, SharedMasking,
};
use warden_engine::inspect::body::Shape;
use warden_engine::inspect::mask::{Action as RuleAction, Vault};
use warden_engine::inspect::sse::{StreamApi, StreamRewriter};
use warden_engine::policy::{ActiveRules, Direction, Policy, Record};
use warden_engine::provider::{Api, ErrorKind, GatewayError};
use warden_engine::request::{self, AuthStep, Rejection};

use crate::{host, keys, Refetch, Vm};

/// The decision a request is recorded with until one is made: one that ends
/// before a decision (the client left, the stream was reset) says so, and
/// never looks like a success.
const UNDECIDED: &str = "undecided";

/// Header set on every response the filter handled (proxied or answered).
const MARK_HEADER: &str = "x-warden";

/// The most streamed text one session record keeps (masked, per response).
const RECORDED_STREAM_TEXT: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    /// Paused while the issuer's keys are fetched for an unknown `kid`.
    WaitingForKeys {
        call: u32,
        issuer: usize,
    },
    /// Paused until the whole body has arrived.
    WaitingForBody,
    /// Paused while the control plane decides an approval.
    WaitingForApproval {
        call: u32,
    },
    Forwarded,
    Answered,
}

pub struct WardenHttp {
    vm: Option<Rc<RefCell<Vm>>>,
    config: Option<Rc<FilterConfig>>,
    /// The policy this request started under; it finishes under it too.
    policy: Option<Rc<Policy>>,
    provider: usize,
    phase: Phase,
    identity: Option<Identity>,
    /// When the request's headers arrived (seconds since the epoch).
    started_at: u64,
    /// Whether a body follows the headers.
    expects_body: bool,
    /// The method takes no body (GET, DELETE, ...): one that comes anyway
    /// is refused, an empty one is none.
    bodiless_method: bool,
    /// The provider endpoint the path and method reach.
    endpoint: Endpoint,
    /// Body bytes buffered so far, and whether they are all of it.
    body_size: usize,
    body_complete: bool,
    /// Response body bytes buffered so far (a JSON response read whole).
    response_body_size: usize,
    model: Option<String>,
    /// The request headers as the client sent them, read once.
    headers: Rc<[(String, Vec<u8>)]>,
    /// The upstream path (after the route prefix), for the API shape.
    upstream_path: String,
    /// The same without its query, for the audit record and approvals.
    route: String,
    /// Values `tokenize` took out of the prompt, to put back in the answer.
    vault: Vault,
    /// What the rules found, request and response together.
    outcome: Outcome,
    response: ResponseMode,
    /// The decision recorded for the audit trail and the counters.
    decision: &'static str,
    /// The approval this request waits for, if a rule asked for one.
    approval: Option<ApprovalFlow>,
    /// Why the gateway answered itself, if it did.
    reason: Option<&'static str>,
    /// The provider's token usage, when it reported one.
    usage: Option<serde_json::Value>,
    /// With `record: masked`: the bodies after masking, for the session.
    recorded_request: Option<serde_json::Value>,
    recorded_response: Option<serde_json::Value>,
}

/// What a body read whole is.
#[derive(Clone, Copy)]
enum WholeBody {
    Json,
    /// `text/*` (not an event stream): one text.
    Text,
}

/// How the response body is handled.
enum ResponseMode {
    /// Nothing to inspect: bytes pass as they come.
    Pass,
    /// A JSON or text body, read whole, inspected, replaced.
    Whole {
        kind: WholeBody,
        active: ActiveRules,
    },
    /// An event stream, rewritten event by event (the handle reads what the
    /// rules found once it ends).
    Stream(Box<StreamRewriter>, SharedMasking),
    /// A stream the filter ended early (a chunk it could not read): later
    /// chunks are dropped.
    Closed,
}

impl WardenHttp {
    pub fn new(vm: Option<Rc<RefCell<Vm>>>) -> Self {
        Self {
            vm,
            config: None,
            policy: None,
            provider: 0,
            phase: Phase::Start,
            identity: None,
            started_at: 0,
            expects_body: false,
            bodiless_method: false,
            endpoint: endpoint_of(Api::Openai, b"", ""),
            body_size: 0,
            body_complete: false,
            response_body_size: 0,
            model: None,
            headers: Rc::from(Vec::new()),
            upstream_path: String::new(),
            route: String::new(),
            vault: Vault::default(),
            outcome: Outcome::default(),
            response: ResponseMode::Pass,
            decision: UNDECIDED,
            approval: None,
            reason: None,
            usage: None,
            recorded_request: None,
            recorded_response: None,
        }
    }

    fn set_decision(&mut self, decision: &'static str) {
        self.decision = decision;
        let _ = host::set_filter_state("warden.decision", decision.as_bytes());
    }

    /// The session record of this request for the control plane, if the
    /// policy records sessions and a control plane is configured.
    fn session_record(&mut self) -> Option<Vec<u8>> {
        let config = self.config.as_ref()?;
        config.control_plane.as_ref()?;
        let policy = self.policy.as_ref()?;
        if policy.record == Record::Off {
            return None;
        }
        let id = host::property(&["request", "id"])
            .and_then(|v| String::from_utf8(v).ok())
            .filter(|v| !v.is_empty())?;
        let status = host::property(&["response", "code"])
            .and_then(|v| v.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)));
        let forwarded = matches!(self.decision, "allowed" | "masked" | "approved");
        let masked = policy.record == Record::Masked;
        let identity = self.identity.as_ref();
        let record = SessionRecord {
            id,
            time: warden_engine::control::rfc3339_millis(host::now_millis()),
            issuer: identity.map(|i| i.issuer.clone()),
            subject: identity.map(|i| i.subject.clone()),
            groups: identity.map(|i| i.groups.clone()).unwrap_or_default(),
            provider: config.providers.get(self.provider).map(|p| p.name.clone()),
            model: self.model.clone(),
            route: self.route.clone(),
            policy_version: policy.published_version.unwrap_or(0),
            decision: self.decision.to_owned(),
            reason: self.reason.map(str::to_owned),
            rules: self.outcome.summary(),
            approval_id: self
                .approval
                .as_ref()
                .and_then(|a| a.approval_id())
                .map(str::to_owned),
            status,
            usage: self.usage.take(),
            record: policy.record,
            // A refused request's body may hold the value that refused it
            // (block and approval rules do not rewrite).
            request: if masked && forwarded {
                self.recorded_request.take()
            } else {
                None
            },
            response: if masked {
                self.recorded_response.take()
            } else {
                None
            },
        };
        serde_json::to_vec(&record).ok()
    }

    /// Records what the rules found, for the access log; a forwarded request
    /// whose answer the rules rewrote is `masked`, not `allowed`.
    fn record_outcome(&mut self) {
        let summary = self.outcome.summary();
        if !summary.is_empty() {
            let _ = host::set_filter_state("warden.rules", summary.as_bytes());
        }
        if self.decision == "allowed" && self.outcome.rewrote() {
            self.set_decision("masked");
        }
    }

    fn api(&self) -> Api {
        self.config
            .as_ref()
            .and_then(|c| c.providers.get(self.provider))
            .map_or(Api::Openai, |p| p.api)
    }

    /// Answers the request in the provider's format; nothing goes upstream.
    fn reply(&mut self, rejection: Rejection) -> Action {
        self.set_decision(request::decision_for(&rejection));
        self.reason = Some(rejection.error.code);
        let _ = host::set_filter_state("warden.reason", rejection.error.code.as_bytes());
        let local = rejection.error.render(rejection.api);
        let mut headers: Vec<(&str, &str)> = local
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        headers.push((MARK_HEADER, warden_engine::VERSION));
        if let Err(status) = host::send_reply(local.status, &headers, &local.body) {
            host::log(
                LogLevel::Error,
                &format!("warden: cannot send a local reply: {status:?}"),
            );
        }
        self.phase = Phase::Answered;
        Action::Pause
    }

    fn internal_error(&mut self, what: &str) -> Action {
        host::log(LogLevel::Error, &format!("warden: {what}"));
        let api = self.api();
        self.reply(Rejection {
            api,
            error: GatewayError::new(
                ErrorKind::Unavailable,
                "warden.internal",
                "the gateway could not process the request",
            ),
        })
    }

    /// Authenticates with the keys at hand; `may_fetch` allows one fetch of
    /// the issuer's keys for an unknown `kid`.
    fn authenticate(&mut self, may_fetch: bool) -> Action {
        let (Some(vm), Some(config)) = (self.vm.clone(), self.config.clone()) else {
            return self.internal_error("request without worker state");
        };
        let headers = self.headers.clone();
        // The request's own clock: one host call per request, and a key
        // fetch's second attempt judges the token at the same instant.
        let now = self.started_at;
        let step = {
            let mut vm = vm.borrow_mut();
            vm.refresh_missing_keys();
            let Vm {
                keys: vm_keys,
                cache,
                ..
            } = &mut *vm;
            let view = |i: usize| match (config.auth.issuers.get(i), vm_keys.get(i)) {
                (Some(issuer), Some(k)) => keys::view(issuer, k, now),
                _ => request::KeyView::NotLoaded,
            };
            request::authenticate(
                &config,
                self.provider,
                Headers::new(&headers),
                cache,
                &view,
                now,
                may_fetch,
            )
        };
        match step {
            AuthStep::Verified(identity) => self.after_authentication(identity),
            AuthStep::Rejected(rejection) => self.reply(rejection),
            AuthStep::FetchKeys { issuer } => {
                // Bound first: the worker state must not stay borrowed while
                // authenticating again.
                let refetch = vm.borrow_mut().refetch_for_unknown_kid(issuer, now);
                match refetch {
                    Refetch::Started(call) => {
                        self.phase = Phase::WaitingForKeys { call, issuer };
                        Action::Pause
                    }
                    Refetch::Refreshed | Refetch::No => self.authenticate(false),
                }
            }
        }
    }

    fn after_authentication(&mut self, identity: Identity) -> Action {
        let _ = host::set_filter_state("warden.user", identity.subject.as_bytes());
        let _ = host::set_filter_state("warden.groups", identity.groups.join(",").as_bytes());
        let _ = host::set_filter_state("warden.issuer", identity.issuer.as_bytes());
        self.identity = Some(identity);
        let Some(config) = self.config.clone() else {
            return self.internal_error("request without configuration");
        };
        if self.expects_body {
            if !self.bodiless_method {
                if let Err(rejection) =
                    request::check_body_headers(&config, self.provider, Headers::new(&self.headers))
                {
                    return self.reply(rejection);
                }
            }
            if self.body_complete {
                return self.decide_with_body();
            }
            self.phase = Phase::WaitingForBody;
            return Action::Pause;
        }
        let model = request::model_from_path(&self.upstream_path);
        self.decide(model)
    }

    fn decide_with_body(&mut self) -> Action {
        if self.bodiless_method {
            if let Err(rejection) = request::check_bodiless(self.api(), self.body_size) {
                return self.reply(rejection);
            }
            let model = request::model_from_path(&self.upstream_path);
            return self.decide(model);
        }
        let body = match host::request_body(self.body_size) {
            Ok(b) => b,
            Err(status) => {
                return self.internal_error(&format!("cannot read the request body: {status:?}"))
            }
        };
        let api = self.api();
        let mut doc = match request::parse_body(api, &body) {
            Ok(d) => d,
            Err(rejection) => return self.reply(rejection),
        };
        let model = match request::model_of(api, &doc) {
            Ok(m) => m,
            Err(rejection) => return self.reply(rejection),
        };
        if let Err(rejection) = self.authorize(model.as_deref()) {
            return self.reply(rejection);
        }
        if let Err(refused) = self.inspect_query(model.as_deref()) {
            return refused;
        }
        // The policy's rules on the prompt: rewrite in place, or refuse.
        let (Some(config), Some(policy), Some(identity)) = (
            self.config.clone(),
            self.policy.clone(),
            self.identity.clone(),
        ) else {
            return self.internal_error("inspection without policy");
        };
        let (outcome, verdict) = request::inspect_request(
            &config,
            &policy,
            self.provider,
            &identity,
            model.as_deref(),
            &mut doc,
            &mut self.vault,
        );
        // Refused or not, the audit record names the rules that matched.
        self.outcome.merge(outcome);
        self.record_outcome();
        match verdict {
            Ok(Some(new_body)) => {
                if let Err(status) = host::set_request_body(self.body_size, &new_body) {
                    return self
                        .internal_error(&format!("cannot replace the request body: {status:?}"));
                }
                let _ = host::set_request_header(
                    "content-length",
                    Some(new_body.len().to_string().as_bytes()),
                );
            }
            Ok(None) => {}
            Err(rejection) => return self.reply(rejection),
        }
        if policy.record == Record::Masked {
            self.recorded_request = Some(doc.clone());
        }
        if let Some((rule, RuleAction::RequireApproval)) = self.outcome.stop() {
            return self.ask_approval(&rule, model, &body, &mut doc);
        }
        self.forward(model)
    }

    /// Opens (or finds) the approval a rule asks for and pauses until the
    /// control plane answers. The body is already in its masked form.
    fn ask_approval(
        &mut self,
        rule: &str,
        model: Option<String>,
        original: &[u8],
        masked: &mut serde_json::Value,
    ) -> Action {
        let api = self.api();
        let (Some(config), Some(policy), Some(identity)) = (
            self.config.clone(),
            self.policy.clone(),
            self.identity.clone(),
        ) else {
            return self.internal_error("approval without policy");
        };
        let Some(cp) = config.control_plane.as_ref() else {
            return self.reply(request::approvals_disabled(api, rule));
        };
        let Some(spec) = policy
            .rules
            .iter()
            .find(|r| r.name == rule)
            .map(|r| &r.approval)
        else {
            return self.internal_error("approval rule not in the policy");
        };
        // Bound to the request as the client sent it, so the same request
        // sent again (ticket mode) matches and an edited one does not.
        let body_sha256 = match request::parse_body(api, original) {
            Ok(doc) => warden_engine::control::canonical_sha256(&doc),
            Err(rejection) => return self.reply(rejection),
        };
        let provider = config
            .providers
            .get(self.provider)
            .map_or("", |p| p.name.as_str());
        let prompt = request::prompt_text(masked);
        let ask = ApprovalRequest::new(
            &identity,
            provider,
            model.as_deref(),
            &self.route,
            rule,
            spec,
            policy.published_version,
            body_sha256,
            prompt,
        );
        let (flow, call) = ApprovalFlow::start(
            api,
            &ask,
            spec.timeout_seconds,
            cp.timeout_ms,
            host::now_millis(),
        );
        self.approval = Some(flow);
        self.model = model;
        self.call_control_plane(call)
    }

    fn call_control_plane(&mut self, call: Call) -> Action {
        let Some(config) = self.config.clone() else {
            return self.internal_error("approval without configuration");
        };
        let Some(cp) = config.control_plane.as_ref() else {
            return self.internal_error("approval without a control plane");
        };
        let sent = host::dispatch(
            &cp.cluster,
            cp.headers(call.method, &call.path),
            call.body.as_deref(),
            std::time::Duration::from_millis(call.timeout_ms),
        );
        match sent {
            Ok(token) => {
                self.phase = Phase::WaitingForApproval { call: token };
                Action::Pause
            }
            Err(status) => {
                host::log(
                    LogLevel::Warn,
                    &format!("warden: cannot call the control plane for an approval: {status:?}"),
                );
                self.on_approval_answer(None, &[])
            }
        }
    }

    /// The control plane answered (or failed to): the next call, or the end.
    fn on_approval_answer(&mut self, status: Option<u32>, body: &[u8]) -> Action {
        let Some(flow) = self.approval.as_mut() else {
            return self.internal_error("approval answer without an approval");
        };
        let next = flow.on_answer(status, body, host::now_millis());
        if let Some(id) = flow.approval_id() {
            let _ = host::set_filter_state("warden.approval_id", id.as_bytes());
        }
        match next {
            Next::Call(call) => self.call_control_plane(call),
            Next::Forward { .. } => {
                let model = self.model.take();
                let action = self.forward(model);
                if action == Action::Continue {
                    self.set_decision("approved");
                }
                action
            }
            Next::Reply { rejection, .. } => self.reply(rejection),
        }
    }

    fn authorize(&mut self, model: Option<&str>) -> Result<(), Rejection> {
        let (Some(config), Some(identity)) = (self.config.clone(), self.identity.clone()) else {
            return Err(Rejection {
                api: self.api(),
                error: GatewayError::new(ErrorKind::Unavailable, "warden.internal", "no identity"),
            });
        };
        if let Some(m) = model {
            let _ = host::set_filter_state("warden.model", m.as_bytes());
        }
        request::authorize(
            &config,
            self.policy.as_deref(),
            self.provider,
            &identity,
            self.endpoint,
            model,
        )
    }

    fn decide(&mut self, model: Option<String>) -> Action {
        if let Err(rejection) = self.authorize(model.as_deref()) {
            return self.reply(rejection);
        }
        if let Err(refused) = self.inspect_query(model.as_deref()) {
            return refused;
        }
        self.forward(model)
    }

    /// The policy's rules on the URL's query string: a finding refuses the
    /// request (see [`request::inspect_query`]). `Err` holds the answer sent.
    fn inspect_query(&mut self, model: Option<&str>) -> Result<(), Action> {
        let (Some(config), Some(policy), Some(identity)) = (
            self.config.clone(),
            self.policy.clone(),
            self.identity.clone(),
        ) else {
            return Err(self.internal_error("inspection without policy"));
        };
        let (outcome, verdict) = request::inspect_query(
            &config,
            &policy,
            self.provider,
            &identity,
            model,
            &self.upstream_path,
            &mut self.vault,
        );
        self.outcome.merge(outcome);
        self.record_outcome();
        verdict.map_err(|rejection| self.reply(rejection))
    }

    /// The request is allowed: swap credentials and let it go upstream.
    fn forward(&mut self, model: Option<String>) -> Action {
        let Some(config) = self.config.clone() else {
            return self.internal_error("forward without configuration");
        };
        self.model = model;
        let plan = request::forward_plan(&config, self.provider, Headers::new(&self.headers));
        for name in &plan.remove {
            if let Err(status) = host::set_request_header(name, None) {
                return self.internal_error(&format!("cannot remove a request header: {status:?}"));
            }
        }
        for (name, value) in &plan.set {
            if let Err(status) = host::set_request_header(name, Some(value)) {
                return self.internal_error(&format!("cannot set a request header: {status:?}"));
            }
        }
        self.set_decision(if self.outcome.rewrote() {
            "masked"
        } else {
            "allowed"
        });
        self.phase = Phase::Forwarded;
        Action::Continue
    }

    /// Chooses how to handle the response body from its headers.
    fn plan_response(&mut self) -> Action {
        let (Some(config), Some(policy), Some(identity)) = (
            self.config.clone(),
            self.policy.clone(),
            self.identity.clone(),
        ) else {
            return Action::Continue;
        };
        let Some(provider) = config.providers.get(self.provider) else {
            return Action::Continue;
        };
        let active = policy.active_rules(
            &identity,
            &provider.name,
            self.model.as_deref(),
            Direction::Response,
        );
        if active.is_empty() && self.vault.is_empty() {
            return Action::Continue;
        }
        let content_type = host::response_header("content-type").unwrap_or_default();
        let content_type = String::from_utf8_lossy(&content_type).to_ascii_lowercase();
        let shape = Shape::of(provider.api, &self.upstream_path);
        if content_type.starts_with("text/event-stream") {
            let api = match shape {
                Shape::OpenAiChat => StreamApi::OpenAiChat,
                Shape::OpenAiCompletions => StreamApi::OpenAiCompletions,
                Shape::OpenAiResponses => StreamApi::OpenAiResponses,
                Shape::AnthropicMessages => StreamApi::Anthropic,
                // Streams of unknown shape cannot be rewritten safely.
                Shape::OpenAiEmbeddings | Shape::Unknown => {
                    return self.block_response("warden.stream_unknown")
                }
            };
            let vault = std::mem::take(&mut self.vault);
            let records = policy.record == Record::Masked;
            let mut masking = MaskingStream::new(policy, active, vault, config.hash_key.clone());
            if records {
                masking = masking.with_transcript(RECORDED_STREAM_TEXT);
            }
            let text = SharedMasking::new(masking);
            let rewriter = StreamRewriter::new(api, Box::new(text.clone()));
            self.response = ResponseMode::Stream(Box::new(rewriter), text);
            let _ = host::set_response_header("content-length", None);
            return Action::Continue;
        }
        // A body the filter cannot read (binary, compressed) while rules
        // apply to it: refused rather than passed uninspected.
        if host::response_header("content-encoding").is_some() {
            return self.block_response("warden.response_uninspectable");
        }
        let kind = if content_type.starts_with("application/json") {
            WholeBody::Json
        } else if content_type.starts_with("text/") {
            WholeBody::Text
        } else {
            return self.block_response("warden.response_uninspectable");
        };
        self.response = ResponseMode::Whole { kind, active };
        // Held until the body is read, so a block can still change the status.
        Action::Pause
    }

    /// Answers with a gateway error instead of the provider's response (whose
    /// headers have not gone downstream yet).
    fn block_response(&mut self, code: &'static str) -> Action {
        let api = self.api();
        let message = match code {
            "warden.blocked" => {
                "the provider's response was blocked by the gateway's policy".to_string()
            }
            _ => "the provider's response cannot be inspected, so the gateway withholds it"
                .to_string(),
        };
        self.response = ResponseMode::Pass;
        self.reply(Rejection {
            api,
            error: GatewayError::new(ErrorKind::PermissionDenied, code, message),
        })
    }

    /// A rewritten stream ended: its usage, record and findings.
    fn end_stream(&mut self, rewriter: &StreamRewriter, text: &SharedMasking) {
        if let Some(usage) = rewriter.usage() {
            let _ = host::set_filter_state("warden.usage", usage.to_string().as_bytes());
            self.usage = Some(usage.clone());
        }
        self.recorded_response = stream_record(rewriter, text);
        self.outcome.merge(text.outcome());
        self.record_outcome();
    }

    fn inspect_whole_response(
        &mut self,
        body_size: usize,
        kind: WholeBody,
        active: &ActiveRules,
    ) -> Action {
        let (Some(config), Some(policy)) = (self.config.clone(), self.policy.clone()) else {
            return Action::Continue;
        };
        let body = match host::response_body(body_size) {
            Ok(b) => b,
            Err(_) => return self.block_response("warden.response_uninspectable"),
        };
        let inspect = match kind {
            WholeBody::Json => inspect_json,
            WholeBody::Text => inspect_text,
        };
        let inspected = match inspect(
            &policy,
            active,
            Direction::Response,
            &body,
            &mut self.vault,
            &config.hash_key,
            policy.record == Record::Masked,
        ) {
            Ok(i) => i,
            // Not the JSON or UTF-8 text it was declared as: withheld.
            Err(_) => return self.block_response("warden.response_uninspectable"),
        };
        // Only the response's own findings can stop the response (the
        // request's were decided before it went upstream).
        let stop = inspected.outcome.stop();
        self.outcome.merge(inspected.outcome);
        if let Some(usage) = &inspected.usage {
            let _ = host::set_filter_state("warden.usage", usage.to_string().as_bytes());
            self.usage = Some(usage.clone());
        }
        if stop.is_none() {
            self.recorded_response = inspected.recorded;
        }
        self.record_outcome();
        if let Some((rule, _)) = stop {
            host::log(
                LogLevel::Info,
                &format!("warden: response blocked by rule '{rule}'"),
            );
            return self.block_response("warden.blocked");
        }
        if let Some(new_body) = inspected.body {
            if host::set_response_body(body_size, &new_body).is_err() {
                return self.block_response("warden.response_uninspectable");
            }
            let _ = host::set_response_header(
                "content-length",
                Some(new_body.len().to_string().as_bytes()),
            );
        }
        Action::Continue
    }
}

/// The session record's `response` for a stream, from the transcript its
/// masking kept (none unless the policy records masked sessions).
fn stream_record(rewriter: &StreamRewriter, text: &SharedMasking) -> Option<serde_json::Value> {
    text.take_transcript()
        .map(|t| t.to_record(rewriter.api(), rewriter.events()))
}

impl Context for WardenHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Phase::WaitingForApproval { call } = self.phase {
            if call != token_id {
                return;
            }
            let (status, body) = host::call_response(body_size);
            if self.on_approval_answer(status, &body) == Action::Continue {
                if let Err(status) = host::resume_request() {
                    host::log(
                        LogLevel::Error,
                        &format!("warden: cannot resume a request: {status:?}"),
                    );
                }
            }
            return;
        }
        let Phase::WaitingForKeys { call, issuer } = self.phase else {
            return;
        };
        if call != token_id {
            return;
        }
        if let Some(vm) = self.vm.clone() {
            // A request fetches a JWKS only, never discovery: no next call.
            let _ = vm
                .borrow_mut()
                .on_key_response(issuer, keys::Stage::Jwks, body_size);
        }
        self.phase = Phase::Start;
        if self.authenticate(false) == Action::Continue {
            if let Err(status) = host::resume_request() {
                host::log(
                    LogLevel::Error,
                    &format!("warden: cannot resume a request: {status:?}"),
                );
            }
        }
    }
}

impl HttpContext for WardenHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(vm) = self.vm.clone() else {
            return self.reply(Rejection {
                api: Api::Openai,
                error: GatewayError::new(
                    ErrorKind::Unavailable,
                    "warden.not_configured",
                    "the gateway has no valid configuration yet",
                ),
            });
        };
        self.set_decision(UNDECIDED);
        let now = host::now_secs();
        self.started_at = now;
        let (config, policy, silence) = {
            let mut vm = vm.borrow_mut();
            vm.catch_up_policy();
            (vm.config.clone(), vm.policy.clone(), vm.policy_silence(now))
        };
        self.config = Some(config.clone());
        if let Some(p) = policy.as_ref() {
            // 0: the policy of the Envoy configuration (nothing published yet).
            let version = p.published_version.unwrap_or(0).to_string();
            let _ = host::set_filter_state("warden.policy_version", version.as_bytes());
        }
        self.policy = policy;
        self.headers = match host::request_headers() {
            Ok(h) => h.into(),
            Err(status) => {
                return self.internal_error(&format!("cannot read request headers: {status:?}"))
            }
        };
        let headers = self.headers.clone();
        #[cfg(feature = "test-trap")]
        if Headers::new(&headers).get("x-warden-test-trap").is_some() {
            std::process::abort();
        }
        self.provider = match request::route(&config, Headers::new(&headers)) {
            Ok(p) => p,
            Err(rejection) => return self.reply(rejection),
        };
        if let Err(rejection) = request::check_cluster(&config, self.provider, || {
            host::property(&["xds", "cluster_name"])
        }) {
            return self.reply(rejection);
        }
        let path = Headers::new(&headers).get(":path").unwrap_or_default();
        self.upstream_path = request::upstream_path(&config, self.provider, path);
        if let Some(p) = config.providers.get(self.provider) {
            let _ = host::set_filter_state("warden.provider", p.name.as_bytes());
        }
        self.route = request::route_of(&self.upstream_path);
        let _ = host::set_filter_state("warden.route", self.route.as_bytes());
        if let Some(silent_for) = silence {
            let api = self.api();
            return self.reply(request::policy_stale(api, silent_for));
        }
        let method = Headers::new(&headers).get(":method").unwrap_or_default();
        self.endpoint = endpoint_of(self.api(), method, &self.upstream_path);
        self.bodiless_method = request::is_bodiless_method(Headers::new(&headers));
        self.expects_body = request::has_body(end_of_stream);
        self.authenticate(true)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::WaitingForApproval { .. } => Action::Pause,
            Phase::WaitingForKeys { .. } | Phase::WaitingForBody | Phase::Start => {
                let limit = self.config.as_ref().map_or(0, |c| c.max_body_bytes);
                if body_size > limit {
                    let api = self.api();
                    return self.reply(request::too_large(api, limit));
                }
                self.body_size = body_size;
                self.body_complete = end_of_stream;
                if self.phase == Phase::WaitingForBody && end_of_stream {
                    return self.decide_with_body();
                }
                Action::Pause
            }
            Phase::Forwarded => Action::Continue,
            Phase::Answered => Action::Pause,
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // No provider API takes request trailers; whatever a client puts
        // there would reach the provider uninspected.
        if let Err(status) = host::clear_request_trailers() {
            return self.internal_error(&format!("cannot drop request trailers: {status:?}"));
        }
        match self.phase {
            Phase::Forwarded => Action::Continue,
            // The body is complete: decide now.
            Phase::WaitingForBody => {
                self.body_complete = true;
                self.decide_with_body()
            }
            // Still authenticating: the decision comes when the keys do,
            // with the body known to be complete.
            Phase::Start | Phase::WaitingForKeys { .. } => {
                self.body_complete = true;
                Action::Pause
            }
            Phase::WaitingForApproval { .. } | Phase::Answered => Action::Pause,
        }
    }

    fn on_log(&mut self) {
        let Some(vm) = self.vm.clone() else { return };
        let mut vm = vm.borrow_mut();
        vm.counters
            .add(&format!("warden.requests.{}", self.decision), 1);
        if self.approval.is_some() {
            vm.counters
                .add(&format!("warden.approvals.{}", self.decision), 1);
        }
        for (rule, count) in &self.outcome.rules {
            let mode = if count.observe { "observe_" } else { "" };
            let name = format!(
                "warden.rule.{}.{mode}{}",
                host::stat_segment(rule),
                count.action.name()
            );
            vm.counters.add(&name, count.count as u64);
        }
        if let ResponseMode::Stream(rewriter, text) = &self.response {
            // The client left (or the provider stopped) mid-stream: what
            // was read so far.
            if let Some(record) = stream_record(rewriter, text) {
                self.recorded_response = Some(record);
            }
        }
        if let Some(record) = self.session_record() {
            if !vm.audit.push(record) {
                vm.counters.add("warden.audit.dropped", 1);
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let _ = host::set_response_header(MARK_HEADER, Some(warden_engine::VERSION.as_bytes()));
        if self.phase != Phase::Forwarded || end_of_stream {
            return Action::Continue;
        }
        self.plan_response()
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match std::mem::replace(&mut self.response, ResponseMode::Pass) {
            ResponseMode::Pass => Action::Continue,
            ResponseMode::Closed => {
                // The rest of a stream that was ended: dropped, not passed.
                let _ = host::set_response_body(body_size, &[]);
                self.response = ResponseMode::Closed;
                Action::Continue
            }
            ResponseMode::Whole { kind, active } => {
                let limit = self.config.as_ref().map_or(0, |c| c.max_body_bytes);
                if body_size > limit {
                    return self.block_response("warden.response_uninspectable");
                }
                self.response_body_size = body_size;
                if !end_of_stream {
                    self.response = ResponseMode::Whole { kind, active };
                    return Action::Pause;
                }
                self.inspect_whole_response(body_size, kind, &active)
            }
            ResponseMode::Stream(mut rewriter, text) => {
                let chunk = match host::response_body(body_size) {
                    Ok(c) => c,
                    Err(status) => {
                        // Never passed on unread: the chunk is replaced by
                        // nothing and the stream ends here, with what the
                        // rewriter held back withheld too.
                        host::log(
                            LogLevel::Error,
                            &format!(
                                "warden: cannot read a stream chunk, ending the stream: {status:?}"
                            ),
                        );
                        let _ = host::set_response_body(body_size, &[]);
                        self.end_stream(&rewriter, &text);
                        self.response = ResponseMode::Closed;
                        return Action::Continue;
                    }
                };
                let mut out = rewriter.feed(&chunk);
                if end_of_stream {
                    out.extend(rewriter.finish());
                }
                if let Err(status) = host::set_response_body(body_size, &out) {
                    host::log(
                        LogLevel::Error,
                        &format!("warden: cannot write a stream chunk: {status:?}"),
                    );
                }
                if end_of_stream {
                    self.end_stream(&rewriter, &text);
                } else {
                    self.response = ResponseMode::Stream(rewriter, text);
                }
                Action::Continue
            }
        }
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        // Trailers end the response: whatever was held for inspection is
        // decided now, as it would be on a last chunk.
        match std::mem::replace(&mut self.response, ResponseMode::Pass) {
            ResponseMode::Pass | ResponseMode::Closed => Action::Continue,
            ResponseMode::Whole { kind, active } => {
                self.inspect_whole_response(self.response_body_size, kind, &active)
            }
            ResponseMode::Stream(mut rewriter, text) => {
                // The chunks have gone downstream; what the rewriter still
                // holds (an unfinished event, text awaiting its context)
                // cannot be appended after trailers, so it is withheld,
                // never sent unmasked.
                let held = rewriter.finish();
                if !held.is_empty() {
                    host::log(
                        LogLevel::Warn,
                        &format!(
                            "warden: a stream ended with trailers; {} held bytes withheld",
                            held.len()
                        ),
                    );
                    if let Some(vm) = self.vm.clone() {
                        vm.borrow_mut()
                            .counters
                            .add("warden.stream.trailers_withheld", 1);
                    }
                }
                self.end_stream(&rewriter, &text);
                Action::Continue
            }
        }
    }
}
