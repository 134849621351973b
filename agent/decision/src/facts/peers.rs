//! The mesh as this node last saw it through gossip: which members are alive, and what each says
//! about its incidents, its claims and the mesh actions it took. Built from what the daemon hands
//! over from the mesh ([`MeshInput`]); nothing here knows the transport.

use std::collections::HashMap;

use mesh_proto::shared::{Acted, ActedLog, Claim, Claims, IncidentSummary};
use mesh_proto::{DecodeError, Record, decode, encode};
use serde::Serialize;

/// The gossip keys this layer publishes about its node.
pub const KEY_INCIDENTS: &str = "incidents";
pub const KEY_CLAIMS: &str = "claims";
pub const KEY_ACTED: &str = "acted";
/// Present when the node has an upstream, so it can send mesh actions: only such nodes are ranked.
pub const KEY_CAN_ACT: &str = "can_act";
/// A peer's value larger than this is ignored: a bound on what a peer can make this node hold.
/// Writers keep theirs under it.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

/// What the mesh says about every member it knows, as of one moment.
#[derive(Debug, Clone, Default)]
pub struct MeshInput {
    pub self_id: String,
    pub members: Vec<MemberInput>,
}

#[derive(Debug, Clone)]
pub struct MemberInput {
    pub node_id: String,
    pub alive: bool,
    /// The member's values of [`KEY_INCIDENTS`], [`KEY_CLAIMS`], [`KEY_ACTED`], [`KEY_CAN_ACT`]
    /// (others are ignored).
    pub values: Vec<(String, String)>,
}

/// One incident type across the alive peers (this node not included).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeAcross {
    /// (node, count, highest severity) of each alive peer that reports the type, once per peer.
    pub nodes: Vec<(String, u32, f32)>,
    pub max_severity: f64,
}

/// The decoded view. `alive` always holds this node.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    pub self_id: String,
    /// Alive members, this node included, sorted.
    pub alive: Vec<String>,
    /// Members seen dead (chitchat keeps them until its grace period ends), sorted.
    pub dead: Vec<String>,
    /// Alive peers (this node not included) that can send mesh actions, sorted.
    pub actors: Vec<String>,
    /// Dead members that could send mesh actions when last seen, sorted.
    pub dead_actors: Vec<String>,
    /// Members known alive or dead, this node included.
    pub known: usize,
    pub types: HashMap<String, TypeAcross, foldhash::fast::RandomState>,
    /// Claims of other members, alive or dead (a dead claimant's claim still stands).
    pub claims: Vec<(String, Claim)>,
    /// Mesh actions other members took, with whether that member is alive.
    pub acted: Vec<(String, Acted, bool)>,
    /// Values that could not be read: (member, key, what was wrong).
    pub unreadable: Vec<(String, &'static str, String)>,
    /// Whether a mesh gave this view (else the node runs alone).
    pub from_mesh: bool,
    /// Whether the view can speak for the mesh: true alone; with a mesh, once it has settled
    /// (see `FactSources::set_peers`). Until then mesh facts are missing, this node's own mesh
    /// rule matches are suppressed, and peers' claims wait.
    pub settled: bool,
    /// The membership the last run persisted: a majority counts against at least this many.
    pub known_floor: usize,
}

impl PeerView {
    /// The view of a node with no mesh: itself, alone.
    pub fn alone(self_id: &str) -> PeerView {
        PeerView {
            self_id: self_id.to_owned(),
            alive: vec![self_id.to_owned()],
            known: 1,
            settled: true,
            ..PeerView::default()
        }
    }

    /// Decodes the members' values. A summary older than `max_age_ms` at `now_ms` (a peer that
    /// stopped publishing without being seen dead) counts for nothing.
    pub fn from_input(input: MeshInput, now_ms: u64, max_age_ms: u64) -> PeerView {
        let mut view = PeerView {
            self_id: input.self_id.clone(),
            alive: vec![input.self_id.clone()],
            known: 1,
            from_mesh: true,
            settled: true,
            ..PeerView::default()
        };
        for member in input.members {
            if member.node_id == input.self_id {
                continue;
            }
            view.known += 1;
            if member.alive {
                view.alive.push(member.node_id.clone());
            } else {
                view.dead.push(member.node_id.clone());
            }
            for (key, value) in &member.values {
                let (key, result) = match key.as_str() {
                    KEY_INCIDENTS if member.alive => (
                        KEY_INCIDENTS,
                        from_gossip::<IncidentSummary>(value).map(|summary| {
                            if now_ms.saturating_sub(summary.at_ms) <= max_age_ms {
                                view.add_summary(&member.node_id, summary);
                            }
                        }),
                    ),
                    KEY_CLAIMS => (
                        KEY_CLAIMS,
                        from_gossip::<Claims>(value).map(|claims| {
                            view.claims.extend(
                                claims
                                    .claims
                                    .into_iter()
                                    .map(|claim| (member.node_id.clone(), claim)),
                            )
                        }),
                    ),
                    KEY_ACTED => (
                        KEY_ACTED,
                        from_gossip::<ActedLog>(value).map(|log| {
                            view.acted.extend(
                                log.acted
                                    .into_iter()
                                    .map(|acted| (member.node_id.clone(), acted, member.alive)),
                            )
                        }),
                    ),
                    KEY_CAN_ACT => {
                        if member.alive {
                            view.actors.push(member.node_id.clone());
                        } else {
                            view.dead_actors.push(member.node_id.clone());
                        }
                        continue;
                    }
                    _ => continue,
                };
                if let Err(err) = result {
                    view.unreadable
                        .push((member.node_id.clone(), key, err.to_string()));
                }
            }
        }
        view.alive.sort();
        view.dead.sort();
        view.actors.sort();
        view.dead_actors.sort();
        view
    }

