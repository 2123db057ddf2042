//! The filter's configuration: the document an operator writes in the Envoy
//! YAML (`configuration` as a `google.protobuf.Struct`, or JSON text in a
//! `StringValue`, which is what Istio's `WasmPlugin.pluginConfig` becomes;
//! [`crate::document`] reads both), and its compiled form. Unknown fields are errors: a typo must stop Envoy from taking the
//! configuration, not silently turn a protection off.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::auth::{AuthenticationDoc, Authenticator};
use crate::control::{ControlPlane, ControlPlaneDoc};
use crate::document::{parse_document, parse_wire_document, ConfigError, Secret};
use crate::inspect::mask::HashKey;
use crate::policy::{Policy, PolicyDoc};
use crate::provider::Api;

/// The document as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfigDoc {
    /// The providers this gateway fronts, matched by path prefix in order.
    pub providers: Vec<ProviderDoc>,
    /// Client headers that carry credentials and must never reach a provider.
    /// The defaults cover every SDK Warden speaks.
    #[serde(default = "default_client_credential_headers")]
    pub client_credential_headers: Vec<String>,
    /// Who may call: token sources, trusted issuers and their keys. Required:
    /// there is no anonymous mode.
    pub authentication: AuthenticationDoc,
    /// The policy to start with, until (or unless) the control plane serves one.
    #[serde(default)]
    pub policy: Option<PolicyDoc>,
    /// Largest request body the filter reads (to find the model, and to
    /// inspect it); larger bodies get a 413, never a partial inspection.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Environment variable of Envoy holding the key of `hash` pseudonyms.
    #[serde(default = "default_hash_key_env")]
    pub hash_key_env: String,
    /// Where policy versions and approvals come from. Unset: the inline
    /// `policy` is the only one, and approvals fail closed.
    #[serde(default)]
    pub control_plane: Option<ControlPlaneDoc>,
}

fn default_hash_key_env() -> String {
    "WARDEN_HASH_KEY".into()
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}

