//! The OAuth 2.0 / OpenID Connect client side of `warden login`: the
//! discovery document, the authorization code grant with PKCE (S256) and a
//! loopback redirect (RFC 8252), the device authorization grant (RFC 8628),
//! refreshing, and revocation (RFC 7009).
//!
//! Written over reqwest and serde rather than the `oauth2` or
//! `openidconnect` crates: `oauth2` has no discovery, no loopback listener
//! and its own `chrono` and `url` stack, and its reqwest feature turns on
//! TLS backends this workspace does not build; `openidconnect` adds a
//! second JOSE/crypto stack for ID-token checks the CLI has no use for (the
//! gateway verifies the access token). What is needed here is a few form
//! POSTs and one HTTP request served on loopback.
//!
//! Tokens never reach a log or an error message: errors carry the IdP's
//! `error` code and description only.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Largest answer read from the IdP.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Largest request head read on the loopback listener.
const MAX_REDIRECT_BYTES: usize = 16 * 1024;
/// The device grant's polling interval when the IdP names none (RFC 8628 3.2).
const DEFAULT_DEVICE_INTERVAL: u64 = 5;
/// RFC 8628 3.5: `slow_down` adds five seconds to the interval.
const SLOW_DOWN_STEP: u64 = 5;
const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The parts of the discovery document the CLI uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    pub device_authorization_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
}

/// A token endpoint's successful answer.
#[derive(Clone, Deserialize)]
pub struct TokenAnswer {
    pub access_token: String,
    #[serde(default)]
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
}

/// An OAuth error answer (RFC 6749 5.2).
#[derive(Debug, Clone, Deserialize)]
struct ErrorAnswer {
    error: String,
    error_description: Option<String>,
}

/// What the token request asks for besides the grant.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub client_id: String,
    pub scope: String,
    pub resources: Vec<String>,
    pub audience: Option<String>,
}

impl Request {
    fn extra_params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        for resource in &self.resources {
            params.push(("resource", resource.clone()));
        }
        if let Some(audience) = &self.audience {
            params.push(("audience", audience.clone()));
        }
        params
    }
}

/// An HTTP client for the IdP: bounded in time, no redirects followed (an
/// endpoint that redirects a token POST is misconfigured or hostile).
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Refuses an issuer that tokens would travel to in clear text: `https://`,
/// or `http://` on a loopback address only (a local test IdP).
pub fn check_issuer_url(issuer: &str) -> Result<(), String> {
    let url =
        reqwest::Url::parse(issuer).map_err(|e| format!("issuer {issuer:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url.host_str().unwrap_or_default()) => Ok(()),
        _ => Err(format!(
            "issuer {issuer:?} must be an https:// URL (http:// only on 127.0.0.1, [::1] or localhost)"
        )),
    }
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "[::1]" | "localhost")
}

/// Reads `<issuer>/.well-known/openid-configuration` and checks that it
/// names the same issuer (an IdP mix-up otherwise).
pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovery, String> {
    check_issuer_url(issuer)?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let response = http.get(&url).send().await.map_err(|e| {
        format!(
            "cannot reach the IdP's discovery document {url}: {}",
            with_causes(&e)
        )
    })?;
    let status = response.status();
    let body = bounded_body(response).await?;
    if !status.is_success() {
        return Err(format!(
            "the IdP's discovery document {url} answered {status}"
        ));
    }
    let discovery: Discovery = serde_json::from_slice(&body)
        .map_err(|e| format!("the IdP's discovery document {url} does not parse: {e}"))?;
    if discovery.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(format!(
            "the discovery document at {url} names the issuer {:?}, not {issuer:?}",
            discovery.issuer
        ));
    }
    Ok(discovery)
}

async fn bounded_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the IdP's answer broke off: {e}"))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err("the IdP's answer is larger than 1 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A token endpoint's answer: tokens, or the OAuth error code and text.
enum TokenOutcome {
    Tokens(TokenAnswer),
    Refused(ErrorAnswer),
}

async fn token_request(
    http: &reqwest::Client,
    token_endpoint: &str,
    form: &[(&str, String)],
) -> Result<TokenOutcome, String> {
    let response = http
        .post(token_endpoint)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(|e| {
            format!(
                "cannot reach the token endpoint {token_endpoint}: {}",
                with_causes(&e)
            )
        })?;
    let status = response.status();
    let body = bounded_body(response).await?;
    if status.is_success() {
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| format!("the token endpoint's answer does not parse: {e}"))?;
        if !answer.token_type.is_empty() && !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "the IdP issued a {:?} token; only bearer tokens are supported",
                answer.token_type
            ));
        }
        return Ok(TokenOutcome::Tokens(answer));
    }
    match serde_json::from_slice::<ErrorAnswer>(&body) {
        Ok(error) => Ok(TokenOutcome::Refused(error)),
        Err(_) => Err(format!("the token endpoint answered {status}")),
    }
}

