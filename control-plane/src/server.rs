//! The HTTP API: shared state, routes, and the server loop.
//!
//! [`app`] builds the router from an [`AppState`], so tests can drive it
//! in-process; [`run`] serves it on a bound listener until a shutdown future
//! completes; [`serve`] is what `warden serve` does (bind, open the store,
//! load the dev issuer, announce, run until SIGINT/SIGTERM).
//!
//! Routes:
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `/healthz` | `{"status":"ok","database":"sqlite"\|"postgres"}`, or 503 |
//! | GET | `/dev/.well-known/openid-configuration` | dev issuer discovery (`--dev` only) |
//! | GET | `/dev/jwks.json` | dev issuer keys (`--dev` only) |
//! | POST | `/dev/token` | mint a dev token (`--dev` only) |
//! | GET, POST | `/dev/authorize`, POST `/dev/oauth/token` | the dev issuer's authorization code flow with PKCE (`--dev` only; [`crate::web`]) |
//! | GET | `/approvals`, `/approvals/...`, `/v1/ui/config` | the approvers' page and its sign-in settings ([`crate::web`]) |
//! | | `/v1/...` | policies, approvals, sessions ([`crate::api`], [`crate::sessions`]) |
//!
//! Every error, 404 and 405 included, is answered in the JSON shape of
//! [`crate::error::ApiError`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::dev_issuer::{
    DevIssuer, DevIssuerError, MintError, TokenRequest, TokenResponse, ISSUER_PATH,
};
use crate::error::ApiError;
use crate::fields::logged;
use crate::policies::{CheckLimits, Checker};
use crate::store::{DatabaseTarget, Store, StoreError};
use crate::user_auth::{TrustConfig, UserAuth};
use crate::webhook::{redact, Webhook, WebhookFormat};

/// How long `/healthz` waits for the database before answering 503.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest request body accepted, in bytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the server needs to start, taken from the command line.
#[derive(Clone)]
pub struct ServerConfig {
    /// The secret gateways send in `x-warden-gateway-key`; gateway endpoints
    /// answer 503 without one.
    pub gateway_secret: Option<String>,
    /// Trusted OIDC issuers for people's tokens (keys by discovery).
    pub issuers: Vec<String>,
    /// Accepted `aud` values of people's tokens (besides `ui_client_id`).
    pub audiences: Vec<String>,
    /// Members may publish and activate policies.
    pub admin_group: String,
    /// Members may read recorded sessions (as may the admin group).
    pub auditor_group: String,
    /// Where people's identity lives in their tokens: the filter's mapping.
    pub claims: warden_engine::auth::ClaimPathsDoc,
    /// The approvers' page's OAuth client id; ID tokens carry it as `aud`.
    pub ui_client_id: String,
    /// The issuer the page signs in with; default: the dev issuer with `--dev`.
    pub ui_issuer: Option<String>,
    /// Where new approvals are announced.
    pub approval_webhook: Option<String>,
    /// The webhook's body shape.
    pub approval_webhook_format: WebhookFormat,
    /// Where the SQLite database and the dev issuer's keys live; created if missing.
    pub data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL instead of SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Serve the development OIDC issuer under `/dev`. Never in production.
    pub dev: bool,
    /// The URL clients reach this server at, without a trailing slash; the
    /// dev issuer is `<public_url>/dev`.
    pub public_url: String,
    /// Bounds on policy checks (not on the command line: the defaults suit,
    /// tests tighten them).
    pub policy_checks: CheckLimits,
}

// Hand-written so the database URL (which may hold a password) is never printed.
impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("dev", &self.dev)
            .field("public_url", &self.public_url)
            .field(
                "gateway_secret",
                &self.gateway_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("admin_group", &self.admin_group)
            .field("auditor_group", &self.auditor_group)
            .field("claims", &self.claims)
            .field("ui_client_id", &self.ui_client_id)
            .field("ui_issuer", &self.ui_issuer)
            .field(
                "approval_webhook",
                &self.approval_webhook.as_deref().map(redact),
            )
            .field("approval_webhook_format", &self.approval_webhook_format)
            .field("policy_checks", &self.policy_checks)
            .finish()
    }
}