fn default_client_credential_headers() -> Vec<String> {
    [
        "authorization",
        "x-api-key",
        "api-key",
        "proxy-authorization",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderDoc {
    /// A short name used in logs, metrics and the audit trail (`openai`).
    pub name: String,
    /// The wire format spoken on this route.
    pub api: Api,
    /// The gateway path prefix that selects this provider (`/openai/`). The
    /// Envoy route strips it before the request goes upstream.
    pub path_prefix: String,
    /// The key the gateway sends upstream in the client's stead. Required
    /// for a model provider; optional for an MCP server (many inside the
    /// company take none, or check the caller's own token).
    #[serde(default)]
    pub credential: Option<CredentialDoc>,
    /// Client headers of [`SCOPING_HEADERS`] to let through to this provider
    /// (e.g. `[anthropic-beta]` for beta tools); the rest are removed.
    #[serde(default)]
    pub pass_headers: Vec<String>,
    /// The Envoy cluster the route at `path_prefix` sends to. Envoy routes by
    /// its own route table and the filter reads the provider from the path:
    /// with this set, a request whose route picked another cluster is
    /// refused, so the two can never drift into inspecting a request as one
    /// provider and sending it to another.
    #[serde(default)]
    pub cluster: Option<String>,
}

/// Client headers that pick provider-side scope or state: an organization or
/// project other than the gateway's, beta features, cookies. With one key
/// for everyone they would let a user reach what the operator did not choose,
/// so they are removed unless a provider's `pass_headers` names them.
pub const SCOPING_HEADERS: &[&str] = &[
    "cookie",
    "openai-organization",
    "openai-project",
    "anthropic-beta",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialDoc {
    /// The environment variable of Envoy's process that holds the key,
    /// passed into the VM with `vm_config.environment_variables.host_env_keys`.
    /// Keys never appear in YAML.
    pub env: String,
    /// Header to put the key in (defaults to the API's own).
    #[serde(default)]
    pub header: Option<String>,
    /// Scheme before the key (`Bearer`); defaults to the API's own.
    #[serde(default)]
    pub scheme: Option<String>,
}

/// A provider ready for the request path.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub api: Api,
    pub path_prefix: String,
    pub credential_header: String,
    /// The header value to send (`Bearer sk-...`), or `None` when Envoy's
    /// environment has no key (requests then get a 503 that says so) or the
    /// provider takes none.
    pub credential_value: Option<Secret>,
    /// Where the key comes from; `None`: an MCP server that takes none.
    pub credential_env: Option<String>,
    /// [`SCOPING_HEADERS`] removed from this provider's requests (those not
    /// in its `pass_headers`).
    pub scoping_headers: Vec<&'static str>,
    /// The Envoy cluster its route must pick ([`ProviderDoc::cluster`]).
    pub cluster: Option<String>,
}

/// The compiled configuration, shared by every request of a worker VM.
#[derive(Debug)]
pub struct FilterConfig {
    pub providers: Vec<Provider>,
    /// Client headers removed from every request before it goes upstream,
    /// each once: the credential headers, the token sources, and
    /// `accept-encoding` (responses must come back uncompressed to be
    /// inspected; the client's encoding preferences stop here).
    pub strip_headers: Vec<String>,
    pub auth: Authenticator,
    pub initial_policy: Option<Policy>,
    pub max_body_bytes: usize,
    /// The key of `hash` pseudonyms, from Envoy's environment (the same in
    /// every worker and restart). Unset: policies with `hash` rules are refused.
    pub hash_key: HashKey,
    /// Where the hash key is read from (for the messages that ask for it).
    pub hash_key_env: String,
    pub control_plane: Option<ControlPlane>,
}

/// Shortest hash key accepted: one that cannot be guessed.
pub const MIN_HASH_KEY_BYTES: usize = 16;

fn admit_with(policy: &Policy, key: &HashKey, key_env: &str) -> Result<(), String> {
    if key.is_set() {
        return Ok(());
    }
    match policy.rules.iter().find(|r| r.action == crate::inspect::mask::Action::Hash) {
        Some(rule) => Err(format!(
            "policy rule '{}' hashes values, and no hash key is set: set {key_env} in Envoy's environment (at least {MIN_HASH_KEY_BYTES} random bytes, the same on every gateway) and list it in the wasm VM's environment_variables.host_env_keys",
            rule.name
        )),
        None => Ok(()),
    }
}

/// A provider's credential: the header it goes in and the value to send,
/// `None` when Envoy's environment has no key.
fn compile_credential(
    provider: &str,
    api: Api,
    credential: &CredentialDoc,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Option<Secret>), ConfigError> {
    if credential.env.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "provider {:?}: credential.env must name an environment variable",
            provider
        )));
    }
    let (default_header, default_scheme) = api.default_credential_header();
    let header = credential
        .header
        .clone()
        .unwrap_or_else(|| default_header.to_string());
    if header.is_empty() || !header.bytes().all(is_header_name_byte) {
        return Err(ConfigError::Invalid(format!(
            "provider {:?}: credential.header {:?} is not a valid lowercase header name",
            provider, header
        )));
    }
    let scheme = credential
        .scheme
        .clone()
        .or_else(|| default_scheme.map(String::from));
    let credential_value = env(&credential.env)
        .filter(|k| !k.trim().is_empty())
        .map(|key| match &scheme {
            Some(s) if !s.is_empty() => Secret::new(format!("{s} {}", key.trim())),
            _ => Secret::new(key.trim().to_string()),
        });
    Ok((header, credential_value))
}

impl FilterConfig {
    /// Parses and compiles a configuration. `env` looks up an environment
    /// variable of Envoy's process (the adapter passes `std::env::var`).
    pub fn from_bytes(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let doc = parse_document::<FilterConfigDoc>(bytes)?;
        Self::compile(doc, env)
    }

    /// [`FilterConfig::from_bytes`] as the filter reads its configuration
    /// from Envoy: JSON text or a protobuf Struct, never YAML (see
    /// [`crate::document`]). The adapter and `warden filter validate` use it.
    pub fn from_wire_bytes(
        bytes: &[u8],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::compile(parse_wire_document::<FilterConfigDoc>(bytes)?, env)
    }

