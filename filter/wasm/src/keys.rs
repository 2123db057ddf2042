//! Issuer keys fetched through Envoy and shared by every worker VM.
//!
//! One copy of each issuer's JWKS lives in proxy-wasm shared data (written by
//! whichever VM fetched it); each VM keeps a parsed copy and re-parses only
//! when the shared copy's CAS changes. A lease in shared data (the time of the
//! last attempt, written with CAS) makes fetches coalesce across VMs and rate
//! limits the fetches that unknown `kid`s trigger. The decisions (is a fetch
//! due, may one happen now, are the keys still usable) are the engine's.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::types::LogLevel;
use warden_engine::auth::jwks::KeySet;
use warden_engine::auth::keys::{jwks_uri_from_discovery, Freshness, RemoteJwks};
use warden_engine::auth::{Issuer, KeySource};
use warden_engine::request::KeyView;

use crate::host;

fn jwks_key(issuer: &str) -> String {
    format!("warden/v1/jwks/{issuer}")
}
fn lease_key(issuer: &str) -> String {
    format!("warden/v1/jwks-lease/{issuer}")
}
fn location_key(issuer: &str) -> String {
    format!("warden/v1/jwks-location/{issuer}")
}

/// This VM's parsed copy of one issuer's remote keys.
#[derive(Default)]
pub struct VmKeys {
    cas: Option<u32>,
    pub fetched_at: Option<u64>,
    pub set: Option<Rc<KeySet>>,
}

impl VmKeys {
    /// Re-reads the shared copy if another VM replaced it; true if it did.
    pub fn refresh(&mut self, issuer: &str) -> bool {
        let Ok((Some(bytes), cas)) = host::shared_get(&jwks_key(issuer)) else {
            return false;
        };
        if cas.is_some() && cas == self.cas {
            return false;
        }
        self.cas = cas;
        let Some((stamp, jwks)) = bytes.split_first_chunk::<8>() else {
            return false;
        };
        match KeySet::from_jwks(jwks) {
            Ok((set, _)) => {
                self.fetched_at = Some(u64::from_be_bytes(*stamp));
                self.set = Some(Rc::new(set));
                true
            }
            Err(err) => {
                host::log(
                    LogLevel::Warn,
                    &format!("warden: shared keys of {issuer} unreadable: {err}"),
                );
                false
            }
        }
    }

    /// What a request may use now.
    pub fn view(&self, remote: &RemoteJwks, now: u64) -> KeyView<'_> {
        match (remote.freshness(self.fetched_at, now), &self.set) {
            (Freshness::Fresh | Freshness::Stale, Some(set)) => KeyView::Ready(set),
            (Freshness::Expired, Some(_)) => KeyView::Expired,
            _ => KeyView::NotLoaded,
        }
    }
}

/// The view of an issuer's keys, static or remote.
pub fn view<'a>(issuer: &'a Issuer, vm: &'a VmKeys, now: u64) -> KeyView<'a> {
    match &issuer.keys {
        KeySource::Static(set) => KeyView::Ready(set),
        KeySource::Remote(remote) => vm.view(remote, now),
    }
}

/// Takes the fetch lease for `issuer` if `allowed(last_attempt)` says a fetch
/// may start now; only one VM wins a given lease.
pub fn try_lease(issuer: &str, now: u64, allowed: impl Fn(Option<u64>) -> bool) -> bool {
    host::try_lease(&lease_key(issuer), now, allowed)
}

/// Which step of a fetch an HTTP call answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Discovery,
    Jwks,
}

