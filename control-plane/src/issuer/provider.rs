//! An issuer itself: its URL, its keys, its pending codes and refresh
//! tokens, and what it does with them: the discovery document, minting
//! ([`Issuer::mint`], the dev issuer's API) and the code flow's steps
//! ([`Issuer::check_authorize`], [`Issuer::issue_code`],
//! [`Issuer::token`]), each reading the server's clock once and passing the
//! time down. Who signs in is the caller's business: the dev form or SAML.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use serde_json::{json, Value};

use super::keys::{IssuerError, Keys, SigningAlg, DEV_KEY_DIR};
use super::oauth::{
    self, AuthorizeParams, CodeExchange, CodeTokens, Codes, Grant, OAuthError, RefreshTokens,
    SignIn, ValidAuthorize, FLOW_TOKEN_TTL_SECONDS,
};
use super::ring::KeyRing;
use super::tokens::{self, MintError, TokenRequest};
use crate::clock::Clock;
use crate::store::Store;
use warden_engine::auth::jwks::KeySet;

/// Path under which the dev issuer is mounted; its URL is `<public-url>/dev`.
pub const ISSUER_PATH: &str = "/dev";
/// Path under which the SAML-backed issuer is mounted: `<public-url>/idp`.
pub const SAML_ISSUER_PATH: &str = "/idp";

/// Which issuer this is: what signs people in, and what else it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    /// `--dev`: anyone signs in as anyone on a form; tokens can be minted.
    Dev,
    /// People sign in at the company's SAML IdP ([`crate::saml`]); nothing is minted.
    Saml,
}

impl IssuerKind {
    /// Where the issuer is mounted.
    pub fn path(self) -> &'static str {
        match self {
            IssuerKind::Dev => ISSUER_PATH,
            IssuerKind::Saml => SAML_ISSUER_PATH,
        }
    }

    /// The algorithm of the code flow's tokens: the dev issuer keeps RS256
    /// (what most IdPs use, so tests see the common case); the SAML issuer
    /// signs with ES256, which gateways verify in half the time.
    fn flow_alg(self) -> SigningAlg {
        match self {
            IssuerKind::Dev => SigningAlg::RS256,
            IssuerKind::Saml => SigningAlg::ES256,
        }
    }
}

/// An OpenID issuer served by the control plane: its URL, its three key
/// pairs and their JWKS, the authorization codes waiting to be exchanged,
/// the live refresh tokens, and the clock its tokens' and codes' times are
/// read on.
pub struct Issuer {
    issuer: String,
    kind: IssuerKind,
    /// Replaced whole when the keys rotate ([`Issuer::set_ring`]).
    ring: RwLock<Arc<KeyRing>>,
    codes: Codes,
    refresh_tokens: RefreshTokens,
    clock: Clock,
}