    /// Compiles a parsed document.
    fn compile(
        doc: FilterConfigDoc,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if doc.providers.is_empty() {
            return Err(ConfigError::Invalid(
                "`providers` must list at least one provider".into(),
            ));
        }
        let mut names = BTreeSet::new();
        let mut prefixes = BTreeSet::new();
        let mut providers = Vec::with_capacity(doc.providers.len());
        for p in doc.providers {
            if p.name.is_empty() || !p.name.bytes().all(is_name_byte) {
                return Err(ConfigError::Invalid(format!(
                    "provider name {:?} must be non-empty and use only a-z, 0-9, '-' and '_'",
                    p.name
                )));
            }
            if !names.insert(p.name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "provider {:?} is listed twice",
                    p.name
                )));
            }
            if !(p.path_prefix.starts_with('/') && p.path_prefix.ends_with('/'))
                || p.path_prefix.len() < 2
            {
                return Err(ConfigError::Invalid(format!(
                    "provider {:?}: path_prefix {:?} must start and end with '/' (e.g. \"/openai/\")",
                    p.name, p.path_prefix
                )));
            }
            if !prefixes.insert(p.path_prefix.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "path_prefix {:?} is used by two providers",
                    p.path_prefix
                )));
            }
            let (credential_header, credential_value, credential_env) = match p.credential {
                Some(credential) => {
                    let (header, value) = compile_credential(&p.name, p.api, &credential, env)?;
                    (header, value, Some(credential.env))
                }
                None if p.api == Api::Mcp => (String::new(), None, None),
                None => {
                    return Err(ConfigError::Invalid(format!(
                        "provider {:?}: `credential` is required (the provider's key, from Envoy's environment: `credential: {{env: NAME}}`)",
                        p.name
                    )))
                }
            };
            let mut pass = Vec::new();
            for h in &p.pass_headers {
                let h = h.to_ascii_lowercase();
                if !SCOPING_HEADERS.contains(&h.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "provider {:?}: pass_headers {h:?} is not one of {} (other client headers pass already)",
                        p.name,
                        SCOPING_HEADERS.join(", ")
                    )));
                }
                pass.push(h);
            }
            let scoping_headers = SCOPING_HEADERS
                .iter()
                .copied()
                .filter(|h| !pass.iter().any(|p| p == h))
                .collect();
            providers.push(Provider {
                name: p.name,
                api: p.api,
                path_prefix: p.path_prefix,
                credential_header,
                credential_value,
                credential_env,
                scoping_headers,
                cluster: p.cluster.filter(|c| !c.is_empty()),
            });
        }
        let auth = Authenticator::compile(doc.authentication, env)?;
        let initial_policy = doc.policy.map(Policy::compile).transpose()?;
        let control_plane = doc
            .control_plane
            .map(|c| ControlPlane::compile(c, env))
            .transpose()?;
        if !(1024..=64 * 1024 * 1024).contains(&doc.max_body_bytes) {
            return Err(ConfigError::Invalid(
                "max_body_bytes must be between 1024 and 67108864".into(),
            ));
        }
        let mut strip_headers = Vec::new();
        for h in doc
            .client_credential_headers
            .into_iter()
            .chain(auth.token_headers().map(str::to_owned))
            .chain(["accept-encoding".to_owned()])
        {
            let h = h.to_ascii_lowercase();
            if h.is_empty() || !h.bytes().all(is_header_name_byte) {
                return Err(ConfigError::Invalid(format!(
                    "client_credential_headers: {h:?} is not a valid header name"
                )));
            }
            if !strip_headers.contains(&h) {
                strip_headers.push(h);
            }
        }
        let hash_key = match env(&doc.hash_key_env).filter(|k| !k.trim().is_empty()) {
            Some(key) if key.len() < MIN_HASH_KEY_BYTES => {
                return Err(ConfigError::Invalid(format!(
                    "{} is {} bytes; a hash key needs at least {MIN_HASH_KEY_BYTES} (random, e.g. `openssl rand -hex 32`)",
                    doc.hash_key_env,
                    key.len()
                )))
            }
            Some(key) => HashKey::new(key.into_bytes()),
            None => HashKey::unset(),
        };
        if let Some(policy) = &initial_policy {
            admit_with(policy, &hash_key, &doc.hash_key_env).map_err(ConfigError::Invalid)?;
        }
        Ok(Self {
            providers,
            strip_headers,
            auth,
            initial_policy,
            max_body_bytes: doc.max_body_bytes,
            hash_key,
            hash_key_env: doc.hash_key_env,
            control_plane,
        })
    }

    /// Whether this filter can run `policy`: one with `hash` rules needs a
    /// hash key. The initial policy is checked when the configuration is
    /// compiled; a published one when it arrives (refused, the running
    /// policy stays).
    pub fn admit(&self, policy: &Policy) -> Result<(), String> {
        admit_with(policy, &self.hash_key, &self.hash_key_env)
    }

    /// The provider (and its index) whose prefix starts `path`; the longest
    /// prefix wins, so `/openai/eu/` can sit beside `/openai/`.
    pub fn provider_for_path(&self, path: &[u8]) -> Option<(usize, &Provider)> {
        self.providers
            .iter()
            .enumerate()
            .filter(|(_, p)| path.starts_with(p.path_prefix.as_bytes()))
            .max_by_key(|(_, p)| p.path_prefix.len())
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    const DOC: &str = r#"
providers:
  - name: openai
    api: openai
    path_prefix: /openai/
    credential: {env: OPENAI_KEY}
  - name: anthropic
    api: anthropic
    path_prefix: /anthropic/
    credential: {env: ANTHROPIC_KEY}
authentication:
  issuers:
    - issuer: https://idp.example.com
      audiences: [warden]
      inline_jwks: {keys: [{kty: OKP, crv: Ed25519, x: 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo, kid: k}]}
"#;

    fn env_with_keys(name: &str) -> Option<String> {
        match name {
            "OPENAI_KEY" => Some("sk-test-openai".into()),
            "ANTHROPIC_KEY" => Some("sk-ant-test".into()),
            _ => None,
        }
    }

    #[test]
    fn yaml_compiles_with_api_defaults() {
        let cfg = FilterConfig::from_bytes(DOC.as_bytes(), &env_with_keys).unwrap();
        assert_eq!(cfg.providers.len(), 2);
        let openai = &cfg.providers[0];
        assert_eq!(openai.credential_header, "authorization");
        assert_eq!(
            openai.credential_value.as_ref().map(Secret::expose),
            Some("Bearer sk-test-openai")
        );
        let anthropic = &cfg.providers[1];
        assert_eq!(anthropic.credential_header, "x-api-key");
        assert_eq!(
            anthropic.credential_value.as_ref().map(Secret::expose),
            Some("sk-ant-test")
        );
        assert!(cfg.strip_headers.contains(&"x-api-key".to_string()));
    }

    #[test]
    fn json_is_accepted_too() {
        let json = r#"{"providers":[{"name":"azure","api":"azure_openai","path_prefix":"/azure/","credential":{"env":"AZ"}}],
            "authentication":{"issuers":[{"issuer":"i","audiences":["a"],"inline_jwks":{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}]}}"#;
        let env = |name: &str| (name != "WARDEN_HASH_KEY").then(|| "k".into());
        let cfg = FilterConfig::from_bytes(json.as_bytes(), &env).unwrap();
        assert_eq!(cfg.providers[0].credential_header, "api-key");
        assert_eq!(
            cfg.providers[0]
                .credential_value
                .as_ref()
                .map(Secret::expose),
            Some("k")
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let doc = DOC.replace("api: openai", "api: openai\n    colour: blue");
        let err = FilterConfig::from_bytes(doc.as_bytes(), &env_with_keys).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Syntax(m) if m.contains("colour")),
            "{err}"
        );
        let top = format!("{DOC}\nauthorisation: {{}}\n");
        assert!(FilterConfig::from_bytes(top.as_bytes(), &env_with_keys).is_err());
        let no_auth = DOC.split("authentication:").next().unwrap_or_default();
        let err = FilterConfig::from_bytes(no_auth.as_bytes(), &env_with_keys).unwrap_err();
        assert!(err.to_string().contains("authentication"), "{err}");
    }

    #[test]
    fn bad_documents_are_refused_with_reasons() {
        assert_eq!(
            FilterConfig::from_bytes(b"  ", &env_with_keys).unwrap_err(),
            ConfigError::Empty
        );
        let auth = DOC.split_once("authentication:").map_or("", |(_, a)| a);
        let none = format!("providers: []\nauthentication:{auth}");
        let err = FilterConfig::from_bytes(none.as_bytes(), &env_with_keys).unwrap_err();
        assert!(err.to_string().contains("at least one provider"), "{err}");
        assert!(FilterConfig::from_bytes(b"\xff\xfe", &env_with_keys).is_err());
        let no_slash = DOC.replace("/openai/", "/openai");
        let err = FilterConfig::from_bytes(no_slash.as_bytes(), &env_with_keys).unwrap_err();
        assert!(err.to_string().contains("path_prefix"), "{err}");
        let twice = DOC.replace("name: anthropic", "name: openai");
        let err = FilterConfig::from_bytes(twice.as_bytes(), &env_with_keys).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let bad_api = DOC.replace("api: anthropic", "api: gemini");
        assert!(FilterConfig::from_bytes(bad_api.as_bytes(), &env_with_keys).is_err());
    }

    #[test]
    fn missing_key_compiles_but_is_absent() {
        let cfg = FilterConfig::from_bytes(DOC.as_bytes(), &|_| None).unwrap();
        assert!(cfg.providers.iter().all(|p| p.credential_value.is_none()));
        let blank = FilterConfig::from_bytes(DOC.as_bytes(), &|_| Some("  ".into())).unwrap();
        assert!(blank.providers.iter().all(|p| p.credential_value.is_none()));
    }

    #[test]
    fn secret_debug_never_shows_the_key() {
        let cfg = FilterConfig::from_bytes(DOC.as_bytes(), &env_with_keys).unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sk-test-openai"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn longest_prefix_selects_the_provider() {
        let doc = DOC.replace(
            "authentication:",
            "  - name: openai-eu\n    api: openai\n    path_prefix: /openai/eu/\n    credential: {env: OPENAI_KEY}\nauthentication:",
        );
        let cfg = FilterConfig::from_bytes(doc.as_bytes(), &env_with_keys).unwrap();
        let pick = |p: &str| {
            cfg.provider_for_path(p.as_bytes())
                .map(|(_, p)| p.name.as_str())
        };
        assert_eq!(pick("/openai/v1/chat/completions"), Some("openai"));
        assert_eq!(pick("/openai/eu/v1/chat/completions"), Some("openai-eu"));
        assert_eq!(pick("/anthropic/v1/messages"), Some("anthropic"));
        assert_eq!(pick("/openaiv1"), None);
        assert_eq!(pick("/"), None);
    }

    #[test]
    fn a_policy_that_hashes_needs_a_real_key() {
        let hashing = format!(
            "{DOC}policy:\n  version: 1\n  groups: {{eng: {{models: ['*']}}}}\n  rules:\n    - {{name: ids, regex: 'C-[0-9]+', action: hash}}\n"
        );
        let with = |key: Option<&'static str>| {
            move |name: &str| match (name, key) {
                ("WARDEN_HASH_KEY", Some(k)) => Some(k.to_owned()),
                _ => env_with_keys(name),
            }
        };
        // No key: refused, saying which rule and which variable.
        let err = FilterConfig::from_bytes(hashing.as_bytes(), &with(None)).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("'ids'") && message.contains("WARDEN_HASH_KEY"),
            "{message}"
        );
        // A key one could guess is no key.
        let err = FilterConfig::from_bytes(hashing.as_bytes(), &with(Some("short"))).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        let cfg = FilterConfig::from_bytes(hashing.as_bytes(), &with(Some("0123456789abcdef0123")))
            .unwrap();
        assert!(cfg.hash_key.is_set());
        // Without a key, policies that do not hash run; one that does (as a
        // published version would arrive) is refused by `admit`.
        let keyless = FilterConfig::from_bytes(DOC.as_bytes(), &env_with_keys).unwrap();
        assert!(!keyless.hash_key.is_set());
        let policy = cfg.initial_policy.as_ref().unwrap();
        assert!(keyless.admit(policy).unwrap_err().contains("'ids'"));
        assert_eq!(cfg.admit(policy), Ok(()));
        // And a keyless pseudonym (never reached through admit) is a mask.
        assert_eq!(keyless.hash_key.pseudonym("ID", "C-1"), "[ID]");
    }
}
