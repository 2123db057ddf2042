//! # warden-filter
//!
//! The proxy-wasm adapter that runs Warden inside Envoy. It is deliberately
//! thin: host calls in, engine decisions out. Everything that decides lives in
//! `warden-engine`, where it is tested natively and under wasm.
//!
//! ## Layout
//! - this file: [`WardenRoot`], one per worker VM. Reads the plugin
//!   configuration once in `on_configure` (returning `false` makes Envoy refuse
//!   a bad configuration instead of serving with it), keeps issuer keys fresh
//!   on a timer, and hands each request the worker's state behind an `Rc`.
//! - [`http`]: `WardenHttp`, one per request: hands proxy-wasm's callbacks
//!   to the engine's `Exchange` (the request's state machine) and implements
//!   the `Host` it acts through.
//! - [`keys`]: issuer keys fetched through an Envoy cluster and shared by all
//!   worker VMs through proxy-wasm shared data.
//! - [`published`]: the policy version the control plane publishes, polled
//!   the same way (one VM per period, shared with all, swapped per VM).
//! - [`audit`]: recorded sessions, queued per VM (bounded; drops counted)
//!   and sent to the control plane in batches by the root context.
//! - [`host`]: every host call, returning `Result`s instead of trapping.
//!   Shared data goes through its `SharedData` trait, so that the protocols
//!   of [`keys`] and [`published`] are unit-tested on `testing`'s in-memory
//!   store, which keeps Envoy's CAS rules.
//!
//! Failure is closed everywhere: no configuration, keys or policy means a 503
//! that says which; a panic aborts the VM, which Envoy (with
//! `failure_policy: FAIL_CLOSED`) turns into a 503 with nothing sent upstream.

// A panic aborts the worker's VM: no slicing of text or indexing that could
// fail on input (use `get`), as in the engine.
#![deny(clippy::string_slice, clippy::indexing_slicing)]

mod audit;
mod host;
mod http;
mod keys;
mod published;
#[cfg(test)]
mod testing;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use warden_engine::auth::cache::TokenCache;
use warden_engine::auth::keys::Freshness;
use warden_engine::auth::KeySource;
use warden_engine::config::FilterConfig;
use warden_engine::control::{ControlPlane, PublishedPolicy};
use warden_engine::exchange::Refetch;
use warden_engine::policy::Policy;

use host::EnvoyShared;

/// The first tick after `on_configure`: it starts the first key fetch and
/// policy poll. Until an issuer's keys load, its tokens get 503 though Envoy
/// already reports itself ready, so that wait is kept short (a timer only
/// fires once Envoy's dispatcher runs, after its clusters are initialized).
const FIRST_TICK: Duration = Duration::from_millis(5);
/// Tick while some issuer's keys are not loaded yet, and once they are.
const FAST_TICK: Duration = Duration::from_millis(250);
const SLOW_TICK: Duration = Duration::from_secs(1);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        // Only where: the standard library's messages quote the text they
        // failed on (a slice of a prompt, a header), which must not reach
        // Envoy's log. The location makes the log actionable.
        let at = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        host::log(LogLevel::Critical, &format!("warden: panic{at}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(WardenRoot::default()) });
}}

/// What every request of one worker VM shares.
pub struct Vm {
    pub config: Rc<FilterConfig>,
    /// The policy requests start under; a request keeps the one it started with.
    pub policy: Option<Rc<Policy>>,
    /// This VM's copy of each issuer's remote keys (by issuer index).
    pub keys: Vec<keys::VmKeys>,
    pub cache: TokenCache,
    /// Requests by decision and matches by rule and action (names only).
    pub counters: host::Counters,
    /// This VM's view of the published policy.
    pub published: published::VmPublished,
    /// When this VM was configured: the staleness bound counts from here
    /// until the control plane first answers.
    pub started_at: u64,
    /// When the control plane last answered any VM's poll.
    pub policy_contact: Option<u64>,
    /// Session records waiting to be sent.
    pub audit: audit::Queue,
}

impl Vm {
    /// At a request's start and on the tick: installs a version another VM
    /// fetched (one 8-byte shared read when there is none).
    pub fn catch_up_policy(&mut self) {
        if self.config.control_plane.is_none() {
            return;
        }
        if let Some(p) = published::refresh(&mut self.published) {
            self.install(p);
        }
    }

