//! The policy on tools: which ones a caller's groups may use, and what the
//! tool rules say of one call (see `RuleDoc::tools`). How a call is found in
//! each API's JSON is `inspect::tools`; the two meet in `inspect::calls`.

use serde_json::Value;

use super::*;
use crate::auth::Identity;

/// Whether the caller may use a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolAccess {
    Allowed,
    /// None of the caller's groups allows it (or each that does denies it).
    Denied,
    /// Denied, but the policy only observes: recorded, let through.
    DeniedObserved,
}

/// What the tool rules found in one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallVerdict {
    /// Every hit of a tool rule, observed ones included (the span is the
    /// match in the argument text the rule read; empty for a rule on every
    /// call).
    pub hits: Vec<Hit>,
}

impl Policy {
    /// Whether one of the caller's groups allows `tool` and does not deny it.
    pub fn tool_access(&self, identity: &Identity, tool: &str) -> ToolAccess {
        let allowed = self.groups_of(identity).iter().any(|(_, g)| {
            g.tools_allowed.iter().any(|p| p.matches(tool))
                && !g.tools_denied.iter().any(|p| p.matches(tool))
        });
        match (allowed, self.mode) {
            (true, _) => ToolAccess::Allowed,
            (false, Mode::Observe) => ToolAccess::DeniedObserved,
            (false, Mode::Enforce) => ToolAccess::Denied,
        }
    }

    /// Whether the policy could refuse, hold or record one of this
    /// caller's tool calls: a tool rule in scope, or a tool their groups
    /// do not allow. Otherwise answers need not be searched for calls.
    pub fn governs_calls(&self, identity: &Identity, model: Option<&str>) -> bool {
        let every_tool = self.groups_of(identity).iter().any(|(_, g)| g.every_tool);
        !every_tool
            || self
                .rules
                .iter()
                .any(|r| r.is_tool_rule() && r.in_scope(identity, model))
    }

    /// The tool rules on one call of `tool` with these `arguments`: each
    /// rule in scope for the caller and model whose tools match reads the
    /// part of the arguments its `argument` path names and reports a hit
    /// per match (a rule without matchers, one per call).
    pub fn judge_call(
        &self,
        identity: &Identity,
        model: Option<&str>,
        tool: &str,
        arguments: &Value,
    ) -> CallVerdict {
        let mut verdict = CallVerdict::default();
        // Rules that read the same part of the arguments scan it once.
        let mut by_path: BTreeMap<&[String], ActiveRules> = BTreeMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let Some(tools) = &rule.tools else { continue };
            if !rule.in_scope(identity, model) || !tools.iter().any(|t| t.matches(tool)) {
                continue;
            }
            let active = ActiveRule {
                rule: i,
                action: rule.action,
                observe: rule.observe || self.mode == Mode::Observe,
            };
            if rule.every_call {
                verdict.hits.push(Hit {
                    rule: i,
                    action: active.action,
                    observe: active.observe,
                    start: 0,
                    end: 0,
                });
                continue;
            }
            let set = by_path
                .entry(rule.argument.as_slice())
                .or_insert_with(|| ActiveRules {
                    by_rule: vec![None; self.rules.len()],
                });
            if let Some(slot) = set.by_rule.get_mut(i) {
                *slot = Some(active);
            }
        }
        for (path, active) in by_path {
            let text = argument_text(arguments, path);
            let (_, hits) = self.scan(&active, &text);
            verdict.hits.extend(hits);
        }
        verdict.hits.sort_by_key(|h| (h.rule, h.start));
        verdict
    }
}

/// The text a tool rule's matchers read: the values at `path` in the
/// arguments (every value when the path is empty), strings as written, a
/// list of strings joined by spaces (`["rm", "-rf", "/"]` reads as the
/// command line it is), anything else as JSON; several values one per line.
/// Where the path leads nowhere (the model wrote other keys, or arguments
/// that are not JSON), the rule reads all of it: a call is never judged on
/// less than it says.
pub fn argument_text(arguments: &Value, path: &[String]) -> String {
    let mut found = Vec::new();
    collect_at(arguments, path, &mut found);
    if found.is_empty() {
        collect_at(arguments, &[], &mut found);
    }
    found.join("\n")
}

