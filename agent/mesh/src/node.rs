//! A running mesh node ([`Mesh`]): binds the gossip socket, joins through the seeds, publishes this
//! node's policy revision, and pulls from peers that are ahead.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use mesh_proto::mesh::{Hello, MESH_PROTOCOL};
use serde::Serialize;
use tracing::{debug, info, warn};

use agent_identity::TlsFiles;
use agent_store::{MergeOutcome, Store};

use crate::config::MeshConfig;
use crate::error::MeshError;
use crate::gossip::QuicTransport;
use crate::identity::Identity;
use crate::links::{Links, QuicLinks, RequestHandler};
use crate::members::{self, Heartbeats, KEY_REVISION, KEY_VERSION, Member, MemberState};
use crate::metrics::MeshMetrics;
use crate::shared::{self, SharedView, SharedWatch};
use crate::sync::{self, PULLS_PER_ROUND, PeerRevision, Puller};
use crate::tls;
use crate::transport::Net;

/// Heartbeat intervals the failure detector keeps per peer (20 s of history at the default 200 ms
/// interval). chitchat allocates the whole window for every peer it has heard of: at its
/// default of 1,000 a node of a 1,000-node mesh held 8 MB of windows, and a 1,000-node simulation
/// 11.8 GB.
const FAILURE_DETECTOR_WINDOW: usize = 100;

/// Pull tasks alive at most, those that gave up their slot included.
const MAX_PULL_TASKS: usize = 16;

/// Called after changes from a peer were merged into the store.
pub type OnMerged = Arc<dyn Fn(MergeOutcome) + Send + Sync>;

/// A running mesh node.
pub struct Mesh {
    node_id: String,
    config: MeshConfig,
    advertise: SocketAddr,
    chitchat: ChitchatHandle,
    links: Arc<dyn Links>,
    /// The QUIC network under `links`, when that is what they are (partition tests block it).
    quic: Option<Arc<Net>>,
    store: Arc<Store>,
    heartbeats: Arc<Heartbeats>,
    shared: SharedWatch,
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
    /// Joins (or starts) the mesh as `node_id` over QUIC with mutual TLS, with the certificates
    /// in `config.tls_dir`. Fails if there is no `tls_dir`, the TLS material is missing or
    /// invalid, or the gossip address cannot be bound.
    pub async fn start(
        node_id: &str,
        config: MeshConfig,
        store: Arc<Store>,
        metrics: MeshMetrics,
        on_merged: OnMerged,
    ) -> Result<Mesh, MeshError> {
        let tls_dir = config.tls_dir.clone().ok_or(MeshError::NoTlsDir)?;
        let files = TlsFiles::read(&tls_dir, node_id)?;
        let identity = Identity::from_files(node_id, &tls_dir, &files)?;
        let listen_err = |cause| MeshError::Listen {
            addr: config.gossip_listen,
            cause,
        };
        let socket = UdpSocket::bind(config.gossip_listen).map_err(listen_err)?;
        socket.set_nonblocking(true).map_err(listen_err)?;
        let listen = socket.local_addr().map_err(listen_err)?;
        let advertise = advertise_addr(&config, listen.port());
        let hello = Hello {
            protocol: MESH_PROTOCOL,
            cluster_id: config.cluster_id.clone(),
            node_id: node_id.to_owned(),
            gossip_addr: advertise.to_string(),
        };
        let verifier = Arc::clone(&identity.verifier);
        let server = tls::server_config(&files)?;
        let client = tls::client_config(&files)?;
        let stats = metrics.clone();
        let faults = config.sim_net_faults.clone().map(crate::faults::watch);
        let mut quic = None;
        let mesh = Mesh::start_on(
            node_id,
            config,
            (listen, advertise),
            store,
            identity,
            metrics,
            on_merged,
            |handler| {
                let (net, inbound) = Net::bind(
                    socket, server, client, hello, verifier, handler, stats, faults,
                )?;
                quic = Some(Arc::clone(&net));
                let transport = QuicTransport::new(Arc::clone(&net), inbound);
                Ok(Arc::new(QuicLinks::new(net, transport)) as Arc<dyn Links>)
            },
        )
        .await?;
        Ok(Mesh { quic, ..mesh })
    }

