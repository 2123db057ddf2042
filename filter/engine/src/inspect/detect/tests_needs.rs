//! The prefilter and the windows (`needs`) never lose a finding: texts full
//! of values (each built-in's, encoded, split by invisible characters, in
//! compatibility forms, at the text's edges, among long filler) give the same
//! findings as every detector run over the whole text.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use base64::Engine;

use super::*;
use crate::testing::test;

const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Deterministic pseudo-random characters (no secret-looking literal in the
/// source).
fn random(n: usize, seed: u64, alphabet: &str) -> String {
    let chars: Vec<char> = alphabet.chars().collect();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chars[(x % chars.len() as u64) as usize]
        })
        .collect()
}

fn url64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn std64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Fullwidth forms of ASCII (NFKC reads them as ASCII).
fn fullwidth(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '!'..='~' => char::from_u32(u32::from(c) - 0x21 + 0xFF01).unwrap_or(c),
            _ => c,
        })
        .collect()
}

/// A zero-width space after every character.
fn spaced(s: &str) -> String {
    s.chars().flat_map(|c| [c, '\u{200B}']).collect()
}

/// Values each built-in finds (and a custom regex and keywords).
fn values() -> Vec<String> {
    let jwt = format!(
        "{}.{}.{}",
        url64(r#"{"alg":"HS256","typ":"JWT"}"#),
        url64(r#"{"sub":"1234567890"}"#),
        random(43, 1, ALNUM)
    );
    let pem = format!(
        "-----BEGIN RSA {}KEY-----\n{}\n{}\n-----END RSA PRIVATE KEY-----",
        "PRIVATE ",
        random(64, 2, B64),
        random(64, 3, B64)
    );
    vec![
        "jane.doe@example.com".into(),
        "+1 415 555 2671".into(),
        "(415) 555-2671".into(),
        "020 7946 0958".into(),
        "01 23 45 67 89".into(),
        "4111 1111 1111 1111".into(),
        "4111111111111111".into(),
        "DE89 3704 0044 0532 0130 00".into(),
        "GB82WEST12345698765432".into(),
        "123-45-6789".into(),
        "192.168.1.20".into(),
        "2001:db8::8a2e:370:7334".into(),
        "fe80::1ff:fe23:4567:890a".into(),
        "00:1A:2B:3C:4D:5E".into(),
        "ITIN 912-70-1234".into(),
        "NHS 943 476 5919".into(),
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed".into(),
        "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2".into(),
        "passport number: C01234567".into(),
        "driving licence MORGA657054SM9IJ".into(),
        format!(
            "postgres://admin:{}@db.example.com/app",
            random(12, 21, ALNUM)
        ),
        format!("abc8Q~{}", random(34, 22, ALNUM)),
        format!("ABSKQmVkcm9ja0FQSUtleS{}", random(120, 23, ALNUM)),
        "138 0013 8000".into(),
        format!("AKIA{}", random(16, 4, UPPER)),
        format!("aws_secret_access_key = {}", random(40, 5, B64)),
        format!("AWS secret is {}", random(40, 6, B64)),
        super::tests::github_token("p", &random(30, 7, ALNUM)),
        format!("github_pat_{}", random(40, 8, ALNUM)),
        format!("glpat-{}", random(20, 9, ALNUM)),
        format!(
            "xoxb-{}-{}",
            random(12, 10, "0123456789"),
            random(24, 11, ALNUM)
        ),
        format!("sk_live_{}", random(24, 12, ALNUM)),
        format!("AIza{}", random(35, 13, ALNUM)),
        format!("sk-proj-{}", random(40, 14, ALNUM)),
        format!("sk-{}", random(48, 15, ALNUM)),
        format!("sk-ant-{}", random(40, 16, ALNUM)),
        pem,
        jwt,
        format!("password = \"{}\"", random(16, 17, ALNUM)),
        format!("db_password: {}", random(16, 18, ALNUM)),
        "CUST-12345678".into(),
        // Anchors at a match's very end and very start: the windows must
        // reach a whole match length back and ahead.
        format!("{}!!", random(55, 19, "abcdefghijklmnopqrstuvwxyz")),
        format!("##{}", random(55, 20, "abcdefghijklmnopqrstuvwxyz")),
        "Project Titan".into(),
        "café".into(),
    ]
}

/// What a value may look like in a prompt.
fn disguises(v: &str) -> Vec<String> {
    vec![
        v.to_owned(),
        std64(v),
        url64(v),
        hex(v),
        percent(v),
        std64(&percent(v)),
        fullwidth(v),
        spaced(v),
        format!("\"{v}\""),
    ]
}

fn everything() -> &'static DetectorSet {
    static SET: OnceLock<DetectorSet> = OnceLock::new();
    SET.get_or_init(|| {
        let mut specs: Vec<(usize, MatcherSpec)> = Builtin::ALL
            .into_iter()
            .map(MatcherSpec::Builtin)
            .enumerate()
            .collect();
        let n = specs.len();
        specs.push((
            n,
            MatcherSpec::Regex {
                pattern: r"CUST-(?P<id>[0-9]{8})".into(),
                group: Some("id".into()),
                label: "CUSTOMER".into(),
            },
        ));
        specs.push((
            n + 1,
            MatcherSpec::Regex {
                pattern: r"[a-z]{40,60}!!".into(),
                group: None,
                label: "TAIL".into(),
            },
        ));
        specs.push((
            n + 2,
            MatcherSpec::Regex {
                pattern: r"##[a-z]{40,60}".into(),
                group: None,
                label: "HEAD".into(),
            },
        ));
        specs.push((
            n + 3,
            MatcherSpec::Keywords {
                words: vec!["Project Titan".into(), "café".into()],
                label: "CODENAME".into(),
            },
        ));
        DetectorSet::compile(&specs).unwrap()
    })
}

fn assert_same(s: &DetectorSet, text: &str) -> Vec<Raw> {
    let reference = s.raw_with(text, 0, Filter::Off);
    let filtered = s.raw_with(text, 0, Filter::On);
    let key = |r: &Vec<Raw>| {
        r.iter()
            .map(|r| (r.start, r.end, r.det))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(&filtered), key(&reference), "in {text:?}");
    reference
}

#[test]
fn every_value_alone_and_at_the_edges() {
    let s = everything();
    let filler = "The quarterly numbers look fine, see the notes. ".repeat(12);
    let mut seen = BTreeSet::new();
    for value in values() {
        for v in disguises(&value) {
            for text in [
                v.clone(),
                format!("{filler}{v}"),
                format!("{v}{filler}"),
                format!("{filler}{v}{filler}"),
                format!("{filler}{v}\n{v}"),
            ] {
                for r in assert_same(s, &text) {
                    seen.insert(r.det);
                }
            }
        }
    }
    // The corpus exercises every detector, so a prefilter that lost one of
    // them would show above.
    let all: BTreeSet<usize> = (0..s.detectors.len()).collect();
    assert_eq!(seen, all);
}

#[test]
fn random_mixtures() {
    let s = everything();
    let mut pieces: Vec<String> = values().iter().flat_map(|v| disguises(v)).collect();
    pieces.extend(
        [
            " ",
            "\n",
            ", ",
            ". ",
            ":",
            "=",
            "-",
            "@",
            "é",
            "\u{301}",
            "\u{200B}",
            "word",
            "1",
            "0x",
            "%",
            "The quarterly numbers look fine. ",
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ",
        ]
        .map(String::from),
    );
    let mut x: u64 = 11;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    for _ in 0..400 {
        let n = 1 + next() % 40;
        let text: String = (0..n)
            .map(|_| pieces[next() % pieces.len()].as_str())
            .collect();
        assert_same(s, &text);
    }
}

/// Each built-in's needs hold for the values it finds, whatever the text
/// around them: the prefilter is derived from the pattern, and this checks
/// the derivation on real examples.
#[test]
fn needs_hold_for_every_builtin_example() {
    let s = everything();
    for value in values() {
        for v in disguises(&value) {
            for r in s.raw_with(&v, 0, Filter::Off) {
                let d = &s.detectors[r.det];
                let hay = View::new(&v[r.start..r.end]).text().to_owned();
                let mut hist = [0u32; 256];
                hay.bytes().for_each(|b| hist[usize::from(b)] += 1);
                // A finding's span can be wider than the regex match
                // (decoded runs, mapped back): the needs of the match hold
                // within the span whenever it is the match itself.
                if r.end - r.start == hay.len() && d.re.is_match(hay.as_str()) {
                    assert!(
                        d.needs.check(hay.len(), &hist).is_some(),
                        "{} needs {:?} rejects {hay:?}",
                        d.kind.name(),
                        d.needs
                    );
                }
            }
        }
    }
}

/// Windows come from the rarest need: a long text with the value far from
/// its start still finds it, and texts with none of a detector's bytes skip
/// it (checked through the result only: the same findings).
#[test]
fn long_texts_with_sparse_values() {
    let s = everything();
    let filler = "Nothing to see here, only words and more words. ".repeat(40);
    for value in values() {
        let text = format!("{filler}{value} {filler}{value}");
        let found = assert_same(s, &text);
        assert!(!found.is_empty(), "{value:?}");
    }
}

/// The two anchor searches (memchr's passes natively, one table pass in wasm
/// without SIMD) find the same positions, whichever runs here: sets of one
/// to many bytes, overlapping sets, texts from any offset, and more needs
/// than one table pass holds.
#[test]
fn both_anchor_searches_find_the_same_positions() {
    let patterns = [
        r"[0-9]{4}",
        r"e[wy]",
        r"[A-Za-z0-9_]{20}",
        "@",
        r"[13579]{2}",
        r"[xyz]",
    ];
    let needs: Vec<needs::Need> = patterns
        .iter()
        .flat_map(|p| needs::Needs::of(&regex_syntax::Parser::new().parse(p).unwrap()).needs)
        .collect();
    assert_eq!(needs.len(), patterns.len());
    let text = format!(
        "{} ewy@x 13579 ey_Z9 {}",
        random(300, 7, ALNUM),
        random(200, 9, B64)
    );
    for many in [1, 12] {
        let anchors: Vec<(&needs::Need, usize)> = (0..many)
            .flat_map(|_| needs.iter().map(|n| (n, 0)))
            .collect();
        let searched: Vec<usize> = (0..anchors.len()).collect();
        for from in [0, 1, 17, text.len()] {
            let bytes = &text.as_bytes()[from..];
            let by_memchr = memchr_positions(&anchors, &searched, bytes, from);
            assert_eq!(by_memchr, table_positions(&anchors, &searched, bytes, from));
            let digits = by_memchr.first().map_or(0, Vec::len);
            assert_eq!(digits, bytes.iter().filter(|b| b.is_ascii_digit()).count());
        }
    }
}
