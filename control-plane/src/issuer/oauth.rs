//! The authorization code flow with PKCE, as a protocol: its request and
//! answer types, the checks on an authorization request (a redirect URI on
//! the issuer's own origin, S256 only, the `openid` scope), and the
//! one-time codes ([`Codes`]), kept in the database (`one_time_grants`, as
//! the SHA-256 of the code) so that any replica can take one, once. Signing the tokens a code
//! is exchanged for is the issuer's ([`super::provider`]).
//!
//! Authorization codes are random (256 bits), live [`CODE_TTL_SECONDS`],
//! are bound to the client id, the redirect URI and the PKCE challenge, and
//! are removed on first use whatever its outcome (RFC 6749 section 4.1.2: a
//! code is used once). Redirect URIs must point at the control plane's own
//! origin (the web page) or, for `warden login` only ([`NATIVE_CLIENT_ID`]),
//! at the loopback interface (RFC 8252 section 7.3: any port, since only a
//! program on the user's own machine can listen there), so the issuer cannot
//! be used as an open redirect.
//!
//! A sign-in that asked for `offline_access` also gets a refresh token
//! ([`RefreshTokens`]): random, kept only as its SHA-256 in the database,
//! bound to the client, rotated on every use (the old one stops working), and valid
//! until [`REFRESH_TTL_SECONDS`] after the sign-in however often it is
//! rotated, so one sign-in lasts a working day and no longer.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::HS256Key;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::tokens::{check_string, MintError, TokenRequest, DEFAULT_AUDIENCE, MAX_STRING_LEN};
use crate::store::Store;

/// The client id of `warden login` at the control plane's own issuers: the
/// one public client that may use a loopback redirect URI.
pub const NATIVE_CLIENT_ID: &str = "warden-cli";
/// How long an authorization code can be exchanged, in seconds.
pub const CODE_TTL_SECONDS: u64 = 60;
/// Lifetime of the tokens the authorization code flow issues.
pub const FLOW_TOKEN_TTL_SECONDS: u64 = 3600;
/// How long after its sign-in a chain of refresh tokens ends: 12 hours, a
/// working day (an eight-hour job keeps working; the next day signs in again).
pub const REFRESH_TTL_SECONDS: u64 = 12 * 3600;
/// Longest `state`, `nonce`, `scope` or `client_id` accepted, in bytes.
pub const MAX_PARAM_LEN: usize = 512;

/// The parameters of `GET /dev/authorize` (and of the sign-in form's POST),
/// every one optional here so that a missing one gets a precise message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeParams {
    /// Must be `code`.
    pub response_type: Option<String>,
    /// The public client's id.
    pub client_id: Option<String>,
    /// Where to send the code; must be on the control plane's own origin.
    pub redirect_uri: Option<String>,
    /// Echoed back with the code; the client checks it (CSRF).
    pub state: Option<String>,
    /// Copied into the ID token.
    pub nonce: Option<String>,
    /// BASE64URL(SHA-256(code_verifier)), 43 characters.
    pub code_challenge: Option<String>,
    /// Must be `S256`.
    pub code_challenge_method: Option<String>,
    /// Requested scopes; must include `openid`.
    pub scope: Option<String>,
}

/// An authorization request that passed
/// [`Issuer::check_authorize`](crate::issuer::Issuer::check_authorize).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAuthorize {
    /// The client id.
    pub client_id: String,
    /// The redirect URI, checked to be on the issuer's origin.
    pub redirect_uri: Url,
    /// The client's `state`, if any.
    pub state: Option<String>,
    /// The client's `nonce`, if any.
    pub nonce: Option<String>,
    /// The S256 code challenge.
    pub code_challenge: String,
    /// The scopes asked for.
    pub scope: String,
}

/// Who signs in (on the dev issuer's form, or at the SAML IdP).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignIn {
    /// The `sub` claim.
    pub sub: String,
    /// The `email` claim, if given.
    pub email: Option<String>,
    /// The `groups` claim.
    pub groups: Vec<String>,
}

/// The form body of `POST /dev/oauth/token`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeExchange {
    /// Must be `authorization_code`.
    pub grant_type: Option<String>,
    /// The code from the redirect.
    pub code: Option<String>,
    /// The same redirect URI as in the authorization request.
    pub redirect_uri: Option<String>,
    /// The same client id as in the authorization request.
    pub client_id: Option<String>,
    /// The PKCE code verifier.
    pub code_verifier: Option<String>,
    /// With `grant_type=refresh_token`: the refresh token.
    pub refresh_token: Option<String>,
}

