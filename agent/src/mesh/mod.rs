//! The mesh: membership and failure detection (chitchat) over QUIC with mutual TLS, and policy
//! rollout by pulling signed changes from peers that are ahead.
//!
//! Gossip feeds the store: this module reads and writes only the [`Store`]; after a merge it calls
//! the `on_merged` callback the daemon gives it, which reloads the policy services (so the mesh
//! never reaches up into the API's services).

pub mod codec;
pub mod members;
pub mod metrics;
pub mod sync;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod transport;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use chitchat::transport::Transport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use mesh_proto::mesh::{Hello, MESH_PROTOCOL};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::identity::{Signer, TlsFiles, Verifier};
use crate::store::{MergeOutcome, Store};
use members::{Heartbeats, KEY_REVISION, KEY_VERSION, Member, MemberState};
use metrics::MeshMetrics;
use sync::{PULLS_PER_ROUND, PeerRevision, Puller};
use transport::Net;

/// Everything the mesh needs to know, resolved from the config.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub node_id: String,
    pub tls_dir: PathBuf,
    pub cluster_id: String,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    pub suspect_after: Duration,
    pub dead_node_grace: Duration,
    pub tombstone_ttl: Duration,
}

impl MeshSettings {
    pub fn from_config(node_id: &str, config: &crate::config::MeshConfig) -> Option<MeshSettings> {
        Some(MeshSettings {
            node_id: node_id.to_owned(),
            tls_dir: config.tls_dir.clone()?,
            cluster_id: config.cluster_id.clone(),
            listen: config.gossip_listen,
            advertise: config.gossip_advertise,
            seeds: config.seeds.clone(),
            gossip_interval: config.gossip_interval(),
            phi_threshold: config.phi_threshold,
            suspect_after: Duration::from_millis(config.suspect_after_ms),
            dead_node_grace: Duration::from_secs(config.dead_node_grace_sec),
            tombstone_ttl: Duration::from_secs(config.tombstone_ttl_sec),
        })
    }
}

/// Called after changes from a peer were merged into the store.
pub type OnMerged = Arc<dyn Fn(MergeOutcome) + Send + Sync>;

