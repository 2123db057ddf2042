//! Streamed and whole, a text is masked alike: the property that the stream
//! rewriter's holdback and left context are enough, checked on every way of
//! cutting a text into two deltas and on a sample of cuts into three.

use std::rc::Rc;

use super::apply::MaskingStream;
use super::detect::tests::cases;
use super::detect::Builtin;
use super::mask::{apply, HashKey, Vault};
use super::sse::{Channel, ChannelKind, StreamText};
use crate::auth::Identity;
use crate::policy::{Direction, Policy};
use crate::testing::{member_of, test};

/// Every built-in masked by a rule of its own, and a keyword list and a
/// custom regex with a group.
fn policy() -> Rc<Policy> {
    let mut doc = String::from("version: 1\ngroups: {all: {models: [\"*\"]}}\nrules:\n");
    for b in Builtin::ALL {
        doc.push_str(&format!(
            "  - {{name: {0}, detect: {0}, action: mask}}\n",
            b.name()
        ));
    }
    doc.push_str("  - {name: words, keywords: [merger, \"Project Titan\"], action: mask}\n");
    doc.push_str("  - {name: customer, regex: 'CUST-(?P<id>[0-9]{8})', group: id, action: mask}\n");
    Rc::new(Policy::from_bytes(doc.as_bytes()).unwrap())
}

fn who() -> Identity {
    member_of("all")
}

/// The text as a plain body is masked, and the rules' counts.
fn plain(policy: &Rc<Policy>, text: &str) -> (String, String) {
    let active = policy.active_rules(&who(), "openai", Some("m"), Direction::Response);
    let (edits, _) = policy.scan(&active, text);
    let mut stream = MaskingStream::new(
        policy.clone(),
        active.clone(),
        Vault::default(),
        HashKey::new(b"k".to_vec()),
    );
    // The whole text in one call: the same scan, and its outcome.
    let whole = stream.whole(text).unwrap();
    let masked = apply(
        text,
        &edits,
        &mut Vault::default(),
        &HashKey::new(b"k".to_vec()),
    );
    assert_eq!(whole, masked);
    (masked, stream.outcome.summary())
}

/// The text streamed in `deltas` on one channel.
fn streamed(policy: &Rc<Policy>, deltas: &[&str]) -> (String, String) {
    let active = policy.active_rules(&who(), "openai", Some("m"), Direction::Response);
    let mut stream = MaskingStream::new(
        policy.clone(),
        active,
        Vault::default(),
        HashKey::new(b"k".to_vec()),
    );
    let channel = Channel {
        index: 0,
        kind: ChannelKind::Text,
    };
    let mut out = String::new();
    for d in deltas {
        out.push_str(&stream.push(&channel, d).unwrap());
    }
    out.push_str(&stream.finish(&channel).unwrap());
    (out, stream.outcome.summary())
}

/// Each detector's values and look-alikes, alone and glued to letters,
/// digits and punctuation on either side, in a sentence.
fn texts() -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    for (_, text, want) in cases() {
        texts.push(text);
        values.extend(want);
    }
    // Look-alikes the issue names: an IPv6-looking run, dotted versions.
    values.extend(
        [
            "fe80::1ff:fe23:4567:890a",
            "2001:db8::8a2e:370:7334",
            "192.168.1.20",
            "123-45-6789",
            "4111 1111 1111 1111",
            "+1 415 555 2671",
            "CUST-12345678",
            "merger",
        ]
        .map(String::from),
    );
    let glue = ["", "a", "Z", "7", "_", "-", ".", ":", "/", "+", "é", "v "];
    for value in &values {
        // Secrets far longer than the lookbehind add nothing to the
        // property but time.
        if value.len() > 120 {
            continue;
        }
        for before in glue {
            texts.push(format!("see {before}{value} now"));
        }
        for after in ["a", "7", "-", ".1", ":"] {
            texts.push(format!("see {value}{after} now"));
        }
    }
    texts
}

