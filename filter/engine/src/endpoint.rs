//! Which provider endpoint a request reaches, by name.
//!
//! A provider's API is more than inference: files, batches, stored
//! completions and responses, assistants, realtime sessions whose
//! `client_secrets` hand the caller a provider key of its own. With one
//! provider key shared by every user, each of those is shared state. So a
//! policy names the endpoints each group may reach (`endpoints:` in a group),
//! and the default is the inference endpoints only: everything else is
//! refused until a policy allows it.
//!
//! The name comes from the canonical upstream path (see [`crate::path`]) and
//! the method; an unknown path is `other`, which no default allows.

use crate::provider::Api;

/// An endpoint of a provider API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Its name in policies, records and errors (`chat.completions`, `files`).
    pub name: &'static str,
    /// Whether a request to it names a model the policy must authorize.
    pub takes_model: bool,
}

/// The policy word for every endpoint in [`INFERENCE`], and the default.
pub const INFERENCE_SET: &str = "inference";

/// Endpoints that answer a prompt (or list models) and keep nothing.
pub const INFERENCE: &[&str] = &[
    "chat.completions",
    "completions",
    "responses",
    "embeddings",
    "moderations",
    "models",
    "messages",
    "messages.count_tokens",
];

/// Endpoints whose answers hold no text from a prompt or a model: a list of
/// models, a count of tokens. Response rules have nothing to read there, so
/// such an answer passes without being held and parsed (issue 20: the JSON
/// of a `/models` listing was a quarter of a cached request's cost).
const METADATA_ANSWERS: &[&str] = &["models", "messages.count_tokens"];

impl Endpoint {
    const fn new(name: &'static str, takes_model: bool) -> Self {
        Self { name, takes_model }
    }

    /// Whether its answers are metadata only (see [`METADATA_ANSWERS`]).
    pub fn answers_metadata_only(&self) -> bool {
        METADATA_ANSWERS.contains(&self.name)
    }

    /// Whether it is one of the [`INFERENCE`] endpoints.
    pub fn is_inference(&self) -> bool {
        INFERENCE.contains(&self.name)
    }
}

/// The endpoint of a request: `method` as sent, `upstream_path` after the
/// route's prefix (query allowed, ignored).
pub fn endpoint_of(api: Api, method: &[u8], upstream_path: &str) -> Endpoint {
    // An MCP server is one endpoint; what a message asks for is its method
    // and, for a tool call, the tool (see `crate::mcp`).
    if api == Api::Mcp {
        return Endpoint::new(MCP, false);
    }
    let path = upstream_path.split('?').next().unwrap_or_default();
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Azure OpenAI: `openai/deployments/{name}/...` or `openai/v1/...`.
    if api == Api::AzureOpenai {
        match segments.as_slice() {
            ["openai", "deployments", _, ..] => {
                segments.drain(..3);
            }
            ["openai", ..] => {
                segments.remove(0);
            }
            _ => {}
        }
    }
    if segments.first() == Some(&"v1") {
        segments.remove(0);
    }
    let post = method.eq_ignore_ascii_case(b"POST");
    let get = method.eq_ignore_ascii_case(b"GET");
    match (api, segments.as_slice()) {
        (Api::Anthropic, ["messages"]) if post => Endpoint::new("messages", true),
        (Api::Anthropic, ["messages", "count_tokens"]) if post => {
            Endpoint::new("messages.count_tokens", true)
        }
        (Api::Anthropic, ["messages", "batches", ..]) => Endpoint::new("messages.batches", false),
        (Api::Anthropic, ["complete"]) if post => Endpoint::new("completions", true),
        (_, ["models"]) | (_, ["models", _]) if get => Endpoint::new("models", false),
        (Api::Openai | Api::AzureOpenai, ["chat", "completions"]) if post => {
            Endpoint::new("chat.completions", true)
        }
        // Stored chat completions: read, listed, updated, deleted by id.
        (Api::Openai | Api::AzureOpenai, ["chat", "completions", ..]) => {
            Endpoint::new("chat.completions.stored", false)
        }
        (Api::Openai | Api::AzureOpenai, ["completions"]) if post => {
            Endpoint::new("completions", true)
        }
        (Api::Openai | Api::AzureOpenai, ["responses"]) if post => Endpoint::new("responses", true),
        (Api::Openai | Api::AzureOpenai, ["responses", ..]) => {
            Endpoint::new("responses.stored", false)
        }
        (Api::Openai | Api::AzureOpenai, ["embeddings"]) if post => {
            Endpoint::new("embeddings", true)
        }
        (Api::Openai | Api::AzureOpenai, ["moderations"]) if post => {
            Endpoint::new("moderations", false)
        }
        (_, [first, ..]) => Endpoint::new(named(first), false),
        (_, []) => Endpoint::new("other", false),
    }
}

/// The endpoint of every MCP route. Not inference: a group reaches MCP
/// servers only where the policy says so (`endpoints: [inference, mcp]`).
pub const MCP: &str = "mcp";

/// The names [`endpoint_of`] gives to inference and to the endpoints that
/// share a path with it; with [`FAMILIES`] and `other`, every name it gives.
const SPECIFIC: &[&str] = &[
    "chat.completions",
    "chat.completions.stored",
    "completions",
    "responses",
    "responses.stored",
    "embeddings",
    "moderations",
    "models",
    "messages",
    "messages.count_tokens",
    "messages.batches",
    MCP,
];