/// Default accepted audience of people's tokens.
pub const DEFAULT_AUDIENCE: &str = "warden";
/// Default admin group.
pub const DEFAULT_ADMIN_GROUP: &str = "warden-admins";
/// Default client id of the approvers' page.
pub const DEFAULT_UI_CLIENT_ID: &str = "warden-approvals";
/// Where the approvers' page is served.
pub const APPROVALS_PATH: &str = "/approvals";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            gateway_secret: None,
            issuers: Vec::new(),
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
            admin_group: DEFAULT_ADMIN_GROUP.to_owned(),
            auditor_group: crate::sessions::DEFAULT_AUDITOR_GROUP.to_owned(),
            claims: warden_engine::auth::ClaimPathsDoc::default(),
            ui_client_id: DEFAULT_UI_CLIENT_ID.to_owned(),
            ui_issuer: None,
            approval_webhook: None,
            approval_webhook_format: WebhookFormat::Json,
            data_dir: PathBuf::from(".warden"),
            database_url: None,
            dev: false,
            public_url: String::new(),
            policy_checks: CheckLimits::default(),
        }
    }
}

impl ServerConfig {
    /// The approvers' page: `<public_url>/approvals`.
    pub fn approvals_url(&self) -> String {
        format!("{}{APPROVALS_PATH}", self.public_url.trim_end_matches('/'))
    }

    /// The dev issuer's URL (`<public_url>/dev`), with `--dev`.
    pub fn dev_issuer_url(&self) -> Option<String> {
        self.dev
            .then(|| format!("{}{ISSUER_PATH}", self.public_url.trim_end_matches('/')))
    }

    /// The page's issuer: `ui_issuer`, else the dev issuer with `--dev`.
    pub fn effective_ui_issuer(&self) -> Option<String> {
        self.ui_issuer
            .clone()
            .filter(|i| !i.trim().is_empty())
            .or_else(|| self.dev_issuer_url())
    }
}

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
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The dev issuer's keys could not be loaded or created.
    #[error("dev issuer: {0}")]
    DevIssuer(#[from] DevIssuerError),
    /// The trust or webhook settings are unusable.
    #[error("{0}")]
    Settings(String),
    /// A background task failed.
    #[error("startup task failed: {0}")]
    Task(String),
    /// The server loop failed.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
}

/// State shared by every request handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    dev_issuer: Option<DevIssuer>,
    config: ServerConfig,
    users: UserAuth,
    webhook: Option<Webhook>,
    policy_checker: Checker,
}

impl AppState {
    /// Assembles the state from its parts: builds the token verifier (the
    /// dev issuer's keys, `config.issuers`, the page's issuer) and the webhook.
    pub fn new(
        store: Store,
        dev_issuer: Option<DevIssuer>,
        config: ServerConfig,
    ) -> Result<Self, StartupError> {
        let mut issuers = config.issuers.clone();
        if let Some(ui) = config.ui_issuer.as_ref().filter(|i| !i.trim().is_empty()) {
            // The page's sign-in issuer is trusted for the tokens it yields.
            issuers.push(ui.clone());
        }
        let dev = dev_issuer
            .as_ref()
            .map(|d| (d.issuer().to_owned(), d.jwks().clone()));
        if let Some((dev_url, _)) = &dev {
            issuers.retain(|i| i.trim_end_matches('/') != dev_url);
        }
        let mut audiences = config.audiences.clone();
        audiences.push(config.ui_client_id.clone());
        let users = UserAuth::new(&TrustConfig {
            issuers,
            dev,
            audiences,
            admin_group: config.admin_group.clone(),
            claims: config.claims.clone(),
        })
        .map_err(StartupError::Settings)?;
        let webhook = match &config.approval_webhook {
            Some(url) if !url.trim().is_empty() => Some(
                Webhook::new(url.trim(), config.approval_webhook_format)
                    .map_err(StartupError::Settings)?,
            ),
            _ => None,
        };
        Ok(AppState {
            inner: Arc::new(Inner {
                store,
                dev_issuer,
                policy_checker: Checker::new(config.policy_checks.clone()),
                config,
                users,
                webhook,
            }),
        })
    }

