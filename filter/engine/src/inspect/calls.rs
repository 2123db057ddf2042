//! The policy applied to tools: the tools a request offers (a denied one is
//! removed) and the calls an answer makes (each judged; a refused one is
//! replaced by a sentence that says why).
//!
//! Why a denied offer is removed rather than the request refused: agents
//! (coding assistants, computer-use loops) send their whole tool set with
//! every request, so refusing would make the agent unusable for a group
//! denied one of its tools; without the offer the model cannot call it,
//! and the record names what was removed. A request whose `tool_choice`
//! *requires* a denied tool is refused instead (`warden.tool_denied`):
//! what it asks for cannot be served.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::Value;

use super::apply::Outcome;
use super::body::Shape;
use super::sse::{CallJudge, StreamedCall, Verdict};
use super::tools::{
    ambiguous_arguments, offered_tools, refuse_calls, remove_offered, tool_calls, tool_choice,
    CallAt, Choice,
};
use crate::auth::Identity;
use crate::inspect::mask::Action;
use crate::policy::{Policy, ToolAccess};

/// What happened to one tool, for the audit record and the metrics: names
/// and decisions only, never arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolEntry {
    pub tool: String,
    pub decision: ToolDecision,
    /// The rule that decided, if a rule did.
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolDecision {
    /// An offer taken out of the request.
    Removed,
    /// A call let through.
    Allowed,
    /// A call replaced by a refusal.
    Refused,
    /// A call that waits for a human's decision.
    Held,
    /// A held call let through once an approver said yes.
    Approved,
    /// What the policy would have done, in observe mode: nothing changed.
    WouldRemove,
    WouldRefuse,
}

impl ToolDecision {
    pub fn name(self) -> &'static str {
        match self {
            ToolDecision::Removed => "removed",
            ToolDecision::Allowed => "allowed",
            ToolDecision::Refused => "refused",
            ToolDecision::Held => "held",
            ToolDecision::Approved => "approved",
            ToolDecision::WouldRemove => "observe:removed",
            ToolDecision::WouldRefuse => "observe:refused",
        }
    }
}

/// `tool:decision[:rule]` entries, comma-separated, for the access log.
pub fn summary(entries: &[ToolEntry]) -> String {
    entries
        .iter()
        .map(|e| match &e.rule {
            Some(rule) => format!("{}:{}:{rule}", e.tool, e.decision.name()),
            None => format!("{}:{}", e.tool, e.decision.name()),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A request the gateway cannot serve as asked: its tool choice requires
/// a tool the caller may not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceDenied {
    pub tool: String,
}

/// The policy on the tools a request offers: denied ones are removed (in
/// observe mode only recorded). Whether the body changed, and what was
/// done; refused when the tool choice needs a removed tool (or any tool,
/// and none is left).
pub fn govern_offers(
    policy: &Policy,
    identity: &Identity,
    shape: Shape,
    doc: &mut Value,
) -> Result<(bool, Vec<ToolEntry>), ChoiceDenied> {
    let mut entries = Vec::new();
    let offered = offered_tools(shape, doc);
    if offered.is_empty() {
        return Ok((false, entries));
    }
    let choice = tool_choice(shape, doc);
    let mut denied = |name: &str| match policy.tool_access(identity, name) {
        ToolAccess::Allowed => false,
        ToolAccess::DeniedObserved => {
            entries.push(ToolEntry {
                tool: name.to_owned(),
                decision: ToolDecision::WouldRemove,
                rule: None,
            });
            false
        }
        ToolAccess::Denied => true,
    };
    let removed = remove_offered(shape, doc, &mut denied);
    // A choice may name a tool that is not offered (the provider refuses
    // that itself); one the caller may not use is refused here either way.
    match &choice {
        Choice::Only {
            names,
            required: true,
        } => {
            if let Some(tool) = names
                .iter()
                .find(|n| policy.tool_access(identity, n) == ToolAccess::Denied)
            {
                return Err(ChoiceDenied { tool: tool.clone() });
            }
        }
        Choice::Any if !removed.is_empty() && removed.len() == offered.len() => {
            return Err(ChoiceDenied {
                tool: removed.first().cloned().unwrap_or_default(),
            });
        }
        _ => {}
    }
    let changed = !removed.is_empty();
    entries.extend(removed.into_iter().map(|tool| ToolEntry {
        tool,
        decision: ToolDecision::Removed,
        rule: None,
    }));
    Ok((changed, entries))
}

/// What the policy made of an answer's calls.
#[derive(Debug, Default)]
pub struct Calls {
    /// The tool rules' hits, merged into the exchange's findings.
    pub outcome: Outcome,
    pub entries: Vec<ToolEntry>,
    /// Whether a call was replaced (the body changed).
    pub changed: bool,
    /// Calls that wait for approvals (only where the caller can hold an
    /// answer): then nothing is replaced yet, and `refused` says what to
    /// replace once they are decided.
    pub held: Vec<HeldCall>,
    pub refused: Vec<(CallAt, String)>,
}

/// A call that waits for a human's decision, as the client would get it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldCall {
    pub at: HeldAt,
    pub tool: String,
    /// The rule that asks for the approval.
    pub rule: String,
    pub arguments: Value,
    /// Its entry in [`Calls::entries`].
    pub entry: usize,
}

/// Where a held call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldAt {
    /// In a whole answer.
    Answer(CallAt),
    /// In a stream: the gate's number for it ([`super::sse::CallGate::decide`]).
    Stream(usize),
}