/// The stateful endpoint families, named by their path's first segment.
pub const FAMILIES: &[&str] = &[
    "files",
    "uploads",
    "batches",
    "assistants",
    "threads",
    "vector_stores",
    "fine_tuning",
    "audio",
    "images",
    "realtime",
    "evals",
    "containers",
    "conversations",
    "videos",
    "organization",
];

/// Whether `name` is an endpoint name [`endpoint_of`] can give: a policy
/// entry that is none of these (and no glob) is a typo, refused when the
/// policy is compiled.
pub fn is_known(name: &str) -> bool {
    name == "other" || SPECIFIC.contains(&name) || FAMILIES.contains(&name)
}

/// Every known name, for error messages.
pub fn known_names() -> String {
    let mut all: Vec<&str> = SPECIFIC.iter().chain(FAMILIES).copied().collect();
    all.push("other");
    all.join(", ")
}

/// The family of a path's first segment; anything else (an inference path
/// with another method among them) is `other`.
fn named(first: &str) -> &'static str {
    FAMILIES
        .iter()
        .find(|f| **f == first)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::{endpoint_of, Endpoint, INFERENCE};
    use crate::provider::Api;
    use crate::testing::test;

    fn of(api: Api, method: &str, path: &str) -> Endpoint {
        endpoint_of(api, method.as_bytes(), path)
    }

    #[test]
    fn inference_endpoints_take_their_model() {
        for (api, method, path, name) in [
            (
                Api::Openai,
                "POST",
                "/v1/chat/completions",
                "chat.completions",
            ),
            (Api::Openai, "POST", "v1/completions", "completions"),
            (Api::Openai, "POST", "/v1/responses?x=1", "responses"),
            (Api::Openai, "POST", "/v1/embeddings", "embeddings"),
            (Api::Anthropic, "POST", "/v1/messages", "messages"),
            (
                Api::Anthropic,
                "POST",
                "/v1/messages/count_tokens",
                "messages.count_tokens",
            ),
            (
                Api::AzureOpenai,
                "POST",
                "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
                "chat.completions",
            ),
            (
                Api::AzureOpenai,
                "POST",
                "/openai/v1/responses",
                "responses",
            ),
        ] {
            let e = of(api, method, path);
            assert_eq!(e.name, name, "{path}");
            assert!(e.takes_model && e.is_inference(), "{path}");
        }
        assert!(of(Api::Openai, "GET", "/v1/models").is_inference());
        assert!(of(Api::Openai, "GET", "/v1/models/gpt-4o").is_inference());
        assert!(!of(Api::Openai, "GET", "/v1/models").takes_model);
        assert!(of(Api::Openai, "GET", "/v1/models/gpt-4o").answers_metadata_only());
        assert!(of(Api::Anthropic, "POST", "/v1/messages/count_tokens").answers_metadata_only());
        for (api, method, path) in [
            (Api::Openai, "POST", "/v1/models"),
            (Api::Openai, "GET", "/v1/models/gpt-4o/x"),
            (Api::Openai, "POST", "/v1/chat/completions"),
            (Api::Anthropic, "POST", "/v1/messages"),
        ] {
            assert!(!of(api, method, path).answers_metadata_only(), "{method} {path}");
        }
    }

    #[test]
    fn stateful_endpoints_are_named_and_not_inference() {
        for (api, method, path, name) in [
            (
                Api::Openai,
                "POST",
                "/v1/realtime/client_secrets",
                "realtime",
            ),
            (
                Api::Openai,
                "GET",
                "/v1/chat/completions",
                "chat.completions.stored",
            ),
            (
                Api::Openai,
                "GET",
                "/v1/chat/completions/abc",
                "chat.completions.stored",
            ),
            (
                Api::Openai,
                "DELETE",
                "/v1/responses/resp_1",
                "responses.stored",
            ),
            (
                Api::Openai,
                "GET",
                "/v1/responses/resp_1/input_items",
                "responses.stored",
            ),
            (Api::Openai, "POST", "/v1/files", "files"),
            (Api::Openai, "POST", "/v1/batches", "batches"),
            (Api::Openai, "POST", "/v1/threads/t/runs", "threads"),
            (Api::Openai, "POST", "/v1/models", "other"),
            (
                Api::Anthropic,
                "POST",
                "/v1/messages/batches",
                "messages.batches",
            ),
            (Api::Anthropic, "GET", "/v1/messages", "other"),
            (Api::Openai, "POST", "/v1/unheard/of", "other"),
            (Api::Openai, "GET", "/", "other"),
            (Api::Openai, "POST", "/v2/chat/completions", "other"),
            // Whatever the path and method, an MCP route is `mcp`.
            (Api::Mcp, "POST", "/", "mcp"),
            (Api::Mcp, "GET", "/v1/chat/completions", "mcp"),
            (Api::Mcp, "DELETE", "/mcp", "mcp"),
        ] {
            let e = of(api, method, path);
            assert_eq!(e.name, name, "{method} {path}");
            assert!(!e.is_inference(), "{method} {path}");
            assert!(!e.takes_model, "{method} {path}");
        }
    }

    #[test]
    fn every_name_given_is_known_and_inference_is_among_them() {
        for name in INFERENCE {
            assert!(super::is_known(name), "{name}");
        }
        for path in [
            "/v1/files",
            "/v1/videos/x",
            "/v1/organization/usage",
            "/v1/zzz",
        ] {
            assert!(super::is_known(of(Api::Openai, "GET", path).name), "{path}");
        }
        assert_eq!(
            of(Api::Openai, "POST", "/v1/moderations").name,
            "moderations"
        );
    }
}
