//! What `warden login` and `warden whoami` ask the control plane.
//!
//! | method | path | who | |
//! | --- | --- | --- | --- |
//! | GET | `/v1/login` | anyone | the IdP and public client the CLI signs in with (`warden serve --login-issuer … --login-client-id …`) |
//! | GET | `/v1/whoami` | person | the caller's verified identity and what the active policy's groups let them use |
//! | POST | `/v1/issuer/keys/rotate` | admin | a new generation of the SAML issuer's keys now ([`crate::key_rotation`]) |
//!
//! `/v1/whoami` reads the active version's document as the filter does for
//! groups: the caller's groups that the policy lists, else the policy's
//! default group, else none (the gateway then denies every request).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warden_engine::policy::{judged_groups, Mode, PolicyDoc};

use crate::error::responses::{Unauthorized, Unavailable};
use crate::error::{db, ApiError};
use crate::policies;
use crate::state::{AppState, LoginSettings};

/// The OpenAPI tag of these routes.
pub const IDENTITY_TAG: &str = "identity";

/// `/v1/login`, `/v1/whoami` and `/v1/issuer/keys/rotate`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login_settings))
        .routes(routes!(whoami))
        .routes(routes!(rotate_issuer_keys))
}

/// The SAML issuer's keys after a rotation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotatedKeys {
    /// The new generation's number.
    pub generation: i64,
    /// Every published key id (the JWKS), oldest generation first.
    pub kids: Vec<String>,
    /// When the new generation starts signing (RFC 3339): an hour after it
    /// is published, so every gateway has its keys first.
    pub signs_from: String,
}

/// Adds a generation of the SAML issuer's keys now (published at once,
/// signing an hour later), as is done every 30 days: after a suspected leak,
/// or to test a rotation.
#[utoipa::path(
    post,
    path = "/v1/issuer/keys/rotate",
    tag = IDENTITY_TAG,
    security(("person" = [])),
    responses(
        (status = 200, description = "The new generation", body = RotatedKeys),
        Unauthorized,
        (status = 403, description = "Not a member of the admin group (`admin_required`)", body = crate::error::ErrorBody),
        (status = 404, description = "No SAML issuer here (`saml_not_configured`)", body = crate::error::ErrorBody),
        Unavailable,
    ),
)]
async fn rotate_issuer_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<RotatedKeys>, ApiError> {
    let caller = state.users().admin(&headers).await?;
    let Some(saml) = state.saml() else {
        return Err(ApiError::refused(
            StatusCode::NOT_FOUND,
            "saml_not_configured",
            "this control plane has no SAML issuer (warden serve --saml-idp-metadata)",
        ));
    };
    let issuer = saml.issuer();
    let generation = crate::key_rotation::rotate_now(state.store(), issuer, state.clock())
        .await
        .map_err(ApiError::Internal)?;
    let ring = issuer.ring();
    tracing::info!(generation, by = %crate::fields::logged(&caller.identity.subject), "issuer keys rotated by an admin");
    Ok(Json(RotatedKeys {
        generation,
        kids: ring.kids(),
        signs_from: crate::clock::rfc3339(
            ring.newest()
                .created_ms
                .saturating_add(crate::issuer::PUBLISH_AHEAD_MS),
        ),
    }))
}

/// The IdP and client `warden login` uses when given none.
#[utoipa::path(
    get,
    path = "/v1/login",
    tag = IDENTITY_TAG,
    responses(
        (status = 200, description = "The issuer and client id", body = LoginSettings),
        (status = 404, description = "Not configured (`login_not_configured`)", body = crate::error::ErrorBody),
    ),
)]
async fn login_settings(State(state): State<AppState>) -> Result<Json<LoginSettings>, ApiError> {
    state.config().effective_cli_login().map(Json).ok_or_else(|| {
        ApiError::refused(
            StatusCode::NOT_FOUND,
            "login_not_configured",
            "this control plane names no IdP for `warden login` (warden serve --login-issuer --login-client-id)",
        )
    })
}

/// The caller as the control plane verified them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoamiIdentity {
    pub issuer: String,
    /// The subject as the claim mapping reads it.
    pub subject: String,
    pub email: Option<String>,
    /// From the configured groups claim.
    pub groups: Vec<String>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: u64,
    /// Member of the admin group.
    pub admin: bool,
}

/// The tools a group's agents may be offered and call (globs).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoamiTools {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// One policy group the caller's requests are judged as.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoamiGroup {
    pub name: String,
    /// True when the caller is in none of the listed groups and this is the
    /// policy's default group.
    pub default: bool,
    /// Provider names (globs).
    pub providers: Vec<String>,
    /// Model names (globs).
    pub models: Vec<String>,
    /// Provider endpoints (`inference`, `files`, …; globs).
    pub endpoints: Vec<String>,
    pub tools: WhoamiTools,
}

