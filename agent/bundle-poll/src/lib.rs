//! The bundle poller: for each `[[bundles]]` entry, one alive node of the mesh at a time
//! downloads the bundle from its server, and the mesh hands it to every other node (one download
//! per mesh, not per node). Which node polls is decided without messages: the alive members are
//! ranked by rendezvous hashing of (bundle name, node id) with a pinned hash (`rank.rs`), and only
//! the first-ranked polls; when it dies the next one is first. Requests carry the ETag of the
//! replicated bundle document (`If-None-Match`), so a new poller still gets `304 Not Modified`
//! for what the mesh already has (`fetch.rs`). A download is written through
//! `RegoService::put_bundle`, verified like a push. The same task gossips this node's active
//! bundle revisions (`bundles`, shared value), which `/mesh/members` shows.
//!
//! Its own crate because it does HTTP (reqwest) and reads the mesh: `agent-policy` holds no
//! HTTP type, and the mesh knows no policy.

mod fetch;
mod rank;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use agent_mesh::Mesh;
use agent_policy::opa::RegoService;
use agent_policy::opa::bundle::SourceConfig;

pub use fetch::{Fetcher, PollError};
pub use rank::{first, ranking, weight};

/// The shared value this node gossips its active bundles under (JSON: name -> revision).
pub const BUNDLES_KEY: &str = "bundles";

/// How long a node in a mesh that sees no peer waits before it polls alone (it may be the only
/// node, or not yet have heard of the others).
const ALONE_AFTER: Duration = Duration::from_secs(10);

/// The running poller.
pub struct Poller {
    task: JoinHandle<()>,
}

impl Poller {
    /// Stops polling; once it returns, the poller holds the mesh no longer.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Starts polling `sources` for this node (`node_id`), with `mesh` when the node has one.
/// `max_bytes` bounds a download (`bundle.max_bytes`).
pub fn spawn(
    rego: Arc<RegoService>,
    mesh: Option<Arc<Mesh>>,
    node_id: String,
    sources: Vec<SourceConfig>,
    max_bytes: u64,
) -> Result<Poller, PollError> {
    let fetchers = sources
        .into_iter()
        .map(|source| Fetcher::new(source, max_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let task = tokio::spawn(run(rego, mesh, node_id, fetchers));
    Ok(Poller { task })
}

async fn run(
    rego: Arc<RegoService>,
    mesh: Option<Arc<Mesh>>,
    node_id: String,
    fetchers: Vec<Fetcher>,
) {
    let started = Instant::now();
    let mut due: Vec<Instant> = fetchers.iter().map(|_| Instant::now()).collect();
    let mut published = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let revisions = serde_json::to_string(&rego.bundle_revisions()).unwrap_or_default();
        if let Some(mesh) = &mesh
            && revisions != published
        {
            mesh.publish(vec![(BUNDLES_KEY, revisions.clone())]).await;
            published = revisions;
        }
        if fetchers.is_empty() {
            continue;
        }
        let alive = match &mesh {
            Some(mesh) => {
                let view = mesh.shared_view().await;
                let mut alive: Vec<String> = view
                    .members
                    .iter()
                    .filter(|m| m.alive)
                    .map(|m| m.node_id.clone())
                    .collect();
                if !alive.contains(&node_id) {
                    alive.push(node_id.clone());
                }
                // Until a peer is seen, this node cannot tell whether it is first.
                if alive.len() == 1 && started.elapsed() < ALONE_AFTER {
                    continue;
                }
                alive
            }
            None => vec![node_id.clone()],
        };
        let now = Instant::now();
        for (fetcher, due) in fetchers.iter().zip(due.iter_mut()) {
            if now < *due {
                continue;
            }
            *due = now + fetcher.next_delay();
            if first(&alive, &fetcher.source.name) != Some(node_id.as_str()) {
                continue;
            }
            match fetcher.poll(&rego).await {
                Ok(Some(revision)) => info!(
                    bundle = %fetcher.source.name,
                    revision = %revision,
                    "bundle downloaded for the mesh"
                ),
                Ok(None) => {}
                Err(err) => {
                    warn!(bundle = %fetcher.source.name, error = %err, "bundle poll failed")
                }
            }
        }
    }
}
