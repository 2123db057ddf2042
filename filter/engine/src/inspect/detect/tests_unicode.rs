//! Multi-byte characters next to and inside values: no validator or scan
//! step may slice text inside a character (a panic aborts the Envoy VM),
//! every span stays on character boundaries, and values are still found.

use super::tests::{cases, everything};
use super::*;
use crate::testing::test;

/// Two-, three- and four-byte characters: letters (which glue to a value
/// where a validator says so), a line separator, an invisible one, an
/// emoji, a fullwidth digit, a combining mark and a BOM.
const CHARS: [char; 10] = [
    'é', '한', '\u{2028}', '\u{200B}', '😀', '１', 'ß', '\u{301}', '\u{FEFF}', '𝐀',
];

/// Every span is a non-empty range of `text` on character boundaries.
fn assert_on_boundaries(text: &str, findings: &[Finding], what: &str) {
    for f in findings {
        assert!(
            f.start < f.end
                && f.end <= text.len()
                && text.is_char_boundary(f.start)
                && text.is_char_boundary(f.end),
            "{what}: {f:?} in {text:?}"
        );
    }
}

/// Runs every step of detection on `text`.
fn scan_all(set: &DetectorSet, text: &str, what: &str) {
    assert_on_boundaries(text, &set.find(text), what);
    assert_on_boundaries(text, &set.find_all(text), what);
    if let Some(h) = set.holdback_start(text) {
        assert!(
            h <= text.len() && text.is_char_boundary(h),
            "{what}: hold {h} in {text:?}"
        );
    }
}

#[test]
fn a_multi_byte_character_before_an_address_is_not_a_cut_inside_it() {
    let s = one_builtin(Builtin::Ipv4);
    for text in [
        "é10.0.0.1",
        "한10.0.0.1é",
        "\u{2028}10.0.0.1",
        "😀10.0.0.1😀",
        "ver é10.0.0.1",
    ] {
        assert_eq!(found(&s, text), ["10.0.0.1"], "{text:?}");
    }
    // The word before still counts, after a multi-byte character too (an
    // invisible one is not there at all).
    for text in [
        "é v10.0.0.1",
        "한 version 10.0.0.1",
        "😀ver: 10.0.0.1",
        "version:\u{200B}10.0.0.1",
    ] {
        assert!(found(&s, text).is_empty(), "{text:?}");
    }
}

#[test]
fn values_next_to_multi_byte_characters_are_still_found() {
    let akia = format!("AK{}QYLPMN5RTB7DZ4UF", "IA");
    let jwt = format!(
        "{}.{}.c2lnbmF0dXJl",
        crate::testing::b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        crate::testing::b64(br#"{"sub":"1"}"#)
    );
    // (text, a value that must be found exactly, the detector)
    let cases: Vec<(String, &str, &str)> = vec![
        ("é10.0.0.1".into(), "10.0.0.1", "ipv4"),
        ("한10.0.0.1é".into(), "10.0.0.1", "ipv4"),
        (
            "\u{2028}192.168.1.20\u{2028}".into(),
            "192.168.1.20",
            "ipv4",
        ),
        ("é１０.０.０.１é".into(), "１０.０.０.１", "ipv4"),
        ("at 10.0.\u{200B}0.1 now".into(), "10.0.\u{200B}0.1", "ipv4"),
        (
            "😀2001:db8::8a2e:370:7334😀".into(),
            "2001:db8::8a2e:370:7334",
            "ipv6",
        ),
        (
            "é fe80::1ff:fe23:4567:890a\u{2028}".into(),
            "fe80::1ff:fe23:4567:890a",
            "ipv6",
        ),
        ("éalice@example.com é".into(), "alice@example.com", "email"),
        ("한bob@example.org한".into(), "bob@example.org", "email"),
        ("😀carol@example.com😀".into(), "carol@example.com", "email"),
        (
            "é4111 1111 1111 1111é".into(),
            "4111 1111 1111 1111",
            "payment_card",
        ),
        (
            "한5555555555554444\u{2028}".into(),
            "5555555555554444",
            "payment_card",
        ),
        (
            "éDE89 3704 0044 0532 0130 00😀".into(),
            "DE89 3704 0044 0532 0130 00",
            "iban",
        ),
        ("é123-45-6789é".into(), "123-45-6789", "us_ssn"),
        ("한123-45-6789\u{2028}".into(), "123-45-6789", "us_ssn"),
        (
            "😀+1 415 555 2671\u{2028}".into(),
            "+1 415 555 2671",
            "phone",
        ),
        ("é (415) 555-2671 é".into(), "(415) 555-2671", "phone"),
        (format!("é{akia}é"), &akia, "aws_access_key_id"),
        (format!("한{akia}\u{2028}"), &akia, "aws_access_key_id"),
        (format!("😀{jwt}😀"), &jwt, "jwt"),
        (format!("é{jwt}\u{2028}"), &jwt, "jwt"),
        (
            "é password=Xy7#kLm9pQ\u{2028}".into(),
            "Xy7#kLm9pQ",
            "secret_assignment",
        ),
    ];
    let s = everything();
    for (text, want, detector) in &cases {
        let findings = s.find_all(text);
        assert_on_boundaries(text, &findings, detector);
        assert!(
            findings
                .iter()
                .any(|f| f.detector == *detector && &text[f.start..f.end] == *want),
            "{detector}: {want:?} not found in {text:?}: {findings:?}"
        );
    }
}

/// Each built-in's positive examples, with each multi-byte character put
/// at every character boundary of `x <example> y`: nothing panics, and
/// every span (and the holdback) is on a boundary.
#[test]
fn a_multi_byte_character_anywhere_around_or_inside_a_value_never_breaks_a_scan() {
    let all = everything();
    for (b, _, values) in cases() {
        let Some(value) = values.first() else {
            continue;
        };
        let own = one_builtin(b);
        let base = format!("x {value} y");
        for c in CHARS {
            for k in (0..=base.len()).filter(|&k| base.is_char_boundary(k)) {
                let mut text = base.clone();
                text.insert(k, c);
                scan_all(all, &text, b.name());
                scan_all(&own, &text, b.name());
            }
        }
    }
}

/// Runs of multi-byte characters and values glued together, so that
/// validators look back and ahead across several of them.
#[test]
fn values_glued_to_runs_of_multi_byte_characters() {
    let all = everything();
    for (b, _, values) in cases() {
        for value in values.iter().take(1) {
            for c in CHARS {
                let run: String = std::iter::repeat_n(c, 3).collect();
                for text in [
                    format!("{run}{value}"),
                    format!("{value}{run}"),
                    format!("{run}{value}{run}"),
                    format!("{c}.{value}.{c}"),
                    format!("{c}-{value}-{c}"),
                    format!("v{c}{value}"),
                ] {
                    scan_all(all, &text, b.name());
                }
            }
        }
    }
}

fn one_builtin(b: Builtin) -> DetectorSet {
    DetectorSet::compile(&[(0, MatcherSpec::Builtin(b))]).unwrap()
}

fn found<'t>(s: &DetectorSet, text: &'t str) -> Vec<&'t str> {
    s.find(text).iter().map(|f| &text[f.start..f.end]).collect()
}
