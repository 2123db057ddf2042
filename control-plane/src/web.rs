//! The web page: the approvers' queue, the auditors' session replay and
//! each person's machine keys.
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `/approvals` | the page (also `/approvals/`); `/approvals#apr_…` opens one approval |
//! | GET | `/sessions` | the same page, on its recorded-sessions view (also `/sessions/`); `/sessions#<id>` replays one |
//! | GET | `/keys` | the same page, on its machine-keys view (also `/keys/`): list, issue, rotate, revoke ([`crate::machine_keys`]) |
//! | GET | `/approvals/app.js`, `app.css`, `favicon.svg` | its script, style sheet and icon |
//! | GET | `/v1/ui/config` | `{"issuer","client_id","authorization_endpoint","token_endpoint","scopes","redirect_uri"}` |
//!
//! The page is static HTML, CSS and JavaScript compiled into the binary
//! (`control-plane/web/`, no build step, nothing from a CDN: it works on a
//! closed network). It signs in with the configured OpenID Provider by the
//! authorization code flow with PKCE, entirely in the browser (a public
//! client: there is no client secret to keep), and then calls the JSON API
//! with the token as a bearer token. The server never sees the code.
//! `/approvals` is the one redirect URI to register: a sign-in started on
//! `/sessions` or `/keys` comes back through it and the page moves itself
//! back.
//!
//! A machine key is in the page only from the answer that issued it until
//! its owner presses "Done": never in the URL, in web storage or in a log.
//!
//! With `--dev`, the page signs in with the dev issuer, whose sign-in form
//! and token endpoint are [`crate::issuer`]'s routes.
//!
//! Every page answer carries a strict Content-Security-Policy (no inline
//! script or style, `frame-ancestors 'none'`), `Referrer-Policy: no-referrer`
//! (the code is in the URL for a moment after sign-in) and
//! `Cache-Control: no-store` ([`crate::html`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::html::html_response;
use crate::state::AppState;

/// Where the page lives; also its OAuth redirect path.
pub const PAGE_PATH: &str = crate::state::APPROVALS_PATH;
/// The page's recorded-sessions view (auditors).
pub const SESSIONS_PATH: &str = "/sessions";
/// The page's machine-keys view (anyone signed in: their own keys; admins: all).
pub const KEYS_PATH: &str = "/keys";
/// The OpenAPI tag of `/v1/ui/config`.
pub const PAGE_TAG: &str = "page";
/// Scopes the page asks for.
const SCOPES: [&str; 3] = ["openid", "profile", "email"];
/// How long a fetched discovery document of an external issuer is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);
/// How long fetching it may take.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

const INDEX_HTML: &str = include_str!("../web/index.html");
const APP_JS: &str = include_str!("../web/app.js");
const APP_CSS: &str = include_str!("../web/app.css");
const FAVICON_SVG: &str = include_str!("../web/favicon.svg");

/// The sign-in settings of the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSettings {
    /// The OAuth client id registered for the page.
    pub client_id: String,
    /// The issuer the page signs in with; `None` when there is none (the
    /// page then says that sign-in is not configured).
    pub issuer: Option<String>,
    /// The page's own URL, its redirect URI (`<public_url>/approvals`).
    pub redirect_uri: Option<String>,
}

impl UiSettings {
    /// Settings from the server's configuration: `--ui-client-id`, and
    /// `--ui-issuer` or else the dev issuer when it runs.
    pub fn from_state(state: &AppState) -> Self {
        let config = state.config();
        UiSettings {
            client_id: config.ui_client_id.clone(),
            issuer: config.effective_ui_issuer(),
            redirect_uri: Some(state.approvals_url()),
        }
    }
}

#[derive(Clone)]
struct Web {
    app: AppState,
    settings: UiSettings,
    discovery: Arc<Mutex<Option<(Instant, Value)>>>,
    http: reqwest::Client,
}

/// The page's routes. Merged into [`crate::server::app`]: the page and its
/// assets are not the JSON API, and only `/v1/ui/config` is in its OpenAPI
/// description.
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    router_with(state, UiSettings::from_state(state))
}

/// [`router`] with explicit sign-in settings.
pub fn router_with(state: &AppState, settings: UiSettings) -> OpenApiRouter<AppState> {
    let web = Web {
        app: state.clone(),
        settings,
        discovery: Arc::new(Mutex::new(None)),
        http: reqwest::Client::builder()
            .timeout(DISCOVERY_TIMEOUT)
            .build()
            .unwrap_or_default(),
    };
    OpenApiRouter::new()
        .route(PAGE_PATH, get(index))
        .route("/approvals/", get(index))
        .route(SESSIONS_PATH, get(index))
        .route("/sessions/", get(index))
        .route(KEYS_PATH, get(index))
        .route("/keys/", get(index))
        .route("/approvals/app.js", get(app_js))
        .route("/approvals/app.css", get(app_css))
        .route("/approvals/favicon.svg", get(favicon))
        .routes(routes!(ui_config))
        .with_state(web)
}

