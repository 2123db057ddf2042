//! The policy: who may use which provider and model.
//!
//! A policy is a versioned YAML (or JSON) document. The filter compiles it
//! once per version; the control plane compiles it with this same code before
//! publishing, so a policy it accepts is one every filter can load.
//!
//! ```yaml
//! version: 1
//! defaults:
//!   group: null            # callers in no listed group: denied (or name a group)
//! groups:
//!   engineering:
//!     providers: ["*"]     # provider names from the filter configuration (globs)
//!     models: ["gpt-4o*", "claude-*"]
//!   finance:
//!     models: ["gpt-4o-mini"]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use wildmatch::WildMatch;

use crate::auth::Identity;
use crate::config::{parse_document, ConfigError};

/// The only schema version this filter understands.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    pub version: u32,
    #[serde(default)]
    pub defaults: DefaultsDoc,
    #[serde(default)]
    pub groups: BTreeMap<String, GroupDoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsDoc {
    /// The group whose grants apply to a caller in none of the listed
    /// groups. Unset: such callers are denied.
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDoc {
    /// Provider names (globs). Default: every provider.
    #[serde(default = "every")]
    pub providers: Vec<String>,
    /// Model names (globs, `*` and `?`). Default: none; list what is allowed.
    #[serde(default)]
    pub models: Vec<String>,
}

fn every() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug)]
struct Group {
    providers: Vec<WildMatch>,
    models: Vec<WildMatch>,
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    groups: BTreeMap<String, Group>,
    default_group: Option<String>,
}

/// Why a verified caller may not make a request. Messages name the caller's
/// groups and the model, which the caller already knows; nothing else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("you ({subject}) are in no group this gateway's policy grants access to")]
    NoGroup { subject: String },
    #[error("your groups ({groups}) may not use provider '{provider}'")]
    Provider { groups: String, provider: String },
    #[error("your groups ({groups}) may not use model '{model}' on provider '{provider}'")]
    Model {
        groups: String,
        provider: String,
        model: String,
    },
}

impl Denial {
    pub fn code(&self) -> &'static str {
        match self {
            Denial::NoGroup { .. } => "warden.no_group",
            Denial::Provider { .. } => "warden.provider_denied",
            Denial::Model { .. } => "warden.model_denied",
        }
    }
}