    /// Makes `p` the policy new requests start under.
    pub fn install(&mut self, p: PublishedPolicy) {
        host::log(
            LogLevel::Info,
            &format!("warden: policy version {} is active", p.version),
        );
        self.counters.set_gauge("warden.policy.version", p.version);
        self.policy = Some(Rc::new(p.policy));
    }

    /// How long the control plane has been silent, if that is longer than
    /// the policy may be used without it.
    pub fn policy_silence(&self, now: u64) -> Option<u64> {
        let cp = self.config.control_plane.as_ref()?;
        let since = self.policy_contact.unwrap_or(0).max(self.started_at);
        let silent = now.saturating_sub(since);
        (silent > cp.max_stale_seconds).then_some(silent)
    }

    /// [`Self::policy_silence`], looking again at the shared last contact
    /// before calling the policy stale: another worker may have reached the
    /// control plane since this VM's last tick (after an outage, workers
    /// would otherwise recover up to a tick apart). Costs a shared-data read
    /// on the stale path only.
    pub fn current_policy_silence(&mut self, now: u64) -> Option<u64> {
        self.policy_silence(now)?;
        self.policy_contact = published::last_contact(&EnvoyShared);
        self.policy_silence(now)
    }

    /// Re-reads shared keys of issuers this VM has none of yet: cheap, and
    /// only until the first fetch lands.
    pub fn refresh_missing_keys(&mut self) {
        for (i, issuer) in self.config.auth.issuers.iter().enumerate() {
            if let (KeySource::Remote(_), Some(vm_keys)) = (&issuer.keys, self.keys.get_mut(i)) {
                if vm_keys.set.is_none() {
                    keys::refresh(vm_keys, &issuer.issuer);
                }
            }
        }
    }

    /// Handles the answer to a key fetch of issuer `issuer` (from the root's
    /// timer or from a request's unknown `kid`); returns the next call of
    /// the fetch, if it has one.
    pub fn on_key_response(
        &mut self,
        issuer: usize,
        stage: keys::Stage,
        body_size: usize,
    ) -> Option<(u32, keys::Stage)> {
        let config = self.config.clone();
        let iss = config.auth.issuers.get(issuer)?;
        let KeySource::Remote(remote) = &iss.keys else {
            return None;
        };
        let vm_keys = self.keys.get_mut(issuer)?;
        keys::on_response(
            iss,
            remote,
            stage,
            body_size,
            vm_keys,
            host::now_secs(),
            &mut self.counters,
        )
    }

    /// For a token naming a key this VM does not hold: re-reads the shared
    /// keys (true if another worker already fetched new ones), else starts a
    /// JWKS fetch if the issuer's rate limit allows one now.
    pub fn refetch_for_unknown_kid(&mut self, issuer: usize, now: u64) -> Refetch {
        let config = self.config.clone();
        let (Some(iss), Some(vm_keys)) =
            (config.auth.issuers.get(issuer), self.keys.get_mut(issuer))
        else {
            return Refetch::No;
        };
        let KeySource::Remote(remote) = &iss.keys else {
            return Refetch::No;
        };
        if keys::refresh(vm_keys, &iss.issuer) {
            return Refetch::Refreshed;
        }
        if !keys::try_lease(&EnvoyShared, &iss.issuer, now, |last| {
            remote.may_refetch(last, now)
        }) {
            return Refetch::No;
        }
        // Requests only fetch a JWKS whose location is known; discovery is
        // the timer's job.
        match keys::start_fetch(iss, remote) {
            Some((call, keys::Stage::Jwks)) => Refetch::Started(call),
            _ => Refetch::No,
        }
    }
}

/// A call the root context has in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// A key fetch: issuer index and stage.
    Keys(usize, keys::Stage),
    /// A poll of the published policy.
    Policy,
    /// A batch of session records.
    Sessions,
}

#[derive(Default)]
pub struct WardenRoot {
    vm: Option<Rc<RefCell<Vm>>>,
    fetches: HashMap<u32, Fetch>,
    tick: Option<Duration>,
    /// The session records of the batch in flight (re-queued if it fails).
    batch: Vec<Vec<u8>>,
    /// This VM's share of the `warden.vm.memory_bytes` gauge.
    reported_memory: u64,
}

