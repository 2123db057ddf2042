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
//! Layout: [`document`] (the document as written, serde), `compile`
//! ([`check_document`], [`Policy::check`]: every problem listed), `evaluate`
//! (authorization, clearance, the rules in force, scanning).
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

mod compile;
mod document;
mod evaluate;
mod tools;

#[cfg(feature = "schema")]
pub use compile::json_schema;
#[cfg(feature = "yaml")]
pub use compile::check_document;
pub use compile::Problem;
pub use evaluate::judged_groups;
pub use document::*;
pub use tools::{CallVerdict, ToolAccess};

use std::collections::BTreeMap;

use wildmatch::WildMatch;

use crate::auth::machine_keys::MachineKeys;

use crate::inspect::detect::DetectorSet;
use crate::inspect::mask::Action;
use crate::protocol::{ApprovalMode, Reason, Record};

/// How one rule's approvals work, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    pub approvers: Vec<String>,
    pub mode: ApprovalMode,
    pub timeout_seconds: u32,
    pub ttl_seconds: u32,
}

#[derive(Debug)]
struct Group {
    providers: Vec<WildMatch>,
    models: Vec<WildMatch>,
    clearance: Vec<(String, WildMatch, Level)>,
    /// `inference` among the endpoints, and the other entries as globs.
    inference: bool,
    endpoints: Vec<WildMatch>,
    tools_allowed: Vec<WildMatch>,
    tools_denied: Vec<WildMatch>,
    /// `tools.allow` has `*` and `tools.deny` is empty: every tool.
    every_tool: bool,
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
    /// A tool rule's tools (see [`RuleDoc::tools`]); `None` for a text rule.
    tools: Option<Vec<WildMatch>>,
    /// The path into a call's arguments its matchers read.
    argument: Vec<String>,
    /// A tool rule without matchers: every call of its tools.
    every_call: bool,
}

impl Rule {
    /// Whether this rule judges tool calls rather than text.
    pub fn is_tool_rule(&self) -> bool {
        self.tools.is_some()
    }

    /// Whether the rule applies to this caller and model (its `groups` and
    /// `models`; empty means all).
    pub fn in_scope(&self, identity: &crate::auth::Identity, model: Option<&str>) -> bool {
        let for_caller =
            self.groups.is_empty() || self.groups.iter().any(|g| identity.groups.contains(g));
        let for_model = self.models.is_empty()
            || model.is_some_and(|m| self.models.iter().any(|g| g.matches(m)));
        for_caller && for_model
    }
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
    /// The live machine keys served with it (none in a policy from the
    /// Envoy configuration: keys exist only where a control plane issues them).
    pub machine_keys: MachineKeys,
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
    #[error("the machine key '{key}' may not be used for model '{model}' (it is limited to some models)")]
    MachineKeyScope { key: String, model: String },
}

impl Denial {
    pub fn code(&self) -> Reason {
        match self {
            Denial::NoGroup { .. } => Reason::NoGroup,
            Denial::Provider { .. } => Reason::ProviderDenied,
            Denial::Model { .. } => Reason::ModelDenied,
            Denial::Endpoint { .. } => Reason::EndpointDenied,
            Denial::ModelRequired { .. } => Reason::ModelRequired,
            Denial::MachineKeyScope { .. } => Reason::MachineKeyScope,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::testing::test;

    /// The policies people copy from `examples/policies/` compile as they
    /// are (files: native only, a wasm test VM has no file system).
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn every_example_policy_compiles() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies");
        let mut compiled = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read(&path).unwrap();
                if let Err(e) = Policy::from_bytes(&text) {
                    panic!("{}: {e}", path.display());
                }
                compiled += 1;
            }
        }
        assert!(compiled >= 4, "{compiled} policies in {}", dir.display());
    }

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