// Hand-written: the code, the verifier and the refresh token are credentials.
impl fmt::Debug for CodeExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeExchange")
            .field("grant_type", &self.grant_type)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// The answer of `POST /dev/oauth/token` (RFC 6749 section 5.1).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeTokens {
    /// Audience `warden`: what the gateway and the control plane accept.
    pub access_token: String,
    /// Audience the client id, with the client's nonce.
    pub id_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime of both tokens, in seconds.
    pub expires_in: u64,
    /// When the sign-in asked for `offline_access`: a one-time refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

// Hand-written so a token never lands in a log through `{:?}`.
impl fmt::Debug for CodeTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeTokens")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// An OAuth 2.0 error (RFC 6749 sections 4.1.2.1 and 5.2): `code()` is the
/// `error` value, the message its `error_description`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OAuthError {
    /// A parameter is missing, repeated or malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// The code is unknown, used, expired, or bound to another client,
    /// redirect URI or challenge; or the verifier does not match.
    #[error("{0}")]
    InvalidGrant(String),
    /// The grant type is neither `authorization_code` nor `refresh_token`.
    #[error("only grant_type=authorization_code and grant_type=refresh_token are supported here")]
    UnsupportedGrantType,
    /// The response type is not `code`.
    #[error("only response_type=code is supported")]
    UnsupportedResponseType,
    /// The database did not answer; try again shortly.
    #[error("sign-in is unavailable for a moment; try again in a minute")]
    TemporarilyUnavailable,
    /// Signing the tokens failed (internal; the detail is not for the client).
    #[error("internal error")]
    Server(String),
}

impl OAuthError {
    /// The RFC 6749 `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::UnsupportedResponseType => "unsupported_response_type",
            OAuthError::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthError::Server(_) => "server_error",
        }
    }
}

/// A code waiting to be exchanged, and what it is bound to (kept in the
/// database as JSON).
#[derive(Serialize, Deserialize)]
struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    scope: String,
    who: SignIn,
}

/// The codes waiting to be exchanged, in the database
/// (`one_time_grants`, kind `code:<issuer path>`), so any replica can
/// take one.
pub struct Codes {
    store: Store,
    kind: String,
}

/// What a redeemed code or refresh token was issued for.
pub struct Grant {
    who: SignIn,
    client_id: String,
    nonce: Option<String>,
    /// Whether to issue a refresh token: the sign-in asked for `offline_access`.
    pub offline: bool,
    /// When a refresh token issued for this grant stops working (seconds).
    pub session_expires_at: u64,
}

/// Checks an authorization request to `issuer`: `response_type=code`, a client id,
/// a redirect URI on the issuer's own origin, an S256 PKCE challenge and
/// the `openid` scope. The caller shows errors to the user and never
/// redirects on them, so an unchecked redirect URI is never followed.
pub fn check_authorize(
    issuer: &str,
    params: &AuthorizeParams,
) -> Result<ValidAuthorize, OAuthError> {
    let client_id = required("client_id", params.client_id.as_deref())?;
    let redirect_uri = check_redirect_uri(issuer, client_id, params.redirect_uri.as_deref())?;
    match required("response_type", params.response_type.as_deref())? {
        "code" => {}
        _ => return Err(OAuthError::UnsupportedResponseType),
    }
    let method = required(
        "code_challenge_method",
        params.code_challenge_method.as_deref(),
    )
    .map_err(|_| {
        OAuthError::InvalidRequest(
            "PKCE is required: send code_challenge and code_challenge_method=S256".to_owned(),
        )
    })?;
    if method != "S256" {
        return Err(OAuthError::InvalidRequest(
            "only code_challenge_method=S256 is supported".to_owned(),
        ));
    }
    let code_challenge = required("code_challenge", params.code_challenge.as_deref())?;
    if code_challenge.len() != 43 || !code_challenge.bytes().all(is_base64url_byte) {
        return Err(OAuthError::InvalidRequest(
            "code_challenge must be the 43-character BASE64URL of a SHA-256 digest".to_owned(),
        ));
    }
    let scope = required("scope", params.scope.as_deref())?;
    if !scope.split(' ').any(|s| s == "openid") {
        return Err(OAuthError::InvalidRequest(
            "scope must include openid".to_owned(),
        ));
    }
    Ok(ValidAuthorize {
        client_id: client_id.to_owned(),
        redirect_uri,
        state: optional("state", params.state.as_deref())?.map(str::to_owned),
        nonce: optional("nonce", params.nonce.as_deref())?.map(str::to_owned),
        code_challenge: code_challenge.to_owned(),
        scope: scope.to_owned(),
    })
}

