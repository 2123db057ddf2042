//! # warden-filter
//!
//! The proxy-wasm adapter that runs Warden inside Envoy. It is deliberately
//! thin: host calls in, engine decisions out. Everything that decides lives in
//! `warden-engine`, where it is tested natively and under wasm.
//!
//! ## Layout
//! - [`WardenRoot`]: one per worker VM. Reads the plugin configuration once in
//!   `on_configure` (returning `false` makes Envoy refuse a bad configuration
//!   instead of serving with it) and hands the compiled form to each request
//!   behind an `Rc`.
//! - [`WardenHttp`]: one per request. Applies the engine's plan to the
//!   request headers, answers rejections with a local reply in the
//!   provider's own error format, and marks every response it handled with
//!   `x-warden`.
//!
//! Failure is closed everywhere: no configuration means 503, and a panic
//! aborts the VM, which Envoy (with `fail_open: false`) turns into a 503
//! without sending anything upstream.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use warden_engine::config::FilterConfig;
use warden_engine::headers::Headers;
use warden_engine::provider::{Api, ErrorKind, GatewayError, LocalReply};
use warden_engine::request::plan_headers;

/// Header set on every response the filter handled (proxied or answered).
const MARK_HEADER: &str = "x-warden";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        // The message is ours (engine code never formats secrets into a
        // panic); the location makes the Envoy log actionable.
        let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("warden: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(WardenRoot::default()) });
}}

#[derive(Default)]
pub struct WardenRoot {
    config: Option<Rc<FilterConfig>>,
}

impl Context for WardenRoot {}

impl RootContext for WardenRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log::error!("warden: no plugin configuration; refusing to start (set `configuration` in the Envoy wasm filter)");
            return false;
        };
        match FilterConfig::from_bytes(&bytes, &|name| std::env::var(name).ok()) {
            Ok(config) => {
                for p in config
                    .providers
                    .iter()
                    .filter(|p| p.credential_value.is_none())
                {
                    log::warn!(
                        "warden: provider '{}' has no API key: {} is not set in Envoy's environment (or not listed in vm_config.environment_variables.host_env_keys); its requests will get 503",
                        p.name, p.credential_env
                    );
                }
                log::info!(
                    "warden {}: configured {} provider(s)",
                    warden_engine::VERSION,
                    config.providers.len()
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(err) => {
                log::error!("warden: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(WardenHttp {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

pub struct WardenHttp {
    config: Option<Rc<FilterConfig>>,
}

impl WardenHttp {
    fn reply(&self, reply: LocalReply) -> Action {
        let mut headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        headers.push((MARK_HEADER, warden_engine::VERSION));
        self.send_http_response(reply.status, headers, Some(&reply.body));
        Action::Pause
    }
}

impl Context for WardenHttp {}

impl HttpContext for WardenHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(config) = self.config.clone() else {
            return self.reply(
                GatewayError::new(
                    ErrorKind::Unavailable,
                    "warden.not_configured",
                    "the gateway has no valid configuration yet",
                )
                .render(Api::Openai),
            );
        };
        let headers = self.get_http_request_headers_bytes();
        match plan_headers(&config, Headers::new(&headers)) {
            Ok(plan) => {
                for name in &plan.remove {
                    self.set_http_request_header(name, None);
                }
                for (name, value) in &plan.set {
                    self.set_http_request_header_bytes(name, Some(value));
                }
                Action::Continue
            }
            Err(rejection) => self.reply(rejection.error.render(rejection.api)),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header(MARK_HEADER, Some(warden_engine::VERSION));
        Action::Continue
    }
}