    /// The settings the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The approvers' page URL (`<public_url>/approvals`).
    pub fn approvals_url(&self) -> String {
        self.inner.config.approvals_url()
    }

    /// Verifies people's tokens.
    pub fn users(&self) -> &UserAuth {
        &self.inner.users
    }

    /// Creates the data directory if needed, opens and migrates the store,
    /// and, with `dev`, loads or generates the dev issuer's keys.
    pub async fn build(config: &ServerConfig) -> Result<Self, StartupError> {
        let target = DatabaseTarget::resolve(&config.data_dir, config.database_url.as_deref())?;
        create_data_dir(&config.data_dir)?;
        tracing::info!(database = %target.kind(), "opening the database");
        let store = Store::open(&target).await?;

        let dev_issuer = if config.dev {
            let data_dir = config.data_dir.clone();
            let issuer = format!("{}{ISSUER_PATH}", config.public_url.trim_end_matches('/'));
            let loaded =
                tokio::task::spawn_blocking(move || DevIssuer::load_or_generate(&data_dir, issuer))
                    .await;
            let dev_issuer = match loaded {
                Ok(result) => result,
                Err(join_error) => {
                    store.close().await;
                    return Err(StartupError::Task(join_error.to_string()));
                }
            };
            match dev_issuer {
                Ok(dev_issuer) => Some(dev_issuer),
                Err(error) => {
                    store.close().await;
                    return Err(error.into());
                }
            }
        } else {
            None
        };
        match AppState::new(store.clone(), dev_issuer, config.clone()) {
            Ok(state) => Ok(state),
            Err(error) => {
                store.close().await;
                Err(error)
            }
        }
    }

    /// The approval webhook, when configured.
    pub fn webhook(&self) -> Option<&Webhook> {
        self.inner.webhook.as_ref()
    }

    /// Compiles policy documents within the server's limits.
    pub fn policy_checker(&self) -> &Checker {
        &self.inner.policy_checker
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The dev issuer, when running with `--dev`.
    pub fn dev_issuer(&self) -> Option<&DevIssuer> {
        self.inner.dev_issuer.as_ref()
    }
}

/// The API router. The `/dev` routes exist only when the state has a dev issuer.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::api::routes());
    if state.dev_issuer().is_some() {
        router = router
            .route("/dev/.well-known/openid-configuration", get(dev_discovery))
            .route("/dev/jwks.json", get(dev_jwks))
            .route("/dev/token", post(dev_token));
    }
    router
        .merge(crate::web::router(&state))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
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

#[cfg(unix)]
fn create_data_dir(dir: &Path) -> Result<(), StartupError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StartupError::DataDir {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(not(unix))]
fn create_data_dir(dir: &Path) -> Result<(), StartupError> {
    std::fs::create_dir_all(dir).map_err(|source| StartupError::DataDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// The body of a healthy `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub database: String,
}

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

fn dev_issuer(state: &AppState) -> Result<&DevIssuer, ApiError> {
    state
        .dev_issuer()
        .ok_or_else(|| ApiError::NotFound("not found".to_owned()))
}

async fn dev_discovery(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(dev_issuer(&state)?.discovery_document()).into_response())
}

async fn dev_jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let jwks = dev_issuer(&state)?.jwks().clone();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        )],
        Json(jwks),
    )
        .into_response())
}

async fn dev_token(
    State(state): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let issuer = dev_issuer(&state)?;
    let Json(body) = body?;
    // serde would also accept a struct written as a JSON array; insist on an object.
    if !body.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".to_owned(),
        ));
    }
    let request: TokenRequest = serde_json::from_value(body)
        .map_err(|error| ApiError::BadRequest(format!("invalid token request: {error}")))?;
    let token = issuer.mint(&request).map_err(|error| match error {
        MintError::Invalid(message) => ApiError::BadRequest(message),
        MintError::Sign(detail) => ApiError::Internal(detail),
    })?;
    tracing::info!(
        sub = %logged(request.sub.trim()),
        alg = %request.alg.unwrap_or_default(),
        "minted a dev token"
    );
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(TokenResponse { token }),
    )
        .into_response())
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
