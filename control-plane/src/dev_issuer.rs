//! A development OpenID Connect issuer, served under `/dev` by `warden serve --dev`.
//!
//! **Never use `--dev` in production.** Anyone who can reach the control
//! plane can mint a token for any subject, any group and any audience, signed
//! by keys that the gateway is configured to trust. It exists so that a
//! developer's laptop, the end-to-end tests and the demo can exercise real
//! JWT validation (RS256, ES256 and EdDSA) without an identity provider; bind
//! it to loopback only.
//!
//! It serves:
//!
//! * `GET  /dev/.well-known/openid-configuration`: the discovery document;
//! * `GET  /dev/jwks.json`: one RSA 2048 (RS256), one P-256 (ES256) and one
//!   Ed25519 (EdDSA) public key;
//! * `POST /dev/token`: mints a token from a JSON [`TokenRequest`];
//! * `GET|POST /dev/authorize` and `POST /dev/oauth/token`: the OpenID
//!   Connect authorization code flow with PKCE (S256 only) for public
//!   clients such as the approvers' page. The HTTP side (a sign-in form that
//!   asks for a subject, an email and groups: it is a development IdP) lives
//!   in `web.rs`; the checks live here ([`DevIssuer::check_authorize`],
//!   [`DevIssuer::issue_code`], [`DevIssuer::exchange_code`]).
//!
//! Authorization codes are random (256 bits), live [`CODE_TTL_SECONDS`],
//! are kept in memory only, are bound to the client id, the redirect URI and
//! the PKCE challenge, and are removed on first use whatever its outcome
//! (RFC 6749 section 4.1.2: a code is used once). Redirect URIs must point at the
//! control plane's own origin, so the issuer cannot be used as an open
//! redirect.
//!
//! The three key pairs are generated on first start and kept as PEM files
//! (mode 0600, in a 0700 directory) under `<data-dir>/dev-issuer/`, so tokens
//! and the JWKS stay valid across restarts. A key's `kid` is the first 16 hex
//! digits of the SHA-256 of its public key (the DER `SubjectPublicKeyInfo` for
//! RSA, the uncompressed SEC1 point for P-256, the raw 32 bytes for Ed25519),
//! so it is stable too. Delete the directory to rotate the keys.
//!
//! Key material and minted tokens are never logged.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{
    ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair, Ed25519KeyPair, EdDSAKeyPairLike,
    HS256Key, JWTClaims, RS256KeyPair, RSAKeyPairLike,
};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::clock::unix_now;

/// Sub-directory of the data directory that holds the dev issuer's keys.
pub const KEY_DIR_NAME: &str = "dev-issuer";
/// Path under which the issuer is mounted; the issuer URL is `<public-url>/dev`.
pub const ISSUER_PATH: &str = "/dev";
/// Token lifetime when the request does not say.
pub const DEFAULT_TTL_SECONDS: u64 = 3600;
/// Longest lifetime a token can be minted with: 30 days.
pub const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Audience when the request does not say.
pub const DEFAULT_AUDIENCE: &str = "warden";

const RSA_MODULUS_BITS: usize = 2048;
const RS256_FILE: &str = "rs256.pem";
const ES256_FILE: &str = "es256.pem";
const ED25519_FILE: &str = "ed25519.pem";
/// Longest `sub`, email, group, audience or issuer accepted, in bytes.
const MAX_STRING_LEN: usize = 1024;
/// How long an authorization code can be exchanged, in seconds.
pub const CODE_TTL_SECONDS: u64 = 60;
/// Lifetime of the tokens the authorization code flow issues.
pub const FLOW_TOKEN_TTL_SECONDS: u64 = 3600;
/// Most codes waiting to be exchanged; more sign-ins are refused until some
/// expire, so a client that never exchanges its codes cannot grow memory.
const MAX_PENDING_CODES: usize = 10_000;
/// Longest `state`, `nonce`, `scope` or `client_id` accepted, in bytes.
const MAX_PARAM_LEN: usize = 512;

