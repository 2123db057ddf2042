//! What every configuration document shares: parsing it, the error that
//! refuses a document, and [`Secret`], a value that never shows in a log
//! line. A leaf: the configuration, the policy, the authenticator and the
//! control-plane settings all use it, and it uses none of them.
//!
//! A document arrives in one of three encodings, told apart by its bytes:
//! - **JSON text**: what Istio's `WasmPlugin.pluginConfig` and Envoy
//!   Gateway's wasm `config` become, and a `StringValue` in an Envoy file;
//! - **a serialized `google.protobuf.Struct`**: what Envoy passes for a
//!   configuration typed `google.protobuf.Struct`, the way to write the
//!   filter's settings as native YAML in an Envoy file;
//! - **YAML text**, only with the `yaml` feature (the control plane, tests,
//!   fuzzers). The filter is built without it: a YAML parser is a quarter of
//!   a megabyte of code that V8 would compile in every Envoy, for an
//!   encoding that no mesh delivers.

use std::fmt;

use prost::Message as _;
use serde_json::{Map, Number, Value};

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

/// Parses a document (JSON text, a protobuf Struct, or YAML text with the
/// `yaml` feature) into `T`, refusing empty input.
pub fn parse_document<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    wire_document(bytes).unwrap_or_else(|| parse_text(bytes))
}

/// Parses a document as the filter receives it from Envoy: JSON text or a
/// protobuf Struct, never YAML, whatever the features. What `warden filter
/// validate` uses, so that it accepts exactly what every filter loads.
pub fn parse_wire_document<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, ConfigError> {
    wire_document(bytes).unwrap_or_else(|| Err(not_wire()))
}

/// `None`: the bytes are neither JSON text nor a Struct.
fn wire_document<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<Result<T, ConfigError>> {
    if bytes.trim_ascii().is_empty() {
        // An empty Struct serializes to no bytes at all: also "empty".
        return Some(Err(ConfigError::Empty));
    }
    // JSON first: a Struct's bytes are never a JSON object (its field tags
    // are control characters that JSON allows only inside strings), while
    // JSON text that starts with a newline would start like a Struct.
    if bytes.trim_ascii_start().first() == Some(&b'{') {
        match serde_json::from_slice::<T>(bytes) {
            Ok(doc) => return Some(Ok(doc)),
            // Valid JSON of the wrong shape: that is the error to report.
            Err(e) if !e.is_syntax() && !e.is_eof() => {
                return Some(Err(ConfigError::Syntax(e.to_string())))
            }
            Err(e) if bytes.first() != Some(&STRUCT_FIRST_BYTE) => {
                return Some(Err(ConfigError::Syntax(e.to_string())))
            }
            Err(_) => {}
        }
    }
    if bytes.first() == Some(&STRUCT_FIRST_BYTE) {
        if let Ok(value) = struct_to_json(bytes) {
            return Some(
                serde_json::from_value(value).map_err(|e| ConfigError::Syntax(e.to_string())),
            );
        }
    }
    None
}

/// The first byte of every non-empty serialized `google.protobuf.Struct`:
/// field 1 (`fields`), length-delimited.
const STRUCT_FIRST_BYTE: u8 = 0x0a;

fn not_wire() -> ConfigError {
    ConfigError::Syntax(
        "expected JSON text (a `google.protobuf.StringValue` holding a JSON object, as Istio \
         and Envoy Gateway send) or a `google.protobuf.Struct` (native YAML in an Envoy file); \
         the filter does not read YAML text"
            .into(),
    )
}

#[cfg(feature = "yaml")]
fn parse_text<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| ConfigError::Syntax(format!("not UTF-8: {e}")))?;
    serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))
}

#[cfg(not(feature = "yaml"))]
fn parse_text<T>(_: &[u8]) -> Result<T, ConfigError> {
    Err(not_wire())
}

/// Decodes a serialized `google.protobuf.Struct` into the JSON it stands for.
fn struct_to_json(bytes: &[u8]) -> Result<Value, String> {
    let decoded = prost_types::Struct::decode(bytes).map_err(|e| e.to_string())?;
    struct_value(decoded, 0)
}

/// How deep a Struct may nest: a bound on the recursion below, far above
/// any real configuration (a policy nests about six levels).
const MAX_STRUCT_DEPTH: usize = 64;

fn struct_value(s: prost_types::Struct, depth: usize) -> Result<Value, String> {
    let mut map = Map::new();
    for (key, value) in s.fields {
        map.insert(key, kind_value(value.kind, depth + 1)?);
    }
    Ok(Value::Object(map))
}

