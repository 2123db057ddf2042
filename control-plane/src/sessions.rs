//! Recorded sessions (issue 6): gateways append records in batches; auditors
//! list, read and verify them.
//!
//! | method | path | who | |
//! | --- | --- | --- | --- |
//! | POST | `/v1/sessions` | gateway | `{"records": [R, …]}` (≤ 500, ≤ 4 MiB) → `{"stored", "last_seq"}` |
//! | GET | `/v1/sessions` | auditor | `?subject=&limit=&before_seq=`, newest first, summaries |
//! | GET | `/v1/sessions/verify` | auditor | recompute the hash chain from the start |
//! | GET | `/v1/sessions/{id}` | auditor | the full record with `seq`, `hash`, `prev_hash` |
//!
//! Storage is an append-only chain: row `seq` holds the record's canonical
//! JSON and `hash = sha256_hex(prev_hash || "\n" || record)`, where
//! `prev_hash` is row `seq - 1`'s hash ([`GENESIS_HASH`] for the first).
//! [`verify`] walks the chain in pages and names what broke it: a hash that
//! does not match its row (`edited`), a gap in `seq` (`deleted`), a link to
//! a row that exists elsewhere in the chain (`reordered`), or a link to
//! nothing (`broken_link`). Deleting the newest rows leaves no trace in the
//! chain itself; anchoring the head elsewhere (an export, a log) closes that.
//!
//! Records hold prompts (masked or not): their contents are never logged.

use std::collections::HashSet;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::server::AppState;
use crate::store::{NewSession, SessionRow, Store, StoreError};
use crate::user_auth::{check_gateway, Caller};

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Most records in one `POST /v1/sessions`.
pub const MAX_BATCH_RECORDS: usize = 500;
/// Largest `POST /v1/sessions` body.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Longest record id.
pub const MAX_ID_CHARS: usize = 128;
/// Default group whose members may read sessions (besides the admin group).
pub const DEFAULT_AUDITOR_GROUP: &str = "warden-auditors";
/// Default and largest page of `GET /v1/sessions`.
pub const DEFAULT_LIST_LIMIT: i64 = 50;
/// Largest page of `GET /v1/sessions`.
pub const MAX_LIST_LIMIT: i64 = 500;
/// Rows read per page while verifying.
const VERIFY_PAGE: i64 = 1000;
/// Problems reported at most (the count goes on).
const MAX_PROBLEMS: usize = 1000;

/// `sha256_hex(prev_hash || "\n" || record)`.
pub fn chain_hash(prev_hash: &str, record: &str) -> String {
    let mut text = String::with_capacity(prev_hash.len() + 1 + record.len());
    text.push_str(prev_hash);
    text.push('\n');
    text.push_str(record);
    crate::policies::sha256_hex(&text)
}

/// The session routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/sessions",
            get(list_sessions)
                .post(append_sessions)
                // Batches are larger than the server's default body limit.
                .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES)),
        )
        .route("/v1/sessions/verify", get(verify_sessions))
        .route("/v1/sessions/{id}", get(show_session))
}

fn db(error: StoreError) -> ApiError {
    ApiError::DatabaseUnavailable(error.to_string())
}

/// `POST /v1/sessions` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    /// The records, each a JSON object with a string `id`.
    pub records: Vec<Value>,
}

/// `POST /v1/sessions` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppendAnswer {
    /// Records newly stored (ids already stored are skipped).
    pub stored: usize,
    /// The chain's last `seq` after this batch.
    pub last_seq: i64,
}

/// Checks a batch and turns it into rows. The messages name the record by
/// index and never repeat its contents.
pub fn validate_batch(records: Vec<Value>) -> Result<Vec<NewSession>, String> {
    if records.len() > MAX_BATCH_RECORDS {
        return Err(format!(
            "at most {MAX_BATCH_RECORDS} records per batch (got {})",
            records.len()
        ));
    }
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| {
            let Value::Object(object) = &record else {
                return Err(format!("records[{index}] must be a JSON object"));
            };
            let id = match object.get("id") {
                Some(Value::String(id)) if !id.is_empty() && id.chars().count() <= MAX_ID_CHARS => {
                    id.clone()
                }
                _ => {
                    return Err(format!(
                        "records[{index}].id must be a string of 1 to {MAX_ID_CHARS} characters"
                    ))
                }
            };
            let text_of = |key: &str| {
                object
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let (subject, decision) = (text_of("subject"), text_of("decision"));
            // serde_json's maps keep keys sorted: this is the canonical text.
            let text = serde_json::to_string(&record)
                .map_err(|e| format!("records[{index}] cannot be serialized: {e}"))?;
            Ok(NewSession {
                id,
                subject,
                decision,
                record: text,
            })
        })
        .collect()
}

async fn append_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<AppendRequest>, JsonRejection>,
) -> Result<Json<AppendAnswer>, ApiError> {
    check_gateway(state.config().gateway_secret.as_deref(), &headers)?;
    let Json(request) = body?;
    let received = request.records.len();
    let rows = validate_batch(request.records).map_err(ApiError::BadRequest)?;
    let received_at = crate::approvals::rfc3339(crate::approvals::now_ms());
    let (stored, last_seq) = state
        .store()
        .append_sessions(&rows, &received_at)
        .await
        .map_err(db)?;
    // Counts only: records hold prompts.
    tracing::info!(received, stored, last_seq, "sessions recorded");
    Ok(Json(AppendAnswer { stored, last_seq }))
}

