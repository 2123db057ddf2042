//! One request's way through the gateway, as pure steps the adapter calls in
//! order and turns into host actions:
//!
//! 1. [`route`]: the provider from the path (404 otherwise; 503 when the
//!    gateway has no key for that provider).
//! 2. [`authenticate`]: the caller's token to an [`Identity`] (401), using
//!    the cache and the keys the worker holds, or asking for a key fetch.
//! 3. [`parse_body`] and [`model_of`]: the JSON body (strict) and the model
//!    it names (400, 413, 415).
//! 4. [`authorize`]: the policy's verdict for identity, provider and model
//!    (403; 503 with no policy), then [`govern_offers`]: the tools the body
//!    offers (denied ones removed; 403 when the tool choice needs one), and
//!    [`inspect_request`]: the policy's rules on the body's text (rewrite in
//!    place; 403 for a block).
//! 5. [`forward_plan`]: the headers to remove and to set before upstream.

use crate::protocol::Reason;
use serde_json::Value;

use crate::auth::cache::TokenCache;
use crate::auth::jwks::KeySet;
use crate::auth::machine_keys::{self, MachineKeys};
use crate::auth::{AuthError, Identity};
use crate::config::{FilterConfig, Provider};
use crate::endpoint::Endpoint;
use crate::headers::Headers;
use crate::inspect::apply::{inspect_value, Outcome};
use crate::inspect::body::{each_text, parse_strict, to_json, Shape};
use crate::inspect::calls::{self, ToolDecision, ToolEntry};
use crate::inspect::mask::{Action, Vault};
use crate::policy::{Denial, Direction, Policy};
use crate::provider::{Api, ErrorKind, Rejection};

/// Header prefix the gateway owns. A client must not be able to set these:
/// anything downstream that trusts them (upstream services, access logs)
/// would trust a forgery.
pub const GATEWAY_HEADER_PREFIX: &str = "x-warden-";

/// Step 1: the index of the provider routed at this request's path, which
/// must be canonical ([`crate::path`]: one reading for Envoy's route, the
/// filter's provider and shape, and the upstream).
pub fn route(config: &FilterConfig, headers: Headers<'_>) -> Result<usize, Rejection> {
    let path = headers.get(":path").unwrap_or_default();
    if let Err(why) = crate::path::check_canonical(path) {
        return Err(Rejection::new(
            Api::Openai,
            ErrorKind::InvalidRequest,
            Reason::PathNotCanonical,
            format!("{why}; send the path in its plain form"),
        ));
    }
    let Some((index, provider)) = config.provider_for_path(path) else {
        let prefixes: Vec<&str> = config
            .providers
            .iter()
            .map(|p| p.path_prefix.as_str())
            .collect();
        return Err(Rejection::new(
            Api::Openai,
            ErrorKind::NotFound,
            Reason::NoRoute,
            format!(
                "no provider is routed at this path; use one of: {}",
                prefixes.join(", ")
            ),
        ));
    };
    if let (None, Some(env)) = (&provider.credential_value, &provider.credential_env) {
        return Err(Rejection::new(
            provider.api,
            ErrorKind::Unavailable,
            Reason::ProviderKeyMissing,
            format!(
                "the gateway has no API key for provider '{}': the operator must set {env} in Envoy's environment",
                provider.name
            ),
        ));
    }
    Ok(index)
}

/// Step 1b: Envoy's route picked the cluster the filter's provider names
/// (when the configuration names one). `routed` reads the cluster Envoy
/// chose (the `xds.cluster_name` attribute, `None` when it has none); it is
/// called only when there is a cluster to compare with (it is a host call).
pub fn check_cluster(
    config: &FilterConfig,
    provider: usize,
    routed: impl FnOnce() -> Option<Vec<u8>>,
) -> Result<(), Rejection> {
    let p = provider_at(config, provider)?;
    let Some(cluster) = &p.cluster else {
        return Ok(());
    };
    let routed = routed();
    if routed.as_deref() == Some(cluster.as_bytes()) {
        return Ok(());
    }
    let routed = routed.map_or_else(
        || "no cluster".to_owned(),
        |c| format!("cluster '{}'", String::from_utf8_lossy(&c)),
    );
    Err(Rejection::new(
        p.api,
        ErrorKind::Unavailable,
        Reason::RouteMismatch,
        format!(
            "Envoy routed this path to {routed}, but the filter reads it as provider '{}' (cluster '{cluster}'): the routes and the filter's providers disagree, so nothing was sent",
            p.name
        ),
    ))
}

