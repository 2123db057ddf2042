//! A policy document to a [`Policy`]: every problem found and listed at
//! once (a path such as `rules[2].regex`, or a line for syntax), so the
//! control plane refuses exactly what a filter would.

use serde::{Deserialize, Serialize};
use wildmatch::WildMatch;

use super::*;
use crate::document::{parse_document, ConfigError};
use crate::inspect::detect::{gitleaks, Builtin, DetectorSet, MatcherSpec};
use std::collections::BTreeMap;

/// One thing wrong with a policy document. Syntax and type errors carry
/// the line and column; the others a path (`rules[2].regex`). Also what the
/// control plane answers (422 `problems`) and its CLI reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Problem {
    pub path: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl Problem {
    fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: Some(path.into()),
            line: None,
            column: None,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{path}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Parses and compiles a policy (YAML or JSON), listing every problem.
#[cfg(feature = "yaml")]
pub fn check_document(bytes: &[u8]) -> Result<Policy, Vec<Problem>> {
    let syntax = |message: String, line: Option<usize>, column: Option<usize>| {
        vec![Problem {
            path: None,
            line,
            column,
            message,
        }]
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| syntax(format!("the policy is not UTF-8: {e}"), None, None))?;
    if text.trim().is_empty() {
        return Err(syntax("the policy is empty".into(), None, None));
    }
    let doc: PolicyDoc = serde_yaml_ng::from_str(text).map_err(|e| {
        let at = e.location();
        syntax(
            e.to_string(),
            at.as_ref().map(|l| l.line()),
            at.as_ref().map(|l| l.column()),
        )
    })?;
    Policy::check(doc)
}

/// The JSON Schema of a policy document, for editors and the control plane.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(PolicyDoc)).unwrap_or_default()
}

