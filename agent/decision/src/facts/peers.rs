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
/// A peer's value larger than this is ignored: a bound on what a peer can make this node hold.
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
    /// The member's values of [`KEY_INCIDENTS`], [`KEY_CLAIMS`], [`KEY_ACTED`] (others ignored).
    pub values: Vec<(String, String)>,
}

/// One incident type across the alive peers (this node not included).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeAcross {
    /// (node, count, highest severity) of each alive peer that reports the type.
    pub nodes: Vec<(String, u32, f32)>,
    pub max_severity: f64,
}

/// The decoded view. `alive` always holds this node.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    pub self_id: String,
    /// Alive members, this node included, sorted.
    pub alive: Vec<String>,
    /// Members known alive or dead, this node included.
    pub known: usize,
    pub types: HashMap<String, TypeAcross, foldhash::fast::RandomState>,
    /// Claims of other members, alive or dead (a dead claimant's claim still stands).
    pub claims: Vec<(String, Claim)>,
    /// Mesh actions other members took, with whether that member is alive.
    pub acted: Vec<(String, Acted, bool)>,
    /// Values that could not be read, by member (a newer or broken peer).
    pub unreadable: Vec<(String, String)>,
    /// Whether a mesh gave this view (else the node runs alone).
    pub from_mesh: bool,
}

impl PeerView {
    /// The view of a node with no mesh: itself, alone.
    pub fn alone(self_id: &str) -> PeerView {
        PeerView {
            self_id: self_id.to_owned(),
            alive: vec![self_id.to_owned()],
            known: 1,
            ..PeerView::default()
        }
    }

    pub fn from_input(input: MeshInput) -> PeerView {
        let mut view = PeerView {
            self_id: input.self_id.clone(),
            alive: vec![input.self_id.clone()],
            known: 1,
            from_mesh: true,
            ..PeerView::default()
        };
        for member in input.members {
            if member.node_id == input.self_id {
                continue;
            }
            view.known += 1;
            if member.alive {
                view.alive.push(member.node_id.clone());
            }
            for (key, value) in &member.values {
                let result = match key.as_str() {
                    KEY_INCIDENTS if member.alive => {
                        from_gossip::<IncidentSummary>(value).map(|summary| {
                            for entry in summary.types {
                                let across = view.types.entry(entry.kind).or_default();
                                across.max_severity = if across.nodes.is_empty() {
                                    f64::from(entry.max_severity)
                                } else {
                                    across.max_severity.max(f64::from(entry.max_severity))
                                };
                                across.nodes.push((
                                    member.node_id.clone(),
                                    entry.count,
                                    entry.max_severity,
                                ));
                            }
                        })
                    }
                    KEY_CLAIMS => from_gossip::<Claims>(value).map(|claims| {
                        view.claims.extend(
                            claims
                                .claims
                                .into_iter()
                                .map(|claim| (member.node_id.clone(), claim)),
                        )
                    }),
                    KEY_ACTED => from_gossip::<ActedLog>(value).map(|log| {
                        view.acted.extend(
                            log.acted
                                .into_iter()
                                .map(|acted| (member.node_id.clone(), acted, member.alive)),
                        )
                    }),
                    _ => Ok(()),
                };
                if let Err(err) = result {
                    view.unreadable
                        .push((member.node_id.clone(), format!("`{key}`: {err}")));
                }
            }
        }
        view.alive.sort();
        view
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