/// A JWS signing algorithm the dev issuer can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit key.
    #[default]
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl SigningAlg {
    /// Every algorithm, in the order the JWKS lists them.
    pub const ALL: [SigningAlg; 3] = [SigningAlg::RS256, SigningAlg::ES256, SigningAlg::EdDSA];

    /// The JOSE name: `RS256`, `ES256` or `EdDSA`.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::RS256 => "RS256",
            SigningAlg::ES256 => "ES256",
            SigningAlg::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SigningAlg {
    type Err = String;

    /// Case-insensitive; `Ed25519` is accepted for `EdDSA`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rs256" => Ok(SigningAlg::RS256),
            "es256" => Ok(SigningAlg::ES256),
            "eddsa" | "ed25519" => Ok(SigningAlg::EdDSA),
            _ => Err(format!(
                "unknown algorithm `{s}` (expected RS256, ES256 or EdDSA)"
            )),
        }
    }
}

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

/// Errors from loading or creating the dev issuer's keys.
#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    /// Reading or writing a key file or its directory failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A key file exists but does not hold a usable key.
    #[error("{path} does not hold a valid key ({reason}); delete it to generate a new one")]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// Generating or encoding a key failed.
    #[error("cannot create the {alg} key: {reason}")]
    Generate {
        /// Which key.
        alg: SigningAlg,
        /// Why.
        reason: String,
    },
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

/// An authorization request that passed [`DevIssuer::check_authorize`].
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

/// Who signs in on the dev issuer's form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

// Hand-written: the code and the verifier are credentials.
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
    /// The grant type is not `authorization_code`.
    #[error("only grant_type=authorization_code is supported here")]
    UnsupportedGrantType,
    /// The response type is not `code`.
    #[error("only response_type=code is supported")]
    UnsupportedResponseType,
    /// Too many codes are waiting; try again shortly.
    #[error("too many sign-ins in progress; try again in a minute")]
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

/// A code waiting to be exchanged, and what it is bound to.
struct IssuedCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    who: SignIn,
    expires_at: u64,
}

/// The dev issuer: its URL, its three key pairs and their JWKS.
pub struct DevIssuer {
    issuer: String,
    rs256: RS256KeyPair,
    es256: ES256KeyPair,
    eddsa: Ed25519KeyPair,
    kids: [String; 3],
    jwks: Value,
    /// Authorization codes waiting to be exchanged, by code.
    codes: Mutex<HashMap<String, IssuedCode>>,
}