impl HeldCall {
    /// What an approval of this call is bound to: the tool and the
    /// arguments the agent would run, nothing else of the answer (so the
    /// same call in a later answer matches a ticket, and another does not).
    pub fn binding(&self) -> Value {
        serde_json::json!({"tool": self.tool, "arguments": self.arguments})
    }
}

/// The sentence that stands where a held call was, when it was not let
/// through (`why`: the approval's own explanation).
pub fn held_text(tool: &str, rule: &str, why: &str) -> String {
    format!("[warden] The call to tool '{tool}' was withheld by the gateway's policy (rule '{rule}'): {why}")
}

/// The name a call with ambiguous arguments is refused under (in the
/// audit record's `tools` and the sentence).
pub const AMBIGUOUS_ARGUMENTS: &str = "warden.ambiguous_arguments";

/// The sentence that stands where a refused call was.
pub fn refusal_text(tool: &str, rule: Option<&str>) -> String {
    match rule {
        Some(AMBIGUOUS_ARGUMENTS) => format!(
            "[warden] The call to tool '{tool}' was refused: its arguments give a key twice, so what would run depends on the parser."
        ),
        Some(rule) => format!(
            "[warden] The call to tool '{tool}' was refused by the gateway's policy (rule '{rule}')."
        ),
        None => format!(
            "[warden] The call to tool '{tool}' was refused: the gateway's policy does not let your groups use it."
        ),
    }
}

/// How the policy decides one call, before anything is changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDecision {
    pub entry: ToolEntry,
    pub outcome: Outcome,
}

/// The policy on one call of `tool` with `arguments`: its access, then its
/// tool rules (a block over an approval, as for text). A call that needs an
/// approval is `Held`; the caller holds it or, where it cannot, refuses it.
pub fn decide_call(
    policy: &Policy,
    identity: &Identity,
    model: Option<&str>,
    tool: &str,
    arguments: &Value,
) -> CallDecision {
    let mut outcome = Outcome::default();
    let verdict = policy.judge_call(identity, model, tool, arguments);
    for hit in &verdict.hits {
        outcome.record(policy, hit);
    }
    let entry = |decision, rule: Option<String>| ToolEntry {
        tool: tool.to_owned(),
        decision,
        rule,
    };
    let access = policy.tool_access(identity, tool);
    if ambiguous_arguments(arguments) {
        // Which call the agent would run depends on its JSON parser.
        return CallDecision {
            entry: entry(ToolDecision::Refused, Some(AMBIGUOUS_ARGUMENTS.to_owned())),
            outcome,
        };
    }
    let entry = match (access, outcome.stop()) {
        (ToolAccess::Denied, _) => entry(ToolDecision::Refused, None),
        (_, Some((rule, Action::Block))) => entry(ToolDecision::Refused, Some(rule)),
        (_, Some((rule, _))) => entry(ToolDecision::Held, Some(rule)),
        (ToolAccess::DeniedObserved, None) => entry(ToolDecision::WouldRefuse, None),
        (ToolAccess::Allowed, None) => {
            // An observed rule that would have stopped the call says so.
            let would = verdict
                .hits
                .iter()
                .filter(|h| h.observe && h.action.stops())
                .max_by_key(|h| h.action.precedence())
                .and_then(|h| policy.rules.get(h.rule))
                .map(|r| r.name.clone());
            match would {
                Some(rule) => entry(ToolDecision::WouldRefuse, Some(rule)),
                None => entry(ToolDecision::Allowed, None),
            }
        }
    };
    CallDecision { entry, outcome }
}

