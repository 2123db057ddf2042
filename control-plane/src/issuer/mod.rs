//! The OpenID issuers the control plane serves itself, with what they share
//! (keys, JWKS, the authorization code flow with PKCE, refresh tokens):
//!
//! - the **dev issuer**, under `/dev` with `warden serve --dev`. **Never use
//!   `--dev` in production.** Anyone who can reach the control plane can
//!   mint a token for any subject, any group and any audience, signed by
//!   keys that the gateway is configured to trust. It exists so that a
//!   developer's laptop, the end-to-end tests and the demo can exercise real
//!   JWT validation (RS256, ES256 and EdDSA) without an identity provider;
//!   bind it to loopback only. It adds a JSON minting API ([`TokenRequest`])
//!   and a sign-in form.
//! - the **SAML issuer**, under `/idp` with `--saml-idp-metadata`: people
//!   sign in at the company's SAML IdP ([`crate::saml`]) and get this
//!   issuer's short-lived tokens, so gateways and the web page need nothing
//!   SAML-specific: they trust `<public-url>/idp` like any OIDC issuer.
//!
//! Both serve the discovery document, their JWKS (one RSA 2048, one P-256
//! and one Ed25519 public key) and the OpenID Connect authorization code
//! flow with PKCE (S256 only) for public clients: the approvers' page and
//! `warden login` (loopback redirect).
//!
//! # Layout
//!
//! | file | job |
//! | --- | --- |
//! | `keys.rs` | three key pairs (RSA, P-256, Ed25519): PEM files under `<data-dir>/dev-issuer/` (the dev issuer) or rows of the database (the SAML issuer), key ids, the JWKS, signing ([`SigningAlg`], [`IssuerError`]) |
//! | `tokens.rs` | minting: [`TokenRequest`], [`TokenResponse`], [`MintError`], the claims a token carries |
//! | `oauth.rs` | the code flow's protocol state: [`AuthorizeParams`], [`CodeExchange`], [`CodeTokens`], [`OAuthError`], the checks, the one-time codes, the refresh tokens |
//! | `ring.rs` | [`KeyRing`]: the published generations of keys, which one signs (a new one an hour after it is published), when to rotate |
//! | `provider.rs` | [`Issuer`] and [`IssuerKind`]: its URL, keys, codes and refresh tokens; discovery, [`Issuer::mint`] and the flow's steps |
//! | `http.rs` | every issuer route and its handler ([`routes`]), the dev sign-in form, the redirect that ends a sign-in |
//!
//! Dependencies point down that table: `keys` and `tokens` are leaves
//! (`tokens` names `keys`' algorithm), `ring` holds `keys`, `oauth` builds
//! on `tokens`, `provider` composes them, `http` serves `provider`. This file only declares and
//! re-exports; no child imports it.
//!
//! Key material, codes, verifiers and minted tokens are never logged.

mod http;
mod keys;
mod oauth;
mod provider;
mod ring;
mod tokens;

pub use http::{redirect_with_code, routes, see_other, sign_in_error};
pub use keys::{IssuerError, KeyPems, Keys, SigningAlg, DEV_KEY_DIR};
pub use oauth::{
    AuthorizeParams, CodeExchange, CodeTokens, OAuthError, SignIn, ValidAuthorize,
    CODE_TTL_SECONDS, FLOW_TOKEN_TTL_SECONDS, NATIVE_CLIENT_ID, REFRESH_TTL_SECONDS,
};
pub use provider::{Issuer, IssuerKind, ISSUER_PATH, SAML_ISSUER_PATH};
pub use ring::{
    Generation, KeyRing, LOADED_GENERATIONS, PREVIOUS_KEPT_MS, PUBLISH_AHEAD_MS, ROTATE_AFTER_MS,
};
pub use tokens::{
    MintError, TokenRequest, TokenResponse, DEFAULT_AUDIENCE, DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS,
};