/// A redirect URI is accepted on the issuer's own origin (scheme, host and
/// port) or, for the native client ([`NATIVE_CLIENT_ID`]), on `http`
/// loopback by IP literal with any port (RFC 8252 sections 7.3 and 8.3),
/// without credentials or a fragment.
fn check_redirect_uri(issuer: &str, client_id: &str, uri: Option<&str>) -> Result<Url, OAuthError> {
    let uri = required("redirect_uri", uri)?;
    let invalid = |why: &str| OAuthError::InvalidRequest(format!("redirect_uri {why}"));
    let parsed = Url::parse(uri).map_err(|_| invalid("is not an absolute URL"))?;
    let own = Url::parse(issuer).map_err(|_| invalid("cannot be checked"))?;
    let own_origin = parsed.origin() == own.origin() && matches!(parsed.scheme(), "http" | "https");
    let native_loopback = client_id == NATIVE_CLIENT_ID && is_loopback_redirect(&parsed);
    if !(own_origin || native_loopback) {
        return Err(invalid(
            "must be on this control plane's own origin (or, for warden-cli, on http://127.0.0.1)",
        ));
    }
    if parsed.fragment().is_some() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("must not carry a fragment or credentials"));
    }
    // The answer adds them: a second `code` or `state` would be ambiguous.
    if parsed
        .query_pairs()
        .any(|(name, _)| name == "code" || name == "state")
    {
        return Err(invalid("must not carry code or state parameters"));
    }
    Ok(parsed)
}

/// `http://127.0.0.1:<port>/…` or `http://[::1]:<port>/…`: where a native
/// client listens for its code (not `localhost`, which a hosts file or DNS
/// may send elsewhere: RFC 8252 section 8.3).
fn is_loopback_redirect(uri: &Url) -> bool {
    let Some(host) = uri.host_str() else {
        return false;
    };
    // An IPv6 host comes in brackets.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    uri.scheme() == "http"
        && host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Codes {
    /// The codes of the issuer mounted at `path`.
    pub fn new(store: Store, path: &str) -> Self {
        Codes {
            store,
            kind: format!("code:{path}"),
        }
    }

    /// Issues a one-time code for `who` at `now`, bound to the checked request.
    pub async fn issue(
        &self,
        authorize: &ValidAuthorize,
        who: SignIn,
        now: u64,
    ) -> Result<String, OAuthError> {
        let invalid = |error: MintError| OAuthError::InvalidRequest(error.to_string());
        let sub = check_string("subject", who.sub.trim()).map_err(invalid)?;
        let email = match who.email.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(email) => Some(check_string("email", email).map_err(invalid)?.to_owned()),
        };
        let mut groups = Vec::with_capacity(who.groups.len());
        for group in &who.groups {
            groups.push(
                check_string("each group", group.trim())
                    .map_err(invalid)?
                    .to_owned(),
            );
        }
        let code = new_secret();
        let issued = IssuedCode {
            client_id: authorize.client_id.clone(),
            redirect_uri: authorize.redirect_uri.as_str().to_owned(),
            code_challenge: authorize.code_challenge.clone(),
            nonce: authorize.nonce.clone(),
            scope: authorize.scope.clone(),
            who: SignIn {
                sub: sub.to_owned(),
                email,
                groups,
            },
        };
        put(
            &self.store,
            &code,
            &self.kind,
            &issued,
            now.saturating_add(CODE_TTL_SECONDS),
            now,
        )
        .await?;
        Ok(code)
    }

    /// Takes the code `request` presents at `now`, once its parameters
    /// check out: the code is removed as soon as it is presented, so a second
    /// try fails even if the first one did. What it was issued for, if the
    /// request matches it (client, redirect URI, PKCE verifier) and it has
    /// not expired.
    pub async fn redeem(&self, request: &CodeExchange, now: u64) -> Result<Grant, OAuthError> {
        let code = required("code", request.code.as_deref())?;
        let client_id = required("client_id", request.client_id.as_deref())?;
        let redirect_uri = required("redirect_uri", request.redirect_uri.as_deref())?;
        let verifier = required("code_verifier", request.code_verifier.as_deref())?;
        // RFC 7636 section 4.1: 43 to 128 unreserved characters.
        if !(43..=128).contains(&verifier.len())
            || !verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(OAuthError::InvalidRequest(
                "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~".to_owned(),
            ));
        }
        let grant = |why: &str| OAuthError::InvalidGrant(why.to_owned());
        let issued: IssuedCode = match take(&self.store, code, &self.kind).await? {
            None => return Err(grant("the code is unknown or was already used")),
            Some((_, expires_at)) if expires_at <= now => {
                return Err(grant("the code has expired"))
            }
            Some((issued, _)) => issued,
        };
        if issued.client_id != client_id {
            return Err(grant("the code was issued to another client"));
        }
        if issued.redirect_uri != redirect_uri {
            return Err(grant(
                "redirect_uri differs from the authorization request's",
            ));
        }
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        // Without an early exit: timing does not tell how much matched.
        if !bool::from(computed.as_bytes().ct_eq(issued.code_challenge.as_bytes())) {
            return Err(grant("code_verifier does not match the code challenge"));
        }
        Ok(Grant {
            who: issued.who,
            client_id: client_id.to_owned(),
            nonce: issued.nonce,
            offline: issued.scope.split(' ').any(|s| s == "offline_access"),
            session_expires_at: now.saturating_add(REFRESH_TTL_SECONDS),
        })
    }
}