/// Starts the next call of a fetch: discovery when the JWKS location is not
/// configured (nor discovered recently by any VM), else the JWKS itself.
pub fn start_fetch(issuer: &Issuer, remote: &RemoteJwks) -> Option<(u32, Stage)> {
    let timeout = Duration::from_millis(remote.timeout_ms);
    let target = match &remote.jwks_path {
        Some(path) => Some((remote.authority.clone(), path.clone())),
        None => discovered_location(&issuer.issuer),
    };
    let result = match &target {
        Some((authority, path)) => {
            host::dispatch_get(&remote.cluster, authority, path, timeout).map(|t| (t, Stage::Jwks))
        }
        None => host::dispatch_get(
            &remote.cluster,
            &remote.authority,
            &remote.discovery_path,
            timeout,
        )
        .map(|t| (t, Stage::Discovery)),
    };
    match result {
        Ok(call) => Some(call),
        Err(status) => {
            host::log(
                LogLevel::Warn,
                &format!(
                    "warden: cannot fetch keys of {} through cluster '{}': {status:?}",
                    issuer.issuer, remote.cluster
                ),
            );
            None
        }
    }
}

fn discovered_location(issuer: &str) -> Option<(String, String)> {
    let (bytes, _) = host::shared_get(&location_key(issuer)).ok()?;
    let text = String::from_utf8(bytes?).ok()?;
    let (authority, path) = text.split_once('\n')?;
    Some((authority.to_owned(), path.to_owned()))
}

/// Handles the answer to a fetch call. Returns the next call to wait for (a
/// JWKS call after discovery), or `None` when the fetch is over; on success
/// the new keys are in shared data and in `vm`.
pub fn on_response(
    issuer: &Issuer,
    remote: &RemoteJwks,
    stage: Stage,
    body_size: usize,
    vm: &mut VmKeys,
    now: u64,
    counters: &mut host::Counters,
) -> Option<(u32, Stage)> {
    let (status, body) = host::call_response(body_size);
    let name = &issuer.issuer;
    if status != Some(200) {
        counters.add("warden.keys.fetch_failures", 1);
        host::log(
            LogLevel::Warn,
            &format!(
                "warden: fetching keys of {name}: {stage:?} answered {}",
                status.map_or("no status".into(), |s| s.to_string())
            ),
        );
        return None;
    }
    match stage {
        Stage::Discovery => {
            let Some((authority, path)) = jwks_uri_from_discovery(&body) else {
                host::log(
                    LogLevel::Warn,
                    &format!("warden: the discovery document of {name} has no usable jwks_uri"),
                );
                return None;
            };
            let _ = host::shared_set(
                &location_key(name),
                format!("{authority}\n{path}").as_bytes(),
                None,
            );
            let timeout = Duration::from_millis(remote.timeout_ms);
            match host::dispatch_get(&remote.cluster, &authority, &path, timeout) {
                Ok(token) => Some((token, Stage::Jwks)),
                Err(status) => {
                    host::log(
                        LogLevel::Warn,
                        &format!("warden: cannot fetch the JWKS of {name}: {status:?}"),
                    );
                    None
                }
            }
        }
        Stage::Jwks => {
            match KeySet::from_jwks(&body) {
                Ok((set, skipped)) => {
                    let mut record = now.to_be_bytes().to_vec();
                    record.extend_from_slice(&body);
                    if let Err(status) = host::shared_set(&jwks_key(name), &record, None) {
                        host::log(
                            LogLevel::Warn,
                            &format!("warden: cannot share the keys of {name}: {status:?}"),
                        );
                    }
                    host::log(
                        LogLevel::Info,
                        &format!(
                            "warden: loaded {} signing key(s) of {name} ({skipped} skipped)",
                            set.len()
                        ),
                    );
                    vm.set = Some(Rc::new(set));
                    vm.fetched_at = Some(now);
                    // Our own write changed the CAS; re-read so the next
                    // refresh does not parse the same document again.
                    vm.cas = host::shared_get(&jwks_key(name))
                        .ok()
                        .and_then(|(_, cas)| cas);
                }
                Err(err) => {
                    counters.add("warden.keys.fetch_failures", 1);
                    host::log(
                        LogLevel::Warn,
                        &format!("warden: the JWKS of {name} was refused: {err}"),
                    )
                }
            }
            None
        }
    }
}
