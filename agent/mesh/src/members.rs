//! The membership view: every node this one knows, with its state as this node sees it.
//!
//! chitchat decides live or dead (phi-accrual failure detector). Between the two, a live node
//! whose heartbeat has not moved for `suspect_after` is shown as `suspect`: the detector has not
//! given up on it yet, but an operator should look. chitchat does not say when a heartbeat last
//! moved, so [`Heartbeats`] notes it each time it looks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chitchat::{Chitchat, ChitchatId};
use serde::Serialize;

use super::sync::PeerRevision;

/// chitchat keys this node publishes about itself.
pub const KEY_REVISION: &str = "rev";
pub const KEY_VERSION: &str = "agent_version";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub node_id: String,
    pub gossip_addr: String,
    pub state: MemberState,
    /// Milliseconds since its heartbeat last moved, as seen here (0 for this node).
    pub heartbeat_age_ms: u64,
    /// Its policy revision: log head and digest of its set.
    pub policy_revision: Option<RevisionView>,
    pub agent_version: Option<String>,
    /// Increases each time the node restarts.
    pub generation: u64,
    #[serde(rename = "self")]
    pub is_self: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevisionView {
    pub head: u64,
    pub digest: String,
}

impl From<PeerRevision> for RevisionView {
    fn from(r: PeerRevision) -> RevisionView {
        RevisionView {
            head: r.head,
            digest: r.digest,
        }
    }
}

/// When each node's heartbeat last moved.
#[derive(Default)]
pub struct Heartbeats {
    seen: Mutex<HashMap<ChitchatId, (u64, Instant)>>,
}

impl Heartbeats {
    /// Notes the heartbeats in `chitchat` now; returns each node's heartbeat age.
    pub fn observe(&self, chitchat: &Chitchat) -> HashMap<ChitchatId, Duration> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut ages = HashMap::new();
        for (id, state) in chitchat.node_states() {
            let beat = u64::from(state.heartbeat());
            let entry = seen.entry(id.clone()).or_insert((beat, now));
            if entry.0 != beat {
                *entry = (beat, now);
            }
            ages.insert(id.clone(), now.duration_since(entry.1));
        }
        seen.retain(|id, _| chitchat.node_states().contains_key(id));
        ages
    }
}

/// Every node `chitchat` knows, newest generation of each node id only, sorted by node id.
pub fn members(
    chitchat: &Chitchat,
    heartbeats: &Heartbeats,
    suspect_after: Duration,
) -> Vec<Member> {
    let ages = heartbeats.observe(chitchat);
    let me = chitchat.self_chitchat_id().clone();
    let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut newest: HashMap<&str, &ChitchatId> = HashMap::new();
    for id in chitchat.node_states().keys() {
        let slot = newest.entry(&id.node_id).or_insert(id);
        if id.generation_id > slot.generation_id {
            *slot = id;
        }
    }
    let mut out: Vec<Member> = newest
        .into_values()
        .map(|id| {
            let state = chitchat.node_state(id);
            let is_self = *id == me;
            let age = if is_self {
                Duration::ZERO
            } else {
                ages.get(id).copied().unwrap_or_default()
            };
            let member_state = if is_self {
                MemberState::Alive
            } else if !live.contains(id) {
                MemberState::Dead
            } else if age > suspect_after {
                MemberState::Suspect
            } else {
                MemberState::Alive
            };
            Member {
                node_id: id.node_id.to_string(),
                gossip_addr: id.gossip_advertise_addr.to_string(),
                state: member_state,
                heartbeat_age_ms: age.as_millis() as u64,
                policy_revision: state
                    .and_then(|s| s.get(KEY_REVISION))
                    .and_then(PeerRevision::parse)
                    .map(RevisionView::from),
                agent_version: state.and_then(|s| s.get(KEY_VERSION)).map(str::to_owned),
                generation: id.generation_id,
                is_self,
            }
        })
        .collect();
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    out
}
