//! The web page (the approvers' queue and the auditors' session replay), and
//! the dev issuer's browser sign-in.
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `/approvals` | the page (also `/approvals/`); `/approvals#apr_…` opens one approval |
//! | GET | `/sessions` | the same page, on its recorded-sessions view (also `/sessions/`); `/sessions#<id>` replays one |
//! | GET | `/approvals/app.js`, `app.css`, `favicon.svg` | its script, style sheet and icon |
//! | GET | `/v1/ui/config` | `{"issuer","client_id","authorization_endpoint","token_endpoint","scopes","redirect_uri"}` |
//! | GET | `/dev/authorize` | the dev issuer's sign-in form (`--dev` only) |
//! | POST | `/dev/authorize` | signs in, redirects with a one-time code (`--dev` only) |
//! | POST | `/dev/oauth/token` | exchanges a code (PKCE S256) for tokens (`--dev` only) |
//!
//! The page is static HTML, CSS and JavaScript compiled into the binary
//! (`control-plane/web/`, no build step, nothing from a CDN: it works on a
//! closed network). It signs in with the configured OpenID Provider by the
//! authorization code flow with PKCE, entirely in the browser (a public
//! client: there is no client secret to keep), and then calls the JSON API
//! with the token as a bearer token. The server never sees the code.
//! `/approvals` is the one redirect URI to register: a sign-in started on
//! `/sessions` comes back through it and the page moves itself back.
//!
//! Every page answer carries a strict Content-Security-Policy (no inline
//! script or style, `frame-ancestors 'none'`), `Referrer-Policy: no-referrer`
//! (the code is in the URL for a moment after sign-in) and
//! `Cache-Control: no-store`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::dev_issuer::{AuthorizeParams, CodeExchange, OAuthError, SignIn};
use crate::state::AppState;

/// Where the page lives; also its OAuth redirect path.
pub const PAGE_PATH: &str = crate::state::APPROVALS_PATH;
/// The page's recorded-sessions view (auditors).
pub const SESSIONS_PATH: &str = "/sessions";
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

/// The page's routes, and the dev issuer's sign-in routes when it runs.
/// Merged into [`crate::server::app`].
pub fn router(state: &AppState) -> Router<AppState> {
    router_with(state, UiSettings::from_state(state))
}

