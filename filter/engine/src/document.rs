//! What every configuration document shares: parsing JSON or YAML, the
//! error that refuses a document, and [`Secret`], a value that never shows
//! in a log line. A leaf: the configuration, the policy, the authenticator
//! and the control-plane settings all use it, and it uses none of them.

use std::fmt;

/// Why a configuration was refused. The message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("the plugin configuration is empty")]
    Empty,
    #[error("the plugin configuration does not parse: {0}")]
    Syntax(String),
    #[error("the plugin configuration is invalid: {0}")]
    Invalid(String),
}

/// Parses JSON or YAML (a superset of JSON) into `T`, refusing empty input.
pub fn parse_document<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| ConfigError::Syntax(format!("not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ConfigError::Empty);
    }
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))
}

/// A provider key. Its `Debug` never shows the value, so it cannot end up in a
/// log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}
