//! Rule files in gitleaks' format (TOML), the detector sets security teams
//! already keep: each `[[rules]]` entry with a `regex` becomes a matcher of
//! its own, compiled like a policy's custom regex.
//!
//! What a rule says, and how it is honoured here:
//! - `regex`, `secretGroup`: the pattern and the group that is the secret
//!   (by default the first group, if the pattern has one, else the whole
//!   match), as gitleaks reads them. Patterns are Go RE2 syntax, which the
//!   regex crate reads alike, except that `\w`, `\d`, `\s` and `\b` also
//!   take Unicode letters and digits here.
//! - `keywords`: the rule applies only to a text holding one of them
//!   (case-insensitive); they are also its prefilter, checked before its
//!   pattern runs.
//! - `entropy`: the secret's least Shannon entropy, in bits per character.
//! - `allowlists` (and the older single `allowlist`), per rule and global:
//!   `regexes` against the secret, the match or the line (`regexTarget`),
//!   and `stopwords` in the secret, joined by `condition` (`OR`, the
//!   default, or `AND`). `paths` and `commits` name files and commits, which
//!   a request has none of: an allowlist with only those never applies.
//! - Rules with only a `path` (file names) match nothing in a request and
//!   are left out; `[extend]` (another file, or gitleaks' defaults) is
//!   refused, since only the rules given here are compiled.

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use super::builtins::entropy;
use super::{DetectError, Groups};

/// Most rules one file may bring.
pub const RULES_MAX: usize = 1000;

/// A gitleaks rule, as the detector set compiles it.
#[derive(Debug, Clone, PartialEq)]
pub struct GitleaksRule {
    pub id: String,
    pub regex: String,
    pub secret_group: Option<usize>,
    pub entropy: Option<f64>,
    pub keywords: Vec<String>,
    pub allowlists: Vec<Allowlist>,
}

/// When a finding is let go.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowlist {
    /// All of the checks present must hold (`AND`), or any (`OR`).
    pub all: bool,
    pub regexes: Vec<String>,
    pub target: Target,
    pub stopwords: Vec<String>,
}

/// What an allowlist's regexes are matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Secret,
    Match,
    Line,
}

