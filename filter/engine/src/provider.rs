//! The provider APIs Warden fronts, and errors in each one's own format.
//!
//! An SDK pointed at the gateway only understands its provider's error shape;
//! answering in that shape is what turns "403" into a readable message for the
//! user (the `openai` SDK raises `PermissionDeniedError` with our message, the
//! `anthropic` SDK likewise).

use crate::protocol::{Decision, Reason};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The wire format a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI's API (`/v1/chat/completions`, `/v1/responses`, ...), and the
    /// many self-hosted servers that copy it.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Azure OpenAI: OpenAI's bodies, but the key travels in `api-key`.
    AzureOpenai,
    /// A Model Context Protocol server over Streamable HTTP: JSON-RPC
    /// messages, answered as JSON or as an event stream of messages (see
    /// [`crate::mcp`]).
    Mcp,
}

impl Api {
    /// The header a provider of this API expects its key in, and the scheme
    /// that prefixes the key (if any).
    pub fn default_credential_header(self) -> (&'static str, Option<&'static str>) {
        match self {
            Api::Openai => ("authorization", Some("Bearer")),
            Api::Anthropic => ("x-api-key", None),
            Api::AzureOpenai => ("api-key", None),
            Api::Mcp => ("authorization", Some("Bearer")),
        }
    }

    /// Headers a provider of this API requires that the gateway adds when the
    /// client did not send them.
    pub fn default_headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Api::Anthropic => &[("anthropic-version", "2023-06-01")],
            Api::Openai | Api::AzureOpenai | Api::Mcp => &[],
        }
    }
}

/// Why the gateway answered instead of the provider. The variant fixes the
/// HTTP status and the error type each API uses for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the request cannot be inspected or is malformed.
    InvalidRequest,
    /// 401: no credential, or one that does not verify.
    Unauthenticated,
    /// 403: a verified caller that the policy does not allow.
    PermissionDenied,
    /// 404: no provider route for this path.
    NotFound,
    /// 413: the body is larger than the filter will inspect.
    PayloadTooLarge,
    /// 415: a body encoding the filter cannot inspect (e.g. compressed).
    UnsupportedMediaType,
    /// 503: the gateway is not ready to decide (no keys, no policy, no
    /// provider credential); always fail closed with a message that says so.
    Unavailable,
}

impl ErrorKind {
    pub fn status(self) -> u32 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Unavailable => 503,
        }
    }

    /// The error `type` string. Anthropic documents a closed set; OpenAI's
    /// SDKs key off the status code and show `message`, so the same names
    /// serve both.
    fn type_name(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::UnsupportedMediaType => "invalid_request_error",
            ErrorKind::Unauthenticated => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::Unavailable => "api_error",
        }
    }

    /// The JSON-RPC error code of an MCP answer: the protocol's own where
    /// one fits, else one of the implementation-defined server errors
    /// (-32000 to -32099), the same for every reason of a kind.
    fn rpc_code(self) -> i64 {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => -32600,
            ErrorKind::NotFound => -32601,
            ErrorKind::Unavailable => -32000,
            ErrorKind::Unauthenticated => -32001,
            ErrorKind::PermissionDenied => -32003,
        }
    }
}

