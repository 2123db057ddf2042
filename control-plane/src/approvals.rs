//! Just-in-time approvals: what a gateway asks for, and how an approval reads.
//!
//! An approval is bound to the requester (issuer, subject), the SHA-256 of
//! the canonical request body, the rule, provider, model, route and policy
//! version: it is used only by the request it was given for.
//! Nobody decides a request they made ([`is_requester`]), whatever claim
//! mapping named them.
//! It is stored as `pending`, `approved` or `denied`; when read, a pending one
//! past `expires_at` is `expired`, an approved one that was used is
//! `consumed`, and an approved one past `expires_at` and unused is `expired`
//! (it can no longer be used).

use std::time::Duration;

use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use warden_engine::auth::Identity;

use crate::clock::rfc3339;
use crate::store::ApprovalRow;

/// Longest TTL a gateway may ask for (a day).
pub const MAX_TTL_SECONDS: u64 = 86_400;
/// Longest masked prompt stored, in bytes (longer ones are cut at a
/// character boundary, with a marker that says so).
pub const MAX_PROMPT_BYTES: usize = 16 * 1024;
/// Most groups stored for a requester, and most approver groups.
pub const MAX_GROUPS: usize = 100;
/// Longest `wait` the server holds a request open.
pub const MAX_WAIT_MS: u64 = 30_000;
/// How often a `wait` looks at the database again: polling it (not an
/// in-process signal) sees a decision made on any replica.
pub const WAIT_POLL: Duration = Duration::from_millis(200);

/// Every answer about an approval embeds the filter's own type.
pub use warden_engine::protocol::{ApprovalAnswer, ApprovalStatus};
/// `POST /v1/approvals` and `POST /v1/approvals/{id}/consume`: the filter's
/// own types, one definition of the wire format for both sides.
pub use warden_engine::protocol::{ApprovalBinding, ApprovalRequest as OpenRequest};

/// Whether `request` is the request `row` was opened for: the same
/// requester, body, rule, provider, model, route and policy version (an
/// approval for `count_tokens` is not one for `messages`).
pub fn binds(row: &ApprovalRow, request: &ApprovalBinding) -> bool {
    row.issuer == request.issuer
        && row.subject == request.subject
        && row.body_sha256 == request.body_sha256
        && row.rule == request.rule
        && row.provider == request.provider
        && row.model == request.model.as_deref().unwrap_or_default()
        && row.route == request.route
        && u64::try_from(row.policy_version).ok() == Some(request.policy_version)
}

/// Whether `who` made the request `row` holds. The filter and the control
/// plane may map claims differently (`claims.subject: email` on one side,
/// `sub` on the other), so any shared identifier is enough: the same issuer
/// and the same subject or token `sub` on either side, or the same email.
/// Erring here refuses an approver; erring the other way lets a person
/// approve themselves.
pub fn is_requester(who: &Identity, row: &ApprovalRow) -> bool {
    let theirs = [row.subject.as_str(), row.token_subject.as_str()];
    let same_issuer = who.issuer == row.issuer;
    let same_id = [Some(who.subject.as_str()), who.token_subject.as_deref()]
        .into_iter()
        .flatten()
        .any(|id| !id.is_empty() && theirs.contains(&id));
    let same_email = match (&who.email, &row.email) {
        (Some(a), Some(b)) => !a.is_empty() && a.eq_ignore_ascii_case(b),
        _ => false,
    };
    (same_issuer && same_id) || same_email
}

/// `POST /v1/approvals/{id}/approve` and `/deny`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    /// Shown to the requester; required to deny. At most 2000 bytes, no
    /// control characters but newlines.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An approval as every endpoint answers it: what the filter reads (the
/// engine's [`ApprovalAnswer`]: id, status, consumed, reason, decided_by,
/// url), and what people are shown besides.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalView {
    /// Id, status, whether it was used, the approver's reason and subject,
    /// the approvers' page at this approval (always there).
    #[serde(flatten)]
    pub answer: ApprovalAnswer,
    pub mode: String,
    pub rule: String,
    pub model: Option<String>,
    pub provider: String,
    pub route: String,
    pub subject: String,
    pub issuer: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub policy_version: i64,
    pub masked_prompt: String,
    pub approvers: Vec<String>,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub expires_at: String,
    pub decided_by_email: Option<String>,
    pub decided_by_issuer: Option<String>,
    pub decided_at: Option<String>,
    pub consumed_at: Option<String>,
}

/// `GET /v1/approvals`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalList {
    /// Newest first.
    pub approvals: Vec<ApprovalView>,
}

