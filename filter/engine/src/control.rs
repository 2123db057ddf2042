//! The filter's side of the control plane: where it is, the policy version
//! it serves, and approvals. Plain data in and out; the adapter makes the
//! HTTP calls through an Envoy cluster and feeds the answers back here.
//!
//! - [`ControlPlane`]: the compiled `control_plane` section of the filter
//!   configuration (cluster, shared secret, poll period, staleness bound).
//! - [`parse_published_policy`]: `GET /v1/policy/active` to a compiled policy.
//! - [`ApprovalFlow`]: one request's approval, as a state machine over the
//!   control plane's answers: create (or find and consume) -> wait (hold
//!   mode, long polls until the deadline) -> consume -> forward or refuse.
//! - [`SessionRecord`]: what the audit trail keeps of one exchange (names,
//!   decision and, with `record: masked`, the text after masking), sent to the
//!   control plane in batches ([`sessions_batch`]).

use crate::reason::Reason;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Identity;
use crate::config::{ConfigError, Secret};
use crate::policy::{Approval, ApprovalMode, Policy, PolicyDoc};
use crate::provider::{Api, ErrorKind, GatewayError};
use crate::request::Rejection;

/// Header that carries the gateway's shared secret to the control plane.
pub const GATEWAY_KEY_HEADER: &str = "x-warden-gateway-key";
/// Where the active policy is served.
pub const ACTIVE_POLICY_PATH: &str = "/v1/policy/active";
const APPROVALS_PATH: &str = "/v1/approvals";
/// Where recorded sessions are sent, in batches.
pub const SESSIONS_PATH: &str = "/v1/sessions";
/// Longest single long poll; a hold waits in several.
const MAX_WAIT_MS: u64 = 20_000;

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

/// The compiled `control_plane` section.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub cluster: String,
    pub authority: String,
    pub gateway_key: Secret,
    pub poll_seconds: u64,
    pub max_stale_seconds: u64,
    pub timeout_ms: u64,
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
        })
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
    Ok(PublishedPolicy {
        version: answer.version,
        sha256: answer.sha256,
        policy,
    })
}

/// SHA-256 (hex) of the body in canonical JSON, so an approval binds the
/// request's content, not its layout.
pub fn canonical_sha256(body: &Value) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(canonical_json(body).as_bytes()))
}

/// The one canonical JSON of Warden: object keys sorted (by their bytes), no
/// whitespace, strings and numbers as serde_json writes them. What an
/// approval binds and what the session chain hashes.
pub fn canonical_json(value: &Value) -> String {
    let mut text = String::new();
    write_canonical(value, &mut text);
    text
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            // Sorted explicitly: serde_json keeps insertion order when a
            // dependency turns on `preserve_order`.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// What the control plane says about an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApprovalAnswer {
    pub id: String,
    pub status: ApprovalStatus,
    #[serde(default)]
    pub consumed: bool,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

/// The request that needs an approval (`POST /v1/approvals`): the filter
/// sends it, the control plane reads it into the same type (one definition
/// of the wire format).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub mode: ApprovalMode,
    pub issuer: String,
    pub subject: String,
    /// The token's own `sub` ([`Identity::token_subject`]).
    #[serde(default)]
    pub token_subject: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub email: Option<String>,
    pub provider: String,
    #[serde(default)]
    pub model: Option<String>,
    /// [`crate::request::route_of`] the upstream path.
    pub route: String,
    pub rule: String,
    /// 0 for the policy from the Envoy configuration (no published version).
    pub policy_version: u64,
    pub body_sha256: String,
    /// The prompt after the policy's masking: never the raw text.
    pub masked_prompt: String,
    pub approvers: Vec<String>,
    pub ttl_seconds: u32,
}