// Hand-written: the key pairs must never be printed.
impl fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("kids", &self.kids)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// Loads the keys from `<data_dir>/dev-issuer/`, generating and saving
    /// any that are missing. `issuer` is the issuer URL (`<public-url>/dev`).
    ///
    /// This does blocking file I/O and, the first time, RSA key generation:
    /// call it from `spawn_blocking` in async code.
    pub fn load_or_generate(data_dir: &Path, issuer: String) -> Result<Self, DevIssuerError> {
        let dir = data_dir.join(KEY_DIR_NAME);
        create_private_dir(&dir)?;

        let rs256 = load_or_create(
            &dir.join(RS256_FILE),
            SigningAlg::RS256,
            || RS256KeyPair::generate(RSA_MODULUS_BITS).map_err(|e| e.to_string()),
            |key| key.to_pem().map_err(|e| e.to_string()),
            |pem| RS256KeyPair::from_pem(pem).map_err(|e| e.to_string()),
        )?;
        let es256 = load_or_create(
            &dir.join(ES256_FILE),
            SigningAlg::ES256,
            || Ok(ES256KeyPair::generate()),
            |key| key.to_pem().map_err(|e| e.to_string()),
            |pem| ES256KeyPair::from_pem(pem).map_err(|e| e.to_string()),
        )?;
        let eddsa = load_or_create(
            &dir.join(ED25519_FILE),
            SigningAlg::EdDSA,
            || Ok(Ed25519KeyPair::generate()),
            |key| Ok(key.to_pem()),
            |pem| Ed25519KeyPair::from_pem(pem).map_err(|e| e.to_string()),
        )?;

        // Public key material for the JWKS and the key ids.
        let rsa_public = rs256.public_key();
        let rsa_der = rsa_public.to_der().map_err(|e| DevIssuerError::Generate {
            alg: SigningAlg::RS256,
            reason: e.to_string(),
        })?;
        let rsa_components = rsa_public.to_components();
        let ec_public = es256.public_key();
        let ec_point = ECDSAP256PublicKeyLike::public_key(&ec_public).to_bytes_uncompressed();
        let ed_public = eddsa.public_key().to_bytes();

        // An uncompressed SEC1 point is 0x04 || x (32 bytes) || y (32 bytes).
        let (ec_x, ec_y) = match ec_point.as_slice() {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => {
                return Err(DevIssuerError::Generate {
                    alg: SigningAlg::ES256,
                    reason: "unexpected public point encoding".to_owned(),
                })
            }
        };

        let kids = [key_id(&rsa_der), key_id(&ec_point), key_id(&ed_public)];
        let [rs_kid, es_kid, ed_kid] = &kids;
        let jwks = json!({
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": rs_kid,
                    "n": b64url(&rsa_components.n),
                    "e": b64url(&rsa_components.e),
                },
                {
                    "kty": "EC",
                    "use": "sig",
                    "alg": "ES256",
                    "kid": es_kid,
                    "crv": "P-256",
                    "x": b64url(ec_x),
                    "y": b64url(ec_y),
                },
                {
                    "kty": "OKP",
                    "use": "sig",
                    "alg": "EdDSA",
                    "kid": ed_kid,
                    "crv": "Ed25519",
                    "x": b64url(&ed_public),
                },
            ]
        });

        Ok(DevIssuer {
            issuer,
            rs256: rs256.with_key_id(rs_kid),
            es256: es256.with_key_id(es_kid),
            eddsa: eddsa.with_key_id(ed_kid),
            kids,
            jwks,
            codes: Mutex::new(HashMap::new()),
        })
    }

    /// The issuer URL (`iss` of the tokens it mints by default).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `kid` of the key used for `alg`.
    pub fn key_id(&self, alg: SigningAlg) -> &str {
        match alg {
            SigningAlg::RS256 => &self.kids[0],
            SigningAlg::ES256 => &self.kids[1],
            SigningAlg::EdDSA => &self.kids[2],
        }
    }

    /// The JWKS served at `/dev/jwks.json`.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The OpenID Connect discovery document.
    pub fn discovery_document(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks.json", self.issuer),
            "authorization_endpoint": format!("{}/authorize", self.issuer),
            "token_endpoint": format!("{}/oauth/token", self.issuer),
            // Not a standard member: the JSON minting API (`POST /dev/token`).
            "warden_mint_endpoint": format!("{}/token", self.issuer),
            "id_token_signing_alg_values_supported":
                SigningAlg::ALL.iter().map(|alg| alg.as_str()).collect::<Vec<_>>(),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "grant_types_supported": ["authorization_code", "urn:warden:dev:direct"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            "token_endpoint_auth_methods_supported": ["none"],
            "claims_supported":
                ["iss", "sub", "aud", "exp", "iat", "nbf", "groups", "email", "nonce", "azp"],
        })
    }

    /// Validates `request` and mints a token signed with the key of its algorithm.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, MintError> {
        let claims = self.claims_for(request, unix_now())?;
        let alg = request.alg.unwrap_or_default();
        let mut jwt_claims = JWTClaims::<Map<String, Value>>::new();
        // Every claim, registered ones included, is carried in the custom map
        // so that the request's extra claims can replace generated ones.
        jwt_claims.custom = claims;
        let signed = match alg {
            SigningAlg::RS256 => self.rs256.sign(jwt_claims),
            SigningAlg::ES256 => self.es256.sign(jwt_claims),
            SigningAlg::EdDSA => self.eddsa.sign(jwt_claims),
        };
        signed.map_err(|e| MintError::Sign(e.to_string()))
    }

    /// Checks an authorization request: `response_type=code`, a client id,
    /// a redirect URI on the issuer's own origin, an S256 PKCE challenge and
    /// the `openid` scope. The caller shows errors to the user and never
    /// redirects on them, so an unchecked redirect URI is never followed.
    pub fn check_authorize(&self, params: &AuthorizeParams) -> Result<ValidAuthorize, OAuthError> {
        let client_id = required("client_id", params.client_id.as_deref())?;
        let redirect_uri = self.check_redirect_uri(params.redirect_uri.as_deref())?;
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

    /// A redirect URI is accepted only on the issuer's own origin (scheme,
    /// host and port), without credentials or a fragment.
    fn check_redirect_uri(&self, uri: Option<&str>) -> Result<Url, OAuthError> {
        let uri = required("redirect_uri", uri)?;
        let invalid = |why: &str| OAuthError::InvalidRequest(format!("redirect_uri {why}"));
        let parsed = Url::parse(uri).map_err(|_| invalid("is not an absolute URL"))?;
        let own = Url::parse(&self.issuer).map_err(|_| invalid("cannot be checked"))?;
        if parsed.origin() != own.origin() || !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("must be on this control plane's own origin"));
        }
        if parsed.fragment().is_some()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
        {
            return Err(invalid("must not carry a fragment or credentials"));
        }
        Ok(parsed)
    }

    /// Issues a one-time code for `who`, bound to the checked request.
    pub fn issue_code(
        &self,
        authorize: &ValidAuthorize,
        who: SignIn,
    ) -> Result<String, OAuthError> {
        self.issue_code_at(authorize, who, unix_now())
    }

    fn issue_code_at(
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
        // 256 bits from jwt-simple's CSPRNG (an HMAC key is exactly random bytes).
        let code = b64url(&HS256Key::generate().to_bytes());
        let mut codes = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
        codes.retain(|_, issued| issued.expires_at > now);
        if codes.len() >= MAX_PENDING_CODES {
            return Err(OAuthError::TemporarilyUnavailable);
        }
        codes.insert(
            code.clone(),
            IssuedCode {
                client_id: authorize.client_id.clone(),
                redirect_uri: authorize.redirect_uri.as_str().to_owned(),
                code_challenge: authorize.code_challenge.clone(),
                nonce: authorize.nonce.clone(),
                who: SignIn {
                    sub: sub.to_owned(),
                    email,
                    groups,
                },
                expires_at: now.saturating_add(CODE_TTL_SECONDS),
            },
        );
        Ok(code)
    }

    /// Exchanges a code for an access token (audience `warden`) and an ID
    /// token (audience the client id, with its nonce). The code is removed
    /// as soon as it is presented, so a second try fails even if the first
    /// one did.
    pub fn exchange_code(&self, request: &CodeExchange) -> Result<CodeTokens, OAuthError> {
        self.exchange_code_at(request, unix_now())
    }

    fn exchange_code_at(&self, request: &CodeExchange, now: u64) -> Result<CodeTokens, OAuthError> {
        match required("grant_type", request.grant_type.as_deref())? {
            "authorization_code" => {}
            _ => return Err(OAuthError::UnsupportedGrantType),
        }
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
        let issued = self
            .codes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(code);
        let grant = |why: &str| OAuthError::InvalidGrant(why.to_owned());
        let issued = issued.ok_or_else(|| grant("the code is unknown or was already used"))?;
        if issued.expires_at <= now {
            return Err(grant("the code has expired"));
        }
        if issued.client_id != client_id {
            return Err(grant("the code was issued to another client"));
        }
        if issued.redirect_uri != redirect_uri {
            return Err(grant(
                "redirect_uri differs from the authorization request's",
            ));
        }
        let computed = b64url(&Sha256::digest(verifier.as_bytes()));
        // Without an early exit: timing does not tell how much matched.
        if !bool::from(computed.as_bytes().ct_eq(issued.code_challenge.as_bytes())) {
            return Err(grant("code_verifier does not match the code challenge"));
        }

        let base = TokenRequest {
            sub: issued.who.sub.clone(),
            groups: issued.who.groups.clone(),
            email: issued.who.email.clone(),
            ttl_seconds: Some(FLOW_TOKEN_TTL_SECONDS),
            ..TokenRequest::default()
        };
        let mut azp = Map::new();
        azp.insert("azp".into(), Value::from(client_id));
        let access = TokenRequest {
            audience: Some(DEFAULT_AUDIENCE.to_owned()),
            claims: Some(azp.clone()),
            ..base.clone()
        };
        let mut id_claims = azp;
        if let Some(nonce) = issued.nonce {
            id_claims.insert("nonce".into(), Value::from(nonce));
        }
        let id = TokenRequest {
            audience: Some(client_id.to_owned()),
            claims: Some(id_claims),
            ..base
        };
        let sign = |request: &TokenRequest| {
            self.mint(request)
                .map_err(|error| OAuthError::Server(error.to_string()))
        };
        Ok(CodeTokens {
            access_token: sign(&access)?,
            id_token: sign(&id)?,
            token_type: "Bearer".to_owned(),
            expires_in: FLOW_TOKEN_TTL_SECONDS,
        })
    }

    /// The claims a token for `request` carries, as of `now` (Unix seconds).
    fn claims_for(
        &self,
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
            None => self.issuer.as_str(),
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

fn check_string<'a>(what: &str, value: &'a str) -> Result<&'a str, MintError> {
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

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// First 16 hex digits of the SHA-256 of `public_key`.
fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// Loads the key at `path`, or generates one and saves it there.
///
/// Saving writes a private temporary file and hard-links it into place, so a
/// reader never sees a half-written key and, if two processes race on the
/// same data directory, both end up using the one that was linked first.
fn load_or_create<K>(
    path: &Path,
    alg: SigningAlg,
    generate: impl FnOnce() -> Result<K, String>,
    encode: impl Fn(&K) -> Result<String, String>,
    decode: impl Fn(&str) -> Result<K, String>,
) -> Result<K, DevIssuerError> {
    if let Some(key) = load_key(path, &decode)? {
        return Ok(key);
    }
    let key = generate().map_err(|reason| DevIssuerError::Generate { alg, reason })?;
    let pem = encode(&key).map_err(|reason| DevIssuerError::Generate { alg, reason })?;
    let tmp = path.with_extension(format!("pem.tmp-{}", std::process::id()));
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DevIssuerError::Io {
            action,
            path,
            source,
        }
    };
    // A stale temporary file from a crash is ours to replace.
    match std::fs::remove_file(&tmp) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            return Err(io_error("cannot remove", &tmp)(error))
        }
        _ => {}
    }
    let mut file = private_file_options()
        .open(&tmp)
        .map_err(io_error("cannot create", &tmp))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("cannot write", &tmp))?;
    drop(file);
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(alg = %alg, path = %path.display(), "generated a dev issuer key");
            Ok(key)
        }
        // Another process saved its key first: use that one.
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            load_key(path, &decode)?.ok_or_else(|| io_error("cannot read", path)(error))
        }
        Err(error) => Err(io_error("cannot save", path)(error)),
    }
}

