//! The membership view: every node this one knows, with its state as this node sees it.
//!
//! chitchat decides live or dead (phi-accrual failure detector). Between the two, a live node
//! whose heartbeat has not moved for `suspect_after` is shown as `suspect`: the detector has not
//! given up on it yet, but an operator should look. chitchat does not say when a heartbeat last
//! moved, so [`Heartbeats`] notes it each time it looks.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use chitchat::{Chitchat, ChitchatId};
use serde::Serialize;

use super::sync::PeerRevision;

/// chitchat keys this node publishes about itself.
pub const KEY_REVISION: &str = "rev";
pub const KEY_VERSION: &str = "agent_version";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive = 0,
    Suspect = 1,
    Dead = 2,
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
    /// Notes the heartbeats in `chitchat` now (called every gossip round; allocates only for a
    /// node seen for the first time). Returns the time of the observation.
    pub fn observe(&self, chitchat: &Chitchat) -> Instant {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (id, state) in chitchat.node_states() {
            let beat = u64::from(state.heartbeat());
            match seen.get_mut(id) {
                Some(entry) if entry.0 != beat => *entry = (beat, now),
                Some(_) => {}
                None => {
                    seen.insert(id.clone(), (beat, now));
                }
            }
        }
        if seen.len() > chitchat.node_states().len() {
            seen.retain(|id, _| chitchat.node_states().contains_key(id));
        }
        now
    }

    /// How long ago node `id`'s heartbeat last moved, as of `now` (zero if never observed).
    fn age(&self, id: &ChitchatId, now: Instant) -> Duration {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map_or(Duration::ZERO, |(_, at)| now.duration_since(*at))
    }
}

/// The newest generation of each node id `chitchat` knows, in node id order. chitchat orders
/// its ids by node id, then generation, so each node's newest is the last of its run.
fn newest(chitchat: &Chitchat) -> impl Iterator<Item = &ChitchatId> {
    let mut ids = chitchat.node_states().keys().peekable();
    std::iter::from_fn(move || {
        let mut id = ids.next()?;
        while let Some(next) = ids.next_if(|next| next.node_id == id.node_id) {
            id = next;
        }
        Some(id)
    })
}

fn state_of(
    id: &ChitchatId,
    me: &ChitchatId,
    live: &HashSet<&ChitchatId>,
    age: Duration,
    suspect_after: Duration,
) -> MemberState {
    if id == me {
        MemberState::Alive
    } else if !live.contains(id) {
        MemberState::Dead
    } else if age > suspect_after {
        MemberState::Suspect
    } else {
        MemberState::Alive
    }
}

/// Members by state, and whether every member not dead reports `digest`: what the gossip round
/// records as metrics, counted without building the member views.
pub fn tally(
    chitchat: &Chitchat,
    heartbeats: &Heartbeats,
    suspect_after: Duration,
    digest: Option<&str>,
) -> ([i64; 3], bool) {
    let now = heartbeats.observe(chitchat);
    let me = chitchat.self_chitchat_id();
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut counts = [0i64; 3];
    let mut converged = true;
    let seen = heartbeats.seen.lock().unwrap_or_else(|p| p.into_inner());
    for id in newest(chitchat) {
        let age = seen
            .get(id)
            .map_or(Duration::ZERO, |(_, at)| now.duration_since(*at));
        let state = state_of(id, me, &live, age, suspect_after);
        counts[state as usize] += 1;
        if state != MemberState::Dead {
            let theirs = chitchat
                .node_state(id)
                .and_then(|s| s.get(KEY_REVISION))
                .and_then(PeerRevision::digest_of);
            if theirs != digest {
                converged = false;
            }
        }
    }
    (counts, converged)
}

/// Every node `chitchat` knows, newest generation of each node id only, sorted by node id.
pub fn members(
    chitchat: &Chitchat,
    heartbeats: &Heartbeats,
    suspect_after: Duration,
) -> Vec<Member> {
    let now = heartbeats.observe(chitchat);
    let me = chitchat.self_chitchat_id().clone();
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let mut out: Vec<Member> = newest(chitchat)
        .map(|id| {
            let state = chitchat.node_state(id);
            let is_self = *id == me;
            let age = if is_self {
                Duration::ZERO
            } else {
                heartbeats.age(id, now)
            };
            Member {
                node_id: id.node_id.to_string(),
                gossip_addr: id.gossip_advertise_addr.to_string(),
                state: state_of(id, &me, &live, age, suspect_after),
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
