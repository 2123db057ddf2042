//! The one error type every HTTP handler returns.
//!
//! Each variant maps to a status code and a stable machine-readable `code`;
//! the response body is always
//!
//! ```json
//! {"error": {"code": "bad_request", "message": "`sub` must not be empty"}}
//! ```
//!
//! Variants that wrap internal failures ([`ApiError::DatabaseUnavailable`],
//! [`ApiError::Internal`]) log their details with `tracing` and send the client
//! only a generic message: database errors, file paths and key material never
//! leave the process.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

/// An error returned by an API handler.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was malformed or failed validation. The message is shown
    /// to the client, so it must only describe the client's own input.
    #[error("bad request: {0}")]
    BadRequest(String),

    /// The request body was not declared as JSON.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),

    /// The request body was larger than the server accepts.
    #[error("payload too large")]
    PayloadTooLarge,

    /// No such route or resource (also what the dev routes answer without `--dev`).
    #[error("not found: {0}")]
    NotFound(String),

    /// The route exists but not for this HTTP method.
    #[error("method not allowed")]
    MethodNotAllowed,

    /// The database did not answer. The detail is logged, never sent.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),

    /// Anything else that went wrong on our side. The detail is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),

    /// A refusal with its own status and stable code (`not_an_approver`,
    /// `approval_used`, `gateway_secret_unset`, ...). The message describes the
    /// caller's situation and is sent as is.
    #[error("{code}: {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// Stable machine-readable code.
        code: &'static str,
        /// Safe to show to the caller.
        message: String,
    },

    /// Too much at once: 429 for one caller's rate, 503 for the server's
    /// capacity; answered with `Retry-After`.
    #[error("{code}: {message}")]
    Throttled {
        /// HTTP status.
        status: StatusCode,
        /// Stable machine-readable code.
        code: &'static str,
        /// Safe to show to the caller.
        message: String,
        /// When to try again.
        retry_after: std::time::Duration,
    },

    /// A policy document that does not compile: 422 with every problem.
    #[error("invalid policy ({} problems)", .0.len())]
    InvalidPolicy(Vec<crate::policies::Problem>),
}

/// The JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
    /// For `invalid_policy`: every problem, with line, column and path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<crate::policies::Problem>>,
}

/// The `error` member of [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `bad_request` or `not_found`.
    pub code: String,
    /// A human-readable message, safe to show to the caller.
    pub message: String,
}

/// The error answers as the OpenAPI description names them: one type per
/// status, each with an [`ErrorBody`], listed in each operation's
/// `responses(...)` (`#[utoipa::path]`) where the handler can answer it.
pub mod responses {
    use super::ErrorBody;

    /// The request is malformed or fails validation (`bad_request`, or a
    /// more precise code such as `reason_required`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 400)]
    pub struct BadRequest(pub ErrorBody);

    /// No valid credentials: a person's bearer token (`unauthorized`) or
    /// the gateway secret (`gateway_unauthorized`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 401)]
    pub struct Unauthorized(pub ErrorBody);

    /// The caller may not do this (`admin_required`, `not_an_approver`,
    /// `self_approval`, `auditor_required`, `approval_mismatch`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 403)]
    pub struct Forbidden(pub ErrorBody);

    /// No such resource, or none the caller may see.
    #[derive(utoipa::IntoResponses)]
    #[response(status = 404)]
    pub struct NotFound(pub ErrorBody);

    /// The approval is not in a state that allows this (`already_decided`,
    /// `approval_used`, `approval_not_approved`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 409)]
    pub struct Conflict(pub ErrorBody);

    /// The approval has expired (`approval_expired`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 410)]
    pub struct Gone(pub ErrorBody);

    /// The body is larger than the server accepts (`payload_too_large`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 413)]
    pub struct PayloadTooLarge(pub ErrorBody);

    /// The body is not declared as JSON (`unsupported_media_type`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 415)]
    pub struct UnsupportedMediaType(pub ErrorBody);

    /// The policy document does not compile (`invalid_policy`, with
    /// `problems`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 422)]
    pub struct InvalidPolicy(pub ErrorBody);

    /// Too many policy checks by this caller (`rate_limited`, with
    /// `Retry-After`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 429)]
    pub struct TooManyRequests(pub ErrorBody);

