//! The mesh's metrics, registered into the agent's one registry by the daemon. The transport
//! and the puller count into these handles directly (each is one atomic add).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberStateLabel {
    pub state: &'static str,
}

#[derive(Clone, Default)]
pub struct MeshMetrics {
    /// Known nodes by state, as of the last gossip round.
    pub members: Family<MemberStateLabel, Gauge>,
    /// 1 when every live member reports this node's digest.
    pub converged: Gauge,
    pub gossip_bytes_sent: Counter,
    pub gossip_bytes_received: Counter,
    pub gossip_messages_dropped: Counter,
    /// Connections refused: TLS failures, wrong node id, other cluster or protocol.
    pub peers_refused: Counter,
    pub pulls: Counter,
    pub pull_failures: Counter,
    pub changes_merged: Counter,
    /// Changes whose certificate or signature did not verify.
    pub changes_refused: Counter,
    /// Requests and gossip messages from connected peers that could not be decoded.
    pub messages_refused: Counter,
    /// Pulled changes older than what this node holds (replays, reordered pages): ignored.
    pub changes_stale: Counter,
}

impl MeshMetrics {
    pub fn register(registry: &mut Registry) -> MeshMetrics {
        let m = MeshMetrics::default();
        registry.register(
            "mesh_members",
            "Known mesh nodes by state (alive, suspect, dead)",
            m.members.clone(),
        );
        registry.register(
            "mesh_converged",
            "1 when every live member reports this node's policy digest",
            m.converged.clone(),
        );
        registry.register(
            "mesh_gossip_sent_bytes",
            "Gossip payload bytes sent",
            m.gossip_bytes_sent.clone(),
        );
        registry.register(
            "mesh_gossip_received_bytes",
            "Gossip payload bytes received",
            m.gossip_bytes_received.clone(),
        );
        registry.register(
            "mesh_gossip_dropped_messages",
            "Gossip messages dropped (peer unreachable, queue full)",
            m.gossip_messages_dropped.clone(),
        );
        registry.register(
            "mesh_peers_refused",
            "Connections refused: certificate, node id, cluster or protocol mismatch",
            m.peers_refused.clone(),
        );
        registry.register(
            "mesh_pulls",
            "Pulls of policy changes from peers",
            m.pulls.clone(),
        );
        registry.register(
            "mesh_pull_failures",
            "Pulls that failed (peer unreachable or refused)",
            m.pull_failures.clone(),
        );
        registry.register(
            "mesh_changes_merged",
            "Policy changes from peers that won the merge",
            m.changes_merged.clone(),
        );
        registry.register(
            "mesh_changes_refused",
            "Policy changes refused: certificate or signature did not verify",
            m.changes_refused.clone(),
        );
        registry.register(
            "mesh_changes_stale",
            "Pulled changes older than the version held (replayed or reordered), ignored",
            m.changes_stale.clone(),
        );
        registry.register(
            "mesh_messages_refused",
            "Requests and gossip messages from connected peers refused as malformed",
            m.messages_refused.clone(),
        );
        m
    }
}
