//! Verified claims to the identity the rest of the gateway uses: where the
//! subject, email and groups are, and the group rules that give machines
//! (CI jobs, Kubernetes workloads) groups from the claims their platform
//! signs, since their tokens carry no groups of their own.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use wildmatch::WildMatch;

use super::AuthError;

/// Where the identity lives in the claims. A path is dot-separated through
/// nested objects (`realm_access.roles` for Keycloak), or a JSON Pointer
/// when it starts with `/`, for keys that hold dots themselves
/// (`/kubernetes.io/serviceaccount/name`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimPathsDoc {
    #[serde(default = "default_subject")]
    pub subject: String,
    #[serde(default = "default_email")]
    pub email: String,
    #[serde(default = "default_groups")]
    pub groups: String,
    /// Groups given by what a token's claims say, added to those of its
    /// `groups` claim.
    #[serde(default)]
    pub group_rules: Vec<GroupRuleDoc>,
}

/// `group` for every token whose claims match all of `when`: claim path to
/// glob (`*`, `?`) on the claim's value (a string as it is, a number or a
/// boolean as JSON writes it, a list when one of its items matches). For a
/// GitHub Actions job: `{repository: acme/api, ref: refs/heads/main}`; for
/// a Kubernetes service account: `{/kubernetes.io/namespace: batch}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRuleDoc {
    pub group: String,
    pub when: BTreeMap<String, String>,
}

impl Default for ClaimPathsDoc {
    fn default() -> Self {
        Self {
            subject: default_subject(),
            email: default_email(),
            groups: default_groups(),
            group_rules: Vec::new(),
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

/// A claim's place in the claims.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ClaimPath {
    Keys(Vec<String>),
    Pointer(String),
}

impl ClaimPath {
    fn compile(what: &str, path: &str) -> Result<Self, String> {
        if path.starts_with('/') {
            return Ok(Self::Pointer(path.to_owned()));
        }
        let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
        if keys.iter().any(String::is_empty) {
            return Err(format!("claims.{what}: {path:?} is not a valid claim path"));
        }
        Ok(Self::Keys(keys))
    }

    fn lookup<'v>(&self, claims: &'v Value) -> Option<&'v Value> {
        match self {
            Self::Keys(keys) => keys.iter().try_fold(claims, |v, key| v.get(key)),
            Self::Pointer(pointer) => claims.pointer(pointer),
        }
    }
}

/// A compiled [`GroupRuleDoc`].
#[derive(Debug, Clone)]
struct GroupRule {
    group: String,
    when: Vec<(ClaimPath, WildMatch)>,
}

impl GroupRule {
    fn matches(&self, claims: &Value) -> bool {
        let fits = |value: &Value, glob: &WildMatch| match value {
            Value::String(s) => glob.matches(s),
            Value::Number(_) | Value::Bool(_) => glob.matches(&value.to_string()),
            _ => false,
        };
        self.when
            .iter()
            .all(|(path, glob)| match path.lookup(claims) {
                Some(Value::Array(items)) => items.iter().any(|item| fits(item, glob)),
                Some(value) => fits(value, glob),
                None => false,
            })
    }
}

#[derive(Debug, Clone)]
pub struct ClaimPaths {
    subject: ClaimPath,
    email: ClaimPath,
    groups: ClaimPath,
    group_rules: Vec<GroupRule>,
}

impl ClaimPaths {
    pub fn compile(doc: &ClaimPathsDoc) -> Result<Self, String> {
        let mut group_rules = Vec::with_capacity(doc.group_rules.len());
        for (i, rule) in doc.group_rules.iter().enumerate() {
            let what = format!("group_rules[{i}]");
            if clean(&rule.group).is_none() {
                return Err(format!(
                    "claims.{what}: group {:?} is not a group name",
                    rule.group
                ));
            }
            // A rule with no condition would give the group to every token
            // of the issuer: say so with a condition (`{iss: "*"}`).
            if rule.when.is_empty() {
                return Err(format!(
                    "claims.{what}: `when` names no claim; a rule gives its group only to tokens whose claims match"
                ));
            }
            let when = rule
                .when
                .iter()
                .map(|(path, glob)| Ok((ClaimPath::compile(&what, path)?, WildMatch::new(glob))))
                .collect::<Result<_, String>>()?;
            group_rules.push(GroupRule {
                group: rule.group.clone(),
                when,
            });
        }
        Ok(Self {
            subject: ClaimPath::compile("subject", &doc.subject)?,
            email: ClaimPath::compile("email", &doc.email)?,
            groups: ClaimPath::compile("groups", &doc.groups)?,
            group_rules,
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

fn clean(s: &str) -> Option<String> {
    (!s.is_empty() && s.len() <= MAX_GROUP_BYTES && !s.chars().any(char::is_control))
        .then(|| s.to_owned())
}

/// Maps verified claims to an [`Identity`]. A subject is required; email and
/// groups are optional. Groups may be an array of strings or one string.
pub fn map_claims(issuer: &str, paths: &ClaimPaths, claims: &Value) -> Result<Identity, AuthError> {
    let subject = paths
        .subject
        .lookup(claims)
        .and_then(Value::as_str)
        .and_then(clean)
        .ok_or(AuthError::MissingSubject)?;
    let email = paths
        .email
        .lookup(claims)
        .and_then(Value::as_str)
        .and_then(clean);
    let mut groups: Vec<String> = match paths.groups.lookup(claims) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(clean)
            .take(MAX_GROUPS)
            .collect(),
        Some(Value::String(s)) => clean(s).into_iter().collect(),
        _ => Vec::new(),
    };
    groups.extend(
        paths
            .group_rules
            .iter()
            .filter(|rule| rule.matches(claims))
            .map(|rule| rule.group.clone()),
    );
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