/// The page's CSP: only its own origin, plus for `connect-src` the origins
/// of `urls` (the issuer and its token endpoint, which the browser calls to
/// exchange the code; Google's, for one, is not on the issuer's origin).
fn page_csp(urls: &[&str]) -> HeaderValue {
    let mut origins: Vec<String> = urls
        .iter()
        .filter_map(|url| Url::parse(url).ok())
        .map(|url| url.origin())
        .filter(|origin| origin.is_tuple())
        .map(|origin| origin.ascii_serialization())
        .collect();
    origins.dedup();
    let extra: String = origins.iter().map(|origin| format!(" {origin}")).collect();
    let csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'{extra}; form-action 'self'; frame-ancestors 'none'; \
         base-uri 'none'; object-src 'none'"
    );
    HeaderValue::from_str(&csp).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
        )
    })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            // Small, and must change with the binary: revalidate every time.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index(State(web): State<Web>) -> Response {
    let mut urls = Vec::new();
    if let Some(issuer) = &web.settings.issuer {
        urls.push(issuer.clone());
        // Cached; if the issuer cannot be read, the page cannot sign in
        // anyway and says so (from /v1/ui/config).
        if let Ok(document) = discovery(&web, issuer).await {
            if let Some(endpoint) = document.get("token_endpoint").and_then(Value::as_str) {
                urls.push(endpoint.to_owned());
            }
        }
    }
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    html_response(StatusCode::OK, page_csp(&urls), INDEX_HTML.to_owned())
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

/// The body of `GET /v1/ui/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UiConfig {
    /// The issuer the page signs in with.
    pub issuer: String,
    /// The page's OAuth client id.
    pub client_id: String,
    /// From the issuer's discovery document.
    pub authorization_endpoint: String,
    /// From the issuer's discovery document.
    pub token_endpoint: String,
    /// Scopes the page asks for.
    pub scopes: Vec<String>,
    /// The redirect URI to register for the page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// The approvers' page's sign-in settings (the OpenID Provider, its
/// endpoints, the client id).
#[utoipa::path(
    get,
    path = "/v1/ui/config",
    tag = PAGE_TAG,
    responses(
        (status = 200, description = "The settings", body = UiConfig),
        (status = 503, description = "No identity provider is configured (`sign_in_not_configured`), or its discovery document cannot be read (`issuer_unavailable`)", body = crate::error::ErrorBody),
    ),
)]
async fn ui_config(State(web): State<Web>) -> Response {
    let Some(issuer) = web.settings.issuer.clone() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "sign_in_not_configured",
            "no identity provider is configured for the approvers' page",
        );
    };
    let discovery = match discovery(&web, &issuer).await {
        Ok(document) => document,
        Err(reason) => {
            tracing::warn!(
                issuer,
                reason,
                "cannot read the page's issuer discovery document"
            );
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "issuer_unavailable",
                "the identity provider's discovery document cannot be read",
            );
        }
    };
    let endpoint = |name: &str| {
        discovery
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (Some(authorization_endpoint), Some(token_endpoint)) = (
        endpoint("authorization_endpoint"),
        endpoint("token_endpoint"),
    ) else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "issuer_unavailable",
            "the identity provider does not publish an authorization and a token endpoint",
        );
    };
    let config = UiConfig {
        issuer,
        client_id: web.settings.client_id.clone(),
        authorization_endpoint,
        token_endpoint,
        scopes: SCOPES.iter().map(|scope| (*scope).to_owned()).collect(),
        redirect_uri: web.settings.redirect_uri.clone(),
    };
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        Json(config),
    )
        .into_response()
}

/// The issuer's discovery document: one of the control plane's own issuers', or fetched (and
/// reused for [`DISCOVERY_TTL`]) from `<issuer>/.well-known/openid-configuration`.
async fn discovery(web: &Web, issuer: &str) -> Result<Value, String> {
    if let Some(own) = web.app.own_issuer(issuer) {
        return Ok(own.discovery_document());
    }
    let clock = web.app.clock();
    let mut cached = web.discovery.lock().await;
    if let Some((fetched, document)) = cached.as_ref() {
        if clock.instant().saturating_duration_since(*fetched) < DISCOVERY_TTL {
            return Ok(document.clone());
        }
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let response = web
        .http
        .get(&url)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let document: Value = response.json().await.map_err(|error| error.to_string())?;
    // OpenID Connect Discovery 1.0, section 4.3: the issuer must match exactly.
    if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err("its issuer differs from the configured one".to_owned());
    }
    *cached = Some((clock.instant(), document.clone()));
    Ok(document)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_page_csp_allows_only_its_origin_and_the_issuers() {
        let csp = page_csp(&[
            "https://idp.example.com/realms/acme",
            "https://idp.example.com/realms/acme/protocol/openid-connect/token",
            "https://oauth2.example.net/token",
        ]);
        let csp = csp.to_str().unwrap();
        assert!(
            csp.contains("connect-src 'self' https://idp.example.com https://oauth2.example.net;"),
            "{csp}"
        );
        assert!(csp.contains("script-src 'self';"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe"));
        let local = page_csp(&[]);
        assert!(local.to_str().unwrap().contains("connect-src 'self';"));
    }
}