impl WardenRoot {
    /// Sends the next batch of session records, one batch at a time.
    fn send_sessions(&mut self, vm: &mut Vm) {
        let Some(cp) = vm.config.control_plane.clone() else {
            return;
        };
        if !self.batch.is_empty() || vm.audit.is_empty() {
            return;
        }
        let batch = vm.audit.take_batch();
        let body = warden_engine::protocol::sessions_batch(&batch);
        let sent = host::dispatch(
            &cp.cluster,
            cp.headers("POST", warden_engine::protocol::SESSIONS_PATH),
            Some(&body),
            Duration::from_millis(cp.timeout_ms),
        );
        match sent {
            Ok(token) => {
                self.fetches.insert(token, Fetch::Sessions);
                self.batch = batch;
            }
            Err(_) => {
                vm.counters.add("warden.audit.send_failures", 1);
                let dropped = vm.audit.requeue(batch);
                vm.counters.add("warden.audit.dropped", dropped);
            }
        }
    }

    /// Re-reads the shared policy and, if this VM wins the lease, polls the
    /// control plane.
    fn poll_policy(&mut self, vm: &mut Vm, now: u64) {
        let Some(cp) = vm.config.control_plane.clone() else {
            return;
        };
        vm.catch_up_policy();
        vm.policy_contact = published::last_contact(&EnvoyShared);
        let in_flight = self.fetches.values().any(|f| *f == Fetch::Policy);
        if in_flight {
            published::renew_lease(&EnvoyShared, now);
            return;
        }
        if published::try_lease(&EnvoyShared, now, cp.poll_seconds) {
            self.start_policy_poll(vm, &cp);
        }
    }

    /// Starts a poll (a watch, with `watch_seconds`) as the lease holder.
    fn start_policy_poll(&mut self, vm: &mut Vm, cp: &ControlPlane) {
        vm.published.poll_starting(&EnvoyShared);
        let etag = vm.published.etag.clone().filter(|e| !e.is_empty());
        match published::start_poll(cp, etag.as_deref()) {
            Some(token) => {
                self.fetches.insert(token, Fetch::Policy);
            }
            None => vm.counters.add("warden.policy.fetch_failures", 1),
        }
    }
}

impl WardenRoot {
    fn set_tick(&mut self, period: Duration) {
        if self.tick != Some(period) && host::set_tick_period(period).is_ok() {
            self.tick = Some(period);
        }
    }
}

impl Context for WardenRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        host::call_answer_arrived(num_headers);
        let Some(fetch) = self.fetches.remove(&token_id) else {
            return;
        };
        let Some(vm) = self.vm.clone() else { return };
        let mut vm = vm.borrow_mut();
        match fetch {
            Fetch::Keys(issuer, stage) => {
                if let Some((call, next_stage)) = vm.on_key_response(issuer, stage, body_size) {
                    self.fetches.insert(call, Fetch::Keys(issuer, next_stage));
                }
            }
            Fetch::Sessions => {
                let (status, body) = host::call_response(body_size);
                let batch = std::mem::take(&mut self.batch);
                if warden_engine::protocol::sessions_stored(status, &body) {
                    vm.counters.add("warden.audit.sent", batch.len() as u64);
                } else {
                    vm.counters.add("warden.audit.send_failures", 1);
                    let dropped = vm.audit.requeue(batch);
                    vm.counters.add("warden.audit.dropped", dropped);
                }
            }
            Fetch::Policy => {
                let now = host::now_secs();
                let honoured = published::watch_honoured();
                let Vm {
                    published, config, ..
                } = &mut *vm;
                let answered = match published::on_response(body_size, now, config, published) {
                    published::Polled::New(p) => {
                        vm.counters.add("warden.policy.updates", 1);
                        vm.install(*p);
                        true
                    }
                    published::Polled::Unchanged => true,
                    published::Polled::Failed => {
                        vm.counters.add("warden.policy.fetch_failures", 1);
                        false
                    }
                };
                vm.policy_contact = published::last_contact(&EnvoyShared);
                // A watch answered (a new version, or its wait ran out):
                // the next one starts now, so no activation falls between
                // two watches. After a failure, the poll period paces retries.
                if let Some(cp) = vm.config.control_plane.clone() {
                    if answered && honoured && published::renew_lease(&EnvoyShared, now) {
                        self.start_policy_poll(&mut vm, &cp);
                    }
                }
            }
        }
    }
}

