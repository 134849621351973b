//! Many mesh-agent nodes in one process on real QUIC: each with its own redb file, QUIC endpoint
//! on loopback, certificates from one mesh CA, and chitchat: the real mesh code, minus the HTTP
//! API, on the real clock.
//!
//! In-process nodes can be cut off from each other ([`Cluster::partition`]): each node's network
//! drops every link to the other side's addresses, as a network split would. The runner
//! (`mesh-sim`) and the partition test use this.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_mesh::members::MemberState;
use agent_mesh::{Mesh, MeshConfig, OnMerged};
use agent_store::{PolicyFields, Store};
use anyhow::Context;
use tempfile::TempDir;

/// One node of a cluster; `mesh` is `None` while the node is stopped.
pub struct Node {
    pub id: String,
    pub store: Arc<Store>,
    pub mesh: Option<Mesh>,
    pub addr: SocketAddr,
    data_file: PathBuf,
}

/// How the nodes gossip.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    /// Seeds every node joins through (the first `seeds` nodes).
    pub seeds: usize,
}

impl Default for ClusterSettings {
    fn default() -> ClusterSettings {
        ClusterSettings {
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 8.0,
            seeds: 3,
        }
    }
}

pub struct Cluster {
    dir: TempDir,
    settings: ClusterSettings,
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `n` nodes named `node-0`... and waits until the mesh knows them.
    pub async fn start(n: usize, settings: ClusterSettings) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let tls = dir.path().join("tls");
        agent_identity::certs::init(&tls, false)?;
        let mut cluster = Cluster {
            dir,
            settings,
            nodes: Vec::with_capacity(n),
        };
        for i in 0..n {
            let id = format!("node-{i}");
            agent_identity::certs::issue(&tls, &id, 30)?;
            let data_file = cluster.dir.path().join(format!("{id}.redb"));
            let store = {
                let (path, id) = (data_file.clone(), id.clone());
                Arc::new(tokio::task::spawn_blocking(move || Store::open(&path, &id)).await??)
            };
            cluster.nodes.push(Node {
                id,
                store,
                mesh: None,
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                data_file,
            });
            cluster.start_node(i).await?;
        }
        Ok(cluster)
    }

    fn mesh_config(&self, i: usize) -> MeshConfig {
        let seeds = self
            .nodes
            .iter()
            .take(self.settings.seeds)
            .enumerate()
            .filter(|(j, node)| *j != i && node.addr.port() != 0)
            .map(|(_, node)| node.addr.to_string())
            .collect();
        let interval_ms = self.settings.gossip_interval.as_millis() as u64;
        MeshConfig {
            tls_dir: Some(self.dir.path().join("tls")),
            cluster_id: "sim".into(),
            gossip_listen: self.nodes[i].addr,
            gossip_advertise: None,
            seeds,
            gossip_interval_ms: interval_ms,
            phi_threshold: self.settings.phi_threshold,
            suspect_after_ms: interval_ms * 10,
            dead_node_grace_sec: 3600,
            tombstone_ttl_sec: 7 * 24 * 3600,
            sim_net_faults: None,
        }
    }

    /// Starts (or restarts, on its old address and data) node `i`.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let config = self.mesh_config(i);
        let node = &mut self.nodes[i];
        if node.mesh.is_some() {
            return Ok(());
        }
        let on_merged: OnMerged = Arc::new(|_| {});
        // A restarted node binds its old address, which the old socket may hold for a moment.
        let mut attempts = 0;
        let mesh = loop {
            match Mesh::start(
                &node.id,
                config.clone(),
                Arc::clone(&node.store),
                agent_mesh::MeshMetrics::default(),
                Arc::clone(&on_merged),
            )
            .await
            {
                Ok(mesh) => break mesh,
                Err(err) if attempts < 50 && format!("{err:#}").contains("in use") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(err).with_context(|| format!("starting {}", node.id)),
            }
        };
        node.addr = mesh.advertise_addr();
        node.mesh = Some(mesh);
        Ok(())
    }

    /// Stops node `i` abruptly: it leaves no word, the others must detect it.
    pub async fn stop_node(&mut self, i: usize) {
        if let Some(mesh) = self.nodes[i].mesh.take() {
            mesh.shutdown().await;
        }
    }

    /// Wipes node `i`'s data file (it must be stopped): it restarts as a new, empty node.
    pub async fn wipe_node(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.nodes[i].mesh.is_none(), "stop the node first");
        let node = &mut self.nodes[i];
        let path = node.data_file.clone();
        let id = node.id.clone();
        // The old store must be dropped before the file is re-created.
        node.store = Arc::new(
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_file(&path);
                Store::open(&path, &id)
            })
            .await??,
        );
        Ok(())
    }

    /// Cuts every link between the nodes of `a` and those of `b`, both ways.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for &i in a {
            for &j in b {
                if let (Some(x), Some(y)) = (
                    self.nodes[i].mesh.as_ref().and_then(Mesh::net),
                    self.nodes[j].mesh.as_ref().and_then(Mesh::net),
                ) {
                    x.block(self.nodes[j].addr);
                    y.block(self.nodes[i].addr);
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for x in self.nodes.iter().filter_map(|n| n.mesh.as_ref()?.net()) {
            for node in &self.nodes {
                x.unblock(node.addr);
            }
        }
    }

    /// Creates a policy at node `i`.
    pub fn create_policy(&self, i: usize, name: &str, priority: i64) -> anyhow::Result<u64> {
        let record = self.nodes[i].store.create(PolicyFields {
            name: name.into(),
            description: String::new(),
            definition_json: r#"{"condition":"incident.severity > 1","action":"restart"}"#.into(),
            active: true,
            priority,
        })?;
        Ok(record.id)
    }

    /// The digest of every running node's policy set.
    pub fn digests(&self) -> anyhow::Result<Vec<String>> {
        self.nodes
            .iter()
            .filter(|n| n.mesh.is_some())
            .map(|n| Ok(n.store.replica_revision()?.digest))
            .collect()
    }

    /// Polls `done` every 10 ms until it holds; returns how long that took, or `None` at `limit`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        mut done: impl FnMut(&Cluster) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Option<Duration>> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if done(self)? {
                return Ok(Some(start.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(None)
    }

    /// True when every running node holds policy `id` (written or merged).
    pub fn all_have(&self, id: u64) -> anyhow::Result<bool> {
        for node in self.nodes.iter().filter(|n| n.mesh.is_some()) {
            if node.store.get(id)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// How many running nodes other than `i` see node `i` in `state`, and how many run.
    pub async fn seen_as(&self, i: usize, state: MemberState) -> (usize, usize) {
        let target = &self.nodes[i].id;
        let mut seen = 0;
        let mut running = 0;
        for (j, node) in self.nodes.iter().enumerate() {
            let Some(mesh) = &node.mesh else { continue };
            if j == i {
                continue;
            }
            running += 1;
            let members = mesh.members().await;
            if members
                .iter()
                .any(|m| &m.node_id == target && m.state == state)
            {
                seen += 1;
            }
        }
        (seen, running)
    }

    /// (observer, node) pairs, both running, where the observer does not see the node alive.
    pub async fn not_alive_pairs(&self) -> usize {
        let running: std::collections::HashSet<&str> = self
            .nodes
            .iter()
            .filter(|n| n.mesh.is_some())
            .map(|n| n.id.as_str())
            .collect();
        let mut pairs = 0;
        for mesh in self.nodes.iter().filter_map(|n| n.mesh.as_ref()) {
            pairs += mesh
                .members()
                .await
                .iter()
                .filter(|m| running.contains(m.node_id.as_str()) && m.state != MemberState::Alive)
                .count();
        }
        pairs
    }

    /// Bytes of gossip sent by all running nodes so far (payload, and UDP on open connections).
    pub fn gossip_bytes(&self) -> (u64, u64) {
        let mut payload = 0;
        let mut udp = 0;
        for net in self.nodes.iter().filter_map(|n| n.mesh.as_ref()?.net()) {
            payload += net.stats.gossip_bytes_sent.get();
            udp += net.udp_bytes_sent();
        }
        (payload, udp)
    }

    /// Every running node's revision and what it sees of the others, for failure messages.
    pub async fn describe(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let Some(mesh) = &node.mesh else {
                out.push_str(&format!("{}: stopped\n", node.id));
                continue;
            };
            let revision = node.store.replica_revision();
            out.push_str(&format!(
                "{} {:?}:",
                node.id,
                revision.map(|r| (r.head, r.digest))
            ));
            for m in mesh.members().await {
                out.push_str(&format!(
                    " {}={:?}/{}",
                    m.node_id,
                    m.state,
                    m.policy_revision
                        .map(|r| format!("{}:{}", r.head, &r.digest[..6]))
                        .unwrap_or_default()
                ));
            }
            out.push('\n');
        }
        out
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
    }
}