    /// Not now: the database (`database_unavailable`), the identity
    /// provider's keys (`issuer_unavailable`), no gateway secret set
    /// (`gateway_secret_unset`), the policy checker busy
    /// (`policy_checks_busy`, `policy_check_timeout`, with `Retry-After`).
    #[derive(utoipa::IntoResponses)]
    #[response(status = 503)]
    pub struct Unavailable(pub ErrorBody);
}

/// A store failure as the API answers it: 503 `database_unavailable` (the
/// detail is logged, never sent).
pub fn db(error: crate::store::StoreError) -> ApiError {
    ApiError::DatabaseUnavailable(error.to_string())
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Refused { status, .. } | ApiError::Throttled { status, .. } => *status,
            ApiError::InvalidPolicy(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The stable machine-readable code sent in the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::DatabaseUnavailable(_) => "database_unavailable",
            ApiError::Internal(_) => "internal",
            ApiError::Refused { code, .. } | ApiError::Throttled { code, .. } => code,
            ApiError::InvalidPolicy(_) => "invalid_policy",
        }
    }

    /// The message sent to the client: the client's own mistake, or a
    /// generic sentence for failures on our side.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::BadRequest(message)
            | ApiError::UnsupportedMediaType(message)
            | ApiError::NotFound(message)
            | ApiError::Refused { message, .. }
            | ApiError::Throttled { message, .. } => message.clone(),
            ApiError::PayloadTooLarge => "the request body is too large".to_owned(),
            ApiError::MethodNotAllowed => "this method is not allowed on this path".to_owned(),
            ApiError::DatabaseUnavailable(_) => "the database is not available".to_owned(),
            ApiError::Internal(_) => "internal server error".to_owned(),
            ApiError::InvalidPolicy(problems) => match problems.first() {
                Some(first) if problems.len() == 1 => {
                    format!("the policy is invalid: {}", first.message)
                }
                _ => format!("the policy is invalid ({} problems)", problems.len()),
            },
        }
    }

    /// The response body for this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.public_message(),
            },
            problems: match self {
                ApiError::InvalidPolicy(problems) => Some(problems.clone()),
                _ => None,
            },
        }
    }

    /// A refusal with `status` and `code`.
    pub fn refused(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Refused {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Details and messages can quote the request: bounded and escaped.
        use crate::fields::logged;
        match &self {
            ApiError::DatabaseUnavailable(detail) => {
                tracing::error!(error = %logged(detail), "database unavailable");
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %logged(detail), "internal error");
            }
            _ => {
                tracing::debug!(code = self.code(), message = %logged(&self.public_message()), "request rejected");
            }
        }
        let mut response = (self.status(), Json(self.body())).into_response();
        if let ApiError::Throttled { retry_after, .. } = &self {
            // Whole seconds, rounded up: never "0", which invites a spin.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // axum's rejection texts describe the client's input (missing
        // content type, syntax error at line/column, unknown field), so they
        // are safe and useful to pass on.
        match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::UnsupportedMediaType(rejection.body_text())
            }
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            _ => ApiError::BadRequest(rejection.body_text()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn client_errors_carry_their_message() {
        let (status, body) = body_of(ApiError::BadRequest("`sub` must not be empty".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "bad_request", "message": "`sub` must not be empty"}})
        );
    }

    #[tokio::test]
    async fn throttled_answers_say_when_to_retry() {
        let response = ApiError::Throttled {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: "slow down".into(),
            retry_after: std::time::Duration::from_millis(4200),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        let (_, body) = body_of(ApiError::Throttled {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "policy_checks_busy",
            message: "busy".into(),
            retry_after: std::time::Duration::ZERO,
        })
        .await;
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "policy_checks_busy", "message": "busy"}})
        );
    }

    #[tokio::test]
    async fn internal_details_are_not_sent() {
        let (status, body) = body_of(ApiError::Internal(
            "open /secret/path: permission denied".into(),
        ))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert!(!body.to_string().contains("/secret/path"));

        let (status, body) = body_of(ApiError::DatabaseUnavailable(
            "password authentication failed".into(),
        ))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "database_unavailable");
        assert!(!body.to_string().contains("password"));
    }
}
