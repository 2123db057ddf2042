//! The `/v1` API: policy versions for people and gateways, approvals.
//!
//! | method | path | who | |
//! | --- | --- | --- | --- |
//! | GET | `/v1/policy/active` | gateway | the active version as JSON, `ETag`/`If-None-Match`; `Prefer: wait=N` waits for the next activation |
//! | GET | `/v1/policy/schema` | anyone | the policy's JSON Schema |
//! | GET | `/v1/policies` | person | every version's metadata, newest first |
//! | POST | `/v1/policies` | admin | publish (validated first; 422 with problems) |
//! | POST | `/v1/policies/validate` | person | check a document without publishing |
//! | GET | `/v1/policies/{v}` | person | one version with its document |
//! | POST | `/v1/policies/{v}/activate` | admin | make `v` active (rollback = an older `v`) |
//! | POST | `/v1/approvals` | gateway | open (or find, or consume) an approval |
//! | GET | `/v1/approvals/{id}/wait` | gateway | long-poll until decided (`timeout_ms` ≤ 30000) |
//! | POST | `/v1/approvals/{id}/consume` | gateway | use an approved approval once |
//! | GET | `/v1/approvals` | person | those the caller may decide, and their own |
//! | GET | `/v1/approvals/{id}` | person | one approval (its approvers, its requester, auditors) |
//! | POST | `/v1/approvals/{id}/approve`, `/deny` | approver | decide, with a reason |
//! | POST, GET | `/v1/sessions…` | gateway, auditor | recorded sessions: see [`crate::sessions`] |
//! | GET | `/v1/login`, `/v1/whoami` | anyone, person | see [`crate::whoami`] |
//! | POST, GET | `/v1/keys…` | person | machine keys: see [`crate::machine_keys`] |
//!
//! Gateways authenticate with `x-warden-gateway-key`; people with
//! `Authorization: Bearer <JWT>` (see [`crate::user_auth`]).
//!
//! Publish and validate compile the document with the server's
//! [`policies::Checker`], off the async threads: 413 past
//! [`policies::MAX_DOCUMENT_BYTES`], 429 past the caller's rate, 503 when
//! every slot is taken or the check outlives its deadline. Fields from
//! requests are logged through [`crate::fields::logged`].

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::approvals::{
    self, ApprovalBinding, ApprovalList, ApprovalStatus, ApprovalView, DecideRequest, OpenRequest,
    MAX_WAIT_MS,
};
use crate::body::{from_object, JsonObject};
use crate::error::responses::{
    BadRequest, Conflict, Forbidden, Gone, InvalidPolicy, NotFound, PayloadTooLarge,
    TooManyRequests, Unauthorized, Unavailable, UnsupportedMediaType,
};
use crate::error::{db, ApiError};
use crate::fields::logged;
use crate::policies::{self, CheckError};
use crate::state::AppState;
use crate::store::{ApprovalRow, Decider, OpenOutcome, PolicyMeta};
use crate::user_auth::{check_gateway, Caller};

/// Longest deny/approve reason kept.
const MAX_REASON_BYTES: usize = 2000;
/// Longest publish message kept.
const MAX_MESSAGE_BYTES: usize = 2000;

/// The `/v1` routes, each registered with its OpenAPI description (the
/// path and method are those of its `#[utoipa::path]`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(active_policy))
        .routes(routes!(policy_schema))
        .routes(routes!(list_policies, publish_policy))
        .routes(routes!(validate_policy))
        .routes(routes!(show_policy))
        .routes(routes!(activate_policy))
        .routes(routes!(list_approvals, open_approval))
        .routes(routes!(show_approval))
        .routes(routes!(wait_approval))
        .routes(routes!(consume_approval))
        .routes(routes!(approve))
        .routes(routes!(deny))
        .merge(crate::sessions::routes())
        .merge(crate::whoami::routes())
        .merge(crate::machine_keys::routes())
}

/// The OpenAPI tags of these routes.
pub const POLICIES_TAG: &str = "policies";
/// See [`POLICIES_TAG`].
pub const APPROVALS_TAG: &str = "approvals";

fn gateway(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    check_gateway(state.config().gateway_secret.as_deref(), headers)
}

