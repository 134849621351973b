//! Deciding on one incident: evaluate it, then record the evaluation in the audit ring.
//!
//! Both the HTTP API and (later) the MQTT intake come through here, so every accepted incident is
//! evaluated and audited the same way.

use std::sync::Arc;

use mesh_proto::{AuditRecord, AuditResult};

use crate::audit::AuditLog;
use crate::clock::now_us;
use crate::engine::{Engine, Evaluation, Incident};

/// Evaluates incidents and audits the evaluations.
pub struct Decider {
    engine: Arc<Engine>,
    audit: AuditLog,
    node_id: String,
}

/// An incident and what every active policy said about it.
pub struct Decision {
    pub incident: Incident,
    pub evaluation: Evaluation,
}

impl Decider {
    pub fn new(engine: Arc<Engine>, audit: AuditLog, node_id: String) -> Decider {
        Decider {
            engine,
            audit,
            node_id,
        }
    }

    /// Evaluates `incident` (whose original JSON is `input_json`) and, unless `dry_run`, queues the
    /// evaluation for the audit ring.
    pub async fn decide(&self, incident: Incident, input_json: String, dry_run: bool) -> Decision {
        let evaluation = self.engine.evaluate(&incident);
        if !dry_run {
            let record = self.audit_record(&incident, input_json, &evaluation);
            self.audit.append(record).await;
        }
        Decision {
            incident,
            evaluation,
        }
    }

    fn audit_record(
        &self,
        incident: &Incident,
        input_json: String,
        evaluation: &Evaluation,
    ) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at_us: now_us(),
            node: self.node_id.clone(),
            event_id: incident.id.clone(),
            input_json,
            policy_revision: evaluation.set.revision(),
            policies_evaluated: evaluation.verdicts.len() as u32,
            results: evaluation
                .iter()
                .filter(|(_, verdict)| {
                    verdict.outcome.matched
                        || verdict.outcome.any_missing()
                        || verdict.error.is_some()
                })
                .map(|(policy, verdict)| AuditResult {
                    policy_id: policy.id,
                    policy_version: policy.version,
                    policy_name: policy.name.to_string(),
                    matched: verdict.outcome.matched,
                    execution_time_ns: verdict.elapsed_ns,
                    missing_fields: policy
                        .matcher
                        .missing_fields(verdict.outcome)
                        .map(str::to_owned)
                        .collect(),
                    error: verdict.error.as_ref().map(ToString::to_string),
                })
                .collect(),
            execution_time_ns: evaluation.elapsed_ns,
        }
    }
}
