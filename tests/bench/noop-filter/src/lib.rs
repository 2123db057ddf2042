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
//!
//! With `bodies` it makes those calls and handles bodies as Warden does when
//! it masks a chat request (rows 2h and 5ah): the request held until its body
//! is whole, the body read and written back (the same bytes) with its new
//! length, the answer held whole and read. What it does not do is Warden's
//! inspection, so Warden's cost above row 2h is its own parsing, detection
//! and rewriting.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { counter: None, bodies: false }) });
}}

struct Root {
    /// Set in the `host-calls` and `bodies` modes: the counter each request adds to.
    counter: Option<u32>,
    bodies: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let mode = self.get_plugin_configuration().unwrap_or_default();
        if mode == b"host-calls" || mode == b"bodies" {
            self.counter = hostcalls::define_metric(MetricType::Counter, "noop.requests").ok();
        }
        self.bodies = mode == b"bodies";
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match (self.counter, self.bodies) {
            (Some(counter), true) => Box::new(Bodies(HostCalls { counter })),
            (Some(counter), false) => Box::new(HostCalls { counter }),
            (None, _) => Box::new(Pass),
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
        self.row_one_calls();
        Action::Continue
    }
}

impl HostCalls {
    fn row_one_calls(&mut self) {
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
    }
}

struct Bodies(HostCalls);

impl Context for Bodies {}

impl HttpContext for Bodies {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.0.row_one_calls();
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size) {
            self.set_http_request_body(0, body_size, &body);
            self.set_http_request_header("content-length", Some(&body.len().to_string()));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.set_http_response_header("x-warden", Some("noop"));
        let _ = self.get_http_response_header_bytes("content-type");
        let _ = self.get_http_response_header_bytes("content-encoding");
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let _ = self.get_http_response_body(0, body_size);
        Action::Continue
    }
}
