//! Recorded sessions (issue 6): gateways append records in batches; auditors
//! list, read and verify them.
//!
//! | method | path | who | |
//! | --- | --- | --- | --- |
//! | POST | `/v1/sessions` | gateway | `{"records": [R, …]}` (≤ 500, ≤ 4 MiB) → `{"stored", "last_seq"}` |
//! | GET | `/v1/sessions` | auditor | `?subject=&decision=&since=&until=&limit=&before_seq=`, newest first, summaries, `next_before_seq` |
//! | GET | `/v1/sessions/verify` | auditor | recompute the hash chain from the start |
//! | GET | `/v1/sessions/{id}` | auditor | the full record with `seq`, `hash`, `prev_hash` |
//!
//! A batch is read into the engine's [`SessionBatch`] (each record a
//! [`SessionRecord`], the type the filter writes): a record missing a field
//! the type requires, with an unknown field, or with a decision or reason
//! code this build does not know is refused (400, naming the record and the
//! field). The row's `decision` column is the record's
//! [`warden_engine::protocol::Decision::as_str`].
//!
//! Storage is an append-only chain ([`crate::chain`]): row `seq` holds the
//! record's canonical JSON and `hash = sha256_hex(prev_hash || "\n" || record)`.
//! [`verify`] walks the chain in pages and names what broke it: a hash that
//! does not match its row (`edited`), a gap in `seq` (`deleted`), a link to
//! a row that exists elsewhere in the chain (`reordered`), or a link to
//! nothing (`broken_link`). Deleting the newest rows leaves no trace in the
//! chain itself; anchoring the head elsewhere (an export, a log) closes that.
//!
//! The list filters on the subject in the database; on the decision and the
//! time (the record's `time`, RFC 3339, both ends included) it reads the
//! chain newest first, at most [`MAX_SCAN`] rows per call, and answers
//! `next_before_seq` to go on from where it stopped (`null`: nothing older
//! is left). With `since`, it stops at rows the control plane received more
//! than [`CLOCK_MARGIN`] before `since` (a record is received after it was
//! made; the margin covers the gateways' clocks and batching).
//!
//! Auditors may also read any approval (`GET /v1/approvals/{id}`, see
//! [`is_auditor`]) to see who approved a recorded request; deciding stays
//! with the approvers.
//!
//! Records hold prompts (masked or not): their contents are never logged.
//! Their descriptive metadata (time, subject, groups, model, route, rules,
//! …) is cut to [`crate::fields::MAX_STORED_BYTES`] before it is stored and
//! hashed; the bodies (`request`, `response`) are kept whole.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;
use warden_engine::protocol::{SessionBatch, SessionRecord, SessionsStored};

use crate::chain::{chain_hash, record_text, GENESIS_HASH};
use crate::error::responses::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable,
    UnsupportedMediaType,
};
use crate::error::{db, ApiError};
use crate::state::{AppState, ServerConfig};
use crate::store::{NewSession, SessionRow, Store, StoreError};
use crate::user_auth::{check_gateway, Caller};

/// Most records in one `POST /v1/sessions`.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Largest `POST /v1/sessions` body.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Longest record id.
pub const MAX_ID_CHARS: usize = 128;
/// Default and largest page of `GET /v1/sessions`.
pub const DEFAULT_LIST_LIMIT: i64 = 50;
/// Largest page of `GET /v1/sessions`.
pub const MAX_LIST_LIMIT: i64 = 500;
/// Most rows one filtered `GET /v1/sessions` reads before it answers with
/// what it found and where to go on.
pub const MAX_SCAN: usize = 5000;
/// How much earlier than a record's `time` the control plane may have
/// received it, as far as the `since` filter's early stop is concerned.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(300);
/// Rows read per database call while filtering.
const SCAN_PAGE: i64 = 500;
/// Longest `decision` filter.
const MAX_DECISION_CHARS: usize = 64;
/// Rows read per page while verifying.
const VERIFY_PAGE: i64 = 1000;
/// Problems reported at most (the count goes on).
const MAX_PROBLEMS: usize = 1000;

/// The session routes, each registered with its OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(
            routes!(list_sessions, append_sessions)
                // Batches are larger than the server's default body limit.
                .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .routes(routes!(verify_sessions))
        .routes(routes!(show_session))
}

/// The OpenAPI tag of these routes.
pub const SESSIONS_TAG: &str = "sessions";

