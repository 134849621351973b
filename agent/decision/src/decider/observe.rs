//! What the decider reports of its decisions beside the audit ring: what became of matched
//! rules' actions (`decision_actions_total`) and, with `[decision_logs]`, each decision in OPA's
//! decision-log shape.

use std::collections::HashSet;

use mesh_proto::{ActionOutcome, AuditRecord};

use agent_engine::{Evaluation, Incident, PolicySet, Scope};

use super::Decider;

/// What `records` say became of matched rules' actions, each with whether its rule is
/// mesh-scoped in `set` (the set the decisions were made with; looked up once per call).
pub(super) fn action_outcomes(
    records: &[AuditRecord],
    set: &PolicySet,
) -> Vec<(bool, ActionOutcome)> {
    let outcomes: Vec<(u64, &ActionOutcome)> = records
        .iter()
        .flat_map(|record| &record.results)
        .filter_map(|result| {
            result
                .action
                .as_ref()
                .map(|outcome| (result.policy_id, outcome))
        })
        .collect();
    if outcomes.is_empty() {
        return Vec::new();
    }
    let mesh_rules: HashSet<u64> = set
        .policies()
        .iter()
        .filter(|p| p.scope == Scope::Mesh)
        .map(|p| p.id)
        .collect();
    outcomes
        .into_iter()
        .map(|(id, outcome)| (mesh_rules.contains(&id), outcome.clone()))
        .collect()
}

impl Decider {
    /// The decision log entry of an incident decision: the matched rules are the result.
    pub(super) fn log_decision(
        &self,
        incident: &Incident,
        input_json: &str,
        evaluation: &Evaluation,
    ) {
        let Some(log) = &self.decision_log else {
            return;
        };
        let matched: Vec<serde_json::Value> = evaluation
            .matched()
            .map(|policy| {
                serde_json::json!({
                    "policy_id": policy.id,
                    "policy_name": &*policy.name,
                    "policy_version": policy.version,
                    "action": &*policy.action,
                })
            })
            .collect();
        log.log(crate::decision_log::Entry {
            decision_id: incident.id.clone(),
            path: "mesh_agent/incidents".into(),
            input: serde_json::from_str(input_json).unwrap_or(serde_json::Value::Null),
            result: serde_json::json!({
                "matched": matched,
                "policies_evaluated": evaluation.verdicts.len(),
            }),
            revision: evaluation.set.revision(),
            bundles: Default::default(),
            eval_ns: evaluation.elapsed_ns,
        });
    }
}
