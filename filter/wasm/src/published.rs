//! The published policy: polled from the control plane by one VM at a time
//! and shared with every worker VM through proxy-wasm shared data.
//!
//! Shared keys: the last answer the control plane served (its ETag and
//! body, stored only once this filter has compiled it, so no VM ever sees a
//! version it cannot load); the time of the control plane's last answer of
//! any kind (200, 304 or "no active policy"), which bounds how long a policy
//! may be used without it; and a lease (the last poll attempt, written with
//! CAS) so the VMs poll once per period between them. A poll's answer is
//! shared only if no other VM's answer was shared since that poll started
//! (polls can overlap: a call may take longer than the period), so an
//! older answer never replaces a newer one. Each VM re-reads the shared
//! policy when the serial below changes and swaps its `Rc`: requests in
//! flight keep the version they started with.

use std::time::Duration;

use proxy_wasm::types::{LogLevel, Status};
use warden_engine::config::FilterConfig;
use warden_engine::control::{parse_published_policy, ControlPlane, PublishedPolicy};
use warden_engine::protocol::ACTIVE_POLICY_PATH;

use crate::host::{self, EnvoyShared, HostResult, SharedData};

const POLICY_KEY: &str = "warden/v1/policy";
const CONTACT_KEY: &str = "warden/v1/policy-contact";
const LEASE_KEY: &str = "warden/v1/policy-lease";
/// A digest of the shared answer, written after it: a request reads these
/// 8 bytes (not the whole document) to learn that its VM is behind, so every
/// worker switches with the first request after the write. Not the version
/// number: an answer changes without a new version when a machine key is
/// issued or revoked.
const SERIAL_KEY: &str = "warden/v1/policy-serial";

/// The shared record of an answer: the ETag's length (2 bytes), the ETag,
/// the body.
fn record(etag: &str, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(etag.len()).unwrap_or(0);
    let mut record = len.to_be_bytes().to_vec();
    record.extend_from_slice(etag.as_bytes());
    record.extend_from_slice(body);
    record
}

/// The serial of a shared record. SipHash with the standard library's fixed
/// keys: every VM of an Envoy runs this same build, so they agree, and 64
/// bits make two different answers with one serial a non-event.
fn serial_of(record: &[u8]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    record.hash(&mut hasher);
    hasher.finish()
}

/// When the control plane last answered a poll (any VM's).
pub fn last_contact(shared: &impl SharedData) -> Option<u64> {
    shared.stamp(CONTACT_KEY).0
}

/// Takes the poll lease if no VM polled within `period` seconds.
pub fn try_lease(shared: &impl SharedData, now: u64, period: u64) -> bool {
    shared.try_lease(LEASE_KEY, now, |last| {
        last.is_none_or(|l| now.saturating_sub(l) >= period)
    })
}

/// Keeps the lease while this VM's poll is out (a watch waits longer than
/// the poll period) and takes it for the poll that follows a watch's
/// answer. A VM that stops renewing (its VM failed) loses the lease after
/// one poll period.
pub fn renew_lease(shared: &impl SharedData, now: u64) -> bool {
    shared.try_lease(LEASE_KEY, now, |_| true)
}

/// Whether the control plane honoured the poll's wait (its answer says
/// `Preference-Applied: wait=N`): then the next watch may start at once.
/// One that ignores `Prefer` answers at once, and is polled every period.
pub fn watch_honoured() -> bool {
    host::call_response_header("preference-applied")
        .is_some_and(|value| value.windows(5).any(|w| w.eq_ignore_ascii_case(b"wait=")))
}

/// This VM's view of the shared policy.
#[derive(Default)]
pub struct VmPublished {
    pub etag: Option<String>,
    /// The version this VM runs (what [`SERIAL_KEY`] said when it loaded).
    serial: Option<u64>,
    /// The CAS of the shared policy when this VM's last poll started: the
    /// answer replaces that one only.
    polled_over: Option<u32>,
}