/// A running mesh node.
pub struct Mesh {
    settings: MeshSettings,
    advertise: SocketAddr,
    chitchat: ChitchatHandle,
    net: Arc<Net>,
    store: Arc<Store>,
    heartbeats: Arc<Heartbeats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// This node's view of the mesh, in one object (`GET /mesh`).
#[derive(Debug, Clone, Serialize)]
pub struct MeshSummary {
    pub cluster_id: String,
    pub node_id: String,
    pub gossip_addr: String,
    pub policy_revision: members::RevisionView,
    pub members: StateCounts,
    /// True when every live member reports this node's digest.
    pub converged: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StateCounts {
    pub alive: usize,
    pub suspect: usize,
    pub dead: usize,
}

impl Mesh {
    /// Joins (or starts) the mesh. Fails if the TLS material is missing or invalid, or the
    /// gossip address cannot be bound.
    pub async fn start(
        settings: MeshSettings,
        store: Arc<Store>,
        metrics: MeshMetrics,
        on_merged: OnMerged,
    ) -> anyhow::Result<Mesh> {
        let files = TlsFiles::read(&settings.tls_dir, &settings.node_id)?;
        let verifier = Arc::new(Verifier::new(&files.ca)?);
        verifier
            .check_node_cert(&settings.node_id, &files.cert)
            .with_context(|| {
                format!(
                    "the certificate in {} for this node",
                    settings.tls_dir.display()
                )
            })?;
        let signer = Arc::new(Signer::new(&settings.node_id, &files)?);
        store.set_signer(Arc::clone(&signer));
        let signed = {
            let store = Arc::clone(&store);
            tokio::task::spawn_blocking(move || store.sign_own_changes()).await??
        };
        if signed > 0 {
            info!(signed, "signed changes made while this node ran alone");
        }

        let stale = Arc::new(AtomicBool::new(false));
        let ttl_ms = settings.tombstone_ttl.as_millis() as u64;
        if let (Some(last), true) = (store.last_synced_ms()?, store.replica_revision()?.head > 0)
            && crate::clock::now_ms().saturating_sub(last) > ttl_ms
        {
            warn!(
                last_synced_ms = last,
                "away longer than the tombstone TTL: this node will take a peer's policy set before handing its own on"
            );
            stale.store(true, Ordering::Release);
        }

        let socket = UdpSocket::bind(settings.listen)
            .with_context(|| format!("cannot listen for gossip on {}/UDP", settings.listen))?;
        socket.set_nonblocking(true)?;
        let listen = socket.local_addr()?;
        let advertise = advertise_addr(&settings, listen.port());
        let hello = Hello {
            protocol: MESH_PROTOCOL,
            cluster_id: settings.cluster_id.clone(),
            node_id: settings.node_id.clone(),
            gossip_addr: advertise.to_string(),
        };
        let handler = {
            let store = Arc::clone(&store);
            let stale = Arc::clone(&stale);
            Arc::new(move |request| sync::serve(&store, &stale, request))
        };
        let (net, transport) = Net::bind(
            socket,
            tls::server_config(&files)?,
            tls::client_config(&files)?,
            hello,
            Arc::clone(&verifier),
            handler,
            metrics.clone(),
        )?;

        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(settings.node_id.clone(), generation, advertise),
            cluster_id: settings.cluster_id.clone(),
            gossip_interval: settings.gossip_interval,
            listen_addr: listen,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: settings.phi_threshold,
                sampling_window_size: 1_000,
                max_interval: Duration::from_secs(10),
                initial_interval: settings.gossip_interval * 5,
                dead_node_grace_period: settings.dead_node_grace,
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            // Every node of a mesh runs this build, so all decode V1 (compressed digests).
            protocol_version: ProtocolVersion::V1,
        };
        let revision = store.replica_revision()?;
        let initial = vec![
            (
                KEY_REVISION.to_owned(),
                PeerRevision {
                    incarnation: revision.incarnation,
                    head: revision.head,
                    digest: revision.digest,
                }
                .encode(),
            ),
            (KEY_VERSION.to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ];
        let chitchat = spawn_chitchat(config, initial, &transport as &dyn Transport).await?;
        info!(node_id = %settings.node_id, cluster_id = %settings.cluster_id, listen = %listen, advertise = %advertise, seeds = ?settings.seeds, "joined the mesh (gossip over QUIC, mutual TLS)");

        let puller = Arc::new(Puller {
            net: Arc::clone(&net),
            store: Arc::clone(&store),
            verifier,
            stale,
            tombstone_ttl_ms: ttl_ms,
            metrics: metrics.clone(),
        });
        let heartbeats = Arc::new(Heartbeats::default());
        let tasks = vec![
            tokio::spawn(publish_revision(chitchat.chitchat(), Arc::clone(&store))),
            tokio::spawn(pull_loop(
                chitchat.chitchat(),
                Arc::clone(&heartbeats),
                puller,
                on_merged,
                settings.gossip_interval,
                settings.suspect_after,
            )),
            tokio::spawn(collect_tombstones(
                Arc::clone(&store),
                settings.tombstone_ttl,
            )),
        ];
        Ok(Mesh {
            settings,
            advertise,
            chitchat,
            net,
            store,
            heartbeats,
            tasks,
        })
    }

    pub fn net(&self) -> &Arc<Net> {
        &self.net
    }

    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise
    }

    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    /// Every known node (`GET /mesh/members`).
    pub async fn members(&self) -> Vec<Member> {
        let chitchat = self.chitchat.chitchat();
        let guard = chitchat.lock().await;
        members::members(&guard, &self.heartbeats, self.settings.suspect_after)
    }

