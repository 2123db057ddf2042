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
//! | [`cli`] | the clap definitions of `warden` and its `serve` and `token` verbs, and [`cli::run`], which dispatches every verb; it depends on [`client`], never the reverse |
//! | [`client`] | the verbs that call a running control plane over HTTP (`warden policy …`, `warden approvals …`, `warden sessions …`, and `warden token`'s request): their arguments, tables, `--json` |
//! | [`login`] | a person's own credentials: `warden login`, `access-token`, `logout`, `whoami` (their arguments, the refresh under a lock, the printed answers) |
//! | [`oidc_client`] | the OAuth/OIDC client side of `warden login`: discovery, PKCE with a loopback redirect, the device grant, refresh, revocation |
//! | [`token_store`] | the stored logins: one `0600` file per issuer and client under `~/.config/warden/`, written atomically, locked while refreshed |
//! | [`server`] | the composition root: [`server::app`] (the axum router, composed of the route modules below), [`server::run`] (serve a bound listener until a shutdown future completes) and [`server::serve`] (what `warden serve` does) |
//! | [`state`] | [`state::AppState`], what every handler shares (store, dev issuer, token verifier, webhook, policy checker, clock), and [`state::ServerConfig`], the settings it is built from |
//! | [`api`] | the `/v1` routes: policies (publish, list, show, validate, activate, active + ETag, schema) and approvals (open, wait, consume, list, show, approve, deny) |
//! | [`sessions`] | recorded sessions: the gateways' batch append (read into the engine's `SessionBatch`), the auditors' list/show, the chain's check |
//! | [`whoami`] | `GET /v1/login` (the IdP and client `warden login` uses) and `GET /v1/whoami` (the caller and what the active policy's groups allow) |
//! | [`web`] | the web page: approvals (`/approvals`) and the auditors' session replay (`/sessions`), assets from `web/`, `/v1/ui/config` |
//! | [`issuer`] | the OIDC issuers the control plane serves itself: the development issuer behind `--dev` (`/dev`) and the SAML-backed one (`/idp`): `keys.rs` (key files, JWKS, signing), `tokens.rs` (minting), `oauth.rs` (the authorization code flow with PKCE: checks, one-time codes, refresh tokens), `provider.rs` (the issuer), `http.rs` (its routes) |
//! | [`key_rotation`] | the SAML issuer's keys in the database, in generations: loaded at start, followed every minute (another replica's rotation), rotated every 30 days or by an admin |
//! | [`saml`] | SAML 2.0 sign-in (`--saml-idp-metadata`): `/idp/authorize` sends the browser to the company's IdP, `/saml/acs` verifies its response and ends in the SAML issuer's code, `/saml/metadata` |
//! | [`approvals`] | an approval's binding, its rows, its status as read ([`approvals::status_at`]) and its answer ([`approvals::ApprovalView`], which embeds the engine's `ApprovalAnswer`) |
//! | [`policies`] | validation with the engine's `check_document`, problem paths mapped to YAML lines, hashes; the server's [`policies::Checker`] (compiles on blocking threads, bounded in size, concurrency, time and per-caller rate) |
//! | [`policy_watch`] | gateways watching the active policy (`Prefer: wait=N`): what wakes them (an activation here, or PostgreSQL's `NOTIFY` from another replica) |
//! | [`user_auth`] | people's bearer tokens (dev issuer, OIDC discovery issuers) and the gateway secret |
//! | [`webhook`] | the background announcement of new approvals (JSON or Slack, whose request fields are escaped and bounded) |
//! | [`store`] | [`store::Store`], the database: SQLite at `<data-dir>/warden.db` by default, PostgreSQL for `--database-url postgres://…`; migrations from `migrations/sqlite` and `migrations/postgres` run at start; every state change (publish, activate, decide, consume) is one atomic conditional statement or transaction, run to completion on a task of its own (a dropped request cannot leave a transaction open), and a connection returned inside a transaction is closed |
//! | [`chain`] | the session records' hash chain: a record's canonical text and each row's hash |
//! | [`body`] | JSON request bodies read as objects only ([`body::JsonObject`]): serde alone reads a struct from an array too |
//! | [`error`] | [`error::ApiError`], the one error type handlers return; answered as `{"error":{"code","message"}}`, internal details logged, never sent |
//! | [`html`] | HTML answers with the pages' security headers (the page and the dev issuer's sign-in form) |
//! | [`clock`] | [`clock::Clock`], where every rule that depends on time reads it (the system's clock in `warden serve`, a [`clock::ManualClock`] that tests move); stored times written as RFC 3339 (the engine's `rfc3339_millis`) |
//! | [`fields`] | user-controlled text bounded (cut at a character boundary, with a marker) before it is stored, and escaped and bounded before it is logged |
//!
//! What crosses a process boundary (reason codes, decisions, the approval
//! and session messages, canonical JSON) is the engine's
//! `warden_engine::protocol`, never redefined here.
//!
//! # Dependency direction
//!
//! Imports point down this list, never up, and no file imports one that
//! imports it back:
//!
//! 1. composition: `main` -> `cli` (dispatch) -> `login`, `client` and
//!    `server`; `login` -> `client`, `oidc_client`, `token_store` and the
//!    answer types of `whoami`;
//!    `server` composes the routes of `api`, `sessions` (through `api`),
//!    `web`, `issuer` and `saml`; `client` uses the answer types below it;
//! 2. route modules: `api` -> `sessions`; each of them (and `web`) reads
//!    [`state::AppState`], none imports `server`; `issuer`'s and `saml`'s
//!    routes hold the issuer or the service provider itself, not the state;
//! 3. `state` -> `store`, `saml`, `key_rotation`, `issuer`, `user_auth`,
//!    `webhook`, `policies`; `saml` -> `issuer`; `key_rotation` -> `store`,
//!    `issuer`;
//! 4. domain: `webhook` -> `approvals` -> `store` -> `chain`; `user_auth`
//!    -> `error`; inside `issuer`, `http` -> `provider` -> `oauth` ->
//!    `tokens` -> `keys` (and `http` -> `error`, `html`);
//! 5. leaves: `clock`, `fields`, `html` and `policies` import nothing from
//!    this crate; `error` imports only `fields` and `policies`, `chain` only
//!    `policies`, `body` only `error`.
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
pub mod body;
pub mod chain;
pub mod cli;
pub mod client;
pub mod clock;
pub mod error;
pub mod fields;
pub mod html;
pub mod issuer;
pub mod key_rotation;
pub mod login;
pub mod machine_keys;
pub mod oidc_client;
pub mod policies;
pub mod policy_watch;
pub mod saml;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod token_store;
pub mod user_auth;
pub mod web;
pub mod webhook;
pub mod whoami;