impl Policy {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::compile(parse_document::<PolicyDoc>(bytes)?)
    }

    /// [`Policy::check`] with the problems joined into one error.
    pub fn compile(doc: PolicyDoc) -> Result<Self, ConfigError> {
        Self::check(doc).map_err(|problems| {
            let all: Vec<String> = problems.iter().map(Problem::to_string).collect();
            ConfigError::Invalid(format!("policy: {}", all.join("; ")))
        })
    }

    /// Compiles a parsed document, listing every problem rather than the first.
    pub fn check(doc: PolicyDoc) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        if doc.version != SCHEMA_VERSION {
            problems.push(Problem::at(
                "version",
                format!(
                    "version {} is not supported (this filter understands version {SCHEMA_VERSION})",
                    doc.version
                ),
            ));
        }
        let mut groups = BTreeMap::new();
        for (name, g) in doc.groups {
            if name.is_empty() {
                problems.push(Problem::at("groups", "a group name is empty"));
                continue;
            }
            let mut globs = |what: &str, items: &[String]| -> Vec<WildMatch> {
                if items.iter().any(String::is_empty) {
                    problems.push(Problem::at(
                        format!("groups.{name}.{what}"),
                        "an entry is empty",
                    ));
                }
                items.iter().map(|p| WildMatch::new(p)).collect()
            };
            let tools_allowed = globs("tools.allow", &g.tools.allow);
            let tools_denied = globs("tools.deny", &g.tools.deny);
            let providers = globs("providers", &g.providers);
            let models = globs("models", &g.models);
            let endpoints = globs("endpoints", &g.endpoints);
            let inference = g
                .endpoints
                .iter()
                .any(|e| e == crate::endpoint::INFERENCE_SET);
            for e in &g.endpoints {
                let glob = e.contains(['*', '?']);
                if !glob && e != crate::endpoint::INFERENCE_SET && !crate::endpoint::is_known(e) {
                    problems.push(Problem::at(
                        format!("groups.{name}.endpoints"),
                        format!(
                            "{e:?} is not an endpoint name; use `inference`, a glob, or one of: {}",
                            crate::endpoint::known_names()
                        ),
                    ));
                }
            }

            let clearance = g
                .clearance
                .iter()
                .map(|(dest, level)| (dest.clone(), WildMatch::new(dest), *level))
                .collect();
            groups.insert(
                name,
                Group {
                    providers,
                    models,
                    clearance,
                    inference,
                    endpoints,
                    tools_allowed,
                    tools_denied,
                    every_tool: g.tools.allow.iter().any(|t| t == "*") && g.tools.deny.is_empty(),
                },
            );
        }
        if let Some(d) = &doc.defaults.group {
            if !groups.contains_key(d) {
                problems.push(Problem::at(
                    "defaults.group",
                    format!("names {d:?}, which is not in `groups`"),
                ));
            }
        }
        check_approval_defaults(&doc.approval, &mut problems);
        let mut rules = Vec::with_capacity(doc.rules.len());
        let mut specs = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in doc.rules.into_iter().enumerate() {
            let at = format!("rules[{i}]");
            if r.name.is_empty() || !names.insert(r.name.clone()) {
                problems.push(Problem::at(
                    format!("{at}.name"),
                    format!("{:?}: a rule needs a unique, non-empty name", r.name),
                ));
            }
            let label = r
                .label
                .clone()
                .unwrap_or_else(|| r.name.to_ascii_uppercase().replace('-', "_"));
            let before = specs.len();
            for d in r.detect.map(OneOrMany::into_vec).unwrap_or_default() {
                match Builtin::from_name(&d) {
                    Some(builtin) => specs.push((i, MatcherSpec::Builtin(builtin))),
                    None => {
                        let known: Vec<&str> = Builtin::ALL.iter().map(|b| b.name()).collect();
                        problems.push(Problem::at(
                            format!("{at}.detect"),
                            format!("unknown detector {d:?}; known: {}", known.join(", ")),
                        ));
                        // Counted as a matcher so the rule is not also
                        // reported as having none.
                        specs.push((i, MatcherSpec::Builtin(Builtin::ALL[0])));
                    }
                }
            }
            if let Some(pattern) = r.regex {
                check_regex(
                    &pattern,
                    r.group.as_deref(),
                    &format!("{at}.regex"),
                    &mut problems,
                );
                specs.push((
                    i,
                    MatcherSpec::Regex {
                        pattern,
                        group: r.group.clone(),
                        label: label.clone(),
                    },
                ));
            } else if r.group.is_some() {
                problems.push(Problem::at(
                    format!("{at}.group"),
                    "`group` needs a `regex`",
                ));
            }
            if let Some(words) = r.keywords {
                if words.iter().any(|w| w.trim().is_empty()) {
                    problems.push(Problem::at(format!("{at}.keywords"), "a keyword is empty"));
                }
                specs.push((
                    i,
                    MatcherSpec::Keywords {
                        words,
                        label: label.clone(),
                    },
                ));
            }
            if let Some(file) = &r.gitleaks {
                match gitleaks::parse(file) {
                    Ok(found) => {
                        for rule in found {
                            let label =
                                r.label.clone().unwrap_or_else(|| gitleaks::label(&rule.id));
                            specs.push((
                                i,
                                MatcherSpec::Gitleaks {
                                    rule: Box::new(rule),
                                    label,
                                },
                            ));
                        }
                    }
                    Err(e) => {
                        problems.push(Problem::at(format!("{at}.gitleaks"), e));
                        specs.push((i, MatcherSpec::Builtin(Builtin::ALL[0])));
                    }
                }
            }
            let tool_rule = check_tool_rule(&r.tools, &r.argument, r.action, &at, &mut problems);
            if specs.len() == before && tool_rule.is_none() {
                problems.push(Problem::at(
                    at.clone(),
                    "give `detect`, `regex`, `keywords` or `gitleaks`",
                ));
            }
            let every_call = tool_rule.is_some() && specs.len() == before;
            let approval = resolve_approval(&doc.approval, r.approval.as_ref());
            let may_need_approval = r.action == Action::RequireApproval
                || (doc.over_clearance == OverClearance::RequireApproval
                    && r.action != Action::LogOnly);
            if let Some(own) = &r.approval {
                check_approval_overrides(own, &format!("{at}.approval"), &mut problems);
            }
            if may_need_approval && approval.approvers.iter().all(|g| g.trim().is_empty()) {
                problems.push(Problem::at(
                    format!("{at}.approval.approvers"),
                    "this rule may require an approval: name the approver groups here or in the policy's `approval.approvers`",
                ));
            }
            rules.push(Rule {
                name: r.name,
                action: r.action,
                level: r.level,
                applies_to: r.applies_to,
                groups: r.groups,
                models: r.models.iter().map(|m| WildMatch::new(m)).collect(),
                observe: r.observe,
                approval,
                argument: tool_rule
                    .as_ref()
                    .map(|(_, argument)| argument.clone())
                    .unwrap_or_default(),
                tools: tool_rule.map(|(tools, _)| tools),
                every_call,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let detectors =
            DetectorSet::compile(&specs).map_err(|e| vec![Problem::at("rules", e.to_string())])?;
        Ok(Self {
            groups,
            default_group: doc.defaults.group,
            mode: doc.mode,
            rules,
            detectors,
            over_clearance: doc.over_clearance,
            record: doc.record,
            published_version: None,
            machine_keys: MachineKeys::default(),
        })
    }
}

/// A tool rule's own fields: its tools (globs) and the argument path its
/// matchers read, or `None` for a text rule. Only the actions that decide
/// about a call fit: a call's arguments are the agent's input, and a
/// rewritten command is one the model never proposed.
fn check_tool_rule(
    tools: &Option<Vec<String>>,
    argument: &Option<String>,
    action: Action,
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<(Vec<WildMatch>, Vec<String>)> {
    let Some(tools) = tools else {
        if argument.is_some() {
            problems.push(Problem::at(
                format!("{at}.argument"),
                "`argument` needs `tools` (the tools whose calls the rule reads)",
            ));
        }
        return None;
    };
    if tools.is_empty() || tools.iter().any(|t| t.trim().is_empty()) {
        problems.push(Problem::at(
            format!("{at}.tools"),
            "name one or more tools (globs), none empty",
        ));
    }
    if !matches!(
        action,
        Action::Block | Action::RequireApproval | Action::LogOnly
    ) {
        problems.push(Problem::at(
            format!("{at}.action"),
            format!(
                "a tool rule decides about a call: use block, require_approval or log_only, not {}",
                action.name()
            ),
        ));
    }
    let path: Vec<String> = match argument {
        None => Vec::new(),
        Some(path) => {
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            if segments.iter().any(|s| s.trim().is_empty()) {
                problems.push(Problem::at(
                    format!("{at}.argument"),
                    format!(
                        "{path:?}: a path of keys separated by dots (`action.command`), none empty"
                    ),
                ));
            }
            segments
        }
    };
    Some((tools.iter().map(|t| WildMatch::new(t)).collect(), path))
}

/// Compiles a custom pattern on its own, so its problem names its rule.
fn check_regex(pattern: &str, group: Option<&str>, path: &str, problems: &mut Vec<Problem>) {
    match regex::Regex::new(pattern) {
        Err(e) => problems.push(Problem::at(
            path,
            format!("not a valid regular expression: {e}"),
        )),
        Ok(re) => {
            if let Some(g) = group {
                if !re.capture_names().flatten().any(|n| n == g) {
                    problems.push(Problem::at(
                        path,
                        format!("has no group named {g:?} (see `group`)"),
                    ));
                }
            }
        }
    }
}

fn check_times(timeout: Option<u32>, ttl: Option<u32>, path: &str, problems: &mut Vec<Problem>) {
    if let Some(t) = timeout {
        if t == 0 || t > MAX_HOLD_SECONDS {
            problems.push(Problem::at(
                format!("{path}.timeout_seconds"),
                format!("must be 1..={MAX_HOLD_SECONDS}"),
            ));
        }
    }
    if let Some(t) = ttl {
        if t == 0 || t > MAX_APPROVAL_TTL_SECONDS {
            problems.push(Problem::at(
                format!("{path}.ttl_seconds"),
                format!("must be 1..={MAX_APPROVAL_TTL_SECONDS}"),
            ));
        }
    }
}

fn check_approval_defaults(doc: &ApprovalDefaultsDoc, problems: &mut Vec<Problem>) {
    check_times(
        Some(doc.timeout_seconds),
        Some(doc.ttl_seconds),
        "approval",
        problems,
    );
    if doc.approvers.iter().any(|g| g.trim().is_empty()) {
        problems.push(Problem::at("approval.approvers", "an entry is empty"));
    }
}

fn check_approval_overrides(doc: &ApprovalDoc, path: &str, problems: &mut Vec<Problem>) {
    check_times(doc.timeout_seconds, doc.ttl_seconds, path, problems);
    if doc
        .approvers
        .as_ref()
        .is_some_and(|a| a.iter().any(|g| g.trim().is_empty()))
    {
        problems.push(Problem::at(
            format!("{path}.approvers"),
            "an entry is empty",
        ));
    }
}

fn resolve_approval(defaults: &ApprovalDefaultsDoc, own: Option<&ApprovalDoc>) -> Approval {
    let own = own.cloned().unwrap_or_default();
    Approval {
        approvers: own.approvers.unwrap_or_else(|| defaults.approvers.clone()),
        mode: own.mode.unwrap_or(defaults.mode),
        timeout_seconds: own.timeout_seconds.unwrap_or(defaults.timeout_seconds),
        ttl_seconds: own.ttl_seconds.unwrap_or(defaults.ttl_seconds),
    }
}
