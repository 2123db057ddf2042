//! The words the filter, the control plane and the CLI exchange, defined
//! once: whatever crosses a process boundary is a type here, so both ends
//! read and write the same thing.
//!
//! - [`reason`]: the `warden.*` codes of the gateway's own answers.
//! - [`Decision`]: what the gateway did with a request (audit, access log,
//!   counters).
//! - Approvals: [`ApprovalRequest`] (`POST /v1/approvals`), [`ApprovalAnswer`]
//!   and [`ApprovalStatus`] (every answer about one), [`ApprovalBinding`]
//!   (`POST /v1/approvals/{id}/consume`), [`ApprovalMode`].
//! - Sessions: [`SessionRecord`] and [`SessionBatch`] (`POST /v1/sessions`),
//!   [`Record`] (how much a policy keeps).
//! - [`canonical_json`]: the one canonical JSON, which an approval's body hash
//!   and the session chain both use.
//!
//! A leaf: it imports nothing else from the engine.

pub mod reason;

pub use reason::Reason;

use serde::{Deserialize, Serialize};
use serde_json::Value;

// In the control plane's OpenAPI description (feature `schema`), a `u64`
// says `format = "uint64"`: utoipa's default, `int64`, would end its range
// at i64::MAX, and the control plane takes every u64.

/// Header that carries the gateway's shared secret to the control plane.
pub const GATEWAY_KEY_HEADER: &str = "x-warden-gateway-key";
/// Where the active policy is served.
pub const ACTIVE_POLICY_PATH: &str = "/v1/policy/active";
/// Where approvals are opened, read and consumed.
pub const APPROVALS_PATH: &str = "/v1/approvals";
/// Where recorded sessions are sent, in batches.
pub const SESSIONS_PATH: &str = "/v1/sessions";

/// What the gateway did with a request, as the audit trail, the access log
/// and the counters (`warden.requests.<decision>`) name it.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Nothing was decided (the client left, the stream was reset): never
    /// looks like a success.
    #[default]
    Undecided,
    Allowed,
    /// Forwarded with text the rules rewrote (either way).
    Masked,
    /// Forwarded once an approver said yes.
    Approved,
    ApprovalPending,
    Blocked,
    Unauthenticated,
    Denied,
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Undecided => "undecided",
            Decision::Allowed => "allowed",
            Decision::Masked => "masked",
            Decision::Approved => "approved",
            Decision::ApprovalPending => "approval_pending",
            Decision::Blocked => "blocked",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Denied => "denied",
            Decision::Error => "error",
        }
    }

    /// Whether the request went upstream.
    pub fn forwarded(self) -> bool {
        matches!(
            self,
            Decision::Allowed | Decision::Masked | Decision::Approved
        )
    }
}

/// How a request that needs an approval is handled.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ApprovalMode {
    /// The request waits (paused in Envoy) until decided or timed out.
    #[default]
    Hold,
    /// Refused at once with the approval's id; once approved, the same
    /// request from the same caller passes, once.
    Ticket,
}

impl ApprovalMode {
    pub fn name(self) -> &'static str {
        match self {
            ApprovalMode::Hold => "hold",
            ApprovalMode::Ticket => "ticket",
        }
    }
}

/// What the audit trail keeps of each exchange.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// Nothing beyond the access log.
    Off,
    /// Who, what model, the decision and rules: no text.
    #[default]
    Metadata,
    /// The request and response after masking (never the raw text).
    Masked,
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
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
}

impl ApprovalStatus {
    /// Every status, in the order listed.
    pub const ALL: [ApprovalStatus; 5] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Approved,
        ApprovalStatus::Denied,
        ApprovalStatus::Expired,
        ApprovalStatus::Consumed,
    ];

    /// The status on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Consumed => "consumed",
        }
    }
}

#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub mode: ApprovalMode,
    pub issuer: String,
    pub subject: String,
    /// The token's own `sub` (`Identity::token_subject`).
    #[serde(default)]
    pub token_subject: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub email: Option<String>,
    pub provider: String,
    #[serde(default)]
    pub model: Option<String>,
    /// `request::route_of` the upstream path.
    pub route: String,
    pub rule: String,
    /// 0 for the policy from the Envoy configuration (no published version).
    #[cfg_attr(feature = "schema", schema(format = "uint64"))]
    pub policy_version: u64,
    /// SHA-256 (hex, lowercase) of the body's [`canonical_json`].
    #[cfg_attr(feature = "schema", schema(pattern = "^[0-9a-f]{64}$"))]
    pub body_sha256: String,
    /// The prompt after the policy's masking: never the raw text.
    pub masked_prompt: String,
    pub approvers: Vec<String>,
    pub ttl_seconds: u32,
}

/// Everything an approval was given for (`POST /v1/approvals/{id}/consume`):
/// one approved for another requester, body, rule, provider, model, route
/// or policy version is not this request's. The filter sends it; the control
/// plane compares it with what the approval was opened for.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "schema", schema(format = "uint64"))]
    pub policy_version: u64,
}

