//! Every host call the filter makes, in one place, returning `Result`s.
//!
//! The SDK's trait methods `unwrap()` host results internally; going through
//! `proxy_wasm::hostcalls` here instead means a host error becomes a value the
//! filter handles (fail closed with a clear reply), never a trap. Header
//! values are read and written as bytes: they need not be UTF-8.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, Status};

pub type HostResult<T> = Result<T, Status>;

pub fn log(level: LogLevel, message: &str) {
    // Nothing sensible to do if logging itself fails.
    let _ = hostcalls::log(level, message);
}

/// Seconds since the epoch, by the host's clock (0 if the host cannot say,
/// which makes every token look expired: closed, not open).
pub fn now_secs() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the epoch (0 if the host cannot say).
pub fn now_millis() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn request_headers() -> HostResult<Vec<(String, Vec<u8>)>> {
    hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
}

pub fn set_request_header(name: &str, value: Option<&[u8]>) -> HostResult<()> {
    hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value)
}

pub fn set_response_header(name: &str, value: Option<&[u8]>) -> HostResult<()> {
    hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, value)
}

pub fn request_body(size: usize) -> HostResult<Vec<u8>> {
    Ok(hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)?.unwrap_or_default())
}

/// Replaces the first `size` bytes of the buffered request body (all of it).
pub fn set_request_body(size: usize, value: &[u8]) -> HostResult<()> {
    hostcalls::set_buffer(BufferType::HttpRequestBody, 0, size, value)
}

/// Drops every request trailer: no provider API takes them, and what a
/// client puts there would reach the provider uninspected.
pub fn clear_request_trailers() -> HostResult<()> {
    hostcalls::set_map_bytes(MapType::HttpRequestTrailers, Vec::<(&str, &[u8])>::new())
}

pub fn response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name)
        .ok()
        .flatten()
}

pub fn response_body(size: usize) -> HostResult<Vec<u8>> {
    Ok(hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)?.unwrap_or_default())
}

pub fn set_response_body(size: usize, value: &[u8]) -> HostResult<()> {
    hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, value)
}

pub fn send_reply(status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
    hostcalls::send_http_response(status, headers.to_vec(), Some(body))
}

pub fn resume_request() -> HostResult<()> {
    hostcalls::resume_http_request()
}

pub fn resume_response() -> HostResult<()> {
    hostcalls::resume_http_response()
}

pub fn plugin_configuration() -> HostResult<Option<Vec<u8>>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
}

pub fn set_tick_period(period: Duration) -> HostResult<()> {
    hostcalls::set_tick_period(period)
}

/// The key-value store all worker VMs share (proxy-wasm shared data),
/// behind a trait so the protocols built on it ([`crate::keys`],
/// [`crate::published`]) run in unit tests on an in-memory store.
///
/// Envoy's rules, which those protocols rely on: every successful `set`
/// gives the value a new CAS token; a `set` with a CAS token fails with
/// `Status::CasMismatch` unless the value still has that token; a `set`
/// without one (`None` or 0), or of a key never written, always succeeds.
pub trait SharedData {
    /// A value and its CAS token; `(None, None)` for a key never written.
    fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)>;

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()>;

    /// A number (8 bytes, big-endian) and its CAS token; `None` for a value
    /// too short to be one.
    fn stamp(&self, key: &str) -> (Option<u64>, Option<u32>) {
        match self.get(key) {
            Ok((Some(v), cas)) => (v.first_chunk::<8>().map(|b| u64::from_be_bytes(*b)), cas),
            Ok((None, cas)) => (None, cas),
            Err(_) => (None, None),
        }
    }

    fn set_stamp(&self, key: &str, value: u64, cas: Option<u32>) -> HostResult<()> {
        self.set(key, &value.to_be_bytes(), cas)
    }

    /// Takes the lease stored at `key` (the time of the last attempt, written
    /// with CAS) if `allowed(last attempt)` says so: of all worker VMs, one wins.
    /// Except once per key: Envoy creates a key that was never written
    /// whatever the CAS, and offers no create-if-absent, so the very first
    /// lease of a key can go to every VM racing for it at startup (a few
    /// duplicate fetches, once; tests/emulated shows it).
    fn try_lease(&self, key: &str, now: u64, allowed: impl Fn(Option<u64>) -> bool) -> bool {
        let (last, cas) = self.stamp(key);
        allowed(last) && self.set_stamp(key, now, cas).is_ok()
    }
}

