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
//! - [`http`]: `WardenHttp`, one per request: a small state machine that feeds
//!   the engine's request steps and turns their answers into host actions.
//! - [`keys`]: issuer keys fetched through an Envoy cluster and shared by all
//!   worker VMs through proxy-wasm shared data.
//! - [`host`]: every host call, returning `Result`s instead of trapping.
//!
//! Failure is closed everywhere: no configuration, keys or policy means a 503
//! that says which; a panic aborts the VM, which Envoy (with
//! `failure_policy: FAIL_CLOSED`) turns into a 503 with nothing sent upstream.

mod host;
mod http;
mod keys;

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
use warden_engine::policy::Policy;

/// Tick while some issuer's keys are not loaded yet, and once they are.
const FAST_TICK: Duration = Duration::from_millis(250);
const SLOW_TICK: Duration = Duration::from_secs(1);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        // The message is ours (engine code never formats secrets into a
        // panic); the location makes the Envoy log actionable.
        host::log(LogLevel::Critical, &format!("warden: panic: {info}"));
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
}

impl Vm {
    /// Re-reads shared keys of issuers this VM has none of yet: cheap, and
    /// only until the first fetch lands.
    pub fn refresh_missing_keys(&mut self) {
        for (i, issuer) in self.config.auth.issuers.iter().enumerate() {
            if let (KeySource::Remote(_), Some(vm_keys)) = (&issuer.keys, self.keys.get_mut(i)) {
                if vm_keys.set.is_none() {
                    vm_keys.refresh(&issuer.issuer);
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
        keys::on_response(iss, remote, stage, body_size, vm_keys, host::now_secs())
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
        if vm_keys.refresh(&iss.issuer) {
            return Refetch::Refreshed;
        }
        if !keys::try_lease(&iss.issuer, now, |last| remote.may_refetch(last, now)) {
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

/// What [`Vm::refetch_for_unknown_kid`] did.
pub enum Refetch {
    /// Nothing to wait for: the token's key is unknown (or rate-limited).
    No,
    /// The shared keys changed since this VM last read them.
    Refreshed,
    /// A JWKS call is in flight; its answer arrives to the request.
    Started(u32),
}

#[derive(Default)]
pub struct WardenRoot {
    vm: Option<Rc<RefCell<Vm>>>,
    /// Key fetches in flight: call token -> (issuer index, stage).
    fetches: HashMap<u32, (usize, keys::Stage)>,
    tick: Option<Duration>,
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
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((issuer, stage)) = self.fetches.remove(&token_id) else {
            return;
        };
        let Some(vm) = self.vm.clone() else { return };
        let next = vm.borrow_mut().on_key_response(issuer, stage, body_size);
        if let Some((call, next_stage)) = next {
            self.fetches.insert(call, (issuer, next_stage));
        }
    }
}

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
        let mut config = match FilterConfig::from_bytes(&bytes, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(err) => {
                host::log(LogLevel::Error, &format!("warden: {err}"));
                return false;
            }
        };
        for p in config
            .providers
            .iter()
            .filter(|p| p.credential_value.is_none())
        {
            host::log(
                LogLevel::Warn,
                &format!(
                    "warden: provider '{}' has no API key: {} is not set in Envoy's environment (or not listed in vm_config.environment_variables.host_env_keys); its requests will get 503",
                    p.name, p.credential_env
                ),
            );
        }
        let policy = config.initial_policy.take().map(Rc::new);
        if policy.is_none() {
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
        self.vm = Some(Rc::new(RefCell::new(Vm {
            config: Rc::new(config),
            policy,
            keys: (0..issuers).map(|_| keys::VmKeys::default()).collect(),
            cache,
            counters: host::Counters::default(),
        })));
        self.tick = None;
        self.set_tick(FAST_TICK);
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
            vm_keys.refresh(&issuer.issuer);
            let fetched_at = vm_keys.fetched_at;
            if remote.freshness(fetched_at, now) == Freshness::NotLoaded {
                all_loaded = false;
            }
            let in_flight = self.fetches.values().any(|(idx, _)| *idx == i);
            // The lease decides across VMs; only its winner fetches.
            if !in_flight
                && keys::try_lease(&issuer.issuer, now, |last| {
                    remote.fetch_due(fetched_at, last, now)
                })
            {
                if let Some((token, stage)) = keys::start_fetch(issuer, remote) {
                    self.fetches.insert(token, (i, stage));
                }
            }
        }
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
