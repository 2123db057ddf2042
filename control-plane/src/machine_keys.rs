//! Machine keys: credentials for scripts and services that have no workload
//! identity, issued to a named owner, scoped, expiring and revocable.
//!
//! | method | path | who | |
//! | --- | --- | --- | --- |
//! | POST | `/v1/keys` | person | issue a key (shown once, in this answer only) |
//! | GET | `/v1/keys` | person | admins: every key; others: their own |
//! | POST | `/v1/keys/{id}/revoke` | owner, admin | refuse it from now on, in every gateway |
//! | POST | `/v1/keys/revoke` | admin | revoke every live key of an owner (someone who left) |
//! | POST | `/v1/keys/{id}/rotate` | owner, admin | a new key in its place; the old one lives on for `overlap_seconds` |
//!
//! Admins issue keys to any owner (a service's name, a person's subject) with
//! any groups, for up to [`ADMIN_MAX_DAYS`]. Anyone else issues keys only to
//! themself, only with groups their own token has, for up to
//! [`SELF_MAX_DAYS`], at most [`SELF_MAX_LIVE`] live at once: a key never
//! grants more than its issuer holds.
//!
//! Only the SHA-256 of a key is stored and served. Gateways get the live
//! keys' hashes with the active policy ([`served`]), so a revocation wakes
//! the policy watch and reaches every gateway as a policy change does.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warden_engine::auth::machine_keys::{MachineKeyDoc, PREFIX};

use crate::body::JsonObject;
use crate::error::responses::{
    BadRequest, NotFound, PayloadTooLarge, Unauthorized, Unavailable, UnsupportedMediaType,
};
use crate::error::{db, ApiError};
use crate::fields::logged;
use crate::state::AppState;
use crate::store::{KeyChange, MachineKeyRow};
use crate::user_auth::Caller;

/// The OpenAPI tag of these routes.
pub const KEYS_TAG: &str = "keys";
/// Longest life an admin may give a key.
pub const ADMIN_MAX_DAYS: u32 = 366;
/// Longest life anyone else may give their own key.
pub const SELF_MAX_DAYS: u32 = 90;
/// Live keys a non-admin may hold at once.
pub const SELF_MAX_LIVE: i64 = 10;
/// The life a key gets when none is asked for.
const DEFAULT_DAYS: u32 = 30;
/// Longest overlap of a rotated key with its replacement.
const MAX_OVERLAP_SECONDS: u64 = 7 * 24 * 3600;
/// Longest name, owner, group or model pattern.
const MAX_FIELD_BYTES: usize = 200;
/// Most groups or model patterns on one key.
const MAX_LIST: usize = 32;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// The routes above.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, issue_key))
        .routes(routes!(revoke_key))
        .routes(routes!(revoke_owner_keys))
        .routes(routes!(rotate_key))
}

/// `POST /v1/keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// What the key is for (shown in listings), e.g. `nightly-report`.
    pub name: String,
    /// Who its requests are recorded under; default: the caller. Only admins
    /// name someone else.
    #[serde(default)]
    pub owner: Option<String>,
    /// The policy groups its requests have (at least one).
    pub groups: Vec<String>,
    /// Model patterns it is limited to; empty or absent: what its groups allow.
    #[serde(default)]
    pub models: Vec<String>,
    /// Days until it expires (default 30).
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// `POST /v1/keys/{id}/rotate` body (`{}` for the defaults).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the old key keeps working, for deployments to switch (default 0).
    #[serde(default)]
    pub overlap_seconds: u64,
}

/// A key as listed: never the key, never its hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    /// `wdk_<id>_…` names it.
    pub id: String,
    pub name: String,
    pub owner: String,
    pub groups: Vec<String>,
    pub models: Vec<String>,
    /// The subject that issued it.
    pub created_by: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked_ms: Option<i64>,
    pub revoked_by: Option<String>,
    /// The key it replaced.
    pub replaces: Option<String>,
    /// `live`, `expired` or `revoked`.
    pub status: String,
}

/// `POST /v1/keys` and `…/rotate` answer: the only time the key is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IssuedKey {
    /// The key: keep it in a secret store; it is not shown again.
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

/// `GET /v1/keys` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::refused(StatusCode::FORBIDDEN, code, message)
}

/// A stored JSON list of names (`groups_json`, `models_json`), written by
/// [`issue_key`] from a checked `Vec<String>`.
fn names(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}

