//! The policy: who may use which provider and model.
//!
//! A policy is a versioned YAML (or JSON) document. The filter compiles it
//! once per version; the control plane compiles it with this same code before
//! publishing, so a policy it accepts is one every filter can load.
//!
//! ```yaml
//! version: 1
//! mode: enforce            # or observe: record what would happen, change nothing
//! defaults:
//!   group: null            # callers in no listed group: denied (or name a group)
//! groups:
//!   engineering:
//!     providers: ["*"]     # provider names from the filter configuration (globs)
//!     models: ["gpt-4o*", "claude-*"]
//!     clearance: {openai: internal, anthropic: internal, "local/*": confidential}
//!   finance:
//!     models: ["gpt-4o-mini"]
//!     endpoints: [inference, files]   # default: [inference] (see crate::endpoint)
//! rules:
//!   - {name: email, detect: email, action: tokenize, level: internal}
//!   - {name: cloud-keys, detect: [aws_access_key_id, github_token, private_key], action: block}
//!   - {name: customer-id, regex: 'CUST-(?P<id>[0-9]{8})', group: id, action: hash, level: confidential}
//!   - name: prod-dump
//!     keywords: ["production database dump"]
//!     action: require_approval
//!     approval: {mode: ticket}     # overrides the defaults below
//! over_clearance: rule_action   # or block, require_approval
//! approval:                     # defaults for every approval
//!   approvers: [security]       # groups whose members may decide (never their own request)
//!   mode: hold                  # hold: the request waits; ticket: 403 now, passes once approved
//!   timeout_seconds: 60         # hold: how long the request waits
//!   ttl_seconds: 3600           # how long an approval may be decided and then used
//! record: metadata              # off | metadata | masked (what the audit trail keeps)
//! ```
//!
//! [`check_document`] lists every problem of a document (with a line for
//! syntax and type errors, a path such as `rules[2].regex` for the rest);
//! the control plane maps paths to lines and refuses what the filter would.
//!
//! Sensitivity: `public < internal < confidential < restricted`. A finding
//! whose rule level is at or below the caller's clearance for the
//! destination (the highest any of their groups grants for that provider or
//! model) passes; above it, the rule's action applies (or what
//! `over_clearance` says). A rule without a level is `restricted`: it always
//! acts unless a group is cleared for restricted data.

use crate::protocol::Reason;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wildmatch::WildMatch;

use crate::auth::Identity;
use crate::document::{parse_document, ConfigError};
use crate::protocol::{ApprovalMode, Record};
use crate::endpoint::Endpoint;
use crate::inspect::detect::{Builtin, DetectorSet, MatcherSpec};
use crate::inspect::mask::{Action, Edit};

/// The only schema version this filter understands.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    pub version: u32,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub defaults: DefaultsDoc,
    #[serde(default)]
    pub groups: BTreeMap<String, GroupDoc>,
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
    #[serde(default)]
    pub over_clearance: OverClearance,
    /// Defaults for approvals; a rule's `approval` overrides them field by field.
    #[serde(default)]
    pub approval: ApprovalDefaultsDoc,
    /// What the audit trail keeps of each exchange.
    #[serde(default)]
    pub record: Record,
}

/// Longest hold: below Envoy's default `stream_idle_timeout` (5 min), which
/// would otherwise end a request that waits in silence.
pub const MAX_HOLD_SECONDS: u32 = 280;
/// Longest an approval stays usable.
pub const MAX_APPROVAL_TTL_SECONDS: u32 = 7 * 24 * 3600;

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ApprovalDefaultsDoc {
    /// Groups whose members may decide; nobody decides their own request.
    #[serde(default)]
    pub approvers: Vec<String>,
    #[serde(default)]
    pub mode: ApprovalMode,
    /// Hold mode: how long the request waits for a decision.
    #[serde(default = "default_hold_seconds")]
    pub timeout_seconds: u32,
    /// How long an approval may be decided and then used.
    #[serde(default = "default_ttl_seconds")]
    pub ttl_seconds: u32,
}

