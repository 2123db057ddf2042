//! The composition root: the router and the server loop.
//!
//! [`app`] builds the router from an [`AppState`] (the routes of
//! [`crate::api`], [`crate::sessions`], [`crate::web`] and, with `--dev`,
//! [`crate::issuer`]), so tests can drive it in-process; [`run`] serves
//! it on a bound listener until a shutdown future completes; [`serve`] is
//! what `warden serve` does (bind, build the state, announce, run until
//! SIGINT/SIGTERM). Nothing imports this module but the CLI.
//!
//! Routes:
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `/healthz` | `{"status":"ok","database":"sqlite"\|"postgres"}`, or 503 |
//! | GET | `/v1/openapi.json` | the API's OpenAPI 3.1 description (the routes below but the page and `/dev`) |
//! | GET, POST | `/dev/...` | the development OIDC issuer (`--dev` only; [`crate::issuer`]) |
//! | GET, POST | `/idp/...`, `/saml/...` | the SAML-backed OIDC issuer and the SAML service provider (`--saml-idp-metadata` only; [`crate::issuer`], [`crate::saml`]) |
//! | GET | `/approvals`, `/approvals/...`, `/sessions`, `/v1/ui/config` | the approvers' page and its sign-in settings ([`crate::web`]) |
//! | | `/v1/...` | policies, approvals, sessions ([`crate::api`], [`crate::sessions`]) |
//!
//! Every error, 404 and 405 included, is answered in the JSON shape of
//! [`crate::error::ApiError`].
//!
//! The API routes are registered with their OpenAPI descriptions
//! (utoipa-axum's `OpenApiRouter`: each handler's `#[utoipa::path]` gives
//! its path, method, parameters, body, answers and who may call it), so the
//! description served is assembled from the very routes served.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::responses::Unavailable;
use crate::error::ApiError;
use crate::fields::logged;
use crate::state::{AppState, ServerConfig, StateError};

/// How long `/healthz` waits for the database before answering 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest request body accepted, in bytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `--listen` could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `--public-url` is not an http(s) URL.
    #[error("invalid public URL `{0}`: it must start with http:// or https://")]
    PublicUrl(String),
    /// The state (data directory, database, dev issuer, settings) could not be built.
    #[error(transparent)]
    State(#[from] StateError),
    /// The server loop failed.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

/// The API router. The `/dev` routes exist only when the state has a dev issuer.
pub fn app(state: AppState) -> Router {
    let (mut router, description) = described_routes(&state).split_for_parts();
    if let Some(dev_issuer) = state.dev_issuer() {
        router = router.merge(crate::issuer::routes(dev_issuer.clone()));
    }
    if let Some(saml) = state.saml() {
        router = router
            .merge(crate::issuer::routes(saml.issuer().clone()))
            .merge(crate::saml::routes(saml.clone()));
    }
    router
        .layer(Extension(Arc::new(description)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Every route but the dev issuer's, with the OpenAPI description of those
/// that are the API.
fn described_routes(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(openapi_description))
        .merge(crate::api::routes())
        .merge(crate::web::router(state))
}

/// The OpenAPI tag of `/healthz` and `/v1/openapi.json`.
const SERVER_TAG: &str = "server";

/// What the description says of itself; the paths come from the routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Warden control plane",
        description = "Versioned policies for the gateways, just-in-time approvals, recorded sessions. \
            Errors are answered as `{\"error\": {\"code\", \"message\"}}` (docs/control-plane.md).",
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = crate::api::POLICIES_TAG, description = "Policy versions: published and activated by admins, served to gateways"),
        (name = crate::api::APPROVALS_TAG, description = "Just-in-time approvals: opened and used by gateways, decided by people"),
        (name = crate::sessions::SESSIONS_TAG, description = "Recorded sessions: appended by gateways, read and verified by auditors"),
        (name = crate::whoami::IDENTITY_TAG, description = "Who the caller is and what the policy lets them use; where the CLI signs in"),
        (name = crate::machine_keys::KEYS_TAG, description = "Machine keys for scripts and services without a workload identity: issued, listed, rotated and revoked"),
        (name = crate::web::PAGE_TAG, description = "What the approvers' page reads"),
        (name = SERVER_TAG, description = "Health and this description"),
    ),
)]
struct ApiDoc;

/// Who calls the API: people with a bearer token (a JWT from a trusted
/// issuer, [`crate::user_auth`]), gateways with the shared secret.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "person",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A person's token from a trusted OpenID Provider (the dev issuer's with `--dev`)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "gateway",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                crate::user_auth::GATEWAY_KEY_HEADER,
                "The gateways' shared secret (`--gateway-secret`)",
            ))),
        );
    }
}