// ---------------------------------------------------------------------------
// Policies

/// `GET /v1/policy/active` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActivePolicy {
    pub version: i64,
    pub sha256: String,
    /// The document as JSON (the policy's JSON Schema: `GET /v1/policy/schema`).
    pub policy: Value,
    /// The live machine keys, by hash (never the keys).
    pub machine_keys: Vec<warden_engine::auth::machine_keys::MachineKeyDoc>,
}

/// The active policy version, for gateways.
///
/// Answered with an `ETag`; a request whose `If-None-Match` names it is
/// answered 304 without a body. With `Prefer: wait=N` (seconds, at most 60)
/// a request that would get 304 (or 404: nothing active yet) waits until
/// another version is activated, and gets it at once, or gets that answer
/// after N seconds; `Preference-Applied: wait=N` says the wait was honoured,
/// so the gateway may ask again right away.
#[utoipa::path(
    get,
    path = "/v1/policy/active",
    tag = POLICIES_TAG,
    security(("gateway" = [])),
    params(
        ("If-None-Match" = Option<String>, Header, description = "ETags the gateway has"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: wait up to N seconds (at most 60) for another version"),
    ),
    responses(
        (status = 200, description = "The active version", body = ActivePolicy,
         headers(("ETag" = String), ("Preference-Applied" = Option<String>))),
        (status = 304, description = "The gateway has this version", headers(("ETag" = String), ("Preference-Applied" = Option<String>))),
        Unauthorized,
        (status = 404, description = "No version is active yet (`no_active_policy`)", body = crate::error::ErrorBody),
        Unavailable,
    )
)]
async fn active_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    gateway(&state, &headers)?;
    let wait = crate::policy_watch::requested_wait(&headers);
    let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
    // Subscribed before the first read: an activation between the read and
    // the wait wakes it.
    let mut watcher = state.policy_watch().subscribe();
    let applied = wait.map(|w| {
        (
            header::HeaderName::from_static("preference-applied"),
            HeaderValue::from_str(&format!("wait={}", w.as_secs()))
                .unwrap_or(HeaderValue::from_static("wait")),
        )
    });
    loop {
        let active = state.store().active_policy().await.map_err(db)?;
        let waiting = wait.is_some() && tokio::time::Instant::now() < deadline;
        let Some(active) = active else {
            if waiting && watcher.next_change(deadline).await {
                continue;
            }
            let mut refused = ApiError::refused(
                StatusCode::NOT_FOUND,
                "no_active_policy",
                "no policy version is active yet: publish one with `warden policy push`",
            )
            .into_response();
            refused.headers_mut().extend(applied.clone());
            return Ok(refused);
        };
        // The keys are part of what a gateway holds: a revocation changes the
        // ETag as an activation does.
        let keys = state
            .store()
            .live_machine_keys(state.clock().now_ms())
            .await
            .map_err(db)?;
        let machine_keys = crate::machine_keys::served(&keys);
        let keys_tag = keys_tag(&machine_keys)?;
        let etag = format!(
            "\"{}-{}-{keys_tag}\"",
            active.meta.version, active.meta.sha256
        );
        let etag_value =
            HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.to_string()))?;
        if held_etag(&headers, &etag) {
            if waiting && watcher.next_change(deadline).await {
                continue;
            }
            let mut unchanged =
                (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response();
            unchanged.headers_mut().extend(applied.clone());
            return Ok(unchanged);
        }
        let policy = policies::to_json(&active.document).map_err(|e| {
            ApiError::Internal(format!(
                "stored policy version {} does not parse: {e}",
                active.meta.version
            ))
        })?;
        let mut answer = (
            [(header::ETAG, etag_value)],
            Json(ActivePolicy {
                version: active.meta.version,
                sha256: active.meta.sha256,
                policy,
                machine_keys,
            }),
        )
            .into_response();
        answer.headers_mut().extend(applied);
        return Ok(answer);
    }
}

/// A short digest of the served keys, for the ETag.
fn keys_tag(keys: &[warden_engine::auth::machine_keys::MachineKeyDoc]) -> Result<String, ApiError> {
    use sha2::Digest as _;
    let text = serde_json::to_vec(keys).map_err(|e| ApiError::Internal(e.to_string()))?;
    let digest = sha2::Sha256::digest(&text);
    Ok(hex::encode(digest.get(..8).unwrap_or_default()))
}

