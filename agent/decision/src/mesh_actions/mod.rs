//! What becomes of a matched rule's action: sent by this node, left to the node that acts for the
//! mesh, or suppressed by throttling or the lack of a quorum.
//!
//! A node-scoped rule (the default) acts on every matching node, throttled per node. A mesh-scoped
//! rule acts once for the mesh: each node that matches it ranks the alive members by rendezvous
//! hashing of (rule, incident key, window) and *claims* the action in gossip; the first-ranked node
//! sends it, whether the match was its own or a peer's claim. Nodes that see a node act (its
//! gossiped `acted` log) do not act again; when the actor dies before or after acting, the
//! next-ranked node sees claims with no alive actor and sends the action itself, under the same
//! id (derived from rule, key and window), so the consumer sees one action.

mod rendezvous;
mod throttle;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use agent_engine::{CompiledPolicy, Incident, PolicySet, Quorum, Scope};
use mesh_proto::MeshActionInfo;
use mesh_proto::shared::{Acted, ActedLog, Claim, Claims};
use serde::Serialize;

use crate::facts::PeerView;
use crate::facts::peers::{KEY_ACTED, KEY_CLAIMS, to_gossip};

pub use rendezvous::{actor, mesh_action_id, ranking, weight};
pub use throttle::Throttle;

/// Own claims kept (and gossiped) at most.
const MAX_CLAIMS: usize = 16;
/// Own mesh actions kept in the gossiped log at most.
const MAX_ACTED: usize = 32;
/// How long an entry of the acted log is kept: it throttles the mesh's later firings.
const ACTED_TTL_MS: u64 = 24 * 3600 * 1000;

/// The verdict on one matched rule's action.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Send it, under this id; `mesh` is set for a mesh-scoped rule.
    Send {
        action_id: String,
        mesh: Option<MeshActionInfo>,
    },
    /// A mesh-scoped action another node is ranked to send.
    Deferred {
        action_id: String,
        actor: String,
    },
    Suppressed {
        action_id: String,
        reason: String,
    },
}

impl Disposition {
    pub fn outcome(&self) -> mesh_proto::ActionOutcome {
        use mesh_proto::ActionOutcome;
        match self.clone() {
            Disposition::Send { action_id, .. } => ActionOutcome::Sent { action_id },
            Disposition::Deferred { action_id, actor } => {
                ActionOutcome::Deferred { action_id, actor }
            }
            Disposition::Suppressed { action_id, reason } => {
                ActionOutcome::Suppressed { action_id, reason }
            }
        }
    }
}

/// A mesh action this node is now first-ranked for, from a claim (a peer's, or its own after the
/// membership changed).
#[derive(Debug, Clone)]
pub struct DueAction {
    pub claim: Claim,
    pub claimant: String,
    pub disposition: Disposition,
}

/// This node's part in mesh actions and its throttle.
pub struct MeshActions {
    node_id: String,
    window_ms: u64,
    state: Mutex<State>,
    /// Raised when the claims or the acted log changed: gossip them now.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    throttle: Throttle,
    claims: VecDeque<Claim>,
    acted: VecDeque<Acted>,
    /// Mesh actions this node decided as their actor (sent or suppressed), by id, with when.
    decided: HashMap<String, u64>,
}

/// A recent mesh action and who sent it (`GET /mesh/actions`).
#[derive(Debug, Clone, Serialize)]
pub struct RecentAction {
    pub action_id: String,
    pub policy_id: u64,
    pub incident_key: String,
    pub window_start_ms: u64,
    pub actor: String,
    pub at_ms: u64,
    pub takeover: bool,
    pub actor_alive: bool,
}

