//! Who is calling: people with a bearer token from the company IdP, and
//! gateways with the shared secret.
//!
//! People's tokens are verified with the filter engine's own JWT code
//! ([`warden_engine::auth::Authenticator`]: issuer chosen by `iss`, the
//! issuer's algorithm allow-list, key by exact `kid`, key type picks the
//! verifier, `crit` refused, then claims); this module only supplies the keys.
//! Remote issuers' keys come from OIDC discovery (`jwks_uri`), are cached, and
//! are refetched at most every [`MIN_REFETCH`] on an unknown `kid`, so a flood
//! of random `kid`s does not flood the IdP. The dev issuer's keys are in
//! process.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use subtle::ConstantTimeEq as _;
use tokio::sync::Mutex;
use warden_engine::auth::jwks::KeySet;
use warden_engine::auth::{
    Algorithm, AuthError, Authenticator, ClaimPaths, ClaimPathsDoc, Identity, Issuer, KeySource,
    TokenSource,
};

use crate::clock::Clock;
use crate::error::ApiError;

/// Header the gateways send their shared secret in: the engine's, which the
/// filter sends.
pub use warden_engine::protocol::GATEWAY_KEY_HEADER;

/// Unknown-`kid` refetches happen at most this often per issuer.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);

/// Keys older than this are refreshed on the next request.
pub const REFRESH: Duration = Duration::from_secs(300);

/// Keys that could not be refreshed are used for at most this long.
pub const MAX_STALE: Duration = Duration::from_secs(3600);

/// Clock skew allowed on `exp`/`nbf`.
const SKEW_SECONDS: u64 = 60;

/// Largest token accepted.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// One of this control plane's own issuers, as people's tokens are checked
/// against it: its keys in process, and a way to read them again when a
/// token names a key it does not know (another replica's rotation).
pub trait LocalIssuer: Send + Sync {
    /// The keys it publishes now.
    fn keys(&self) -> Arc<KeySet>;
    /// Reads its keys again, at most every [`MIN_REFETCH`]; `true` if it did.
    fn reload(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>>;
}

/// See [`LocalIssuer`].
pub type LocalKeys = Arc<dyn LocalIssuer>;

/// What the server trusts for people's tokens.
#[derive(Clone)]
pub struct TrustConfig {
    /// Issuers whose keys come from OIDC discovery.
    pub issuers: Vec<String>,
    /// The control plane's own issuers (`<public_url>/dev`,
    /// `<public_url>/idp`): keys in process, read as they are at each
    /// request (they rotate).
    pub local: Vec<(String, LocalKeys)>,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Group whose members may publish and activate policies.
    pub admin_group: String,
    /// Where the identity lives in the claims (the filter's mapping).
    pub claims: ClaimPathsDoc,
}

/// Verifies people's tokens.
pub struct UserAuth {
    authenticator: Authenticator,
    /// Parallel to `authenticator.issuers`.
    keys: Vec<IssuerKeys>,
    http: reqwest::Client,
    admin_group: String,
    /// Tokens' `exp` and `nbf`, and the remote keys' age, are read on it.
    clock: Clock,
}

impl std::fmt::Debug for UserAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self
            .authenticator
            .issuers
            .iter()
            .map(|i| i.issuer.as_str())
            .collect();
        f.debug_struct("UserAuth")
            .field("issuers", &issuers)
            .field("admin_group", &self.admin_group)
            .finish()
    }
}

enum IssuerKeys {
    Local(LocalKeys),
    Remote(Mutex<RemoteState>),
}