    /// This node's view in one object (`GET /mesh`).
    pub async fn summary(&self) -> anyhow::Result<MeshSummary> {
        let members = self.members().await;
        let store = Arc::clone(&self.store);
        let revision = tokio::task::spawn_blocking(move || store.replica_revision()).await??;
        let mut counts = StateCounts::default();
        let mut converged = true;
        for member in &members {
            match member.state {
                MemberState::Alive => counts.alive += 1,
                MemberState::Suspect => counts.suspect += 1,
                MemberState::Dead => counts.dead += 1,
            }
            if member.state != MemberState::Dead
                && !member.is_self
                && member.policy_revision.as_ref().map(|r| r.digest.as_str())
                    != Some(revision.digest.as_str())
            {
                converged = false;
            }
        }
        Ok(MeshSummary {
            cluster_id: self.settings.cluster_id.clone(),
            node_id: self.settings.node_id.clone(),
            gossip_addr: self.advertise.to_string(),
            policy_revision: members::RevisionView {
                head: revision.head,
                digest: revision.digest,
            },
            members: counts,
            converged,
        })
    }

    /// Leaves: stops gossip and closes every connection.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Err(err) = self.chitchat.shutdown().await {
            debug!(error = %err, "chitchat shutdown");
        }
        self.net.close().await;
    }
}

/// The address peers reach this node at (see `MeshConfig::gossip_advertise`).
fn advertise_addr(settings: &MeshSettings, port: u16) -> SocketAddr {
    if let Some(addr) = settings.advertise {
        return addr;
    }
    if !settings.listen.ip().is_unspecified() {
        return SocketAddr::new(settings.listen.ip(), port);
    }
    // The local address of the route to the first seed: what that seed would see us as.
    for seed in &settings.seeds {
        let Ok(mut addrs) = std::net::ToSocketAddrs::to_socket_addrs(seed.as_str()) else {
            continue;
        };
        let Some(target) = addrs.next() else { continue };
        let bind = if target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        if let Ok(probe) = UdpSocket::bind(bind)
            && probe.connect(target).is_ok()
            && let Ok(local) = probe.local_addr()
        {
            return SocketAddr::new(local.ip(), port);
        }
    }
    warn!(listen = %settings.listen, "no gossip_advertise and no reachable seed: advertising 127.0.0.1; set mesh.gossip_advertise for a multi-host mesh");
    SocketAddr::new([127, 0, 0, 1].into(), port)
}

/// Publishes this node's revision in gossip whenever the store changes.
async fn publish_revision(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    store: Arc<Store>,
) {
    let mut changes = store.subscribe();
    while changes.changed().await.is_ok() {
        let revision = {
            let store = Arc::clone(&store);
            match tokio::task::spawn_blocking(move || store.replica_revision()).await {
                Ok(Ok(revision)) => revision,
                Ok(Err(err)) => {
                    warn!(error = %err, "cannot read the policy revision");
                    continue;
                }
                Err(_) => continue,
            }
        };
        let text = PeerRevision {
            incarnation: revision.incarnation,
            head: revision.head,
            digest: revision.digest,
        }
        .encode();
        chitchat
            .lock()
            .await
            .self_node_state()
            .set(KEY_REVISION, text);
    }
}

