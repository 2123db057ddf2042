//! One request: a small state machine over the engine's request steps.
//!
//! ```text
//! headers ── route ── authenticate ─┬─ verified ── body? ─┬─ no ── authorize ── forward
//!                                   │                     └─ yes: wait for the whole body,
//!                                   │                        read the model, authorize, forward
//!                                   ├─ unknown kid: fetch keys (paused), then authenticate once more
//!                                   └─ rejected: local reply in the provider's format
//! ```
//!
//! Headers are held (`Action::Pause`) until the decision, so a denied request
//! sends zero bytes upstream.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use warden_engine::auth::{Identity, KeySource};
use warden_engine::config::FilterConfig;
use warden_engine::headers::Headers;
use warden_engine::policy::Policy;
use warden_engine::provider::{Api, ErrorKind, GatewayError};
use warden_engine::request::{self, AuthStep, Rejection};

use crate::{host, keys, Vm};

/// Header set on every response the filter handled (proxied or answered).
const MARK_HEADER: &str = "x-warden";

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
    /// Whether a body follows the headers.
    expects_body: bool,
    /// Body bytes buffered so far, and whether they are all of it.
    body_size: usize,
    body_complete: bool,
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
            expects_body: false,
            body_size: 0,
            body_complete: false,
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
        let decision = match rejection.error.kind {
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "denied",
            _ => "error",
        };
        let _ = host::set_filter_state("warden.decision", decision.as_bytes());
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
        let headers = match host::request_headers() {
            Ok(h) => h,
            Err(status) => {
                return self.internal_error(&format!("cannot read request headers: {status:?}"))
            }
        };
        let now = host::now_secs();
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
            AuthStep::Verified(identity) => self.after_authentication(identity, &headers),
            AuthStep::Rejected(rejection) => self.reply(rejection),
            AuthStep::FetchKeys { issuer } => {
                let fetch = {
                    let mut vm = vm.borrow_mut();
                    match (config.auth.issuers.get(issuer), vm.keys.get_mut(issuer)) {
                        (Some(iss), Some(k)) => match &iss.keys {
                            KeySource::Remote(remote) => {
                                if k.refresh(&iss.issuer) {
                                    // Another worker fetched new keys meanwhile.
                                    None
                                } else if keys::try_lease(&iss.issuer, now, |last| {
                                    remote.may_refetch(last, now)
                                }) {
                                    keys::start_fetch(iss, remote)
                                        .filter(|(_, stage)| *stage == keys::Stage::Jwks)
                                        .map(|(call, _)| call)
                                } else {
                                    None
                                }
                            }
                            KeySource::Static(_) => None,
                        },
                        _ => None,
                    }
                };
                match fetch {
                    Some(call) => {
                        self.phase = Phase::WaitingForKeys { call, issuer };
                        Action::Pause
                    }
                    None => self.authenticate(false),
                }
            }
        }
    }

    fn after_authentication(
        &mut self,
        identity: Identity,
        headers: &[(String, Vec<u8>)],
    ) -> Action {
        let _ = host::set_filter_state("warden.user", identity.subject.as_bytes());
        let _ = host::set_filter_state("warden.groups", identity.groups.join(",").as_bytes());
        let _ = host::set_filter_state("warden.issuer", identity.issuer.as_bytes());
        self.identity = Some(identity);
        let Some(config) = self.config.clone() else {
            return self.internal_error("request without configuration");
        };
        if self.expects_body {
            if let Err(rejection) =
                request::check_body_headers(&config, self.provider, Headers::new(headers))
            {
                return self.reply(rejection);
            }
            if self.body_complete {
                return self.decide_with_body();
            }
            self.phase = Phase::WaitingForBody;
            return Action::Pause;
        }
        let path = Headers::new(headers).get(":path").unwrap_or_default();
        let model = request::model_from_path(&config, self.provider, path);
        self.decide(model, headers)
    }

    fn decide_with_body(&mut self) -> Action {
        let body = match host::request_body(self.body_size) {
            Ok(b) => b,
            Err(status) => {
                return self.internal_error(&format!("cannot read the request body: {status:?}"))
            }
        };
        let model = match request::read_model(self.api(), &body) {
            Ok(m) => m,
            Err(rejection) => return self.reply(rejection),
        };
        let headers = match host::request_headers() {
            Ok(h) => h,
            Err(status) => {
                return self.internal_error(&format!("cannot read request headers: {status:?}"))
            }
        };
        self.decide(model, &headers)
    }

    fn decide(&mut self, model: Option<String>, headers: &[(String, Vec<u8>)]) -> Action {
        let (Some(config), Some(identity)) = (self.config.clone(), self.identity.clone()) else {
            return self.internal_error("decision without identity");
        };
        if let Some(m) = &model {
            let _ = host::set_filter_state("warden.model", m.as_bytes());
        }
        if let Err(rejection) = request::authorize(
            &config,
            self.policy.as_deref(),
            self.provider,
            &identity,
            model.as_deref(),
        ) {
            return self.reply(rejection);
        }
        let plan = request::forward_plan(&config, self.provider, Headers::new(headers));
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
        let _ = host::set_filter_state("warden.decision", b"allowed");
        self.phase = Phase::Forwarded;
        Action::Continue
    }
}

impl Context for WardenHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Phase::WaitingForKeys { call, issuer } = self.phase else {
            return;
        };
        if call != token_id {
            return;
        }
        if let (Some(vm), Some(config)) = (self.vm.clone(), self.config.clone()) {
            let mut vm = vm.borrow_mut();
            if let (Some(iss), Some(vm_keys)) =
                (config.auth.issuers.get(issuer), vm.keys.get_mut(issuer))
            {
                if let KeySource::Remote(remote) = &iss.keys {
                    // A discovery answer would need a second call; requests
                    // only ever fetch a JWKS whose location is known.
                    let _ = keys::on_response(
                        iss,
                        remote,
                        keys::Stage::Jwks,
                        body_size,
                        vm_keys,
                        host::now_secs(),
                    );
                }
            }
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
        let (config, policy) = {
            let vm = vm.borrow();
            (vm.config.clone(), vm.policy.clone())
        };
        self.config = Some(config.clone());
        self.policy = policy;
        let headers = match host::request_headers() {
            Ok(h) => h,
            Err(status) => {
                return self.internal_error(&format!("cannot read request headers: {status:?}"))
            }
        };
        self.provider = match request::route(&config, Headers::new(&headers)) {
            Ok(p) => p,
            Err(rejection) => return self.reply(rejection),
        };
        if let Some(p) = config.providers.get(self.provider) {
            let _ = host::set_filter_state("warden.provider", p.name.as_bytes());
        }
        self.expects_body = request::has_body(Headers::new(&headers), end_of_stream);
        self.authenticate(true)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _ = host::set_response_header(MARK_HEADER, Some(warden_engine::VERSION.as_bytes()));
        Action::Continue
    }
}