// Hand-written: the key pairs must never be printed.
impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("issuer", &self.issuer)
            .field("kind", &self.kind)
            .field("kids", &self.ring().kids())
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// The dev issuer: its keys from `<data_dir>/dev-issuer/`, generating
    /// and saving any that are missing. `issuer` is its URL
    /// (`<public-url>/dev`); tokens and codes are dated by `clock`.
    ///
    /// This does blocking file I/O and, the first time, RSA key generation:
    /// call it from `spawn_blocking` in async code.
    pub fn load_or_generate(
        data_dir: &Path,
        issuer: String,
        clock: Clock,
        store: Store,
    ) -> Result<Self, IssuerError> {
        let keys = Keys::load_or_generate(&data_dir.join(DEV_KEY_DIR))?;
        let ring = KeyRing::single(keys).map_err(|reason| IssuerError::Generate {
            alg: SigningAlg::RS256,
            reason,
        })?;
        Ok(Issuer::with_ring(
            IssuerKind::Dev,
            issuer,
            ring,
            clock,
            store,
        ))
    }

    /// An issuer signing with `ring` (the SAML issuer's generations from
    /// the database, [`crate::key_rotation`]), its codes and refresh tokens
    /// in `store`.
    pub fn with_ring(
        kind: IssuerKind,
        issuer: String,
        ring: KeyRing,
        clock: Clock,
        store: Store,
    ) -> Self {
        Issuer {
            issuer,
            kind,
            ring: RwLock::new(Arc::new(ring)),
            codes: Codes::new(store.clone(), kind.path()),
            refresh_tokens: RefreshTokens::new(store, kind.path()),
            clock,
        }
    }

    /// The keys as they are now.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the keys (a rotation, or another replica's).
    pub fn set_ring(&self, ring: KeyRing) {
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
    }

    /// Which issuer this is.
    pub fn kind(&self) -> IssuerKind {
        self.kind
    }

    /// The issuer URL (`iss` of the tokens it mints by default).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWKS served at `<issuer>/jwks.json`: every published generation.
    pub fn jwks(&self) -> Value {
        self.ring().jwks().clone()
    }

    /// The published keys, to verify the issuer's own tokens.
    pub fn key_set(&self) -> Arc<KeySet> {
        self.ring().key_set()
    }

    /// The OpenID Connect discovery document.
    pub fn discovery_document(&self) -> Value {
        let mut document = json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/jwks.json", self.issuer),
            "authorization_endpoint": format!("{}/authorize", self.issuer),
            "token_endpoint": format!("{}/oauth/token", self.issuer),
            "revocation_endpoint": format!("{}/oauth/revoke", self.issuer),
            "id_token_signing_alg_values_supported":
                SigningAlg::ALL.iter().map(|alg| alg.as_str()).collect::<Vec<_>>(),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "email", "groups", "offline_access"],
            "token_endpoint_auth_methods_supported": ["none"],
            "claims_supported":
                ["iss", "sub", "aud", "exp", "iat", "nbf", "groups", "email", "nonce", "azp"],
        });
        if self.kind == IssuerKind::Dev {
            // Not a standard member: the JSON minting API (`POST /dev/token`).
            document["warden_mint_endpoint"] = Value::from(format!("{}/token", self.issuer));
            document["grant_types_supported"] = json!([
                "authorization_code",
                "refresh_token",
                "urn:warden:dev:direct"
            ]);
        }
        document
    }

    /// Validates `request` and mints a token signed with the key of its algorithm.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, MintError> {
        let now_ms = self.clock.now_ms();
        let claims = tokens::claims(&self.issuer, request, self.clock.now_s())?;
        self.ring()
            .sign(request.alg.unwrap_or_default(), claims, now_ms)
            .map_err(MintError::Sign)
    }

    /// Checks an authorization request: `response_type=code`, a client id,
    /// a redirect URI on the issuer's own origin, an S256 PKCE challenge and
    /// the `openid` scope. The caller shows errors to the user and never
    /// redirects on them, so an unchecked redirect URI is never followed.
    pub fn check_authorize(&self, params: &AuthorizeParams) -> Result<ValidAuthorize, OAuthError> {
        oauth::check_authorize(&self.issuer, params)
    }

    /// Issues a one-time code for `who`, bound to the checked request.
    pub async fn issue_code(
        &self,
        authorize: &ValidAuthorize,
        who: SignIn,
    ) -> Result<String, OAuthError> {
        self.codes.issue(authorize, who, self.clock.now_s()).await
    }

    /// The token endpoint: exchanges a code (`authorization_code`) or a
    /// refresh token (`refresh_token`) for an access token (audience
    /// `warden`) and an ID token (audience the client id, with the sign-in's
    /// nonce), plus a new refresh token when the sign-in asked for
    /// `offline_access`. A code or refresh token is removed as soon as it is
    /// presented, so a second try fails even if the first one did.
    pub async fn token(&self, request: &CodeExchange) -> Result<CodeTokens, OAuthError> {
        let now = self.clock.now_s();
        let grant = match request.grant_type.as_deref() {
            Some("authorization_code") => self.codes.redeem(request, now).await?,
            Some("refresh_token") => self.refresh_tokens.redeem(request, now).await?,
            None | Some("") => {
                return Err(OAuthError::InvalidRequest(
                    "grant_type is required".to_owned(),
                ))
            }
            Some(_) => return Err(OAuthError::UnsupportedGrantType),
        };
        self.tokens_for(&grant, now).await
    }

    /// The revocation endpoint (RFC 7009): ends a refresh token. An access
    /// token is not revocable (it lives an hour); revoking one changes nothing.
    pub async fn revoke(&self, token: &str) -> Result<(), OAuthError> {
        self.refresh_tokens.revoke(token).await
    }

    async fn tokens_for(&self, grant: &Grant, now: u64) -> Result<CodeTokens, OAuthError> {
        let (access, id) = grant.token_requests();
        let ring = self.ring();
        let now_ms = self.clock.now_ms();
        let sign = |request: &TokenRequest| {
            let claims = tokens::claims(&self.issuer, request, now)
                .map_err(|error| OAuthError::Server(error.to_string()))?;
            ring.sign(self.kind.flow_alg(), claims, now_ms)
                .map_err(OAuthError::Server)
        };
        let access_token = sign(&access)?;
        let id_token = sign(&id)?;
        Ok(CodeTokens {
            access_token,
            id_token,
            token_type: "Bearer".to_owned(),
            expires_in: FLOW_TOKEN_TTL_SECONDS,
            refresh_token: self.refresh_tokens.issue(grant, now).await?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::issuer::oauth::{CODE_TTL_SECONDS, MAX_PARAM_LEN};
    use crate::issuer::tokens::{MAX_STRING_LEN, MAX_TTL_SECONDS};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;

    #[tokio::test]
    async fn invalid_requests_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir, &ManualClock::at(NOW_MS)).await;
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

    /// Where the tests' clocks start: 2026-01-02T03:04:05Z.
    const NOW_MS: i64 = 1_767_323_045_000;

    /// An issuer whose time is `time`'s.
    async fn issuer_at(dir: &tempfile::TempDir, time: &ManualClock) -> Issuer {
        let store = Store::open(&crate::store::DatabaseTarget::SqliteFile(
            dir.path().join("warden.db"),
        ))
        .await
        .unwrap();
        Issuer::load_or_generate(
            dir.path(),
            "http://127.0.0.1:8080/dev".into(),
            time.clock(),
            store,
        )
        .unwrap()
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
            refresh_token: None,
        }
    }

    fn refresh(token: &str) -> CodeExchange {
        CodeExchange {
            grant_type: Some("refresh_token".into()),
            refresh_token: Some(token.into()),
            client_id: Some("warden-cli".into()),
            ..CodeExchange::default()
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

    #[tokio::test]
    async fn the_code_flow_issues_tokens_for_the_signed_in_user() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir, &ManualClock::at(NOW_MS)).await;
        let authorize = issuer.check_authorize(&params()).unwrap();
        let code = issuer.issue_code(&authorize, alice()).await.unwrap();
        assert_eq!(code.len(), 43);
        let tokens = issuer.token(&exchange(&code)).await.unwrap();
        assert_eq!(tokens.token_type, "Bearer");
        assert_eq!(tokens.expires_in, FLOW_TOKEN_TTL_SECONDS);
        let access = payload(&tokens.access_token);
        assert_eq!(access["aud"], "warden");
        assert_eq!(access["sub"], "alice");
        assert_eq!(access["groups"], json!(["security"]));
        assert_eq!(access["email"], "alice@example.com");
        assert_eq!(access["iss"], "http://127.0.0.1:8080/dev");
        // Dated by the issuer's clock.
        assert_eq!(access["iat"], NOW_MS / 1000);
        assert_eq!(access["exp"], NOW_MS / 1000 + FLOW_TOKEN_TTL_SECONDS as i64);
        assert!(access.get("nonce").is_none());
        let id = payload(&tokens.id_token);
        assert_eq!(id["aud"], "warden-approvals");
        assert_eq!(id["nonce"], "n-0S6");
        assert_eq!(id["azp"], "warden-approvals");
        assert!(!format!("{tokens:?}").contains(&tokens.access_token));
    }

    #[tokio::test]
    async fn a_code_is_used_once_even_when_the_first_try_fails() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir, &ManualClock::at(NOW_MS)).await;
        let authorize = issuer.check_authorize(&params()).unwrap();

        let code = issuer.issue_code(&authorize, alice()).await.unwrap();
        issuer.token(&exchange(&code)).await.unwrap();
        let replay = issuer.token(&exchange(&code)).await.unwrap_err();
        assert_eq!(replay.code(), "invalid_grant");

        let code = issuer.issue_code(&authorize, alice()).await.unwrap();
        let wrong = CodeExchange {
            code_verifier: Some("x".repeat(43)),
            ..exchange(&code)
        };
        assert_eq!(
            issuer.token(&wrong).await.unwrap_err().code(),
            "invalid_grant"
        );
        // The right verifier comes too late: the code is gone.
        assert_eq!(
            issuer.token(&exchange(&code)).await.unwrap_err().code(),
            "invalid_grant"
        );
    }

    #[tokio::test]
    async fn a_code_is_bound_to_its_client_redirect_and_challenge_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let time = ManualClock::at(NOW_MS);
        let issuer = issuer_at(&dir, &time).await;
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
            let code = issuer.issue_code(&authorize, alice()).await.unwrap();
            let error = issuer.token(&tamper(exchange(&code))).await.unwrap_err();
            assert_eq!(error.code(), "invalid_grant", "{error}");
        }

        // A second before its expiry a code is good; at its expiry it is not.
        let ttl = std::time::Duration::from_secs(CODE_TTL_SECONDS);
        let second = std::time::Duration::from_secs(1);
        let code = issuer.issue_code(&authorize, alice()).await.unwrap();
        time.advance(ttl - second);
        assert!(issuer.token(&exchange(&code)).await.is_ok());
        let code = issuer.issue_code(&authorize, alice()).await.unwrap();
        time.advance(ttl);
        let error = issuer.token(&exchange(&code)).await.unwrap_err();
        assert_eq!(
            error,
            OAuthError::InvalidGrant("the code has expired".into())
        );
    }

    #[tokio::test]
    async fn token_requests_are_checked_before_any_code_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir, &ManualClock::at(NOW_MS)).await;
        let authorize = issuer.check_authorize(&params()).unwrap();
        let code = issuer.issue_code(&authorize, alice()).await.unwrap();
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
            assert_eq!(issuer.token(&request).await.unwrap_err().code(), expected);
        }
        assert!(issuer.token(&exchange(&code)).await.is_ok());
    }

    #[tokio::test]
    async fn authorization_requests_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir, &ManualClock::at(NOW_MS)).await;
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
                    redirect_uri: Some("http://10.0.0.1:8080/approvals".into()),
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
            issuer
                .issue_code(&authorize, nobody)
                .await
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }

    #[tokio::test]
    async fn native_clients_may_redirect_to_loopback_only() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir, &ManualClock::at(NOW_MS)).await;
        let with = |client: &str, uri: &str| AuthorizeParams {
            client_id: Some(client.into()),
            redirect_uri: Some(uri.into()),
            ..params()
        };
        for uri in ["http://127.0.0.1:53117/callback", "http://[::1]:4000/"] {
            assert!(
                issuer.check_authorize(&with("warden-cli", uri)).is_ok(),
                "{uri}"
            );
            // The page's client is a web client: its own origin only.
            assert!(
                issuer
                    .check_authorize(&with("warden-approvals", uri))
                    .is_err(),
                "{uri}"
            );
        }
        for uri in [
            "http://localhost:9/cb",
            "https://127.0.0.1:9/cb",
            "http://127.0.0.1.evil.example:80/cb",
            "http://localhost.evil.example/cb",
            "http://[::2]:4000/",
            "http://u:p@127.0.0.1:9/cb",
            "http://127.0.0.1:9/cb#x",
            "http://127.0.0.1:9/cb?code=x",
            "http://127.0.0.1:9/cb?a=1&state=x",
        ] {
            assert!(
                issuer.check_authorize(&with("warden-cli", uri)).is_err(),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_are_bound_to_the_client_and_end_with_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let time = ManualClock::at(NOW_MS);
        let issuer = issuer_at(&dir, &time).await;
        let cli = |scope: &str| AuthorizeParams {
            client_id: Some("warden-cli".into()),
            redirect_uri: Some("http://127.0.0.1:53117/callback".into()),
            scope: Some(scope.into()),
            ..params()
        };
        let issuer = &issuer;
        let cli = &cli;
        let sign_in = move |scope: &'static str| async move {
            let authorize = issuer.check_authorize(&cli(scope)).unwrap();
            let code = issuer.issue_code(&authorize, alice()).await.unwrap();
            issuer
                .token(&CodeExchange {
                    client_id: Some("warden-cli".into()),
                    redirect_uri: Some("http://127.0.0.1:53117/callback".into()),
                    ..exchange(&code)
                })
                .await
                .unwrap()
        };
        // Without offline_access, no refresh token.
        assert!(sign_in("openid email").await.refresh_token.is_none());

        let first = sign_in("openid offline_access")
            .await
            .refresh_token
            .unwrap();
        assert!(!format!("{:?}", sign_in("openid offline_access").await).contains("refresh"));
        // Another client cannot use it, and the attempt spends it.
        let stolen = CodeExchange {
            client_id: Some("warden-approvals".into()),
            ..refresh(&first)
        };
        assert_eq!(
            issuer.token(&stolen).await.unwrap_err().code(),
            "invalid_grant"
        );
        assert_eq!(
            issuer.token(&refresh(&first)).await.unwrap_err().code(),
            "invalid_grant"
        );

        // Rotation: each use returns a successor and retires the token used.
        let mut current = sign_in("openid offline_access")
            .await
            .refresh_token
            .unwrap();
        time.advance(std::time::Duration::from_secs(2 * 3600));
        let renewed = issuer.token(&refresh(&current)).await.unwrap();
        assert_eq!(payload(&renewed.access_token)["sub"], "alice");
        assert_eq!(
            payload(&renewed.access_token)["iat"],
            NOW_MS / 1000 + 2 * 3600
        );
        assert_eq!(
            issuer.token(&refresh(&current)).await.unwrap_err().code(),
            "invalid_grant"
        );
        current = renewed.refresh_token.unwrap();

        // However often it is rotated, the chain ends 12 hours after the sign-in.
        time.advance(std::time::Duration::from_secs(10 * 3600 - 1));
        current = issuer
            .token(&refresh(&current))
            .await
            .unwrap()
            .refresh_token
            .unwrap();
        time.advance(std::time::Duration::from_secs(1));
        assert_eq!(
            issuer.token(&refresh(&current)).await.unwrap_err(),
            OAuthError::InvalidGrant("the sign-in has expired; sign in again".into())
        );

        // Revoked (warden logout): gone at once; unknown tokens are no error.
        let revoked = sign_in("openid offline_access")
            .await
            .refresh_token
            .unwrap();
        issuer.revoke(&revoked).await.unwrap();
        issuer.revoke("never-issued").await.unwrap();
        assert_eq!(
            issuer.token(&refresh(&revoked)).await.unwrap_err().code(),
            "invalid_grant"
        );
    }

    #[tokio::test]
    async fn discovery_names_the_code_flow() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = issuer_at(&dir, &ManualClock::at(NOW_MS)).await;
        // The key pairs are never printed.
        assert!(!format!("{issuer:?}").contains("PRIVATE"));
        let doc = issuer.discovery_document();
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