impl VmPublished {
    /// `Ok(Some)`: the shared policy, compiled, if another VM installed a
    /// version this one does not run yet. Otherwise it costs one 8-byte
    /// shared read. `Err`: the shared document is unusable.
    pub fn refresh(&mut self, shared: &impl SharedData) -> Result<Option<PublishedPolicy>, String> {
        let Some(serial) = shared
            .stamp(SERIAL_KEY)
            .0
            .filter(|s| Some(*s) != self.serial)
        else {
            return Ok(None);
        };
        // Taken even if the document turns out unusable: it is then read
        // once per version, not once per request.
        self.serial = Some(serial);
        let Ok((Some(bytes), _)) = shared.get(POLICY_KEY) else {
            return Ok(None);
        };
        let Some((etag, body)) = split_record(&bytes) else {
            return Ok(None);
        };
        let published = parse_published_policy(body)?;
        self.etag = Some(etag);
        // What was read, which may be newer than the serial read before it.
        self.serial = Some(serial_of(&bytes));
        Ok(Some(published))
    }

    /// Notes, as this VM starts a poll, which shared policy its answer may
    /// replace (see [`VmPublished::share`]).
    pub fn poll_starting(&mut self, shared: &impl SharedData) {
        self.polled_over = shared.get(POLICY_KEY).ok().and_then(|(_, cas)| cas);
    }

    /// Stores a version this VM fetched and compiled for the others, then
    /// announces it: the document first, so a VM that sees the new serial
    /// finds the new document. The document is written with the CAS noted
    /// when the poll started: if another VM's answer was shared since, that
    /// one stays and this one, maybe older, is dropped (`CasMismatch`).
    fn share(
        &mut self,
        shared: &impl SharedData,
        etag: &str,
        body: &[u8],
    ) -> HostResult<()> {
        // An absurd ETag is dropped (the next poll is then unconditional).
        let etag = if etag.len() <= 1024 { etag } else { "" };
        let record = record(etag, body);
        shared.set(POLICY_KEY, &record, self.polled_over)?;
        let serial = serial_of(&record);
        let _ = shared.set_stamp(SERIAL_KEY, serial, None);
        self.etag = Some(etag.to_owned());
        self.serial = Some(serial);
        Ok(())
    }
}

/// [`VmPublished::refresh`] from Envoy's shared data, logging a document
/// that cannot be used.
pub fn refresh(vm: &mut VmPublished) -> Option<PublishedPolicy> {
    vm.refresh(&EnvoyShared).unwrap_or_else(|err| {
        host::log(
            LogLevel::Warn,
            &format!("warden: the shared policy is unusable: {err}"),
        );
        None
    })
}

fn split_record(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let etag = rest.get(..len)?;
    Some((String::from_utf8_lossy(etag).into_owned(), rest.get(len..)?))
}

/// Starts a poll of the active version (conditional on the ETag held),
/// which waits at the control plane for another version when
/// `watch_seconds` is set.
pub fn start_poll(cp: &ControlPlane, etag: Option<&str>) -> Option<u32> {
    let mut headers = cp.headers("GET", ACTIVE_POLICY_PATH);
    headers.push(("accept", "application/json"));
    if let Some(tag) = etag {
        headers.push(("if-none-match", tag));
    }
    let prefer = format!("wait={}", cp.watch_seconds);
    if cp.watch_seconds > 0 {
        headers.push(("prefer", prefer.as_str()));
    }
    match host::dispatch(
        &cp.cluster,
        headers,
        None,
        Duration::from_millis(cp.poll_timeout_ms()),
    ) {
        Ok(token) => Some(token),
        Err(status) => {
            host::log(
                LogLevel::Warn,
                &format!(
                    "warden: cannot poll the policy through cluster '{}': {status:?}",
                    cp.cluster
                ),
            );
            None
        }
    }
}

/// What a poll brought.
pub enum Polled {
    /// A new version, compiled and shared.
    New(Box<PublishedPolicy>),
    /// The version held is still the active one (or none is published yet,
    /// or another VM's answer was shared while this poll ran, and stays).
    Unchanged,
    Failed,
}

