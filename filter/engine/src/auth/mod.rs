//! Authentication: the caller's OIDC token to a verified [`Identity`].
//!
//! ## Layout
//! - this module: the `authentication` section of the filter configuration,
//!   its compiled form ([`Authenticator`]) and the verification of one token;
//! - [`jwks`]: key sets (JWKS documents, shared secrets) turned into verifiers;
//! - [`registered`]: what the registered claims (`iss`, `aud`, `exp`, `nbf`,
//!   `iat`) must be, as jwt-simple's options and as a check of its own for
//!   the RSA tokens whose signature is verified here;
//! - [`keys`]: when an issuer's remote keys are fresh, stale, or due a fetch;
//! - [`cache`]: a bounded cache of verified tokens (an RS256 verification in
//!   wasm costs on the order of a millisecond; a hit costs a hash);
//! - [`identity`]: claims to subject, email and groups by configurable paths;
//! - [`machine_keys`]: the control plane's revocable keys, known by hash.
//!
//! Verification order matters and is fixed: size, shape, issuer (chosen by the
//! token's `iss`, exactly), the issuer's algorithm allow-list, then the key
//! (by exact `kid`; the key's type picks the verifier), the signature, and only
//! then the claims. Header fields that point elsewhere (`jku`, `x5u`, `jwk`,
//! `x5c`) are never read; `crit` is refused (RFC 7515 4.1.11).

pub mod cache;
pub mod identity;
pub mod jwks;
pub mod keys;
pub mod machine_keys;
mod registered;

use crate::protocol::Reason;
use std::collections::HashSet;

use base64::Engine;
use jwt_simple::prelude::Token;
use serde::Deserialize;
use serde_json::Value;

use crate::document::ConfigError;
use crate::headers::Headers;
pub use identity::{ClaimPaths, ClaimPathsDoc, Identity};
use jwks::KeySet;

/// The signature algorithms Warden verifies.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    pub const ASYMMETRIC: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "EdDSA" | "Ed25519" => Self::EdDSA,
            "HS256" => Self::HS256,
            "HS384" => Self::HS384,
            "HS512" => Self::HS512,
            _ => return None,
        })
    }

    pub fn is_symmetric(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}

// ---------------------------------------------------------------------------
// Configuration

/// The `authentication` section of the filter configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticationDoc {
    /// Where the caller's token is read, in order. Default: `authorization:
    /// Bearer` (OpenAI SDKs), then `x-api-key` (the Anthropic SDK).
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<TokenSourceDoc>,
    pub issuers: Vec<IssuerDoc>,
    /// Claim paths used by every issuer that does not set its own.
    #[serde(default)]
    pub claims: ClaimPathsDoc,
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens remembered per worker VM.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceDoc {
    pub header: String,
    /// A scheme that must prefix the value (`Bearer`), case-insensitive.
    #[serde(default)]
    pub scheme: Option<String>,
}

fn default_token_sources() -> Vec<TokenSourceDoc> {
    vec![
        TokenSourceDoc {
            header: "authorization".into(),
            scheme: Some("Bearer".into()),
        },
        TokenSourceDoc {
            header: "x-api-key".into(),
            scheme: None,
        },
    ]
}
fn default_skew() -> u64 {
    60
}
fn default_max_token_bytes() -> usize {
    16 * 1024
}
fn default_cache_entries() -> usize {
    4096
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerDoc {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted audiences; a token must carry at least one.
    pub audiences: Vec<String>,
    /// Allowed algorithms. Default: every asymmetric one, or HS256 for an
    /// issuer with a shared secret.
    #[serde(default)]
    pub algorithms: Option<Vec<Algorithm>>,
    /// Keys fetched through an Envoy cluster (JWKS, optionally via discovery).
    #[serde(default)]
    pub jwks: Option<keys::RemoteJwksDoc>,
    /// Keys given inline (a JWKS document as JSON text or as a mapping).
    #[serde(default)]
    pub inline_jwks: Option<Value>,
    /// An environment variable of Envoy holding an HMAC secret.
    #[serde(default)]
    pub shared_secret_env: Option<String>,
    #[serde(default)]
    pub claims: Option<ClaimPathsDoc>,
}

/// Where an issuer's keys come from, compiled.
#[derive(Debug)]
pub enum KeySource {
    Remote(keys::RemoteJwks),
    /// Inline JWKS or shared secret: fixed for the configuration's lifetime.
    Static(KeySet),
}

#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: HashSet<String>,
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    pub claims: ClaimPaths,
}