/// Reads a `POST /v1/sessions` body into the engine's types. The message
/// names the record and the field that is wrong (`records[3].status`) and
/// what was expected, never a value sent: records hold prompts and people's
/// names.
pub fn read_batch(body: Value) -> Result<SessionBatch, String> {
    // serde would read a struct from an array too (`[[]]`: no records):
    // objects only, the batch and each record (crate::body says why).
    if !body.is_object() {
        return Err("invalid value, expected struct SessionBatch".to_owned());
    }
    if let Some(Value::Array(records)) = body.get("records") {
        if let Some(index) = records.iter().position(|record| !record.is_object()) {
            return Err(format!(
                "records[{index}]: invalid value, expected struct SessionRecord"
            ));
        }
    }
    serde_path_to_error::deserialize(body).map_err(|error| {
        let path = error.path().to_string();
        let message = without_values(&error.into_inner().to_string());
        if path == "." {
            message
        } else {
            format!("{path}: {message}")
        }
    })
}

/// A serde message without the value it quotes: those that name only
/// fields are kept; an invalid type or value keeps what was expected.
fn without_values(message: &str) -> String {
    const NAMES_ONLY: [&str; 4] = [
        "missing field",
        "unknown field",
        "duplicate field",
        "invalid length",
    ];
    if NAMES_ONLY.iter().any(|start| message.starts_with(start)) {
        return message.to_owned();
    }
    match message.rsplit_once(", expected ") {
        Some((_, expected)) => format!("invalid value, expected {expected}"),
        None => "invalid value".to_owned(),
    }
}

/// Checks a batch (read into the engine's types by [`read_batch`]) and
/// turns it into rows: what the types do not say (how many records, the
/// id's length) is checked here, and the metadata bounded. The messages
/// name the record by index and never repeat its contents.
pub fn validate_batch(records: Vec<SessionRecord>) -> Result<Vec<NewSession>, String> {
    if records.len() > MAX_BATCH_RECORDS {
        return Err(format!(
            "at most {MAX_BATCH_RECORDS} records per batch (got {})",
            records.len()
        ));
    }
    records
        .into_iter()
        .enumerate()
        .map(|(index, mut record)| {
            if record.id.is_empty() || record.id.chars().count() > MAX_ID_CHARS {
                return Err(format!(
                    "records[{index}].id must be a string of 1 to {MAX_ID_CHARS} characters"
                ));
            }
            if !crate::fields::storable(&record.id) {
                return Err(format!("records[{index}].id must not contain U+0000"));
            }
            bound_metadata(&mut record);
            let value = serde_json::to_value(&record)
                .map_err(|error| format!("records[{index}] cannot be stored: {error}"))?;
            Ok(NewSession {
                subject: record.subject.unwrap_or_default(),
                decision: record.decision.as_str().to_owned(),
                record: record_text(&value),
                id: record.id,
            })
        })
        .collect()
}

/// Cuts the record's descriptive strings (time, issuer, subject, each
/// group, provider, model, route, rules, tools, MCP method, approval id, and `usage` when it
/// is a string or a list of them) with [`crate::fields::stored`]. Before
/// the record is hashed, so the chain covers what is stored. Kept whole:
/// the id (checked to be short), the enums and numbers, and the bodies
/// (`request`, `response`), which are what a record is for (the batch limit
/// bounds them).
fn bound_metadata(record: &mut SessionRecord) {
    // Every field named, so a new one must be sorted here.
    let SessionRecord {
        id: _,
        time,
        issuer,
        subject,
        groups,
        provider,
        model,
        route,
        policy_version: _,
        decision: _,
        reason: _,
        rules,
        tools,
        mcp_method,
        approval_id,
        status: _,
        usage,
        record: _,
        request: _,
        response: _,
    } = record;
    let bound = |text: &mut String| *text = crate::fields::stored(std::mem::take(text));
    for text in [time, route, rules] {
        bound(text);
    }
    for text in [
        issuer,
        subject,
        provider,
        model,
        tools,
        mcp_method,
        approval_id,
    ]
    .into_iter()
    .flatten()
    {
        bound(text);
    }
    groups.iter_mut().for_each(bound);
    match usage {
        Some(Value::String(text)) => bound(text),
        Some(Value::Array(items)) => {
            for item in items {
                if let Value::String(text) = item {
                    bound(text);
                }
            }
        }
        _ => {}
    }
}

