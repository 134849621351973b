//! What becomes of a matched rule's action: sent by this node, left to the node that acts for the
//! mesh, or suppressed by throttling or the lack of a quorum.
//!
//! A node-scoped rule (the default) acts on every matching node, throttled per node. A mesh-scoped
//! rule acts once for the mesh: each node that matches it ranks the alive members by rendezvous
//! hashing of (rule, incident key, window) and *claims* the action in gossip; the first-ranked node
//! sends it, whether the match was its own or a peer's claim. Nodes that see a node act (its
//! gossiped `acted` log) do not act again; when the actor dies before or after acting, the
//! next-ranked node sees claims with no alive actor and sends the action itself, under the same
//! id (derived from rule, key and window), so the consumer sees one action. Only nodes that can
//! send (they have an upstream, and say so in gossip) are ranked.
//!
//! Everything a decision changes here (claims, throttle, decided ids, the acted log) is
//! [`Tentative`] until the decision is recorded: a decision refused or dropped before its commit
//! leaves no trace, so its retry is decided afresh. Claims and acted entries are gossiped only once
//! committed. A concurrent decision of the same rule and type does see a tentative firing (it is
//! suppressed by the cooldown): if the first is then refused, the second's action is not sent
//! either, and its audit names a firing that did not happen. Two concurrent decisions for one key
//! within a cooldown are rare enough to leave it so.

mod rendezvous;
mod tentative;
mod throttle;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use agent_engine::{CompiledPolicy, Incident, PolicySet, Quorum, Scope};
use mesh_proto::MeshActionInfo;
use mesh_proto::shared::{Acted, ActedLog, Claim, Claims};
use serde::Serialize;

use crate::facts::PeerView;
use crate::facts::peers::{KEY_ACTED, KEY_CAN_ACT, KEY_CLAIMS, MAX_VALUE_BYTES, to_gossip};

pub use rendezvous::{actor, mesh_action_id, ranking, weight};
pub use tentative::Tentative;
use tentative::Undo;
pub use throttle::Throttle;

/// Own claims kept (and gossiped) at most.
const MAX_CLAIMS: usize = 16;
/// Own mesh actions kept in the gossiped log at most (a mesh-wide rate limit counts at most these
/// per node).
const MAX_ACTED: usize = 64;
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
    /// Whether this node can send actions (it has an upstream): only such nodes are ranked.
    can_act: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    /// Raised when the claims or the acted log changed: gossip them now.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    throttle: Throttle,
    /// This node's claims; `false` while the decision that made it is not recorded yet.
    claims: VecDeque<(Claim, bool)>,
    /// This node's mesh actions; `false` while the decision that sent it is not recorded yet.
    acted: VecDeque<(Acted, bool)>,
    /// Mesh actions this node decided as their actor (sent or suppressed), by id, with the
    /// window they belong to.
    decided: HashMap<String, u64>,
}

