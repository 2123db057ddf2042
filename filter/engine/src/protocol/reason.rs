//! Why the gateway answered a request itself: the stable `warden.*` codes
//! clients, access logs, session records and tests read (in the provider's
//! error body and the `x-warden-reason` header). One definition; code names
//! a [`Reason`], never a string.

macro_rules! reasons {
    ($($variant:ident => $code:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($variant,)*
        }

        impl Reason {
            /// Every reason, in the order listed.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The code on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $code,)*
                }
            }
        }
    };
}

reasons! {
    // Routing and configuration
    NoRoute => "warden.no_route",
    PathNotCanonical => "warden.path_not_canonical",
    ProviderKeyMissing => "warden.provider_key_missing",
    RouteMismatch => "warden.route_mismatch",
    NotConfigured => "warden.not_configured",
    Internal => "warden.internal",
    PolicyStale => "warden.policy_stale",
    // Authorization
    NoPolicy => "warden.no_policy",
    NoGroup => "warden.no_group",
    ProviderDenied => "warden.provider_denied",
    ModelDenied => "warden.model_denied",
    EndpointDenied => "warden.endpoint_denied",
    ModelRequired => "warden.model_required",
    MachineKeyScope => "warden.machine_key_scope",
    ModelNotString => "warden.model_not_string",
    // Tokens and keys
    NoToken => "warden.no_token",
    TokenMalformed => "warden.token_malformed",
    TokenTooLarge => "warden.token_too_large",
    TokenIssuer => "warden.token_issuer",
    TokenAlgorithm => "warden.token_algorithm",
    TokenUnknownKey => "warden.token_unknown_key",
    TokenSignature => "warden.token_signature",
    TokenExpired => "warden.token_expired",
    TokenNotYetValid => "warden.token_not_yet_valid",
    TokenNoExpiry => "warden.token_no_expiry",
    TokenAudience => "warden.token_audience",
    TokenNoSubject => "warden.token_no_subject",
    KeysNotLoaded => "warden.keys_not_loaded",
    KeysStale => "warden.keys_stale",
    MachineKeyUnknown => "warden.machine_key_unknown",
    // The request's body and URL
    BodyNotJson => "warden.body_not_json",
    BodyNotAllowed => "warden.body_not_allowed",
    BodyTooLarge => "warden.body_too_large",
    BodyEncoded => "warden.body_encoded",
    TooLarge => "warden.too_large",
    QueryRefused => "warden.query_refused",
    McpMessage => "warden.mcp_message",
    McpSession => "warden.mcp_session",
    // Tools
    ToolDenied => "warden.tool_denied",
    ToolCallUninspectable => "warden.tool_call_uninspectable",
    // Rules and approvals
    Blocked => "warden.blocked",
    ApprovalRequired => "warden.approval_required",
    ApprovalPending => "warden.approval_pending",
    ApprovalDenied => "warden.approval_denied",
    ApprovalExpired => "warden.approval_expired",
    ApprovalTimeout => "warden.approval_timeout",
    ApprovalUnusable => "warden.approval_unusable",
    ApprovalsUnavailable => "warden.approvals_unavailable",
    // Responses and streams
    StreamUnknown => "warden.stream_unknown",
    StreamFraming => "warden.stream_framing",
    StreamChannels => "warden.stream_channels",
    ResponseUninspectable => "warden.response_uninspectable",
}

impl Reason {
    /// The reason a wire code names, if this build knows it.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == code)
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Reason::from_code(&code)
            .ok_or_else(|| serde::de::Error::custom(format_args!("unknown reason code '{code}'")))
    }
}

/// In the control plane's OpenAPI description: one of the codes.
#[cfg(feature = "schema")]
impl utoipa::PartialSchema for Reason {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Reason::ALL.iter().map(|reason| reason.as_str())))
            .into()
    }
}

#[cfg(feature = "schema")]
impl utoipa::ToSchema for Reason {}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    #[test]
    fn codes_are_unique_and_spelled_alike() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let code = reason.as_str();
            assert!(seen.insert(code), "{code} twice");
            let name = code.strip_prefix("warden.").unwrap();
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
            assert_eq!(Reason::from_code(code), Some(*reason));
            let wire = serde_json::to_string(reason).unwrap();
            assert_eq!(serde_json::from_str::<Reason>(&wire).unwrap(), *reason);
        }
        assert!(serde_json::from_str::<Reason>("\"warden.nonsense\"").is_err());
    }
}