fn view(row: &MachineKeyRow, now_ms: i64) -> KeyView {
    let status = if row.revoked_ms.is_some() {
        "revoked"
    } else if row.expires_ms <= now_ms {
        "expired"
    } else {
        "live"
    };
    KeyView {
        id: row.id.clone(),
        name: row.name.clone(),
        owner: row.owner.clone(),
        groups: names(&row.groups_json),
        models: names(&row.models_json),
        created_by: row.created_by.clone(),
        created_ms: row.created_ms,
        expires_ms: row.expires_ms,
        revoked_ms: row.revoked_ms,
        revoked_by: row.revoked_by.clone(),
        replaces: row.replaces.clone(),
        status: status.to_owned(),
    }
}

/// The live keys as gateways get them with the active policy.
pub fn served(rows: &[MachineKeyRow]) -> Vec<MachineKeyDoc> {
    rows.iter()
        .map(|row| MachineKeyDoc {
            id: row.id.clone(),
            sha256: row.sha256.clone(),
            owner: row.owner.clone(),
            owner_sub: (row.owner_sub != row.owner).then(|| row.owner_sub.clone()),
            groups: names(&row.groups_json),
            models: names(&row.models_json),
            expires_at: u64::try_from(row.expires_ms / 1000).unwrap_or(0),
        })
        .collect()
}

/// A new key and the hex SHA-256 that is all that is kept of it: an id of 64
/// random bits and a secret of 256, from the operating system's CSPRNG.
fn new_key() -> (String, String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let key = format!("{PREFIX}{id}_{}", hex::encode(secret));
    let sha256 = hex::encode(Sha256::digest(key.as_bytes()));
    (id, key, sha256)
}

fn checked_name(what: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_FIELD_BYTES || value.chars().any(char::is_control) {
        return Err(bad(format!(
            "{what} must be 1 to {MAX_FIELD_BYTES} bytes of printable text"
        )));
    }
    Ok(value.to_owned())
}

fn checked_list(what: &str, values: &[String]) -> Result<Vec<String>, ApiError> {
    if values.len() > MAX_LIST {
        return Err(bad(format!("at most {MAX_LIST} {what}")));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for value in values {
        let value = checked_name(what, value)?;
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

/// Issues a key. It is in the answer and nowhere else: store it at once.
#[utoipa::path(
    post,
    path = "/v1/keys",
    tag = KEYS_TAG,
    security(("person" = [])),
    request_body = IssueRequest,
    responses(
        (status = 201, description = "Issued; `key` is shown only now", body = IssuedKey),
        BadRequest,
        Unauthorized,
        PayloadTooLarge,
        UnsupportedMediaType,
        (status = 403, description = "Beyond what the caller may issue (`key_owner_forbidden`, `key_groups_forbidden`, `key_too_long`, `key_limit`)", body = crate::error::ErrorBody),
        Unavailable,
    ),
)]
async fn issue_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonObject<IssueRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = state.users().caller(&headers).await?;
    let JsonObject(request) = body?;
    let now = state.clock().now_ms();
    let name = checked_name("name", &request.name)?;
    let groups = checked_list("groups", &request.groups)?;
    if groups.is_empty() {
        return Err(bad(
            "a key needs at least one group: the policy groups its requests have",
        ));
    }
    let models = checked_list("models", &request.models)?;
    let days = request.expires_in_days.unwrap_or(DEFAULT_DAYS);
    if days == 0 {
        return Err(bad("expires_in_days must be at least 1"));
    }
    let me = &caller.identity;
    let my_sub = me
        .token_subject
        .clone()
        .unwrap_or_else(|| me.subject.clone());
    let owner = request
        .owner
        .map(|owner| checked_name("owner", &owner))
        .transpose()?;
    let (owner, owner_sub) = match owner {
        Some(owner) if owner != me.subject => {
            if !caller.is_admin {
                return Err(forbidden(
                    "key_owner_forbidden",
                    "only admins issue keys to someone else; leave `owner` out for your own",
                ));
            }
            (owner.clone(), owner)
        }
        _ => (me.subject.clone(), my_sub),
    };
    if !caller.is_admin {
        if let Some(group) = groups.iter().find(|g| !me.groups.contains(g)) {
            return Err(forbidden(
                "key_groups_forbidden",
                format!("your token is not in the group '{group}': a key you issue may carry only your own groups"),
            ));
        }
        if days > SELF_MAX_DAYS {
            return Err(forbidden(
                "key_too_long",
                format!("your own keys live at most {SELF_MAX_DAYS} days; an admin may issue longer ones"),
            ));
        }
        let live = state
            .store()
            .live_machine_keys_of(&owner, now)
            .await
            .map_err(db)?;
        if live >= SELF_MAX_LIVE {
            return Err(forbidden(
                "key_limit",
                format!("you hold {live} live keys, the most allowed: revoke one first"),
            ));
        }
    } else if days > ADMIN_MAX_DAYS {
        return Err(bad(format!("a key lives at most {ADMIN_MAX_DAYS} days")));
    }
    let (id, key, sha256) = new_key();
    let row = MachineKeyRow {
        id,
        name,
        owner,
        owner_sub,
        groups_json: serde_json::to_string(&groups)
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        models_json: serde_json::to_string(&models)
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        sha256,
        created_by: me.subject.clone(),
        created_ms: now,
        expires_ms: now.saturating_add(i64::from(days) * DAY_MS),
        revoked_ms: None,
        revoked_by: None,
        replaces: None,
    };
    state
        .store()
        .insert_machine_key(row.clone())
        .await
        .map_err(db)?;
    state.policy_watch().changed();
    tracing::info!(
        key = %row.id,
        owner = %logged(&row.owner),
        by = %logged(&row.created_by),
        "machine key issued"
    );
    let issued = IssuedKey {
        key,
        view: view(&row, now),
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// Keys, newest first: every key for admins, the caller's own otherwise.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = KEYS_TAG,
    security(("person" = [])),
    responses(
        (status = 200, description = "The keys (never the keys themselves)", body = KeyList),
        Unauthorized,
        Unavailable,
    ),
)]
async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<KeyList>, ApiError> {
    let caller = state.users().caller(&headers).await?;
    let owner = (!caller.is_admin).then_some(caller.identity.subject.as_str());
    let rows = state.store().list_machine_keys(owner).await.map_err(db)?;
    let now = state.clock().now_ms();
    Ok(Json(KeyList {
        keys: rows.iter().map(|row| view(row, now)).collect(),
    }))
}