/// The metrics whose names are fixed, defined when the VM starts (the
/// others carry a provider, decision or rule, and appear with their first
/// request). `warden.policy.version` stays 0 until a published policy is
/// installed.
const FIXED_COUNTERS: &[&str] = &[
    "warden.keys.fetch_failures",
    "warden.policy.fetch_failures",
    "warden.policy.updates",
    "warden.audit.sent",
    "warden.audit.send_failures",
    "warden.audit.dropped",
    "warden.stream.trailers_withheld",
];
const FIXED_GAUGES: &[&str] = &["warden.policy.version", "warden.vm.memory_bytes"];

impl RootContext for WardenRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match host::plugin_configuration() {
            Ok(Some(bytes)) => bytes,
            _ => {
                host::log(
                    LogLevel::Error,
                    "warden: no plugin configuration; refusing to start (set `configuration` in the Envoy wasm filter)",
                );
                return false;
            }
        };
        let mut config = match FilterConfig::from_wire_bytes(&bytes, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(err) => {
                host::log(LogLevel::Error, &format!("warden: {err}"));
                return false;
            }
        };
        for p in &config.providers {
            let (None, Some(env)) = (&p.credential_value, &p.credential_env) else {
                continue;
            };
            host::log(
                LogLevel::Warn,
                &format!(
                    "warden: provider '{}' has no API key: {env} is not set in Envoy's environment (or not listed in vm_config.environment_variables.host_env_keys); its requests will get 503",
                    p.name
                ),
            );
        }
        let policy = config.initial_policy.take().map(Rc::new);
        if policy.is_none() && config.control_plane.is_none() {
            host::log(
                LogLevel::Warn,
                "warden: no policy configured; every request will get 503 until one is",
            );
        }
        host::log(
            LogLevel::Info,
            &format!(
                "warden {}: configured {} provider(s), {} issuer(s)",
                warden_engine::VERSION,
                config.providers.len(),
                config.auth.issuers.len()
            ),
        );
        let issuers = config.auth.issuers.len();
        let cache = TokenCache::new(config.auth.cache_entries, config.auth.skew_seconds);
        let mut counters = host::Counters::default();
        counters.define(FIXED_COUNTERS, FIXED_GAUGES);
        self.vm = Some(Rc::new(RefCell::new(Vm {
            config: Rc::new(config),
            policy,
            keys: (0..issuers).map(|_| keys::VmKeys::default()).collect(),
            cache,
            counters,
            published: published::VmPublished::default(),
            started_at: host::now_secs(),
            policy_contact: None,
            audit: audit::Queue::default(),
        })));
        self.tick = None;
        self.set_tick(FIRST_TICK);
        true
    }

    fn on_tick(&mut self) {
        let Some(vm) = self.vm.clone() else { return };
        let now = host::now_secs();
        let mut all_loaded = true;
        let mut vm = vm.borrow_mut();
        let config = vm.config.clone();
        for (i, issuer) in config.auth.issuers.iter().enumerate() {
            let (KeySource::Remote(remote), Some(vm_keys)) = (&issuer.keys, vm.keys.get_mut(i))
            else {
                continue;
            };
            keys::refresh(vm_keys, &issuer.issuer);
            let fetched_at = vm_keys.fetched_at;
            if remote.freshness(fetched_at, now) == Freshness::NotLoaded {
                all_loaded = false;
            }
            let in_flight = self
                .fetches
                .values()
                .any(|f| matches!(f, Fetch::Keys(idx, _) if *idx == i));
            // The lease decides across VMs; only its winner fetches.
            if !in_flight
                && keys::try_lease(&EnvoyShared, &issuer.issuer, now, |last| {
                    remote.fetch_due(fetched_at, last, now)
                })
            {
                if let Some((token, stage)) = keys::start_fetch(issuer, remote) {
                    self.fetches.insert(token, Fetch::Keys(i, stage));
                }
            }
        }
        self.poll_policy(&mut vm, now);
        self.send_sessions(&mut vm);
        let memory = host::vm_memory_bytes();
        let delta = i64::try_from(memory).unwrap_or(i64::MAX)
            - i64::try_from(self.reported_memory).unwrap_or(i64::MAX);
        vm.counters.add_to_gauge("warden.vm.memory_bytes", delta);
        self.reported_memory = memory;
        drop(vm);
        self.set_tick(if all_loaded { SLOW_TICK } else { FAST_TICK });
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(http::WardenHttp::new(self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