/// What the worker holds for an issuer's keys right now.
pub enum KeyView<'k> {
    Ready(&'k KeySet),
    /// Never fetched yet (the gateway just started, or the IdP was never reachable).
    NotLoaded,
    /// The last good keys are older than the issuer's `max_stale_seconds`.
    Expired,
}

/// The outcome of [`authenticate`].
pub enum AuthStep {
    Verified(Identity),
    /// The token names a key the worker does not hold: fetch the issuer's
    /// keys (if the rate limit allows) and call again, with
    /// `may_fetch = false` so a second miss is final.
    FetchKeys {
        issuer: usize,
    },
    Rejected(Rejection),
}

/// Step 2: who is calling. A machine key (`wdk_…`) is checked against the
/// keys served with the request's policy (`machine_keys`) and never read as
/// a JWT; any other token is verified as one.
#[allow(clippy::too_many_arguments)]
pub fn authenticate<'k>(
    config: &FilterConfig,
    provider: usize,
    headers: Headers<'_>,
    machine_keys: &MachineKeys,
    cache: &mut TokenCache,
    keys: &dyn Fn(usize) -> KeyView<'k>,
    now: u64,
    may_fetch: bool,
) -> AuthStep {
    let api = config
        .providers
        .get(provider)
        .map_or(Api::Openai, |p| p.api);
    let unauthenticated = |e: AuthError| {
        AuthStep::Rejected(Rejection::new(
            api,
            ErrorKind::Unauthenticated,
            e.code(),
            e.to_string(),
        ))
    };
    let token = match config.auth.extract_token(headers) {
        Ok(t) => t,
        Err(e) => return unauthenticated(e),
    };
    if machine_keys::is_machine_key(token) {
        return match machine_keys.verify(token, now) {
            Ok(identity) => AuthStep::Verified(identity),
            Err(e) => unauthenticated(e),
        };
    }
    let cache_key = TokenCache::key(token);
    if let Some(identity) = cache.get(&cache_key, now) {
        // A cached verification is only as good as the keys behind it: past
        // the issuer's staleness bound, cached tokens are denied too.
        let issuer = config
            .auth
            .issuers
            .iter()
            .position(|i| i.issuer == identity.issuer);
        match issuer.map(keys) {
            Some(KeyView::Ready(_)) => return AuthStep::Verified(identity.clone()),
            Some(KeyView::Expired) => return AuthStep::Rejected(keys_stale(api, &identity.issuer)),
            _ => {}
        }
    }
    let unverified = match config.auth.inspect(token) {
        Ok(u) => u,
        Err(e) => return unauthenticated(e),
    };
    let issuer = unverified.issuer;
    let issuer_name = config
        .auth
        .issuers
        .get(issuer)
        .map_or("", |i| i.issuer.as_str());
    let key_set = match keys(issuer) {
        KeyView::Ready(set) => set,
        KeyView::NotLoaded => {
            return AuthStep::Rejected(Rejection::new(
                api,
                ErrorKind::Unavailable,
                Reason::KeysNotLoaded,
                format!(
                "the gateway has not loaded the signing keys of {issuer_name} yet; retry shortly"
            ),
            ))
        }
        KeyView::Expired => return AuthStep::Rejected(keys_stale(api, issuer_name)),
    };
    match config.auth.verify(token, unverified, key_set, now) {
        Ok(identity) => {
            cache.insert(cache_key, identity.clone());
            AuthStep::Verified(identity)
        }
        Err(AuthError::UnknownKey) if may_fetch => AuthStep::FetchKeys { issuer },
        Err(e) => unauthenticated(e),
    }
}

fn keys_stale(api: Api, issuer: &str) -> Rejection {
    Rejection::new(
        api,
        ErrorKind::Unavailable,
        Reason::KeysStale,
        format!(
            "the signing keys of {issuer} could not be refreshed for too long; requests are denied until the identity provider is reachable"
        ),
    )
}

/// Whether the request carries a body the gateway must read before deciding.
pub fn has_body(end_of_stream: bool) -> bool {
    // Whatever the method: a GET or DELETE that carries a body is read and
    // checked like any other (see `check_bodiless`), never passed unread.
    !end_of_stream
}

/// Whether the request's method takes no body (GET, HEAD, OPTIONS, DELETE).
pub fn is_bodiless_method(headers: Headers<'_>) -> bool {
    matches!(
        headers.get(":method"),
        Some(b"GET" | b"HEAD" | b"OPTIONS" | b"DELETE")
    )
}