#[derive(Default)]
struct RemoteState {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// A verified person.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The verified identity.
    pub identity: Identity,
    /// Member of the admin group.
    pub is_admin: bool,
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::refused(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

impl UserAuth {
    /// Builds the verifier, which reads the time on `clock`. Fails when no
    /// issuer is trusted at all.
    pub fn new(config: &TrustConfig, clock: Clock) -> Result<Self, String> {
        let claims = ClaimPaths::compile(&config.claims)?;
        let audiences: HashSet<String> = config
            .audiences
            .iter()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect();
        if audiences.is_empty() {
            return Err("at least one audience must be accepted".into());
        }
        let mut issuers = Vec::new();
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        for (issuer, local_keys) in &config.local {
            seen.insert(issuer.clone());
            issuers.push(issuer_entry(issuer, &audiences, &claims));
            keys.push(IssuerKeys::Local(local_keys.clone()));
        }
        for issuer in &config.issuers {
            let issuer = issuer.trim().trim_end_matches('/').to_owned();
            if issuer.is_empty() || !seen.insert(issuer.clone()) {
                continue;
            }
            if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
                return Err(format!("issuer {issuer:?} is not an http(s) URL"));
            }
            issuers.push(issuer_entry(&issuer, &audiences, &claims));
            keys.push(IssuerKeys::Remote(Mutex::new(RemoteState::default())));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(UserAuth {
            authenticator: Authenticator {
                token_sources: vec![TokenSource {
                    header: "authorization".into(),
                    scheme: Some("Bearer".into()),
                }],
                issuers,
                skew_seconds: SKEW_SECONDS,
                max_token_bytes: MAX_TOKEN_BYTES,
                cache_entries: 0,
            },
            keys,
            http,
            admin_group: config.admin_group.clone(),
            clock,
        })
    }

    /// The issuers trusted, in order.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.authenticator.issuers.iter().map(|i| i.issuer.as_str())
    }

    /// Verifies the bearer token in `headers`: 401 when absent or invalid.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let raw: Vec<(String, Vec<u8>)> = headers
            .get_all(axum::http::header::AUTHORIZATION)
            .iter()
            .map(|v| ("authorization".to_owned(), v.as_bytes().to_vec()))
            .collect();
        let view = warden_engine::headers::Headers::new(&raw);
        let token = self
            .authenticator
            .extract_token(view)
            .map_err(|e| unauthorized(auth_message(e)))?;
        let identity = self.verify(token).await?;
        let is_admin = identity.groups.contains(&self.admin_group);
        Ok(Caller { identity, is_admin })
    }

    /// Like [`UserAuth::caller`], and 403 `admin_required` unless the caller
    /// is in the admin group.
    pub async fn admin(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let caller = self.caller(headers).await?;
        if !caller.is_admin {
            return Err(ApiError::refused(
                StatusCode::FORBIDDEN,
                "admin_required",
                format!(
                    "changing policies needs membership of the `{}` group",
                    self.admin_group
                ),
            ));
        }
        Ok(caller)
    }