/// Whether `If-None-Match` names `etag` (strong or weak, in any list).
fn held_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == etag || tag.strip_prefix("W/") == Some(etag)
        })
}

/// The policy document's JSON Schema.
#[utoipa::path(
    get,
    path = "/v1/policy/schema",
    tag = POLICIES_TAG,
    responses((status = 200, description = "A JSON Schema (draft 2020-12)", body = Object)),
)]
async fn policy_schema() -> Json<Value> {
    Json(warden_engine::policy::json_schema())
}

/// `GET /v1/policies` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyList {
    /// Newest first.
    pub policies: Vec<PolicyMeta>,
}

/// Every policy version's metadata, newest first.
#[utoipa::path(
    get,
    path = "/v1/policies",
    tag = POLICIES_TAG,
    security(("person" = [])),
    responses((status = 200, description = "The versions", body = PolicyList), Unauthorized, Unavailable),
)]
async fn list_policies(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<PolicyList>, ApiError> {
    state.users().caller(&headers).await?;
    let policies = state.store().list_policies().await.map_err(db)?;
    Ok(Json(PolicyList { policies }))
}

fn parse_version(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("`{text}` is not a policy version number")))
}

fn no_such_version(version: i64) -> ApiError {
    ApiError::refused(
        StatusCode::NOT_FOUND,
        "policy_not_found",
        format!("there is no policy version {version}"),
    )
}

/// `GET /v1/policies/{v}` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyWithDocument {
    #[serde(flatten)]
    pub meta: PolicyMeta,
    /// The document's text, as published.
    pub document: String,
}

/// One policy version, with its document.
#[utoipa::path(
    get,
    path = "/v1/policies/{version}",
    tag = POLICIES_TAG,
    security(("person" = [])),
    params(VersionParam),
    responses(
        (status = 200, description = "The version", body = PolicyWithDocument),
        BadRequest,
        Unauthorized,
        NotFound,
        Unavailable,
    ),
)]
async fn show_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(version): Path<String>,
) -> Result<Json<PolicyWithDocument>, ApiError> {
    state.users().caller(&headers).await?;
    let version = parse_version(&version)?;
    let found = state.store().policy(version).await.map_err(db)?;
    let found = found.ok_or_else(|| no_such_version(version))?;
    Ok(Json(PolicyWithDocument {
        meta: found.meta,
        document: found.document,
    }))
}