/// The key `id` if the caller may change it (its owner, or an admin); the
/// same 404 for a key that is someone else's as for one that does not exist.
async fn own_key(state: &AppState, caller: &Caller, id: &str) -> Result<MachineKeyRow, ApiError> {
    let not_found = || ApiError::NotFound(format!("no machine key '{}' of yours", logged(id)));
    let row = state.store().machine_key(id).await.map_err(db)?;
    match row {
        Some(row) if caller.is_admin || row.owner == caller.identity.subject => Ok(row),
        _ => Err(not_found()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct KeyParam {
    /// The key's id (the hex between `wdk_` and the secret).
    #[allow(dead_code)]
    id: String,
}

/// Revokes a key: every gateway refuses it once the change reaches it
/// (with the policy watch, well under a second).
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/revoke",
    tag = KEYS_TAG,
    security(("person" = [])),
    params(KeyParam),
    responses(
        (status = 200, description = "Revoked (or already revoked)", body = KeyView),
        Unauthorized,
        NotFound,
        Unavailable,
    ),
)]
async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let caller = state.users().caller(&headers).await?;
    own_key(&state, &caller, &id).await?;
    let now = state.clock().now_ms();
    let by = caller.identity.subject.clone();
    let row = match state
        .store()
        .revoke_machine_key(&id, &by, now)
        .await
        .map_err(db)?
    {
        KeyChange::Done(row) => {
            state.policy_watch().changed();
            tracing::info!(key = %row.id, by = %logged(&by), "machine key revoked");
            row
        }
        KeyChange::AlreadyRevoked(row) => row,
        KeyChange::NoSuchKey => {
            return Err(ApiError::NotFound(format!(
                "no machine key '{}'",
                logged(&id)
            )))
        }
    };
    Ok(Json(view(&row, now)))
}

/// `POST /v1/keys/revoke` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeOwnerRequest {
    /// Whose keys: every live one is revoked.
    pub owner: String,
}

/// `POST /v1/keys/revoke` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevokedCount {
    pub owner: String,
    /// How many live keys were revoked.
    pub revoked: u64,
}