/// A response the gateway sends itself (a "local reply" in Envoy's terms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A gateway error about to be rendered in some API's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    /// A stable machine-readable code, e.g. `warden.no_route`.
    pub code: Reason,
    /// A sentence for the user. Never contains a credential or a matched value.
    pub message: String,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, code: Reason, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }

    /// Renders the error as `api` would: OpenAI's `{"error": {...}}`,
    /// Anthropic's `{"type": "error", "error": {...}}`, or for MCP a JSON-RPC
    /// error answering no id (see [`GatewayError::render_rpc`]).
    pub fn render(&self, api: Api) -> LocalReply {
        self.render_rpc(api, &Value::Null)
    }

    /// The error as a JSON-RPC error message answering `id`.
    pub fn rpc_error(&self, id: &Value) -> Value {
        json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": self.kind.rpc_code(),
                "message": self.message,
                "data": { "reason": self.code.as_str() },
            }
        })
    }

    /// As [`GatewayError::render`]; an MCP answer names the id of the
    /// request it refuses (`null` before the body was read). The HTTP status
    /// says the same as the JSON-RPC code: MCP clients read the error body
    /// at any status.
    pub fn render_rpc(&self, api: Api, id: &Value) -> LocalReply {
        let body = match api {
            Api::Mcp => self.rpc_error(id),
            Api::Openai | Api::AzureOpenai => json!({
                "error": {
                    "message": self.message,
                    "type": self.kind.type_name(),
                    "param": null,
                    "code": self.code.as_str(),
                }
            }),
            Api::Anthropic => json!({
                "type": "error",
                "error": { "type": self.kind.type_name(), "message": self.message },
            }),
        };
        // The code travels in a header too: Anthropic's error shape has no
        // field for it, and operators grep for one name across both APIs.
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-warden-reason".to_string(), self.code.to_string()),
        ];
        if self.kind == ErrorKind::Unauthenticated {
            headers.push((
                "www-authenticate".to_string(),
                "Bearer error=\"invalid_token\"".to_string(),
            ));
        }
        LocalReply {
            status: self.kind.status(),
            headers,
            body: body.to_string().into_bytes(),
        }
    }
}

/// A request the gateway answers itself, in the API format of the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub api: Api,
    pub error: GatewayError,
}

impl Rejection {
    pub fn new(api: Api, kind: ErrorKind, code: Reason, message: impl Into<String>) -> Self {
        Self {
            api,
            error: GatewayError::new(kind, code, message),
        }
    }

    /// The decision this answer records in the audit trail and the counters.
    pub fn decision(&self) -> Decision {
        match (self.error.kind, self.error.code) {
            (_, Reason::ApprovalRequired | Reason::ApprovalPending) => Decision::ApprovalPending,
            (_, Reason::Blocked | Reason::StreamUnknown | Reason::ResponseUninspectable) => {
                Decision::Blocked
            }
            (ErrorKind::Unauthenticated, _) => Decision::Unauthenticated,
            (ErrorKind::PermissionDenied, _) => Decision::Denied,
            _ => Decision::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn body(reply: &LocalReply) -> Value {
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
    }

    #[test]
    fn openai_errors_have_openai_shape() {
        let reply = GatewayError::new(ErrorKind::PermissionDenied, Reason::ModelDenied, "no")
            .render(Api::Openai);
        assert_eq!(reply.status, 403);
        let v = body(&reply);
        assert_eq!(v["error"]["message"], "no");
        assert_eq!(v["error"]["code"], Reason::ModelDenied.as_str());
        assert_eq!(v["error"]["type"], "permission_error");
        assert!(v.get("type").is_none());
    }

    #[test]
    fn anthropic_errors_have_anthropic_shape() {
        let reply = GatewayError::new(ErrorKind::PayloadTooLarge, Reason::TooLarge, "big")
            .render(Api::Anthropic);
        assert_eq!(reply.status, 413);
        let v = body(&reply);
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "request_too_large");
        assert_eq!(v["error"]["message"], "big");
    }

    #[test]
    fn mcp_errors_are_json_rpc_errors() {
        let error = GatewayError::new(ErrorKind::PermissionDenied, Reason::ToolDenied, "no");
        let reply = error.render_rpc(Api::Mcp, &serde_json::json!(7));
        assert_eq!(reply.status, 403);
        let v = body(&reply);
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], -32003);
        assert_eq!(v["error"]["message"], "no");
        assert_eq!(v["error"]["data"]["reason"], "warden.tool_denied");
        assert_eq!(body(&error.render(Api::Mcp))["id"], Value::Null);
    }

    #[test]
    fn unauthenticated_carries_www_authenticate() {
        let reply =
            GatewayError::new(ErrorKind::Unauthenticated, Reason::NoToken, "x").render(Api::Openai);
        assert_eq!(reply.status, 401);
        assert!(reply
            .headers
            .iter()
            .any(|(n, v)| n == "www-authenticate" && v.contains("invalid_token")));
        let other =
            GatewayError::new(ErrorKind::NotFound, Reason::NoRoute, "x").render(Api::Openai);
        assert!(!other.headers.iter().any(|(n, _)| n == "www-authenticate"));
    }
}