impl Policy {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::compile(parse_document::<PolicyDoc>(bytes)?)
    }

    pub fn compile(doc: PolicyDoc) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(format!("policy: {m}"));
        if doc.version != SCHEMA_VERSION {
            return Err(invalid(format!(
                "version {} is not supported (this filter understands version {SCHEMA_VERSION})",
                doc.version
            )));
        }
        let mut groups = BTreeMap::new();
        for (name, g) in doc.groups {
            if name.is_empty() {
                return Err(invalid("a group name is empty".into()));
            }
            let globs = |what: &str, items: &[String]| -> Result<Vec<WildMatch>, ConfigError> {
                items
                    .iter()
                    .map(|p| {
                        if p.is_empty() {
                            Err(invalid(format!("groups.{name}.{what}: an entry is empty")))
                        } else {
                            Ok(WildMatch::new(p))
                        }
                    })
                    .collect()
            };
            let group = Group {
                providers: globs("providers", &g.providers)?,
                models: globs("models", &g.models)?,
            };
            groups.insert(name, group);
        }
        if let Some(d) = &doc.defaults.group {
            if !groups.contains_key(d) {
                return Err(invalid(format!(
                    "defaults.group names {d:?}, which is not in `groups`"
                )));
            }
        }
        Ok(Self {
            groups,
            default_group: doc.defaults.group,
        })
    }

    /// Whether `identity` may call `model` (if the request names one) on
    /// `provider`. Grants are per group: one group must allow both.
    pub fn authorize(
        &self,
        identity: &Identity,
        provider: &str,
        model: Option<&str>,
    ) -> Result<(), Denial> {
        let mut matched: Vec<(&str, &Group)> = identity
            .groups
            .iter()
            .filter_map(|g| {
                self.groups
                    .get_key_value(g.as_str())
                    .map(|(k, v)| (k.as_str(), v))
            })
            .collect();
        if matched.is_empty() {
            if let Some((k, v)) = self
                .default_group
                .as_ref()
                .and_then(|d| self.groups.get_key_value(d))
            {
                matched.push((k.as_str(), v));
            }
        }
        if matched.is_empty() {
            return Err(Denial::NoGroup {
                subject: identity.subject.clone(),
            });
        }
        let names = || {
            matched
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let with_provider: Vec<&Group> = matched
            .iter()
            .filter(|(_, g)| g.providers.iter().any(|p| p.matches(provider)))
            .map(|(_, g)| *g)
            .collect();
        if with_provider.is_empty() {
            return Err(Denial::Provider {
                groups: names(),
                provider: provider.to_owned(),
            });
        }
        match model {
            None => Ok(()),
            Some(m)
                if with_provider
                    .iter()
                    .any(|g| g.models.iter().any(|p| p.matches(m))) =>
            {
                Ok(())
            }
            Some(m) => Err(Denial::Model {
                groups: names(),
                provider: provider.to_owned(),
                model: m.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    const POLICY: &str = r#"
version: 1
groups:
  engineering:
    models: ["gpt-4o*", "claude-*"]
  finance:
    providers: [openai]
    models: ["gpt-4o-mini"]
  contractors:
    providers: [anthropic]
    models: ["claude-haiku-*"]
"#;

    fn who(groups: &[&str]) -> Identity {
        Identity {
            issuer: "i".into(),
            subject: "alice".into(),
            email: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires_at: 0,
        }
    }

    #[test]
    fn groups_grant_providers_and_models() {
        let p = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        assert!(p
            .authorize(&who(&["engineering"]), "openai", Some("gpt-4o-mini"))
            .is_ok());
        assert!(p
            .authorize(
                &who(&["engineering"]),
                "anthropic",
                Some("claude-sonnet-4-6")
            )
            .is_ok());
        assert!(p
            .authorize(&who(&["finance"]), "openai", Some("gpt-4o-mini"))
            .is_ok());
        let d = p
            .authorize(&who(&["finance"]), "openai", Some("gpt-4o"))
            .unwrap_err();
        assert_eq!(d.code(), "warden.model_denied");
        assert!(d.to_string().contains("gpt-4o") && d.to_string().contains("finance"));
        let d = p
            .authorize(&who(&["finance"]), "anthropic", None)
            .unwrap_err();
        assert_eq!(d.code(), "warden.provider_denied");
        assert!(p.authorize(&who(&["finance"]), "openai", None).is_ok());
    }

    #[test]
    fn one_group_must_grant_both_provider_and_model() {
        let p = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        // finance grants openai, contractors grants claude-haiku on anthropic only.
        let d = p.authorize(
            &who(&["finance", "contractors"]),
            "openai",
            Some("claude-haiku-4-5"),
        );
        assert!(d.is_err());
        assert!(p
            .authorize(
                &who(&["finance", "contractors"]),
                "anthropic",
                Some("claude-haiku-4-5")
            )
            .is_ok());
    }

    #[test]
    fn callers_in_no_group_are_denied_unless_a_default_is_named() {
        let p = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        let d = p
            .authorize(&who(&["sales"]), "openai", Some("gpt-4o-mini"))
            .unwrap_err();
        assert_eq!(d.code(), "warden.no_group");
        let with_default = format!("{POLICY}defaults: {{group: finance}}\n");
        let p = Policy::from_bytes(with_default.as_bytes()).unwrap();
        assert!(p
            .authorize(&who(&[]), "openai", Some("gpt-4o-mini"))
            .is_ok());
        assert!(p.authorize(&who(&[]), "openai", Some("gpt-4o")).is_err());
    }

    #[test]
    fn invalid_policies_are_refused_with_reasons() {
        let err = |doc: &str| Policy::from_bytes(doc.as_bytes()).unwrap_err().to_string();
        assert!(err("version: 2\n").contains("version 2"));
        assert!(err("version: 1\ndefaults: {group: ghosts}\n").contains("ghosts"));
        assert!(err("version: 1\ngroups: {a: {modles: [x]}}\n").contains("modles"));
        assert!(err("version: 1\ngroups: {a: {models: ['']}}\n").contains("empty"));
        assert!(err("groups: {}\n").contains("version"));
    }
}