impl Default for ApprovalDefaultsDoc {
    fn default() -> Self {
        Self {
            approvers: Vec::new(),
            mode: ApprovalMode::default(),
            timeout_seconds: default_hold_seconds(),
            ttl_seconds: default_ttl_seconds(),
        }
    }
}

fn default_hold_seconds() -> u32 {
    60
}
fn default_ttl_seconds() -> u32 {
    3600
}

/// A rule's own approval settings; unset fields take the policy's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ApprovalDoc {
    #[serde(default)]
    pub approvers: Option<Vec<String>>,
    #[serde(default)]
    pub mode: Option<ApprovalMode>,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
    #[serde(default)]
    pub ttl_seconds: Option<u32>,
}

/// How one rule's approvals work, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub approvers: Vec<String>,
    pub mode: ApprovalMode,
    pub timeout_seconds: u32,
    pub ttl_seconds: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    /// Record what every rule would have done; change and block nothing.
    Observe,
}

/// Sensitivity levels, in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Public,
    Internal,
    Confidential,
    #[default]
    Restricted,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OverClearance {
    /// The rule's own action.
    #[default]
    RuleAction,
    Block,
    RequireApproval,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Where {
    Request,
    Response,
    #[default]
    Both,
}

/// One name or a list of names.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    pub name: String,
    /// Built-in detectors by name (`email`, `payment_card`, ...).
    #[serde(default)]
    pub detect: Option<OneOrMany>,
    /// A custom regular expression...
    #[serde(default)]
    pub regex: Option<String>,
    /// ...of which this named group is the sensitive part.
    #[serde(default)]
    pub group: Option<String>,
    /// Case-insensitive whole words or phrases.
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
    /// Placeholder label for custom matches (default: the rule name, upper-cased).
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default, rename = "where")]
    pub applies_to: Where,
    pub action: Action,
    #[serde(default)]
    pub level: Level,
    /// Limit the rule to callers in these groups (default: everyone).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Limit the rule to these models (globs; default: every model).
    #[serde(default)]
    pub models: Vec<String>,
    /// Record what the rule would do, change nothing.
    #[serde(default)]
    pub observe: bool,
    /// Approval settings for this rule (see the policy's `approval`).
    #[serde(default)]
    pub approval: Option<ApprovalDoc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DefaultsDoc {
    /// The group whose grants apply to a caller in none of the listed
    /// groups. Unset: such callers are denied.
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct GroupDoc {
    /// Provider names (globs). Default: every provider.
    #[serde(default = "every")]
    pub providers: Vec<String>,
    /// Model names (globs, `*` and `?`). Default: none; list what is allowed.
    #[serde(default)]
    pub models: Vec<String>,
    /// The most sensitive level this group may send to a provider (by name)
    /// or model (by glob). Unlisted destinations: `public`.
    #[serde(default)]
    pub clearance: BTreeMap<String, Level>,
    /// The provider endpoints this group may reach, by name (globs):
    /// `inference` (chat, completions, responses, embeddings, moderations,
    /// models, messages, token counts), or stateful ones such as `files`,
    /// `batches`, `responses.stored`, `realtime`. Default: `[inference]`;
    /// with one provider key shared by all, the others are shared state.
    #[serde(default = "inference_only")]
    pub endpoints: Vec<String>,
}

fn every() -> Vec<String> {
    vec!["*".into()]
}

fn inference_only() -> Vec<String> {
    vec![crate::endpoint::INFERENCE_SET.into()]
}

#[derive(Debug)]
struct Group {
    providers: Vec<WildMatch>,
    models: Vec<WildMatch>,
    clearance: Vec<(String, WildMatch, Level)>,
    /// `inference` among the endpoints, and the other entries as globs.
    inference: bool,
    endpoints: Vec<WildMatch>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    pub level: Level,
    pub applies_to: Where,
    groups: Vec<String>,
    models: Vec<WildMatch>,
    pub observe: bool,
    pub approval: Approval,
}

/// Which way the text travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    groups: BTreeMap<String, Group>,
    default_group: Option<String>,
    pub mode: Mode,
    pub rules: Vec<Rule>,
    detectors: DetectorSet,
    over_clearance: OverClearance,
    pub record: Record,
    /// The control plane's version number of this policy; `None` for one
    /// from the Envoy configuration.
    pub published_version: Option<u64>,
}