/// Appends a batch of records to the chain (a gateway); ids already stored
/// are skipped.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = SESSIONS_TAG,
    security(("gateway" = [])),
    request_body = SessionBatch,
    responses(
        (status = 200, description = "Stored", body = SessionsStored),
        BadRequest,
        Unauthorized,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unavailable,
    ),
)]
async fn append_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<SessionsStored>, ApiError> {
    check_gateway(state.config().gateway_secret.as_deref(), &headers)?;
    let Json(body) = body?;
    let batch = read_batch(body).map_err(ApiError::BadRequest)?;
    let received = batch.records.len();
    let rows = validate_batch(batch.records).map_err(ApiError::BadRequest)?;
    let received_at = crate::clock::rfc3339(state.clock().now_ms());
    let (stored, last_seq) = state
        .store()
        .append_sessions(rows, &received_at)
        .await
        .map_err(db)?;
    // Counts only: records hold prompts.
    tracing::info!(received, stored, last_seq, "sessions recorded");
    Ok(Json(SessionsStored { stored, last_seq }))
}

/// Whether `caller` may read recorded sessions: a member of the auditor
/// group or of the admin group.
pub fn is_auditor(config: &ServerConfig, caller: &Caller) -> bool {
    caller.is_admin || caller.identity.groups.contains(&config.auditor_group)
}

/// 401 without a token, 403 `auditor_required` unless in the auditor or admin group.
async fn auditor(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = state.users().caller(headers).await?;
    if is_auditor(state.config(), &caller) {
        return Ok(caller);
    }
    let group = state.config().auditor_group.as_str();
    Err(ApiError::refused(
        StatusCode::FORBIDDEN,
        "auditor_required",
        format!(
            "reading recorded sessions needs membership of the `{group}` group (or `{}`)",
            state.config().admin_group
        ),
    ))
}

/// The query of `GET /v1/sessions`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this subject's records.
    pub subject: Option<String>,
    /// Only records with this decision (`allowed`, `masked`, ...).
    #[param(max_length = 64)]
    pub decision: Option<String>,
    /// Only records made at or after this RFC 3339 time (empty: no bound).
    #[param(schema_with = time_filter)]
    pub since: Option<String>,
    /// Only records made at or before this RFC 3339 time (empty: no bound).
    #[param(schema_with = time_filter)]
    pub until: Option<String>,
    /// Most records answered (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Only records older than this `seq` (the previous page's `next_before_seq`).
    pub before_seq: Option<i64>,
}

/// The description of `since` and `until`: an RFC 3339 time, or blank for
/// none (what an empty form field sends).
fn time_filter() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^\s*$")),
        )
        .into()
}

/// The list's filters beyond the subject (which the database applies).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this decision.
    pub decision: Option<String>,
    /// Only records made at or after this time.
    pub since: Option<SystemTime>,
    /// Only records made at or before this time.
    pub until: Option<SystemTime>,
}

/// An RFC 3339 time (`2026-01-31T12:00:00Z`, `…+02:00`, fractions allowed),
/// of any year from 0000.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    parse_time_from_1970(text).or_else(|| parse_time_before_1970(text))
}

/// [`parse_time`] for years humantime reads: from 1970.
fn parse_time_from_1970(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok().or_else(|| {
        // An offset other than `Z`: move the wall-clock time by it.
        let split = text.len().checked_sub(6)?;
        let (local, offset) = (text.get(..split)?, text.get(split..)?);
        let sign = match offset.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (hours, minutes) = offset.get(1..)?.split_once(':')?;
        let seconds = hours.parse::<u64>().ok()? * 3600 + minutes.parse::<u64>().ok()? * 60;
        let wall = humantime::parse_rfc3339_weak(local).ok()?;
        let offset = Duration::from_secs(seconds);
        if sign > 0 {
            wall.checked_sub(offset)
        } else {
            wall.checked_add(offset)
        }
    })
}