/// Revokes every live key of one owner, for someone who leaves: their IdP
/// account ends their tokens, but keys they issued to themselves would
/// otherwise live on until they expire.
#[utoipa::path(
    post,
    path = "/v1/keys/revoke",
    tag = KEYS_TAG,
    security(("person" = [])),
    request_body = RevokeOwnerRequest,
    responses(
        (status = 200, description = "How many were revoked", body = RevokedCount),
        BadRequest,
        Unauthorized,
        (status = 403, description = "Not a member of the admin group (`admin_required`)", body = crate::error::ErrorBody),
        PayloadTooLarge,
        UnsupportedMediaType,
        Unavailable,
    ),
)]
async fn revoke_owner_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<JsonObject<RevokeOwnerRequest>, ApiError>,
) -> Result<Json<RevokedCount>, ApiError> {
    let caller = state.users().admin(&headers).await?;
    let JsonObject(request) = body?;
    let owner = checked_name("owner", &request.owner)?;
    let by = caller.identity.subject.clone();
    let now = state.clock().now_ms();
    let revoked = state
        .store()
        .revoke_machine_keys_of(&owner, &by, now)
        .await
        .map_err(db)?;
    if revoked > 0 {
        state.policy_watch().changed();
    }
    tracing::info!(owner = %logged(&owner), revoked, by = %logged(&by), "machine keys of an owner revoked");
    Ok(Json(RevokedCount { owner, revoked }))
}

/// Issues a new key with the same name, owner, groups, models and life in
/// place of this one, which keeps working for `overlap_seconds` (default 0).
#[utoipa::path(
    post,
    path = "/v1/keys/{id}/rotate",
    tag = KEYS_TAG,
    security(("person" = [])),
    params(KeyParam),
    request_body = RotateRequest,
    responses(
        (status = 201, description = "The new key, shown only now", body = IssuedKey),
        BadRequest,
        Unauthorized,
        PayloadTooLarge,
        UnsupportedMediaType,
        NotFound,
        (status = 409, description = "The key is revoked (`key_revoked`)", body = crate::error::ErrorBody),
        Unavailable,
    ),
)]
async fn rotate_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<JsonObject<RotateRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let caller = state.users().caller(&headers).await?;
    let JsonObject(request) = body?;
    if request.overlap_seconds > MAX_OVERLAP_SECONDS {
        return Err(bad(format!(
            "overlap_seconds is at most {MAX_OVERLAP_SECONDS}"
        )));
    }
    let old = own_key(&state, &caller, &id).await?;
    let now = state.clock().now_ms();
    let life = old.expires_ms.saturating_sub(old.created_ms).max(DAY_MS);
    let (new_id, key, sha256) = new_key();
    let new = MachineKeyRow {
        id: new_id,
        sha256,
        created_by: caller.identity.subject.clone(),
        created_ms: now,
        expires_ms: now.saturating_add(life),
        revoked_ms: None,
        revoked_by: None,
        replaces: Some(old.id.clone()),
        ..old
    };
    let overlap_ms =
        i64::try_from(request.overlap_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    match state
        .store()
        .rotate_machine_key(new, now.saturating_add(overlap_ms))
        .await
        .map_err(db)?
    {
        KeyChange::Done(row) => {
            state.policy_watch().changed();
            tracing::info!(key = %row.id, replaces = %id, by = %logged(&row.created_by), "machine key rotated");
            let issued = IssuedKey {
                key,
                view: view(&row, now),
            };
            Ok((StatusCode::CREATED, Json(issued)).into_response())
        }
        KeyChange::AlreadyRevoked(_) => Err(ApiError::refused(
            StatusCode::CONFLICT,
            "key_revoked",
            "a revoked key is not rotated: issue a new one",
        )),
        KeyChange::NoSuchKey => Err(ApiError::NotFound(format!(
            "no machine key '{}'",
            logged(&id)
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use warden_engine::auth::machine_keys::{id_of, MachineKeys};

    #[test]
    fn a_new_key_is_known_to_a_gateway_by_its_hash_alone() {
        let (id, key, sha256) = new_key();
        assert_eq!(id_of(&key), Some(id.as_str()));
        assert!(!sha256.contains(&key[key.len() - 16..]));
        let row = MachineKeyRow {
            id: id.clone(),
            name: "n".into(),
            owner: "svc".into(),
            owner_sub: "svc".into(),
            groups_json: r#"["eng"]"#.into(),
            models_json: "[]".into(),
            sha256,
            created_by: "admin".into(),
            created_ms: 0,
            expires_ms: 10_000_000,
            revoked_ms: None,
            revoked_by: None,
            replaces: None,
        };
        let served = served(&[row]);
        let json = serde_json::to_string(&served).unwrap();
        assert!(!json.contains(&key[4..]), "the key itself is never served");
        let keys = MachineKeys::compile(served).unwrap();
        let who = keys.verify(&key, 9_999).unwrap();
        assert_eq!(
            (who.subject.as_str(), who.groups.as_slice()),
            ("svc", &["eng".to_owned()][..])
        );
        assert!(keys.verify(&new_key().1, 1).is_err());
        assert_ne!(new_key().1, new_key().1);
    }
}