/// [`router`] with explicit sign-in settings.
pub fn router_with(state: &AppState, settings: UiSettings) -> Router<AppState> {
    let web = Web {
        app: state.clone(),
        settings,
        discovery: Arc::new(Mutex::new(None)),
        http: reqwest::Client::builder()
            .timeout(DISCOVERY_TIMEOUT)
            .build()
            .unwrap_or_default(),
    };
    let mut router = Router::new()
        .route(PAGE_PATH, get(index))
        .route("/approvals/", get(index))
        .route(SESSIONS_PATH, get(index))
        .route("/sessions/", get(index))
        .route("/approvals/app.js", get(app_js))
        .route("/approvals/app.css", get(app_css))
        .route("/approvals/favicon.svg", get(favicon))
        .route("/v1/ui/config", get(ui_config));
    if state.dev_issuer().is_some() {
        router = router
            .route("/dev/authorize", get(authorize_form).post(authorize_submit))
            .route("/dev/oauth/token", axum::routing::post(token));
    }
    router.with_state(web)
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

/// The dev sign-in form's CSP: a style sheet and a form posting to itself.
const SIGN_IN_CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Headers every HTML answer carries.
fn html_response(status: StatusCode, csp: HeaderValue, body: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                HeaderName::from_static("cross-origin-opener-policy"),
                HeaderValue::from_static("same-origin"),
            ),
            (
                HeaderName::from_static("permissions-policy"),
                HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
            ),
        ],
        body,
    )
        .into_response()
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// The issuer's discovery document: the dev issuer's own, or fetched (and
/// reused for [`DISCOVERY_TTL`]) from `<issuer>/.well-known/openid-configuration`.
async fn discovery(web: &Web, issuer: &str) -> Result<Value, String> {
    if let Some(dev) = web.app.dev_issuer() {
        if dev.issuer() == issuer {
            return Ok(dev.discovery_document());
        }
    }
    let mut cached = web.discovery.lock().await;
    if let Some((fetched, document)) = cached.as_ref() {
        if fetched.elapsed() < DISCOVERY_TTL {
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
    *cached = Some((Instant::now(), document.clone()));
    Ok(document)
}

// ---------------------------------------------------------------------------
// The dev issuer's browser sign-in.

/// The sign-in form's fields: the authorization request, carried in
/// hidden fields, and who signs in.
#[derive(Debug, Default, Deserialize)]
struct SignInForm {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scope: Option<String>,
    sub: Option<String>,
    email: Option<String>,
    groups: Option<String>,
}

impl SignInForm {
    fn params(&self) -> AuthorizeParams {
        AuthorizeParams {
            response_type: self.response_type.clone(),
            client_id: self.client_id.clone(),
            redirect_uri: self.redirect_uri.clone(),
            state: self.state.clone(),
            nonce: self.nonce.clone(),
            code_challenge: self.code_challenge.clone(),
            code_challenge_method: self.code_challenge_method.clone(),
            scope: self.scope.clone(),
        }
    }

    fn who(&self) -> SignIn {
        SignIn {
            sub: self.sub.clone().unwrap_or_default(),
            email: self.email.clone(),
            groups: self
                .groups
                .as_deref()
                .unwrap_or_default()
                .split([',', ' ', '\n', '\t'])
                .map(str::trim)
                .filter(|group| !group.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

async fn authorize_form(
    State(web): State<Web>,
    query: Result<Query<AuthorizeParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(dev) = web.app.dev_issuer() else {
        return sign_in_error("the development issuer is not running");
    };
    let Ok(Query(params)) = query else {
        return sign_in_error("the authorization request is malformed");
    };
    match dev.check_authorize(&params) {
        Ok(_) => sign_in_page(&params, None),
        Err(error) => sign_in_error(&error.to_string()),
    }
}

async fn authorize_submit(
    State(web): State<Web>,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    let Some(dev) = web.app.dev_issuer() else {
        return sign_in_error("the development issuer is not running");
    };
    let Ok(Form(form)) = form else {
        return sign_in_error("the sign-in form is malformed");
    };
    let params = form.params();
    let authorize = match dev.check_authorize(&params) {
        Ok(authorize) => authorize,
        Err(error) => return sign_in_error(&error.to_string()),
    };
    let who = form.who();
    let code = match dev.issue_code(&authorize, who.clone()) {
        Ok(code) => code,
        // The user's own typing (an empty subject, say): show the form again.
        Err(OAuthError::InvalidRequest(message)) => {
            return sign_in_page(&params, Some((&message, &form)))
        }
        Err(error) => return sign_in_error(&error.to_string()),
    };
    tracing::info!(
        sub = %crate::fields::logged(who.sub.trim()),
        client_id = %crate::fields::logged(&authorize.client_id),
        "dev issuer: signed in"
    );
    let mut location = authorize.redirect_uri;
    location.query_pairs_mut().append_pair("code", &code);
    if let Some(state) = &authorize.state {
        location.query_pairs_mut().append_pair("state", state);
    }
    match HeaderValue::from_str(location.as_str()) {
        Ok(location) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                ),
            ],
        )
            .into_response(),
        Err(_) => sign_in_error("the redirect URI cannot be used"),
    }
}

async fn token(
    State(web): State<Web>,
    form: Result<Form<CodeExchange>, FormRejection>,
) -> Response {
    let result = match (web.app.dev_issuer(), form) {
        (None, _) => Err(OAuthError::InvalidRequest(
            "the development issuer is not running".to_owned(),
        )),
        (Some(_), Err(_)) => Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded token request parameters"
                .to_owned(),
        )),
        (Some(dev), Ok(Form(request))) => dev.exchange_code(&request),
    };
    let no_store = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ];
    match result {
        Ok(tokens) => (no_store, Json(tokens)).into_response(),
        Err(error) => {
            let status = match error {
                OAuthError::Server(ref detail) => {
                    tracing::error!(detail, "dev issuer: cannot sign tokens");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::BAD_REQUEST,
            };
            (
                status,
                no_store,
                Json(json!({"error": error.code(), "error_description": error.to_string()})),
            )
                .into_response()
        }
    }
}

fn sign_in_error(message: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Sign-in error - Warden development issuer</title>\
         <link rel=\"icon\" href=\"/approvals/favicon.svg\">\
         <link rel=\"stylesheet\" href=\"/approvals/app.css\"></head>\
         <body class=\"dev-sign-in\"><main class=\"sign-in-card\">\
         <h1>Sign-in request refused</h1><p role=\"alert\" class=\"alert\">{}</p>\
         <p>Go back to the application and start again.</p></main></body></html>\n",
        escape_html(message)
    );
    html_response(
        StatusCode::BAD_REQUEST,
        HeaderValue::from_static(SIGN_IN_CSP),
        body,
    )
}

