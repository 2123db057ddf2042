//! The filter's side of the control plane: where it is, the policy version
//! it serves, and approvals. Plain data in and out; the adapter makes the
//! HTTP calls through an Envoy cluster and feeds the answers back here. The
//! messages themselves are [`crate::protocol`]'s.
//!
//! - [`ControlPlane`]: the compiled `control_plane` section of the filter
//!   configuration (cluster, shared secret, poll period, staleness bound).
//! - [`parse_published_policy`]: `GET /v1/policy/active` to a compiled policy.
//! - [`approval`]: one request's approval ([`ApprovalFlow`]), as a state
//!   machine over the control plane's answers: create (or find and consume)
//!   -> wait (hold mode, long polls until the deadline) -> consume -> forward
//!   or refuse.

pub mod approval;

pub use approval::{ApprovalFlow, Call, Next};

use serde::Deserialize;
use serde_json::Value;

use crate::auth::machine_keys::{MachineKeyDoc, MachineKeys};
use crate::document::{ConfigError, Secret};
use crate::policy::{Policy, PolicyDoc};
use crate::protocol::GATEWAY_KEY_HEADER;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneDoc {
    /// The Envoy cluster that reaches the control plane.
    pub cluster: String,
    /// `:authority` of the calls (the control plane's host[:port]).
    pub authority: String,
    /// Environment variable of Envoy holding the shared secret the control
    /// plane knows this gateway by (`--gateway-secret` there).
    #[serde(default = "default_gateway_key_env")]
    pub gateway_key_env: String,
    /// How often the active policy is polled (an ETag makes it cheap).
    #[serde(default = "default_poll_seconds")]
    pub poll_seconds: u64,
    /// Control plane unreachable: the last good policy is kept this long
    /// after its last answer, then requests fail closed (503).
    #[serde(default = "default_max_stale_seconds")]
    pub max_stale_seconds: u64,
    /// Timeout of one call (a hold's long polls add their wait to it).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long one poll may wait at the control plane for another version
    /// (`Prefer: wait=N`): a control plane that honours it answers as soon
    /// as a version is activated, and the gateway asks again at once, so a
    /// published policy is live in well under a second, with a request per
    /// watch period instead of per poll period. 0: plain polling.
    #[serde(default = "default_watch_seconds")]
    pub watch_seconds: u64,
}

fn default_gateway_key_env() -> String {
    "WARDEN_GATEWAY_SECRET".into()
}
fn default_poll_seconds() -> u64 {
    5
}
fn default_max_stale_seconds() -> u64 {
    300
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_watch_seconds() -> u64 {
    25
}

/// The compiled `control_plane` section.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub cluster: String,
    pub authority: String,
    pub gateway_key: Secret,
    pub poll_seconds: u64,
    pub max_stale_seconds: u64,
    pub timeout_ms: u64,
    pub watch_seconds: u64,
}

impl ControlPlane {
    pub fn compile(
        doc: ControlPlaneDoc,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("control_plane: {m}"));
        if doc.cluster.is_empty() || doc.authority.is_empty() {
            return Err(invalid("`cluster` and `authority` are required".into()));
        }
        if !(1..=3600).contains(&doc.poll_seconds) {
            return Err(invalid("poll_seconds must be 1..=3600".into()));
        }
        if doc.max_stale_seconds < doc.poll_seconds {
            return Err(invalid(
                "max_stale_seconds must be at least poll_seconds".into(),
            ));
        }
        if !(100..=60_000).contains(&doc.timeout_ms) {
            return Err(invalid("timeout_ms must be 100..=60000".into()));
        }
        if doc.watch_seconds > 60 {
            return Err(invalid("watch_seconds must be 0..=60 (0: plain polling)".into()));
        }
        // A watch answers at least once per watch period: the policy must
        // not count as stale meanwhile.
        if doc.max_stale_seconds <= doc.watch_seconds + doc.timeout_ms / 1000 {
            return Err(invalid(
                "max_stale_seconds must be longer than watch_seconds plus the call timeout".into(),
            ));
        }
        let key = env(&doc.gateway_key_env)
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "{} is not set in Envoy's environment (or not listed in vm_config.environment_variables.host_env_keys); the gateway cannot authenticate to its control plane",
                    doc.gateway_key_env
                ))
            })?;
        Ok(Self {
            cluster: doc.cluster,
            authority: doc.authority,
            gateway_key: Secret::new(key),
            poll_seconds: doc.poll_seconds,
            max_stale_seconds: doc.max_stale_seconds,
            timeout_ms: doc.timeout_ms,
            watch_seconds: doc.watch_seconds,
        })
    }

    /// The timeout of a policy poll: the call's own, plus the wait it asks for.
    pub fn poll_timeout_ms(&self) -> u64 {
        self.timeout_ms + self.watch_seconds * 1000
    }

    /// Headers of a call (method and path included).
    pub fn headers<'a>(&'a self, method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut h = vec![
            (":method", method),
            (":path", path),
            (":authority", self.authority.as_str()),
            (GATEWAY_KEY_HEADER, self.gateway_key.expose()),
        ];
        if method == "POST" {
            h.push(("content-type", "application/json"));
        }
        h
    }
}

/// A policy version as the control plane serves it, compiled.
#[derive(Debug)]
pub struct PublishedPolicy {
    pub version: u64,
    pub sha256: String,
    pub policy: Policy,
}

/// `GET /v1/policy/active` answered 200: the version, compiled by this
/// filter (a version it cannot compile is refused, and the last one kept).
pub fn parse_published_policy(body: &[u8]) -> Result<PublishedPolicy, String> {
    #[derive(Deserialize)]
    struct Answer {
        version: u64,
        sha256: String,
        policy: Value,
        /// Absent from control planes older than machine keys.
        #[serde(default)]
        machine_keys: Vec<MachineKeyDoc>,
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("unreadable answer: {e}"))?;
    let doc: PolicyDoc = serde_json::from_value(answer.policy)
        .map_err(|e| format!("version {}: {e}", answer.version))?;
    let mut policy = Policy::check(doc).map_err(|problems| {
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        format!("version {}: {}", answer.version, all.join("; "))
    })?;
    policy.published_version = Some(answer.version);
    policy.machine_keys = MachineKeys::compile(answer.machine_keys)
        .map_err(|e| format!("version {}: {e}", answer.version))?;
    Ok(PublishedPolicy {
        version: answer.version,
        sha256: answer.sha256,
        policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn published_policies_compile_with_their_version() {
        let body = br#"{"version":7,"sha256":"00","policy":{"version":1,"groups":{"eng":{"models":["*"]}}}}"#;
        let p = parse_published_policy(body).unwrap();
        assert_eq!((p.version, p.policy.published_version), (7, Some(7)));
        let bad = br#"{"version":8,"sha256":"00","policy":{"version":1,"rules":[{"name":"x","action":"mask"}]}}"#;
        assert!(parse_published_policy(bad)
            .unwrap_err()
            .contains("version 8"));
    }
}
