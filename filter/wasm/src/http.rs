//! One request: proxy-wasm's callbacks handed to the engine's
//! [`Exchange`], and the [`Host`] it acts through, made of host calls and
//! this worker's state (keys, token cache, counters). Nothing here decides:
//! the state machine, its diagram and its tests are in
//! `warden_engine::exchange`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, Status};
use warden_engine::auth::machine_keys::MachineKeys;
use warden_engine::config::FilterConfig;
use warden_engine::exchange::{Exchange, Flow, Host, HostError, HostResult, Level, Refetch, Start};
use warden_engine::headers::Headers;
use warden_engine::request::{self, AuthStep, KeyView};

use crate::{host, keys, Vm};

pub struct WardenHttp {
    vm: Option<Rc<RefCell<Vm>>>,
    exchange: Exchange,
}

impl WardenHttp {
    pub fn new(vm: Option<Rc<RefCell<Vm>>>) -> Self {
        Self {
            vm,
            exchange: Exchange::new(),
        }
    }

    /// The host, and the exchange to drive with it.
    fn parts(&mut self) -> (HostCalls<'_>, &mut Exchange) {
        (
            HostCalls {
                vm: self.vm.as_ref(),
            },
            &mut self.exchange,
        )
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

/// [`Host`] through proxy-wasm host calls and the worker's state.
struct HostCalls<'a> {
    vm: Option<&'a Rc<RefCell<Vm>>>,
}

fn failed(status: Status) -> HostError {
    HostError(format!("{status:?}"))
}

impl Host for HostCalls<'_> {
    fn now_millis(&self) -> u64 {
        host::now_millis()
    }

    fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        host::log(level, message);
    }

    fn count(&mut self, counter: &str, n: u64) {
        if let Some(vm) = self.vm {
            vm.borrow_mut().counters.add(counter, n);
        }
    }

    fn set_filter_state(&mut self, key: &str, value: &[u8]) {
        let _ = host::set_filter_state(key, value);
    }

    fn request_headers(&mut self) -> HostResult<Vec<(String, Vec<u8>)>> {
        host::request_headers().map_err(failed)
    }

    fn routed_cluster(&mut self) -> Option<Vec<u8>> {
        host::property(&["xds", "cluster_name"])
    }

    fn request_body(&mut self, size: usize) -> HostResult<Vec<u8>> {
        host::request_body(size).map_err(failed)
    }

    fn set_request_body(&mut self, size: usize, body: &[u8]) -> HostResult<()> {
        host::set_request_body(size, body).map_err(failed)
    }

    fn set_request_header(&mut self, name: &str, value: Option<&[u8]>) -> HostResult<()> {
        host::set_request_header(name, value).map_err(failed)
    }

    fn clear_request_trailers(&mut self) -> HostResult<()> {
        host::clear_request_trailers().map_err(failed)
    }

    fn send_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
        host::send_reply(status, headers, body).map_err(failed)
    }

    fn resume_request(&mut self) -> HostResult<()> {
        host::resume_request().map_err(failed)
    }

    fn resume_response(&mut self) -> HostResult<()> {
        host::resume_response().map_err(failed)
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
        let Some(vm) = self.vm else {
            // Only reachable without a worker, which never starts an exchange.
            return AuthStep::Rejected(request::not_configured());
        };
        let mut vm = vm.borrow_mut();
        vm.refresh_missing_keys();
        let Vm {
            keys: vm_keys,
            cache,
            ..
        } = &mut *vm;
        let view = |i: usize| match (config.auth.issuers.get(i), vm_keys.get(i)) {
            (Some(issuer), Some(k)) => keys::view(issuer, k, now),
            _ => KeyView::NotLoaded,
        };
        request::authenticate(
            config,
            provider,
            headers,
            machine_keys,
            cache,
            &view,
            now,
            may_fetch,
        )
    }

    fn refetch_keys(&mut self, issuer: usize, now: u64) -> Refetch {
        self.vm.map_or(Refetch::No, |vm| {
            vm.borrow_mut().refetch_for_unknown_kid(issuer, now)
        })
    }

    fn keys_arrived(&mut self, issuer: usize, body_size: usize) {
        if let Some(vm) = self.vm {
            // A request fetches a JWKS only, never discovery: no next call.
            let _ = vm
                .borrow_mut()
                .on_key_response(issuer, keys::Stage::Jwks, body_size);
        }
    }

    fn dispatch(
        &mut self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout_ms: u64,
    ) -> HostResult<u32> {
        host::dispatch(cluster, headers, body, Duration::from_millis(timeout_ms)).map_err(failed)
    }

    fn call_response(&mut self, body_size: usize) -> (Option<u32>, Vec<u8>) {
        host::call_response(body_size)
    }

    fn response_header(&mut self, name: &str) -> Option<Vec<u8>> {
        host::response_header(name)
    }

    fn set_response_header(&mut self, name: &str, value: Option<&[u8]>) -> HostResult<()> {
        host::set_response_header(name, value).map_err(failed)
    }

    fn response_body(&mut self, size: usize) -> HostResult<Vec<u8>> {
        host::response_body(size).map_err(failed)
    }

    fn set_response_body(&mut self, size: usize, body: &[u8]) -> HostResult<()> {
        host::set_response_body(size, body).map_err(failed)
    }

    fn request_id(&mut self) -> Option<String> {
        host::property(&["request", "id"]).and_then(|v| String::from_utf8(v).ok())
    }

    fn response_status(&mut self) -> Option<u64> {
        host::property(&["response", "code"])
            .and_then(|v| v.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)))
    }
}

impl Context for WardenHttp {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        host::call_answer_arrived(num_headers);
        let (mut host, exchange) = self.parts();
        exchange.on_call_response(&mut host, token_id, body_size);
    }
}

impl HttpContext for WardenHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "test-trap")]
        if host::request_headers()
            .is_ok_and(|h| Headers::new(&h).get("x-warden-test-trap").is_some())
        {
            std::process::abort();
        }
        let start = self.vm.as_ref().map(|vm| {
            let now = host::now_secs();
            let mut vm = vm.borrow_mut();
            vm.catch_up_policy();
            Start {
                config: vm.config.clone(),
                policy: vm.policy.clone(),
                policy_silent_for: vm.current_policy_silence(now),
                now_secs: now,
            }
        });
        let (mut host, exchange) = self.parts();
        action(exchange.on_request_headers(&mut host, start, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (mut host, exchange) = self.parts();
        action(exchange.on_request_body(&mut host, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let (mut host, exchange) = self.parts();
        action(exchange.on_request_trailers(&mut host))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let (mut host, exchange) = self.parts();
        action(exchange.on_response_headers(&mut host, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (mut host, exchange) = self.parts();
        action(exchange.on_response_body(&mut host, body_size, end_of_stream))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let (mut host, exchange) = self.parts();
        action(exchange.on_response_trailers(&mut host))
    }

    fn on_log(&mut self) {
        let (mut host, exchange) = self.parts();
        let Some(record) = exchange.finish(&mut host) else {
            return;
        };
        if let Some(vm) = self.vm.as_ref() {
            let mut vm = vm.borrow_mut();
            if !vm.audit.push(record) {
                vm.counters.add("warden.audit.dropped", 1);
            }
        }
    }
}
