//! Matched rules into actions: what becomes of each one (sent, deferred to the mesh's first-ranked
//! node, suppressed) and the outbox message of each one this node sends.

use std::collections::HashMap;

use mesh_proto::{ActionMessage, ActionOutcome, IncidentView};

use agent_base::clock::{now_us, rfc3339};
use agent_engine::{CompiledPolicy, Evaluation, Incident, Scope};

use super::{ActionSink, Decider, TooLarge, action_id};
use crate::mesh_actions::Disposition;
use crate::outbox::{Lane, OutboxItem};

impl Decider {
    /// One action message per matched rule whose action this node sends, and what became of
    /// each matched rule's action (by policy id). Without an upstream, node-scoped rules have no
    /// action, and mesh-scoped ones still claim theirs (a peer with an upstream sends it).
    pub(super) fn actions(
        &self,
        incident: &Incident,
        evaluation: &Evaluation,
        now_ms: u64,
        tentative: &mut crate::mesh_actions::Tentative<'_>,
    ) -> Result<(Vec<OutboxItem>, HashMap<u64, ActionOutcome>), TooLarge> {
        let mut matched = evaluation
            .matched()
            .filter(|policy| self.upstream.is_some() || policy.scope == Scope::Mesh)
            .peekable();
        if matched.peek().is_none() {
            return Ok((Vec::new(), HashMap::new()));
        }
        let decided_at = rfc3339(now_us());
        let view = IncidentView {
            event_id: incident.id.clone(),
            event_type: incident.kind.clone(),
            severity: incident.severity,
            context: incident.context.clone(),
            timestamp: incident.timestamp.clone(),
        };
        let peers = self.facts.peers();
        let mut items = Vec::new();
        let mut outcomes = HashMap::new();
        for policy in matched {
            let node_action_id = action_id(&self.node_id, &incident.id, policy.id, policy.version);
            let disposition = if policy.scope == Scope::Mesh && !peers.settled {
                Disposition::Suppressed {
                    action_id: crate::mesh_actions::mesh_action_id(
                        policy.id,
                        &incident.kind,
                        now_ms / self.config.window_ms().max(1),
                    ),
                    reason: "this node has not settled in the mesh yet (it sees too few members)"
                        .into(),
                }
            } else {
                self.mesh_actions.on_match(
                    policy,
                    incident,
                    node_action_id,
                    now_ms,
                    &peers,
                    tentative,
                )
            };
            if let (Disposition::Send { action_id, mesh }, Some(sink)) =
                (&disposition, &self.upstream)
            {
                let item = self.message(
                    sink,
                    policy,
                    action_id.clone(),
                    view.clone(),
                    mesh.clone(),
                    decided_at.clone(),
                );
                if item.payload.len() > sink.max_bytes {
                    return Err(TooLarge {
                        policy: policy.name.to_string(),
                        size: item.payload.len(),
                        limit: sink.max_bytes,
                    });
                }
                items.push(item);
            }
            outcomes.insert(policy.id, disposition.outcome());
        }
        Ok((items, outcomes))
    }

    /// The outbox item of one action.
    pub(super) fn message(
        &self,
        sink: &ActionSink,
        policy: &CompiledPolicy,
        action_id: String,
        incident: IncidentView,
        mesh: Option<mesh_proto::MeshActionInfo>,
        decided_at: String,
    ) -> OutboxItem {
        let message = ActionMessage {
            action_id: action_id.clone(),
            node_id: self.node_id.clone(),
            policy_id: policy.id,
            policy_name: policy.name.to_string(),
            policy_version: policy.version,
            action: policy.action.to_string(),
            modifiers: serde_json::from_str(policy.modifiers.get())
                .unwrap_or(serde_json::Value::Null),
            reversibility_sec: policy.reversibility_sec,
            incident,
            decided_at,
            mesh,
        };
        OutboxItem {
            id: action_id,
            topic: sink.topic.clone(),
            // Serializing derived types into a String cannot fail.
            payload: serde_json::to_string(&message).unwrap_or_default(),
            lane: Lane::Action,
        }
    }
}
