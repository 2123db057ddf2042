//! A person's own credentials from the company IdP: `warden login`,
//! `warden access-token`, `warden logout` and `warden whoami`.
//!
//! ```text
//! warden login  [--issuer URL] [--client-id ID] [--scope S] [--resource R]… [--audience A]
//!               [--device] [--no-browser] [--server URL]
//! warden access-token [--issuer URL] [--client-id ID]
//! warden logout       [--issuer URL] [--client-id ID]
//! warden whoami       [--issuer URL] [--client-id ID] [--server URL] [--json]
//! ```
//!
//! `login` signs in with the authorization code grant, PKCE (S256) and a
//! loopback redirect, or with `--device` the device authorization grant
//! (both in [`crate::oidc_client`]), and keeps the tokens in
//! [`crate::token_store`]. It prints no token. Without `--issuer` and
//! `--client-id` (or `WARDEN_ISSUER`, `WARDEN_CLIENT_ID`), it asks the
//! control plane (`GET /v1/login`).
//!
//! `access-token` prints a token valid for at least [`REFRESH_MARGIN`] (or a
//! quarter of a short token's lifetime) on stdout and nothing else, so
//! `OPENAI_API_KEY=$(warden access-token)` works; it refreshes first when
//! needed, under a lock (refresh tokens rotate). The other verbs find the
//! login the same way: by issuer and client when given, else the only one
//! stored.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use clap::Args;
use serde_json::Value;

use crate::client::DEFAULT_SERVER;
use crate::oidc_client::{self, Discovery, RefreshError, Request, TokenAnswer};
use crate::state::LoginSettings;
use crate::token_store::{self, StoredLogin};

/// `warden access-token` refreshes a token that expires within this many
/// seconds (or within a quarter of its lifetime, when that is shorter).
pub const REFRESH_MARGIN: u64 = 60;

/// Scopes asked for when `--scope` is not given: an ID, an email, and a
/// refresh token.
pub const DEFAULT_SCOPE: &str = "openid email offline_access";

/// Which stored login a verb means.
#[derive(Debug, Clone, Args)]
pub struct LoginSelector {
    /// The IdP (OIDC issuer URL) [default: the only stored login].
    #[arg(long, env = "WARDEN_ISSUER")]
    pub issuer: Option<String>,

    /// The OAuth client id the CLI is registered as at the IdP (a public client).
    #[arg(long, env = "WARDEN_CLIENT_ID")]
    pub client_id: Option<String>,
}

/// `warden login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Issuer and client.
    #[command(flatten)]
    pub selector: LoginSelector,

    /// Scopes to ask for, space-separated.
    #[arg(long, default_value = DEFAULT_SCOPE)]
    pub scope: String,

    /// Resource indicator (RFC 8707) naming the gateway at the IdP; may be repeated.
    #[arg(long = "resource", value_name = "URI")]
    pub resources: Vec<String>,

    /// `audience` parameter, for IdPs that take one instead (Auth0, Okta).
    #[arg(long)]
    pub audience: Option<String>,

    /// Use the device authorization grant: sign in on any device with a code.
    #[arg(long)]
    pub device: bool,

    /// Print the sign-in URL only; do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,

    /// Give up after this many seconds without a completed sign-in.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,

    /// Control plane to ask for the issuer and client id when not given.
    #[arg(long, env = "WARDEN_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

/// `warden whoami`.
#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Issuer and client.
    #[command(flatten)]
    pub selector: LoginSelector,

    /// Control plane URL.
    #[arg(long, env = "WARDEN_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// Print the control plane's JSON answer.
    #[arg(long)]
    pub json: bool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The payload of a JWT, read without checking its signature: for display
/// and for `exp` when the IdP gave no `expires_in`. Never a trust decision
/// (the gateway and the control plane verify).
pub fn unverified_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The seconds before expiry at which a token is refreshed.
fn margin(login: &StoredLogin) -> u64 {
    let lifetime = login.expires_at.saturating_sub(login.issued_at);
    REFRESH_MARGIN.min(lifetime / 4)
}

fn is_fresh(login: &StoredLogin, at: u64) -> bool {
    at + margin(login) < login.expires_at
}

fn stored_from(
    answer: TokenAnswer,
    issuer: &str,
    request: &Request,
    previous_refresh: Option<String>,
) -> StoredLogin {
    let issued_at = now();
    let expires_at = match answer.expires_in {
        Some(seconds) => issued_at.saturating_add(seconds),
        None => unverified_claims(&answer.access_token)
            .and_then(|c| c.get("exp").and_then(Value::as_u64))
            .unwrap_or(issued_at),
    };
    StoredLogin {
        issuer: issuer.to_owned(),
        client_id: request.client_id.clone(),
        access_token: answer.access_token,
        expires_at,
        issued_at,
        // RFC 6749 6: the IdP may keep the old refresh token valid and send none.
        refresh_token: answer.refresh_token.or(previous_refresh),
        scope: request.scope.clone(),
        resources: request.resources.clone(),
        audience: request.audience.clone(),
    }
}