/// The policy on one call whose arguments the client may read in several
/// forms (a stream's fragments joined, and the copy its last event repeats):
/// each form judged, the worst decision standing. A call that needs an
/// approval is refused: a stream is not held for one (fail closed).
pub fn settle_call(
    policy: &Policy,
    identity: &Identity,
    model: Option<&str>,
    tool: &str,
    forms: &[Value],
) -> CallDecision {
    let mut decided = worst_decision(policy, identity, model, tool, forms);
    if decided.entry.decision == ToolDecision::Held {
        decided.entry.decision = ToolDecision::Refused;
    }
    decided
}

/// Each form of a call's arguments judged; the first of the most severe
/// decisions.
fn worst_decision(
    policy: &Policy,
    identity: &Identity,
    model: Option<&str>,
    tool: &str,
    forms: &[Value],
) -> CallDecision {
    let severity = |d: &CallDecision| match d.entry.decision {
        ToolDecision::Refused => 3,
        ToolDecision::Held => 2,
        ToolDecision::WouldRefuse => 1,
        _ => 0,
    };
    let mut decisions = forms
        .iter()
        .map(|arguments| decide_call(policy, identity, model, tool, arguments));
    let first = decisions
        .next()
        .unwrap_or_else(|| decide_call(policy, identity, model, tool, &Value::Null));
    decisions.fold(first, |worst, d| {
        if severity(&d) > severity(&worst) {
            d
        } else {
            worst
        }
    })
}

/// The policy on every call of a whole answer: each judged, refused ones
/// replaced ([`refuse_calls`]). With `can_hold` (the exchange can hold the
/// answer while approvers decide), calls that need an approval are kept
/// in [`Calls::held`] and nothing is replaced yet; without, they are
/// refused.
pub fn govern_calls(
    policy: &Policy,
    identity: &Identity,
    model: Option<&str>,
    shape: Shape,
    doc: &mut Value,
    can_hold: bool,
) -> Calls {
    let mut calls = Calls::default();
    for call in tool_calls(shape, doc) {
        let forms = std::slice::from_ref(&call.arguments);
        let decided = if can_hold {
            worst_decision(policy, identity, model, &call.name, forms)
        } else {
            settle_call(policy, identity, model, &call.name, forms)
        };
        match decided.entry.decision {
            ToolDecision::Refused => calls.refused.push((
                call.at,
                refusal_text(&call.name, decided.entry.rule.as_deref()),
            )),
            ToolDecision::Held => calls.held.push(HeldCall {
                at: HeldAt::Answer(call.at),
                rule: decided.entry.rule.clone().unwrap_or_default(),
                tool: call.name,
                arguments: call.arguments,
                entry: calls.entries.len(),
            }),
            _ => {}
        }
        calls.outcome.merge(decided.outcome);
        calls.entries.push(decided.entry);
    }
    if calls.held.is_empty() && !calls.refused.is_empty() {
        refuse_calls(shape, doc, &std::mem::take(&mut calls.refused));
        calls.changed = true;
    }
    calls
}

/// The sentence that stands where a call cut off by the stream's end was.
pub fn cut_off_text(tool: &str) -> String {
    format!("[warden] The call to tool '{tool}' was cut off before its end, so the gateway withheld it.")
}

/// What the policy made of a streamed answer's calls, shared between the
/// judge inside the rewriter and the exchange that records it.
#[derive(Clone, Debug, Default)]
pub struct SharedCalls(pub Rc<RefCell<Calls>>);

impl SharedCalls {
    pub fn take(&self) -> Calls {
        std::mem::take(&mut *self.0.borrow_mut())
    }
}