/// What the active policy lets the caller use.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoamiPolicy {
    pub version: i64,
    /// `enforce` or `observe`.
    pub mode: String,
    /// Empty: the gateway denies the caller every request.
    pub groups: Vec<WhoamiGroup>,
}

/// `GET /v1/whoami` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoamiAnswer {
    pub identity: WhoamiIdentity,
    /// Absent when no version is active yet.
    pub policy: Option<WhoamiPolicy>,
}

/// Who the caller is, and what the active policy lets them use: the
/// providers, models, endpoints and tools of each of their groups.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = IDENTITY_TAG,
    security(("person" = [])),
    responses(
        (status = 200, description = "The caller and their grants", body = WhoamiAnswer),
        Unauthorized,
        Unavailable,
    ),
)]
async fn whoami(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<WhoamiAnswer>, ApiError> {
    let caller = state.users().caller(&headers).await?;
    let identity = caller.identity;
    let active = state.store().active_policy().await.map_err(db)?;
    let policy = match active {
        None => None,
        Some(active) => {
            let document = policies::to_json(&active.document)
                .and_then(|json| {
                    serde_json::from_value::<PolicyDoc>(json).map_err(|e| e.to_string())
                })
                .map_err(|e| {
                    ApiError::Internal(format!(
                        "stored policy version {} does not parse: {e}",
                        active.meta.version
                    ))
                })?;
            Some(grants(active.meta.version, &document, &identity.groups))
        }
    };
    Ok(Json(WhoamiAnswer {
        identity: WhoamiIdentity {
            issuer: identity.issuer,
            subject: identity.subject,
            email: identity.email,
            groups: identity.groups,
            expires_at: identity.expires_at,
            admin: caller.is_admin,
        },
        policy,
    }))
}

/// The policy groups a caller in `groups` is judged as, the filter's way:
/// those the policy lists, else its default group.
pub fn grants(version: i64, document: &PolicyDoc, groups: &[String]) -> WhoamiPolicy {
    let judged = judged_groups(&document.groups, document.defaults.group.as_deref(), groups);
    // Judged as the default group only when none of theirs is listed.
    let default = !groups.iter().any(|g| document.groups.contains_key(g));
    let matched = judged
        .into_iter()
        .map(|(name, group)| WhoamiGroup {
            name: name.to_owned(),
            default,
            providers: group.providers.clone(),
            models: group.models.clone(),
            endpoints: group.endpoints.clone(),
            tools: WhoamiTools {
                allow: group.tools.allow.clone(),
                deny: group.tools.deny.clone(),
            },
        })
        .collect();
    let mode = match document.mode {
        Mode::Enforce => "enforce",
        Mode::Observe => "observe",
    }
    .to_owned();
    WhoamiPolicy {
        version,
        mode,
        groups: matched,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn doc(text: &str) -> PolicyDoc {
        serde_json::from_value(policies::to_json(text).unwrap()).unwrap()
    }

    #[test]
    fn groups_the_policy_lists_else_the_default() {
        let policy = doc(
            "version: 1\ndefaults: {group: everyone}\ngroups:\n  engineering: {models: ['*']}\n  \
             finance: {providers: [openai], models: [gpt-4o-mini], tools: {deny: [bash]}}\n  everyone: {models: [small]}\n",
        );
        let finance = grants(3, &policy, &["finance".into(), "unlisted".into()]);
        assert_eq!(finance.version, 3);
        assert_eq!(finance.groups.len(), 1);
        let group = &finance.groups[0];
        assert_eq!((group.name.as_str(), group.default), ("finance", false));
        assert_eq!(group.providers, ["openai"]);
        assert_eq!(group.models, ["gpt-4o-mini"]);
        assert_eq!(group.endpoints, ["inference"]);
        assert_eq!(group.tools.deny, ["bash"]);

        let both = grants(3, &policy, &["engineering".into(), "finance".into()]);
        assert_eq!(
            both.groups
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>(),
            ["engineering", "finance"]
        );

        let nobody = grants(3, &policy, &["unlisted".into()]);
        assert_eq!(nobody.groups.len(), 1);
        assert!(nobody.groups[0].default);
        assert_eq!(nobody.groups[0].models, ["small"]);

        let strict = doc("version: 1\ngroups:\n  engineering: {models: ['*']}\n");
        assert!(grants(1, &strict, &["unlisted".into()]).groups.is_empty());
    }
}
