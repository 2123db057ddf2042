//! A proxy-wasm filter that reads one request header and lets the request
//! through: what `make bench` runs beside Warden to show the cost every wasm
//! filter pays in Envoy (the V8 VM, a context per request, the calls across
//! the host boundary), so Warden's own cost is the rest.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass))
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