/// A request whose method takes no body but which sent one (some HTTP/2
/// clients end a GET with an empty data frame: that is no body) is refused:
/// no provider endpoint reads it, so it could only carry something past the
/// inspection of the endpoints that do.
pub fn check_bodiless(api: Api, body_len: usize) -> Result<(), Rejection> {
    if body_len == 0 {
        return Ok(());
    }
    Err(Rejection::new(
        api,
        ErrorKind::InvalidRequest,
        Reason::BodyNotAllowed,
        "this method takes no request body; send it without one",
    ))
}

/// Step 3 (checks before reading): a body the gateway cannot inspect is
/// refused up front, so it is never evaluated as something it is not.
pub fn check_body_headers(
    config: &FilterConfig,
    provider: usize,
    headers: Headers<'_>,
) -> Result<(), Rejection> {
    let api = config
        .providers
        .get(provider)
        .map_or(Api::Openai, |p| p.api);
    if let Some(enc) = headers.get("content-encoding") {
        if !enc.eq_ignore_ascii_case(b"identity") {
            return Err(Rejection::new(
                api,
                ErrorKind::UnsupportedMediaType,
                Reason::BodyEncoded,
                "compressed request bodies cannot be inspected; send the body uncompressed",
            ));
        }
    }
    if let Some(len) = headers
        .get_str("content-length")
        .and_then(|l| l.trim().parse::<usize>().ok())
    {
        if len > config.max_body_bytes {
            return Err(too_large(api, config.max_body_bytes));
        }
    }
    Ok(())
}

pub fn too_large(api: Api, limit: usize) -> Rejection {
    Rejection::new(
        api,
        ErrorKind::PayloadTooLarge,
        Reason::BodyTooLarge,
        format!("the request body is larger than the gateway inspects ({limit} bytes)"),
    )
}