    /// Joins (or starts) the mesh as `node_id` over the links `links` makes (given the handler
    /// that answers this node's pull requests), listening at `listen` and reached by peers at
    /// `advertise`. The QUIC daemon and the simulations both start here.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_on(
        node_id: &str,
        config: MeshConfig,
        (listen, advertise): (SocketAddr, SocketAddr),
        store: Arc<Store>,
        identity: Identity,
        metrics: MeshMetrics,
        on_merged: OnMerged,
        links: impl FnOnce(RequestHandler) -> Result<Arc<dyn Links>, MeshError>,
    ) -> Result<Mesh, MeshError> {
        let node_id = node_id.to_owned();
        let Identity { signer, verifier } = identity;
        store.set_signer(signer);
        let signed = {
            let store = Arc::clone(&store);
            agent_base::blocking::run(move || store.sign_own_changes())
                .await
                .map_err(MeshError::task)??
        };
        if signed > 0 {
            info!(signed, "signed changes made while this node ran alone");
        }

        let stale = Arc::new(AtomicBool::new(false));
        let ttl_ms = config.tombstone_ttl().as_millis() as u64;
        if let (Some(last), true) = (store.last_synced_ms()?, store.replica_revision()?.head > 0)
            && agent_base::clock::now_ms().saturating_sub(last) > ttl_ms
        {
            warn!(
                last_synced_ms = last,
                "away longer than the tombstone TTL: this node will take a peer's policy set before handing its own on"
            );
            stale.store(true, Ordering::Release);
        }

        let handler: RequestHandler = {
            let store = Arc::clone(&store);
            let stale = Arc::clone(&stale);
            Arc::new(move |request| sync::serve(&store, &stale, request))
        };
        let links = links(handler)?;

        let generation = agent_base::clock::now_ms();
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(node_id.clone(), generation, advertise),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval(),
            listen_addr: listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: FAILURE_DETECTOR_WINDOW,
                max_interval: Duration::from_secs(10),
                initial_interval: config.gossip_interval() * 5,
                dead_node_grace_period: config.dead_node_grace(),
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
        let chitchat = spawn_chitchat(chitchat_config, initial, links.gossip())
            .await
            .map_err(|err| MeshError::Gossip(format!("{err:#}")))?;
        info!(node_id = %node_id, cluster_id = %config.cluster_id, listen = %listen, advertise = %advertise, seeds = ?config.seeds, "joined the mesh");

        let puller = Arc::new(Puller {
            links: Arc::clone(&links),
            store: Arc::clone(&store),
            verifier,
            stale,
            tombstone_ttl_ms: ttl_ms,
            metrics: metrics.clone(),
        });
        let heartbeats = Arc::new(Heartbeats::default());
        let (shared, shared_task) = shared::watch(&chitchat.chitchat()).await;
        let tasks = vec![
            shared_task,
            tokio::spawn(publish_revision(chitchat.chitchat(), Arc::clone(&store))),
            tokio::spawn(pull_loop(
                chitchat.chitchat(),
                Arc::clone(&heartbeats),
                puller,
                on_merged,
                config.gossip_interval(),
                config.suspect_after(),
            )),
            tokio::spawn(collect_tombstones(
                Arc::clone(&store),
                config.tombstone_ttl(),
            )),
        ];
        Ok(Mesh {
            node_id,
            config,
            advertise,
            chitchat,
            links,
            quic: None,
            store,
            heartbeats,
            shared,
            tasks,
        })
    }

    /// Publishes shared values about this node (see [`shared`](crate::shared)); unchanged values
    /// are not gossiped again.
    pub async fn publish(&self, values: Vec<(&str, String)>) {
        let chitchat = self.chitchat.chitchat();
        let mut guard = chitchat.lock().await;
        let state = guard.self_node_state();
        for (key, value) in values {
            state.set(format!("{}{key}", shared::SHARED_PREFIX), value);
        }
    }

    /// Every known member with its shared values, as this node sees them now.
    pub async fn shared_view(&self) -> SharedView {
        let chitchat = self.chitchat.chitchat();
        let guard = chitchat.lock().await;
        shared::view(&guard)
    }

    /// Notified when a member's shared values or the set of live members change. Each call
    /// gives a notifier of its own: call it once per watcher, and keep it.
    pub fn shared_changed(&self) -> Arc<tokio::sync::Notify> {
        self.shared.subscribe()
    }

    /// The QUIC network, for a node started with [`Mesh::start`].
    pub fn net(&self) -> Option<&Arc<Net>> {
        self.quic.as_ref()
    }

    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Every known node (`GET /mesh/members`).
    pub async fn members(&self) -> Vec<Member> {
        let chitchat = self.chitchat.chitchat();
        let guard = chitchat.lock().await;
        members::members(&guard, &self.heartbeats, self.config.suspect_after())
    }

    /// How many distinct node ids `counted` accepts among the nodes chitchat's failure detector
    /// holds live now (this node included; a node just restarted, live in two generations, counts
    /// once). A cheap probe for simulations: no member views are built.
    pub async fn count_live(&self, counted: impl Fn(&str) -> bool) -> usize {
        let chitchat = self.chitchat.chitchat();
        let guard = chitchat.lock().await;
        let mut seen = std::collections::HashSet::new();
        guard
            .live_nodes()
            .filter(|id| counted(&id.node_id) && seen.insert(&*id.node_id))
            .count()
    }

    /// This node's view in one object (`GET /mesh`).
    pub async fn summary(&self) -> Result<MeshSummary, MeshError> {
        let members = self.members().await;
        let store = Arc::clone(&self.store);
        let revision = agent_base::blocking::run(move || store.replica_revision())
            .await
            .map_err(MeshError::task)??;
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
            cluster_id: self.config.cluster_id.clone(),
            node_id: self.node_id.clone(),
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
        self.links.close().await;
    }
}