/// This description (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = SERVER_TAG,
    responses((status = 200, description = "This OpenAPI document", body = Object)),
)]
async fn openapi_description(
    Extension(description): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Response {
    Json(description.as_ref()).into_response()
}

/// Serves [`app`] on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let watch = state.policy_watch().clone();
    let listener_task = state.store().postgres_pool().map(|pool| {
        tokio::spawn(crate::policy_watch::listen_postgres(
            pool.clone(),
            watch.clone(),
        ))
    });
    let shutdown = async move {
        shutdown.await;
        // Gateways watching the policy are answered now, not when their
        // waits run out: the graceful stop waits for requests in flight.
        watch.close();
    };
    // The SAML issuer follows rotations (its own, when due, and other replicas').
    let rotation_task = state.saml().map(|saml| {
        tokio::spawn(crate::key_rotation::keep_current(
            state.store().clone(),
            saml.issuer().clone(),
            state.clock().clone(),
        ))
    });
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    for task in listener_task.into_iter().chain(rotation_task) {
        task.abort();
    }
    served
}

/// `warden serve`: binds `listen`, builds the state, prints
/// `warden control plane listening on http://…` on stdout, and serves until
/// SIGINT or SIGTERM. `config.public_url` may be empty, meaning
/// `http://<bound address>`.
pub async fn serve(listen: &str, mut config: ServerConfig) -> Result<(), StartupError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartupError::Bind {
            addr: listen.to_owned(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartupError::Bind {
        addr: listen.to_owned(),
        source,
    })?;
    config.public_url = if config.public_url.trim().is_empty() {
        format!("http://{local_addr}")
    } else {
        normalize_public_url(&config.public_url)?
    };

    if config.dev {
        tracing::warn!(
            "--dev is on: anyone who can reach {} can mint trusted tokens; never use it in production",
            local_addr
        );
        if !local_addr.ip().is_loopback() {
            tracing::warn!(
                address = %local_addr,
                "--dev with a non-loopback listen address exposes the token endpoint to the network"
            );
        }
    }

    let state = AppState::build(&config).await?;
    if let Some(issuer) = state.dev_issuer() {
        tracing::info!(issuer = issuer.issuer(), "dev OIDC issuer enabled");
    }
    if let Some(saml) = state.saml() {
        tracing::info!(
            issuer = saml.issuer().issuer(),
            idp = saml.idp_entity_id(),
            "SAML sign-in enabled"
        );
    }
    let trusted: Vec<&str> = state.users().issuers().collect();
    if trusted.is_empty() {
        tracing::warn!("no trusted issuer (--issuer, --ui-issuer or --dev): every person's token will be refused");
    } else {
        tracing::info!(issuers = ?trusted, "trusting these issuers for people's tokens");
    }
    if state.config().gateway_secret.is_none() {
        tracing::warn!(
            "no --gateway-secret: the gateway endpoints answer 503 gateway_secret_unset"
        );
    }
    announce(local_addr);

    let result = run(listener, state.clone(), shutdown_signal()).await;
    state.store().close().await;
    tracing::info!("warden control plane stopped");
    result.map_err(StartupError::Serve)
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// Checks that `url` is an http(s) URL and drops any trailing slash.
pub fn normalize_public_url(url: &str) -> Result<String, StartupError> {
    let trimmed = url.trim().trim_end_matches('/');
    let lower = trimmed.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(trimmed.to_owned()),
        _ => Err(StartupError::PublicUrl(url.to_owned())),
    }
}

fn announce(addr: SocketAddr) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    // Scripts wait for this line; a closed stdout is not a reason to stop serving.
    let _ = writeln!(stdout, "warden control plane listening on http://{addr}");
    let _ = stdout.flush();
}

/// The body of a healthy `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub database: String,
}

/// Whether the server and its database answer.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = SERVER_TAG,
    responses((status = 200, description = "Healthy", body = Health), Unavailable),
)]
async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let store = state.store();
    match tokio::time::timeout(HEALTH_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(Json(Health {
            status: "ok".to_owned(),
            database: store.kind().as_str().to_owned(),
        })),
        Ok(Err(error)) => Err(ApiError::DatabaseUnavailable(error.to_string())),
        Err(_elapsed) => Err(ApiError::DatabaseUnavailable(format!(
            "{} health check timed out after {HEALTH_TIMEOUT:?}",
            store.kind()
        ))),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("not found".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Logs one line per request: method, path (never the query string, nor
/// headers or bodies, which can carry tokens; bounded, as the client chose
/// it), status and duration.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = logged(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let quiet = method == Method::GET && path == "/healthz" && status == StatusCode::OK;
    if quiet {
        tracing::debug!(%method, path, status = status.as_u16(), elapsed_ms, "request");
    } else {
        tracing::info!(%method, path, status = status.as_u16(), elapsed_ms, "request");
    }
    response
}
