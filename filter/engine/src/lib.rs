//! # warden-engine
//!
//! Everything Warden decides on the request path, in plain Rust with no
//! proxy-wasm imports, so it is tested natively and inside a wasm VM
//! (`wasm-bindgen-test` under Node's V8), and so the control plane can link
//! the very same code to validate what it publishes.
//!
//! ## Layout
//! - [`config`]: the filter's configuration document (serde, unknown fields
//!   rejected) and its compiled form, built once per `on_configure`.
//! - [`provider`]: the provider APIs Warden fronts (OpenAI, Anthropic, Azure
//!   OpenAI): how each expects its credential, and errors in each API's own
//!   wire format so SDKs show users a readable message.
//! - [`request`]: the header-phase plan for one request: which provider,
//!   which client headers must not travel upstream, which credential to add.
//! - [`auth`]: OIDC tokens to a verified identity (JWKS, verification, cache).
//! - [`headers`]: a read-only view of request headers as raw bytes.
//!
//! The proxy-wasm adapter (`filter/wasm`) only moves bytes between the host
//! and these functions and turns their answers into host actions.

pub mod auth;
pub mod config;
pub mod headers;
pub mod provider;
pub mod request;

/// The filter's version, sent in the `x-warden` response header so a client
/// (and a test) can tell that a response passed through the filter.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Tests run natively with the built-in `#[test]`, and under
/// `wasm32-unknown-unknown` with `wasm-bindgen-test` (the runner executes them
/// in Node's V8, the engine Envoy embeds). Test modules `use` this alias.
#[cfg(test)]
pub(crate) mod testing {
    #[cfg(not(target_arch = "wasm32"))]
    pub use core::prelude::v1::test;
    #[cfg(target_arch = "wasm32")]
    pub use wasm_bindgen_test::wasm_bindgen_test as test;
}
