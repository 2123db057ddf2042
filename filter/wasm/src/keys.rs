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
use warden_engine::auth::jwks::{JwksError, KeySet};
use warden_engine::auth::keys::{jwks_uri_from_discovery, Freshness, RemoteJwks};
use warden_engine::auth::{Issuer, KeySource};
use warden_engine::request::KeyView;

use crate::host::{self, EnvoyShared, HostResult, SharedData};

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
    /// Re-reads the shared copy if another VM replaced it: `Ok(true)` if it
    /// did. A copy that is not a JWKS is refused (`Err`) once per CAS, and
    /// the keys held stay in use.
    pub fn refresh(&mut self, shared: &impl SharedData, issuer: &str) -> Result<bool, JwksError> {
        let Ok((Some(bytes), cas)) = shared.get(&jwks_key(issuer)) else {
            return Ok(false);
        };
        if cas.is_some() && cas == self.cas {
            return Ok(false);
        }
        self.cas = cas;
        let Some((stamp, jwks)) = bytes.split_first_chunk::<8>() else {
            return Ok(false);
        };
        let (set, _) = KeySet::from_jwks(jwks)?;
        self.fetched_at = Some(u64::from_be_bytes(*stamp));
        self.set = Some(Rc::new(set));
        Ok(true)
    }

    /// Keeps keys this VM fetched (`jwks`, parsed as `set`) and shares them
    /// with the other VMs, stamped with the time of the fetch. An error
    /// means they could not be shared; this VM uses them anyway.
    pub fn share(
        &mut self,
        shared: &impl SharedData,
        issuer: &str,
        set: KeySet,
        jwks: &[u8],
        now: u64,
    ) -> HostResult<()> {
        let mut record = now.to_be_bytes().to_vec();
        record.extend_from_slice(jwks);
        let written = shared.set(&jwks_key(issuer), &record, None);
        self.set = Some(Rc::new(set));
        self.fetched_at = Some(now);
        // Our own write changed the CAS; re-read so the next refresh does
        // not parse the same document again.
        self.cas = shared.get(&jwks_key(issuer)).ok().and_then(|(_, cas)| cas);
        written
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

/// [`VmKeys::refresh`] from Envoy's shared data, logging a copy that cannot
/// be read; true if the keys were replaced.
pub fn refresh(vm: &mut VmKeys, issuer: &str) -> bool {
    vm.refresh(&EnvoyShared, issuer).unwrap_or_else(|err| {
        host::log(
            LogLevel::Warn,
            &format!("warden: shared keys of {issuer} unreadable: {err}"),
        );
        false
    })
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
pub fn try_lease(
    shared: &impl SharedData,
    issuer: &str,
    now: u64,
    allowed: impl Fn(Option<u64>) -> bool,
) -> bool {
    shared.try_lease(&lease_key(issuer), now, allowed)
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
        None => discovered_location(&EnvoyShared, &issuer.issuer),
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

/// Where discovery (by any VM) found the issuer's JWKS: `(authority, path)`.
fn discovered_location(shared: &impl SharedData, issuer: &str) -> Option<(String, String)> {
    let (bytes, _) = shared.get(&location_key(issuer)).ok()?;
    let text = String::from_utf8(bytes?).ok()?;
    let (authority, path) = text.split_once('\n')?;
    Some((authority.to_owned(), path.to_owned()))
}

fn share_location(
    shared: &impl SharedData,
    issuer: &str,
    authority: &str,
    path: &str,
) -> HostResult<()> {
    shared.set(
        &location_key(issuer),
        format!("{authority}\n{path}").as_bytes(),
        None,
    )
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
            let _ = share_location(&EnvoyShared, name, &authority, &path);
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
                    let loaded = set.len();
                    if let Err(status) = vm.share(&EnvoyShared, name, set, &body, now) {
                        host::log(
                            LogLevel::Warn,
                            &format!("warden: cannot share the keys of {name}: {status:?}"),
                        );
                    }
                    host::log(
                        LogLevel::Info,
                        &format!(
                            "warden: loaded {loaded} signing key(s) of {name} ({skipped} skipped)"
                        ),
                    );
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::testing::{FakeShared, Interleaved};

    const ISS: &str = "https://idp.example.com";
    const NOW: u64 = 1_800_000_000;
    /// One Ed25519 key (RFC 8037's example), then two.
    const ONE_KEY: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    const TWO_KEYS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},{"kty":"OKP","crv":"Ed25519","kid":"b","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    fn remote() -> RemoteJwks {
        RemoteJwks {
            cluster: "idp".into(),
            authority: "idp.example.com".into(),
            jwks_path: Some("/jwks".into()),
            discovery_path: "/.well-known/openid-configuration".into(),
            refresh_seconds: 300,
            max_stale_seconds: 3600,
            min_refetch_seconds: 10,
            timeout_ms: 5000,
        }
    }

    /// One VM's timer for the issuer, as `WardenRoot::on_tick` runs it:
    /// re-read the shared keys, then fetch only if due and the lease is won.
    /// True if this VM starts a fetch.
    fn tick(vm: &mut VmKeys, shared: &impl SharedData, remote: &RemoteJwks, now: u64) -> bool {
        let _ = vm.refresh(shared, ISS);
        let fetched_at = vm.fetched_at;
        try_lease(shared, ISS, now, |last| {
            remote.fetch_due(fetched_at, last, now)
        })
    }

    /// A token with an unknown `kid`, as `Vm::refetch_for_unknown_kid`
    /// handles it: true if this VM starts a fetch.
    fn unknown_kid(
        vm: &mut VmKeys,
        shared: &impl SharedData,
        remote: &RemoteJwks,
        now: u64,
    ) -> bool {
        if vm.refresh(shared, ISS) == Ok(true) {
            return false;
        }
        try_lease(shared, ISS, now, |last| remote.may_refetch(last, now))
    }

    /// The JWKS a VM fetched arrives.
    fn fetched(vm: &mut VmKeys, shared: &impl SharedData, jwks: &[u8], now: u64) {
        let (set, _) = KeySet::from_jwks(jwks).unwrap();
        vm.share(shared, ISS, set, jwks, now).unwrap();
    }

    fn key_count(vm: &VmKeys) -> Option<usize> {
        vm.set.as_ref().map(|s| s.len())
    }

    #[test]
    fn of_vms_racing_for_the_lease_one_fetches_and_the_others_take_its_keys() {
        let store = FakeShared::default();
        let remote = remote();
        let (mut a, mut b) = (VmKeys::default(), VmKeys::default());
        assert!(tick(&mut a, &store, &remote, NOW));
        assert!(!tick(&mut b, &store, &remote, NOW), "A holds the lease");
        assert!(
            !tick(&mut b, &store, &remote, NOW + 1),
            "A's fetch is under way"
        );
        fetched(&mut a, &store, ONE_KEY, NOW + 2);
        // B takes A's keys, and fetches nothing while they are fresh.
        for now in NOW + 2..NOW + 2 + 300 {
            assert!(!tick(&mut b, &store, &remote, now));
        }
        assert_eq!((b.fetched_at, key_count(&b)), (Some(NOW + 2), Some(1)));
        // The refresh is due on both at the same moment, and B takes the
        // lease between A's read of it and A's write: A's CAS is stale.
        let due = NOW + 2 + 300;
        let mut b_won = false;
        let a_won = {
            let a_view = Interleaved::new(&store, |_| {
                b_won = tick(&mut b, &store, &remote, due);
            });
            tick(&mut a, &a_view, &remote, due)
        };
        assert!(b_won && !a_won, "exactly one VM fetches");
        fetched(&mut b, &store, TWO_KEYS, due + 1);
        assert!(!tick(&mut a, &store, &remote, due + 1));
        assert_eq!((a.fetched_at, key_count(&a)), (Some(due + 1), Some(2)));
    }

    #[test]
    fn a_lease_whose_vm_died_is_taken_over_after_min_refetch() {
        let store = FakeShared::default();
        let remote = remote();
        let (mut a, mut b, mut c) = (VmKeys::default(), VmKeys::default(), VmKeys::default());
        // A takes the lease and never answers (its VM died).
        assert!(tick(&mut a, &store, &remote, NOW));
        for now in NOW..NOW + remote.min_refetch_seconds {
            assert!(!tick(&mut b, &store, &remote, now), "at {}", now - NOW);
        }
        let later = NOW + remote.min_refetch_seconds;
        assert!(tick(&mut b, &store, &remote, later));
        assert!(!tick(&mut c, &store, &remote, later), "and only one VM");
        // A lease that is not a time (a short value) blocks nothing.
        store.set(&lease_key(ISS), b"junk", None).unwrap();
        assert!(tick(&mut c, &store, &remote, later));
    }

    #[test]
    fn unknown_kids_fetch_once_per_min_refetch_across_vms() {
        let store = FakeShared::default();
        let remote = remote();
        let mut vms: Vec<VmKeys> = (0..4).map(|_| VmKeys::default()).collect();
        let mut fetches = Vec::new();
        for now in NOW..NOW + 30 {
            for vm in &mut vms {
                if unknown_kid(vm, &store, &remote, now) {
                    fetches.push(now - NOW);
                }
            }
        }
        assert_eq!(fetches, [0, 10, 20]);
        // Keys another VM shared meanwhile are taken instead of fetching.
        let mut d = VmKeys::default();
        let (set, _) = KeySet::from_jwks(ONE_KEY).unwrap();
        d.share(&store, ISS, set, ONE_KEY, NOW + 40).unwrap();
        assert!(!unknown_kid(&mut vms[0], &store, &remote, NOW + 40));
        assert_eq!(key_count(&vms[0]), Some(1));
    }

    #[test]
    fn shared_keys_are_parsed_again_only_when_their_cas_changed() {
        let store = FakeShared::default();
        let (mut a, mut b) = (VmKeys::default(), VmKeys::default());
        assert_eq!(b.refresh(&store, ISS), Ok(false), "nothing shared yet");
        fetched(&mut a, &store, ONE_KEY, NOW);
        assert_eq!(a.refresh(&store, ISS), Ok(false), "A's own write");
        assert_eq!(b.refresh(&store, ISS), Ok(true));
        let parsed = b.set.clone().unwrap();
        assert_eq!(b.refresh(&store, ISS), Ok(false));
        assert!(b.set.as_ref().is_some_and(|s| Rc::ptr_eq(s, &parsed)));
        // The same document fetched again: a new write, read again (its
        // time is news: the keys are fresh again).
        fetched(&mut a, &store, ONE_KEY, NOW + 300);
        assert_eq!(b.refresh(&store, ISS), Ok(true));
        assert_eq!(b.fetched_at, Some(NOW + 300));
        assert!(b.set.as_ref().is_some_and(|s| !Rc::ptr_eq(s, &parsed)));
        // Each issuer has its own keys.
        let mut other = VmKeys::default();
        assert_eq!(
            other.refresh(&store, "https://other.example.com"),
            Ok(false)
        );
        assert!(other.set.is_none());
    }

    #[test]
    fn unreadable_shared_keys_are_refused_once_and_the_last_good_ones_kept() {
        let store = FakeShared::default();
        let (mut a, mut b, mut fresh) = (VmKeys::default(), VmKeys::default(), VmKeys::default());
        fetched(&mut a, &store, ONE_KEY, NOW);
        assert_eq!(b.refresh(&store, ISS), Ok(true));
        let stamp = NOW.to_be_bytes();
        let not_json = [&stamp[..], b"not json"].concat();
        // A shared secret is never taken from a fetched set.
        let secret_only = [
            &stamp[..],
            br#"{"keys":[{"kty":"oct","k":"c2VjcmV0c2VjcmV0"}]}"#,
        ]
        .concat();
        let junk: [(&[u8], Result<bool, JwksError>); 5] = [
            (b"", Ok(false)),
            (&stamp[..7], Ok(false)),
            (&stamp, Err(JwksError::Shape)),
            (&not_json, Err(JwksError::Shape)),
            (&secret_only, Err(JwksError::NoUsableKey(1))),
        ];
        for (value, refused) in junk {
            store.set(&jwks_key(ISS), value, None).unwrap();
            assert_eq!(b.refresh(&store, ISS), refused, "{value:?}");
            assert_eq!(b.refresh(&store, ISS), Ok(false), "once per CAS: {value:?}");
            assert_eq!((b.fetched_at, key_count(&b)), (Some(NOW), Some(1)));
            assert_eq!(fresh.refresh(&store, ISS), refused);
            assert!(fresh.set.is_none() && fresh.fetched_at.is_none());
        }
        // A good copy after the junk is taken.
        fetched(&mut a, &store, TWO_KEYS, NOW + 5);
        assert_eq!(b.refresh(&store, ISS), Ok(true));
        assert_eq!(key_count(&b), Some(2));
    }

    #[test]
    fn a_discovered_jwks_location_is_shared_with_every_vm() {
        let store = FakeShared::default();
        assert_eq!(discovered_location(&store, ISS), None);
        share_location(&store, ISS, "idp.example.com:8443", "/realms/acme/certs").unwrap();
        assert_eq!(
            discovered_location(&store, ISS),
            Some(("idp.example.com:8443".into(), "/realms/acme/certs".into()))
        );
        assert_eq!(
            discovered_location(&store, "https://other.example.com"),
            None
        );
        for junk in [&b"no newline"[..], b"\xff\n/certs"] {
            store.set(&location_key(ISS), junk, None).unwrap();
            assert_eq!(discovered_location(&store, ISS), None);
        }
    }
}