#[derive(Deserialize)]
struct FileDoc {
    #[serde(default)]
    extend: Option<toml::Value>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
    #[serde(default)]
    allowlist: Option<AllowlistDoc>,
    #[serde(default)]
    allowlists: Vec<AllowlistDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleDoc {
    id: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    secret_group: Option<usize>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    allowlist: Option<AllowlistDoc>,
    #[serde(default)]
    allowlists: Vec<AllowlistDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllowlistDoc {
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    regex_target: Option<String>,
    #[serde(default)]
    stopwords: Vec<String>,
}

impl AllowlistDoc {
    fn compile(self) -> Result<Option<Allowlist>, String> {
        let all = match self
            .condition
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("OR") => false,
            Some("AND") => true,
            Some(other) => return Err(format!("allowlist condition `{other}`: use OR or AND")),
        };
        let target = match self.regex_target.as_deref() {
            None | Some("secret") => Target::Secret,
            Some("match") => Target::Match,
            Some("line") => Target::Line,
            Some(other) => {
                return Err(format!(
                    "allowlist regexTarget `{other}`: use secret, match or line"
                ))
            }
        };
        // Only paths or commits: nothing in a request to allow.
        if self.regexes.is_empty() && self.stopwords.is_empty() {
            return Ok(None);
        }
        Ok(Some(Allowlist {
            all,
            regexes: self.regexes,
            target,
            stopwords: self
                .stopwords
                .into_iter()
                .map(|w| w.to_lowercase())
                .collect(),
        }))
    }
}

/// The rules of a gitleaks rule file, or what is wrong with it (a message
/// that never quotes a pattern's matches, only the file's own text).
pub fn parse(text: &str) -> Result<Vec<GitleaksRule>, String> {
    let doc: FileDoc =
        toml::from_str(text).map_err(|e| format!("not a gitleaks rule file: {e}"))?;
    if doc.extend.is_some() {
        return Err(
            "`[extend]` is not supported: give the rules themselves (gitleaks' defaults are not built in)"
                .into(),
        );
    }
    let mut global = Vec::new();
    for a in doc.allowlist.into_iter().chain(doc.allowlists) {
        global.extend(a.compile()?);
    }
    let mut rules = Vec::new();
    for r in doc.rules {
        let Some(regex) = r.regex else {
            continue;
        };
        let mut allowlists = global.clone();
        for a in r.allowlist.into_iter().chain(r.allowlists) {
            allowlists.extend(a.compile().map_err(|e| format!("rule `{}`: {e}", r.id))?);
        }
        if r.entropy.is_some_and(|e| !e.is_finite() || e < 0.0) {
            return Err(format!("rule `{}`: entropy must be a number >= 0", r.id));
        }
        rules.push(GitleaksRule {
            id: r.id,
            regex,
            secret_group: r.secret_group,
            entropy: r.entropy,
            keywords: r
                .keywords
                .into_iter()
                .filter(|k| !k.is_empty())
                .map(|k| k.to_lowercase())
                .collect(),
            allowlists,
        });
    }
    if rules.is_empty() {
        return Err("no rule with a `regex`".into());
    }
    if rules.len() > RULES_MAX {
        return Err(format!(
            "{} rules, more than the {RULES_MAX} allowed",
            rules.len()
        ));
    }
    Ok(rules)
}

/// The placeholder text of a rule's findings: its id in upper case, other
/// characters as `_` (`acme-api-key` reads `[ACME_API_KEY]`).
pub fn label(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A rule's checks beyond its pattern, compiled.
#[derive(Debug)]
pub(super) struct Checks {
    /// The group that is the secret (`None`: the whole match).
    group: Option<usize>,
    entropy: Option<f64>,
    /// Any keyword, case-insensitive (`None`: no keywords, always applies).
    keywords: Option<Regex>,
    allowlists: Vec<CompiledAllowlist>,
}

#[derive(Debug)]
struct CompiledAllowlist {
    all: bool,
    regexes: Vec<Regex>,
    target: Target,
    stopwords: Vec<String>,
}

impl Checks {
    /// `groups` is the number of groups of the rule's pattern, the whole
    /// match included. Limits as for a custom regex.
    pub(super) fn compile(
        id: usize,
        rule: &GitleaksRule,
        groups: usize,
        size_limit: usize,
        dfa_limit: usize,
    ) -> Result<Self, DetectError> {
        let group = match rule.secret_group {
            Some(0) => None,
            Some(g) if g < groups => Some(g),
            Some(g) => {
                return Err(DetectError::UnknownGroup {
                    id,
                    group: g.to_string(),
                })
            }
            // gitleaks' default: the first group, if there is one.
            None => (groups > 1).then_some(1),
        };
        let build = |pattern: &str| {
            RegexBuilder::new(pattern)
                .size_limit(size_limit)
                .dfa_size_limit(dfa_limit)
                .build()
                .map_err(|error| DetectError::InvalidRegex { id, error })
        };
        let keywords = if rule.keywords.is_empty() {
            None
        } else {
            let words: Vec<String> = rule.keywords.iter().map(|k| regex::escape(k)).collect();
            Some(build(&format!("(?i:{})", words.join("|")))?)
        };
        let mut allowlists = Vec::with_capacity(rule.allowlists.len());
        for a in &rule.allowlists {
            allowlists.push(CompiledAllowlist {
                all: a.all,
                regexes: a
                    .regexes
                    .iter()
                    .map(|r| build(r))
                    .collect::<Result<_, _>>()?,
                target: a.target,
                stopwords: a.stopwords.clone(),
            });
        }
        Ok(Checks {
            group,
            entropy: rule.entropy,
            keywords,
            allowlists,
        })
    }

    /// Whether the rule applies to `text` at all (it holds a keyword).
    pub(super) fn applies(&self, text: &str) -> bool {
        self.keywords.as_ref().is_none_or(|k| k.is_match(text))
    }

    /// The secret's span of the match `start..end` in `hay`, unless its
    /// entropy is too low or an allowlist lets it go.
    pub(super) fn validate(
        &self,
        hay: &str,
        start: usize,
        end: usize,
        groups: &Groups,
    ) -> Option<(usize, usize)> {
        let (s, e) = match self.group {
            Some(g) => groups.get(g)?,
            None => (start, end),
        };
        let secret = hay.get(s..e)?;
        if self.entropy.is_some_and(|min| entropy(secret) < min) {
            return None;
        }
        let matched = hay.get(start..end).unwrap_or_default();
        let line_start = hay
            .get(..start)
            .and_then(|h| h.rfind('\n'))
            .map_or(0, |i| i + 1);
        let line_end = hay
            .get(end..)
            .and_then(|t| t.find('\n'))
            .map_or(hay.len(), |i| end + i);
        let line = hay.get(line_start..line_end).unwrap_or_default();
        let lower = secret.to_lowercase();
        let allowed = self.allowlists.iter().any(|a| {
            let target = match a.target {
                Target::Secret => secret,
                Target::Match => matched,
                Target::Line => line,
            };
            let checks = [
                (!a.regexes.is_empty()).then(|| a.regexes.iter().any(|r| r.is_match(target))),
                (!a.stopwords.is_empty())
                    .then(|| a.stopwords.iter().any(|w| lower.contains(w.as_str()))),
            ];
            let mut present = checks.iter().flatten();
            if a.all {
                present.all(|&c| c)
            } else {
                present.any(|&c| c)
            }
        });
        (!allowed).then_some((s, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_file_reads_as_gitleaks_writes_it() {
        let rules = parse(
            r#"
title = "team rules"
[allowlist]
stopwords = ["EXAMPLE"]

[[rules]]
id = "acme-api-key"
description = "ACME API key"
regex = '''(?i)acme[_-]?key\s*[:=]\s*['"]?([a-z0-9]{32})'''
secretGroup = 1
entropy = 3.5
keywords = ["ACME"]
tags = ["key"]
  [[rules.allowlists]]
  condition = "AND"
  regexes = ['''^0+$''']
  regexTarget = "secret"
  paths = ['''test/''']

[[rules]]
id = "only-files"
path = '''\.pem$'''
"#,
        )
        .unwrap();
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(
            (r.id.as_str(), r.secret_group, r.entropy, r.keywords.clone()),
            ("acme-api-key", Some(1), Some(3.5), vec!["acme".to_string()])
        );
        assert_eq!(r.allowlists.len(), 2);
        assert_eq!(r.allowlists[0].stopwords, vec!["example"]);
        assert!(r.allowlists[1].all);
        assert_eq!(r.allowlists[1].target, Target::Secret);
        assert_eq!(label("acme-api-key"), "ACME_API_KEY");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        for (text, says) in [
            (
                "[extend]\nuseDefault = true\n[[rules]]\nid='a'\nregex='a'",
                "extend",
            ),
            ("[[rules]]\nid = 'a'\npath = 'x'", "no rule"),
            ("rules = 3", "not a gitleaks"),
            ("[[rules]]\nid='a'\nregex='a'\nentropy=-1", "entropy"),
            (
                "[[rules]]\nid='a'\nregex='a'\n[rules.allowlist]\ncondition='XOR'\nregexes=['b']",
                "condition",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    fn set(file: &str) -> super::super::DetectorSet {
        let specs: Vec<(usize, super::super::MatcherSpec)> = parse(file)
            .unwrap()
            .into_iter()
            .map(|rule| super::super::MatcherSpec::Gitleaks {
                label: label(&rule.id),
                rule: Box::new(rule),
            })
            .enumerate()
            .collect();
        super::super::DetectorSet::compile(&specs).unwrap()
    }

    fn secrets(set: &super::super::DetectorSet, text: &str) -> Vec<String> {
        set.find(text)
            .into_iter()
            .map(|f| {
                assert_eq!((f.detector, f.label.as_str()), ("gitleaks", "ACME_KEY"));
                text[f.start..f.end].to_string()
            })
            .collect()
    }

    const ACME: &str = r#"
[allowlist]
stopwords = ["example"]

[[rules]]
id = "acme-key"
regex = '''(?i)acme[_-]?key\s*[:=]\s*['"]?([a-z0-9]{24})'''
entropy = 3.0
keywords = ["acme"]
  [[rules.allowlists]]
  regexTarget = "line"
  regexes = ['''(?i)test fixture''']
"#;

    #[test]
    fn the_secret_group_is_masked_unless_a_rule_lets_it_go() {
        let s = set(ACME);
        let key = "q7x2m9k4v8b1n5c3z6l0p4r7";
        assert_eq!(secrets(&s, &format!("ACME_KEY = '{key}'")), vec![key]);
        // low entropy, a stopword, an allowlisted line
        assert!(secrets(&s, "acme_key: aaaaaaaaaaaabbbbbbbbbbbb").is_empty());
        assert!(secrets(&s, "acme_key: q7x2m9k4v8b1exampleb1n5c").is_empty());
        assert!(secrets(&s, &format!("acme_key: {key} # test fixture")).is_empty());
    }

    #[test]
    fn without_one_of_its_keywords_a_rule_does_not_apply() {
        let s =
            set("[[rules]]\nid = 'acme-key'\nregex = '''tok_[a-z0-9]{16}'''\nkeywords = ['acme']");
        let token = "tok_q7x2m9k4v8b1n5c3";
        assert!(secrets(&s, &format!("token {token}")).is_empty());
        assert_eq!(secrets(&s, &format!("ACME token {token}")), vec![token]);
    }
}
