//! What an agent sends upstream over MQTT (JSON on the wire), and how it keeps a message in its
//! outbox until the broker has acknowledged it (a record: format byte + postcard).
//!
//! JSON payloads carry their open-ended parts (`modifiers`, the incident's `context`) as JSON text
//! inside [`OutboxEntry::payload`], so the stored shape never depends on what monitors send.

use serde::{Deserialize, Serialize};

use crate::Record;

/// One matched rule, as the P0.3 recovery planner receives it. `action_id` is the same on every
/// resend, so a consumer de-duplicates by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionMessage {
    pub action_id: String,
    pub node_id: String,
    pub policy_id: u64,
    pub policy_name: String,
    pub policy_version: u64,
    pub action: String,
    pub modifiers: serde_json::Value,
    pub reversibility_sec: u64,
    pub incident: IncidentView,
    /// RFC 3339, UTC.
    pub decided_at: String,
    /// Set for the action of a mesh-scoped rule: one node acts for the whole mesh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshActionInfo>,
}

/// How a mesh-scoped action came to be sent by this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshActionInfo {
    /// What the rule acts on (the incident type).
    pub incident_key: String,
    /// The rule's window the action belongs to (Unix milliseconds of its start).
    pub window_start_ms: u64,
    /// The node whose match led to the action (this node, or a peer that asked for it).
    pub claimed_by: String,
    /// True when this node took the action over from the node ranked before it, which failed:
    /// the action id is the same, so the consumer sees one action.
    pub takeover: bool,
}

/// The incident an action was decided on (its id is the monitor's, or the one assigned on arrival).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentView {
    pub event_id: String,
    pub event_type: String,
    pub severity: f64,
    pub context: serde_json::Map<String, serde_json::Value>,
    pub timestamp: Option<String>,
}

/// One window of a node's evaluations, for the central collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditSummary {
    /// Unique per summary (`<node_id>:<window_start_us>`), the same on every resend.
    pub summary_id: String,
    pub node_id: String,
    /// RFC 3339, UTC; the window is `[window_start, window_end)`.
    pub window_start: String,
    pub window_end: String,
    pub evaluated: u64,
    pub matched: u64,
    pub errors: u64,
    /// Intake payloads that were not a valid event.
    pub rejected: u64,
    pub policies: Vec<PolicySummary>,
    /// Time to evaluate one event against the whole set, in microseconds (0 for an empty window).
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub policy_revision: u64,
    /// Sequence number of the newest committed audit entry when the window closed.
    pub audit_head: u64,
}

/// One policy's counts within an [`AuditSummary`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySummary {
    pub policy_id: u64,
    pub policy_name: String,
    pub evaluated: u64,
    pub matched: u64,
    pub errors: u64,
}

/// A message waiting in the outbox for the broker's acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The action id or summary id (for logs; the payload carries it too).
    pub id: String,
    pub topic: String,
    /// The JSON payload, exactly as it is published (and republished).
    pub payload: String,
    pub enqueued_at_us: i64,
}

impl Record for OutboxEntry {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "outbox";
}