/// Each gossip round: pull from up to `PULLS_PER_ROUND` live peers that are ahead.
async fn pull_loop(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    heartbeats: Arc<Heartbeats>,
    puller: Arc<Puller>,
    on_merged: OnMerged,
    interval: Duration,
    suspect_after: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_marked: Option<std::time::Instant> = None;
    let mut round: usize = 0;
    loop {
        ticker.tick().await;
        round = round.wrapping_add(1);
        let (mine, peers) = {
            let guard = chitchat.lock().await;
            // Noting heartbeats every round makes `heartbeat_age_ms` accurate to a round.
            let view = members::members(&guard, &heartbeats, suspect_after);
            record_members(&puller.metrics, &view);
            let me = guard.self_chitchat_id().clone();
            let mine = guard
                .node_state(&me)
                .and_then(|s| s.get(KEY_REVISION))
                .and_then(PeerRevision::parse);
            let peers: Vec<(String, SocketAddr, PeerRevision)> = guard
                .live_nodes()
                .filter(|id| **id != me)
                .filter_map(|id| {
                    let revision = guard
                        .node_state(id)?
                        .get(KEY_REVISION)
                        .and_then(PeerRevision::parse)?;
                    Some((id.node_id.to_string(), id.gossip_advertise_addr, revision))
                })
                .collect();
            (mine, peers)
        };
        let Some(mine) = mine else { continue };
        let stale = puller.stale.load(Ordering::Acquire);
        if !stale
            && peers.iter().any(|(_, _, r)| r.digest == mine.digest)
            && last_marked.is_none_or(|at| at.elapsed() > Duration::from_secs(60))
        {
            let store = Arc::clone(&puller.store);
            if tokio::task::spawn_blocking(move || store.mark_synced())
                .await
                .is_ok()
            {
                last_marked = Some(std::time::Instant::now());
            }
        }
        let mut ahead = Vec::new();
        for (node_id, addr, revision) in peers {
            if revision.digest == mine.digest && !stale {
                continue;
            }
            let cursor = puller
                .store
                .peer_cursor(&node_id, revision.incarnation)
                .unwrap_or(0);
            if revision.head > cursor || stale {
                ahead.push((node_id, addr, revision));
            }
        }
        // Take turns among the peers ahead, so one slow peer does not hold every round.
        if !ahead.is_empty() {
            let turn = round % ahead.len();
            ahead.rotate_left(turn);
        }
        for (node_id, addr, revision) in
            ahead
                .into_iter()
                .take(if stale { 1 } else { PULLS_PER_ROUND })
        {
            puller.metrics.pulls.inc();
            match puller.pull(&node_id, addr, &revision).await {
                Ok(outcome) => {
                    if outcome.merge.applied > 0
                        || outcome.merge.policies_changed
                        || outcome.merge.documents_changed
                    {
                        on_merged(outcome.merge);
                    }
                }
                Err(err) => {
                    puller.metrics.pull_failures.inc();
                    debug!(peer = %node_id, error = %err, "pull failed");
                }
            }
        }
    }
}

fn record_members(metrics: &MeshMetrics, view: &[Member]) {
    let mut counts = [0i64; 3];
    let mine = view
        .iter()
        .find(|m| m.is_self)
        .and_then(|m| m.policy_revision.as_ref().map(|r| r.digest.clone()));
    let mut converged = true;
    for member in view {
        let slot = match member.state {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
        };
        counts[slot] += 1;
        if member.state != MemberState::Dead
            && member.policy_revision.as_ref().map(|r| &r.digest) != mine.as_ref()
        {
            converged = false;
        }
    }
    for (state, count) in ["alive", "suspect", "dead"].into_iter().zip(counts) {
        metrics
            .members
            .get_or_create(&metrics::MemberStateLabel { state })
            .set(count);
    }
    metrics.converged.set(i64::from(converged));
}

/// Drops expired tombstones once an hour.
async fn collect_tombstones(store: Arc<Store>, ttl: Duration) {
    let mut ticker = tokio::time::interval(Duration::from_secs(3600));
    loop {
        ticker.tick().await;
        let horizon = crate::clock::now_ms().saturating_sub(ttl.as_millis() as u64);
        let store = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || store.drop_tombstones_before(horizon)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(dropped)) => info!(dropped, "expired tombstones dropped"),
            Ok(Err(err)) => warn!(error = %err, "cannot drop expired tombstones"),
            Err(_) => {}
        }
    }
}
