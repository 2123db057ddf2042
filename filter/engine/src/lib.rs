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
//! - [`auth`]: OIDC tokens to a verified identity (JWKS, verification, cache,
//!   key freshness).
//! - [`policy`]: the versioned policy document and its compiled form: who may
//!   use which provider and model, sensitivity levels and clearances, and the
//!   rules (detectors and actions) in force for a request.
//! - [`inspect`]: detectors, where the text is in each API's JSON, the
//!   rewrite actions and the tokenize vault, the SSE stream rewriter, and the
//!   policy applied to bodies and streams.
//! - [`request`]: one request's steps: route, authenticate, parse the body,
//!   authorize, inspect, and the header changes before upstream.
//! - [`path`]: the canonical-path rule the route and the shape rely on.
//! - [`endpoint`]: which provider endpoint a request reaches (the policy
//!   allows inference by default, stateful endpoints per group).
//! - [`control`]: the control plane seen from the filter: the published
//!   policy it polls, and one request's approval as a state machine.
//! - [`mcp`]: MCP servers behind the gateway: JSON-RPC messages read, tool
//!   calls judged, tool lists filtered, answers inspected, and the
//!   protected-resource metadata MCP clients discover the IdP with.
//! - [`exchange`]: one request and its response as a state machine over
//!   those steps: host callbacks in, host actions out through a `Host`
//!   trait, so the whole exchange is tested without Envoy.
//! - [`protocol`]: what crosses a process boundary, defined once for the
//!   filter, the control plane and the CLI: reason codes, decisions, the
//!   approval and session messages, the canonical JSON.
//! - [`document`]: parsing a configuration document, its error, `Secret`.
//! - [`headers`]: a read-only view of request headers as raw bytes.
//!
//! Dependencies point one way, from the request path down to the leaves:
//! `exchange` -> `request` -> `config` -> `control` -> `policy` ->
//! `inspect::{detect, mask}`, with `inspect::{apply, sse}` (the policy applied
//! to bodies and streams) between `request` and `policy`; everything rests on
//! `provider`, `endpoint`, `path`, `headers`, and the leaves `protocol` and
//! `document`. No file imports one that imports it back.
//!
//! The proxy-wasm adapter (`filter/wasm`) implements `exchange::Host` with
//! host calls and feeds the exchange its callbacks; nothing in it decides.

// A panic in the data path aborts the Envoy VM (a denial of service): no
// byte index into a `str` or a slice unless checked (`get`, iterators).
#![cfg_attr(not(test), deny(clippy::string_slice, clippy::indexing_slicing))]

pub mod auth;
pub mod config;
pub mod control;
pub mod document;
pub mod endpoint;
pub mod exchange;
pub mod headers;
pub mod inspect;
pub mod mcp;
pub mod path;
pub mod policy;
pub mod protocol;
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

    use base64::Engine;
    use serde_json::{json, Value};

    pub fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An Ed25519 key that signs arbitrary header/payload JSON, so tests can
    /// build tokens no well-behaved library would.
    pub struct RawSigner {
        kp: ed25519_compact::KeyPair,
        pub kid: &'static str,
    }

    impl RawSigner {
        pub fn new(seed: u8, kid: &'static str) -> Self {
            Self {
                kp: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32])),
                kid,
            }
        }
        pub fn jwk(&self) -> Value {
            json!({"kty": "OKP", "crv": "Ed25519", "x": b64(self.kp.pk.as_ref()), "kid": self.kid, "use": "sig"})
        }
        pub fn sign(&self, header: &Value, claims: &Value) -> String {
            self.sign_raw(header, claims.to_string().as_bytes())
        }
        /// A token whose payload is `payload` as given (JSON a `Value`
        /// cannot hold, such as a claim given twice).
        pub fn sign_raw(&self, header: &Value, payload: &[u8]) -> String {
            let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
            let sig = self.kp.sk.sign(signing_input.as_bytes(), None);
            format!("{signing_input}.{}", b64(sig.as_ref()))
        }
        pub fn header(&self) -> Value {
            json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid})
        }
        /// A token with `claims`, signed and headed normally.
        pub fn token(&self, claims: &Value) -> String {
            self.sign(&self.header(), claims)
        }
    }

    /// `(name, value)` header pairs as the host hands them over.
    pub fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    /// A caller in `group`, for tests that need a policy's rules to apply.
    pub fn member_of(group: &str) -> crate::auth::Identity {
        member_of_all(&[group])
    }

    /// A caller in each of `groups` (none: in no group).
    pub fn member_of_all(groups: &[&str]) -> crate::auth::Identity {
        crate::auth::Identity {
            issuer: "i".into(),
            subject: "a".into(),
            token_subject: Some("a".into()),
            email: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires_at: 0,
        }
    }
}