#[derive(Debug, Clone)]
pub struct TokenSource {
    pub header: String,
    pub scheme: Option<String>,
}

/// The compiled `authentication` section.
#[derive(Debug)]
pub struct Authenticator {
    pub token_sources: Vec<TokenSource>,
    pub issuers: Vec<Issuer>,
    pub skew_seconds: u64,
    pub max_token_bytes: usize,
    pub cache_entries: usize,
}

impl Authenticator {
    pub fn compile(
        doc: AuthenticationDoc,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("authentication: {m}"));
        if doc.issuers.is_empty() {
            return Err(invalid("`issuers` must list at least one issuer".into()));
        }
        if doc.token_sources.is_empty() {
            return Err(invalid("`token_sources` must not be empty".into()));
        }
        if !(256..=1024 * 1024).contains(&doc.max_token_bytes) {
            return Err(invalid(
                "max_token_bytes must be between 256 and 1048576".into(),
            ));
        }
        if doc.clock_skew_seconds > 600 {
            return Err(invalid(
                "clock_skew_seconds above 600 would accept expired tokens for too long".into(),
            ));
        }
        let default_claims = ClaimPaths::compile(&doc.claims).map_err(invalid)?;
        let mut seen = HashSet::new();
        let mut issuers = Vec::with_capacity(doc.issuers.len());
        for i in doc.issuers {
            let who = format!("issuer {:?}", i.issuer);
            if i.issuer.is_empty() || !seen.insert(i.issuer.clone()) {
                return Err(invalid(format!("{who} is empty or listed twice")));
            }
            if i.audiences.is_empty() || i.audiences.iter().any(String::is_empty) {
                return Err(invalid(format!(
                    "{who}: `audiences` must list at least one non-empty audience"
                )));
            }
            let sources = [
                i.jwks.is_some(),
                i.inline_jwks.is_some(),
                i.shared_secret_env.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(invalid(format!(
                    "{who}: set exactly one of `jwks`, `inline_jwks` or `shared_secret_env`"
                )));
            }
            let symmetric = i.shared_secret_env.is_some();
            let algorithms = match i.algorithms {
                Some(a) if a.is_empty() => {
                    return Err(invalid(format!("{who}: `algorithms` must not be empty")))
                }
                Some(a) => a,
                None if symmetric => vec![Algorithm::HS256],
                None => Algorithm::ASYMMETRIC.to_vec(),
            };
            if algorithms.iter().any(|a| a.is_symmetric() != symmetric) {
                return Err(invalid(format!(
                    "{who}: HS256/HS384/HS512 are allowed only, and alone, for an issuer with `shared_secret_env`"
                )));
            }
            let keys = if let Some(remote) = i.jwks {
                KeySource::Remote(
                    keys::RemoteJwks::compile(remote, &i.issuer)
                        .map_err(|m| invalid(format!("{who}: {m}")))?,
                )
            } else if let Some(inline) = i.inline_jwks {
                let text = match inline {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let (set, _) = KeySet::from_jwks(text.as_bytes())
                    .map_err(|e| invalid(format!("{who}: inline_jwks: {e}")))?;
                KeySource::Static(set)
            } else {
                let var = i.shared_secret_env.unwrap_or_default();
                let secret = env(&var).filter(|s| !s.is_empty()).ok_or_else(|| {
                    invalid(format!("{who}: {var} is not set in Envoy's environment"))
                })?;
                if secret.len() < 32 {
                    return Err(invalid(format!(
                        "{who}: the shared secret in {var} is shorter than 32 bytes"
                    )));
                }
                KeySource::Static(
                    KeySet::from_shared_secret(secret.as_bytes())
                        .map_err(|e| invalid(format!("{who}: {e}")))?,
                )
            };
            let claims = match &i.claims {
                Some(c) => ClaimPaths::compile(c).map_err(|m| invalid(format!("{who}: {m}")))?,
                None => default_claims.clone(),
            };
            issuers.push(Issuer {
                issuer: i.issuer,
                audiences: i.audiences.into_iter().collect(),
                algorithms,
                keys,
                claims,
            });
        }
        let mut token_sources = Vec::new();
        for s in doc.token_sources {
            let header = s.header.to_ascii_lowercase();
            if header.is_empty() || header.starts_with(':') {
                return Err(invalid(format!(
                    "token source header {:?} is not valid",
                    s.header
                )));
            }
            token_sources.push(TokenSource {
                header,
                scheme: s.scheme,
            });
        }
        Ok(Self {
            token_sources,
            issuers,
            skew_seconds: doc.clock_skew_seconds,
            max_token_bytes: doc.max_token_bytes,
            cache_entries: doc.cache_entries,
        })
    }

