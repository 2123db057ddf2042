//! The server's shared state and its settings: [`ServerConfig`] (what
//! `warden serve` was told) and [`AppState`] (the store, the dev issuer,
//! people's token verifier, the webhook, the policy checker and the clock
//! every handler reaches through axum's `State`), with [`AppState::build`],
//! which opens what the state holds.
//!
//! Below the routes: the handler modules ([`crate::api`],
//! [`crate::sessions`], [`crate::web`]) import it, [`crate::server`]
//! composes them; it imports none of them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::Clock;
use crate::issuer::{Issuer, IssuerError, IssuerKind};
use crate::key_rotation::OwnIssuerKeys;
use crate::policies::{CheckLimits, Checker};
use crate::policy_watch::PolicyWatch;
use crate::saml::{SamlSettings, SamlSignIn};
use crate::store::{DatabaseTarget, Store, StoreError};
use crate::user_auth::{LocalKeys, TrustConfig, UserAuth};
use crate::webhook::{redact, Webhook, WebhookFormat};

/// `GET /v1/login`: where people sign in for this control plane.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LoginSettings {
    /// The OIDC issuer.
    pub issuer: String,
    /// The public OAuth client the CLI signs in as.
    pub client_id: String,
    /// Scopes to ask for (space-separated) [default: the CLI's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Resource indicators (RFC 8707) to ask for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
}

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
    /// Where every rule that depends on time reads it: the system's clock
    /// (not on the command line; tests that build the server in-process
    /// give it a [`crate::clock::ManualClock`]'s and move it).
    pub clock: Clock,
    /// The IdP and public client `warden login` uses when given none
    /// (`GET /v1/login`); default: the SAML issuer when SAML is on.
    pub cli_login: Option<LoginSettings>,
    /// Sign people in with a SAML IdP, through the issuer at
    /// `<public_url>/idp` ([`crate::saml`]).
    pub saml: Option<SamlSettings>,
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
            .field("clock", &self.clock)
            .field("cli_login", &self.cli_login)
            .field("saml", &self.saml)
            .finish()
    }
}

/// Default accepted audience of people's tokens.
pub const DEFAULT_AUDIENCE: &str = "warden";
/// Default admin group.
pub const DEFAULT_ADMIN_GROUP: &str = "warden-admins";
/// Default client id of the approvers' page.
pub const DEFAULT_UI_CLIENT_ID: &str = "warden-approvals";
/// Default group whose members may read recorded sessions (besides the admin group).
pub const DEFAULT_AUDITOR_GROUP: &str = "warden-auditors";
/// Where the approvers' page is served.
pub const APPROVALS_PATH: &str = "/approvals";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            gateway_secret: None,
            issuers: Vec::new(),
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
            admin_group: DEFAULT_ADMIN_GROUP.to_owned(),
            auditor_group: DEFAULT_AUDITOR_GROUP.to_owned(),
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
            clock: Clock::system(),
            cli_login: None,
            saml: None,
        }
    }
}

impl ServerConfig {
    /// The approvers' page: `<public_url>/approvals`.
    pub fn approvals_url(&self) -> String {
        format!("{}{APPROVALS_PATH}", self.public_url.trim_end_matches('/'))
    }

    /// The URL of the control plane's own issuer of `kind`
    /// (`<public_url>/dev`, `<public_url>/idp`).
    pub fn issuer_url(&self, kind: IssuerKind) -> String {
        format!("{}{}", self.public_url.trim_end_matches('/'), kind.path())
    }

    /// The dev issuer's URL (`<public_url>/dev`), with `--dev`.
    pub fn dev_issuer_url(&self) -> Option<String> {
        self.dev.then(|| self.issuer_url(IssuerKind::Dev))
    }

    /// The SAML issuer's URL (`<public_url>/idp`), when SAML is on.
    pub fn saml_issuer_url(&self) -> Option<String> {
        self.saml
            .is_some()
            .then(|| self.issuer_url(IssuerKind::Saml))
    }

