//! A proxy-wasm filter that reads one request header and lets the request
//! through: what `make bench` runs beside Warden to show the cost every wasm
//! filter pays in Envoy (the V8 VM, a context per request, the calls across
//! the host boundary), so Warden's own cost is the rest.
//!
//! With the plugin configuration `host-calls` it makes, per request, the host
//! calls Warden makes for a cached token on a bodiless request (row 1 of
//! `make bench`) and nothing else: the headers read, the routed cluster, the
//! policy serial in shared data, the clock, seven filter-state values for the
//! access log, the credential swap and one counter. Row 1h then splits Warden's
//! cost above the floor into those calls and Warden's own work.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { counter: None }) });
}}

struct Root {
    /// Set in the `host-calls` mode: the counter each request adds to.
    counter: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if self.get_plugin_configuration().as_deref() == Some(b"host-calls".as_slice()) {
            self.counter = hostcalls::define_metric(MetricType::Counter, "noop.requests").ok();
        }
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match self.counter {
            Some(counter) => Box::new(HostCalls { counter }),
            None => Box::new(Pass),
        })
    }
}

struct Pass;

impl Context for Pass {}

impl HttpContext for Pass {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Every real filter reads at least one header.
        let _ = self.get_http_request_header_bytes(":path");
        Action::Continue
    }
}

struct HostCalls {
    counter: u32,
}

impl Context for HostCalls {}

impl HttpContext for HostCalls {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers_bytes();
        let _ = self.get_property(vec!["xds", "cluster_name"]);
        let _ = self.get_shared_data("warden.policy");
        let _ = self.get_current_time();
        for (name, value) in [
            ("warden.provider", "openai".as_bytes()),
            ("warden.route", b"/v1/models"),
            ("warden.user", b"bench"),
            ("warden.groups", b"engineering"),
            ("warden.issuer", b"http://127.0.0.1/dev"),
            ("warden.policy_version", b"1"),
            ("warden.decision", b"allowed"),
        ] {
            self.set_property(vec![name], Some(value));
        }
        // Read, so the header map is not optimised away.
        if !headers.is_empty() {
            self.set_http_request_header("authorization", None);
            self.set_http_request_header("authorization", Some("Bearer sk-provider"));
        }
        let _ = hostcalls::increment_metric(self.counter, 1);
        Action::Continue
    }
}