    /// Headers that carry tokens: all of them leave before upstream.
    pub fn token_headers(&self) -> impl Iterator<Item = &str> {
        self.token_sources.iter().map(|s| s.header.as_str())
    }

    /// The caller's token from the first configured source that has one.
    pub fn extract_token<'h>(&self, headers: Headers<'h>) -> Result<&'h str, AuthError> {
        for source in &self.token_sources {
            let Some(raw) = headers.get(&source.header) else {
                continue;
            };
            let value = std::str::from_utf8(raw)
                .map_err(|_| AuthError::Malformed)?
                .trim();
            let token = match &source.scheme {
                Some(scheme) => {
                    let (given, rest) = value.split_once(' ').ok_or(AuthError::Malformed)?;
                    if !given.eq_ignore_ascii_case(scheme) {
                        return Err(AuthError::Malformed);
                    }
                    rest.trim()
                }
                None => value,
            };
            if token.is_empty() {
                return Err(AuthError::NoToken);
            }
            if token.len() > self.max_token_bytes {
                return Err(AuthError::TooLarge);
            }
            return Ok(token);
        }
        Err(AuthError::NoToken)
    }

    /// Reads the token's header and payload without trusting them, to choose
    /// the issuer, the algorithm and the key. Nothing read here is believed
    /// until the signature verifies.
    pub fn inspect(&self, token: &str) -> Result<Unverified, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(_), Some(payload_b64), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let meta = Token::decode_metadata(token).map_err(|_| AuthError::Malformed)?;
        if meta.critical().is_some() {
            return Err(AuthError::Malformed);
        }
        // jwt-simple's rule, here for every algorithm (RSA tokens do not pass
        // through it): a `typ`, if there is one, says JWT.
        if meta.signature_type().is_some_and(|typ| {
            let typ = typ.to_uppercase();
            typ != "JWT" && !typ.ends_with("+JWT")
        }) {
            return Err(AuthError::Malformed);
        }
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| AuthError::Malformed)?;
        let claims: Value = serde_json::from_slice(&payload).map_err(|_| AuthError::Malformed)?;
        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(AuthError::UnknownIssuer),
        };
        let (issuer, spec) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.issuer == iss)
            .ok_or(AuthError::UnknownIssuer)?;
        let alg = Algorithm::from_name(meta.algorithm()).ok_or(AuthError::AlgorithmNotAllowed)?;
        if !spec.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        Ok(Unverified {
            issuer,
            alg,
            kid: meta.key_id().map(str::to_owned),
            claims,
            payload,
        })
    }

    /// Verifies a token inspected by [`Authenticator::inspect`] against `keys`
    /// (the issuer's current key set) at `now` (seconds since the epoch).
    pub fn verify(
        &self,
        token: &str,
        unverified: Unverified,
        keys: &KeySet,
        now: u64,
    ) -> Result<Identity, AuthError> {
        let issuer = self
            .issuers
            .get(unverified.issuer)
            .ok_or(AuthError::UnknownIssuer)?;
        check_time_claims(&unverified.claims)?;
        let mut candidates = keys
            .candidates(unverified.kid.as_deref(), unverified.alg)
            .peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::UnknownKey);
        }
        let rules = registered::ClaimRules {
            issuer: &issuer.issuer,
            audiences: &issuer.audiences,
            skew_seconds: self.skew_seconds,
            max_token_bytes: self.max_token_bytes,
            now,
        };
        let mut last = AuthError::BadSignature;
        for entry in candidates {
            match entry
                .key
                .verify(unverified.alg, token, &unverified.payload, &rules)
            {
                Ok(()) => {
                    return identity::map_claims(&issuer.issuer, &issuer.claims, &unverified.claims)
                }
                Err(err) => last = err,
            }
        }
        Err(last)
    }
}