/// Handles the answer to a poll.
pub fn on_response(
    body_size: usize,
    now: u64,
    config: &FilterConfig,
    vm: &mut VmPublished,
) -> Polled {
    let (status, body) = host::call_response(body_size);
    let shared = &EnvoyShared;
    let contact = |what: &str| {
        if let Err(status) = shared.set_stamp(CONTACT_KEY, now, None) {
            host::log(
                LogLevel::Warn,
                &format!("warden: cannot record the control plane's {what}: {status:?}"),
            );
        }
    };
    match status {
        Some(304) => {
            contact("answer");
            Polled::Unchanged
        }
        Some(404) => {
            // Reachable, nothing published yet: the Envoy configuration's
            // policy (if any) stays in force.
            contact("answer");
            Polled::Unchanged
        }
        // Checked before it is shared: what one VM refuses, no VM runs.
        Some(200) => match parse_published_policy(&body).and_then(|published| {
            match config.admit(&published.policy) {
                Ok(()) => Ok(published),
                Err(e) => Err(format!("version {}: {e}", published.version)),
            }
        }) {
            Ok(published) => {
                let etag = host::call_response_header("etag")
                    .and_then(|v| String::from_utf8(v).ok())
                    .unwrap_or_default();
                contact("answer");
                match vm.share(shared, &etag, &body) {
                    Ok(()) => Polled::New(Box::new(published)),
                    Err(Status::CasMismatch) => {
                        host::log(
                            LogLevel::Info,
                            &format!(
                                "warden: policy version {} dropped: another worker shared a poll's answer while this poll ran",
                                published.version
                            ),
                        );
                        Polled::Unchanged
                    }
                    Err(status) => {
                        host::log(
                            LogLevel::Warn,
                            &format!("warden: cannot share the policy: {status:?}"),
                        );
                        Polled::Failed
                    }
                }
            }
            Err(err) => {
                // The control plane validates with this same compiler, so
                // this is a version skew or a policy this gateway is not
                // set up for (no hash key): keep the last good version.
                host::log(
                    LogLevel::Error,
                    &format!("warden: refused the control plane's policy: {err}"),
                );
                Polled::Failed
            }
        },
        other => {
            host::log(
                LogLevel::Warn,
                &format!(
                    "warden: polling the policy: the control plane answered {}",
                    other.map_or("nothing".into(), |s| s.to_string())
                ),
            );
            Polled::Failed
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{FakeShared, Interleaved};

    const NOW: u64 = 1_800_000_000;
    const PERIOD: u64 = 5;

    /// The control plane's answer for `version` (200, `GET /v1/policy/active`).
    fn body(version: u64) -> Vec<u8> {
        format!(
            r#"{{"version":{version},"sha256":"00","policy":{{"version":1,"groups":{{"eng":{{"models":["*"]}}}}}}}}"#
        )
        .into_bytes()
    }

    fn etag(version: u64) -> String {
        format!("\"v{version}\"")
    }

    /// One VM's tick, as `WardenRoot::poll_policy` runs it: catch up with
    /// the shared policy, then poll if this VM wins the lease (true).
    fn tick(vm: &mut VmPublished, shared: &impl SharedData, now: u64) -> bool {
        let _ = vm.refresh(shared);
        if !try_lease(shared, now, PERIOD) {
            return false;
        }
        vm.poll_starting(shared);
        true
    }

    /// The control plane answers this VM's poll with `version`, which the
    /// VM compiled (`on_response`, 200).
    fn answered(vm: &mut VmPublished, shared: &impl SharedData, version: u64) -> HostResult<()> {
        vm.share(shared, &etag(version), &body(version))
    }

    /// The serial of the answer [`answered`] shares for `version`.
    fn serial(version: u64) -> u64 {
        serial_of(&record(&etag(version), &body(version)))
    }

    fn loaded(vm: &mut VmPublished, shared: &impl SharedData) -> Option<u64> {
        vm.refresh(shared).unwrap().map(|p| p.version)
    }

    #[test]
    fn the_vms_poll_once_per_period_between_them() {
        let store = FakeShared::default();
        let mut vms: Vec<VmPublished> = (0..3).map(|_| VmPublished::default()).collect();
        let mut polls = Vec::new();
        for now in NOW..=NOW + 20 {
            for (i, vm) in vms.iter_mut().enumerate() {
                if tick(vm, &store, now) {
                    polls.push((now - NOW, i));
                }
            }
        }
        assert_eq!(polls, [(0, 0), (5, 0), (10, 0), (15, 0), (20, 0)]);
        // A poll due on two VMs at once: B takes the lease between A's read
        // of it and A's write, so A's CAS is stale and only B polls.
        let (mut a, mut b) = (VmPublished::default(), VmPublished::default());
        let due = NOW + 25;
        let mut b_polls = false;
        let a_polls = {
            let a_view = Interleaved::new(&store, |key| {
                if key == LEASE_KEY {
                    b_polls = tick(&mut b, &store, due);
                }
            });
            tick(&mut a, &a_view, due)
        };
        assert!(b_polls && !a_polls);
    }

    #[test]
    fn a_watching_vm_keeps_the_lease_while_it_renews_and_loses_it_when_it_stops() {
        let store = FakeShared::default();
        assert!(try_lease(&store, NOW, PERIOD));
        // The watch is out for 25 s; its VM renews on every tick meanwhile.
        for now in NOW + 1..NOW + 25 {
            assert!(renew_lease(&store, now));
            assert!(!try_lease(&store, now, PERIOD), "another VM polled at {now} during the watch");
        }
        // The answer arrives: the holder starts the next watch at once.
        assert!(renew_lease(&store, NOW + 25));
        assert!(!try_lease(&store, NOW + 25, PERIOD));
        // The holder's VM fails (no more renewals): one period later another VM polls.
        assert!(!try_lease(&store, NOW + 25 + PERIOD - 1, PERIOD));
        assert!(try_lease(&store, NOW + 25 + PERIOD, PERIOD));
    }

    #[test]
    fn a_new_version_reaches_every_vm_through_the_serial() {
        let store = FakeShared::default();
        let (mut a, mut b) = (VmPublished::default(), VmPublished::default());
        assert_eq!(loaded(&mut b, &store), None, "nothing published");
        assert!(tick(&mut a, &store, NOW));
        answered(&mut a, &store, 1).unwrap();
        assert_eq!(loaded(&mut a, &store), None, "A runs it already");
        let p = b.refresh(&store).unwrap().unwrap();
        assert_eq!((p.version, p.policy.published_version), (1, Some(1)));
        assert_eq!(b.etag, Some(etag(1)), "B's next poll is conditional");
        // Nothing new: one read of the serial, not of the document.
        store.take_reads();
        assert_eq!(loaded(&mut b, &store), None);
        assert_eq!(store.take_reads(), [SERIAL_KEY]);
        // A push, and a rollback to an older version: each reaches B once.
        for (period, version) in [(1, 2), (2, 1)] {
            assert!(tick(&mut a, &store, NOW + period * PERIOD));
            answered(&mut a, &store, version).unwrap();
            assert_eq!(loaded(&mut b, &store), Some(version));
            assert_eq!(loaded(&mut b, &store), None);
        }
        // A VM started late loads the version in force.
        assert_eq!(loaded(&mut VmPublished::default(), &store), Some(1));
        // An absurd ETag is not kept: the next poll is unconditional.
        assert!(tick(&mut a, &store, NOW + 3 * PERIOD));
        a.share(&store, &"x".repeat(1025), &body(3)).unwrap();
        assert_eq!(loaded(&mut b, &store), Some(3));
        assert_eq!(b.etag.as_deref(), Some(""));
    }

    /// A machine key issued or revoked changes the answer (its ETag and
    /// body) but not the version: it must reach every VM all the same.
    #[test]
    fn a_new_answer_of_the_same_version_reaches_every_vm() {
        let store = FakeShared::default();
        let (mut a, mut b) = (VmPublished::default(), VmPublished::default());
        assert!(tick(&mut a, &store, NOW));
        answered(&mut a, &store, 1).unwrap();
        assert_eq!(loaded(&mut b, &store), Some(1));
        assert!(tick(&mut a, &store, NOW + PERIOD));
        a.share(&store, "\"1-other-keys\"", &body(1)).unwrap();
        assert_eq!(loaded(&mut b, &store), Some(1));
        assert_eq!(b.etag.as_deref(), Some("\"1-other-keys\""));
        assert_eq!(loaded(&mut b, &store), None, "once");
    }

    #[test]
    fn an_answer_never_replaces_one_shared_while_its_poll_ran() {
        let store = FakeShared::default();
        let (mut a, mut b, mut c) = (
            VmPublished::default(),
            VmPublished::default(),
            VmPublished::default(),
        );
        assert!(tick(&mut a, &store, NOW));
        answered(&mut a, &store, 1).unwrap();
        // A polls again and its answer (still version 1) is slow; B's poll,
        // one period later, answers first with the version pushed meanwhile.
        assert!(tick(&mut a, &store, NOW + PERIOD));
        assert!(tick(&mut b, &store, NOW + 2 * PERIOD));
        answered(&mut b, &store, 2).unwrap();
        assert_eq!(answered(&mut a, &store, 1), Err(Status::CasMismatch));
        assert_eq!(loaded(&mut c, &store), Some(2));
        assert_eq!(store.stamp(SERIAL_KEY).0, Some(serial(2)));
        assert_eq!(a.etag, Some(etag(1)), "A holds what it ran");
        assert_eq!(loaded(&mut a, &store), Some(2));
        // A poll that starts after that answer may replace it.
        assert!(tick(&mut c, &store, NOW + 3 * PERIOD));
        answered(&mut c, &store, 3).unwrap();
        assert_eq!(loaded(&mut a, &store), Some(3));
    }

    #[test]
    fn a_vm_that_sees_a_new_serial_finds_the_new_document() {
        let store = FakeShared::default();
        let (mut a, mut c) = (VmPublished::default(), VmPublished::default());
        assert!(tick(&mut a, &store, NOW));
        answered(&mut a, &store, 1).unwrap();
        assert_eq!(loaded(&mut c, &store), Some(1));
        // C reads before each of A's writes of version 2, and after them.
        let mut seen = Vec::new();
        {
            let mut catch_up = || {
                if let Some(version) = loaded(&mut c, &store) {
                    seen.push((version, store.stamp(SERIAL_KEY).0));
                }
            };
            let a_view = Interleaved::new(&store, |_| catch_up());
            assert!(tick(&mut a, &a_view, NOW + PERIOD));
            answered(&mut a, &a_view, 2).unwrap();
        }
        if let Some(version) = loaded(&mut c, &store) {
            seen.push((version, store.stamp(SERIAL_KEY).0));
        }
        assert_eq!(seen, [(2, Some(serial(2)))], "(version loaded, serial then)");
    }

    #[test]
    fn an_unusable_shared_document_is_read_once_per_version() {
        let store = FakeShared::default();
        let mut vm = VmPublished::default();
        let bad_rule = br#"{"version":13,"sha256":"00","policy":{"version":1,"rules":[{"name":"x","action":"mask"}]}}"#;
        let cases: [(Vec<u8>, Option<&str>); 5] = [
            (vec![0], None),
            (vec![0, 9, b'x'], None),
            (record("e", b""), Some("unreadable answer")),
            (record("e", b"{\"version\":12}"), Some("unreadable answer")),
            (record("e", bad_rule), Some("version 13")),
        ];
        for (serial, (value, refused)) in (9..).zip(cases) {
            store.set(POLICY_KEY, &value, None).unwrap();
            store.set_stamp(SERIAL_KEY, serial, None).unwrap();
            match (vm.refresh(&store), refused) {
                (Ok(None), None) => {}
                (Err(err), Some(why)) => assert!(err.contains(why), "{err}"),
                (other, _) => panic!("serial {serial}: {:?}", other.map(|p| p.map(|p| p.version))),
            }
            store.take_reads();
            assert_eq!(loaded(&mut vm, &store), None);
            assert_eq!(store.take_reads(), [SERIAL_KEY], "once per version");
        }
        // A serial that is not 8 bytes announces nothing.
        store.set(SERIAL_KEY, b"short", None).unwrap();
        assert_eq!(loaded(&mut vm, &store), None);
        // A good version after the junk is taken.
        a_good_version(&store, 20);
        assert_eq!(loaded(&mut vm, &store), Some(20));
    }

    fn a_good_version(store: &FakeShared, version: u64) {
        let mut other = VmPublished::default();
        other.poll_starting(store);
        answered(&mut other, store, version).unwrap();
    }

    #[test]
    fn every_vm_sees_when_the_control_plane_last_answered() {
        let store = FakeShared::default();
        assert_eq!(last_contact(&store), None);
        store.set_stamp(CONTACT_KEY, NOW, None).unwrap();
        assert_eq!(last_contact(&store), Some(NOW));
        store.set(CONTACT_KEY, b"short", None).unwrap();
        assert_eq!(last_contact(&store), None);
    }
}