    /// The page's issuer: `ui_issuer`, else the SAML issuer, else the dev
    /// issuer with `--dev`.
    pub fn effective_ui_issuer(&self) -> Option<String> {
        self.ui_issuer
            .clone()
            .filter(|i| !i.trim().is_empty())
            .or_else(|| self.saml_issuer_url())
            .or_else(|| self.dev_issuer_url())
    }

    /// What `GET /v1/login` names: `cli_login`, else the SAML issuer with
    /// the CLI's client id.
    pub fn effective_cli_login(&self) -> Option<LoginSettings> {
        self.cli_login.clone().or_else(|| {
            self.saml_issuer_url().map(|issuer| LoginSettings {
                issuer,
                client_id: crate::issuer::NATIVE_CLIENT_ID.to_owned(),
                scope: None,
                resources: Vec::new(),
            })
        })
    }
}

/// Why the state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
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
    /// An issuer's keys could not be loaded or created.
    #[error("issuer: {0}")]
    Issuer(#[from] IssuerError),
    /// The trust or webhook settings are unusable.
    #[error("{0}")]
    Settings(String),
    /// A background task failed.
    #[error("startup task failed: {0}")]
    Task(String),
}

/// State shared by every request handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    /// Shared with the dev issuer's own routes.
    dev_issuer: Option<Arc<Issuer>>,
    /// Shared with the SAML routes; holds the SAML issuer.
    saml: Option<Arc<SamlSignIn>>,
    config: ServerConfig,
    users: UserAuth,
    webhook: Option<Webhook>,
    policy_checker: Checker,
    /// Wakes gateways watching the active policy.
    policy_watch: Arc<PolicyWatch>,
}

impl AppState {
    /// Assembles the state from its parts: builds the token verifier (the
    /// dev issuer's keys, `config.issuers`, the page's issuer) and the webhook.
    pub fn new(
        store: Store,
        dev_issuer: Option<Issuer>,
        config: ServerConfig,
    ) -> Result<Self, StateError> {
        Self::with_issuers(store, dev_issuer, None, config)
    }

    /// [`AppState::new`] with the SAML issuer too: the SAML service
    /// provider is built here, in front of `saml_issuer`.
    pub fn with_issuers(
        store: Store,
        dev_issuer: Option<Issuer>,
        saml_issuer: Option<Issuer>,
        config: ServerConfig,
    ) -> Result<Self, StateError> {
        let mut issuers = config.issuers.clone();
        if let Some(ui) = config.ui_issuer.as_ref().filter(|i| !i.trim().is_empty()) {
            // The page's sign-in issuer is trusted for the tokens it yields.
            issuers.push(ui.clone());
        }
        let dev_issuer = dev_issuer.map(Arc::new);
        let saml = match (&config.saml, saml_issuer) {
            (Some(settings), Some(issuer)) => Some(Arc::new(
                SamlSignIn::new(
                    settings,
                    &config.public_url,
                    Arc::new(issuer),
                    store.clone(),
                    config.clock.clone(),
                )
                .map_err(StateError::Settings)?,
            )),
            (None, None) => None,
            _ => {
                return Err(StateError::Settings(
                    "SAML needs both its settings and its issuer".to_owned(),
                ))
            }
        };
        // The control plane's own issuers: their keys are in process.
        let mut local: Vec<(String, LocalKeys)> = Vec::new();
        if let Some(dev) = &dev_issuer {
            local.push((
                dev.issuer().to_owned(),
                Arc::new(OwnIssuerKeys::fixed(dev.clone())),
            ));
        }
        if let Some(saml) = &saml {
            local.push((
                saml.issuer().issuer().to_owned(),
                Arc::new(OwnIssuerKeys::stored(
                    saml.issuer().clone(),
                    store.clone(),
                    config.clock.clone(),
                )),
            ));
        }
        issuers.retain(|i| !local.iter().any(|(url, _)| i.trim_end_matches('/') == url));
        let mut audiences = config.audiences.clone();
        audiences.push(config.ui_client_id.clone());
        let users = UserAuth::new(
            &TrustConfig {
                issuers,
                local,
                audiences,
                admin_group: config.admin_group.clone(),
                claims: config.claims.clone(),
            },
            config.clock.clone(),
        )
        .map_err(StateError::Settings)?;
        let webhook = match &config.approval_webhook {
            Some(url) if !url.trim().is_empty() => Some(
                Webhook::new(url.trim(), config.approval_webhook_format)
                    .map_err(StateError::Settings)?,
            ),
            _ => None,
        };
        Ok(AppState {
            inner: Arc::new(Inner {
                store,
                dev_issuer,
                saml,
                policy_checker: Checker::new(config.policy_checks.clone()),
                config,
                users,
                webhook,
                policy_watch: Arc::default(),
            }),
        })
    }