fn request_of(login: &StoredLogin) -> Request {
    Request {
        client_id: login.client_id.clone(),
        scope: login.scope.clone(),
        resources: login.resources.clone(),
        audience: login.audience.clone(),
    }
}

/// The stored login `selector` names: its file and contents.
fn find(selector: &LoginSelector) -> Result<(PathBuf, StoredLogin), String> {
    let dir = token_store::default_dir()?;
    match (&selector.issuer, &selector.client_id) {
        (Some(issuer), Some(client_id)) => {
            let issuer = issuer.trim_end_matches('/');
            let path = token_store::file_for(&dir, issuer, client_id);
            match token_store::read(&path)? {
                Some(login) => Ok((path, login)),
                None => Err(format!(
                    "not logged in to {issuer} as client {client_id}: run `warden login`"
                )),
            }
        }
        _ => {
            let matching: Vec<_> = token_store::list(&dir)?
                .into_iter()
                .filter(|(_, login)| {
                    selector
                        .issuer
                        .as_deref()
                        .is_none_or(|i| i.trim_end_matches('/') == login.issuer)
                        && selector
                            .client_id
                            .as_deref()
                            .is_none_or(|c| c == login.client_id)
                })
                .collect();
            match matching.len() {
                0 => Err("not logged in: run `warden login`".into()),
                1 => matching
                    .into_iter()
                    .next()
                    .ok_or_else(|| "not logged in: run `warden login`".into()),
                _ => Err(format!(
                    "logged in to several IdPs ({}): say which with --issuer and --client-id",
                    matching
                        .iter()
                        .map(|(_, l)| format!("{} as {}", l.issuer, l.client_id))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
    }
}

/// A stored login whose access token is fresh, refreshed (and stored) first
/// if needed. Errors say to run `warden login` when only that helps.
pub async fn fresh_login(selector: &LoginSelector) -> Result<(PathBuf, StoredLogin), String> {
    let (path, login) = find(selector)?;
    if is_fresh(&login, now()) {
        return Ok((path, login));
    }
    // Another process may be refreshing: wait for it, then read again.
    let lock = token_store::lock(&path)?;
    let login = token_store::read(&path)?
        .ok_or("not logged in (the login was removed): run `warden login`")?;
    if is_fresh(&login, now()) {
        drop(lock);
        return Ok((path, login));
    }
    let Some(refresh_token) = login.refresh_token.clone() else {
        return Err(
            "the access token has expired and the IdP gave no refresh token: run `warden login`"
                .into(),
        );
    };
    let http = oidc_client::http_client()?;
    let discovery = oidc_client::discover(&http, &login.issuer).await?;
    let request = request_of(&login);
    let answer = match oidc_client::refresh(&http, &discovery, &request, &refresh_token).await {
        Ok(answer) => answer,
        Err(RefreshError::Refused(reason)) => {
            return Err(format!(
                "cannot refresh the access token, {reason}: run `warden login`"
            ))
        }
        Err(RefreshError::Unavailable(reason)) => {
            return Err(format!("cannot refresh the access token: {reason}"))
        }
    };
    let refreshed = stored_from(answer, &login.issuer, &request, Some(refresh_token));
    token_store::write(&path, &refreshed)?;
    drop(lock);
    Ok((path, refreshed))
}

/// Issuer, client and what to ask for: from the flags, else the control plane.
async fn settings(args: &LoginArgs) -> Result<(String, Request), String> {
    let scope_given = args.scope != DEFAULT_SCOPE;
    let (issuer, client_id, scope, resources) = match (
        &args.selector.issuer,
        &args.selector.client_id,
    ) {
        (Some(issuer), Some(client_id)) => (
            issuer.clone(),
            client_id.clone(),
            args.scope.clone(),
            args.resources.clone(),
        ),
        _ => {
            let from_server = crate::client::get_json::<LoginSettings>(&args.server, "/v1/login", None).await.map_err(|e| {
                format!("give --issuer and --client-id (or WARDEN_ISSUER, WARDEN_CLIENT_ID); the control plane could not say them: {e}")
            })?;
            let scope = match (&from_server.scope, scope_given) {
                (Some(scope), false) => scope.clone(),
                _ => args.scope.clone(),
            };
            let resources = if args.resources.is_empty() {
                from_server.resources
            } else {
                args.resources.clone()
            };
            (
                args.selector.issuer.clone().unwrap_or(from_server.issuer),
                args.selector
                    .client_id
                    .clone()
                    .unwrap_or(from_server.client_id),
                scope,
                resources,
            )
        }
    };
    let issuer = issuer.trim_end_matches('/').to_owned();
    oidc_client::check_issuer_url(&issuer)?;
    Ok((
        issuer,
        Request {
            client_id,
            scope: scope.split_whitespace().collect::<Vec<_>>().join(" "),
            resources,
            audience: args.audience.clone(),
        },
    ))
}

/// `warden login`.
pub async fn login(args: LoginArgs) -> Result<ExitCode, String> {
    let (issuer, request) = settings(&args).await?;
    let http = oidc_client::http_client()?;
    let discovery = oidc_client::discover(&http, &issuer).await?;
    let timeout = std::time::Duration::from_secs(args.timeout.max(1));
    let signing_in = async {
        if args.device {
            device_flow(&http, &discovery, &request).await
        } else {
            browser_flow(&http, &discovery, &request, args.no_browser).await
        }
    };
    let answer = tokio::time::timeout(timeout, signing_in)
        .await
        .map_err(|_| format!("no sign-in completed within {} seconds", timeout.as_secs()))??;
    let stored = stored_from(
        answer,
        discovery.issuer.trim_end_matches('/'),
        &request,
        None,
    );
    let dir = token_store::default_dir()?;
    let path = token_store::file_for(&dir, &stored.issuer, &stored.client_id);
    {
        let _lock = token_store::lock(&path)?;
        token_store::write(&path, &stored)?;
    }
    let who = unverified_claims(&stored.access_token)
        .and_then(|claims| {
            claims
                .get("email")
                .or_else(|| claims.get("sub"))
                .and_then(Value::as_str)
                .map(crate::fields::logged)
        })
        .unwrap_or_else(|| "you".to_owned());
    eprintln!(
        "Logged in to {} as {who}; tokens kept in {}",
        stored.issuer,
        path.display()
    );
    if stored.refresh_token.is_none() {
        eprintln!(
            "note: the IdP gave no refresh token; log in again when the access token expires"
        );
    }
    eprintln!("Use them with: OPENAI_API_KEY=$(warden access-token)");
    Ok(ExitCode::SUCCESS)
}

async fn browser_flow(
    http: &reqwest::Client,
    discovery: &Discovery,
    request: &Request,
    no_browser: bool,
) -> Result<TokenAnswer, String> {
    let redirect = oidc_client::LoopbackRedirect::bind().await?;
    let redirect_uri = redirect.redirect_uri.clone();
    let state = oidc_client::random_token();
    let pkce = oidc_client::Pkce::new();
    let url = oidc_client::authorization_url(discovery, request, &redirect_uri, &state, &pkce)?;
    eprintln!("To sign in, open this URL in a browser on this machine:\n\n    {url}\n");
    if !no_browser && open_browser(&url) {
        eprintln!("(a browser was asked to open it)");
    }
    let code = redirect.code(&state).await?;
    oidc_client::redeem_code(http, discovery, request, code, &redirect_uri, &pkce).await
}

/// Asks the desktop to open `url`; `false` when there is no way to.
fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if cfg!(target_os = "linux")
        && std::env::var_os("DISPLAY").is_none()
        && std::env::var_os("WAYLAND_DISPLAY").is_none()
    {
        return false;
    }
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

async fn device_flow(
    http: &reqwest::Client,
    discovery: &Discovery,
    request: &Request,
) -> Result<TokenAnswer, String> {
    let device = oidc_client::start_device(http, discovery, request).await?;
    eprintln!(
        "To sign in, open {} on any device and enter the code\n\n    {}\n",
        device.verification_uri, device.user_code
    );
    if let Some(complete) = &device.verification_uri_complete {
        eprintln!("(or open {complete})");
    }
    eprintln!(
        "Waiting for the sign-in (the code expires in {} seconds)…",
        device.expires_in
    );
    oidc_client::poll_device(http, discovery, request, &device).await
}

/// `warden access-token`.
pub async fn access_token(selector: LoginSelector) -> Result<ExitCode, String> {
    let (_, login) = fresh_login(&selector).await?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", login.access_token)
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write the token to stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `warden logout`.
pub async fn logout(selector: LoginSelector) -> Result<ExitCode, String> {
    let (path, login) = match find(&selector) {
        Ok(found) => found,
        Err(error) if error.starts_with("not logged in") => {
            eprintln!("Not logged in: nothing to do.");
            return Ok(ExitCode::SUCCESS);
        }
        Err(error) => return Err(error),
    };
    let _lock = token_store::lock(&path)?;
    let mut failed = false;
    match &login.refresh_token {
        None => eprintln!(
            "No refresh token was kept: nothing to revoke at {}.",
            login.issuer
        ),
        Some(refresh_token) => {
            let http = oidc_client::http_client()?;
            match oidc_client::discover(&http, &login.issuer).await {
                Ok(Discovery { revocation_endpoint: Some(endpoint), .. }) => {
                    match oidc_client::revoke_refresh_token(&http, &endpoint, &login.client_id, refresh_token).await {
                        Ok(()) => eprintln!("Revoked the refresh token at {endpoint}."),
                        Err(error) => {
                            failed = true;
                            eprintln!("warning: could not revoke the refresh token: {error}");
                        }
                    }
                }
                Ok(_) => eprintln!(
                    "{} has no revocation endpoint: the refresh token stays valid at the IdP until it expires.",
                    login.issuer
                ),
                Err(error) => {
                    failed = true;
                    eprintln!("warning: could not revoke the refresh token: {error}");
                }
            }
        }
    }
    token_store::delete(&path)?;
    let _ = std::fs::remove_file(path.with_extension("lock"));
    eprintln!("Deleted the stored tokens ({}).", path.display());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `warden whoami`.
pub async fn whoami(args: WhoamiArgs) -> Result<ExitCode, String> {
    let (_, login) = fresh_login(&args.selector).await?;
    let answer: Value =
        crate::client::get_json(&args.server, "/v1/whoami", Some(&login.access_token))
            .await
            .map_err(|e| format!("cannot ask the control plane who you are: {e}"))?;
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&answer).map_err(|e| e.to_string())? + "\n";
    } else {
        describe_whoami(&mut out, &answer, &login);
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn describe_whoami(out: &mut String, answer: &Value, login: &StoredLogin) {
    use std::fmt::Write as _;
    let text = |v: &Value| {
        v.as_str()
            .map(crate::fields::logged)
            .unwrap_or_else(|| "-".into())
    };
    let list = |v: &Value| {
        v.as_array()
            .map(|items| items.iter().map(text).collect::<Vec<_>>().join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".into())
    };
    let identity = &answer["identity"];
    let _ = writeln!(out, "user:     {}", text(&identity["subject"]));
    let _ = writeln!(out, "email:    {}", text(&identity["email"]));
    let _ = writeln!(out, "groups:   {}", list(&identity["groups"]));
    let _ = writeln!(out, "issuer:   {}", text(&identity["issuer"]));
    let remaining = login.expires_at.saturating_sub(now());
    let _ = writeln!(
        out,
        "token:    expires in {remaining}s (refreshed by `warden access-token`)"
    );
    match answer.get("policy").filter(|p| !p.is_null()) {
        None => {
            let _ = writeln!(out, "policy:   no version is active");
        }
        Some(policy) => {
            let _ = writeln!(
                out,
                "policy:   version {} ({})",
                policy["version"],
                text(&policy["mode"])
            );
            let groups = policy["groups"].as_array().cloned().unwrap_or_default();
            if groups.is_empty() {
                let _ = writeln!(
                    out,
                    "allowed:  nothing: none of your groups is in the policy"
                );
            }
            for group in groups {
                let via = if group["default"].as_bool() == Some(true) {
                    " (the default group)"
                } else {
                    ""
                };
                let _ = writeln!(out, "as {}{via}:", text(&group["name"]));
                let _ = writeln!(out, "  providers: {}", list(&group["providers"]));
                let _ = writeln!(out, "  models:    {}", list(&group["models"]));
                let _ = writeln!(out, "  endpoints: {}", list(&group["endpoints"]));
                let _ = writeln!(
                    out,
                    "  tools:     {} (denied: {})",
                    list(&group["tools"]["allow"]),
                    list(&group["tools"]["deny"])
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn login(issued_at: u64, expires_at: u64) -> StoredLogin {
        StoredLogin {
            issuer: "https://idp".into(),
            client_id: "cli".into(),
            access_token: "t".into(),
            expires_at,
            issued_at,
            refresh_token: None,
            scope: String::new(),
            resources: vec![],
            audience: None,
        }
    }

    #[test]
    fn refreshed_a_minute_early_or_a_quarter_of_a_short_life() {
        let hour = login(0, 3600);
        assert!(is_fresh(&hour, 3600 - 61));
        assert!(!is_fresh(&hour, 3600 - 60));
        let short = login(0, 20);
        assert!(is_fresh(&short, 14));
        assert!(!is_fresh(&short, 15));
        assert!(!is_fresh(&login(0, 0), 0));
    }

    #[test]
    fn claims_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","exp":5}"#);
        let claims = unverified_claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert!(unverified_claims("h.payload").is_none());
        assert!(unverified_claims(&format!("h.{payload}.s.x")).is_none());
        assert!(unverified_claims("h.!!!.s").is_none());
    }
}
