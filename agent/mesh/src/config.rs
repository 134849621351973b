//! The `[mesh]` config section: joining a mesh, gossip timing, failure detection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agent_base::InvalidSetting;
use serde::{Deserialize, Serialize};

/// Joining a mesh: gossip over QUIC with mutual TLS. Without `tls_dir` the node runs alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Directory with `ca.pem`, `<node-id>.pem` and `<node-id>.key` (from `mesh-agent certs`).
    pub tls_dir: Option<PathBuf>,
    /// Nodes of another cluster id are ignored.
    pub cluster_id: String,
    /// UDP address gossip (QUIC) listens on.
    pub gossip_listen: SocketAddr,
    /// Address peers reach this node at; default: `gossip_listen`, or, if that is a wildcard,
    /// this host's address on the route to the first seed.
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip addresses (`host:port`) of nodes to join through.
    pub seeds: Vec<String>,
    /// Time between gossip rounds.
    pub gossip_interval_ms: u64,
    /// Failure detector: phi above which a node is dead (higher: slower and surer).
    pub phi_threshold: f64,
    /// A live node not heard from for this long is shown as `suspect`.
    pub suspect_after_ms: u64,
    /// How long a dead node stays listed before it is forgotten.
    pub dead_node_grace_sec: u64,
    /// How long a delete is remembered (see ARCHITECTURE.md: a node away longer rejoins empty).
    pub tombstone_ttl_sec: u64,
    /// Simulations only (`mesh-agent run --sim-net-faults FILE`, a hidden flag; no config key
    /// or variable sets it): loss and delay injected under quinn, as the file says.
    #[serde(skip)]
    pub sim_net_faults: Option<PathBuf>,
}

impl Default for MeshConfig {
    fn default() -> MeshConfig {
        MeshConfig {
            tls_dir: None,
            cluster_id: "mesh-agent".into(),
            gossip_listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            gossip_advertise: None,
            seeds: Vec::new(),
            gossip_interval_ms: 200,
            phi_threshold: 8.0,
            suspect_after_ms: 2_000,
            dead_node_grace_sec: 24 * 3600,
            tombstone_ttl_sec: 7 * 24 * 3600,
            sim_net_faults: None,
        }
    }
}

impl MeshConfig {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(10..=60_000).contains(&self.gossip_interval_ms) {
            return Err(InvalidSetting::new(
                "mesh.gossip_interval_ms",
                "must be between 10 and 60000",
            ));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(InvalidSetting::new(
                "mesh.phi_threshold",
                "must be a positive number",
            ));
        }
        if self.cluster_id.is_empty() {
            return Err(InvalidSetting::new("mesh.cluster_id", "must not be empty"));
        }
        if self.tombstone_ttl_sec < 60 {
            return Err(InvalidSetting::new(
                "mesh.tombstone_ttl_sec",
                "must be at least 60",
            ));
        }
        for seed in &self.seeds {
            if !seed.contains(':') {
                return Err(InvalidSetting::new(
                    "mesh.seeds",
                    format!("`{seed}` is not host:port"),
                ));
            }
        }
        Ok(())
    }

    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip_interval_ms)
    }

    pub fn suspect_after(&self) -> Duration {
        Duration::from_millis(self.suspect_after_ms)
    }

    pub fn dead_node_grace(&self) -> Duration {
        Duration::from_secs(self.dead_node_grace_sec)
    }

    pub fn tombstone_ttl(&self) -> Duration {
        Duration::from_secs(self.tombstone_ttl_sec)
    }
}
