//! The policy compiler, on any document: the first byte picks raw bytes
//! (read as a YAML or JSON document as they are) or a document built from
//! the input out of the policy's own vocabulary (keys, enum values,
//! detector names, globs, regex and gitleaks fragments), written as YAML or
//! JSON. Either way: an error or a policy, never a panic; the control
//! plane's check (`check_document`, every problem listed) and the filter's
//! (`Policy::from_bytes`) accept exactly the same documents; a refused one
//! names at least one problem, each with a message; a compiled one scans,
//! authorizes and picks its rules without a panic, and its findings are
//! spans of the text. Compile time is bounded by libFuzzer's `-timeout`.
#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use warden_engine::auth::Identity;
use warden_engine::inspect::detect::Builtin;
use warden_engine::policy::{check_document, Direction, Policy};
use warden_engine_fuzz::check_span;

const KEYS: &[&str] = &[
    "version",
    "mode",
    "defaults",
    "group",
    "groups",
    "rules",
    "over_clearance",
    "approval",
    "record",
    "providers",
    "models",
    "clearance",
    "endpoints",
    "name",
    "detect",
    "regex",
    "keywords",
    "gitleaks",
    "label",
    "where",
    "action",
    "level",
    "observe",
    "approvers",
    "timeout_seconds",
    "ttl_seconds",
    "unknown",
];
const WORDS: &[&str] = &[
    "enforce",
    "observe",
    "mask",
    "redact",
    "hash",
    "tokenize",
    "block",
    "require_approval",
    "log_only",
    "public",
    "internal",
    "confidential",
    "restricted",
    "rule_action",
    "request",
    "response",
    "both",
    "hold",
    "ticket",
    "off",
    "metadata",
    "masked",
    "inference",
    "files",
    "batches",
    "responses.stored",
    "realtime",
    "*",
    "gpt-4o*",
    "claude-?",
    "openai",
    "anthropic",
    "engineering",
    "security",
    "",
    " ",
    "merger",
    "Project Titan",
];
const REGEXES: &[&str] = &[
    "CUST-(?P<id>[0-9]{8})",
    "(?P<id>",
    "[a-z]+",
    "\\bkey_[A-Za-z0-9]{20}\\b",
    "(a|b)*c",
    "\\p{L}{3,}",
    "(?i)secret",
    "x{1000}{1000}",
    "(?P<id>a)(?P<id>b)",
    "^$",
    "(?s).*",
    "\\",
];
const GITLEAKS: &[&str] = &[
    "[[rules]]\nid = \"acme\"\nregex = '''\\b(acme_[a-z0-9]{32})\\b'''\nentropy = 3.5\nkeywords = [\"acme_\"]\n",
    "[allowlist]\nstopwords = [\"example\"]\n[[rules]]\nid = \"x\"\nregex = '''x(y)'''\nsecretGroup = 1\n",
    "[[rules]]\nid = \"bad\"\nregex = '''('''\n",
    "[[rules]]\nid = \"g\"\nregex = '''k([0-9]+)'''\nsecretGroup = 7\n[[rules.allowlists]]\nregexes = ['''^k0''']\nregexTarget = \"match\"\n",
    "not toml [",
];

fn string(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=4)? {
        0 => u.choose(WORDS)?.to_string(),
        1 => u.choose(REGEXES)?.to_string(),
        2 => u.choose(GITLEAKS)?.to_string(),
        3 => Builtin::ALL[u.choose_index(Builtin::ALL.len())?]
            .name()
            .to_string(),
        _ => u.arbitrary::<String>()?,
    })
}

fn value(u: &mut Unstructured, depth: usize) -> Result<Value> {
    let pick = if depth >= 5 {
        u.int_in_range(0..=3)?
    } else {
        u.int_in_range(0..=6)?
    };
    Ok(match pick {
        0 => Value::String(string(u)?),
        1 => Value::from(*u.choose(&[
            0i64,
            1,
            2,
            -1,
            59,
            60,
            280,
            281,
            604_800,
            604_801,
            1 << 40,
        ])?),
        2 => Value::Bool(u.arbitrary()?),
        3 => Value::Null,
        4 | 5 => {
            let mut map = Map::new();
            for _ in 0..u.int_in_range(0..=6)? {
                let key = if u.ratio(7, 8)? {
                    u.choose(KEYS)?.to_string()
                } else {
                    string(u)?
                };
                map.insert(key, value(u, depth + 1)?);
            }
            Value::Object(map)
        }
        _ => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| value(u, depth + 1)).collect::<Result<_>>()?)
        }
    })
}