    /// The settings the server runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Where handlers read the time.
    pub fn clock(&self) -> &Clock {
        &self.inner.config.clock
    }

    /// The approvers' page URL (`<public_url>/approvals`).
    pub fn approvals_url(&self) -> String {
        self.inner.config.approvals_url()
    }

    /// Wakes gateways watching the active policy.
    pub fn policy_watch(&self) -> &Arc<PolicyWatch> {
        &self.inner.policy_watch
    }

    /// Verifies people's tokens.
    pub fn users(&self) -> &UserAuth {
        &self.inner.users
    }

    /// Creates the data directory if needed, opens and migrates the store,
    /// and, with `dev`, loads or generates the dev issuer's keys.
    pub async fn build(config: &ServerConfig) -> Result<Self, StateError> {
        let target = DatabaseTarget::resolve(&config.data_dir, config.database_url.as_deref())?;
        create_data_dir(&config.data_dir)?;
        tracing::info!(database = %target.kind(), "opening the database");
        let store = Store::open(&target).await?;

        let dev_issuer = if config.dev {
            let data_dir = config.data_dir.clone();
            let url = config.issuer_url(IssuerKind::Dev);
            let clock = config.clock.clone();
            let issuer_store = store.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                Issuer::load_or_generate(&data_dir, url, clock, issuer_store)
            })
            .await;
            match loaded {
                Ok(Ok(issuer)) => Some(issuer),
                Ok(Err(error)) => {
                    store.close().await;
                    return Err(error.into());
                }
                Err(join_error) => {
                    store.close().await;
                    return Err(StateError::Task(join_error.to_string()));
                }
            }
        } else {
            None
        };
        // The SAML issuer's keys are the database's, shared by every replica.
        let saml_issuer = if config.saml.is_some() {
            let ring = crate::key_rotation::load_ring(
                &store,
                crate::key_rotation::SAML_ISSUER,
                config.clock.now_ms(),
                false,
            )
            .await;
            match ring {
                Ok(ring) => Some(Issuer::with_ring(
                    IssuerKind::Saml,
                    config.issuer_url(IssuerKind::Saml),
                    ring,
                    config.clock.clone(),
                    store.clone(),
                )),
                Err(error) => {
                    store.close().await;
                    return Err(StateError::Settings(format!("SAML issuer: {error}")));
                }
            }
        } else {
            None
        };
        match AppState::with_issuers(store.clone(), dev_issuer, saml_issuer, config.clone()) {
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
    pub fn dev_issuer(&self) -> Option<&Arc<Issuer>> {
        self.inner.dev_issuer.as_ref()
    }

    /// The SAML service provider (and through it the SAML issuer), when on.
    pub fn saml(&self) -> Option<&Arc<SamlSignIn>> {
        self.inner.saml.as_ref()
    }

    /// The control plane's own issuer at `url`, if it is one.
    pub fn own_issuer(&self, url: &str) -> Option<&Arc<Issuer>> {
        self.inner
            .dev_issuer
            .iter()
            .chain(self.inner.saml.as_ref().map(|saml| saml.issuer()))
            .find(|issuer| issuer.issuer() == url)
    }
}

#[cfg(unix)]
fn create_data_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::DataDir {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(not(unix))]
fn create_data_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::create_dir_all(dir).map_err(|source| StateError::DataDir {
        path: dir.to_path_buf(),
        source,
    })
}
