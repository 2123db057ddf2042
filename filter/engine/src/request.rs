//! The header phase of one request: pick the provider from the path, decide
//! which client headers must not travel upstream, and which credential the
//! gateway adds. Pure: the adapter applies the plan with host calls.

use crate::config::{FilterConfig, Provider};
use crate::headers::Headers;
use crate::provider::{Api, ErrorKind, GatewayError};

/// Header prefix the gateway owns. A client must not be able to set these:
/// anything downstream that trusts them (upstream services, access logs)
/// would trust a forgery.
pub const GATEWAY_HEADER_PREFIX: &str = "x-warden-";

/// What to do with a request whose headers were accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPlan {
    /// Index into [`FilterConfig::providers`].
    pub provider: usize,
    /// Client headers to delete before anything goes upstream.
    pub remove: Vec<String>,
    /// Headers to set (replacing any value the client sent).
    pub set: Vec<(String, Vec<u8>)>,
}

/// A request the gateway answers itself, in the API format of the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub api: Api,
    pub error: GatewayError,
}

/// Plans the header phase of a request.
pub fn plan_headers(config: &FilterConfig, headers: Headers<'_>) -> Result<ForwardPlan, Rejection> {
    let path = headers.get(":path").unwrap_or_default();
    let Some((index, provider)) = config.provider_for_path(path) else {
        let prefixes: Vec<&str> = config
            .providers
            .iter()
            .map(|p| p.path_prefix.as_str())
            .collect();
        return Err(Rejection {
            api: Api::Openai,
            error: GatewayError::new(
                ErrorKind::NotFound,
                "warden.no_route",
                format!(
                    "no provider is routed at this path; use one of: {}",
                    prefixes.join(", ")
                ),
            ),
        });
    };

    let Some(credential) = provider.credential_value.as_ref() else {
        return Err(Rejection {
            api: provider.api,
            error: missing_key(provider),
        });
    };

    let mut remove: Vec<String> = config.client_credential_headers.clone();
    for (name, _) in headers.iter() {
        if name.len() >= GATEWAY_HEADER_PREFIX.len()
            && name[..GATEWAY_HEADER_PREFIX.len()].eq_ignore_ascii_case(GATEWAY_HEADER_PREFIX)
            && !remove.iter().any(|r| r.eq_ignore_ascii_case(name))
        {
            remove.push(name.to_ascii_lowercase());
        }
    }

    let mut set = vec![(
        provider.credential_header.clone(),
        credential.expose().as_bytes().to_vec(),
    )];
    for (name, value) in provider.api.default_headers() {
        if !headers.contains(name) {
            set.push(((*name).to_string(), value.as_bytes().to_vec()));
        }
    }
    Ok(ForwardPlan {
        provider: index,
        remove,
        set,
    })
}

fn missing_key(provider: &Provider) -> GatewayError {
    GatewayError::new(
        ErrorKind::Unavailable,
        "warden.provider_key_missing",
        format!(
            "the gateway has no API key for provider '{}': the operator must set {} in Envoy's environment",
            provider.name, provider.credential_env
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    fn config(with_keys: bool) -> FilterConfig {
        let doc = r#"
providers:
  - {name: openai, api: openai, path_prefix: /openai/, credential: {env: OK}}
  - {name: anthropic, api: anthropic, path_prefix: /anthropic/, credential: {env: AK}}
"#;
        FilterConfig::from_bytes(doc.as_bytes(), &|name| {
            with_keys.then(|| format!("secret-{name}"))
        })
        .unwrap()
    }

    fn hdrs(pairs: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn strips_client_credentials_and_injects_the_provider_key() {
        let cfg = config(true);
        let h = hdrs(&[
            (":path", b"/openai/v1/chat/completions"),
            ("authorization", b"Bearer user-jwt"),
            ("x-warden-user", b"mallory"),
            ("X-Warden-Groups", b"admins"),
        ]);
        let plan = plan_headers(&cfg, Headers::new(&h)).unwrap();
        assert_eq!(cfg.providers[plan.provider].name, "openai");
        for must_go in [
            "authorization",
            "x-api-key",
            "api-key",
            "x-warden-user",
            "x-warden-groups",
        ] {
            assert!(
                plan.remove.iter().any(|r| r == must_go),
                "{must_go} not removed"
            );
        }
        assert_eq!(
            plan.set,
            vec![("authorization".to_string(), b"Bearer secret-OK".to_vec())]
        );
    }

    #[test]
    fn anthropic_gets_its_header_and_version() {
        let cfg = config(true);
        let h = hdrs(&[
            (":path", b"/anthropic/v1/messages"),
            ("x-api-key", b"user-jwt"),
        ]);
        let plan = plan_headers(&cfg, Headers::new(&h)).unwrap();
        assert!(plan
            .set
            .contains(&("x-api-key".to_string(), b"secret-AK".to_vec())));
        assert!(plan
            .set
            .contains(&("anthropic-version".to_string(), b"2023-06-01".to_vec())));
        let with_version = hdrs(&[
            (":path", b"/anthropic/v1/messages"),
            ("anthropic-version", b"2024-01-01"),
        ]);
        let plan = plan_headers(&cfg, Headers::new(&with_version)).unwrap();
        assert!(!plan.set.iter().any(|(n, _)| n == "anthropic-version"));
    }

    #[test]
    fn unknown_path_is_404_in_openai_format() {
        let h = hdrs(&[(":path", b"/gemini/v1/models")]);
        let r = plan_headers(&config(true), Headers::new(&h)).unwrap_err();
        assert_eq!(r.error.kind, ErrorKind::NotFound);
        assert_eq!(r.api, Api::Openai);
        assert!(r.error.message.contains("/openai/"));
    }

    #[test]
    fn missing_key_fails_closed_with_503_naming_the_variable() {
        let h = hdrs(&[(":path", b"/anthropic/v1/messages")]);
        let r = plan_headers(&config(false), Headers::new(&h)).unwrap_err();
        assert_eq!(r.error.kind.status(), 503);
        assert_eq!(r.api, Api::Anthropic);
        assert!(r.error.message.contains("AK"));
    }

    #[test]
    fn non_utf8_header_values_do_not_matter() {
        let h = hdrs(&[
            (":path", b"/openai/v1/models"),
            ("user-agent", b"\xff\xfe\x00"),
        ]);
        assert!(plan_headers(&config(true), Headers::new(&h)).is_ok());
    }
}