/// [`parse_time`] before 1970, which humantime does not read (a `since`
/// of 0417 is a valid time, and means "from the start"): the same date and
/// time in 1971 or 1972 (a year as leap as this one, so that February 29th
/// is checked alike), moved back by the days between the two years.
fn parse_time_before_1970(text: &str) -> Option<SystemTime> {
    let digits = text.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i64 = digits.parse().ok()?;
    if year >= 1970 {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let stand_in: i64 = if leap { 1972 } else { 1971 };
    let moved = parse_time_from_1970(&format!("{stand_in}{}", text.get(4..)?))?;
    // Days from 0000-01-01 to January 1st of `year` (proleptic Gregorian).
    let days = |year: i64| 365 * year + (year + 3) / 4 - (year + 99) / 100 + (year + 399) / 400;
    let seconds = u64::try_from((days(stand_in) - days(year)) * 86_400).ok()?;
    moved.checked_sub(Duration::from_secs(seconds))
}

impl ListFilter {
    fn is_empty(&self) -> bool {
        self.decision.is_none() && self.since.is_none() && self.until.is_none()
    }

    /// Whether `row` passes, made at `time` (the record's own `time`).
    fn accepts(&self, row: &SessionRow, time: Option<&str>) -> bool {
        if let Some(decision) = &self.decision {
            if row.decision != *decision {
                return false;
            }
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let made = time
            .and_then(parse_time)
            .or_else(|| parse_time(&row.received_at));
        let Some(made) = made else { return false };
        self.since.is_none_or(|since| made >= since) && self.until.is_none_or(|until| made <= until)
    }

    /// Whether no row older than `row` can pass: it was received well
    /// before `since`.
    fn past_the_start(&self, row: &SessionRow) -> bool {
        let (Some(since), Some(received)) = (self.since, parse_time(&row.received_at)) else {
            return false;
        };
        received + CLOCK_MARGIN < since
    }
}

/// `GET /v1/sessions` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    /// Newest first.
    pub sessions: Vec<SessionSummary>,
    /// Where the next page starts (its `before_seq`); null when nothing
    /// older is left.
    pub next_before_seq: Option<i64>,
    /// Rows read for this page.
    pub scanned: usize,
}

/// The list's view of a row: the columns, and the record's small fields
/// as the stored record has them (a [`SessionRecord`]'s; a field the
/// record lacks is left out).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionSummary {
    pub seq: i64,
    pub id: String,
    /// When the control plane stored it (RFC 3339).
    pub received_at: String,
    pub subject: String,
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub time: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub issuer: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub provider: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub model: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub route: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, format = "uint64")]
    pub policy_version: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub rules: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub approval_id: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, format = "uint64")]
    pub status: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<warden_engine::protocol::Record>)]
    pub record: Option<Value>,
}

/// The list's view of a row.
fn summary(row: &SessionRow) -> SessionSummary {
    let record: Map<String, Value> = serde_json::from_str(&row.record).unwrap_or_default();
    let field = |key: &str| record.get(key).cloned();
    SessionSummary {
        seq: row.seq,
        id: row.id.clone(),
        received_at: row.received_at.clone(),
        subject: row.subject.clone(),
        decision: row.decision.clone(),
        time: field("time"),
        issuer: field("issuer"),
        provider: field("provider"),
        model: field("model"),
        route: field("route"),
        policy_version: field("policy_version"),
        rules: field("rules"),
        approval_id: field("approval_id"),
        status: field("status"),
        record: field("record"),
    }
}

/// `GET /v1/sessions/{id}` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionDetail {
    pub seq: i64,
    pub id: String,
    /// When the control plane stored it (RFC 3339).
    pub received_at: String,
    pub subject: String,
    pub decision: String,
    /// The previous row's `hash` (the genesis hash for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) of `prev_hash`, a newline and the record's canonical JSON.
    pub hash: String,
    /// The record as stored.
    #[schema(value_type = SessionRecord)]
    pub record: Value,
}