fn kind_value(kind: Option<prost_types::value::Kind>, depth: usize) -> Result<Value, String> {
    use prost_types::value::Kind;
    if depth > MAX_STRUCT_DEPTH {
        return Err(format!("nested deeper than {MAX_STRUCT_DEPTH} levels"));
    }
    Ok(match kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => number(n)?,
        Some(Kind::StructValue(s)) => struct_value(s, depth)?,
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .map(|v| kind_value(v.kind, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A Struct holds every number as a double; `max_body_bytes: 65536` must
/// still reach an integer field as an integer.
fn number(n: f64) -> Result<Value, String> {
    // Integers are exact in a double up to 2^53.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        // In range and integral by the check above: the cast is exact.
        return Ok(Value::Number(Number::from(n as i64)));
    }
    Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| format!("the number {n} is not finite"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;
    use prost_types::value::Kind;
    use serde_json::json;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        size: u64,
        #[serde(default)]
        ratio: Option<f64>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        nested: Option<serde_json::Value>,
    }

    /// What Envoy does to a configuration typed `google.protobuf.Struct`:
    /// every number becomes a double.
    fn to_struct(value: &Value) -> prost_types::Struct {
        let Value::Object(map) = value else {
            panic!("a Struct is an object")
        };
        prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), prost_types::Value { kind: Some(to_kind(v)) }))
                .collect(),
        }
    }

    fn to_kind(value: &Value) -> Kind {
        match value {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.iter().map(|v| prost_types::Value { kind: Some(to_kind(v)) }).collect(),
            }),
            Value::Object(_) => Kind::StructValue(to_struct(value)),
        }
    }

    fn encoded(value: Value) -> Vec<u8> {
        to_struct(&value).encode_to_vec()
    }

    #[test]
    fn a_struct_reads_as_the_json_it_stands_for_with_integers_intact() {
        let value = json!({"name": "a", "size": 1048576, "ratio": 0.5, "tags": ["x", "y"],
                           "nested": {"deep": [1, -2, null, true]}});
        let bytes = encoded(value.clone());
        assert_eq!(bytes[0], STRUCT_FIRST_BYTE);
        let doc: Doc = parse_document(&bytes).unwrap();
        assert_eq!(doc.size, 1_048_576);
        assert_eq!(doc.ratio, Some(0.5));
        assert_eq!(doc.tags, ["x", "y"]);
        // Integral doubles come back as integers, so an integer field takes them.
        assert_eq!(doc.nested, Some(json!({"deep": [1, -2, null, true]})));
    }

    #[test]
    fn json_text_and_a_struct_give_the_same_document() {
        let value = json!({"name": "same", "size": 7, "tags": ["t"]});
        let from_text: Doc = parse_document(value.to_string().as_bytes()).unwrap();
        // JSON text that starts with a newline starts with a Struct's first
        // byte; it still reads as JSON.
        let with_newline = format!("\n  {value}\n");
        let from_newline: Doc = parse_document(with_newline.as_bytes()).unwrap();
        let from_struct: Doc = parse_document(&encoded(value)).unwrap();
        assert_eq!(from_text, from_struct);
        assert_eq!(from_newline, from_struct);
    }

    #[test]
    fn a_struct_of_the_wrong_shape_names_the_field() {
        let err = parse_document::<Doc>(&encoded(json!({"name": "a", "size": 1, "sise": 2})))
            .unwrap_err();
        assert!(err.to_string().contains("sise"), "{err}");
        // A fraction where an integer belongs is refused, not truncated.
        let err = parse_document::<Doc>(&encoded(json!({"name": "a", "size": 1.5}))).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
        // Beyond 2^53 a double is not an exact integer: refused as well.
        let err = parse_document::<Doc>(&encoded(json!({"name": "a", "size": 1e300}))).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
    }

    #[test]
    fn json_of_the_wrong_shape_is_reported_as_such() {
        let err = parse_document::<Doc>(br#"{"name": "a", "size": 1, "extra": true}"#).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        let err = parse_document::<Doc>(br#"{"name": "a", "size": "#).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
    }

    #[test]
    fn a_struct_nested_without_bound_is_refused_not_recursed() {
        let mut value = json!({"leaf": 1});
        for _ in 0..(MAX_STRUCT_DEPTH + 4) {
            value = json!({ "n": value });
        }
        let mut wrapped = json!({"name": "a", "size": 1});
        wrapped["nested"] = value;
        let err = parse_document::<Doc>(&encoded(wrapped)).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
    }

    #[test]
    fn empty_is_refused_in_every_encoding() {
        for bytes in [&b""[..], b"  \n\t", &encoded(json!({}))] {
            assert_eq!(parse_document::<Doc>(bytes).unwrap_err(), ConfigError::Empty);
        }
    }

    #[test]
    fn bytes_that_are_no_document_get_a_syntax_error() {
        for bytes in [&b"\x0a\xff\xff"[..], b"\x0a\x05abc", b"{\x0a\x03abc"] {
            assert!(
                matches!(parse_document::<Doc>(bytes), Err(ConfigError::Syntax(_))),
                "{bytes:?}"
            );
        }
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn yaml_text_reads_with_the_yaml_feature() {
        let doc: Doc = parse_document(b"name: y\nsize: 3\n").unwrap();
        assert_eq!(doc.size, 3);
    }

    #[test]
    fn the_wire_reading_refuses_yaml_whatever_the_features() {
        let err = parse_wire_document::<Doc>(b"name: y\nsize: 3\n").unwrap_err();
        assert!(err.to_string().contains("does not read YAML"), "{err}");
        let doc: Doc = parse_wire_document(br#"{"name": "y", "size": 3}"#).unwrap();
        assert_eq!(doc.size, 3);
        let doc: Doc = parse_wire_document(&encoded(json!({"name": "y", "size": 3}))).unwrap();
        assert_eq!(doc.size, 3);
    }
}
