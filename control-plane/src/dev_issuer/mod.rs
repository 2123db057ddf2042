//! A development OpenID Connect issuer, served under `/dev` by `warden serve --dev`.
//!
//! **Never use `--dev` in production.** Anyone who can reach the control
//! plane can mint a token for any subject, any group and any audience, signed
//! by keys that the gateway is configured to trust. It exists so that a
//! developer's laptop, the end-to-end tests and the demo can exercise real
//! JWT validation (RS256, ES256 and EdDSA) without an identity provider; bind
//! it to loopback only.
//!
//! It serves the discovery document, its JWKS (one RSA 2048, one P-256 and
//! one Ed25519 public key), a JSON minting API ([`TokenRequest`]) and the
//! OpenID Connect authorization code flow with PKCE (S256 only) for public
//! clients such as the approvers' page.
//!
//! # Layout
//!
//! | file | job |
//! | --- | --- |
//! | `keys.rs` | the key pairs: PEM files under `<data-dir>/dev-issuer/`, key ids, the JWKS, signing ([`SigningAlg`], [`DevIssuerError`]) |
//! | `tokens.rs` | minting: [`TokenRequest`], [`TokenResponse`], [`MintError`], the claims a token carries |
//! | `oauth.rs` | the code flow's protocol state: [`AuthorizeParams`], [`CodeExchange`], [`CodeTokens`], [`OAuthError`], the checks, the one-time codes |
//! | `issuer.rs` | [`DevIssuer`]: its URL, keys and codes; discovery, [`DevIssuer::mint`] and the flow's steps |
//! | `http.rs` | every `/dev` route and its handler ([`routes`]), the sign-in form |
//!
//! Dependencies point down that table: `keys` and `tokens` are leaves
//! (`tokens` names `keys`' algorithm), `oauth` builds on `tokens`, `issuer`
//! composes the three, `http` serves `issuer`. This file only declares and
//! re-exports; no child imports it.
//!
//! Key material, codes, verifiers and minted tokens are never logged.

mod http;
mod issuer;
mod keys;
mod oauth;
mod tokens;

pub use http::routes;
pub use issuer::{DevIssuer, ISSUER_PATH};
pub use keys::{DevIssuerError, SigningAlg, KEY_DIR_NAME};
pub use oauth::{
    AuthorizeParams, CodeExchange, CodeTokens, OAuthError, SignIn, ValidAuthorize,
    CODE_TTL_SECONDS, FLOW_TOKEN_TTL_SECONDS,
};
pub use tokens::{
    MintError, TokenRequest, TokenResponse, DEFAULT_AUDIENCE, DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS,
};
