//! Warden's control plane: the `warden` server and command-line client.
//!
//! The gateway itself is a proxy-wasm filter running in Envoy (see
//! `filter/`); this crate is what configures and observes it. Today it is a
//! skeleton: an HTTP API with a health check, storage with migrations, and a
//! development OIDC issuer. Versioned policies, approvals, recorded sessions
//! and a web page hang on it later.
//!
//! # Layout
//!
//! | module | what it holds |
//! | --- | --- |
//! | `main.rs` | the binary: parses the command line and calls [`cli::run`]; nothing else |
//! | [`cli`] | clap definitions (`warden serve`, `warden token`, …) and the client verbs, which talk to the API over HTTP with reqwest |
//! | [`server`] | [`server::AppState`], [`server::app`] (the axum router), [`server::run`] (serve a bound listener until a shutdown future completes) and [`server::serve`] (what `warden serve` does) |
//! | [`error`] | [`error::ApiError`], the one error type handlers return; answered as `{"error":{"code","message"}}`, internal details logged, never sent |
//! | [`store`] | [`store::Store`], the database: SQLite at `<data-dir>/warden.db` by default, PostgreSQL for `--database-url postgres://…`; migrations from `migrations/sqlite` and `migrations/postgres` run at start |
//! | [`dev_issuer`] | the development OIDC issuer behind `--dev` (discovery, JWKS with RS256/ES256/EdDSA keys, token minting) |
//!
//! # Safety notes
//!
//! * `warden serve --dev` lets anyone who can reach the server mint tokens
//!   the gateway trusts. It is for a developer's machine and tests only,
//!   bound to loopback; **never use `--dev` in production**.
//! * Tokens, key material and database URLs are never logged.

pub mod api;
pub mod approvals;
pub mod cli;
pub mod client;
pub mod dev_issuer;
pub mod error;
pub mod policies;
pub mod server;
pub mod store;
pub mod user_auth;
pub mod web;
pub mod webhook;