impl ApprovalRequest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: &Identity,
        provider: &str,
        model: Option<&str>,
        route: &str,
        rule: &str,
        approval: &Approval,
        policy_version: Option<u64>,
        body_sha256: String,
        masked_prompt: String,
    ) -> Self {
        Self {
            mode: approval.mode,
            issuer: identity.issuer.clone(),
            subject: identity.subject.clone(),
            token_subject: identity.token_subject.clone(),
            groups: identity.groups.clone(),
            email: identity.email.clone(),
            provider: provider.to_owned(),
            model: model.map(str::to_owned),
            route: route.to_owned(),
            rule: rule.to_owned(),
            policy_version: policy_version.unwrap_or(0),
            body_sha256,
            masked_prompt,
            approvers: approval.approvers.clone(),
            ttl_seconds: approval.ttl_seconds,
        }
    }

    /// What an approval given for this request is bound to.
    pub fn binding(&self) -> ApprovalBinding {
        ApprovalBinding {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            body_sha256: self.body_sha256.clone(),
            rule: self.rule.clone(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            route: self.route.clone(),
            policy_version: self.policy_version,
        }
    }
}

/// Everything an approval was given for (`POST /v1/approvals/{id}/consume`):
/// one approved for another requester, body, rule, provider, model, route
/// or policy version is not this request's. The filter sends it; the control
/// plane compares it with what the approval was opened for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBinding {
    pub issuer: String,
    pub subject: String,
    pub body_sha256: String,
    pub rule: String,
    pub provider: String,
    pub model: Option<String>,
    pub route: String,
    pub policy_version: u64,
}

/// One call to make to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

/// What to do after an answer.
#[derive(Debug)]
pub enum Next {
    Call(Call),
    /// Approved (and this use consumed): send the request on.
    Forward {
        approval_id: String,
    },
    /// Refuse (the audit decision is [`crate::request::decision_for`] it).
    Reply {
        rejection: Rejection,
        approval_id: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Create,
    Wait,
    Consume,
}

/// One request's approval.
#[derive(Debug)]
pub struct ApprovalFlow {
    api: Api,
    rule: String,
    mode: ApprovalMode,
    hold_seconds: u32,
    deadline_ms: u64,
    call_timeout_ms: u64,
    stage: Stage,
    id: Option<String>,
    binding: ApprovalBinding,
}

impl ApprovalFlow {
    /// Starts the flow: the first call opens the approval (or finds an
    /// approved one for the same request and consumes it).
    pub fn start(
        api: Api,
        request: &ApprovalRequest,
        hold_seconds: u32,
        call_timeout_ms: u64,
        now_ms: u64,
    ) -> (Self, Call) {
        let binding = request.binding();
        let flow = Self {
            api,
            rule: request.rule.clone(),
            mode: request.mode,
            hold_seconds,
            deadline_ms: now_ms.saturating_add(u64::from(hold_seconds) * 1000),
            call_timeout_ms,
            stage: Stage::Create,
            id: None,
            binding,
        };
        let call = Call {
            method: "POST",
            path: APPROVALS_PATH.to_owned(),
            body: serde_json::to_vec(request).ok(),
            timeout_ms: call_timeout_ms,
        };
        (flow, call)
    }