    async fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        let unverified = self
            .authenticator
            .inspect(token)
            .map_err(|e| unauthorized(auth_message(e)))?;
        let index = unverified.issuer;
        let keys = self
            .keys
            .get(index)
            .ok_or_else(|| unauthorized(auth_message(AuthError::UnknownIssuer)))?;
        let now = self.clock.now_s();
        match keys {
            IssuerKeys::Local(issuer) => {
                match self
                    .authenticator
                    .verify(token, unverified.clone(), &issuer.keys(), now)
                {
                    // A replica that rotated: read the keys again, once.
                    Err(AuthError::UnknownKey) if issuer.reload().await => self
                        .authenticator
                        .verify(token, unverified, &issuer.keys(), now)
                        .map_err(|e| unauthorized(auth_message(e))),
                    other => other.map_err(|e| unauthorized(auth_message(e))),
                }
            }
            IssuerKeys::Remote(state) => {
                let issuer = &self.authenticator.issuers[index].issuer;
                let set = self.remote_keys(issuer, state, false).await?;
                match self
                    .authenticator
                    .verify(token, unverified.clone(), &set, now)
                {
                    Err(AuthError::UnknownKey) => {
                        // The IdP may have rotated its keys: one rate-limited refetch.
                        let set = self.remote_keys(issuer, state, true).await?;
                        self.authenticator
                            .verify(token, unverified, &set, now)
                            .map_err(|e| unauthorized(auth_message(e)))
                    }
                    other => other.map_err(|e| unauthorized(auth_message(e))),
                }
            }
        }
    }

    async fn remote_keys(
        &self,
        issuer: &str,
        state: &Mutex<RemoteState>,
        unknown_kid: bool,
    ) -> Result<Arc<KeySet>, ApiError> {
        let mut state = state.lock().await;
        let now = self.clock.instant();
        let fresh = state
            .fetched_at
            .is_some_and(|at| now.duration_since(at) < REFRESH);
        let may_fetch = state
            .last_attempt
            .is_none_or(|at| now.duration_since(at) >= MIN_REFETCH);
        if (!fresh || unknown_kid) && may_fetch {
            state.last_attempt = Some(now);
            match fetch_jwks(&self.http, issuer).await {
                Ok(set) => {
                    state.keys = Some(Arc::new(set));
                    state.fetched_at = Some(now);
                }
                Err(error) => {
                    tracing::warn!(issuer, %error, "cannot fetch the issuer's keys");
                }
            }
        }
        let usable = state
            .fetched_at
            .is_some_and(|at| now.duration_since(at) < MAX_STALE);
        match (&state.keys, usable) {
            (Some(keys), true) => Ok(keys.clone()),
            _ => Err(ApiError::refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "issuer_unavailable",
                "the identity provider's keys cannot be fetched right now; try again shortly",
            )),
        }
    }
}

fn issuer_entry(issuer: &str, audiences: &HashSet<String>, claims: &ClaimPaths) -> Issuer {
    Issuer {
        issuer: issuer.to_owned(),
        audiences: audiences.clone(),
        algorithms: Algorithm::ASYMMETRIC.to_vec(),
        keys: KeySource::Static(KeySet::default()),
        claims: claims.clone(),
    }
}

/// The engine's messages speak of "this gateway"; here it is the control plane.
fn auth_message(error: AuthError) -> String {
    error
        .to_string()
        .replace("this gateway", "this control plane")
        .replace("(or as the API key)", "")
        .trim()
        .to_owned()
}

async fn fetch_jwks(http: &reqwest::Client, issuer: &str) -> Result<KeySet, String> {
    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let discovery: serde_json::Value = http
        .get(&discovery_url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("discovery: {}", e.without_url()))?
        .json()
        .await
        .map_err(|e| format!("discovery: {}", e.without_url()))?;
    if discovery.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
        return Err("discovery: the document names another issuer".into());
    }
    let jwks_uri = discovery
        .get("jwks_uri")
        .and_then(|v| v.as_str())
        .ok_or("discovery: no jwks_uri")?;
    let body = http
        .get(jwks_uri)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("jwks: {}", e.without_url()))?
        .bytes()
        .await
        .map_err(|e| format!("jwks: {}", e.without_url()))?;
    KeySet::from_jwks(&body)
        .map(|(set, _)| set)
        .map_err(|e| format!("jwks: {e}"))
}

/// Checks the gateway secret header: 503 `gateway_secret_unset` when the
/// server has none, 401 `gateway_unauthorized` when it is missing or wrong.
pub fn check_gateway(secret: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(secret) = secret else {
        return Err(ApiError::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "gateway_secret_unset",
            "this control plane has no gateway secret (--gateway-secret / WARDEN_GATEWAY_SECRET)",
        ));
    };
    let given = headers
        .get(GATEWAY_KEY_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    // Constant time in the content; the length is not secret-dependent enough to matter.
    if given.is_empty() || !bool::from(given.ct_eq(secret.as_bytes())) {
        return Err(ApiError::refused(
            StatusCode::UNAUTHORIZED,
            "gateway_unauthorized",
            format!("send the gateway secret in `{GATEWAY_KEY_HEADER}`"),
        ));
    }
    Ok(())
}