/// What one rule does for one request, after scope and clearance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveRule {
    pub rule: usize,
    pub action: Action,
    /// Recorded only (policy or rule in observe mode).
    pub observe: bool,
}

/// The rules in force for one request in one direction.
#[derive(Debug, Clone, Default)]
pub struct ActiveRules {
    by_rule: Vec<Option<ActiveRule>>,
}

impl ActiveRules {
    pub fn is_empty(&self) -> bool {
        self.by_rule.iter().all(Option::is_none)
    }
    pub fn get(&self, rule: usize) -> Option<ActiveRule> {
        self.by_rule.get(rule).copied().flatten()
    }
}

/// What a rule found in one string and what it does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: usize,
    pub action: Action,
    pub observe: bool,
    /// The span found (byte offsets into the scanned text).
    pub start: usize,
    pub end: usize,
}

/// Why a verified caller may not make a request. Messages name the caller's
/// groups and the model, which the caller already knows; nothing else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("you ({subject}) are in no group this gateway's policy grants access to")]
    NoGroup { subject: String },
    #[error("your groups ({groups}) may not use provider '{provider}'")]
    Provider { groups: String, provider: String },
    #[error("your groups ({groups}) may not use model '{model}' on provider '{provider}'")]
    Model {
        groups: String,
        provider: String,
        model: String,
    },
    #[error("your groups ({groups}) may not use the endpoint '{endpoint}' of provider '{provider}' (the policy lists each group's endpoints)")]
    Endpoint {
        groups: String,
        provider: String,
        endpoint: &'static str,
    },
    #[error("the endpoint '{endpoint}' needs the model named in the request, so the policy can authorize it")]
    ModelRequired { endpoint: &'static str },
}

impl Denial {
    pub fn code(&self) -> Reason {
        match self {
            Denial::NoGroup { .. } => Reason::NoGroup,
            Denial::Provider { .. } => Reason::ProviderDenied,
            Denial::Model { .. } => Reason::ModelDenied,
            Denial::Endpoint { .. } => Reason::EndpointDenied,
            Denial::ModelRequired { .. } => Reason::ModelRequired,
        }
    }
}