    pub fn approval_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Feeds the answer to the last call (`status` is None when the call
    /// failed: timeout, reset, no cluster).
    pub fn on_answer(&mut self, status: Option<u32>, body: &[u8], now_ms: u64) -> Next {
        let Some(status) = status else {
            return self.unavailable("the control plane did not answer");
        };
        if self.stage == Stage::Consume {
            return match status {
                200 => self.forward(),
                403 | 409 | 410 => {
                    let why = server_message(body)
                        .unwrap_or_else(|| "the approval can no longer be used".into());
                    self.refuse(Reason::ApprovalUnusable, why)
                }
                _ => self.unavailable(&format!("the control plane answered {status}")),
            };
        }
        if !(200..300).contains(&status) {
            return self.unavailable(&format!("the control plane answered {status}"));
        }
        let answer: ApprovalAnswer = match serde_json::from_slice(body) {
            Ok(a) => a,
            Err(_) => return self.unavailable("the control plane's answer is unreadable"),
        };
        if !answer
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || answer.id.is_empty()
        {
            return self.unavailable("the control plane's answer has an invalid id");
        }
        self.id = Some(answer.id.clone());
        // Opening an approval that was approved for this very request uses
        // it in the same transaction: `consumed` then means "for you". Seen
        // while waiting, it means someone else used it.
        let used_for_us = self.stage == Stage::Create
            && (answer.consumed || answer.status == ApprovalStatus::Consumed);
        match answer.status {
            ApprovalStatus::Approved | ApprovalStatus::Consumed if used_for_us => self.forward(),
            ApprovalStatus::Approved => self.consume(),
            ApprovalStatus::Pending => match self.mode {
                ApprovalMode::Ticket => {
                    let url = answer.url.map(|u| format!(" at {u}")).unwrap_or_default();
                    let message = format!(
                        "this request needs an approval under rule '{}': approval {} is pending; an approver can decide it{url}. Send the same request again once it is approved.",
                        self.rule, answer.id
                    );
                    self.refuse(Reason::ApprovalPending, message)
                }
                ApprovalMode::Hold => self.wait(now_ms),
            },
            ApprovalStatus::Denied => {
                let by = answer
                    .decided_by
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default();
                let reason = answer.reason.map(|r| format!(": {r}")).unwrap_or_default();
                let message = format!(
                    "approval {} for rule '{}' was denied{by}{reason}",
                    answer.id, self.rule
                );
                self.refuse(Reason::ApprovalDenied, message)
            }
            ApprovalStatus::Consumed => self.refuse(
                Reason::ApprovalUnusable,
                format!("approval {} was already used", answer.id),
            ),
            ApprovalStatus::Expired => {
                let message = format!(
                    "approval {} for rule '{}' expired before it was decided",
                    answer.id, self.rule
                );
                self.refuse(Reason::ApprovalExpired, message)
            }
        }
    }

    fn wait(&mut self, now_ms: u64) -> Next {
        let remaining = self.deadline_ms.saturating_sub(now_ms);
        let Some(id) = self.id.clone() else {
            return self.unavailable("no approval id");
        };
        if remaining < 50 {
            let message = format!(
                "approval {id} for rule '{}' was not decided within {} s; ask an approver and send the request again",
                self.rule, self.hold_seconds
            );
            return self.refuse(Reason::ApprovalTimeout, message);
        }
        self.stage = Stage::Wait;
        let wait = remaining.min(MAX_WAIT_MS);
        Next::Call(Call {
            method: "GET",
            path: format!("{APPROVALS_PATH}/{id}/wait?timeout_ms={wait}"),
            body: None,
            timeout_ms: wait + self.call_timeout_ms,
        })
    }

    fn consume(&mut self) -> Next {
        let Some(id) = self.id.clone() else {
            return self.unavailable("no approval id");
        };
        self.stage = Stage::Consume;
        Next::Call(Call {
            method: "POST",
            path: format!("{APPROVALS_PATH}/{id}/consume"),
            body: serde_json::to_vec(&self.binding).ok(),
            timeout_ms: self.call_timeout_ms,
        })
    }

    fn forward(&self) -> Next {
        Next::Forward {
            approval_id: self.id.clone().unwrap_or_default(),
        }
    }

    fn refuse(&self, code: Reason, message: String) -> Next {
        Next::Reply {
            rejection: Rejection {
                api: self.api,
                error: GatewayError::new(ErrorKind::PermissionDenied, code, message),
            },
            approval_id: self.id.clone(),
        }
    }

    fn unavailable(&self, why: &str) -> Next {
        Next::Reply {
            rejection: Rejection {
                api: self.api,
                error: GatewayError::new(
                    ErrorKind::Unavailable,
                    Reason::ApprovalsUnavailable,
                    format!(
                        "this request needs an approval under rule '{}', and the gateway cannot reach its control plane ({why}); nothing was sent",
                        self.rule
                    ),
                ),
            },
            approval_id: self.id.clone(),
        }
    }
}

/// One exchange as the audit trail keeps it. Never a raw value: `request`
/// and `response` are the bodies after the policy's masking, and only with
/// `record: masked`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    /// Envoy's request id (unique per request; the control plane skips
    /// an id it already has, so a retried batch is not stored twice).
    pub id: String,
    pub time: String,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub groups: Vec<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub route: String,
    pub policy_version: u64,
    pub decision: String,
    pub reason: Option<String>,
    pub rules: String,
    pub approval_id: Option<String>,
    pub status: Option<u64>,
    pub usage: Option<Value>,
    pub record: crate::policy::Record,
    pub request: Option<Value>,
    pub response: Option<Value>,
}

/// The body of `POST /v1/sessions` for records already serialized.
pub fn sessions_batch(records: &[Vec<u8>]) -> Vec<u8> {
    let mut body = b"{\"records\":[".to_vec();
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(r);
    }
    body.extend_from_slice(b"]}");
    body
}