fn load_key<K>(
    path: &Path,
    decode: &impl Fn(&str) -> Result<K, String>,
) -> Result<Option<K>, DevIssuerError> {
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DevIssuerError::Io {
                action: "cannot read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    restrict_permissions(path);
    decode(&pem)
        .map(Some)
        .map_err(|reason| DevIssuerError::InvalidKey {
            path: path.to_path_buf(),
            reason,
        })
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), DevIssuerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DevIssuerError::Io {
            action: "cannot create",
            path: dir.to_path_buf(),
            source,
        })?;
    // `recursive` leaves an existing directory's mode alone.
    if let Err(error) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(path = %dir.display(), %error, "cannot restrict the dev issuer key directory to its owner");
    }
    Ok(())
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), DevIssuerError> {
    std::fs::create_dir_all(dir).map_err(|source| DevIssuerError::Io {
        action: "cannot create",
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(unix)]
fn private_file_options() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    options
}

#[cfg(not(unix))]
fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    options
}

/// Brings a key file that is readable by others back to mode 0600.
#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return;
    };
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "dev issuer key file was accessible to others; restricting it to mode 0600");
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), %error, "cannot restrict the dev issuer key file");
        }
    }
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn alg_names_parse_case_insensitively() {
        assert_eq!("RS256".parse::<SigningAlg>().unwrap(), SigningAlg::RS256);
        assert_eq!("es256".parse::<SigningAlg>().unwrap(), SigningAlg::ES256);
        assert_eq!("EdDSA".parse::<SigningAlg>().unwrap(), SigningAlg::EdDSA);
        assert_eq!("ed25519".parse::<SigningAlg>().unwrap(), SigningAlg::EdDSA);
        assert!("HS256".parse::<SigningAlg>().is_err());
        assert_eq!(serde_json::to_value(SigningAlg::EdDSA).unwrap(), "EdDSA");
        assert_eq!(
            serde_json::from_value::<SigningAlg>(json!("ES256")).unwrap(),
            SigningAlg::ES256
        );
    }

    #[test]
    fn key_id_is_16_hex_digits() {
        let kid = key_id(b"abc");
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(kid, "ba7816bf8f01cfea");
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = DevIssuer::load_or_generate(dir.path(), "http://x/dev".into()).unwrap();
        let key_dir = dir.path().join(KEY_DIR_NAME);
        let dir_mode = std::fs::metadata(&key_dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        for name in [RS256_FILE, ES256_FILE, ED25519_FILE] {
            let mode = std::fs::metadata(key_dir.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(&key_dir).unwrap().count(), 3);

        let second = DevIssuer::load_or_generate(dir.path(), "http://x/dev".into()).unwrap();
        assert_eq!(first.kids, second.kids);
        assert_eq!(first.jwks, second.jwks);
        assert!(!format!("{first:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_corrupt_key_file_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key_dir = dir.path().join(KEY_DIR_NAME);
        std::fs::create_dir_all(&key_dir).unwrap();
        std::fs::write(key_dir.join(ES256_FILE), "not a key").unwrap();
        let error = DevIssuer::load_or_generate(dir.path(), "http://x/dev".into()).unwrap_err();
        assert!(
            matches!(error, DevIssuerError::InvalidKey { .. }),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(key_dir.join(ES256_FILE)).unwrap(),
            "not a key"
        );
    }

    #[test]
    fn claims_follow_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::load_or_generate(dir.path(), "http://x/dev".into()).unwrap();
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
        let claims = issuer.claims_for(&request, 1_000).unwrap();
        assert_eq!(
            Value::Object(claims),
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

        let defaults = issuer
            .claims_for(
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

    #[test]
    fn invalid_requests_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::load_or_generate(dir.path(), "http://x/dev".into()).unwrap();
        let ok = TokenRequest {
            sub: "alice".into(),
            ..TokenRequest::default()
        };
        let cases = [
            TokenRequest {
                sub: "  ".into(),
                ..ok.clone()
            },
            TokenRequest {
                ttl_seconds: Some(0),
                ..ok.clone()
            },
            TokenRequest {
                ttl_seconds: Some(MAX_TTL_SECONDS + 1),
                ..ok.clone()
            },
            TokenRequest {
                groups: vec![String::new()],
                ..ok.clone()
            },
            TokenRequest {
                audience: Some(String::new()),
                ..ok.clone()
            },
            TokenRequest {
                email: Some(String::new()),
                ..ok.clone()
            },
            TokenRequest {
                sub: "x".repeat(MAX_STRING_LEN + 1),
                ..ok.clone()
            },
        ];
        for case in cases {
            assert!(
                matches!(issuer.mint(&case), Err(MintError::Invalid(_))),
                "{case:?}"
            );
        }
        assert!(issuer
            .mint(&TokenRequest {
                ttl_seconds: Some(MAX_TTL_SECONDS),
                ..ok
            })
            .is_ok());
    }

    fn issuer_at(dir: &tempfile::TempDir) -> DevIssuer {
        DevIssuer::load_or_generate(dir.path(), "http://127.0.0.1:8080/dev".into()).unwrap()
    }

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    // RFC 7636 appendix B: the challenge of the verifier above.
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn params() -> AuthorizeParams {
        AuthorizeParams {
            response_type: Some("code".into()),
            client_id: Some("warden-approvals".into()),
            redirect_uri: Some("http://127.0.0.1:8080/approvals".into()),
            state: Some("st".into()),
            nonce: Some("n-0S6".into()),
            code_challenge: Some(CHALLENGE.into()),
            code_challenge_method: Some("S256".into()),
            scope: Some("openid email".into()),
        }
    }

    fn exchange(code: &str) -> CodeExchange {
        CodeExchange {
            grant_type: Some("authorization_code".into()),
            code: Some(code.into()),
            redirect_uri: Some("http://127.0.0.1:8080/approvals".into()),
            client_id: Some("warden-approvals".into()),
            code_verifier: Some(VERIFIER.into()),
        }
    }

    fn alice() -> SignIn {
        SignIn {
            sub: "alice".into(),
            email: Some("alice@example.com".into()),
            groups: vec!["security".into()],
        }
    }

    fn payload(token: &str) -> Value {
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn the_code_flow_issues_tokens_for_the_signed_in_user() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir);
        let authorize = issuer.check_authorize(&params()).unwrap();
        let code = issuer.issue_code(&authorize, alice()).unwrap();
        assert_eq!(code.len(), 43);
        let tokens = issuer.exchange_code(&exchange(&code)).unwrap();
        assert_eq!(tokens.token_type, "Bearer");
        assert_eq!(tokens.expires_in, FLOW_TOKEN_TTL_SECONDS);
        let access = payload(&tokens.access_token);
        assert_eq!(access["aud"], "warden");
        assert_eq!(access["sub"], "alice");
        assert_eq!(access["groups"], json!(["security"]));
        assert_eq!(access["email"], "alice@example.com");
        assert_eq!(access["iss"], "http://127.0.0.1:8080/dev");
        assert!(access.get("nonce").is_none());
        let id = payload(&tokens.id_token);
        assert_eq!(id["aud"], "warden-approvals");
        assert_eq!(id["nonce"], "n-0S6");
        assert_eq!(id["azp"], "warden-approvals");
        assert!(!format!("{tokens:?}").contains(&tokens.access_token));
    }

    #[test]
    fn a_code_is_used_once_even_when_the_first_try_fails() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir);
        let authorize = issuer.check_authorize(&params()).unwrap();

        let code = issuer.issue_code(&authorize, alice()).unwrap();
        issuer.exchange_code(&exchange(&code)).unwrap();
        let replay = issuer.exchange_code(&exchange(&code)).unwrap_err();
        assert_eq!(replay.code(), "invalid_grant");

        let code = issuer.issue_code(&authorize, alice()).unwrap();
        let wrong = CodeExchange {
            code_verifier: Some("x".repeat(43)),
            ..exchange(&code)
        };
        assert_eq!(
            issuer.exchange_code(&wrong).unwrap_err().code(),
            "invalid_grant"
        );
        // The right verifier comes too late: the code is gone.
        assert_eq!(
            issuer.exchange_code(&exchange(&code)).unwrap_err().code(),
            "invalid_grant"
        );
    }

    #[test]
    fn a_code_is_bound_to_its_client_redirect_and_challenge_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir);
        let authorize = issuer.check_authorize(&params()).unwrap();
        let tampered: [fn(CodeExchange) -> CodeExchange; 4] = [
            |e| CodeExchange {
                redirect_uri: Some("http://127.0.0.1:8080/approvals/other".into()),
                ..e
            },
            |e| CodeExchange {
                client_id: Some("other-client".into()),
                ..e
            },
            |e| CodeExchange {
                // A valid verifier, but not the one the challenge was made from.
                code_verifier: Some(CHALLENGE.into()),
                ..e
            },
            |e| CodeExchange {
                code: Some("made-up".into()),
                ..e
            },
        ];
        for tamper in tampered {
            let code = issuer.issue_code(&authorize, alice()).unwrap();
            let error = issuer.exchange_code(&tamper(exchange(&code))).unwrap_err();
            assert_eq!(error.code(), "invalid_grant", "{error}");
        }

        let code = issuer.issue_code_at(&authorize, alice(), 1_000).unwrap();
        let error = issuer
            .exchange_code_at(&exchange(&code), 1_000 + CODE_TTL_SECONDS)
            .unwrap_err();
        assert_eq!(
            error,
            OAuthError::InvalidGrant("the code has expired".into())
        );
        let code = issuer.issue_code_at(&authorize, alice(), 1_000).unwrap();
        assert!(issuer
            .exchange_code_at(&exchange(&code), 1_000 + CODE_TTL_SECONDS - 1)
            .is_ok());
    }

    #[test]
    fn token_requests_are_checked_before_any_code_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir);
        let authorize = issuer.check_authorize(&params()).unwrap();
        let code = issuer.issue_code(&authorize, alice()).unwrap();
        let cases = [
            (
                CodeExchange {
                    grant_type: Some("password".into()),
                    ..exchange(&code)
                },
                "unsupported_grant_type",
            ),
            (
                CodeExchange {
                    code_verifier: None,
                    ..exchange(&code)
                },
                "invalid_request",
            ),
            (
                CodeExchange {
                    code_verifier: Some("short".into()),
                    ..exchange(&code)
                },
                "invalid_request",
            ),
            (
                CodeExchange {
                    code_verifier: Some(format!("{}!", &VERIFIER[1..])),
                    ..exchange(&code)
                },
                "invalid_request",
            ),
            (
                CodeExchange {
                    client_id: None,
                    ..exchange(&code)
                },
                "invalid_request",
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(issuer.exchange_code(&request).unwrap_err().code(), expected);
        }
        assert!(issuer.exchange_code(&exchange(&code)).is_ok());
    }

    #[test]
    fn authorization_requests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir);
        let cases: Vec<(AuthorizeParams, &str)> = vec![
            (
                AuthorizeParams {
                    redirect_uri: Some("http://evil.example/approvals".into()),
                    ..params()
                },
                "own origin",
            ),
            (
                AuthorizeParams {
                    redirect_uri: Some("http://127.0.0.1:8081/approvals".into()),
                    ..params()
                },
                "own origin",
            ),
            (
                AuthorizeParams {
                    redirect_uri: Some("https://127.0.0.1:8080/approvals".into()),
                    ..params()
                },
                "own origin",
            ),
            (
                AuthorizeParams {
                    redirect_uri: Some("//evil.example/x".into()),
                    ..params()
                },
                "absolute",
            ),
            (
                AuthorizeParams {
                    redirect_uri: Some("http://u:p@127.0.0.1:8080/approvals".into()),
                    ..params()
                },
                "credentials",
            ),
            (
                AuthorizeParams {
                    redirect_uri: Some("http://127.0.0.1:8080/approvals#x".into()),
                    ..params()
                },
                "fragment",
            ),
            (
                AuthorizeParams {
                    redirect_uri: None,
                    ..params()
                },
                "redirect_uri is required",
            ),
            (
                AuthorizeParams {
                    code_challenge_method: Some("plain".into()),
                    ..params()
                },
                "S256",
            ),
            (
                AuthorizeParams {
                    code_challenge_method: None,
                    code_challenge: None,
                    ..params()
                },
                "PKCE is required",
            ),
            (
                AuthorizeParams {
                    code_challenge: Some("abc".into()),
                    ..params()
                },
                "43-character",
            ),
            (
                AuthorizeParams {
                    scope: Some("email".into()),
                    ..params()
                },
                "openid",
            ),
            (
                AuthorizeParams {
                    client_id: None,
                    ..params()
                },
                "client_id is required",
            ),
            (
                AuthorizeParams {
                    state: Some("s".repeat(MAX_PARAM_LEN + 1)),
                    ..params()
                },
                "longer",
            ),
        ];
        for (request, expected) in cases {
            let error = issuer.check_authorize(&request).unwrap_err();
            assert!(error.to_string().contains(expected), "{request:?}: {error}");
        }
        let token_flow = AuthorizeParams {
            response_type: Some("token".into()),
            ..params()
        };
        assert_eq!(
            issuer.check_authorize(&token_flow).unwrap_err(),
            OAuthError::UnsupportedResponseType
        );
        // The sign-in form's fields are checked too.
        let authorize = issuer.check_authorize(&params()).unwrap();
        let nobody = SignIn {
            sub: " ".into(),
            ..alice()
        };
        assert_eq!(
            issuer.issue_code(&authorize, nobody).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn discovery_names_the_code_flow() {
        let dir = tempfile::tempdir().unwrap();
        let doc = issuer_at(&dir).discovery_document();
        assert_eq!(
            doc["authorization_endpoint"],
            "http://127.0.0.1:8080/dev/authorize"
        );
        assert_eq!(
            doc["token_endpoint"],
            "http://127.0.0.1:8080/dev/oauth/token"
        );
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(doc["response_types_supported"], json!(["code"]));
    }
}