fn refused(error: &ErrorAnswer) -> String {
    match &error.error_description {
        Some(text) => format!(
            "the IdP refused: {} ({})",
            error.error,
            crate::fields::logged(text)
        ),
        None => format!("the IdP refused: {}", error.error),
    }
}

// ---------------------------------------------------------------------------
// Authorization code with PKCE and a loopback redirect

/// A PKCE verifier and its S256 challenge (RFC 7636).
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

/// 32 random bytes, base64url: a PKCE verifier of 43 characters, or a `state`.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

impl Pkce {
    pub fn new() -> Self {
        let verifier = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// The loopback listener the browser is redirected to, on an ephemeral port.
pub struct LoopbackRedirect {
    listener: TcpListener,
    pub redirect_uri: String,
}

impl LoopbackRedirect {
    /// Listens on 127.0.0.1 (never every interface) on a port the kernel picks.
    pub async fn bind() -> Result<Self, String> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1 for the sign-in redirect: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot read the redirect listener's port: {e}"))?
            .port();
        Ok(LoopbackRedirect {
            listener,
            redirect_uri: format!("http://127.0.0.1:{port}/callback"),
        })
    }

    /// Waits for the browser's redirect to `/callback` and answers it with a
    /// short page; returns the authorization code once `state` matched.
    /// Other paths (a browser's `/favicon.ico`) get 404 and do not end the
    /// wait; the first `/callback` does, whatever it holds, and the listener
    /// is closed when this returns.
    pub async fn code(self, expected_state: &str) -> Result<String, String> {
        loop {
            let (mut stream, _) = self
                .listener
                .accept()
                .await
                .map_err(|e| format!("the redirect listener failed: {e}"))?;
            let Some(target) = read_request_target(&mut stream).await else {
                continue;
            };
            let url = match reqwest::Url::parse(&format!("http://127.0.0.1{target}")) {
                Ok(url) if url.path() == "/callback" => url,
                _ => {
                    let _ = respond(&mut stream, "404 Not Found", "Not found.").await;
                    continue;
                }
            };
            let param = |name: &str| {
                url.query_pairs()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| value.into_owned())
            };
            let outcome = if param("state").as_deref() != Some(expected_state) {
                // Not the answer to our request: a forged or stale redirect.
                Err("the sign-in redirect's `state` does not match this login; nothing was accepted".to_owned())
            } else if let Some(error) = param("error") {
                let description = param("error_description")
                    .map(|d| format!(" ({})", crate::fields::logged(&d)))
                    .unwrap_or_default();
                Err(format!(
                    "the IdP refused the sign-in: {}{description}",
                    crate::fields::logged(&error)
                ))
            } else {
                param("code").ok_or_else(|| "the sign-in redirect carries no code".to_owned())
            };
            let page = match &outcome {
                Ok(_) => "Signed in. You can close this window and return to the terminal.",
                Err(_) => "Sign-in failed. See the terminal for the reason.",
            };
            let status = if outcome.is_ok() {
                "200 OK"
            } else {
                "400 Bad Request"
            };
            let _ = respond(&mut stream, status, page).await;
            return outcome;
        }
    }
}

/// The request target of an HTTP/1 `GET`, or `None` for anything else.
async fn read_request_target(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REDIRECT_BYTES {
            let n = stream.read(&mut buffer).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..n]);
        }
        Some(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()??;
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    (method == "GET" && target.starts_with('/')).then(|| target.to_owned())
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    text: &str,
) -> std::io::Result<()> {
    let body = format!("<!doctype html><meta charset=utf-8><title>Warden</title><p>{text}</p>");
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nreferrer-policy: no-referrer\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// The URL the person opens to sign in.
pub fn authorization_url(
    discovery: &Discovery,
    request: &Request,
    redirect_uri: &str,
    state: &str,
    pkce: &Pkce,
) -> Result<String, String> {
    let endpoint = discovery
        .authorization_endpoint
        .as_deref()
        .ok_or("the IdP has no authorization endpoint: use `warden login --device`")?;
    if !discovery.code_challenge_methods_supported.is_empty()
        && !discovery
            .code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    {
        return Err("the IdP does not support PKCE with S256".into());
    }
    let mut url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("the IdP's authorization endpoint is not a URL: {e}"))?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &request.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &request.scope)
            .append_pair("state", state)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        for (name, value) in request.extra_params() {
            query.append_pair(name, &value);
        }
    }
    Ok(url.into())
}