/// The status as read at `now_ms`: what the row stores, or `expired` past
/// its expiry (pending, or approved and unused), or `consumed` once used.
pub fn status_at(row: &ApprovalRow, now_ms: i64) -> ApprovalStatus {
    match row.stored_status() {
        ApprovalStatus::Approved if row.consumed_ms.is_some() => ApprovalStatus::Consumed,
        ApprovalStatus::Approved if now_ms >= row.expires_ms => ApprovalStatus::Expired,
        ApprovalStatus::Approved => ApprovalStatus::Approved,
        ApprovalStatus::Denied => ApprovalStatus::Denied,
        _ if now_ms >= row.expires_ms => ApprovalStatus::Expired,
        _ => ApprovalStatus::Pending,
    }
}

/// How long a `wait` on `row` pauses at `now_ms` before it looks again,
/// with `left` of its time to go; `None` when it answers now: the approval
/// is no longer pending, or the time is up. Never past the approval's
/// expiry, so an expired approval is answered as soon as it expires.
pub fn wait_pause(row: &ApprovalRow, now_ms: i64, left: Duration) -> Option<Duration> {
    if status_at(row, now_ms) != ApprovalStatus::Pending || left.is_zero() {
        return None;
    }
    let until_expiry = u64::try_from(row.expires_ms.saturating_sub(now_ms)).unwrap_or(0);
    Some(WAIT_POLL.min(left).min(Duration::from_millis(until_expiry)))
}

/// The answer shape of `row` at `now_ms`.
pub fn view(row: &ApprovalRow, now_ms: i64, approvals_url: &str) -> ApprovalView {
    ApprovalView {
        answer: ApprovalAnswer {
            id: row.id.clone(),
            status: status_at(row, now_ms),
            consumed: row.consumed_ms.is_some(),
            reason: row.reason.clone(),
            decided_by: row.decided_by_subject.clone(),
            url: Some(format!("{approvals_url}#{}", row.id)),
        },
        mode: row.mode.clone(),
        rule: row.rule.clone(),
        model: (!row.model.is_empty()).then(|| row.model.clone()),
        provider: row.provider.clone(),
        route: row.route.clone(),
        subject: row.subject.clone(),
        issuer: row.issuer.clone(),
        email: row.email.clone(),
        groups: serde_json::from_str(&row.groups_json).unwrap_or_default(),
        policy_version: row.policy_version,
        masked_prompt: row.masked_prompt.clone(),
        approvers: approvers(row),
        created_at: rfc3339(row.created_ms),
        expires_at: rfc3339(row.expires_ms),
        decided_by_email: row.decided_by_email.clone(),
        decided_by_issuer: row.decided_by_issuer.clone(),
        decided_at: row.decided_ms.map(rfc3339),
        consumed_at: row.consumed_ms.map(rfc3339),
    }
}

/// The approver groups of `row`.
pub fn approvers(row: &ApprovalRow) -> Vec<String> {
    serde_json::from_str(&row.approvers_json).unwrap_or_default()
}

