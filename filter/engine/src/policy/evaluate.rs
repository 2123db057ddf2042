//! A compiled policy at work on one request: which groups the caller is in,
//! what they may use, their clearance, the rules in force, and the scan.

use super::*;
use crate::auth::Identity;
use crate::endpoint::Endpoint;
use crate::inspect::mask::Edit;

/// The policy groups a caller in `caller_groups` is judged as: those the
/// policy lists (each once), else its default group (if it lists that).
/// Generic over the group's form, so the control plane (`GET /v1/whoami`,
/// over the document) tells a person exactly what the filter applies.
pub fn judged_groups<'p, G>(
    groups: &'p BTreeMap<String, G>,
    default_group: Option<&str>,
    caller_groups: &[String],
) -> Vec<(&'p str, &'p G)> {
    let mut matched: Vec<(&str, &G)> = Vec::new();
    for (name, group) in caller_groups.iter().filter_map(|g| groups.get_key_value(g.as_str())) {
        if matched.iter().all(|(seen, _)| *seen != name.as_str()) {
            matched.push((name.as_str(), group));
        }
    }
    if matched.is_empty() {
        if let Some((name, group)) = default_group.and_then(|d| groups.get_key_value(d)) {
            matched.push((name.as_str(), group));
        }
    }
    matched
}

impl Policy {
    pub fn detectors(&self) -> &DetectorSet {
        &self.detectors
    }

    /// The groups of the policy that `identity` belongs to (or the default).
    pub(super) fn groups_of<'p>(&'p self, identity: &Identity) -> Vec<(&'p str, &'p Group)> {
        judged_groups(&self.groups, self.default_group.as_deref(), &identity.groups)
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
                // Cleared data passes; log_only rules record regardless.
                let cleared = r.level <= clearance && r.action != Action::LogOnly;
                if r.is_tool_rule() || !(in_direction && r.in_scope(identity, model)) || cleared {
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
        self.scan_after(active, text, 0)
    }

    /// [`scan`](Self::scan) of the values that begin at or after `from`,
    /// with the text before it as context (see
    /// [`DetectorSet::find_all_after`]): how a stream scans what it still
    /// holds after what it released.
    pub fn scan_after(
        &self,
        active: &ActiveRules,
        text: &str,
        from: usize,
    ) -> (Vec<Edit>, Vec<Hit>) {
        let mut hits = Vec::new();
        if active.is_empty() {
            return (Vec::new(), hits);
        }
        let mut rewrites: Vec<(usize, usize, usize, Action, String)> = Vec::new();
        for finding in self.detectors.find_all_after(text, from) {
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
        if let (Some(key), Some(m)) = (self.machine_keys.of_identity(identity), model) {
            if !key.allows_model(m) {
                return Err(Denial::MachineKeyScope {
                    key: key.id.clone(),
                    model: m.to_owned(),
                });
            }
        }
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