/// The recorded sessions (an auditor), newest first, as summaries; filtered
/// lists answer where to go on (`next_before_seq`).
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = SESSIONS_TAG,
    security(("person" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of records", body = SessionList),
        BadRequest,
        Unauthorized,
        Forbidden,
        Unavailable,
    ),
)]
async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    auditor(&state, &headers).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let time = |name: &str, text: Option<String>| -> Result<Option<SystemTime>, ApiError> {
        match text.filter(|t| !t.trim().is_empty()) {
            None => Ok(None),
            Some(text) => parse_time(&text).map(Some).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "`{name}` must be an RFC 3339 time, like 2026-01-31T12:00:00Z"
                ))
            }),
        }
    };
    let decision = query.decision.filter(|d| !d.is_empty());
    if decision
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DECISION_CHARS)
    {
        return Err(ApiError::BadRequest(format!(
            "`decision` must be at most {MAX_DECISION_CHARS} characters"
        )));
    }
    let filter = ListFilter {
        decision,
        since: time("since", query.since)?,
        until: time("until", query.until)?,
    };
    // Compared with the subjects as they are stored (bound_metadata).
    let subject = query
        .subject
        .filter(|s| !s.is_empty())
        .map(crate::fields::stored);
    let wanted = usize::try_from(limit).unwrap_or(1);
    let chunk = if filter.is_empty() { limit } else { SCAN_PAGE };
    let mut sessions: Vec<SessionSummary> = Vec::new();
    let mut cursor = query.before_seq;
    let mut scanned: usize = 0;
    // Where the next page starts; None once nothing older is left.
    let next_before_seq = 'scan: loop {
        let rows = state
            .store()
            .list_sessions(subject.as_deref(), cursor, chunk)
            .await
            .map_err(db)?;
        let exhausted = rows.len() < usize::try_from(chunk).unwrap_or(0);
        for row in &rows {
            scanned += 1;
            cursor = Some(row.seq);
            if filter.past_the_start(row) {
                break 'scan None;
            }
            let view = summary(row);
            if filter.accepts(row, view.time.as_ref().and_then(Value::as_str)) {
                sessions.push(view);
                if sessions.len() == wanted {
                    break 'scan Some(row.seq);
                }
            }
        }
        if exhausted {
            break None;
        }
        if scanned >= MAX_SCAN {
            break cursor;
        }
    };
    Ok(Json(SessionList {
        sessions,
        next_before_seq,
        scanned,
    }))
}

/// The `{id}` of `GET /v1/sessions/{id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionIdParam {
    /// The record's id (Envoy's request id).
    pub id: String,
}

/// One recorded session (an auditor), whole, with its place in the chain.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = SESSIONS_TAG,
    security(("person" = [])),
    params(SessionIdParam),
    responses(
        (status = 200, description = "The record", body = SessionDetail),
        Unauthorized,
        Forbidden,
        NotFound,
        Unavailable,
    ),
)]
async fn show_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<SessionDetail>, ApiError> {
    auditor(&state, &headers).await?;
    let not_found = || {
        ApiError::refused(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "there is no recorded session with this id",
        )
    };
    // No stored id is longer, or has U+0000 (crate::fields::storable).
    if id.chars().count() > MAX_ID_CHARS || !crate::fields::storable(&id) {
        return Err(not_found());
    }
    let row = state.store().session(&id).await.map_err(db)?;
    let row = row.ok_or_else(not_found)?;
    let record: Value = serde_json::from_str(&row.record)
        .map_err(|e| ApiError::Internal(format!("stored session {} is not JSON: {e}", row.seq)))?;
    Ok(Json(SessionDetail {
        seq: row.seq,
        id: row.id,
        received_at: row.received_at,
        subject: row.subject,
        decision: row.decision,
        prev_hash: row.prev_hash,
        hash: row.hash,
        record,
    }))
}

/// Recomputes the hash chain from the start (an auditor) and names what
/// broke it.
#[utoipa::path(
    get,
    path = "/v1/sessions/verify",
    tag = SESSIONS_TAG,
    security(("person" = [])),
    responses(
        (status = 200, description = "The chain, checked", body = VerifyReport),
        Unauthorized,
        Forbidden,
        Unavailable,
    ),
)]
async fn verify_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<VerifyReport>, ApiError> {
    let caller = auditor(&state, &headers).await?;
    let report = verify(state.store()).await.map_err(db)?;
    tracing::info!(
        ok = report.ok,
        checked = report.checked,
        problems = report.problems.len(),
        by = %crate::fields::logged(&caller.identity.subject),
        "session chain verified"
    );
    Ok(Json(report))
}

/// What is wrong at one place in the chain (not a policy document's
/// [`crate::policies::Problem`]: a break in the audit trail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChainProblem {
    /// Where: the row concerned (for `deleted`, the first missing `seq`).
    pub seq: i64,
    /// What broke the chain there.
    pub kind: ChainBreak,
    /// For people.
    pub message: String,
}

/// How the chain is broken at a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChainBreak {
    /// The row does not match its hash: its content was changed.
    Edited,
    /// Rows are missing before it (a gap in `seq`).
    Deleted,
    /// It links to a row that exists elsewhere in the chain.
    Reordered,
    /// It links to a hash no row has.
    BrokenLink,
}