/// Checks a gateway's request and turns it into a new pending row.
pub fn new_row(request: OpenRequest, now_ms: i64) -> Result<ApprovalRow, String> {
    // What binds or routes the approval is refused when too long, never cut
    // (two values differing past the cut would match one approval).
    const MAX: usize = crate::fields::MAX_STORED_BYTES;
    for (name, value) in [
        ("issuer", &request.issuer),
        ("subject", &request.subject),
        ("provider", &request.provider),
        ("route", &request.route),
        ("rule", &request.rule),
    ] {
        if value.trim().is_empty() || value.len() > MAX {
            return Err(format!("`{name}` must be 1 to {MAX} bytes"));
        }
        if !crate::fields::storable(value) {
            return Err(format!("`{name}` must not contain U+0000"));
        }
    }
    if request.model.as_ref().is_some_and(|m| m.len() > MAX) {
        return Err(format!("`model` must be at most {MAX} bytes"));
    }
    if request
        .model
        .as_ref()
        .is_some_and(|m| !crate::fields::storable(m))
    {
        return Err("`model` must not contain U+0000".into());
    }
    let sha = &request.body_sha256;
    if sha.len() != 64
        || !sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("`body_sha256` must be 64 lowercase hex digits".into());
    }
    let approvers: Vec<String> = request
        .approvers
        .into_iter()
        .filter(|g| !g.trim().is_empty())
        .collect();
    if approvers.is_empty() {
        return Err("`approvers` must name at least one group".into());
    }
    if approvers.len() > MAX_GROUPS
        || approvers
            .iter()
            .any(|g| g.len() > MAX || !crate::fields::storable(g))
    {
        return Err(format!(
            "`approvers` must name at most {MAX_GROUPS} groups of at most {MAX} bytes, without U+0000"
        ));
    }
    let ttl_seconds = u64::from(request.ttl_seconds);
    if ttl_seconds == 0 || ttl_seconds > MAX_TTL_SECONDS {
        return Err(format!(
            "`ttl_seconds` must be between 1 and {MAX_TTL_SECONDS}"
        ));
    }
    let policy_version = i64::try_from(request.policy_version)
        .map_err(|_| "`policy_version` is out of range".to_string())?;
    let ttl_ms = i64::try_from(ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    Ok(ApprovalRow {
        id: new_id(),
        status: ApprovalStatus::Pending.as_str().to_owned(),
        mode: request.mode.name().to_owned(),
        issuer: request.issuer,
        subject: request.subject,
        token_subject: request
            .token_subject
            .map(crate::fields::stored)
            .unwrap_or_default(),
        email: request.email.map(crate::fields::stored),
        groups_json: serde_json::to_string(&shown_groups(request.groups))
            .unwrap_or_else(|_| "[]".into()),
        provider: request.provider,
        model: request.model.unwrap_or_default(),
        route: request.route,
        rule: request.rule,
        policy_version,
        body_sha256: request.body_sha256,
        masked_prompt: crate::fields::bound(&request.masked_prompt, MAX_PROMPT_BYTES).into_owned(),
        approvers_json: serde_json::to_string(&approvers).unwrap_or_else(|_| "[]".into()),
        created_ms: now_ms,
        expires_ms: now_ms.saturating_add(ttl_ms),
        decided_by_issuer: None,
        decided_by_subject: None,
        decided_by_email: None,
        decided_ms: None,
        reason: None,
        consumed_ms: None,
    })
}

/// The requester's groups as stored: only shown to approvers, so cut
/// rather than refused (a directory may list hundreds): each name bounded,
/// at most [`MAX_GROUPS`], then a last entry saying how many were left out.
fn shown_groups(groups: Vec<String>) -> Vec<String> {
    let total = groups.len();
    let mut shown: Vec<String> = groups
        .into_iter()
        .take(MAX_GROUPS)
        .map(crate::fields::stored)
        .collect();
    if total > MAX_GROUPS {
        shown.push(format!("…[{} more]", total - MAX_GROUPS));
    }
    shown
}

