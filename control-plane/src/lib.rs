//! Warden's control plane: the `warden` server and command-line client.
//!
//! The gateway itself is a proxy-wasm filter running in Envoy (see
//! `filter/`); this crate is what configures and observes it. It
//! stores versioned policies (served to the gateways with ETags) and
//! just-in-time approvals (opened by gateways, decided by people), recorded
//! sessions (appended by gateways to a hash chain, read by auditors), verifies
//! people's tokens with the filter engine's own JWT code, and runs a
//! development OIDC issuer. `docs/control-plane.md` describes the API and CLI.
//!
//! # Layout
//!
//! | module | what it holds |
//! | --- | --- |
//! | `main.rs` | the binary: parses the command line and calls [`cli::run`]; nothing else |
//! | [`cli`] | clap definitions of `warden`, `warden serve` and `warden token`, and the dispatch of every verb; depends on [`client`], never the reverse |
//! | [`client`] | the verbs that call a running control plane (`warden policy …`, `warden approvals …`, `warden sessions …`, `warden token`'s request): their arguments, HTTP calls, tables, `--json` |
//! | [`api`] | the `/v1` routes: policies (publish, list, show, validate, activate, active + ETag, schema) and approvals (open, wait, consume, list, show, approve, deny) |
//! | [`policies`] | validation with the engine's `check_document`, problem paths mapped to YAML lines, hashes; the server's [`policies::Checker`] (compiles on blocking threads, bounded in size, concurrency, time and per-caller rate) |
//! | [`approvals`] | the approval request and answer shapes, derived status (expired, consumed), ids |
//! | [`user_auth`] | people's bearer tokens (dev issuer, OIDC discovery issuers) and the gateway secret |
//! | [`sessions`] | recorded sessions: the gateways' batch append, the auditors' list/show, the chain's check |
//! | [`chain`] | the session records' hash chain: a record's canonical text and each row's hash (a leaf the store and the sessions routes share) |
//! | [`webhook`] | the background announcement of new approvals (JSON or Slack, whose request fields are escaped and bounded) |
//! | [`server`] | the composition root: [`server::app`] (the axum router), [`server::run`] (serve a bound listener until a shutdown future completes) and [`server::serve`] (what `warden serve` does) |
//! | [`state`] | [`state::AppState`], what every handler shares, and [`state::ServerConfig`]; the route modules import it, never [`server`] |
//! | [`clock`] | the wall clock (`unix_now`, `unix_now_ms`), read at the edges and passed down; stored times written as RFC 3339 (the engine's `rfc3339_millis`) |
//! | [`fields`] | user-controlled text bounded (cut at a character boundary, with a marker) before it is stored, and escaped and bounded before it is logged |
//! | [`error`] | [`error::ApiError`], the one error type handlers return; answered as `{"error":{"code","message"}}`, internal details logged, never sent |
//! | [`store`] | [`store::Store`], the database: SQLite at `<data-dir>/warden.db` by default, PostgreSQL for `--database-url postgres://…`; migrations from `migrations/sqlite` and `migrations/postgres` run at start; every state change (publish, activate, decide, consume) is one atomic conditional statement or transaction, run to completion on a task of its own (a dropped request cannot leave a transaction open), and a connection returned inside a transaction is closed |
//! | [`dev_issuer`] | the development OIDC issuer behind `--dev`: `keys.rs` (key files, JWKS, signing), `tokens.rs` (minting), `oauth.rs` (the authorization code flow with PKCE: checks and one-time codes), `issuer.rs` (the issuer), `http.rs` (every `/dev` route) |
//! | [`web`] | the web page: approvals (`/approvals`) and the auditors' session replay (`/sessions`), assets from `web/`, `/v1/ui/config` |
//! | [`html`] | HTML answers with the pages' security headers (the page and the dev issuer's sign-in form) |
//!
//! # Safety notes
//!
//! * `warden serve --dev` lets anyone who can reach the server mint tokens
//!   the gateway trusts. It is for a developer's machine and tests only,
//!   bound to loopback; **never use `--dev` in production**.
//! * Tokens, key material and database URLs are never logged. Fields from
//!   requests are logged escaped and bounded ([`fields::logged`]).

pub mod api;
pub mod approvals;
pub mod chain;
pub mod cli;
pub mod client;
pub mod clock;
pub mod dev_issuer;
pub mod error;
pub mod fields;
pub mod html;
pub mod policies;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod user_auth;
pub mod web;
pub mod webhook;