/// Exchanges the authorization code for tokens.
pub async fn redeem_code(
    http: &reqwest::Client,
    discovery: &Discovery,
    request: &Request,
    code: String,
    redirect_uri: &str,
    pkce: &Pkce,
) -> Result<TokenAnswer, String> {
    let mut form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code),
        ("redirect_uri", redirect_uri.to_owned()),
        ("client_id", request.client_id.clone()),
        ("code_verifier", pkce.verifier.clone()),
    ];
    form.extend(request.extra_params());
    match token_request(http, &discovery.token_endpoint, &form).await? {
        TokenOutcome::Tokens(tokens) => Ok(tokens),
        TokenOutcome::Refused(error) => Err(refused(&error)),
    }
}

// ---------------------------------------------------------------------------
// Device authorization grant

/// The device authorization endpoint's answer (RFC 8628 3.2).
#[derive(Deserialize)]
pub struct DeviceAuthorization {
    device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    pub interval: Option<u64>,
}

/// Asks the IdP for a device code and the user code to show.
pub async fn start_device(
    http: &reqwest::Client,
    discovery: &Discovery,
    request: &Request,
) -> Result<DeviceAuthorization, String> {
    let endpoint = discovery
        .device_authorization_endpoint
        .as_deref()
        .ok_or("the IdP has no device authorization endpoint: log in without --device")?;
    let mut form = vec![
        ("client_id", request.client_id.clone()),
        ("scope", request.scope.clone()),
    ];
    form.extend(request.extra_params());
    let response = http.post(endpoint).form(&form).send().await.map_err(|e| {
        format!(
            "cannot reach the device authorization endpoint {endpoint}: {}",
            with_causes(&e)
        )
    })?;
    let status = response.status();
    let body = bounded_body(response).await?;
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorAnswer>(&body) {
            Ok(error) => refused(&error),
            Err(_) => format!("the device authorization endpoint answered {status}"),
        });
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("the device authorization answer does not parse: {e}"))
}

/// Polls the token endpoint until the person approved the device (tokens),
/// denied it, or the code expired; honours `interval` and `slow_down`.
pub async fn poll_device(
    http: &reqwest::Client,
    discovery: &Discovery,
    request: &Request,
    device: &DeviceAuthorization,
) -> Result<TokenAnswer, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(device.expires_in);
    let mut interval = device.interval.unwrap_or(DEFAULT_DEVICE_INTERVAL).max(1);
    let form = [
        ("grant_type", DEVICE_CODE_GRANT.to_owned()),
        ("device_code", device.device_code.clone()),
        ("client_id", request.client_id.clone()),
    ];
    loop {
        let next = tokio::time::Instant::now() + Duration::from_secs(interval);
        if next > deadline {
            return Err("the device code expired before the sign-in was completed: run `warden login --device` again".into());
        }
        // RFC 8628 3.5: wait `interval` seconds between requests.
        tokio::time::sleep_until(next).await;
        match token_request(http, &discovery.token_endpoint, &form).await? {
            TokenOutcome::Tokens(tokens) => return Ok(tokens),
            TokenOutcome::Refused(error) => match error.error.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += SLOW_DOWN_STEP,
                "access_denied" => return Err("the sign-in was denied on the verification page".into()),
                "expired_token" => {
                    return Err("the device code expired before the sign-in was completed: run `warden login --device` again".into())
                }
                _ => return Err(refused(&error)),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Refresh and revocation

/// Why a refresh did not give tokens.
#[derive(Debug)]
pub enum RefreshError {
    /// The IdP refused the refresh token (expired, revoked, reused): log in again.
    Refused(String),
    /// The IdP could not be asked.
    Unavailable(String),
}

/// Trades the refresh token for new tokens (RFC 6749 6).
pub async fn refresh(
    http: &reqwest::Client,
    discovery: &Discovery,
    request: &Request,
    refresh_token: &str,
) -> Result<TokenAnswer, RefreshError> {
    let mut form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.to_owned()),
        ("client_id", request.client_id.clone()),
    ];
    form.extend(request.extra_params());
    match token_request(http, &discovery.token_endpoint, &form).await {
        Ok(TokenOutcome::Tokens(tokens)) => Ok(tokens),
        Ok(TokenOutcome::Refused(error)) => Err(RefreshError::Refused(refused(&error))),
        Err(error) => Err(RefreshError::Unavailable(error)),
    }
}