/// What [`Authenticator::inspect`] learned from an unverified token.
#[derive(Debug, Clone)]
pub struct Unverified {
    pub issuer: usize,
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Value,
    /// The payload's bytes, decoded once: RSA tokens' claims are checked
    /// from them (see `registered::ClaimRules::check`).
    pub payload: Vec<u8>,
}

/// Times beyond this are refused outright: no IdP issues century-long tokens,
/// and the bound keeps every timestamp far from arithmetic overflow.
const MAX_TIMESTAMP: u64 = 1 << 40;

/// `exp` must be present and numeric; `exp`, `nbf` and `iat` must be
/// non-negative integers (or whole floats) below [`MAX_TIMESTAMP`]. The
/// comparison with the clock happens in jwt-simple, with the skew.
fn check_time_claims(claims: &Value) -> Result<(), AuthError> {
    let as_time = |v: &Value| -> Result<u64, AuthError> {
        let t = match v {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            }),
            _ => None,
        };
        t.filter(|t| *t < MAX_TIMESTAMP).ok_or(AuthError::Malformed)
    };
    match claims.get("exp") {
        None | Some(Value::Null) => return Err(AuthError::MissingExpiry),
        Some(v) => as_time(v)?,
    };
    for name in ["nbf", "iat"] {
        if let Some(v) = claims.get(name) {
            as_time(v)?;
        }
    }
    Ok(())
}

/// Why a request could not be authenticated. Messages are for the caller:
/// they say what to fix, never echo the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no token: send your identity token as `Authorization: Bearer <token>` (or as the API key)"
    )]
    NoToken,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is larger than the gateway accepts")]
    TooLarge,
    #[error("the token's issuer is not trusted by this gateway")]
    UnknownIssuer,
    #[error("the token's signing algorithm is not allowed for its issuer")]
    AlgorithmNotAllowed,
    #[error("the token was signed with a key its issuer does not publish")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no expiry (`exp`)")]
    MissingExpiry,
    #[error("the token is not meant for this gateway (audience)")]
    WrongAudience,
    #[error("the token has no subject (`sub`)")]
    MissingSubject,
    #[error("this machine key is not valid here: it was revoked, replaced, or never issued (a key issued moments ago may take a second to reach every gateway)")]
    UnknownMachineKey,
}

impl AuthError {
    /// A stable code for logs and the error body.
    pub fn code(self) -> Reason {
        match self {
            AuthError::NoToken => Reason::NoToken,
            AuthError::Malformed => Reason::TokenMalformed,
            AuthError::TooLarge => Reason::TokenTooLarge,
            AuthError::UnknownIssuer => Reason::TokenIssuer,
            AuthError::AlgorithmNotAllowed => Reason::TokenAlgorithm,
            AuthError::UnknownKey => Reason::TokenUnknownKey,
            AuthError::BadSignature => Reason::TokenSignature,
            AuthError::Expired => Reason::TokenExpired,
            AuthError::NotYetValid => Reason::TokenNotYetValid,
            AuthError::MissingExpiry => Reason::TokenNoExpiry,
            AuthError::WrongAudience => Reason::TokenAudience,
            AuthError::MissingSubject => Reason::TokenNoSubject,
            AuthError::UnknownMachineKey => Reason::MachineKeyUnknown,
        }
    }
}

#[cfg(test)]
mod tests;
