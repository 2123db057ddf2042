//! The published policy: polled from the control plane by one VM at a time
//! and shared with every worker VM through proxy-wasm shared data.
//!
//! Shared keys: the last answer the control plane served (its ETag and
//! body, stored only once this filter has compiled it, so no VM ever sees a
//! version it cannot load); the time of the control plane's last answer of
//! any kind (200, 304 or "no active policy"), which bounds how long a policy
//! may be used without it; and a lease (the last poll attempt, written with
//! CAS) so the VMs poll once per period between them. Each VM re-reads the
//! shared policy on its tick when the CAS changed and swaps its `Rc`:
//! requests in flight keep the version they started with.

use std::time::Duration;

use proxy_wasm::types::LogLevel;
use warden_engine::config::FilterConfig;
use warden_engine::control::{parse_published_policy, ControlPlane, PublishedPolicy};
use warden_engine::protocol::ACTIVE_POLICY_PATH;

use crate::host;

const POLICY_KEY: &str = "warden/v1/policy";
const CONTACT_KEY: &str = "warden/v1/policy-contact";
const LEASE_KEY: &str = "warden/v1/policy-lease";
/// The version number in force, written after the policy: a request reads
/// these 8 bytes (not the whole document) to learn that its VM is behind, so
/// every worker switches with the first request after the write.
const SERIAL_KEY: &str = "warden/v1/policy-serial";

/// When the control plane last answered a poll (any VM's).
pub fn last_contact() -> Option<u64> {
    host::shared_stamp(CONTACT_KEY).0
}

/// Takes the poll lease if no VM polled within `period` seconds.
pub fn try_lease(now: u64, period: u64) -> bool {
    host::try_lease(LEASE_KEY, now, |last| {
        last.is_none_or(|l| now.saturating_sub(l) >= period)
    })
}

/// This VM's view of the shared policy.
#[derive(Default)]
pub struct VmPublished {
    pub etag: Option<String>,
    /// The version this VM runs (what [`SERIAL_KEY`] said when it loaded).
    serial: Option<u64>,
}

impl VmPublished {
    /// The shared policy, compiled, if another VM installed a version this
    /// one does not run yet. Otherwise it costs one 8-byte shared read.
    pub fn refresh(&mut self) -> Option<PublishedPolicy> {
        let serial = host::shared_stamp(SERIAL_KEY)
            .0
            .filter(|s| Some(*s) != self.serial)?;
        // Taken even if the document turns out unusable: it is then read
        // once per version, not once per request.
        self.serial = Some(serial);
        let Ok((Some(bytes), _)) = host::shared_get(POLICY_KEY) else {
            return None;
        };
        let (etag, body) = split_record(&bytes)?;
        match parse_published_policy(body) {
            Ok(published) => {
                self.etag = Some(etag);
                self.serial = Some(published.version);
                Some(published)
            }
            Err(err) => {
                host::log(
                    LogLevel::Warn,
                    &format!("warden: the shared policy is unusable: {err}"),
                );
                None
            }
        }
    }

    /// Stores a version this VM fetched and compiled for the others, then
    /// announces it: the document first, so a VM that sees the new serial
    /// finds the new document.
    fn share(&mut self, etag: &str, body: &[u8], version: u64) {
        // An absurd ETag is dropped (the next poll is then unconditional).
        let etag = if etag.len() <= 1024 { etag } else { "" };
        let len = u16::try_from(etag.len()).unwrap_or(0);
        let mut record = len.to_be_bytes().to_vec();
        record.extend_from_slice(etag.as_bytes());
        record.extend_from_slice(body);
        if let Err(status) = host::shared_set(POLICY_KEY, &record, None) {
            host::log(
                LogLevel::Warn,
                &format!("warden: cannot share the policy: {status:?}"),
            );
        }
        let _ = host::set_shared_stamp(SERIAL_KEY, version, None);
        self.etag = Some(etag.to_owned());
        self.serial = Some(version);
    }
}

fn split_record(bytes: &[u8]) -> Option<(String, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let etag = rest.get(..len)?;
    Some((String::from_utf8_lossy(etag).into_owned(), rest.get(len..)?))
}

/// Starts a poll of the active version (conditional on the ETag held).
pub fn start_poll(cp: &ControlPlane, etag: Option<&str>) -> Option<u32> {
    let mut headers = cp.headers("GET", ACTIVE_POLICY_PATH);
    headers.push(("accept", "application/json"));
    if let Some(tag) = etag {
        headers.push(("if-none-match", tag));
    }
    match host::dispatch(
        &cp.cluster,
        headers,
        None,
        Duration::from_millis(cp.timeout_ms),
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
    /// The version held is still the active one (or none is published yet).
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
    let contact = |what: &str| {
        if let Err(status) = host::set_shared_stamp(CONTACT_KEY, now, None) {
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
                vm.share(&etag, &body, published.version);
                contact("answer");
                Polled::New(Box::new(published))
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
