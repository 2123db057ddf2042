//! One request's approval as a state machine over the control plane's
//! answers (`POST /v1/approvals`, long polls of `GET /v1/approvals/{id}`,
//! `POST /v1/approvals/{id}/consume`): calls out, answers in, and at the end
//! forward or refuse. No I/O here; the exchange makes the calls.

use serde_json::Value;

use crate::auth::Identity;
use crate::policy::Approval;
use crate::protocol::{
    ApprovalAnswer, ApprovalBinding, ApprovalMode, ApprovalRequest, ApprovalStatus, Reason,
    APPROVALS_PATH,
};
use crate::provider::{Api, ErrorKind, Rejection};

/// Longest single long poll; a hold waits in several.
const MAX_WAIT_MS: u64 = 20_000;

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
    /// Refuse (the audit decision is [`Rejection::decision`]).
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
    /// The tool whose call in a model's answer waits (None: the request).
    call: Option<String>,
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
            call: None,
        };
        let call = Call {
            method: "POST",
            path: APPROVALS_PATH.to_owned(),
            body: serde_json::to_vec(request).ok(),
            timeout_ms: call_timeout_ms,
        };
        (flow, call)
    }

    /// The flow of a tool call in a model's answer, rather than of the
    /// request: its messages speak of the call.
    pub fn for_call(mut self, tool: &str) -> Self {
        self.call = Some(tool.to_owned());
        self
    }

    /// What waits: "this request" or "the call to tool 'x'".
    fn what(&self) -> String {
        match &self.call {
            Some(tool) => format!("the call to tool '{tool}'"),
            None => "this request".to_owned(),
        }
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
                    let again = match self.call {
                        Some(_) => "Once it is approved, the same call passes once.",
                        None => "Send the same request again once it is approved.",
                    };
                    let message = format!(
                        "{} needs an approval under rule '{}': approval {} is pending; an approver can decide it{url}. {again}",
                        self.what(),
                        self.rule,
                        answer.id
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
            let again = match self.call {
                Some(_) => "ask an approver, then ask for the same call again",
                None => "ask an approver and send the request again",
            };
            let message = format!(
                "approval {id} for rule '{}' was not decided within {} s; {again}",
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
            rejection: Rejection::new(self.api, ErrorKind::PermissionDenied, code, message),
            approval_id: self.id.clone(),
        }
    }

    fn unavailable(&self, why: &str) -> Next {
        Next::Reply {
            rejection: Rejection::new(
                self.api,
                ErrorKind::Unavailable,
                Reason::ApprovalsUnavailable,
                format!(
                    "{} needs an approval under rule '{}', and the gateway cannot reach its control plane ({why}); {}",
                    self.what(),
                    self.rule,
                    match self.call {
                        Some(_) => "the call was withheld",
                        None => "nothing was sent",
                    }
                ),
            ),
            approval_id: self.id.clone(),
        }
    }
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
        assert_eq!(rejection.decision().as_str(), "denied");
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
        let decision = rejection.decision().as_str();
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
}
