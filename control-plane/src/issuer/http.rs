//! An issuer over HTTP. Every issuer serves, under its path (`/dev` or `/idp`):
//!
//! | method | path | |
//! | --- | --- | --- |
//! | GET | `<path>/.well-known/openid-configuration` | the discovery document |
//! | GET | `<path>/jwks.json` | the public keys |
//! | POST | `<path>/oauth/token` | exchanges a code (PKCE S256) or a refresh token for tokens |
//! | POST | `<path>/oauth/revoke` | ends a refresh token (RFC 7009; `warden logout`) |
//!
//! and the dev issuer also:
//!
//! | method | path | |
//! | --- | --- | --- |
//! | POST | `/dev/token` | mints a token from a JSON [`TokenRequest`] |
//! | GET | `/dev/authorize` | the sign-in form (a subject, an email and groups: it is a development IdP) |
//! | POST | `/dev/authorize` | signs in, redirects with a one-time code |
//!
//! The SAML issuer's `/idp/authorize` is [`crate::saml`]'s: it sends the
//! browser to the company's IdP.
//!
//! The handlers hold the issuer itself (`State<Arc<Issuer>>`), not the
//! server's state: [`routes`] exists only when the server runs with `--dev`
//! or SAML. Errors of `POST /dev/token` are the API's
//! ([`crate::error::ApiError`]); the code flow answers OAuth errors (RFC
//! 6749 section 5.2) and HTML pages.

use std::sync::Arc;

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use reqwest::Url;
use serde::Deserialize;
use serde_json::{json, Value};

use super::oauth::{AuthorizeParams, CodeExchange, OAuthError, SignIn};
use super::provider::{Issuer, IssuerKind};
use super::tokens::{MintError, TokenRequest, TokenResponse};
use crate::error::ApiError;
use crate::fields::logged;
use crate::html::html_response;

/// The dev sign-in form's CSP: a style sheet and a form posting to itself.
const SIGN_IN_CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// An issuer's routes, for a router of any state (they carry their own).
pub fn routes<S>(issuer: Arc<Issuer>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let path = issuer.kind().path();
    let router = Router::new()
        .route(
            &format!("{path}/.well-known/openid-configuration"),
            get(discovery),
        )
        .route(&format!("{path}/jwks.json"), get(jwks))
        .route(&format!("{path}/oauth/token"), post(oauth_token))
        .route(&format!("{path}/oauth/revoke"), post(oauth_revoke));
    let router = match issuer.kind() {
        IssuerKind::Dev => router
            .route("/dev/token", post(mint))
            .route("/dev/authorize", get(authorize_form).post(authorize_submit)),
        IssuerKind::Saml => router,
    };
    router.with_state(issuer)
}

async fn discovery(State(dev): State<Arc<Issuer>>) -> Json<Value> {
    Json(dev.discovery_document())
}

async fn jwks(State(dev): State<Arc<Issuer>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        )],
        Json(dev.jwks().clone()),
    )
        .into_response()
}

async fn mint(
    State(dev): State<Arc<Issuer>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    // serde would also accept a struct written as a JSON array; insist on an object.
    if !body.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".to_owned(),
        ));
    }
    let request: TokenRequest = serde_json::from_value(body)
        .map_err(|error| ApiError::BadRequest(format!("invalid token request: {error}")))?;
    let token = dev.mint(&request).map_err(|error| match error {
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
    State(dev): State<Arc<Issuer>>,
    query: Result<Query<AuthorizeParams>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = query else {
        return sign_in_error("the authorization request is malformed");
    };
    match dev.check_authorize(&params) {
        Ok(_) => sign_in_page(&params, None),
        Err(error) => sign_in_error(&error.to_string()),
    }
}

async fn authorize_submit(
    State(dev): State<Arc<Issuer>>,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return sign_in_error("the sign-in form is malformed");
    };
    let params = form.params();
    let authorize = match dev.check_authorize(&params) {
        Ok(authorize) => authorize,
        Err(error) => return sign_in_error(&error.to_string()),
    };
    let who = form.who();
    let code = match dev.issue_code(&authorize, who.clone()).await {
        Ok(code) => code,
        // The user's own typing (an empty subject, say): show the form again.
        Err(OAuthError::InvalidRequest(message)) => {
            return sign_in_page(&params, Some((&message, &form)))
        }
        Err(error) => return sign_in_error(&error.to_string()),
    };
    tracing::info!(
        sub = %logged(who.sub.trim()),
        client_id = %logged(&authorize.client_id),
        "dev issuer: signed in"
    );
    redirect_with_code(authorize.redirect_uri, &code, authorize.state.as_deref())
        .unwrap_or_else(|| sign_in_error("the redirect URI cannot be used"))
}

/// The 303 that ends a sign-in: back to the client's checked redirect URI
/// with the code and the client's state; `None` if it cannot be a header.
pub fn redirect_with_code(mut location: Url, code: &str, state: Option<&str>) -> Option<Response> {
    location.query_pairs_mut().append_pair("code", code);
    if let Some(state) = state {
        location.query_pairs_mut().append_pair("state", state);
    }
    see_other(location.as_str())
}

/// A 303 to `location` that no cache keeps and that sends no referrer (the
/// URL may carry a code or a SAML request); `None` if it cannot be a header.
pub fn see_other(location: &str) -> Option<Response> {
    let location = HeaderValue::from_str(location).ok()?;
    Some(
        (
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
    )
}

async fn oauth_token(
    State(dev): State<Arc<Issuer>>,
    form: Result<Form<CodeExchange>, FormRejection>,
) -> Response {
    let result = match form {
        Err(_) => Err(OAuthError::InvalidRequest(
            "the body must be application/x-www-form-urlencoded token request parameters"
                .to_owned(),
        )),
        Ok(Form(request)) => dev.token(&request).await,
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
                    tracing::error!(detail, issuer = dev.issuer(), "cannot sign tokens");
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

/// The form body of `POST <path>/oauth/revoke` (RFC 7009 section 2.1).
#[derive(Deserialize)]
struct Revocation {
    token: Option<String>,
}

async fn oauth_revoke(
    State(issuer): State<Arc<Issuer>>,
    form: Result<Form<Revocation>, FormRejection>,
) -> Response {
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    let token =
        match form {
            Ok(Form(Revocation { token: Some(token) })) if !token.is_empty() => token,
            _ => return (
                StatusCode::BAD_REQUEST,
                no_store,
                Json(json!({"error": "invalid_request", "error_description": "token is required"})),
            )
                .into_response(),
        };
    match issuer.revoke(&token).await {
        // RFC 7009 section 2.2: 200 whether or not the token was known.
        Ok(()) => (StatusCode::OK, no_store).into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            no_store,
            Json(json!({"error": error.code(), "error_description": error.to_string()})),
        )
            .into_response(),
    }
}

/// The page a refused sign-in request ends on; `message` is escaped.
pub fn sign_in_error(message: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Sign-in error - Warden</title>\
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
    fn groups_are_split_on_commas_and_spaces() {
        let form = SignInForm {
            sub: Some("alice".into()),
            groups: Some(" security, engineering  finance,,".into()),
            ..SignInForm::default()
        };
        assert_eq!(form.who().groups, ["security", "engineering", "finance"]);
    }
}