/// `apr_` and 128 random bits from the operating system's CSPRNG, in hex.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("apr_{}", hex::encode(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn request() -> OpenRequest {
        OpenRequest {
            mode: warden_engine::protocol::ApprovalMode::Hold,
            issuer: "https://idp".into(),
            subject: "alice".into(),
            token_subject: None,
            groups: vec!["eng".into()],
            email: None,
            provider: "openai".into(),
            model: None,
            route: "/openai/v1/chat/completions".into(),
            rule: "r".into(),
            policy_version: 1,
            body_sha256: "a".repeat(64),
            masked_prompt: "hello".into(),
            approvers: vec!["leads".into()],
            ttl_seconds: 60,
        }
    }

    #[test]
    fn descriptive_fields_are_bounded() {
        let mut long = request();
        long.email = Some(format!("{}@example.com", "e".repeat(300 * 1024)));
        long.groups = (0..5000)
            .map(|i| format!("g{i}-{}", "x".repeat(2000)))
            .collect();
        long.masked_prompt = "é".repeat(MAX_PROMPT_BYTES);
        let row = new_row(long, 0).unwrap();
        let email = row.email.unwrap();
        assert!(email.len() <= crate::fields::MAX_STORED_BYTES);
        assert!(email.ends_with("bytes]"), "{email}");
        let groups: Vec<String> = serde_json::from_str(&row.groups_json).unwrap();
        assert_eq!(groups.len(), MAX_GROUPS + 1);
        assert!(groups[..MAX_GROUPS]
            .iter()
            .all(|g| g.starts_with('g') && g.len() <= crate::fields::MAX_STORED_BYTES));
        assert_eq!(groups[MAX_GROUPS], "…[4900 more]");
        // The prompt says that it was cut.
        assert!(row.masked_prompt.len() <= MAX_PROMPT_BYTES);
        assert!(row.masked_prompt.starts_with("éé"));
        assert!(row.masked_prompt.ends_with("…[cut, 32768 bytes]"));
        // What fits is kept as sent.
        let row = new_row(request(), 0).unwrap();
        assert_eq!(row.masked_prompt, "hello");
        assert_eq!(row.groups_json, r#"["eng"]"#);
    }

    #[test]
    fn statuses_are_derived() {
        let mut row = new_row(request(), 1000).unwrap();
        assert_eq!(row.status, "pending");
        assert_eq!(status_at(&row, 1000), ApprovalStatus::Pending);
        assert_eq!(status_at(&row, 61_000), ApprovalStatus::Expired);
        row.status = "approved".into();
        assert_eq!(status_at(&row, 2000), ApprovalStatus::Approved);
        assert_eq!(status_at(&row, 61_000), ApprovalStatus::Expired);
        row.consumed_ms = Some(3000);
        assert_eq!(status_at(&row, 61_000), ApprovalStatus::Consumed);
        row.status = "denied".into();
        assert_eq!(status_at(&row, 61_000), ApprovalStatus::Denied);
    }

    #[test]
    fn a_wait_pauses_until_a_decision_its_time_or_the_expiry() {
        // Opened at 1000 for 60 s: it expires at 61_000.
        let mut row = new_row(request(), 1000).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(wait_pause(&row, 1000, ms(30_000)), Some(WAIT_POLL));
        // No longer than the wait has left...
        assert_eq!(wait_pause(&row, 1000, ms(50)), Some(ms(50)));
        assert_eq!(wait_pause(&row, 1000, Duration::ZERO), None);
        // ...nor than the approval has.
        assert_eq!(wait_pause(&row, 60_990, ms(30_000)), Some(ms(10)));
        assert_eq!(wait_pause(&row, 60_999, ms(30_000)), Some(ms(1)));
        assert_eq!(wait_pause(&row, 61_000, ms(30_000)), None);
        // Decided: answered at once.
        row.status = "approved".into();
        assert_eq!(wait_pause(&row, 2000, ms(30_000)), None);
        row.status = "denied".into();
        assert_eq!(wait_pause(&row, 2000, ms(30_000)), None);
    }

    #[test]
    fn the_answer_keeps_its_shape_and_the_filter_reads_it() {
        let row = new_row(request(), 1000).unwrap();
        let wire = serde_json::to_value(view(&row, 2000, "https://w/approvals")).unwrap();
        let mut keys: Vec<&str> = wire
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "approvers",
                "consumed",
                "consumed_at",
                "created_at",
                "decided_at",
                "decided_by",
                "decided_by_email",
                "decided_by_issuer",
                "email",
                "expires_at",
                "groups",
                "id",
                "issuer",
                "masked_prompt",
                "mode",
                "model",
                "policy_version",
                "provider",
                "reason",
                "route",
                "rule",
                "status",
                "subject",
                "url",
            ]
        );
        assert_eq!(wire["status"], "pending");
        assert_eq!(wire["consumed"], false);
        assert_eq!(wire["url"], format!("https://w/approvals#{}", row.id));
        // What the filter reads of it.
        let answer: ApprovalAnswer = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(answer.id, row.id);
        assert_eq!(answer.status, ApprovalStatus::Pending);
        // What the CLI reads of it, whole.
        let read: ApprovalView = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(serde_json::to_value(read).unwrap(), wire);
    }

    #[test]
    fn requests_are_checked() {
        let mut bad = request();
        bad.body_sha256 = "A".repeat(64);
        assert!(new_row(bad, 0).is_err());
        // An unknown mode (or field) is refused as the body is read.
        let mut bad = serde_json::to_value(request()).unwrap();
        bad["mode"] = "later".into();
        assert!(serde_json::from_value::<OpenRequest>(bad.clone()).is_err());
        bad["mode"] = "ticket".into();
        assert!(serde_json::from_value::<OpenRequest>(bad.clone()).is_ok());
        bad["extra"] = 1.into();
        assert!(serde_json::from_value::<OpenRequest>(bad).is_err());
        let mut bad = request();
        bad.approvers = vec![" ".into()];
        assert!(new_row(bad, 0).is_err());
        let mut bad = request();
        bad.ttl_seconds = 0;
        assert!(new_row(bad, 0).is_err());
        let mut bad = request();
        bad.model = Some("m".repeat(200 * 1024));
        assert_eq!(
            new_row(bad, 0).unwrap_err(),
            "`model` must be at most 1024 bytes"
        );
        let mut bad = request();
        bad.rule = "r".repeat(1025);
        assert!(new_row(bad, 0).is_err());
        let mut bad = request();
        bad.approvers = vec!["a".repeat(1025)];
        assert!(new_row(bad, 0).is_err());
        let mut bad = request();
        bad.approvers = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        assert!(new_row(bad, 0).is_err());
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, new_id());
    }
}