/// Revokes a refresh token at the IdP's revocation endpoint (RFC 7009).
pub async fn revoke_refresh_token(
    http: &reqwest::Client,
    endpoint: &str,
    client_id: &str,
    refresh_token: &str,
) -> Result<(), String> {
    let form = [
        ("token", refresh_token),
        ("token_type_hint", "refresh_token"),
        ("client_id", client_id),
    ];
    let response = http.post(endpoint).form(&form).send().await.map_err(|e| {
        format!(
            "cannot reach the revocation endpoint {endpoint}: {}",
            with_causes(&e)
        )
    })?;
    let status = response.status();
    // RFC 7009 2.2: 200 also for a token that was already invalid.
    if status.is_success() {
        return Ok(());
    }
    let body = bounded_body(response).await.unwrap_or_default();
    Err(match serde_json::from_slice::<ErrorAnswer>(&body) {
        Ok(error) => refused(&error),
        Err(_) => format!("the revocation endpoint answered {status}"),
    })
}

/// An error with its causes (`error sending request: ... : invalid peer
/// certificate: UnknownIssuer`): reqwest's own message stops at the first
/// line, which says nothing about why.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let pkce = Pkce::new();
        assert_eq!(pkce.verifier.len(), 43);
        assert_eq!(
            pkce.challenge,
            URL_SAFE_NO_PAD.encode(Sha256::digest(pkce.verifier.as_bytes()))
        );
        assert_ne!(Pkce::new().verifier, pkce.verifier);
    }

    #[test]
    fn issuers_in_clear_text_only_on_loopback() {
        assert!(check_issuer_url("https://login.example.com").is_ok());
        assert!(check_issuer_url("http://127.0.0.1:9000").is_ok());
        assert!(check_issuer_url("http://localhost:9000/realms/x").is_ok());
        assert!(check_issuer_url("http://login.example.com").is_err());
        assert!(check_issuer_url("http://127.0.0.1.evil.example").is_err());
        assert!(check_issuer_url("ftp://127.0.0.1").is_err());
        assert!(check_issuer_url("not a url").is_err());
    }

    #[test]
    fn authorization_url_carries_pkce_state_and_resource() {
        let discovery = Discovery {
            issuer: "https://idp".into(),
            authorization_endpoint: Some("https://idp/auth?tenant=a".into()),
            token_endpoint: "https://idp/token".into(),
            device_authorization_endpoint: None,
            revocation_endpoint: None,
            code_challenge_methods_supported: vec!["S256".into()],
        };
        let request = Request {
            client_id: "cli".into(),
            scope: "openid offline_access".into(),
            resources: vec!["urn:r".into()],
            audience: None,
        };
        let pkce = Pkce::new();
        let url = authorization_url(
            &discovery,
            &request,
            "http://127.0.0.1:5/callback",
            "st",
            &pkce,
        )
        .unwrap();
        let url = reqwest::Url::parse(&url).unwrap();
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("tenant"), Some("a"));
        assert_eq!(get("code_challenge_method"), Some("S256"));
        assert_eq!(get("code_challenge"), Some(pkce.challenge.as_str()));
        assert_eq!(get("state"), Some("st"));
        assert_eq!(get("resource"), Some("urn:r"));
        assert_eq!(get("redirect_uri"), Some("http://127.0.0.1:5/callback"));
        assert!(!url.as_str().contains(&pkce.verifier));

        let plain_only = Discovery {
            code_challenge_methods_supported: vec!["plain".into()],
            ..discovery
        };
        assert!(authorization_url(&plain_only, &request, "x", "st", &pkce).is_err());
    }

    async fn redirect(uri: &str, path: &str) -> String {
        let port = reqwest::Url::parse(uri).unwrap().port().unwrap();
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn loopback_takes_the_code_only_with_the_state() {
        let listener = LoopbackRedirect::bind().await.unwrap();
        let uri = listener.redirect_uri.clone();
        assert!(uri.starts_with("http://127.0.0.1:") && uri.ends_with("/callback"));
        let waiting = tokio::spawn(listener.code("good-state"));
        assert!(redirect(&uri, "/favicon.ico")
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(redirect(&uri, "/callback?code=abc&state=good-state")
            .await
            .starts_with("HTTP/1.1 200"));
        assert_eq!(waiting.await.unwrap().unwrap(), "abc");

        let listener = LoopbackRedirect::bind().await.unwrap();
        let uri = listener.redirect_uri.clone();
        let waiting = tokio::spawn(listener.code("good-state"));
        assert!(redirect(&uri, "/callback?code=abc&state=forged")
            .await
            .starts_with("HTTP/1.1 400"));
        assert!(waiting.await.unwrap().unwrap_err().contains("state"));
        // One redirect served, then the port is closed.
        assert!(tokio::net::TcpStream::connect((
            "127.0.0.1",
            reqwest::Url::parse(&uri).unwrap().port().unwrap()
        ))
        .await
        .is_err());
    }
}