/// Envoy's shared data (that of the plugin's `vm_id`).
pub struct EnvoyShared;

impl SharedData for EnvoyShared {
    fn get(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        hostcalls::get_shared_data(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        hostcalls::set_shared_data(key, Some(value), cas)
    }
}

/// An HTTP call through an Envoy cluster; the answer arrives in
/// `on_http_call_response` of the context that made it.
pub fn dispatch_get(
    cluster: &str,
    authority: &str,
    path: &str,
    timeout: Duration,
) -> HostResult<u32> {
    hostcalls::dispatch_http_call(
        cluster,
        vec![
            (":method", "GET"),
            (":path", path),
            (":authority", authority),
            ("accept", "application/json"),
        ],
        None,
        vec![],
        timeout,
    )
}

/// An HTTP call with any method, headers and body.
pub fn dispatch(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> HostResult<u32> {
    hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout)
}

thread_local! {
    /// Whether the call answer being delivered has headers. A call Envoy
    /// reset (timeout, connection failure, an answer over its buffer) is
    /// delivered with none, and then its header map does not exist: reading
    /// it returns `BadArgument`, on which the SDK's getters panic, which
    /// would abort the VM. Set by [`call_answer_arrived`] at the top of every
    /// `on_http_call_response`, read by the two getters below.
    static CALL_ANSWER_HAS_HEADERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called first in every `on_http_call_response` with its header count.
pub fn call_answer_arrived(num_headers: usize) {
    CALL_ANSWER_HAS_HEADERS.with(|has| has.set(num_headers > 0));
}

fn call_answer_readable() -> bool {
    CALL_ANSWER_HAS_HEADERS.with(std::cell::Cell::get)
}

/// A header of the HTTP call response being delivered.
pub fn call_response_header(name: &str) -> Option<Vec<u8>> {
    if !call_answer_readable() {
        return None;
    }
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
        .ok()
        .flatten()
}

/// Status and body of the HTTP call response being delivered; `None` and
/// nothing for a call that failed.
pub fn call_response(body_size: usize) -> (Option<u32>, Vec<u8>) {
    if !call_answer_readable() {
        return (None, Vec::new());
    }
    let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()));
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    (status, body)
}

/// A property of the current request (`["request", "id"]`,
/// `["response", "code"]`, ...), as Envoy encodes it.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    hostcalls::get_property(path.to_vec()).ok().flatten()
}

/// Sets a value in the request's filter state (`wasm.<name>` to Envoy), where
/// the access log reads it with `%FILTER_STATE(wasm.<name>:PLAIN)%`.
pub fn set_filter_state(name: &str, value: &[u8]) -> HostResult<()> {
    hostcalls::set_property(vec![name], Some(value))
}

/// Metrics by name (counters and a gauge), defined on first use (per VM; Envoy aggregates them
/// across workers and shows them as `wasmcustom.<name>` in its stats and on
/// its Prometheus endpoint).
#[derive(Default)]
pub struct Counters {
    ids: std::collections::HashMap<String, u32>,
}

impl Counters {
    /// The metric's id, defining it on first use.
    fn id(&mut self, kind: proxy_wasm::types::MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        self.ids.insert(name.to_owned(), id);
        Some(id)
    }

    /// Defines metrics before their first event, so they are scraped as 0
    /// from the start: a series that appears only with its first failure
    /// breaks `rate()` and alerts on it.
    pub fn define(&mut self, counters: &[&str], gauges: &[&str]) {
        for name in counters {
            let _ = self.id(proxy_wasm::types::MetricType::Counter, name);
        }
        for name in gauges {
            let _ = self.id(proxy_wasm::types::MetricType::Gauge, name);
        }
    }

    pub fn add(&mut self, name: &str, n: u64) {
        if let Some(id) = self.id(proxy_wasm::types::MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Sets a gauge. Envoy keeps one gauge per name for all worker VMs;
    /// every VM writes the same value (the policy version), so the last
    /// write is right.
    pub fn set_gauge(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(proxy_wasm::types::MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    /// Adds `delta` to a gauge that sums a value over every VM (each VM
    /// adds the change of its own share).
    pub fn add_to_gauge(&mut self, name: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        if let Some(id) = self.id(proxy_wasm::types::MetricType::Gauge, name) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }
}

/// The size of this VM's linear memory in bytes (what it holds resident at
/// most; wasm memory never shrinks).
pub fn vm_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) as u64).saturating_mul(65_536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}