/// The policy as a stream's [`CallJudge`].
pub struct StreamCallJudge {
    pub policy: Rc<Policy>,
    pub identity: Identity,
    pub model: Option<String>,
    pub calls: SharedCalls,
    /// Whether a call that needs an approval may wait for one (the
    /// exchange asks the control plane; [`Calls::held`] lists them):
    /// else it is refused.
    pub can_hold: bool,
}

impl CallJudge for StreamCallJudge {
    fn judge(&mut self, call: &StreamedCall<'_>) -> Verdict {
        let mut calls = self.calls.0.borrow_mut();
        if !call.complete {
            calls.entries.push(ToolEntry {
                tool: call.tool.to_owned(),
                decision: ToolDecision::Refused,
                rule: None,
            });
            calls.changed = true;
            return Verdict::Refuse(cut_off_text(call.tool));
        }
        let (policy, model) = (&self.policy, self.model.as_deref());
        let mut decided = if self.can_hold {
            worst_decision(policy, &self.identity, model, call.tool, call.arguments)
        } else {
            settle_call(policy, &self.identity, model, call.tool, call.arguments)
        };
        if decided.entry.decision == ToolDecision::Held && call.arguments.len() > 1 {
            // Copies of the arguments that differ (the fragments and an
            // API's closing copy): no one call for an approver to see.
            decided.entry.decision = ToolDecision::Refused;
        }
        let verdict = match decided.entry.decision {
            ToolDecision::Refused => {
                calls.changed = true;
                Verdict::Refuse(refusal_text(call.tool, decided.entry.rule.as_deref()))
            }
            ToolDecision::Held => {
                let arguments = call.arguments.first().cloned().unwrap_or(Value::Null);
                let entry = calls.entries.len();
                calls.held.push(HeldCall {
                    at: HeldAt::Stream(call.id),
                    tool: call.tool.to_owned(),
                    rule: decided.entry.rule.clone().unwrap_or_default(),
                    arguments,
                    entry,
                });
                Verdict::Pending
            }
            _ => Verdict::Allow,
        };
        calls.outcome.merge(decided.outcome);
        calls.entries.push(decided.entry);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::test;
    use serde_json::json;

    use crate::testing::member_of_all as who;

    const POLICY: &str = r#"
version: 1
groups:
  eng: {models: ["*"], tools: {deny: [computer]}}
approval: {approvers: [security]}
rules:
  - {name: destructive, tools: [bash], argument: command, regex: 'rm\s+-rf', action: block}
  - {name: prod-sql, tools: [sql], keywords: [production], action: require_approval}
  - {name: every-bash, tools: [bash], action: log_only}
"#;

    fn policy(yaml: &str) -> Policy {
        Policy::from_bytes(yaml.as_bytes()).unwrap()
    }

    #[test]
    fn denied_offers_are_removed_and_a_choice_that_needs_one_refused() {
        let p = policy(POLICY);
        let eng = who(&["eng"]);
        let mut doc = json!({"tools": [{"name": "bash"}, {"name": "computer"}]});
        let (changed, entries) =
            govern_offers(&p, &eng, Shape::AnthropicMessages, &mut doc).unwrap();
        assert!(changed);
        assert_eq!(doc, json!({"tools": [{"name": "bash"}]}));
        assert_eq!(summary(&entries), "computer:removed");

        let mut forced = json!({"tools": [{"name": "computer"}],
            "tool_choice": {"type": "tool", "name": "computer"}});
        assert_eq!(
            govern_offers(&p, &eng, Shape::AnthropicMessages, &mut forced),
            Err(ChoiceDenied {
                tool: "computer".into()
            })
        );
        let mut any =
            json!({"tools": [{"type": "computer_use_preview"}], "tool_choice": "required"});
        assert!(govern_offers(&p, &eng, Shape::OpenAiResponses, &mut any).is_err());
        let mut fine = json!({"tools": [{"type": "function", "function": {"name": "bash"}}],
            "tool_choice": "required"});
        assert_eq!(
            govern_offers(&p, &eng, Shape::OpenAiChat, &mut fine),
            Ok((false, vec![]))
        );

        let observed = policy(&POLICY.replace("version: 1", "version: 1\nmode: observe"));
        let mut doc = json!({"tools": [{"name": "computer"}]});
        let (changed, entries) =
            govern_offers(&observed, &eng, Shape::AnthropicMessages, &mut doc).unwrap();
        assert!(!changed);
        assert_eq!(summary(&entries), "computer:observe:removed");
    }

    #[test]
    fn calls_are_judged_and_refused_ones_replaced() {
        let p = policy(POLICY);
        let eng = who(&["eng"]);
        let mut doc = json!({"id": "msg", "stop_reason": "tool_use", "content": [
            {"type": "text", "text": "Cleaning up."},
            {"type": "tool_use", "id": "a", "name": "bash", "input": {"command": "rm -rf /srv"}},
            {"type": "tool_use", "id": "b", "name": "bash", "input": {"command": "ls"}},
            {"type": "tool_use", "id": "c", "name": "computer", "input": {"action": "screenshot"}}]});
        let calls = govern_calls(&p, &eng, None, Shape::AnthropicMessages, &mut doc, false);
        assert!(calls.changed);
        assert_eq!(
            summary(&calls.entries),
            "bash:refused:destructive,bash:allowed,computer:refused"
        );
        assert_eq!(
            calls.outcome.summary(),
            "destructive:block:1,every-bash:log_only:2"
        );
        let text = doc.to_string();
        assert!(!text.contains("rm -rf"), "{text}");
        assert!(!text.contains("screenshot"), "{text}");
        assert_eq!(doc["content"][2]["input"], json!({"command": "ls"}));
        assert_eq!(doc["stop_reason"], "tool_use");
        assert_eq!(
            doc["content"][1]["text"],
            refusal_text("bash", Some("destructive"))
        );

        // An approval cannot be waited for here: refused, naming its rule.
        let mut sql = json!({"output": [{"type": "function_call", "name": "sql",
            "arguments": "{\"query\": \"delete from production.users\"}"}]});
        let calls = govern_calls(&p, &eng, None, Shape::OpenAiResponses, &mut sql, false);
        assert_eq!(summary(&calls.entries), "sql:refused:prod-sql");
        assert_eq!(sql["output"][0]["type"], "message");

        let mut fine = json!({"choices": [{"message": {"tool_calls": [
            {"type": "function", "function": {"name": "sql", "arguments": "{\"query\": \"select 1\"}"}}]}}]});
        let before = fine.clone();
        let calls = govern_calls(&p, &eng, None, Shape::OpenAiChat, &mut fine, false);
        assert!(!calls.changed);
        assert_eq!(fine, before);
        assert_eq!(summary(&calls.entries), "sql:allowed");
    }

    #[test]
    fn observe_mode_records_what_it_would_refuse() {
        let p = policy(&POLICY.replace("version: 1", "version: 1\nmode: observe"));
        let eng = who(&["eng"]);
        let mut doc = json!({"content": [
            {"type": "tool_use", "name": "bash", "input": {"command": "rm -rf /"}},
            {"type": "tool_use", "name": "computer", "input": {}}]});
        let before = doc.clone();
        let calls = govern_calls(&p, &eng, None, Shape::AnthropicMessages, &mut doc, false);
        assert_eq!(doc, before);
        assert_eq!(
            summary(&calls.entries),
            "bash:observe:refused:destructive,computer:observe:refused"
        );
    }

    #[test]
    fn a_call_whose_arguments_give_a_key_twice_is_refused() {
        let p = policy(POLICY);
        let eng = who(&["eng"]);
        // One parser runs `rm -rf /`, another `ls`: no judgment of it holds.
        let twice = r#"{"command": "rm -rf /", "command": "ls"}"#;
        let mut doc = json!({"choices": [{"message": {"tool_calls": [
            {"type": "function", "function": {"name": "bash", "arguments": twice}},
            {"type": "function", "function": {"name": "bash", "arguments": "{\"command\": \"ls\"}"}}]}}]});
        let calls = govern_calls(&p, &eng, None, Shape::OpenAiChat, &mut doc, true);
        assert_eq!(
            summary(&calls.entries),
            "bash:refused:warden.ambiguous_arguments,bash:allowed"
        );
        assert!(!doc.to_string().contains("rm -rf"), "{doc}");
        let text = doc["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            text.contains("gives a key twice") || text.contains("give a key twice"),
            "{text}"
        );
        // Text that is no JSON at all (a custom tool's input) is no ambiguity.
        let free = decide_call(&p, &eng, None, "notes", &Value::String("{not json".into()));
        assert_eq!(free.entry.decision, ToolDecision::Allowed);
    }
}
