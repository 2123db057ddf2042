//! Minting: the `POST /dev/token` request and answer, the checks on what
//! it asks for, and the claims a token carries. A leaf of the dev issuer
//! (signing is [`super::keys`]'s).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::keys::SigningAlg;

/// Token lifetime when the request does not say.
pub const DEFAULT_TTL_SECONDS: u64 = 3600;
/// Longest lifetime a token can be minted with: 30 days.
pub const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Audience when the request does not say.
pub const DEFAULT_AUDIENCE: &str = "warden";
/// Longest `sub`, email, group, audience or issuer accepted, in bytes.
pub const MAX_STRING_LEN: usize = 1024;

/// The body of `POST /dev/token`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The `sub` claim. Must not be empty.
    pub sub: String,
    /// The `groups` claim (always present, possibly empty).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The `email` claim, left out when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Lifetime in seconds, 1 to 30 days' worth; default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// The `aud` claim; default `warden`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The `iss` claim; default the dev issuer's URL. Lets tests mint tokens
    /// that claim to come from elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The signing algorithm; default RS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<SigningAlg>,
    /// Extra claims, merged in last: one named like a generated claim
    /// (`exp`, `aud`, `groups`, ...) replaces it, which lets tests mint
    /// expired, not-yet-valid or oddly-shaped tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Map<String, Value>>,
}

/// The answer of `POST /dev/token`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The signed JWT.
    pub token: String,
}

// Hand-written so a token never lands in a log through `{:?}`.
impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Errors from minting a token.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The request is invalid; the message is meant for the caller.
    #[error("{0}")]
    Invalid(String),
    /// Signing failed (an internal error).
    #[error("signing failed: {0}")]
    Sign(String),
}

/// The claims a token for `request` carries, as of `now` (Unix seconds),
/// from the issuer at `default_issuer` unless the request names another.
pub fn claims(
    default_issuer: &str,
    request: &TokenRequest,
    now: u64,
) -> Result<Map<String, Value>, MintError> {
    let sub = request.sub.trim();
    check_string("sub", sub)?;
    for group in &request.groups {
        check_string("each group", group.trim())?;
    }
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
        return Err(MintError::Invalid(format!(
            "`ttl_seconds` must be between 1 and {MAX_TTL_SECONDS} (30 days), got {ttl}"
        )));
    }
    let audience = match &request.audience {
        Some(audience) => check_string("audience", audience.trim())?,
        None => DEFAULT_AUDIENCE,
    };
    let issuer = match &request.issuer {
        Some(issuer) => check_string("issuer", issuer.trim())?,
        None => default_issuer,
    };

    let mut claims = Map::new();
    claims.insert("iss".into(), Value::from(issuer));
    claims.insert("sub".into(), Value::from(sub));
    claims.insert("aud".into(), Value::from(audience));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("nbf".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now.saturating_add(ttl)));
    let groups: Vec<Value> = request
        .groups
        .iter()
        .map(|group| Value::from(group.trim()))
        .collect();
    claims.insert("groups".into(), Value::Array(groups));
    if let Some(email) = &request.email {
        claims.insert(
            "email".into(),
            Value::from(check_string("email", email.trim())?),
        );
    }
    if let Some(extra) = &request.claims {
        for (name, value) in extra {
            if name.is_empty() {
                return Err(MintError::Invalid("claim names must not be empty".into()));
            }
            claims.insert(name.clone(), value.clone());
        }
    }
    Ok(claims)
}

/// `value` if it is 1 to [`MAX_STRING_LEN`] bytes long.
pub fn check_string<'a>(what: &str, value: &'a str) -> Result<&'a str, MintError> {
    if value.is_empty() {
        return Err(MintError::Invalid(format!("{what} must not be empty")));
    }
    if value.len() > MAX_STRING_LEN {
        return Err(MintError::Invalid(format!(
            "{what} must be at most {MAX_STRING_LEN} bytes long"
        )));
    }
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_follow_the_request() {
        let request = TokenRequest {
            sub: " alice ".into(),
            groups: vec!["engineering".into(), "finance".into()],
            email: Some("alice@example.com".into()),
            ttl_seconds: Some(60),
            claims: Some(
                json!({"tenant": "acme", "aud": ["warden", "other"]})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            ..TokenRequest::default()
        };
        let minted = claims("http://x/dev", &request, 1_000).unwrap();
        assert_eq!(
            Value::Object(minted),
            json!({
                "iss": "http://x/dev",
                "sub": "alice",
                "aud": ["warden", "other"],
                "iat": 1000,
                "nbf": 1000,
                "exp": 1060,
                "groups": ["engineering", "finance"],
                "email": "alice@example.com",
                "tenant": "acme",
            })
        );

        let defaults = claims(
            "http://x/dev",
            &TokenRequest {
                sub: "bob".into(),
                ..TokenRequest::default()
            },
            1_000,
        )
        .unwrap();
        assert_eq!(defaults["aud"], "warden");
        assert_eq!(defaults["exp"], 1000 + DEFAULT_TTL_SECONDS);
        assert_eq!(defaults["groups"], json!([]));
        assert!(!defaults.contains_key("email"));
    }
}