/// `GET /v1/sessions/verify` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    /// No problem found.
    pub ok: bool,
    /// Rows read.
    pub checked: u64,
    /// At most [`MAX_PROBLEMS`], in chain order.
    pub problems: Vec<ChainProblem>,
}

/// Walks the whole chain in `seq` order, [`VERIFY_PAGE`] rows at a time,
/// keeping only the previous row (and the few rows found out of place).
pub async fn verify(store: &Store) -> Result<VerifyReport, StoreError> {
    let mut checked: u64 = 0;
    let mut problems = Vec::new();
    let mut total_problems: usize = 0;
    let mut report = |problem: ChainProblem, problems: &mut Vec<ChainProblem>| {
        total_problems += 1;
        if problems.len() < MAX_PROBLEMS {
            problems.push(problem);
        }
    };
    // The previous row: its seq, stored hash, and whether it was out of place.
    let mut previous: Option<(i64, String, bool)> = None;
    // Rows found out of place, so that the row after a moved block (whose
    // link is right, only its neighbour moved) is not reported as well.
    let mut moved: HashSet<i64> = HashSet::new();
    let mut after = 0;
    loop {
        let page = store.session_chain_page(after, VERIFY_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for row in page {
            checked += 1;
            let (expected_seq, expected_prev, previous_moved) = match &previous {
                Some((seq, hash, was_moved)) => (seq + 1, hash.as_str(), *was_moved),
                None => (1, GENESIS_HASH, false),
            };
            let gap = row.seq != expected_seq;
            if gap {
                let missing = if row.seq - expected_seq == 1 {
                    format!("record {expected_seq} is missing")
                } else {
                    format!("records {expected_seq} to {} are missing", row.seq - 1)
                };
                report(
                    ChainProblem {
                        seq: expected_seq,
                        kind: ChainBreak::Deleted,
                        message: format!("{missing} (the chain resumes at {})", row.seq),
                    },
                    &mut problems,
                );
            }
            if chain_hash(&row.prev_hash, &row.record) != row.hash {
                report(
                    ChainProblem {
                        seq: row.seq,
                        kind: ChainBreak::Edited,
                        message: format!(
                            "record {} does not match its hash: its content was changed",
                            row.seq
                        ),
                    },
                    &mut problems,
                );
            }
            let mut out_of_place = false;
            // After a gap the link points at a deleted row: already reported.
            if !gap && row.prev_hash != expected_prev {
                match store.session_seq_by_hash(&row.prev_hash).await? {
                    Some(owner) => {
                        out_of_place = true;
                        if !(previous_moved && moved.contains(&owner)) {
                            report(
                                ChainProblem {
                                    seq: row.seq,
                                    kind: ChainBreak::Reordered,
                                    message: format!(
                                        "record {} follows record {owner} in the chain, not record {}: records were moved",
                                        row.seq,
                                        row.seq - 1
                                    ),
                                },
                                &mut problems,
                            );
                        }
                    }
                    None => report(
                        ChainProblem {
                            seq: row.seq,
                            kind: ChainBreak::BrokenLink,
                            message: format!(
                                "record {} links to a hash no record has: the record before it was changed or replaced",
                                row.seq
                            ),
                        },
                        &mut problems,
                    ),
                }
            }
            if out_of_place && moved.len() < MAX_PROBLEMS * 10 {
                moved.insert(row.seq);
            }
            previous = Some((row.seq, row.hash, out_of_place));
        }
    }
    Ok(VerifyReport {
        ok: total_problems == 0,
        checked,
        problems,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use warden_engine::protocol::Decision;

    #[test]
    fn times_are_rfc3339_with_any_offset() {
        let utc = parse_time("2026-01-02T03:04:05Z").unwrap();
        assert_eq!(parse_time("2026-01-02T03:04:05.000Z"), Some(utc));
        assert_eq!(parse_time("2026-01-02T05:04:05+02:00"), Some(utc));
        assert_eq!(parse_time("2026-01-01T23:34:05-03:30"), Some(utc));
        assert_eq!(
            parse_time("2026-01-02T03:04:05.5Z"),
            Some(utc + Duration::from_millis(500))
        );
        for bad in [
            "",
            "yesterday",
            "2026-01-02",
            "2026-01-02T03:04:05+2",
            "2026-13-02T03:04:05Z",
            "1900-02-29T00:00:00Z",
            "+969-01-01T00:00:00Z",
            "0417-13-08T06:44:26Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    /// Found by schemathesis: `since=0417-05-08T06:44:26.336079Z` was
    /// refused as not an RFC 3339 time (humantime reads years from 1970).
    #[test]
    fn times_before_1970_are_read() {
        use std::time::UNIX_EPOCH;
        let before = |seconds: u64| UNIX_EPOCH.checked_sub(Duration::from_secs(seconds));
        assert_eq!(parse_time("1969-12-31T23:59:59Z"), before(1));
        assert_eq!(
            parse_time("1969-12-31T23:00:00-02:00"),
            Some(UNIX_EPOCH + Duration::from_secs(3600))
        );
        // 0000 is a leap year; 62167219200 s from it to 1970.
        assert_eq!(parse_time("0000-01-01T00:00:00Z"), before(62_167_219_200));
        assert_eq!(
            parse_time("0000-02-29T00:00:00Z"),
            before(62_167_219_200 - (31 + 28) * 86_400)
        );
        assert_eq!(
            parse_time("1600-02-29T12:00:00.5Z"),
            before(11_670_955_200).map(|t| t + Duration::from_millis(500))
        );
        assert_eq!(
            parse_time("0417-05-08T06:44:26.336079Z"),
            before(48_996_897_334).map(|t| t + Duration::from_micros(336_079))
        );
    }

    #[test]
    fn the_filter_reads_the_records_time_and_decision() {
        let row = |decision: &str, received_at: &str| SessionRow {
            seq: 1,
            id: "r".into(),
            received_at: received_at.into(),
            subject: "alice".into(),
            decision: decision.into(),
            record: String::new(),
            prev_hash: GENESIS_HASH.into(),
            hash: GENESIS_HASH.into(),
        };
        let at = |t: &str| parse_time(t).unwrap();
        let made = Some("2026-01-02T03:04:05Z");
        let received = row("masked", "2026-01-02T03:04:06.000Z");
        let filter = ListFilter {
            decision: Some("masked".into()),
            since: Some(at("2026-01-02T03:04:05Z")),
            until: Some(at("2026-01-02T03:04:05Z")),
        };
        assert!(filter.accepts(&received, made), "both ends are included");
        assert!(!filter.accepts(&row("blocked", "2026-01-02T03:04:06Z"), made));
        let later = ListFilter {
            since: Some(at("2026-01-02T03:04:05.001Z")),
            ..ListFilter::default()
        };
        assert!(!later.accepts(&received, made));
        let earlier = ListFilter {
            until: Some(at("2026-01-02T03:04:04Z")),
            ..ListFilter::default()
        };
        assert!(!earlier.accepts(&received, made));
        // Without a `time` in the record, the time it was received.
        assert!(later.accepts(&received, None));
        // The scan stops only well before `since`.
        assert!(!later.past_the_start(&row("masked", "2026-01-02T03:00:06Z")));
        assert!(later.past_the_start(&row("masked", "2026-01-02T02:59:04Z")));
        assert!(!ListFilter::default().past_the_start(&received));
    }

    /// A record with every field the type requires, as a gateway sends it.
    fn record(id: &str) -> Value {
        json!({
            "id": id,
            "time": "2026-01-02T03:04:05Z",
            "subject": "alice",
            "groups": [],
            "route": "/v1/chat/completions",
            "policy_version": 1,
            "decision": "allowed",
            "rules": "",
            "record": "metadata",
        })
    }

    /// A body read as the handler reads it, then checked.
    fn read(body: Value) -> Result<Vec<NewSession>, String> {
        validate_batch(read_batch(body)?.records)
    }

    #[test]
    fn batches_are_checked_and_made_canonical() {
        let rows = read(json!({"records": [record("r1")]})).unwrap();
        assert_eq!(rows[0].id, "r1");
        assert_eq!(rows[0].subject, "alice");
        assert_eq!(rows[0].decision, Decision::Allowed.as_str());
        // Optional fields left out are stored as null.
        assert_eq!(
            rows[0].record,
            r#"{"approval_id":null,"decision":"allowed","groups":[],"id":"r1","issuer":null,"model":null,"policy_version":1,"provider":null,"reason":null,"record":"metadata","request":null,"response":null,"route":"/v1/chat/completions","rules":"","status":null,"subject":"alice","time":"2026-01-02T03:04:05Z","usage":null}"#
        );
        let with = |key: &str, value: Value| {
            let mut bad = record("r1");
            bad[key] = value;
            bad
        };
        let mut no_time = record("r1");
        no_time.as_object_mut().unwrap().remove("time");
        for (bad, expected) in [
            (
                json!("secret text"),
                "records[0]: invalid value, expected struct SessionRecord",
            ),
            (
                with("id", json!(5)),
                "records[0].id: invalid value, expected a string",
            ),
            (
                with("id", json!("")),
                "records[0].id must be a string of 1 to 128 characters",
            ),
            (with("id", json!("x".repeat(129))), "records[0].id must be"),
            (
                with("no_id", json!("secret prompt")),
                "records[0].no_id: unknown field `no_id`",
            ),
            (
                with("decision", json!("secret")),
                "records[0].decision: invalid value, expected one of `undecided`",
            ),
            (
                with("reason", json!("warden.secret")),
                "records[0].reason: invalid value",
            ),
            (
                with("policy_version", json!("secret")),
                "records[0].policy_version: invalid value, expected u64",
            ),
            (
                with("groups", json!("secret")),
                "records[0].groups: invalid value, expected a sequence",
            ),
            (no_time, "records[0]: missing field `time`"),
        ] {
            let error = read(json!({"records": [bad]})).unwrap_err();
            assert!(error.starts_with(expected), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
        let many = vec![record("a"); MAX_BATCH_RECORDS + 1];
        assert!(read(json!({"records": many})).is_err());
        assert_eq!(
            read(json!({"records": [], "secret": 1})).unwrap_err(),
            "secret: unknown field `secret`, expected `records`"
        );
        assert_eq!(
            read(json!({"records": "secret"})).unwrap_err(),
            "records: invalid value, expected a sequence"
        );
        // Found by schemathesis: serde reads a struct from an array too, so
        // `[[]]` was a batch of no records.
        assert_eq!(
            read(json!([[]])).unwrap_err(),
            "invalid value, expected struct SessionBatch"
        );
        let positional = json!([
            "r1",
            "2026-01-02T03:04:05Z",
            null,
            "alice",
            [],
            null,
            null,
            "/v1/chat/completions",
            1,
            "allowed",
            null,
            "",
            null,
            null,
            null,
            null,
            null,
            "metadata",
            null,
            null
        ]);
        assert!(serde_json::from_value::<SessionRecord>(positional.clone()).is_ok());
        assert_eq!(
            read(json!({"records": [record("r0"), positional]})).unwrap_err(),
            "records[1]: invalid value, expected struct SessionRecord"
        );
    }

    #[test]
    fn record_metadata_is_bounded_but_bodies_are_kept() {
        let huge = "m".repeat(200 * 1024);
        let body = "p".repeat(100 * 1024);
        let mut sent = record("r1");
        for key in [
            "subject",
            "model",
            "issuer",
            "provider",
            "route",
            "rules",
            "time",
            "approval_id",
        ] {
            sent[key] = json!(huge);
        }
        sent["groups"] = json!(["eng", huge]);
        sent["status"] = json!(200);
        sent["usage"] = json!(huge);
        sent["request"] = json!({"messages": [{"content": body}]});
        sent["response"] = json!(body);
        let rows = read(json!({"records": [sent]})).unwrap();
        let row = &rows[0];
        let max = crate::fields::MAX_STORED_BYTES;
        assert!(row.subject.len() <= max && row.subject.ends_with("bytes]"));
        assert_eq!(row.decision, "allowed");
        let record: Value = serde_json::from_str(&row.record).unwrap();
        for key in [
            "model",
            "subject",
            "issuer",
            "provider",
            "route",
            "rules",
            "time",
            "approval_id",
            "usage",
        ] {
            let text = record[key].as_str().unwrap();
            assert!(text.len() <= max, "{key}");
            assert!(text.ends_with("…[cut, 204800 bytes]"), "{key}");
        }
        assert_eq!(record["groups"][0], "eng");
        assert!(record["groups"][1].as_str().unwrap().len() <= max);
        assert_eq!(record["status"], 200);
        assert_eq!(record["response"], body.as_str());
        assert_eq!(record["request"]["messages"][0]["content"], body.as_str());
        // The chain covers what is stored.
        assert_eq!(row.record, serde_json::to_string(&record).unwrap());
    }
}