/// `POST /v1/policies`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The policy document (YAML or JSON text).
    pub document: String,
    /// Why this version is published: required, at most 2000 bytes.
    #[serde(default)]
    pub message: String,
    /// Make it the active version at once (the default).
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub activate: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/policies/validate`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    /// The policy document (YAML or JSON text).
    pub document: String,
}

/// `POST /v1/policies/validate` answer: a document that does not compile is
/// answered 422 instead.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct Validity {
    /// Always true.
    pub valid: bool,
}

/// The `{version}` of a policy route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VersionParam {
    /// A policy version number (1, 2, 3, ...).
    #[param(minimum = 1)]
    pub version: i64,
}

/// Publishes a policy version (validated first), by default making it active.
#[utoipa::path(
    post,
    path = "/v1/policies",
    tag = POLICIES_TAG,
    security(("person" = [])),
    request_body = PublishRequest,
    responses(
        (status = 201, description = "Published", body = PolicyMeta),
        BadRequest,
        Unauthorized,
        (status = 403, description = "Not a member of the admin group (`admin_required`)", body = crate::error::ErrorBody),
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidPolicy,
        TooManyRequests,
        Unavailable,
    ),
)]
async fn publish_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonObject<PublishRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = state.users().admin(&headers).await?;
    let JsonObject(request) = body?;
    let message = request.message.trim();
    if message.is_empty() {
        return Err(ApiError::BadRequest(
            "`message` must say why this version is published".into(),
        ));
    }
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "`message` is longer than {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    if !crate::fields::storable(message) {
        return Err(ApiError::BadRequest(
            "`message` must not contain U+0000".into(),
        ));
    }
    check_policy(&state, &caller, &request.document).await?;
    let sha256 = policies::sha256_hex(&request.document);
    let meta = state
        .store()
        .publish_policy(
            &crate::fields::stored(caller.identity.subject.clone()),
            message,
            &request.document,
            &sha256,
            request.activate,
        )
        .await
        .map_err(db)?;
    if meta.active {
        state.policy_watch().changed();
    }
    tracing::info!(
        version = meta.version,
        author = %logged(&meta.author),
        active = meta.active,
        "policy version published"
    );
    Ok((StatusCode::CREATED, Json(meta)).into_response())
}

/// Checks a policy document without publishing it.
#[utoipa::path(
    post,
    path = "/v1/policies/validate",
    tag = POLICIES_TAG,
    security(("person" = [])),
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "The document compiles", body = Validity),
        BadRequest,
        Unauthorized,
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidPolicy,
        TooManyRequests,
        Unavailable,
    ),
)]
async fn validate_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonObject<ValidateRequest>, ApiError>,
) -> Result<Json<Validity>, ApiError> {
    let caller = state.users().caller(&headers).await?;
    let JsonObject(request) = body?;
    check_policy(&state, &caller, &request.document).await?;
    Ok(Json(Validity { valid: true }))
}

/// Compiles `document` for `caller` with the server's [`policies::Checker`].
async fn check_policy(state: &AppState, caller: &Caller, document: &str) -> Result<(), ApiError> {
    let key = format!("{}\n{}", caller.identity.issuer, caller.identity.subject);
    let verdict = state
        .policy_checker()
        .check(&key, document, state.clock().instant())
        .await;
    verdict.map_err(|error| match error {
        CheckError::Invalid(problems) => ApiError::InvalidPolicy(problems),
        CheckError::TooLarge => ApiError::refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the policy document is larger than {} bytes",
                policies::MAX_DOCUMENT_BYTES
            ),
        ),
        CheckError::RateLimited(retry_after) => ApiError::Throttled {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: "too many policy checks: try again later".into(),
            retry_after,
        },
        CheckError::Busy => ApiError::Throttled {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "policy_checks_busy",
            message: "the server is checking other policies: try again shortly".into(),
            retry_after: Duration::from_secs(1),
        },
        CheckError::TimedOut => ApiError::Throttled {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "policy_check_timeout",
            message: "checking this policy takes too long: simplify its patterns".into(),
            retry_after: Duration::from_secs(5),
        },
        CheckError::Failed(detail) => ApiError::Internal(format!("policy check failed: {detail}")),
    })
}

/// Makes a version the active one (a rollback names an older one).
#[utoipa::path(
    post,
    path = "/v1/policies/{version}/activate",
    tag = POLICIES_TAG,
    security(("person" = [])),
    params(VersionParam),
    responses(
        (status = 200, description = "Now active", body = PolicyMeta),
        BadRequest,
        Unauthorized,
        (status = 403, description = "Not a member of the admin group (`admin_required`)", body = crate::error::ErrorBody),
        NotFound,
        Unavailable,
    ),
)]
async fn activate_policy(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(version): Path<String>,
) -> Result<Json<PolicyMeta>, ApiError> {
    let caller = state.users().admin(&headers).await?;
    let version = parse_version(&version)?;
    let meta = state.store().activate_policy(version).await.map_err(db)?;
    let meta = meta.ok_or_else(|| no_such_version(version))?;
    state.policy_watch().changed();
    tracing::info!(version, by = %logged(&caller.identity.subject), "policy version activated");
    Ok(Json(meta))
}

// ---------------------------------------------------------------------------
// Approvals: gateways

/// Opens an approval for a request (a gateway), or finds the one already
/// open for it (200), or, for a ticket, uses the approved one (200).
#[utoipa::path(
    post,
    path = "/v1/approvals",
    tag = APPROVALS_TAG,
    security(("gateway" = [])),
    request_body = OpenRequest,
    responses(
        (status = 201, description = "Opened", body = ApprovalView),
        (status = 200, description = "Already open, or (a ticket) used now", body = ApprovalView),
        BadRequest,
        Unauthorized,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unavailable,
    ),
)]
async fn open_approval(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonObject<OpenRequest>, ApiError>,
) -> Result<Response, ApiError> {
    gateway(&state, &headers)?;
    let JsonObject(request) = body?;
    let now = state.clock().now_ms();
    let new = approvals::new_row(request, now).map_err(ApiError::BadRequest)?;
    let (row, outcome) = state.store().open_approval(new, now).await.map_err(db)?;
    let view = approvals::view(&row, now, &state.approvals_url());
    let status = match outcome {
        OpenOutcome::Created => {
            tracing::info!(
                approval = %row.id,
                rule = %logged(&row.rule),
                subject = %logged(&row.subject),
                model = %logged(&row.model),
                "approval opened"
            );
            if let Some(webhook) = state.webhook() {
                webhook.spawn_send(&view);
            }
            StatusCode::CREATED
        }
        OpenOutcome::Consumed => {
            tracing::info!(approval = %row.id, "approval used (ticket)");
            StatusCode::OK
        }
        OpenOutcome::Existing => StatusCode::OK,
    };
    Ok((status, Json(view)).into_response())
}

/// The query of `GET /v1/approvals/{id}/wait`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// How long to wait for a decision, in milliseconds; at most (and by
    /// default) 30000, a longer wait is cut to that.
    #[param(format = "uint64")]
    pub timeout_ms: Option<u64>,
}

/// The `{id}` of an approval route.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IdParam {
    /// The approval's id (`apr_` and 32 hex digits).
    pub id: String,
}

fn not_found(id: &str) -> ApiError {
    ApiError::refused(
        StatusCode::NOT_FOUND,
        "approval_not_found",
        format!("there is no approval `{id}`"),
    )
}

async fn load(state: &AppState, id: &str) -> Result<ApprovalRow, ApiError> {
    // Ids are ours (`apr_` + hex); anything else cannot exist (and U+0000
    // cannot even be looked up in PostgreSQL).
    if id.len() > 64 || !crate::fields::storable(id) {
        return Err(not_found(id));
    }
    state
        .store()
        .approval(id)
        .await
        .map_err(db)?
        .ok_or_else(|| not_found(id))
}

/// Waits until the approval is decided or expires, or the time is up (a
/// gateway); answers its state then.
#[utoipa::path(
    get,
    path = "/v1/approvals/{id}/wait",
    tag = APPROVALS_TAG,
    security(("gateway" = [])),
    params(IdParam, WaitQuery),
    responses(
        (status = 200, description = "The approval", body = ApprovalView),
        BadRequest,
        Unauthorized,
        NotFound,
        Unavailable,
    ),
)]
async fn wait_approval(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ApprovalView>, ApiError> {
    gateway(&state, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(MAX_WAIT_MS).min(MAX_WAIT_MS));
    let clock = state.clock();
    let started = clock.instant();
    loop {
        let row = load(&state, &id).await?;
        let now = clock.now_ms();
        let waited = clock.instant().saturating_duration_since(started);
        match approvals::wait_pause(&row, now, timeout.saturating_sub(waited)) {
            None => return Ok(Json(approvals::view(&row, now, &state.approvals_url()))),
            // Real time passes while the request waits, whatever the clock says.
            Some(pause) => tokio::time::sleep(pause).await,
        }
    }
}

/// Uses an approved approval, once, for the request it was given for (a
/// gateway).
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/consume",
    tag = APPROVALS_TAG,
    security(("gateway" = [])),
    params(IdParam),
    request_body = ApprovalBinding,
    responses(
        (status = 200, description = "The approval", body = ApprovalView),
        BadRequest,
        Unauthorized,
        (status = 403, description = "Given for another request (`approval_mismatch`)", body = crate::error::ErrorBody),
        NotFound,
        Conflict,
        Gone,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unavailable,
    ),
)]
async fn consume_approval(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<JsonObject<ApprovalBinding>, ApiError>,
) -> Result<Json<ApprovalView>, ApiError> {
    gateway(&state, &headers)?;
    let JsonObject(request) = body?;
    let row = load(&state, &id).await?;
    if !approvals::binds(&row, &request) {
        return Err(ApiError::refused(
            StatusCode::FORBIDDEN,
            "approval_mismatch",
            "this approval was given for another requester, route, rule, model, policy version or request body",
        ));
    }
    let now = state.clock().now_ms();
    if state.store().consume_approval(&id, now).await.map_err(db)? {
        let row = load(&state, &id).await?;
        tracing::info!(approval = %logged(&id), "approval used");
        return Ok(Json(approvals::view(&row, now, &state.approvals_url())));
    }
    let row = load(&state, &id).await?;
    Err(match approvals::status_at(&row, now) {
        ApprovalStatus::Consumed => ApiError::refused(
            StatusCode::CONFLICT,
            "approval_used",
            "this approval was already used; approvals are single-use",
        ),
        ApprovalStatus::Expired => expired(),
        status => ApiError::refused(
            StatusCode::CONFLICT,
            "approval_not_approved",
            format!("this approval is {}, not approved", status.as_str()),
        ),
    })
}

fn expired() -> ApiError {
    ApiError::refused(
        StatusCode::GONE,
        "approval_expired",
        "this approval has expired",
    )
}

// ---------------------------------------------------------------------------
// Approvals: people

fn may_decide(caller: &Caller, row: &ApprovalRow) -> bool {
    let approvers = approvals::approvers(row);
    caller
        .identity
        .groups
        .iter()
        .any(|g| approvers.iter().any(|a| a == g))
}

fn is_own(caller: &Caller, row: &ApprovalRow) -> bool {
    approvals::is_requester(&caller.identity, row)
}

/// The query of `GET /v1/approvals`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only approvals with this status (`approved` includes those used);
    /// `all` for every status. Default: `pending`.
    #[param(value_type = Option<String>, pattern = "^(pending|approved|denied|expired|consumed|all)$")]
    pub status: Option<String>,
}

/// `?status=all`: every status.
const ALL_STATUSES: &str = "all";

/// The approvals the caller may decide, and their own, newest first.
#[utoipa::path(
    get,
    path = "/v1/approvals",
    tag = APPROVALS_TAG,
    security(("person" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "The approvals", body = ApprovalList),
        BadRequest,
        Unauthorized,
        Unavailable,
    ),
)]
async fn list_approvals(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ApprovalList>, ApiError> {
    let caller = state.users().caller(&headers).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // None: all of them.
    let wanted: Option<ApprovalStatus> = match query.status.as_deref() {
        None => Some(ApprovalStatus::Pending),
        Some(ALL_STATUSES) => None,
        Some(text) => Some(
            ApprovalStatus::ALL
                .into_iter()
                .find(|status| status.as_str() == text)
                .ok_or_else(|| {
                    let allowed: Vec<&str> = ApprovalStatus::ALL
                        .iter()
                        .map(|status| status.as_str())
                        .chain([ALL_STATUSES])
                        .collect();
                    ApiError::BadRequest(format!("`status` must be one of {}", allowed.join(", ")))
                })?,
        ),
    };
    let now = state.clock().now_ms();
    let url = state.approvals_url();
    let rows = state.store().recent_approvals().await.map_err(db)?;
    let approvals: Vec<ApprovalView> = rows
        .iter()
        .filter(|row| may_decide(&caller, row) || is_own(&caller, row))
        .filter(|row| {
            let status = approvals::status_at(row, now);
            match wanted {
                None => true,
                // An approval that was used was approved.
                Some(ApprovalStatus::Approved) => {
                    status == ApprovalStatus::Approved || status == ApprovalStatus::Consumed
                }
                Some(wanted) => status == wanted,
            }
        })
        .map(|row| approvals::view(row, now, &url))
        .collect();
    Ok(Json(ApprovalList { approvals }))
}

/// One approval: for its approvers, its requester and auditors (others are
/// answered 404).
#[utoipa::path(
    get,
    path = "/v1/approvals/{id}",
    tag = APPROVALS_TAG,
    security(("person" = [])),
    params(IdParam),
    responses(
        (status = 200, description = "The approval", body = ApprovalView),
        Unauthorized,
        NotFound,
        Unavailable,
    ),
)]
async fn show_approval(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<ApprovalView>, ApiError> {
    let caller = state.users().caller(&headers).await?;
    let row = load(&state, &id).await?;
    // Someone who may neither decide nor owns it learns nothing, not even
    // that it exists; auditors read it (a recorded session names it).
    if !may_decide(&caller, &row)
        && !is_own(&caller, &row)
        && !crate::sessions::is_auditor(state.config(), &caller)
    {
        return Err(not_found(&id));
    }
    Ok(Json(approvals::view(
        &row,
        state.clock().now_ms(),
        &state.approvals_url(),
    )))
}

/// Approves a pending approval (a member of one of its approver groups,
/// not its requester); the body and its `reason` are optional.
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/approve",
    tag = APPROVALS_TAG,
    security(("person" = [])),
    params(IdParam),
    request_body(content = Option<DecideRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The approval", body = ApprovalView),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PayloadTooLarge,
        Unavailable,
    ),
)]
async fn approve(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ApprovalView>, ApiError> {
    decide(state, headers, id, body, true).await
}

/// Denies a pending approval, with a `reason` the requester sees (a member
/// of one of its approver groups, not its requester).
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/deny",
    tag = APPROVALS_TAG,
    security(("person" = [])),
    params(IdParam),
    request_body(content = DecideRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The approval", body = ApprovalView),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PayloadTooLarge,
        Unavailable,
    ),
)]
async fn deny(
    state: State<AppState>,
    headers: HeaderMap,
    id: Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ApprovalView>, ApiError> {
    decide(state, headers, id, body, false).await
}

async fn decide(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
    approve: bool,
) -> Result<Json<ApprovalView>, ApiError> {
    let caller = state.users().caller(&headers).await?;
    // An approval may come with no body at all, or `null` (the description's
    // optional body); a denial's reason is checked below.
    let request: DecideRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DecideRequest::default()
    } else {
        match serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
        {
            Value::Null => DecideRequest::default(),
            value => from_object(value)?,
        }
    };
    let reason = request
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if let Some(reason) = &reason {
        if reason.len() > MAX_REASON_BYTES || reason.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ApiError::BadRequest(format!(
                "`reason` must be at most {MAX_REASON_BYTES} bytes of text"
            )));
        }
    }
    if !approve && reason.is_none() {
        return Err(ApiError::refused(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "a denial needs a `reason`: the requester sees it",
        ));
    }
    let row = load(&state, &id).await?;
    if is_own(&caller, &row) {
        return Err(ApiError::refused(
            StatusCode::FORBIDDEN,
            "self_approval",
            "nobody decides their own request",
        ));
    }
    if !may_decide(&caller, &row) {
        return Err(ApiError::refused(
            StatusCode::FORBIDDEN,
            "not_an_approver",
            format!(
                "this approval is for members of: {}",
                approvals::approvers(&row).join(", ")
            ),
        ));
    }
    let now = state.clock().now_ms();
    // From the token, which bounds nothing but its own size: cut like any stored field.
    let decider = Decider {
        issuer: crate::fields::stored(caller.identity.issuer.clone()),
        subject: crate::fields::stored(caller.identity.subject.clone()),
        email: caller.identity.email.clone().map(crate::fields::stored),
    };
    let decided = state
        .store()
        .decide_approval(&id, approve, &decider, reason.as_deref(), now)
        .await
        .map_err(db)?;
    let row = load(&state, &id).await?;
    if !decided {
        return Err(match approvals::status_at(&row, now) {
            ApprovalStatus::Expired if row.stored_status() == ApprovalStatus::Pending => expired(),
            _ => ApiError::refused(
                StatusCode::CONFLICT,
                "already_decided",
                format!(
                    "this approval was already {} by {}",
                    row.stored_status().as_str(),
                    row.decided_by_email
                        .as_deref()
                        .or(row.decided_by_subject.as_deref())
                        .unwrap_or("someone")
                ),
            ),
        });
    }
    tracing::info!(
        approval = %logged(&id),
        decision = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Denied
        }
        .as_str(),
        by = %logged(&decider.subject),
        "approval decided"
    );
    Ok(Json(approvals::view(&row, now, &state.approvals_url())))
}