impl MeshActions {
    pub fn new(node_id: &str, window_ms: u64) -> MeshActions {
        MeshActions {
            node_id: node_id.to_owned(),
            window_ms: window_ms.max(1),
            state: Mutex::new(State::default()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Resolves when the claims or the acted log changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Decides the action of `policy`, which matched `incident` here at `now_ms`. `node_action_id`
    /// is the id a node-scoped action gets.
    pub fn on_match(
        &self,
        policy: &CompiledPolicy,
        incident: &Incident,
        node_action_id: String,
        now_ms: u64,
        peers: &PeerView,
    ) -> Disposition {
        let key = incident.kind.as_str();
        let mut state = self.lock();
        if policy.scope == Scope::Node {
            if let Some(reason) = state.throttle.check(policy, key, now_ms, []) {
                return Disposition::Suppressed {
                    action_id: node_action_id,
                    reason,
                };
            }
            state.throttle.note(policy.id, key, now_ms);
            return Disposition::Send {
                action_id: node_action_id,
                mesh: None,
            };
        }
        let window = now_ms / self.window_ms;
        let action_id = mesh_action_id(policy.id, key, window);
        if let Some(reason) = no_quorum(policy, peers) {
            return Disposition::Suppressed { action_id, reason };
        }
        state.expire(now_ms, self.window_ms);
        if !state.claims.iter().any(|c| c.action_id == action_id) {
            state.claims.push_back(Claim {
                action_id: action_id.clone(),
                policy_id: policy.id,
                policy_version: policy.version,
                key: key.to_owned(),
                window,
                at_ms: now_ms,
                event_id: incident.id.clone(),
                severity: incident.severity,
            });
            while state.claims.len() > MAX_CLAIMS {
                state.claims.pop_front();
            }
            self.changed.notify_one();
        }
        let actor = actor(&peers.alive, policy.id, key, window).unwrap_or(&self.node_id);
        if actor != self.node_id {
            return Disposition::Deferred {
                action_id,
                actor: actor.to_owned(),
            };
        }
        let disposition = self.decide_as_actor(
            &mut state,
            policy,
            key,
            window,
            &action_id,
            now_ms,
            peers,
            &self.node_id,
        );
        if matches!(disposition, Disposition::Send { .. }) {
            self.changed.notify_one();
        }
        disposition
    }

    /// The claimed mesh actions this node must now send (or suppress) as their first-ranked alive
    /// node, given the view `peers` and the policies of `set`. Each is returned once.
    pub fn due(&self, peers: &PeerView, set: &PolicySet, now_ms: u64) -> Vec<DueAction> {
        let mut state = self.lock();
        state.expire(now_ms, self.window_ms);
        let current = now_ms / self.window_ms;
        let mut claims: Vec<(String, Claim)> = state
            .claims
            .iter()
            .map(|c| (self.node_id.clone(), c.clone()))
            .collect();
        claims.extend(peers.claims.iter().cloned());
        let mut due = Vec::new();
        for (claimant, claim) in claims {
            if claim.window + 1 < current || state.decided.contains_key(&claim.action_id) {
                continue;
            }
            let Some(policy) = set
                .policies()
                .iter()
                .find(|p| p.id == claim.policy_id && p.scope == Scope::Mesh)
            else {
                continue;
            };
            if actor(&peers.alive, policy.id, &claim.key, claim.window) != Some(&self.node_id) {
                continue;
            }
            if no_quorum(policy, peers).is_some() {
                // Re-examined at the next view: the majority may come back.
                continue;
            }
            let disposition = self.decide_as_actor(
                &mut state,
                policy,
                &claim.key,
                claim.window,
                &claim.action_id,
                now_ms,
                peers,
                &claimant,
            );
            due.push(DueAction {
                claim,
                claimant,
                disposition,
            });
        }
        if due
            .iter()
            .any(|d| matches!(d.disposition, Disposition::Send { .. }))
        {
            self.changed.notify_one();
        }
        due
    }

    /// Sends or suppresses a mesh action this node is first-ranked for; notes the outcome.
    #[allow(clippy::too_many_arguments)]
    fn decide_as_actor(
        &self,
        state: &mut State,
        policy: &CompiledPolicy,
        key: &str,
        window: u64,
        action_id: &str,
        now_ms: u64,
        peers: &PeerView,
        claimant: &str,
    ) -> Disposition {
        let action_id = action_id.to_owned();
        if state.decided.contains_key(&action_id) {
            return Disposition::Suppressed {
                action_id,
                reason:
                    "already decided by this node: one action per rule, incident key and window"
                        .into(),
            };
        }
        if let Some((node, _, _)) = peers
            .acted
            .iter()
            .find(|(_, acted, alive)| *alive && acted.action_id == action_id)
        {
            return Disposition::Suppressed {
                action_id,
                reason: format!("already sent by `{node}`"),
            };
        }
        state.decided.insert(action_id.clone(), now_ms);
        let elsewhere = peers
            .acted
            .iter()
            .filter(|(_, acted, _)| {
                acted.policy_id == policy.id && acted.key == key && acted.action_id != action_id
            })
            .map(|(_, acted, _)| acted.at_ms);
        if let Some(reason) = state.throttle.check(policy, key, now_ms, elsewhere) {
            return Disposition::Suppressed { action_id, reason };
        }
        // A takeover: a node that failed had sent it already.
        let takeover = peers
            .acted
            .iter()
            .any(|(_, acted, alive)| !alive && acted.action_id == action_id);
        state.throttle.note(policy.id, key, now_ms);
        state.acted.push_back(Acted {
            action_id: action_id.clone(),
            policy_id: policy.id,
            key: key.to_owned(),
            window,
            at_ms: now_ms,
            takeover,
        });
        while state.acted.len() > MAX_ACTED {
            state.acted.pop_front();
        }
        Disposition::Send {
            action_id,
            mesh: Some(MeshActionInfo {
                incident_key: key.to_owned(),
                window_start_ms: window * self.window_ms,
                claimed_by: claimant.to_owned(),
                takeover,
            }),
        }
    }

    /// The gossip values of this node's claims and acted log.
    pub fn gossip_values(&self, now_ms: u64) -> Vec<(&'static str, String)> {
        let mut state = self.lock();
        state.expire(now_ms, self.window_ms);
        vec![
            (
                KEY_CLAIMS,
                to_gossip(&Claims {
                    claims: state.claims.iter().cloned().collect(),
                }),
            ),
            (
                KEY_ACTED,
                to_gossip(&ActedLog {
                    acted: state.acted.iter().cloned().collect(),
                }),
            ),
        ]
    }

    /// Recent mesh actions, this node's and the peers', newest first, with who sent each.
    pub fn recent(&self, peers: &PeerView) -> Vec<RecentAction> {
        let state = self.lock();
        let mine = state.acted.iter().map(|a| (self.node_id.as_str(), a, true));
        let theirs = peers
            .acted
            .iter()
            .map(|(node, a, alive)| (node.as_str(), a, *alive));
        let mut all: Vec<RecentAction> = mine
            .chain(theirs)
            .map(|(node, acted, alive)| RecentAction {
                action_id: acted.action_id.clone(),
                policy_id: acted.policy_id,
                incident_key: acted.key.clone(),
                window_start_ms: acted.window * self.window_ms,
                actor: node.to_owned(),
                at_ms: acted.at_ms,
                takeover: acted.takeover,
                actor_alive: alive,
            })
            .collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.at_ms));
        all
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// Claims and decisions outlive their window by one more, for a takeover near its end.
    fn expire(&mut self, now_ms: u64, window_ms: u64) {
        let current = now_ms / window_ms;
        while self.claims.front().is_some_and(|c| c.window + 1 < current) {
            self.claims.pop_front();
        }
        let horizon = now_ms.saturating_sub(2 * window_ms);
        self.decided.retain(|_, at| *at >= horizon);
        let acted_horizon = now_ms.saturating_sub(ACTED_TTL_MS);
        while self.acted.front().is_some_and(|a| a.at_ms < acted_horizon) {
            self.acted.pop_front();
        }
    }
}

/// Why a mesh-scoped rule with a quorum may not act on this view, if it may not.
fn no_quorum(policy: &CompiledPolicy, peers: &PeerView) -> Option<String> {
    match policy.quorum {
        Some(Quorum::Majority) if peers.alive.len() * 2 <= peers.known => Some(format!(
            "no quorum: this node sees {} of {} known members alive, a majority needs {}",
            peers.alive.len(),
            peers.known,
            peers.known / 2 + 1
        )),
        _ => None,
    }
}
