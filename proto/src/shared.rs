//! What a node tells the mesh about its incidents in gossip (chitchat keys beside its policy
//! revision): a summary of its recent incidents, the mesh actions it asks the mesh to take, and the
//! ones it took. Each is a record (format byte + postcard) carried as base64 text, since chitchat
//! values are strings; each writer keeps its encoded value within a byte budget (the oldest claims
//! and acted entries, the rarest incident types, go first).

use serde::{Deserialize, Serialize};

use crate::Record;

/// This node's incidents within the sliding window, per type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IncidentSummary {
    /// When the summary was made (Unix ms): receivers ignore one older than its window.
    pub at_ms: u64,
    /// Length of the window the counts cover.
    pub window_sec: u32,
    /// The types with the most incidents first; the rest are cut when the summary would be larger
    /// than its byte budget (`truncated` then says so).
    pub types: Vec<TypeCount>,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeCount {
    pub kind: String,
    pub count: u32,
    pub max_severity: f32,
}

/// A mesh-scoped rule matched here: this node asks the node ranked first for the action to act.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// Derived from (rule, incident key, window): every claimant of one action gives the same id.
    pub action_id: String,
    pub policy_id: u64,
    pub policy_version: u64,
    /// What the rule acts on (the incident type).
    pub key: String,
    /// Which window of the rule the match fell in (`at_ms / window_ms`).
    pub window: u64,
    /// When the rule matched here, in Unix milliseconds.
    pub at_ms: u64,
    /// The incident that matched (its context is left out: gossip stays small).
    pub event_id: String,
    pub severity: f64,
}

/// A mesh action this node sent to the upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acted {
    pub action_id: String,
    pub policy_id: u64,
    pub key: String,
    pub window: u64,
    pub at_ms: u64,
    /// True when this node took the action over from a node that failed.
    pub takeover: bool,
}

/// The `claims` key: this node's open claims, newest last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub claims: Vec<Claim>,
}

/// The `acted` key: the mesh actions this node sent recently, newest last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActedLog {
    pub acted: Vec<Acted>,
}

impl Record for IncidentSummary {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "incident summary";
}

impl Record for Claims {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "mesh action claims";
}

impl Record for ActedLog {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "mesh actions taken";
}
