//! Remote key sets: where to fetch an issuer's JWKS, and when.
//!
//! The proxy-wasm adapter does the fetching (a `dispatch_http_call` through an
//! Envoy cluster) and shares the result between worker VMs; this module only
//! decides: is a fetch due, may an unknown `kid` trigger one now, and are the
//! keys we hold still good enough to use.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksDoc {
    /// The Envoy cluster that reaches the IdP.
    pub cluster: String,
    /// `:authority` for the fetch; default: the issuer URL's host.
    #[serde(default)]
    pub authority: Option<String>,
    /// The JWKS path on the cluster. Without it, the path comes from OIDC
    /// discovery (`<issuer>/.well-known/openid-configuration`, `jwks_uri`).
    #[serde(default)]
    pub path: Option<String>,
    /// Periodic refresh.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// How long the last good keys stay in use while the IdP cannot be
    /// reached; after that, requests are denied.
    #[serde(default = "default_max_stale")]
    pub max_stale_seconds: u64,
    /// At most one fetch per this many seconds triggered by unknown `kid`s,
    /// so a flood of random `kid`s does not flood the IdP.
    #[serde(default = "default_min_refetch")]
    pub min_refetch_seconds: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_refresh() -> u64 {
    300
}
fn default_max_stale() -> u64 {
    3600
}
fn default_min_refetch() -> u64 {
    10
}
fn default_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    pub authority: String,
    pub jwks_path: Option<String>,
    pub discovery_path: String,
    pub refresh_seconds: u64,
    pub max_stale_seconds: u64,
    pub min_refetch_seconds: u64,
    pub timeout_ms: u64,
}

/// `(authority, path)` of an absolute `http(s)` URL. Written here rather than
/// with the `url` crate: the filter needs only these two parts, and every
/// kilobyte of the module is loaded once per Envoy worker.
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at_checked(i)?,
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some((authority.to_owned(), path.to_owned()))
}

impl RemoteJwks {
    pub fn compile(doc: RemoteJwksDoc, issuer: &str) -> Result<Self, String> {
        if doc.cluster.is_empty() {
            return Err("jwks.cluster must name an Envoy cluster".into());
        }
        let (issuer_authority, issuer_path) = split_url(issuer)
            .ok_or_else(|| "the issuer must be an http(s) URL to fetch its keys".to_string())?;
        if let Some(p) = &doc.path {
            if !p.starts_with('/') {
                return Err(format!("jwks.path {p:?} must start with '/'"));
            }
        }
        if doc.refresh_seconds == 0 || doc.timeout_ms == 0 {
            return Err("jwks.refresh_seconds and jwks.timeout_ms must be positive".into());
        }
        if doc.max_stale_seconds < doc.refresh_seconds {
            return Err("jwks.max_stale_seconds must be at least refresh_seconds".into());
        }
        Ok(Self {
            cluster: doc.cluster,
            authority: doc.authority.unwrap_or(issuer_authority),
            jwks_path: doc.path,
            discovery_path: format!(
                "{}/.well-known/openid-configuration",
                issuer_path.trim_end_matches('/')
            ),
            refresh_seconds: doc.refresh_seconds,
            max_stale_seconds: doc.max_stale_seconds,
            min_refetch_seconds: doc.min_refetch_seconds,
            timeout_ms: doc.timeout_ms,
        })
    }

    /// Whether the keys fetched at `fetched_at` may still be used at `now`.
    pub fn freshness(&self, fetched_at: Option<u64>, now: u64) -> Freshness {
        match fetched_at {
            None => Freshness::NotLoaded,
            Some(t) if now.saturating_sub(t) <= self.refresh_seconds => Freshness::Fresh,
            Some(t) if now.saturating_sub(t) <= self.max_stale_seconds => Freshness::Stale,
            Some(_) => Freshness::Expired,
        }
    }

    /// Whether a periodic fetch is due: never fetched, or older than the
    /// refresh period; retries after a failure are spaced by `min_refetch`
    /// (at least one second).
    pub fn fetch_due(&self, fetched_at: Option<u64>, last_attempt: Option<u64>, now: u64) -> bool {
        let stale = fetched_at.is_none_or(|t| now.saturating_sub(t) >= self.refresh_seconds);
        stale && self.may_refetch(last_attempt, now)
    }

    /// Whether an unknown `kid` may trigger a fetch now (rate limit).
    pub fn may_refetch(&self, last_attempt: Option<u64>, now: u64) -> bool {
        last_attempt.is_none_or(|t| now.saturating_sub(t) >= self.min_refetch_seconds.max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    NotLoaded,
    Fresh,
    /// Past the refresh period (a fetch is due) but still usable.
    Stale,
    /// Past `max_stale_seconds`: deny.
    Expired,
}

/// The `(authority, path)` of `jwks_uri` in an OIDC discovery document.
pub fn jwks_uri_from_discovery(doc: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(doc).ok()?;
    split_url(v.get("jwks_uri")?.as_str()?)
}