/// One thing wrong with a policy document. Syntax and type errors carry
/// the line and column; the others a path (`rules[2].regex`). Also what the
/// control plane answers (422 `problems`) and its CLI reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
            if specs.len() == before {
                problems.push(Problem::at(
                    at.clone(),
                    "give `detect`, `regex` or `keywords`",
                ));
            }
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
        })
    }

    pub fn detectors(&self) -> &DetectorSet {
        &self.detectors
    }

    /// The groups of the policy that `identity` belongs to (or the default).
    fn groups_of<'p>(&'p self, identity: &Identity) -> Vec<(&'p str, &'p Group)> {
        let mut matched: Vec<(&str, &Group)> = identity
            .groups
            .iter()
            .filter_map(|g| {
                self.groups
                    .get_key_value(g.as_str())
                    .map(|(k, v)| (k.as_str(), v))
            })
            .collect();
        if matched.is_empty() {
            if let Some((k, v)) = self
                .default_group
                .as_ref()
                .and_then(|d| self.groups.get_key_value(d))
            {
                matched.push((k.as_str(), v));
            }
        }
        matched
    }

    /// The caller's clearance for a destination: the highest level any of
    /// their groups grants for the provider (by name) or the model (by glob).
    pub fn clearance(&self, identity: &Identity, provider: &str, model: Option<&str>) -> Level {
        self.groups_of(identity)
            .iter()
            .flat_map(|(_, g)| g.clearance.iter())
            .filter(|(dest, glob, _)| dest == provider || model.is_some_and(|m| glob.matches(m)))
            .map(|(_, _, level)| *level)
            .max()
            .unwrap_or(Level::Public)
    }

    /// The rules in force for this caller, destination and direction.
    pub fn active_rules(
        &self,
        identity: &Identity,
        provider: &str,
        model: Option<&str>,
        direction: Direction,
    ) -> ActiveRules {
        let clearance = self.clearance(identity, provider, model);
        let by_rule = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let in_direction = matches!(
                    (r.applies_to, direction),
                    (Where::Both, _)
                        | (Where::Request, Direction::Request)
                        | (Where::Response, Direction::Response)
                );
                let for_caller =
                    r.groups.is_empty() || r.groups.iter().any(|g| identity.groups.contains(g));
                let for_model = r.models.is_empty()
                    || model.is_some_and(|m| r.models.iter().any(|g| g.matches(m)));
                // Cleared data passes; log_only rules record regardless.
                let cleared = r.level <= clearance && r.action != Action::LogOnly;
                if !(in_direction && for_caller && for_model) || cleared {
                    return None;
                }
                let action = match (self.over_clearance, r.action) {
                    (_, Action::LogOnly) | (OverClearance::RuleAction, _) => r.action,
                    (OverClearance::Block, _) => Action::Block,
                    (OverClearance::RequireApproval, _) => Action::RequireApproval,
                };
                Some(ActiveRule {
                    rule: i,
                    action,
                    observe: r.observe || self.mode == Mode::Observe,
                })
            })
            .collect();
        ActiveRules { by_rule }
    }

    /// What the active rules find in `text`: the edits to make (observe-mode
    /// and non-rewriting actions make none) and every hit, for the verdict
    /// and the audit record. Every active rule sees every value (a `block`
    /// rule is not shadowed by a `mask` rule on the same span); which action
    /// prevails is decided by [`Action::precedence`], not here. Where
    /// rewriting rules overlap, one edit covers them all (no part of either
    /// value is left), with the action of the earliest span, then of the
    /// rule listed first in the policy.
    pub fn scan(&self, active: &ActiveRules, text: &str) -> (Vec<Edit>, Vec<Hit>) {
        let mut hits = Vec::new();
        if active.is_empty() {
            return (Vec::new(), hits);
        }
        let mut rewrites: Vec<(usize, usize, usize, Action, String)> = Vec::new();
        for finding in self.detectors.find_all(text) {
            let Some(a) = active.get(finding.id) else {
                continue;
            };
            hits.push(Hit {
                rule: a.rule,
                action: a.action,
                observe: a.observe,
                start: finding.start,
                end: finding.end,
            });
            if a.action.rewrites() && !a.observe {
                rewrites.push((finding.start, a.rule, finding.end, a.action, finding.label));
            }
        }
        rewrites.sort_by_key(|(start, rule, ..)| (*start, *rule));
        let mut edits: Vec<Edit> = Vec::with_capacity(rewrites.len());
        for (start, _, end, action, label) in rewrites {
            match edits.last_mut() {
                Some(last) if start < last.end => last.end = last.end.max(end),
                _ => edits.push(Edit {
                    start,
                    end,
                    action,
                    label,
                }),
            }
        }
        (edits, hits)
    }

    /// Whether `identity` may call `model` (if the request names one) on
    /// `provider`. Grants are per group: one group must allow both.
    pub fn authorize(
        &self,
        identity: &Identity,
        provider: &str,
        model: Option<&str>,
    ) -> Result<(), Denial> {
        let matched = self.groups_of(identity);
        if matched.is_empty() {
            return Err(Denial::NoGroup {
                subject: identity.subject.clone(),
            });
        }
        let names = || {
            matched
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let with_provider: Vec<&Group> = matched
            .iter()
            .filter(|(_, g)| g.providers.iter().any(|p| p.matches(provider)))
            .map(|(_, g)| *g)
            .collect();
        if with_provider.is_empty() {
            return Err(Denial::Provider {
                groups: names(),
                provider: provider.to_owned(),
            });
        }
        match model {
            None => Ok(()),
            Some(m)
                if with_provider
                    .iter()
                    .any(|g| g.models.iter().any(|p| p.matches(m))) =>
            {
                Ok(())
            }
            Some(m) => Err(Denial::Model {
                groups: names(),
                provider: provider.to_owned(),
                model: m.to_owned(),
            }),
        }
    }

    /// Whether one of the caller's groups that may use `provider` may reach
    /// this endpoint of it; one that takes a model must name it.
    pub fn authorize_endpoint(
        &self,
        identity: &Identity,
        provider: &str,
        endpoint: Endpoint,
        model: Option<&str>,
    ) -> Result<(), Denial> {
        let matched = self.groups_of(identity);
        let allowed = matched.iter().any(|(_, g)| {
            g.providers.iter().any(|p| p.matches(provider))
                && ((g.inference && endpoint.is_inference())
                    || g.endpoints.iter().any(|e| e.matches(endpoint.name)))
        });
        if !allowed {
            return Err(Denial::Endpoint {
                groups: matched
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
                provider: provider.to_owned(),
                endpoint: endpoint.name,
            });
        }
        if endpoint.takes_model && model.is_none() {
            return Err(Denial::ModelRequired {
                endpoint: endpoint.name,
            });
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;

    const POLICY: &str = r#"
version: 1
groups:
  engineering:
    models: ["gpt-4o*", "claude-*"]
  finance:
    providers: [openai]
    models: ["gpt-4o-mini"]
  contractors:
    providers: [anthropic]
    models: ["claude-haiku-*"]
"#;

    fn who(groups: &[&str]) -> Identity {
        Identity {
            issuer: "i".into(),
            subject: "alice".into(),
            token_subject: Some("alice".into()),
            email: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires_at: 0,
        }
    }

    #[test]
    fn groups_grant_providers_and_models() {
        let p = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        assert!(p
            .authorize(&who(&["engineering"]), "openai", Some("gpt-4o-mini"))
            .is_ok());
        assert!(p
            .authorize(
                &who(&["engineering"]),
                "anthropic",
                Some("claude-sonnet-4-6")
            )
            .is_ok());
        assert!(p
            .authorize(&who(&["finance"]), "openai", Some("gpt-4o-mini"))
            .is_ok());
        let d = p
            .authorize(&who(&["finance"]), "openai", Some("gpt-4o"))
            .unwrap_err();
        assert_eq!(d.code(), Reason::ModelDenied);
        assert!(d.to_string().contains("gpt-4o") && d.to_string().contains("finance"));
        let d = p
            .authorize(&who(&["finance"]), "anthropic", None)
            .unwrap_err();
        assert_eq!(d.code(), Reason::ProviderDenied);
        assert!(p.authorize(&who(&["finance"]), "openai", None).is_ok());
    }

    #[test]
    fn one_group_must_grant_both_provider_and_model() {
        let p = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        // finance grants openai, contractors grants claude-haiku on anthropic only.
        let d = p.authorize(
            &who(&["finance", "contractors"]),
            "openai",
            Some("claude-haiku-4-5"),
        );
        assert!(d.is_err());
        assert!(p
            .authorize(
                &who(&["finance", "contractors"]),
                "anthropic",
                Some("claude-haiku-4-5")
            )
            .is_ok());
    }

    #[test]
    fn callers_in_no_group_are_denied_unless_a_default_is_named() {
        let p = Policy::from_bytes(POLICY.as_bytes()).unwrap();
        let d = p
            .authorize(&who(&["sales"]), "openai", Some("gpt-4o-mini"))
            .unwrap_err();
        assert_eq!(d.code(), Reason::NoGroup);
        let with_default = format!("{POLICY}defaults: {{group: finance}}\n");
        let p = Policy::from_bytes(with_default.as_bytes()).unwrap();
        assert!(p
            .authorize(&who(&[]), "openai", Some("gpt-4o-mini"))
            .is_ok());
        assert!(p.authorize(&who(&[]), "openai", Some("gpt-4o")).is_err());
    }

    const RULES: &str = r#"
version: 1
groups:
  engineering:
    models: ["*"]
    clearance: {anthropic: internal, "local/*": confidential}
  contractors:
    models: ["*"]
rules:
  - {name: email, detect: email, action: tokenize, level: internal}
  - {name: card, detect: payment_card, action: mask, level: confidential, where: request}
  - {name: keys, detect: [aws_access_key_id, github_token], action: block}
  - {name: customer, regex: 'CUST-(?P<id>[0-9]{8})', group: id, action: hash, level: confidential}
  - {name: dump, keywords: ["production database dump"], action: require_approval, groups: [contractors]}
  - {name: audit-only, keywords: [merger], action: log_only, level: public}
approval: {approvers: [security]}
"#;

    fn rules_of(
        p: &Policy,
        who: &Identity,
        provider: &str,
        model: Option<&str>,
        d: Direction,
    ) -> Vec<(String, Action)> {
        let active = p.active_rules(who, provider, model, d);
        (0..p.rules.len())
            .filter_map(|i| active.get(i).map(|a| (p.rules[i].name.clone(), a.action)))
            .collect()
    }

    #[test]
    fn clearance_decides_which_rules_act() {
        let p = Policy::from_bytes(RULES.as_bytes()).unwrap();
        let eng = who(&["engineering"]);
        // openai: no clearance listed -> public: every rule above public acts.
        let names = |v: Vec<(String, Action)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(
            names(rules_of(
                &p,
                &eng,
                "openai",
                Some("gpt-4o"),
                Direction::Request
            )),
            vec!["email", "card", "keys", "customer", "audit-only"]
        );
        // anthropic: cleared for internal -> email passes.
        assert_eq!(
            names(rules_of(
                &p,
                &eng,
                "anthropic",
                Some("claude-x"),
                Direction::Request
            )),
            vec!["card", "keys", "customer", "audit-only"]
        );
        // a local model: cleared for confidential -> only restricted rules (and log_only) act.
        assert_eq!(
            names(rules_of(
                &p,
                &eng,
                "local",
                Some("local/llama"),
                Direction::Request
            )),
            vec!["keys", "audit-only"]
        );
        // direction and group scope.
        assert!(
            !names(rules_of(&p, &eng, "openai", None, Direction::Response))
                .contains(&"card".to_string())
        );
        assert!(names(rules_of(
            &p,
            &who(&["contractors"]),
            "openai",
            None,
            Direction::Request
        ))
        .contains(&"dump".to_string()));
        assert!(
            !names(rules_of(&p, &eng, "openai", None, Direction::Request))
                .contains(&"dump".to_string())
        );
    }

    #[test]
    fn over_clearance_and_observe_modes() {
        let strict = format!("{RULES}over_clearance: block\n");
        let p = Policy::from_bytes(strict.as_bytes()).unwrap();
        let acts = rules_of(
            &p,
            &who(&["engineering"]),
            "openai",
            None,
            Direction::Request,
        );
        assert!(
            acts.iter()
                .all(|(n, a)| *a == Action::Block || n == "audit-only"),
            "{acts:?}"
        );
        let observe = RULES.replace("version: 1", "version: 1\nmode: observe");
        let p = Policy::from_bytes(observe.as_bytes()).unwrap();
        let active = p.active_rules(&who(&["engineering"]), "openai", None, Direction::Request);
        let (edits, hits) = p.scan(&active, "mail bob@example.com now");
        assert!(edits.is_empty(), "observe mode must not edit");
        assert_eq!(hits.len(), 1);
        assert!(hits[0].observe && hits[0].action == Action::Tokenize);
    }

    #[test]
    fn scan_turns_findings_into_edits() {
        let p = Policy::from_bytes(RULES.as_bytes()).unwrap();
        let active = p.active_rules(
            &who(&["engineering"]),
            "openai",
            Some("gpt-4o"),
            Direction::Request,
        );
        let text = "bob@example.com paid with 4111 1111 1111 1111 for CUST-12345678 in the merger";
        let (edits, hits) = p.scan(&active, text);
        let actions: Vec<Action> = edits.iter().map(|e| e.action).collect();
        assert_eq!(actions, vec![Action::Tokenize, Action::Mask, Action::Hash]);
        // The named group picks the sensitive part only.
        let hashed = edits.iter().find(|e| e.action == Action::Hash).unwrap();
        assert_eq!(&text[hashed.start..hashed.end], "12345678");
        assert!(hits
            .iter()
            .any(|h| h.action == Action::LogOnly && p.rules[h.rule].name == "audit-only"));
    }

    #[test]
    fn invalid_policies_are_refused_with_reasons() {
        let err = |doc: &str| Policy::from_bytes(doc.as_bytes()).unwrap_err().to_string();
        assert!(err("version: 2\n").contains("version 2"));
        assert!(err("version: 1\ndefaults: {group: ghosts}\n").contains("ghosts"));
        assert!(err("version: 1\ngroups: {a: {modles: [x]}}\n").contains("modles"));
        assert!(err("version: 1\ngroups: {a: {models: ['']}}\n").contains("empty"));
        assert!(err("groups: {}\n").contains("version"));
        assert!(
            err("version: 1\nrules: [{name: a, detect: emale, action: mask}]\n").contains("emale")
        );
        assert!(err("version: 1\nrules: [{name: a, action: mask}]\n").contains("detect"));
        assert!(
            err("version: 1\nrules: [{name: a, regex: '(', action: mask}]\n").contains("rules")
        );
        assert!(
            err("version: 1\nrules: [{name: a, detect: email, action: shred}]\n").contains("shred")
        );
        assert!(err("version: 1\nrules: [{name: a, detect: email, action: mask}, {name: a, detect: email, action: mask}]\n").contains("unique"));
    }

    #[test]
    fn check_document_lists_every_problem_with_a_path_or_a_line() {
        let doc = r#"
version: 1
groups:
  eng: {models: ["", "gpt-*"]}
defaults: {group: nobody}
rules:
  - {name: a, detect: emial, action: mask}
  - {name: a, regex: '(unclosed', action: mask}
  - {name: c, regex: 'x(?P<v>y)', group: w, action: hash}
  - {name: d, keywords: [dump], action: require_approval, approval: {timeout_seconds: 0}}
"#;
        let problems = check_document(doc.as_bytes()).unwrap_err();
        let paths: Vec<&str> = problems.iter().filter_map(|p| p.path.as_deref()).collect();
        for expected in [
            "groups.eng.models",
            "defaults.group",
            "rules[0].detect",
            "rules[1].name",
            "rules[1].regex",
            "rules[2].regex",
            "rules[3].approval.timeout_seconds",
            "rules[3].approval.approvers",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        let typo = check_document(
            b"version: 1
rules:
  - {name: a, detect: email, acton: mask}
",
        )
        .unwrap_err();
        assert_eq!(typo.len(), 1);
        assert_eq!(typo[0].line, Some(3), "{typo:?}");
        assert!(typo[0].message.contains("acton"), "{typo:?}");
    }

    #[test]
    fn approvals_take_the_policy_defaults_field_by_field() {
        let doc = r#"
version: 1
approval: {approvers: [security], mode: hold, timeout_seconds: 30}
rules:
  - {name: dump, keywords: [dump], action: require_approval, approval: {mode: ticket}}
  - {name: mail, detect: email, action: mask}
"#;
        let p = check_document(doc.as_bytes()).unwrap();
        assert_eq!(
            p.rules[0].approval,
            Approval {
                approvers: vec!["security".into()],
                mode: ApprovalMode::Ticket,
                timeout_seconds: 30,
                ttl_seconds: 3600
            }
        );
        assert_eq!(p.record, Record::Metadata);
    }
}