fn collect_at(value: &Value, path: &[String], out: &mut Vec<String>) {
    match (path.split_first(), value) {
        (Some((key, rest)), Value::Object(map)) => {
            if let Some(next) = map.get(key.as_str()) {
                collect_at(next, rest, out);
            }
        }
        (Some(_), Value::Array(items)) => {
            for item in items {
                collect_at(item, path, out);
            }
        }
        (Some(_), _) => {}
        (None, value) => leaves(value, out),
    }
}

/// Every value under `value`: strings as written, lists of strings as one
/// line, numbers and booleans as JSON.
fn leaves(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Null => {}
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => {
            let words: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            out.push(words.join(" "));
        }
        Value::Array(items) => items.iter().for_each(|v| leaves(v, out)),
        Value::Object(map) => map.values().for_each(|v| leaves(v, out)),
        other => out.push(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;
    use serde_json::json;

    use crate::testing::member_of_all as who;

    fn policy(yaml: &str) -> Policy {
        Policy::from_bytes(yaml.as_bytes()).unwrap()
    }

    const POLICY: &str = r#"
version: 1
groups:
  eng: {models: ["*"], tools: {allow: ["*"], deny: [computer]}}
  ops: {models: ["*"]}
  analysts: {models: ["*"], tools: {allow: ["read_*", "sql"]}}
approval: {approvers: [security]}
rules:
  - {name: email, detect: email, action: mask}
  - name: destructive
    tools: [bash, shell, local_shell]
    argument: command
    regex: '\brm\s+-[a-z]*r'
    action: block
  - name: drop-table
    tools: [sql]
    keywords: ["drop table"]
    action: require_approval
  - {name: every-sql, tools: [sql], action: log_only}
"#;

    #[test]
    fn groups_allow_and_deny_tools() {
        let p = policy(POLICY);
        assert_eq!(p.tool_access(&who(&["eng"]), "bash"), ToolAccess::Allowed);
        assert_eq!(
            p.tool_access(&who(&["eng"]), "computer"),
            ToolAccess::Denied
        );
        // Another group of the caller's that allows it and denies nothing.
        assert_eq!(
            p.tool_access(&who(&["eng", "ops"]), "computer"),
            ToolAccess::Allowed
        );
        assert_eq!(
            p.tool_access(&who(&["analysts"]), "read_file"),
            ToolAccess::Allowed
        );
        assert_eq!(
            p.tool_access(&who(&["analysts"]), "bash"),
            ToolAccess::Denied
        );
        assert_eq!(p.tool_access(&who(&["nobody"]), "bash"), ToolAccess::Denied);
        let observed = policy(&POLICY.replace("version: 1", "version: 1\nmode: observe"));
        assert_eq!(
            observed.tool_access(&who(&["analysts"]), "bash"),
            ToolAccess::DeniedObserved
        );
    }

    #[test]
    fn tool_rules_read_the_arguments_they_name() {
        let p = policy(POLICY);
        let eng = who(&["eng"]);
        let names = |v: &CallVerdict| -> Vec<&str> {
            v.hits
                .iter()
                .map(|h| p.rules[h.rule].name.as_str())
                .collect()
        };
        let v = p.judge_call(&eng, None, "bash", &json!({"command": "rm -rf /tmp/x"}));
        assert_eq!(names(&v), ["destructive"]);
        assert_eq!(v.hits[0].action, Action::Block);
        // Another key holds no command: not read.
        let v = p.judge_call(
            &eng,
            None,
            "bash",
            &json!({"command": "ls", "description": "rm -rf is bad"}),
        );
        assert!(v.hits.is_empty());
        // A list of words is the command line it spells.
        let v = p.judge_call(
            &eng,
            None,
            "local_shell",
            &json!({"type": "exec", "command": ["rm", "-r", "/"]}),
        );
        assert_eq!(names(&v), ["destructive"]);
        // No `command` at all: the rule reads everything.
        let v = p.judge_call(&eng, None, "shell", &json!({"cmd": "rm -rf /"}));
        assert_eq!(names(&v), ["destructive"]);
        // Arguments that are not JSON are read whole.
        let v = p.judge_call(&eng, None, "bash", &json!("{\"command\": \"rm -rf /"));
        assert_eq!(names(&v), ["destructive"]);
        // Other tools are not this rule's.
        assert!(p
            .judge_call(&eng, None, "python", &json!({"command": "rm -rf /"}))
            .hits
            .is_empty());
        // Text rules never judge calls.
        assert!(p
            .judge_call(&eng, None, "python", &json!({"to": "bob@example.com"}))
            .hits
            .is_empty());
        let v = p.judge_call(&eng, None, "sql", &json!({"query": "DROP   TABLE users"}));
        assert_eq!(names(&v), ["drop-table", "every-sql"]);
        let v = p.judge_call(&eng, None, "sql", &json!({"query": "select 1"}));
        assert_eq!(names(&v), ["every-sql"]);
    }

    #[test]
    fn calls_are_governed_only_where_the_policy_could_act_on_one() {
        let p = policy(
            "version: 1\ngroups: {a: {models: ['*']}, b: {models: ['*'], tools: {deny: [x]}}}",
        );
        assert!(!p.governs_calls(&who(&["a"]), None));
        assert!(p.governs_calls(&who(&["b"]), None));
        assert!(!p.governs_calls(&who(&["a", "b"]), None));
        assert!(p.governs_calls(&who(&["nobody"]), None));
        let p = policy("version: 1\ngroups: {a: {models: ['*']}}\nrules: [{name: r, tools: [x], models: ['gpt-*'], action: block}]");
        assert!(p.governs_calls(&who(&["a"]), Some("gpt-4o")));
        assert!(!p.governs_calls(&who(&["a"]), Some("claude")));
    }

    #[test]
    fn text_rules_and_tool_rules_stay_apart() {
        let p = policy(POLICY);
        let active = p.active_rules(&who(&["eng"]), "openai", None, Direction::Request);
        assert!(active.get(0).is_some());
        assert!((1..4).all(|i| active.get(i).is_none()));
    }

    #[test]
    fn tool_rules_are_checked() {
        let problems = |yaml: &str| {
            check_document(yaml.as_bytes())
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            problems("version: 1\nrules: [{name: a, tools: [bash], action: mask}]"),
            ["rules[0].action: a tool rule decides about a call: use block, require_approval or log_only, not mask"]
        );
        assert_eq!(
            problems("version: 1\nrules: [{name: a, tools: [], action: block}]"),
            ["rules[0].tools: name one or more tools (globs), none empty"]
        );
        assert_eq!(
            problems("version: 1\nrules: [{name: a, tools: [bash], argument: 'a..b', action: block}]"),
            ["rules[0].argument: \"a..b\": a path of keys separated by dots (`action.command`), none empty"]
        );
        assert_eq!(
            problems("version: 1\nrules: [{name: a, detect: email, argument: command, action: block}]"),
            ["rules[0].argument: `argument` needs `tools` (the tools whose calls the rule reads)"]
        );
        assert_eq!(
            problems("version: 1\nrules: [{name: a, tools: [bash], action: require_approval}]"),
            ["rules[0].approval.approvers: this rule may require an approval: name the approver groups here or in the policy's `approval.approvers`"]
        );
        assert_eq!(
            problems("version: 1\ngroups: {g: {tools: {allow: ['']}}}"),
            ["groups.g.tools.allow: an entry is empty"]
        );
        assert!(
            problems("version: 1\nrules: [{name: a, tools: [bash], action: block}]").is_empty()
        );
    }

    #[test]
    fn argument_text_reads_values_not_json() {
        let path = |p: &str| -> Vec<String> { p.split('.').map(str::to_owned).collect() };
        let args = json!({"action": {"command": ["git", "push", "-f"], "env": {"A": "1"}},
            "steps": [{"command": "a"}, {"command": "b"}]});
        assert_eq!(argument_text(&args, &path("action.command")), "git push -f");
        assert_eq!(argument_text(&args, &path("steps.command")), "a\nb");
        assert_eq!(argument_text(&json!({"n": 3, "s": "x\"y"}), &[]), "3\nx\"y");
    }
}