    /// Counts one alive peer's summary: each type once for the peer, whatever the summary says.
    fn add_summary(&mut self, node: &str, summary: IncidentSummary) {
        let mut seen = std::collections::HashSet::new();
        for entry in summary.types {
            if entry.count == 0 || !seen.insert(entry.kind.clone()) {
                continue;
            }
            let severity = f64::from(entry.max_severity);
            let across = self.types.entry(entry.kind).or_default();
            across.max_severity = if across.nodes.is_empty() {
                severity
            } else {
                across.max_severity.max(severity)
            };
            across
                .nodes
                .push((node.to_owned(), entry.count, entry.max_severity));
        }
    }

    /// Alive peers (this node not included) that report `kind`.
    pub fn peers_with(&self, kind: &str) -> Option<&TypeAcross> {
        self.types.get(kind)
    }
}

/// Why a gossiped value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GossipValueError {
    #[error("{0} bytes, over the {MAX_VALUE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not base64")]
    Base64,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A record as chitchat carries it: base64 (URL-safe, no padding) of format byte + postcard.
pub fn to_gossip<T: Record>(record: &T) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(encode(record))
}

pub fn from_gossip<T: Record>(text: &str) -> Result<T, GossipValueError> {
    use base64::Engine as _;
    if text.len() > MAX_VALUE_BYTES {
        return Err(GossipValueError::TooLarge(text.len()));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| GossipValueError::Base64)?;
    Ok(decode(&bytes)?)
}

#[cfg(test)]
mod tests {
    use mesh_proto::shared::TypeCount;

    use super::*;

    fn summary(at_ms: u64, types: &[(&str, u32)]) -> String {
        to_gossip(&IncidentSummary {
            at_ms,
            window_sec: 60,
            types: types
                .iter()
                .map(|(kind, count)| TypeCount {
                    kind: kind.to_string(),
                    count: *count,
                    max_severity: 5.0,
                })
                .collect(),
            truncated: false,
        })
    }

    fn member(node: &str, alive: bool, values: Vec<(&str, String)>) -> MemberInput {
        MemberInput {
            node_id: node.into(),
            alive,
            values: values.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        }
    }

    #[test]
    fn a_peer_counts_once_per_type_and_only_while_alive_and_fresh() {
        let input = MeshInput {
            self_id: "n1".into(),
            members: vec![
                // A type listed three times, and one with no incidents: one node, none.
                member(
                    "n2",
                    true,
                    vec![
                        (
                            KEY_INCIDENTS,
                            summary(100_000, &[("a", 1), ("a", 2), ("a", 3), ("b", 0)]),
                        ),
                        (KEY_CAN_ACT, "1".into()),
                    ],
                ),
                member(
                    "n3",
                    false,
                    vec![(KEY_INCIDENTS, summary(100_000, &[("a", 1)]))],
                ),
                // Stopped publishing a window ago without being seen dead.
                member(
                    "n4",
                    true,
                    vec![(KEY_INCIDENTS, summary(10_000, &[("a", 1)]))],
                ),
                member("n5", true, vec![(KEY_CLAIMS, "not base64!".into())]),
            ],
        };
        let view = PeerView::from_input(input, 100_000, 60_000);
        assert_eq!(view.alive, ["n1", "n2", "n4", "n5"]);
        assert_eq!(view.dead, ["n3"]);
        assert_eq!(view.actors, ["n2"]);
        assert_eq!(view.known, 5);
        assert_eq!(view.peers_with("a").unwrap().nodes.len(), 1);
        assert!(view.peers_with("b").is_none());
        assert_eq!(view.unreadable.len(), 1);
        assert_eq!(view.unreadable[0].1, KEY_CLAIMS);
        assert!(
            from_gossip::<Claims>(&"A".repeat(MAX_VALUE_BYTES + 1))
                .unwrap_err()
                .to_string()
                .contains("over the")
        );
    }
}