/// A document in the policy's vocabulary: mostly well-typed, so that the
/// compiler's checks (not only serde's) are reached.
fn document(u: &mut Unstructured) -> Result<Value> {
    let mut doc = Map::new();
    if u.ratio(15, 16)? {
        doc.insert(
            "version".into(),
            Value::from(if u.ratio(7, 8)? { 1 } else { 2 }),
        );
    }
    let mut groups = Map::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let mut g = Map::new();
        for key in ["providers", "models", "endpoints"] {
            if u.arbitrary()? {
                let n = u.int_in_range(0..=3)?;
                g.insert(
                    key.into(),
                    Value::Array(
                        (0..n)
                            .map(|_| string(u).map(Value::String))
                            .collect::<Result<_>>()?,
                    ),
                );
            }
        }
        if u.arbitrary()? {
            g.insert("clearance".into(), value(u, 3)?);
        }
        groups.insert(string(u)?, Value::Object(g));
    }
    doc.insert("groups".into(), Value::Object(groups));
    let mut rules = Vec::new();
    for _ in 0..u.int_in_range(0..=5)? {
        let mut r = Map::new();
        r.insert("name".into(), Value::String(string(u)?));
        r.insert(
            "action".into(),
            Value::String(u.choose(&WORDS[2..9])?.to_string()),
        );
        match u.int_in_range(0..=4)? {
            0 => r.insert("detect".into(), Value::String(string(u)?)),
            1 => {
                let n = u.int_in_range(0..=4)?;
                let names = (0..n)
                    .map(|_| {
                        Ok(Value::String(
                            Builtin::ALL[u.choose_index(Builtin::ALL.len())?]
                                .name()
                                .into(),
                        ))
                    })
                    .collect::<Result<_>>()?;
                r.insert("detect".into(), Value::Array(names))
            }
            2 => {
                if u.arbitrary()? {
                    r.insert("group".into(), Value::String("id".into()));
                }
                r.insert("regex".into(), Value::String(string(u)?))
            }
            3 => r.insert("keywords".into(), value(u, 4)?),
            _ => r.insert("gitleaks".into(), Value::String(string(u)?)),
        };
        for _ in 0..u.int_in_range(0..=3)? {
            r.insert(u.choose(KEYS)?.to_string(), value(u, 3)?);
        }
        rules.push(Value::Object(r));
    }
    doc.insert("rules".into(), Value::Array(rules));
    for _ in 0..u.int_in_range(0..=3)? {
        doc.insert(u.choose(KEYS)?.to_string(), value(u, 1)?);
    }
    Ok(Value::Object(doc))
}

const SAMPLE: &str = "mail bob@example.com, card 4111 1111 1111 1111, key AKIAIOSFODNN7ABCDEFG, \
    CUST-12345678, acme_live_0123456789abcdefghijklmnopqrstuv, the merger, Ünïcödé ＡＢＣ";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 3 {
        0 => rest.to_vec(),
        m => {
            let mut u = Unstructured::new(rest);
            let Ok(doc) = document(&mut u) else { return };
            if m == 1 {
                match serde_yaml_ng::to_string(&doc) {
                    Ok(text) => text.into_bytes(),
                    Err(_) => return,
                }
            } else {
                doc.to_string().into_bytes()
            }
        }
    };
    let checked = check_document(&bytes);
    let loaded = Policy::from_bytes(&bytes);
    assert_eq!(
        checked.is_ok(),
        loaded.is_ok(),
        "the control plane and the filter disagree on {:?}: {:?} / {:?}",
        String::from_utf8_lossy(&bytes),
        checked.as_ref().err(),
        loaded.as_ref().err()
    );
    let policy = match checked {
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a problem");
            for p in &problems {
                assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
            }
            return;
        }
        Ok(policy) => policy,
    };
    for f in policy.detectors().find_all(SAMPLE) {
        check_span(SAMPLE, &f);
    }
    let who = Identity {
        issuer: "i".into(),
        subject: "s".into(),
        token_subject: None,
        email: None,
        groups: vec!["engineering".into(), "security".into()],
        expires_at: 0,
    };
    for direction in [Direction::Request, Direction::Response] {
        let rules = policy.active_rules(&who, "openai", Some("gpt-4o"), direction);
        let (edits, hits) = policy.scan(&rules, SAMPLE);
        for e in &edits {
            assert!(
                e.start < e.end && SAMPLE.get(e.start..e.end).is_some(),
                "edit {e:?}"
            );
        }
        for pair in edits.windows(2) {
            assert!(pair[0].end <= pair[1].start, "edits overlap: {pair:?}");
        }
        for h in &hits {
            assert!(
                policy.rules.get(h.rule).is_some(),
                "a hit of no rule: {h:?}"
            );
        }
    }
    let _ = policy.authorize(&who, "openai", Some("gpt-4o"));
    if let Some(h) = policy.detectors().holdback_start(SAMPLE) {
        assert!(
            SAMPLE.is_char_boundary(h) && h < SAMPLE.len(),
            "holdback {h}"
        );
    }
});