/// Step 3: the request body as JSON. Strict: duplicate keys are refused, as
/// the gateway and the provider could otherwise read different documents.
pub fn parse_body(api: Api, body: &[u8]) -> Result<Value, Rejection> {
    parse_strict(body).map_err(|e| {
        let what = if e.to_string().contains("duplicate key") {
            "a key appears twice"
        } else {
            classify_json(&e)
        };
        Rejection::new(
            api,
            ErrorKind::InvalidRequest,
            Reason::BodyNotJson,
            format!(
                "the request body is not valid JSON ({what} at line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}

/// The model a JSON request body names (`None` when it names none).
pub fn model_of(api: Api, body: &Value) -> Result<Option<String>, Rejection> {
    match body.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(m)) => Ok(Some(m.clone())),
        Some(_) => Err(Rejection::new(
            api,
            ErrorKind::InvalidRequest,
            Reason::ModelNotString,
            "`model` must be a string",
        )),
    }
}

fn classify_json(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected shape",
        serde_json::error::Category::Io => "read error",
    }
}

/// The path the provider will see: the request path without the route's
/// prefix (Envoy's `prefix_rewrite` strips it), e.g. `v1/chat/completions`.
/// It decides the API shape of the body and of the response.
pub fn upstream_path(config: &FilterConfig, provider: usize, path: &[u8]) -> String {
    let prefix = config
        .providers
        .get(provider)
        .map_or(&[][..], |p| p.path_prefix.as_bytes());
    String::from_utf8_lossy(path.strip_prefix(prefix).unwrap_or(path)).into_owned()
}

/// The route an audit record and an approval name: the upstream path
/// without its query (which may carry anything), from `/`.
pub fn route_of(upstream_path: &str) -> String {
    let path = upstream_path.split('?').next().unwrap_or_default();
    format!("/{}", path.trim_start_matches('/'))
}

/// The model a request path names (`/v1/models/{id}`), for bodiless requests.
pub fn model_from_path(upstream_path: &str) -> Option<String> {
    let rest = upstream_path.split('?').next()?;
    let id = rest.strip_prefix("v1/models/")?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

/// The provider a routed request goes to (an index from [`route`]).
fn provider_at(config: &FilterConfig, provider: usize) -> Result<&Provider, Rejection> {
    config.providers.get(provider).ok_or_else(|| {
        Rejection::new(
            Api::Openai,
            ErrorKind::NotFound,
            Reason::NoRoute,
            "no such provider",
        )
    })
}

/// Step 4: the policy's verdict.
pub fn authorize(
    config: &FilterConfig,
    policy: Option<&Policy>,
    provider: usize,
    identity: &Identity,
    endpoint: Endpoint,
    model: Option<&str>,
) -> Result<(), Rejection> {
    let p = provider_at(config, provider)?;
    let Some(policy) = policy else {
        return Err(Rejection::new(
            p.api,
            ErrorKind::Unavailable,
            Reason::NoPolicy,
            "the gateway has no policy yet, so it denies every request; the operator must publish one",
        ));
    };
    policy
        .authorize(identity, &p.name, model)
        .and_then(|()| policy.authorize_endpoint(identity, &p.name, endpoint, model))
        .map_err(|d| {
            let kind = match d {
                Denial::ModelRequired { .. } => ErrorKind::InvalidRequest,
                _ => ErrorKind::PermissionDenied,
            };
            Rejection::new(p.api, kind, d.code(), d.to_string())
        })
}

/// Step 4a: the policy on the tools the request offers (see
/// [`crate::inspect::calls`]): denied ones removed from `body` (whether it
/// changed, and what was done, for the record); refused when its tool
/// choice requires a tool the caller may not use.
pub fn govern_offers(
    api: Api,
    policy: &Policy,
    identity: &Identity,
    shape: Shape,
    body: &mut Value,
) -> (Vec<ToolEntry>, Result<bool, Rejection>) {
    match calls::govern_offers(policy, identity, shape, body) {
        Ok((changed, entries)) => (entries, Ok(changed)),
        Err(calls::ChoiceDenied { tool }) => {
            let rejection = Rejection::new(
                api,
                ErrorKind::PermissionDenied,
                Reason::ToolDenied,
                format!("the request requires the tool '{tool}', which the gateway's policy does not let your groups use"),
            );
            let entry = ToolEntry {
                tool,
                decision: ToolDecision::Refused,
                rule: None,
            };
            (vec![entry], Err(rejection))
        }
    }
}

/// Step 4b: the policy's rules applied to the request body (edited in place).
/// Returns what was found (also when refused, for the audit record), and the
/// new body when it changed, here or before (`changed_before`: offers
/// removed); a block rule refuses the request (naming the rule, never the
/// value), whatever approval rule also matched, so nothing a
/// block rule matched is ever sent for approval. An approval rule
/// is the caller's to act on ([`Outcome::stop`] names it): the request then
/// waits for the control plane, or is refused by [`approvals_disabled`].
#[allow(clippy::too_many_arguments)]
pub fn inspect_request(
    config: &FilterConfig,
    policy: &Policy,
    provider: usize,
    identity: &Identity,
    model: Option<&str>,
    body: &mut Value,
    changed_before: bool,
    vault: &mut Vault,
) -> (Outcome, Result<Option<Vec<u8>>, Rejection>) {
    let p = match provider_at(config, provider) {
        Ok(p) => p,
        Err(rejection) => return (Outcome::default(), Err(rejection)),
    };
    // The same writer as every other masked body: serde_json's own escapes
    // each byte of every string, the largest single cost of a 64 KB request.
    let written = |body: &Value, changed: bool| changed.then(|| to_json(body));
    let active = policy.active_rules(identity, &p.name, model, Direction::Request);
    if active.is_empty() {
        return (Outcome::default(), Ok(written(body, changed_before)));
    }
    let (outcome, changed) = inspect_value(
        policy,
        &active,
        Direction::Request,
        body,
        vault,
        &config.hash_key,
    );
    let verdict = match outcome.stop() {
        Some((rule, Action::Block)) => Err(Rejection::new(
            p.api,
            ErrorKind::PermissionDenied,
            Reason::Blocked,
            format!("the request was blocked by rule '{rule}'"),
        )),
        _ => Ok(written(body, changed || changed_before)),
    };
    (outcome, verdict)
}

/// The rules on the request URL's query string: its keys and values, decoded,
/// are text like any other (a value in `?q=` reaches the provider as surely
/// as one in the body). A URL cannot be rewritten into something the caller
/// meant, so a query in which an enforced rule finds anything (to rewrite,
/// block or hold for approval) refuses the request, naming the rule: such
/// data belongs in the body, where it is masked. Log-only and observed
/// findings are only recorded.
#[allow(clippy::too_many_arguments)]
pub fn inspect_query(
    config: &FilterConfig,
    policy: &Policy,
    provider: usize,
    identity: &Identity,
    model: Option<&str>,
    upstream_path: &str,
    vault: &mut Vault,
) -> (Outcome, Result<(), Rejection>) {
    let Some((_, query)) = upstream_path.split_once('?') else {
        return (Outcome::default(), Ok(()));
    };
    let p = match provider_at(config, provider) {
        Ok(p) => p,
        Err(rejection) => return (Outcome::default(), Err(rejection)),
    };
    let active = policy.active_rules(identity, &p.name, model, Direction::Request);
    if active.is_empty() || query.is_empty() {
        return (Outcome::default(), Ok(()));
    }
    let mut pairs = Value::Array(
        form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| {
                Value::Array(vec![
                    Value::String(k.into_owned()),
                    Value::String(v.into_owned()),
                ])
            })
            .collect(),
    );
    let (outcome, _) = inspect_value(
        policy,
        &active,
        Direction::Request,
        &mut pairs,
        vault,
        &config.hash_key,
    );
    let enforced = outcome
        .rules
        .iter()
        .filter(|(_, c)| !c.observe && c.action != Action::LogOnly)
        .max_by_key(|(_, c)| c.action.precedence())
        .map(|(name, _)| name.clone());
    let verdict = match enforced {
        Some(rule) => Err(Rejection::new(
            p.api,
            ErrorKind::PermissionDenied,
            Reason::QueryRefused,
            format!("the URL's query string holds data that rule '{rule}' protects; send it in the request body, where the gateway inspects it"),
        )),
        None => Ok(()),
    };
    (outcome, verdict)
}

/// The refusal of a request that needs an approval on a gateway without a
/// control plane.
pub fn approvals_disabled(api: Api, rule: &str) -> Rejection {
    Rejection::new(
        api,
        ErrorKind::PermissionDenied,
        Reason::ApprovalRequired,
        format!("this request needs an approval under rule '{rule}', and approvals are not enabled on this gateway"),
    )
}

/// The refusal on a worker without a valid configuration (fail closed).
pub fn not_configured() -> Rejection {
    Rejection::new(
        Api::Openai,
        ErrorKind::Unavailable,
        Reason::NotConfigured,
        "the gateway has no valid configuration yet",
    )
}

/// The refusal while the control plane has been out of reach for longer
/// than the configured bound.
pub fn policy_stale(api: Api, silent_for: u64) -> Rejection {
    Rejection::new(
        api,
        ErrorKind::Unavailable,
        Reason::PolicyStale,
        format!("the gateway has not reached its control plane for {silent_for} s, longer than its policy may be used; it refuses requests until the control plane answers"),
    )
}

/// The prompt text as an approver sees it: every text of the request (after
/// the policy's masking), one per line: the same strings the rules read, so
/// an approver decides on everything the model would see.
pub fn prompt_text(body: &mut Value) -> String {
    let mut parts = Vec::new();
    each_text(body, &mut |t| {
        parts.push(t.clone());
        false
    });
    parts.join("\n")
}

/// What to change in the request headers before they go upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPlan {
    /// Client headers to delete.
    pub remove: Vec<String>,
    /// Headers to set (replacing any value the client sent).
    pub set: Vec<(String, Vec<u8>)>,
}

/// Step 5: strip every client credential, gateway-owned header and
/// provider-scoping header ([`crate::config::SCOPING_HEADERS`], unless the
/// provider passes it), add the provider's key and required headers. Only headers the request carries are
/// removed: each removal is a call across the host boundary.
pub fn forward_plan(config: &FilterConfig, provider: usize, headers: Headers<'_>) -> ForwardPlan {
    let mut remove: Vec<String> = config
        .strip_headers
        .iter()
        .filter(|name| headers.contains(name))
        .cloned()
        .collect();
    for (name, _) in headers.iter() {
        let owned = name
            .as_bytes()
            .get(..GATEWAY_HEADER_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(GATEWAY_HEADER_PREFIX.as_bytes()));
        if owned && !remove.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            remove.push(name.to_ascii_lowercase());
        }
    }
    let mut set = Vec::new();
    if let Some(p) = config.providers.get(provider) {
        for name in &p.scoping_headers {
            if headers.contains(name) && !remove.iter().any(|r| r == name) {
                remove.push((*name).to_owned());
            }
        }
        if let Some(key) = &p.credential_value {
            set.push((
                p.credential_header.clone(),
                key.expose().as_bytes().to_vec(),
            ));
        }
        for (name, value) in p.api.default_headers() {
            if !headers.contains(name) {
                set.push(((*name).to_string(), value.as_bytes().to_vec()));
            }
        }
    }
    ForwardPlan { remove, set }
}

#[cfg(test)]
mod tests;
