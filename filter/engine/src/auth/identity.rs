//! Verified claims to the identity the rest of the gateway uses.

use serde::Deserialize;
use serde_json::Value;

use super::AuthError;

/// Where the identity lives in the claims. Paths are dot-separated through
/// nested objects (`realm_access.roles` for Keycloak).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimPathsDoc {
    #[serde(default = "default_subject")]
    pub subject: String,
    #[serde(default = "default_email")]
    pub email: String,
    #[serde(default = "default_groups")]
    pub groups: String,
}

impl Default for ClaimPathsDoc {
    fn default() -> Self {
        Self {
            subject: default_subject(),
            email: default_email(),
            groups: default_groups(),
        }
    }
}

fn default_subject() -> String {
    "sub".into()
}
fn default_email() -> String {
    "email".into()
}
fn default_groups() -> String {
    "groups".into()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPaths {
    subject: Vec<String>,
    email: Vec<String>,
    groups: Vec<String>,
}

impl ClaimPaths {
    pub fn compile(doc: &ClaimPathsDoc) -> Result<Self, String> {
        let split = |what: &str, path: &str| -> Result<Vec<String>, String> {
            let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
            if parts.iter().any(String::is_empty) {
                return Err(format!("claims.{what}: {path:?} is not a valid claim path"));
            }
            Ok(parts)
        };
        Ok(Self {
            subject: split("subject", &doc.subject)?,
            email: split("email", &doc.email)?,
            groups: split("groups", &doc.groups)?,
        })
    }
}

/// Most groups kept from one token, and the longest group name kept: a
/// token is not a place to smuggle megabytes into every audit record.
const MAX_GROUPS: usize = 256;
const MAX_GROUP_BYTES: usize = 256;

/// Who made a request, as the verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    /// The subject as the claim mapping reads it (`sub` unless configured).
    pub subject: String,
    /// The token's own `sub` claim, whatever the mapping: the key the
    /// control plane compares on to refuse self-approval, so the filter's
    /// mapping and the control plane's can never disagree about who is who.
    pub token_subject: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// The token's `exp`: a cached identity is not used past it.
    pub expires_at: u64,
}

fn lookup<'v>(claims: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(claims, |v, key| v.get(key))
}

fn clean(s: &str) -> Option<String> {
    (!s.is_empty() && s.len() <= MAX_GROUP_BYTES && !s.chars().any(char::is_control))
        .then(|| s.to_owned())
}

/// Maps verified claims to an [`Identity`]. A subject is required; email and
/// groups are optional. Groups may be an array of strings or one string.
pub fn map_claims(issuer: &str, paths: &ClaimPaths, claims: &Value) -> Result<Identity, AuthError> {
    let subject = lookup(claims, &paths.subject)
        .and_then(Value::as_str)
        .and_then(clean)
        .ok_or(AuthError::MissingSubject)?;
    let email = lookup(claims, &paths.email)
        .and_then(Value::as_str)
        .and_then(clean);
    let mut groups: Vec<String> = match lookup(claims, &paths.groups) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(clean)
            .take(MAX_GROUPS)
            .collect(),
        Some(Value::String(s)) => clean(s).into_iter().collect(),
        _ => Vec::new(),
    };
    groups.sort();
    groups.dedup();
    let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    let token_subject = claims.get("sub").and_then(Value::as_str).and_then(clean);
    Ok(Identity {
        issuer: issuer.to_owned(),
        subject,
        token_subject,
        email,
        groups,
        expires_at,
    })
}