/// `2026-01-31T12:00:00.123Z` from milliseconds since the epoch.
pub fn rfc3339_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The `message` of a control-plane error answer, if it has one. It is the
/// control plane's own text (codes and reasons), never request content.
fn server_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn request(mode: ApprovalMode) -> ApprovalRequest {
        ApprovalRequest {
            mode,
            issuer: "https://idp".into(),
            subject: "alice".into(),
            token_subject: Some("alice".into()),
            groups: vec!["eng".into()],
            email: None,
            provider: "openai".into(),
            model: Some("gpt-4o".into()),
            route: "/v1/chat/completions".into(),
            rule: "dump".into(),
            policy_version: 3,
            body_sha256: "ab".repeat(32),
            masked_prompt: "give me the production database dump".into(),
            approvers: vec!["security".into()],
            ttl_seconds: 600,
        }
    }

    fn answer(status: &str, consumed: bool) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": "apr_1", "status": status, "consumed": consumed,
            "reason": "not today", "decided_by": "bob", "url": "http://cp/approvals#apr_1"
        }))
        .unwrap()
    }

    fn code(next: &Next) -> &str {
        match next {
            Next::Reply { rejection, .. } => rejection.error.code.as_str(),
            Next::Forward { .. } => "forward",
            Next::Call(c) => c.method,
        }
    }

    #[test]
    fn timestamps_and_batches() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_709_210_096_789),
            "2024-02-29T12:34:56.789Z"
        );
        let batch = sessions_batch(&[b"{\"id\":\"a\"}".to_vec(), b"{\"id\":\"b\"}".to_vec()]);
        let v: Value = serde_json::from_slice(&batch).unwrap();
        assert_eq!(v["records"][1]["id"], "b");
    }

    #[test]
    fn canonical_hash_ignores_key_order_and_whitespace() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"é"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a": {"x":"é", "y":[1, 2]}, "b":1 }"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[2,1],"x":"é"}}"#).unwrap();
        assert_eq!(canonical_sha256(&a), canonical_sha256(&b));
        assert_ne!(canonical_sha256(&a), canonical_sha256(&c));
        assert_eq!(canonical_sha256(&a).len(), 64);
    }

    #[test]
    fn hold_waits_then_consumes_then_forwards() {
        let (mut flow, first) =
            ApprovalFlow::start(Api::Openai, &request(ApprovalMode::Hold), 60, 5000, 0);
        assert_eq!(
            (first.method, first.path.as_str()),
            ("POST", "/v1/approvals")
        );
        let sent: Value = serde_json::from_slice(first.body.as_deref().unwrap()).unwrap();
        assert_eq!(sent["route"], "/v1/chat/completions");
        assert_eq!(sent["mode"], "hold");
        let Next::Call(wait) = flow.on_answer(Some(201), &answer("pending", false), 1000) else {
            panic!("expected a wait")
        };
        assert_eq!(wait.path, "/v1/approvals/apr_1/wait?timeout_ms=20000");
        let Next::Call(again) = flow.on_answer(Some(200), &answer("pending", false), 50_000) else {
            panic!("expected a second wait")
        };
        assert!(again.path.ends_with("timeout_ms=10000"), "{}", again.path);
        let Next::Call(consume) = flow.on_answer(Some(200), &answer("approved", false), 55_000)
        else {
            panic!("expected a consume")
        };
        assert_eq!(consume.path, "/v1/approvals/apr_1/consume");
        // The use is checked against everything the approval was given for.
        let bound: ApprovalBinding =
            serde_json::from_slice(consume.body.as_deref().unwrap()).unwrap();
        let opened: ApprovalRequest = serde_json::from_value(sent).unwrap();
        assert_eq!(bound, opened.binding());
        assert!(matches!(
            flow.on_answer(Some(200), b"{}", 55_100),
            Next::Forward { approval_id } if approval_id == "apr_1"
        ));
    }

    #[test]
    fn hold_times_out_and_denials_carry_the_reason() {
        let (mut flow, _) =
            ApprovalFlow::start(Api::Openai, &request(ApprovalMode::Hold), 60, 5000, 0);
        assert_eq!(
            code(&flow.on_answer(Some(201), &answer("pending", false), 0)),
            "GET"
        );
        assert_eq!(
            code(&flow.on_answer(Some(200), &answer("pending", false), 60_000)),
            "warden.approval_timeout"
        );
        let (mut flow, _) =
            ApprovalFlow::start(Api::Openai, &request(ApprovalMode::Hold), 60, 5000, 0);
        let denied = flow.on_answer(Some(200), &answer("denied", false), 0);
        let Next::Reply { rejection, .. } = denied else {
            panic!("expected a reply")
        };
        assert_eq!(crate::request::decision_for(&rejection).as_str(), "denied");
        assert!(rejection.error.message.contains("by bob: not today"));
    }

    #[test]
    fn ticket_refuses_while_pending_and_passes_once_consumed() {
        let (mut flow, _) =
            ApprovalFlow::start(Api::Anthropic, &request(ApprovalMode::Ticket), 60, 5000, 0);
        let Next::Reply {
            rejection,
            approval_id,
        } = flow.on_answer(Some(201), &answer("pending", false), 0)
        else {
            panic!("expected a reply")
        };
        let decision = crate::request::decision_for(&rejection).as_str();
        assert_eq!(
            (decision, approval_id.as_deref()),
            ("approval_pending", Some("apr_1"))
        );
        assert!(rejection
            .error
            .message
            .contains("http://cp/approvals#apr_1"));
        let (mut flow, _) =
            ApprovalFlow::start(Api::Anthropic, &request(ApprovalMode::Ticket), 60, 5000, 0);
        assert_eq!(
            code(&flow.on_answer(Some(200), &answer("approved", true), 0)),
            "forward"
        );
    }

    #[test]
    fn an_unreachable_or_confused_control_plane_fails_closed() {
        for (status, body) in [
            (None, b"".to_vec()),
            (Some(500), b"{}".to_vec()),
            (Some(200), b"not json".to_vec()),
            (
                Some(200),
                br#"{"id":"../../x","status":"approved","consumed":true}"#.to_vec(),
            ),
        ] {
            let (mut flow, _) =
                ApprovalFlow::start(Api::Openai, &request(ApprovalMode::Hold), 60, 5000, 0);
            assert_eq!(
                code(&flow.on_answer(status, &body, 0)),
                "warden.approvals_unavailable"
            );
        }
        let (mut flow, _) =
            ApprovalFlow::start(Api::Openai, &request(ApprovalMode::Hold), 60, 5000, 0);
        flow.on_answer(Some(200), &answer("approved", false), 0);
        let used =
            br#"{"error":{"code":"approval_used","message":"approval apr_1 was already used"}}"#;
        let Next::Reply { rejection, .. } = flow.on_answer(Some(409), used, 0) else {
            panic!("expected a reply")
        };
        assert_eq!(rejection.error.code, Reason::ApprovalUnusable);
        assert!(rejection.error.message.contains("already used"));
    }

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
