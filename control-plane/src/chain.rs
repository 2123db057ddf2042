//! The session records' hash chain: how a record is written down and how
//! each row's hash links it to the one before. A leaf: the store appends
//! with it, the sessions routes verify with it.
//!
//! Row `seq` holds the record's canonical JSON (the engine's
//! [`warden_engine::protocol::canonical_json`], the same rule approvals bind
//! requests with) and `hash = sha256_hex(prev_hash || "\n" || record)`, where
//! `prev_hash` is row `seq - 1`'s hash ([`GENESIS_HASH`] for the first).

use serde_json::Value;

/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The text a record is stored and hashed as: keys sorted explicitly, so
/// the chain does not depend on how serde_json happens to order a map.
pub fn record_text(record: &Value) -> String {
    warden_engine::protocol::canonical_json(record)
}

/// `sha256_hex(prev_hash || "\n" || record)`.
pub fn chain_hash(prev_hash: &str, record: &str) -> String {
    let mut text = String::with_capacity(prev_hash.len() + 1 + record.len());
    text.push_str(prev_hash);
    text.push('\n');
    text.push_str(record);
    crate::policies::sha256_hex(&text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chain_hash_is_sha256_of_prev_newline_record() {
        // sha256("0"*64 + "\n" + "{}")
        let expected = crate::policies::sha256_hex(&format!("{GENESIS_HASH}\n{{}}"));
        assert_eq!(chain_hash(GENESIS_HASH, "{}"), expected);
        assert_eq!(expected.len(), 64);
        assert_ne!(
            chain_hash(GENESIS_HASH, "{}"),
            chain_hash(GENESIS_HASH, "{ }")
        );
    }

    #[test]
    fn a_record_is_written_with_sorted_keys_whatever_its_map_order() {
        let record = serde_json::json!({"z": 1, "a": {"y": [1, "é\n"], "b": null}, "m": 12345678901234567890u64});
        let text = record_text(&record);
        assert_eq!(
            text,
            r#"{"a":{"b":null,"y":[1,"é\n"]},"m":12345678901234567890,"z":1}"#
        );
        // What rows written before this rule hold (serde_json's sorted maps).
        assert_eq!(text, serde_json::to_string(&record).unwrap());
    }
}