/// One exchange as the audit trail keeps it. Never a raw value: `request`
/// and `response` are the bodies after the policy's masking, and only with
/// `record: masked`.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    #[cfg_attr(feature = "schema", schema(format = "uint64"))]
    pub policy_version: u64,
    pub decision: Decision,
    pub reason: Option<Reason>,
    pub rules: String,
    /// What the policy did to tools (the access log's `tools`:
    /// `tool:decision[:rule]`, names only). Omitted when none, so a
    /// control plane older than the field still takes the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<String>,
    /// MCP: the JSON-RPC method of the request (as the access log's
    /// `mcp_method`); omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_method: Option<String>,
    pub approval_id: Option<String>,
    #[cfg_attr(feature = "schema", schema(format = "uint64"))]
    pub status: Option<u64>,
    pub usage: Option<Value>,
    pub record: Record,
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
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

/// The control plane's answer to `POST /v1/sessions`.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsStored {
    /// Records newly stored (ids already stored are skipped).
    pub stored: usize,
    /// The chain's last `seq` after this batch.
    pub last_seq: i64,
}

/// Whether the control plane's answer to a `POST /v1/sessions` says the
/// batch is stored: a 200 alone does not (a proxy or a wrong service in
/// the cluster can answer 200 with anything, and the batch would be lost
/// while counted as sent); the body must be the control plane's answer.
pub fn sessions_stored(status: Option<u32>, body: &[u8]) -> bool {
    status == Some(200) && serde_json::from_slice::<SessionsStored>(body).is_ok()
}

/// The body of `POST /v1/sessions`, as the control plane reads it.
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionBatch {
    pub records: Vec<SessionRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

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
    fn a_session_record_reads_back_as_it_was_written() {
        let record = SessionRecord {
            id: "req-1".into(),
            time: rfc3339_millis(1_709_210_096_789),
            issuer: Some("https://idp".into()),
            subject: Some("alice".into()),
            groups: vec!["eng".into()],
            provider: Some("openai".into()),
            model: Some("gpt-4o".into()),
            route: "/v1/chat/completions".into(),
            policy_version: 3,
            decision: Decision::ApprovalPending,
            reason: Some(Reason::ApprovalRequired),
            rules: "dump".into(),
            tools: Some("bash:refused:destructive".into()),
            mcp_method: None,
            approval_id: None,
            status: Some(403),
            usage: None,
            record: Record::Masked,
            request: Some(serde_json::json!({"messages": []})),
            response: None,
        };
        let wire = serde_json::to_vec(&record).unwrap();
        let text = String::from_utf8(wire.clone()).unwrap();
        assert!(text.contains(r#""decision":"approval_pending""#), "{text}");
        assert!(
            text.contains(r#""reason":"warden.approval_required""#),
            "{text}"
        );
        let batch: SessionBatch = serde_json::from_slice(&sessions_batch(&[wire])).unwrap();
        assert_eq!(batch.records, vec![record.clone()]);
        // Without tools or an MCP method those fields are left out, so a
        // control plane that predates them still takes the record.
        let plain = SessionRecord {
            tools: None,
            ..record
        };
        let text = serde_json::to_string(&plain).unwrap();
        assert!(
            !text.contains("tools") && !text.contains("mcp_method"),
            "{text}"
        );
        // A field this build does not know is refused, not dropped.
        let extra = br#"{"records":[{"id":"x","surprise":1}]}"#;
        assert!(serde_json::from_slice::<SessionBatch>(extra).is_err());
    }

    #[test]
    fn approval_statuses_are_spelled_on_the_wire_as_named() {
        for status in ApprovalStatus::ALL {
            let wire = serde_json::to_value(status).unwrap();
            assert_eq!(wire, status.as_str());
            assert_eq!(
                serde_json::from_value::<ApprovalStatus>(wire).unwrap(),
                status
            );
        }
    }

    #[test]
    fn decisions_are_spelled_on_the_wire_as_in_the_access_log() {
        for decision in [
            Decision::Undecided,
            Decision::Allowed,
            Decision::Masked,
            Decision::Approved,
            Decision::ApprovalPending,
            Decision::Blocked,
            Decision::Unauthenticated,
            Decision::Denied,
            Decision::Error,
        ] {
            let wire = serde_json::to_value(decision).unwrap();
            assert_eq!(wire, decision.as_str());
            assert_eq!(serde_json::from_value::<Decision>(wire).unwrap(), decision);
        }
    }

    #[test]
    fn a_sessions_batch_is_stored_only_when_the_control_plane_says_so() {
        let answer = serde_json::to_vec(&SessionsStored {
            stored: 2,
            last_seq: 9,
        })
        .unwrap();
        assert!(sessions_stored(Some(200), &answer));
        assert!(sessions_stored(Some(200), br#"{"stored":0,"last_seq":9}"#));
        for (status, body) in [
            (Some(500), answer.as_slice()),
            (None, b"" as &[u8]),
            (Some(200), b""),
            (Some(200), b"ok"),
            (Some(200), br#"{"stored":"2","last_seq":9}"#),
            (Some(200), br#"{"keys": [], "x": "#),
        ] {
            assert!(!sessions_stored(status, body), "{status:?} {body:?}");
        }
    }
}