fn boundaries(text: &str) -> Vec<usize> {
    (1..text.len())
        .filter(|&k| text.is_char_boundary(k))
        .collect()
}

#[test]
fn streamed_text_is_masked_exactly_as_the_whole_text_for_any_cut() {
    let policy = policy();
    let mut x: u64 = 17;
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    for text in &texts() {
        let want = plain(&policy, text);
        let cuts = boundaries(text);
        for &k in &cuts {
            let got = streamed(&policy, &[&text[..k], &text[k..]]);
            assert_eq!(got, want, "{text:?} cut at {k}");
        }
        // A sample of cuts into three.
        for _ in 0..6 {
            if cuts.len() < 2 {
                break;
            }
            let mut a = cuts[next() % cuts.len()];
            let mut b = cuts[next() % cuts.len()];
            if a == b {
                continue;
            }
            if a > b {
                std::mem::swap(&mut a, &mut b);
            }
            let got = streamed(&policy, &[&text[..a], &text[a..b], &text[b..]]);
            assert_eq!(got, want, "{text:?} cut at {a} and {b}");
        }
    }
    // The case the issue reports: glued to letters, an IPv6-looking run is
    // no address in the whole text, and not in a stream cut right before it.
    let text = "see abc2001:db8::8a2e:370:7334 now";
    let (whole, _) = plain(&policy, text);
    assert_eq!(whole, text);
    let k = text.find("2001").unwrap();
    assert_eq!(streamed(&policy, &[&text[..k], &text[k..]]).0, text);
}

/// Found by the `stream_text` fuzz target: a stream's scan starts from the
/// left context it kept, which can begin inside an earlier `api-key: ...`
/// match. A detector that reads a key name before its value searches that
/// context too, and there paired the earlier value's inner `api-key:` with
/// the text up to the next key, consuming that key: the value after it,
/// masked in the whole text, went out in clear. Whatever the context pairs,
/// a value is still found, its key in the held text or in the context.
#[test]
fn a_match_in_the_left_context_never_hides_a_value_held_after_it() {
    let policy = policy();
    // The key of the hidden value in the context, the value held.
    let text = "access_key = V8Raccess_key = [SE9jt_access_key = V8RiUFGs\n";
    let (whole, _) = plain(&policy, text);
    assert!(!whole.contains("V8RiUFGs"), "{whole:?}");
    let (out, _) = streamed(&policy, &[text]);
    assert!(
        !out.contains("V8RiUFGs"),
        "the value went out in clear: {out:?}"
    );
    // The key held too.
    let text = String::from_utf8_lossy(
        b"api-key: \xff\xff\x01\x00\x00\xff\xff\xff\xe5\x04-api-key: t-api03-UaKL7TAATfT\xcfapikey: sk\x00-UKSA",
    )
    .into_owned();
    let (whole, _) = plain(&policy, &text);
    assert!(whole.ends_with("apikey: [SECRET]"), "{whole:?}");
    let (out, _) = streamed(&policy, &[&text]);
    assert!(
        !out.contains("sk\0-UKSA"),
        "the value went out in clear: {out:?}"
    );
}

/// Found by the `stream_text` fuzz target: a validator reads the characters
/// after a candidate (`5555555454444 9Qes` may be an IBAN's groups), and
/// refused it while fewer than it reads had arrived; the holdback, which
/// knew only what could still become a match, let the digits out, and the
/// next character made them a card number. A candidate is held until as
/// many characters follow it as its validator reads.
#[test]
fn a_candidate_refused_for_what_follows_is_held_until_that_arrives() {
    let policy = policy();
    let text = "\u{0}\u{0}5555555454444 9QesQ";
    let (whole, _) = plain(&policy, text);
    assert_eq!(whole, "\0\0[PAYMENT_CARD] 9QesQ");
    let (out, _) = streamed(&policy, &["\u{0}\u{0}555555545", "4444 9Qes", "Q"]);
    assert_eq!(out, whole);
}