/// A recent mesh action and who sent it (in `GET /mesh/incidents`).
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
            can_act: std::sync::atomic::AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// This node has an upstream: it can send mesh actions, and is ranked for them.
    pub fn set_can_act(&self) {
        self.can_act
            .store(true, std::sync::atomic::Ordering::Release);
    }

    fn can_act(&self) -> bool {
        self.can_act.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves when the claims or the acted log changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// A change set for one decision.
    pub fn tentative(&self) -> Tentative<'_> {
        Tentative {
            actions: self,
            undo: Vec::new(),
        }
    }

    /// The members ranked for a mesh action: alive peers that can act, and this node if it can.
    fn actors(&self, peers: &PeerView) -> Vec<String> {
        let mut actors = peers.actors.clone();
        if self.can_act() {
            actors.push(self.node_id.clone());
        }
        actors
    }

    fn window_of(&self, now_ms: u64) -> u64 {
        now_ms / self.window_ms
    }

    /// Decides the action of `policy`, which matched `incident` here at `now_ms`. `node_action_id`
    /// is the id a node-scoped action gets. What it changes is part of `tentative`.
    pub fn on_match(
        &self,
        policy: &CompiledPolicy,
        incident: &Incident,
        node_action_id: String,
        now_ms: u64,
        peers: &PeerView,
        tentative: &mut Tentative<'_>,
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
            tentative.undo.push(Undo::Fired {
                policy_id: policy.id,
                key: key.to_owned(),
                at_ms: now_ms,
            });
            return Disposition::Send {
                action_id: node_action_id,
                mesh: None,
            };
        }
        let window = self.window_of(now_ms);
        let action_id = mesh_action_id(policy.id, key, window);
        if let Some(reason) = no_quorum(policy, peers) {
            return Disposition::Suppressed { action_id, reason };
        }
        state.expire(now_ms, self.window_ms);
        if !state.claims.iter().any(|(c, _)| c.action_id == action_id) {
            tentative.undo.push(Undo::Claimed {
                action_id: action_id.clone(),
            });
            let claim = Claim {
                action_id: action_id.clone(),
                policy_id: policy.id,
                policy_version: policy.version,
                key: key.to_owned(),
                window,
                at_ms: now_ms,
                event_id: incident.id.clone(),
                severity: incident.severity,
            };
            state.claims.push_back((claim, false));
            while state.claims.len() > MAX_CLAIMS {
                state.claims.pop_front();
            }
        }
        let actors = self.actors(peers);
        let Some(actor) = actor(&actors, policy.id, key, window) else {
            return Disposition::Suppressed {
                action_id,
                reason: "no alive node can send actions (none has an upstream)".into(),
            };
        };
        if actor != self.node_id {
            return Disposition::Deferred {
                action_id,
                actor: actor.to_owned(),
            };
        }
        if let Some(node) = acted_by_alive(peers, &action_id) {
            return Disposition::Suppressed {
                action_id,
                reason: format!("already sent by `{node}`"),
            };
        }
        self.decide_as_actor(
            &mut state,
            tentative,
            policy,
            key,
            window,
            &action_id,
            now_ms,
            peers,
            &self.node_id,
        )
    }

    /// The claimed mesh actions this node must now send (or suppress) as their first-ranked alive
    /// node, given the view `peers` and the policies of `set`. Each is returned once; what it
    /// changes is part of `tentative`.
    pub fn due(
        &self,
        peers: &PeerView,
        set: &PolicySet,
        now_ms: u64,
        tentative: &mut Tentative<'_>,
    ) -> Vec<DueAction> {
        if !self.can_act() {
            return Vec::new();
        }
        let mut state = self.lock();
        state.expire(now_ms, self.window_ms);
        let current = self.window_of(now_ms);
        let actors = self.actors(peers);
        let mut claims: Vec<(String, Claim)> = state
            .claims
            .iter()
            .filter(|(_, confirmed)| *confirmed)
            .map(|(c, _)| (self.node_id.clone(), c.clone()))
            .collect();
        claims.extend(peers.claims.iter().cloned());
        let mut due = Vec::new();
        for (claimant, claim) in claims {
            // The current window, the one before (a takeover near its end) and the one after (a
            // claimant's clock a little ahead); one from a clock far ahead is ignored.
            if claim.window.saturating_add(1) < current
                || claim.window > current.saturating_add(1)
                || state.decided.contains_key(&claim.action_id)
                || acted_by_alive(peers, &claim.action_id).is_some()
            {
                continue;
            }
            let Some(policy) = set
                .policies()
                .iter()
                .find(|p| p.id == claim.policy_id && p.scope == Scope::Mesh)
            else {
                continue;
            };
            if actor(&actors, policy.id, &claim.key, claim.window) != Some(&self.node_id) {
                continue;
            }
            if no_quorum(policy, peers).is_some() {
                // Re-examined at the next view: the majority may come back.
                continue;
            }
            let disposition = self.decide_as_actor(
                &mut state,
                tentative,
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
        due
    }

    /// Sends or suppresses a mesh action this node is first-ranked for; notes the outcome.
    #[allow(clippy::too_many_arguments)]
    fn decide_as_actor(
        &self,
        state: &mut State,
        tentative: &mut Tentative<'_>,
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
        state.decided.insert(action_id.clone(), window);
        tentative.undo.push(Undo::Decided {
            action_id: action_id.clone(),
        });
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
        // A takeover: a node that can act and is ranked before this one is dead, whether it had
        // sent the action or not.
        let mut known = self.actors(peers);
        known.extend(peers.dead_actors.iter().cloned());
        let takeover = ranking(&known, policy.id, key, window)
            .into_iter()
            .take_while(|node| *node != self.node_id)
            .any(|node| peers.dead_actors.iter().any(|dead| dead == node));
        state.throttle.note(policy.id, key, now_ms);
        tentative.undo.push(Undo::Fired {
            policy_id: policy.id,
            key: key.to_owned(),
            at_ms: now_ms,
        });
        state.acted.push_back((
            Acted {
                action_id: action_id.clone(),
                policy_id: policy.id,
                key: key.to_owned(),
                window,
                at_ms: now_ms,
                takeover,
            },
            false,
        ));
        tentative.undo.push(Undo::Acted {
            action_id: action_id.clone(),
        });
        while state.acted.len() > MAX_ACTED {
            state.acted.pop_front();
        }
        Disposition::Send {
            action_id,
            mesh: Some(MeshActionInfo {
                incident_key: key.to_owned(),
                window_start_ms: window.saturating_mul(self.window_ms),
                claimed_by: claimant.to_owned(),
                takeover,
            }),
        }
    }

    /// Notes a mesh action this node sent before a restart (read back from the audit ring), so it
    /// is neither sent again nor forgotten by the throttle.
    pub fn remember_sent(&self, action_id: &str, policy_id: u64, key: &str, at_ms: u64) {
        let window = self.window_of(at_ms);
        let mut state = self.lock();
        state.decided.insert(action_id.to_owned(), window);
        state.throttle.note(policy_id, key, at_ms);
    }

    /// The gossip values of this node's claims, acted log and ability to act, each within
    /// [`MAX_VALUE_BYTES`] (the oldest entries are left out first).
    pub fn gossip_values(&self, now_ms: u64) -> Vec<(&'static str, String)> {
        let mut state = self.lock();
        state.expire(now_ms, self.window_ms);
        let mut claims: Vec<Claim> = state
            .claims
            .iter()
            .filter(|(_, confirmed)| *confirmed)
            .map(|(c, _)| c.clone())
            .collect();
        let mut acted: Vec<Acted> = state
            .acted
            .iter()
            .filter(|(_, confirmed)| *confirmed)
            .map(|(a, _)| a.clone())
            .collect();
        drop(state);
        let mut values = vec![
            (
                KEY_CLAIMS,
                within_budget(&mut claims, |claims| Claims { claims }),
            ),
            (
                KEY_ACTED,
                within_budget(&mut acted, |acted| ActedLog { acted }),
            ),
        ];
        if self.can_act() {
            values.push((KEY_CAN_ACT, "1".to_owned()));
        }
        values
    }

    /// Recent mesh actions, this node's and the peers', newest first, with who sent each.
    pub fn recent(&self, peers: &PeerView) -> Vec<RecentAction> {
        let state = self.lock();
        let mine = state
            .acted
            .iter()
            .filter(|(_, confirmed)| *confirmed)
            .map(|(a, _)| (self.node_id.as_str(), a, true));
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
                window_start_ms: acted.window.saturating_mul(self.window_ms),
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
        while self
            .claims
            .front()
            .is_some_and(|(c, _)| c.window.saturating_add(1) < current)
        {
            self.claims.pop_front();
        }
        self.decided
            .retain(|_, window| window.saturating_add(1) >= current);
        let acted_horizon = now_ms.saturating_sub(ACTED_TTL_MS);
        while self
            .acted
            .front()
            .is_some_and(|(a, _)| a.at_ms < acted_horizon)
        {
            self.acted.pop_front();
        }
    }
}

/// The alive member that says it sent `action_id`, if any.
fn acted_by_alive<'a>(peers: &'a PeerView, action_id: &str) -> Option<&'a str> {
    peers
        .acted
        .iter()
        .find(|(_, acted, alive)| *alive && acted.action_id == action_id)
        .map(|(node, _, _)| node.as_str())
}

/// The gossip value of `entries`, leaving out the oldest until it fits [`MAX_VALUE_BYTES`].
fn within_budget<T: Clone, R: mesh_proto::Record>(
    entries: &mut Vec<T>,
    wrap: impl Fn(Vec<T>) -> R,
) -> String {
    loop {
        let value = to_gossip(&wrap(entries.clone()));
        if value.len() <= MAX_VALUE_BYTES || entries.is_empty() {
            return value;
        }
        entries.remove(0);
    }
}

/// Why a mesh-scoped rule with a quorum may not act on this view, if it may not.
fn no_quorum(policy: &CompiledPolicy, peers: &PeerView) -> Option<String> {
    let known = peers.known.max(peers.known_floor);
    match policy.quorum {
        Some(Quorum::Majority) if peers.alive.len() * 2 <= known => Some(format!(
            "no quorum: this node sees {} of {known} known members alive, a majority needs {}",
            peers.alive.len(),
            known / 2 + 1
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
