//! The JSON walker and rewriter (a request body through the policy: every
//! built-in masked, a custom regex hashed, keywords tokenized), on any
//! bytes: a body that is not strict JSON is refused, never half-read; a
//! rewritten body parses (strictly: no duplicate keys); its numbers are
//! byte for byte those of the input (serde_json's exponent form aside); no
//! masked value survives in it; and rewriting it again changes nothing more
//! but values masking itself exposed, past the engine's bounded rescans.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warden_engine::inspect::apply::inspect_json;
use warden_engine::inspect::body::parse_strict;
use warden_engine::inspect::mask::{HashKey, Vault};
use warden_engine::policy::Direction;
use warden_engine_fuzz::{
    active, check_masked_values_gone, masking_policy, number_tokens, placeholder_spans,
    scanned_texts,
};

/// A number as serde_json writes what it read: `e`, and a sign after it.
fn exponent_form(n: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(n.len() + 1);
    let mut it = n.iter().peekable();
    while let Some(&c) = it.next() {
        if c == b'e' || c == b'E' {
            out.push(b'e');
            if it.peek().is_some_and(|d| d.is_ascii_digit()) {
                out.push(b'+');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How far from a placeholder a value masking exposed can be: the
/// validators read 48 characters before a value and 6 after (in bytes, with
/// room for wide characters).
const EXPOSED_REACH: usize = 256;

fuzz_target!(|data: &[u8]| {
    let policy = masking_policy();
    let rules = active(&policy, Direction::Request);
    let key = HashKey::new(b"fuzz-hash-key-0123456789".to_vec());
    let mut vault = Vault::default();
    let parsed = parse_strict(data);
    let result = inspect_json(
        &policy,
        &rules,
        Direction::Request,
        data,
        &mut vault,
        &key,
        false,
    );
    let (doc, inspected) = match (parsed, result) {
        (Err(_), Err(_)) => return,
        (Ok(doc), Ok(inspected)) => (doc, inspected),
        (p, r) => panic!(
            "parse_strict and inspect_json disagree: {:?} vs {:?}",
            p.is_ok(),
            r.is_ok()
        ),
    };
    let Some(body) = inspected.body else {
        // Unchanged: nothing a rule rewrites was found.
        assert!(!inspected.outcome.rewrote(), "rewrote but returned no body");
        return;
    };

    // It parses, strictly.
    let out = match parse_strict(&body) {
        Ok(out) => out,
        Err(e) => panic!(
            "the rewritten body does not parse: {e}: {}",
            String::from_utf8_lossy(&body)
        ),
    };

    // Numbers byte for byte: each number token of the output is one of the
    // input's, as written (keys come out sorted, so not in order; the
    // rewriter may drop a `logprobs` value, and with it its numbers). The
    // one rewrite allowed is serde_json's of an exponent (`1E5` reads back
    // as `1e+5`, the same number): its `arbitrary_precision` keeps every
    // digit, and writes the exponent that way.
    let mut before: Vec<Vec<u8>> = number_tokens(data).into_iter().map(exponent_form).collect();
    let mut after: Vec<Vec<u8>> = number_tokens(&body)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    before.sort();
    after.sort();
    let mut rest = before.iter().peekable();
    for n in &after {
        while rest.next_if(|b| *b < n).is_some() {}
        assert!(
            rest.next() == Some(n),
            "number {:?} in the output is not one of the input's",
            String::from_utf8_lossy(n)
        );
    }
    if !data.windows(8).any(|w| w == b"logprobs") {
        assert_eq!(before.len(), after.len(), "numbers lost");
    }

    // What the pass masked is gone.
    let texts_in = scanned_texts(&doc);
    let texts_out = scanned_texts(&out);
    let mut values = Vec::new();
    for t in &texts_in {
        let (edits, _) = policy.scan(&rules, t);
        values.extend(edits.iter().map(|e| t[e.start..e.end].to_owned()));
    }
    check_masked_values_gone(&texts_in, &texts_out, values.iter().map(String::as_str));

    // Idempotent: a second pass finds nothing more to rewrite, but for
    // what masking itself exposed. The engine scans a rewritten text again
    // a bounded number of times (`inspect::apply`'s RESCANS): a chain of
    // values each glued to the previous one, each judged alone only once
    // its neighbour is a placeholder, can be longer. So whatever a second
    // pass still finds lies within a validator's reach of a placeholder
    // the first pass wrote.
    let again = inspect_json(
        &policy,
        &rules,
        Direction::Request,
        &body,
        &mut vault,
        &key,
        false,
    )
    .expect("the rewritten body is inspected again");
    if again.body.is_some() {
        for t in &texts_out {
            let spans = placeholder_spans(t);
            let (edits, _) = policy.scan(&rules, t);
            for e in edits {
                let exposed = spans
                    .iter()
                    .any(|&(s, end)| e.start <= end + EXPOSED_REACH && s <= e.end + EXPOSED_REACH);
                assert!(
                    exposed,
                    "rewriting twice changed {:?}, which no placeholder exposed, in {t:?}",
                    &t[e.start..e.end]
                );
            }
        }
    }
});