/// A live refresh token: who it signs in, for which client (kept in the
/// database as JSON, until the sign-in's end).
#[derive(Serialize, Deserialize)]
struct IssuedRefresh {
    who: SignIn,
    client_id: String,
}

/// The live refresh tokens, in the database (`one_time_grants`, kind
/// `refresh:<issuer path>`, by the SHA-256 of the token), so any replica
/// can rotate one and a restart keeps them.
pub struct RefreshTokens {
    store: Store,
    kind: String,
}

impl RefreshTokens {
    /// The refresh tokens of the issuer mounted at `path`.
    pub fn new(store: Store, path: &str) -> Self {
        RefreshTokens {
            store,
            kind: format!("refresh:{path}"),
        }
    }

    /// A new refresh token for `grant`, valid until its session ends; `None`
    /// when the grant did not ask for one or its session is over.
    pub async fn issue(&self, grant: &Grant, now: u64) -> Result<Option<String>, OAuthError> {
        if !grant.offline || grant.session_expires_at <= now {
            return Ok(None);
        }
        let token = new_secret();
        let issued = IssuedRefresh {
            who: grant.who.clone(),
            client_id: grant.client_id.clone(),
        };
        put(
            &self.store,
            &token,
            &self.kind,
            &issued,
            grant.session_expires_at,
            now,
        )
        .await?;
        Ok(Some(token))
    }

    /// Takes the refresh token `request` presents at `now`: it is removed
    /// whatever the outcome (rotation: the answer carries its successor).
    pub async fn redeem(&self, request: &CodeExchange, now: u64) -> Result<Grant, OAuthError> {
        let token = required("refresh_token", request.refresh_token.as_deref())?;
        let client_id = required("client_id", request.client_id.as_deref())?;
        let grant = |why: &str| OAuthError::InvalidGrant(why.to_owned());
        let (issued, expires_at): (IssuedRefresh, u64) =
            match take(&self.store, token, &self.kind).await? {
                None => return Err(grant("the refresh token is unknown, used or revoked")),
                Some((_, expires_at)) if expires_at <= now => {
                    return Err(grant("the sign-in has expired; sign in again"))
                }
                Some(found) => found,
            };
        if issued.client_id != client_id {
            return Err(grant("the refresh token was issued to another client"));
        }
        Ok(Grant {
            who: issued.who,
            client_id: issued.client_id,
            nonce: None,
            offline: true,
            session_expires_at: expires_at,
        })
    }
}