/// 401 without a token, 403 `auditor_required` unless in the auditor or admin group.
async fn auditor(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let caller = state.users().caller(headers).await?;
    let group = state.config().auditor_group.as_str();
    if caller.is_admin || caller.identity.groups.iter().any(|g| g == group) {
        return Ok(caller);
    }
    Err(ApiError::refused(
        StatusCode::FORBIDDEN,
        "auditor_required",
        format!(
            "reading recorded sessions needs membership of the `{group}` group (or `{}`)",
            state.config().admin_group
        ),
    ))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    subject: Option<String>,
    limit: Option<i64>,
    before_seq: Option<i64>,
}

/// The list's view of a row: the columns plus the record's small fields.
fn summary(row: &SessionRow) -> Value {
    let record: Map<String, Value> = serde_json::from_str(&row.record).unwrap_or_default();
    let mut out = json!({
        "seq": row.seq,
        "id": row.id,
        "received_at": row.received_at,
        "subject": row.subject,
        "decision": row.decision,
    });
    if let Value::Object(out) = &mut out {
        for key in [
            "time",
            "issuer",
            "provider",
            "model",
            "route",
            "policy_version",
            "rules",
            "approval_id",
            "status",
            "record",
        ] {
            if let Some(value) = record.get(key) {
                out.insert(key.to_owned(), value.clone());
            }
        }
    }
    out
}

async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    auditor(&state, &headers).await?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let subject = query.subject.filter(|s| !s.is_empty());
    let rows = state
        .store()
        .list_sessions(subject.as_deref(), query.before_seq, limit)
        .await
        .map_err(db)?;
    let sessions: Vec<Value> = rows.iter().map(summary).collect();
    Ok(Json(json!({ "sessions": sessions })))
}

async fn show_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auditor(&state, &headers).await?;
    let not_found = || {
        ApiError::refused(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "there is no recorded session with this id",
        )
    };
    if id.chars().count() > MAX_ID_CHARS {
        return Err(not_found());
    }
    let row = state.store().session(&id).await.map_err(db)?;
    let row = row.ok_or_else(not_found)?;
    let record: Value = serde_json::from_str(&row.record)
        .map_err(|e| ApiError::Internal(format!("stored session {} is not JSON: {e}", row.seq)))?;
    Ok(Json(json!({
        "seq": row.seq,
        "id": row.id,
        "received_at": row.received_at,
        "subject": row.subject,
        "decision": row.decision,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
        "record": record,
    })))
}

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
        by = %caller.identity.subject,
        "session chain verified"
    );
    Ok(Json(report))
}

/// What is wrong at one place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Where: the row concerned (for `deleted`, the first missing `seq`).
    pub seq: i64,
    /// `edited`, `deleted`, `reordered` or `broken_link`.
    pub kind: String,
    /// For people.
    pub message: String,
}

/// `GET /v1/sessions/verify` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// No problem found.
    pub ok: bool,
    /// Rows read.
    pub checked: u64,
    /// At most [`MAX_PROBLEMS`], in chain order.
    pub problems: Vec<Problem>,
}

/// Walks the whole chain in `seq` order, [`VERIFY_PAGE`] rows at a time,
/// keeping only the previous row (and the few rows found out of place).
pub async fn verify(store: &Store) -> Result<VerifyReport, StoreError> {
    let mut checked: u64 = 0;
    let mut problems = Vec::new();
    let mut total_problems: usize = 0;
    let mut report = |problem: Problem, problems: &mut Vec<Problem>| {
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
                    Problem {
                        seq: expected_seq,
                        kind: "deleted".into(),
                        message: format!("{missing} (the chain resumes at {})", row.seq),
                    },
                    &mut problems,
                );
            }
            if chain_hash(&row.prev_hash, &row.record) != row.hash {
                report(
                    Problem {
                        seq: row.seq,
                        kind: "edited".into(),
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
                                Problem {
                                    seq: row.seq,
                                    kind: "reordered".into(),
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
                        Problem {
                            seq: row.seq,
                            kind: "broken_link".into(),
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

    #[test]
    fn chain_hash_is_sha256_of_prev_newline_record() {
        // sha256("0"*64 + "\n" + "{}")
        let expected = crate::policies::sha256_hex(&format!("{GENESIS_HASH}\n{{}}"));
        assert_eq!(chain_hash(GENESIS_HASH, "{}"), expected);
        assert_eq!(expected.len(), 64);
        assert_ne!(
            chain_hash(GENESIS_HASH, "{}"),
            chain_hash(GENESIS_HASH, "{ }")
        );
    }

    #[test]
    fn batches_are_checked_and_made_canonical() {
        let rows = validate_batch(vec![
            json!({"subject": "alice", "id": "r1", "decision": "allow"}),
        ])
        .unwrap();
        assert_eq!(rows[0].id, "r1");
        assert_eq!(rows[0].subject, "alice");
        assert_eq!(
            rows[0].record,
            r#"{"decision":"allow","id":"r1","subject":"alice"}"#
        );
        for bad in [
            json!("text"),
            json!({"id": 5}),
            json!({"id": ""}),
            json!({"id": "x".repeat(129)}),
            json!({"no_id": "secret prompt"}),
        ] {
            let error = validate_batch(vec![bad]).unwrap_err();
            assert!(error.starts_with("records[0]"), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
        let many = vec![json!({"id": "a"}); MAX_BATCH_RECORDS + 1];
        assert!(validate_batch(many).is_err());
    }
}