/// The address peers reach this node at (see `MeshConfig::gossip_advertise`).
fn advertise_addr(config: &MeshConfig, port: u16) -> SocketAddr {
    if let Some(addr) = config.gossip_advertise {
        return addr;
    }
    if !config.gossip_listen.ip().is_unspecified() {
        return SocketAddr::new(config.gossip_listen.ip(), port);
    }
    // The local address of the route to the first seed: what that seed would see us as.
    for seed in &config.seeds {
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
    warn!(listen = %config.gossip_listen, "no gossip_advertise and no reachable seed: advertising 127.0.0.1; set mesh.gossip_advertise for a multi-host mesh");
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
            match agent_base::blocking::run(move || store.replica_revision())
                .await
                .map_err(MeshError::task)
            {
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

/// Each gossip round: start pulls from live peers that are ahead, up to `PULLS_PER_ROUND` in flight.
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
    let mut last_marked: Option<tokio::time::Instant> = None;
    let mut round: usize = 0;
    // Pulls run beside the rounds, at most `PULLS_PER_ROUND` at once and one per peer: a peer
    // that answers slowly (a starved CPU, a lossy link) holds one slot until its request times
    // out, not every round behind it. Dropping the set (the loop aborted) aborts them.
    let mut pulls = tokio::task::JoinSet::new();
    let mut pulling: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        ticker.tick().await;
        round = round.wrapping_add(1);
        while let Some(done) = pulls.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(err) => err.id(),
            };
            pulling.remove(&id);
        }
        let (mine, peers) = {
            let guard = chitchat.lock().await;
            let me = guard.self_chitchat_id().clone();
            let mine = guard
                .node_state(&me)
                .and_then(|s| s.get(KEY_REVISION))
                .and_then(PeerRevision::parse);
            // Noting heartbeats every round makes `heartbeat_age_ms` accurate to a round.
            let (counts, converged) = members::tally(
                &guard,
                &heartbeats,
                suspect_after,
                mine.as_ref().map(|r| r.digest.as_str()),
            );
            record_members(&puller.metrics, counts, converged);
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
        // A pull from a peer no longer seen live gives up its slot: it would hold it until its
        // request timed out (10 s), and a node that had just seen peers die could not pull from
        // the living meanwhile (the simulation's `churn` scenario found a write stuck at a fifth
        // of the nodes for 5 s). It is not aborted: one that reached its merge must still call
        // `on_merged`; the rest ends at the timeout.
        pulling.retain(|_, node_id| peers.iter().any(|(id, _, _)| id == node_id));
        let Some(mine) = mine else { continue };
        let stale = puller.stale.load(Ordering::Acquire);
        if !stale
            && peers.iter().any(|(_, _, r)| r.digest == mine.digest)
            && last_marked.is_none_or(|at| at.elapsed() > Duration::from_secs(60))
        {
            let store = Arc::clone(&puller.store);
            if agent_base::blocking::run(move || store.mark_synced())
                .await
                .map_err(MeshError::task)
                .is_ok()
            {
                last_marked = Some(tokio::time::Instant::now());
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
        // Pulls that gave up their slot still run until their request times out; peers that
        // flap between live and dead must not pile them up.
        let room = if pulls.len() >= MAX_PULL_TASKS {
            0
        } else {
            (if stale { 1 } else { PULLS_PER_ROUND }).saturating_sub(pulling.len())
        };
        // One pull per peer: not one already running, and one generation of a node that was
        // just restarted (both are live for a while).
        let mut busy: Vec<String> = pulling.values().cloned().collect();
        ahead.retain(|(node_id, _, _)| {
            let free = !busy.contains(node_id);
            if free {
                busy.push(node_id.clone());
            }
            free
        });
        for (node_id, addr, revision) in ahead.into_iter().take(room) {
            puller.metrics.pulls.inc();
            let puller = Arc::clone(&puller);
            let on_merged = Arc::clone(&on_merged);
            let peer = node_id.clone();
            let task = pulls.spawn(async move {
                match puller.pull(&peer, addr, &revision).await {
                    Ok(outcome) => {
                        if outcome.merge.applied > 0
                            || outcome.merge.policies_changed
                            || outcome.merge.documents_changed
                            || outcome.merge.rollouts_changed
                        {
                            on_merged(outcome.merge);
                        }
                    }
                    Err(err) => {
                        puller.metrics.pull_failures.inc();
                        debug!(peer = %peer, error = %err, "pull failed");
                    }
                }
            });
            pulling.insert(task.id(), node_id);
        }
    }
}

fn record_members(metrics: &MeshMetrics, counts: [i64; 3], converged: bool) {
    for (state, count) in ["alive", "suspect", "dead"].into_iter().zip(counts) {
        metrics
            .members
            .get_or_create(&crate::metrics::MemberStateLabel { state })
            .set(count);
    }
    metrics.converged.set(i64::from(converged));
}

/// Drops expired tombstones once an hour.
async fn collect_tombstones(store: Arc<Store>, ttl: Duration) {
    let mut ticker = tokio::time::interval(Duration::from_secs(3600));
    loop {
        ticker.tick().await;
        let horizon = agent_base::clock::now_ms().saturating_sub(ttl.as_millis() as u64);
        let store = Arc::clone(&store);
        match agent_base::blocking::run(move || store.drop_tombstones_before(horizon))
            .await
            .map_err(MeshError::task)
        {
            Ok(Ok(0)) => {}
            Ok(Ok(dropped)) => info!(dropped, "expired tombstones dropped"),
            Ok(Err(err)) => warn!(error = %err, "cannot drop expired tombstones"),
            Err(_) => {}
        }
    }
}