impl RefreshTokens {
    /// Ends a refresh token (RFC 7009: `warden logout`): it is taken from
    /// the database whoever presents it (holding it is what lets one use
    /// it). Unknown tokens are not an error.
    pub async fn revoke(&self, token: &str) -> Result<(), OAuthError> {
        self.store
            .take_grant(&stored_hash(token), &self.kind)
            .await
            .map_err(store_failed)?;
        Ok(())
    }
}

/// 256 bits from jwt-simple's CSPRNG (an HMAC key is exactly random bytes):
/// a code or a refresh token.
fn new_secret() -> String {
    URL_SAFE_NO_PAD.encode(HS256Key::generate().to_bytes())
}

/// What a secret is stored under: its SHA-256, so the database holds no
/// usable code or token.
fn stored_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn store_failed(error: crate::store::StoreError) -> OAuthError {
    tracing::error!(%error, "issuer: the database failed");
    OAuthError::TemporarilyUnavailable
}

fn seconds_to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

async fn put<T: Serialize>(
    store: &Store,
    secret: &str,
    kind: &str,
    value: &T,
    expires_at: u64,
    now: u64,
) -> Result<(), OAuthError> {
    let payload =
        serde_json::to_string(value).map_err(|error| OAuthError::Server(error.to_string()))?;
    store
        .put_grant(
            &stored_hash(secret),
            kind,
            &payload,
            seconds_to_ms(expires_at),
            seconds_to_ms(now),
            // Only a signed-in person gets a code or a refresh token.
            None,
        )
        .await
        .map_err(store_failed)?;
    Ok(())
}

/// Takes what `secret` was stored with and its expiry (seconds).
async fn take<T: for<'de> Deserialize<'de>>(
    store: &Store,
    secret: &str,
    kind: &str,
) -> Result<Option<(T, u64)>, OAuthError> {
    let Some((payload, expires_ms)) = store
        .take_grant(&stored_hash(secret), kind)
        .await
        .map_err(store_failed)?
    else {
        return Ok(None);
    };
    let value =
        serde_json::from_str(&payload).map_err(|error| OAuthError::Server(error.to_string()))?;
    Ok(Some((value, u64::try_from(expires_ms / 1000).unwrap_or(0))))
}

impl Grant {
    /// What to mint for it: the access token (audience `warden`) and the ID
    /// token (audience the client id, with its nonce), both naming the
    /// client in `azp` and living [`FLOW_TOKEN_TTL_SECONDS`].
    pub fn token_requests(&self) -> (TokenRequest, TokenRequest) {
        let Grant {
            who,
            client_id,
            nonce,
            ..
        } = self;
        let base = TokenRequest {
            sub: who.sub.clone(),
            groups: who.groups.clone(),
            email: who.email.clone(),
            ttl_seconds: Some(FLOW_TOKEN_TTL_SECONDS),
            ..TokenRequest::default()
        };
        let mut azp = Map::new();
        azp.insert("azp".into(), Value::from(client_id.as_str()));
        let access = TokenRequest {
            audience: Some(DEFAULT_AUDIENCE.to_owned()),
            claims: Some(azp.clone()),
            ..base.clone()
        };
        let mut id_claims = azp;
        if let Some(nonce) = nonce {
            id_claims.insert("nonce".into(), Value::from(nonce.as_str()));
        }
        let id = TokenRequest {
            audience: Some(client_id.clone()),
            claims: Some(id_claims),
            ..base
        };
        (access, id)
    }
}

fn required<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, OAuthError> {
    match value {
        Some(value) if !value.is_empty() => {
            optional(name, Some(value))?;
            Ok(value)
        }
        _ => Err(OAuthError::InvalidRequest(format!("{name} is required"))),
    }
}

fn optional<'a>(name: &str, value: Option<&'a str>) -> Result<Option<&'a str>, OAuthError> {
    match value {
        Some(value) if value.len() > MAX_PARAM_LEN && name != "redirect_uri" => Err(
            OAuthError::InvalidRequest(format!("{name} is longer than {MAX_PARAM_LEN} bytes")),
        ),
        Some(value) if value.len() > MAX_STRING_LEN => Err(OAuthError::InvalidRequest(format!(
            "{name} is longer than {MAX_STRING_LEN} bytes"
        ))),
        Some("") | None => Ok(None),
        Some(value) => Ok(Some(value)),
    }
}

fn is_base64url_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}