/// The dev issuer's sign-in form; `retry` is an error to show and the
/// values typed before.
fn sign_in_page(params: &AuthorizeParams, retry: Option<(&str, &SignInForm)>) -> Response {
    let hidden: String = [
        ("response_type", &params.response_type),
        ("client_id", &params.client_id),
        ("redirect_uri", &params.redirect_uri),
        ("state", &params.state),
        ("nonce", &params.nonce),
        ("code_challenge", &params.code_challenge),
        ("code_challenge_method", &params.code_challenge_method),
        ("scope", &params.scope),
    ]
    .iter()
    .filter_map(|(name, value)| {
        value.as_deref().map(|value| {
            format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                escape_html(value)
            )
        })
    })
    .collect();
    let (alert, sub, email, groups) = match retry {
        Some((message, form)) => (
            format!(
                "<p role=\"alert\" class=\"alert\">{}</p>",
                escape_html(message)
            ),
            form.sub.as_deref().unwrap_or_default(),
            form.email.as_deref().unwrap_or_default(),
            form.groups.as_deref().unwrap_or_default(),
        ),
        None => (String::new(), "", "", ""),
    };
    let client = escape_html(params.client_id.as_deref().unwrap_or_default());
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Sign in - Warden development issuer</title>\
         <link rel=\"icon\" href=\"/approvals/favicon.svg\">\
         <link rel=\"stylesheet\" href=\"/approvals/app.css\"></head>\
         <body class=\"dev-sign-in\"><main class=\"sign-in-card\">\
         <h1>Sign in</h1>\
         <p class=\"warning\">Development identity provider: anyone can sign in as anyone. \
         Never run <code>warden serve --dev</code> in production.</p>\
         <p>Signing in to <strong>{client}</strong>.</p>{alert}\
         <form method=\"post\" action=\"/dev/authorize\">{hidden}\
         <label for=\"sub\">Subject (user id)</label>\
         <input id=\"sub\" name=\"sub\" required autofocus autocomplete=\"username\" value=\"{sub}\">\
         <label for=\"email\">Email <span class=\"hint\">(optional)</span></label>\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" value=\"{email}\">\
         <label for=\"groups\">Groups <span class=\"hint\">(comma-separated)</span></label>\
         <input id=\"groups\" name=\"groups\" value=\"{groups}\">\
         <button type=\"submit\" class=\"primary\" id=\"sign-in-submit\">Sign in</button>\
         </form></main></body></html>\n",
        sub = escape_html(sub),
        email = escape_html(email),
        groups = escape_html(groups),
    );
    html_response(StatusCode::OK, HeaderValue::from_static(SIGN_IN_CSP), body)
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<img src=x onerror=\"a('b')\">&"),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

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

    #[test]
    fn groups_are_split_on_commas_and_spaces() {
        let form = SignInForm {
            sub: Some("alice".into()),
            groups: Some(" security, engineering  finance,,".into()),
            ..SignInForm::default()
        };
        assert_eq!(form.who().groups, ["security", "engineering", "finance"]);
    }
}
