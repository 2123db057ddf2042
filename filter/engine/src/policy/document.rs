//! The policy document as written (YAML or JSON): serde types, unknown
//! fields refused, defaults filled in. Nothing here is checked beyond its
//! type; [`super::compile`] does the rest.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::inspect::mask::Action;
use crate::protocol::{ApprovalMode, Record};

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
    pub(super) fn into_vec(self) -> Vec<String> {
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
    /// A gitleaks rule file (TOML), its text: each rule with a `regex` is a
    /// matcher (see `inspect::detect::gitleaks`).
    #[serde(default)]
    pub gitleaks: Option<String>,
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
    /// Makes this a tool rule: it judges the calls a model makes to these
    /// tools (name globs: `bash`, `shell`, `mcp.*`) instead of reading
    /// text, with `block`, `require_approval` or `log_only`. Without a
    /// matcher it acts on every call of these tools.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// A tool rule's matchers read this part of a call's arguments, a path
    /// of keys (`command`, `action.command`); default: all the arguments.
    #[serde(default)]
    pub argument: Option<String>,
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
    /// The tools this group's agents may be offered and may call.
    #[serde(default)]
    pub tools: ToolAccessDoc,
}

/// Tool names (globs) a group may use: the function names a client
/// offers, the built-in tools (`computer`, `bash`, `local_shell`,
/// `web_search`), `mcp.<server>` for a remote MCP server's tools. A tool
/// is usable when one of the caller's groups allows it and does not deny it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ToolAccessDoc {
    /// Default: every tool.
    #[serde(default = "every")]
    pub allow: Vec<String>,
    /// Wins over `allow` within the group.
    #[serde(default)]
    pub deny: Vec<String>,
}

impl Default for ToolAccessDoc {
    fn default() -> Self {
        Self {
            allow: every(),
            deny: Vec::new(),
        }
    }
}

fn every() -> Vec<String> {
    vec!["*".into()]
}

fn inference_only() -> Vec<String> {
    vec![crate::endpoint::INFERENCE_SET.into()]
}
