//! The filter's plugin configuration as Envoy hands it over: any bytes
//! (`FilterConfig::from_wire_bytes`: JSON text, a serialized protobuf
//! Struct, or neither) give a configuration or an error, never a panic.
//! And the two encodings agree: a JSON document built from the input,
//! written as JSON text and as the Struct Envoy would make of it (numbers
//! as doubles), reads back as the same value, or is refused alike.
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use prost_types::value::Kind;
use serde_json::{Map, Value};
use warden_engine::config::FilterConfig;
use warden_engine::document::parse_wire_document;

const KEYS: &[&str] = &[
    "providers", "authentication", "issuers", "issuer", "audiences", "jwks", "cluster", "policy",
    "version", "groups", "models", "rules", "name", "api", "path_prefix", "credential", "env",
    "max_body_bytes", "control_plane", "authority", "poll_seconds", "watch_seconds", "x", "",
];

fn value(u: &mut Unstructured, depth: u32) -> Result<Value> {
    Ok(match u.int_in_range(0..=if depth > 4 { 3 } else { 5 })? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        // Integers a double holds exactly: the Struct keeps them.
        2 => Value::from(u.int_in_range(-(1i64 << 53)..=(1i64 << 53))?),
        3 => Value::String(if u.arbitrary()? { u.choose(KEYS)?.to_string() } else { u.arbitrary()? }),
        4 => Value::Array((0..u.int_in_range(0..=3)?).map(|_| value(u, depth + 1)).collect::<Result<_>>()?),
        _ => Value::Object(object(u, depth + 1)?),
    })
}

fn object(u: &mut Unstructured, depth: u32) -> Result<Map<String, Value>> {
    let mut map = Map::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let key = if u.arbitrary()? { u.choose(KEYS)?.to_string() } else { u.arbitrary()? };
        map.insert(key, value(u, depth)?);
    }
    Ok(map)
}

fn kind(value: &Value) -> Kind {
    match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(|v| prost_types::Value { kind: Some(kind(v)) }).collect(),
        }),
        Value::Object(m) => Kind::StructValue(to_struct(m)),
    }
}

fn to_struct(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), prost_types::Value { kind: Some(kind(v)) })).collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let env = |_: &str| Some("fuzz".to_string());
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let _ = FilterConfig::from_wire_bytes(rest, &env);
        return;
    }
    let mut u = Unstructured::new(rest);
    let Ok(doc) = object(&mut u, 0) else { return };
    let text = serde_json::to_vec(&Value::Object(doc.clone())).unwrap_or_default();
    let wire = to_struct(&doc).encode_to_vec();
    let from_text = parse_wire_document::<Value>(&text);
    let from_struct = parse_wire_document::<Value>(&wire);
    if doc.is_empty() {
        // An empty Struct is no bytes at all: refused as empty.
        assert_eq!(from_struct, Err(warden_engine::document::ConfigError::Empty));
        return;
    }
    match (&from_text, &from_struct) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "JSON text and Struct read differently"),
        _ => panic!("one encoding refused what the other read: {from_text:?} / {from_struct:?}"),
    }
    let _ = FilterConfig::from_wire_bytes(&wire, &env);
});
