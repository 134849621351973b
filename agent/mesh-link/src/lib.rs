//! The wiring between the mesh and the decision layer, both ways: this node's incident summary,
//! claims and mesh actions go out as shared gossip values; every member's come back as the view
//! mesh facts read, after which the decider sends the mesh actions it is now first-ranked for.
//!
//! The exchange runs when a peer's values or the live set change (at once), when this node's
//! claims change (at once), and every `decisions.publish_interval_ms` (the window moves on).
//! Sending mesh actions runs in a task of its own: waiting for outbox room (a full outbox under
//! `block`) never stops this node from gossiping.
//!
//! Time is tokio's (a simulation pauses it) and the store is reached through
//! [`agent_base::blocking`], so the daemon and `mesh-sim`'s fast engine run this same code.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agent_base::clock::now_ms;
use agent_decision::Decider;
use agent_decision::facts::{MemberInput, MeshInput, PeerView};
use agent_mesh::{Mesh, SharedView};
use agent_store::Store;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

/// Distinct unreadable (peer, key) pairs logged at most; past it the set starts over.
const MAX_LOGGED: usize = 1024;
/// How often the settled membership is persisted at most.
const PERSIST_EVERY: Duration = Duration::from_secs(60);

/// The exchange and the actor, as two tasks; abort both to stop.
pub struct MeshLink {
    tasks: [JoinHandle<()>; 2],
}

impl MeshLink {
    /// Stops both tasks and waits until they let go of the mesh.
    pub async fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

pub fn spawn(mesh: Arc<Mesh>, decider: Arc<Decider>, store: Arc<Store>) -> MeshLink {
    let act = Arc::new(Notify::new());
    let actor = {
        let decider = Arc::clone(&decider);
        let act = Arc::clone(&act);
        tokio::spawn(async move {
            loop {
                act.notified().await;
                if let Err(err) = decider.act_on_mesh().await {
                    warn!(error = %err, "the mesh actions this node was to send could not be recorded");
                }
            }
        })
    };
    let exchange = tokio::spawn(async move {
        let changed = mesh.shared_changed();
        let config = *decider.config();
        let mut ticker = tokio::time::interval(Duration::from_millis(config.publish_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut logged = HashSet::new();
        let mut persisted: Option<(usize, Instant)> = None;
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = decider.mesh_actions_changed() => {}
                _ = ticker.tick() => {}
            }
            mesh.publish(decider.gossip_values()).await;
            // A summary older than two windows is a peer that stopped publishing unnoticed.
            let view = PeerView::from_input(
                input(mesh.shared_view().await),
                now_ms(),
                2 * config.window_ms(),
            );
            for (node, key, problem) in &view.unreadable {
                // Once per peer and key: a peer of a newer build would repeat it every round.
                if logged.len() >= MAX_LOGGED {
                    logged.clear();
                }
                if logged.insert((node.clone(), *key)) {
                    warn!(peer = %node, key = %key, problem = %problem, "a peer's shared gossip value cannot be read; ignored");
                }
            }
            // Never less than the floor still in force: a view that settled on the timeout
            // alone must not shrink what the next run counts a majority against.
            let known = view.known.max(view.known_floor);
            decider.set_peers(view);
            act.notify_one();
            if decider.mesh_settled()
                && persisted.is_none_or(|(n, at)| n != known && at.elapsed() >= PERSIST_EVERY)
            {
                let store = Arc::clone(&store);
                match agent_base::blocking::run(move || store.note_members_seen(known as u64)).await
                {
                    Ok(Ok(())) => persisted = Some((known, Instant::now())),
                    Ok(Err(err)) => warn!(error = %err, "cannot note the mesh's membership"),
                    Err(_) => {}
                }
            }
        }
    });
    MeshLink {
        tasks: [exchange, actor],
    }
}

fn input(view: SharedView) -> MeshInput {
    MeshInput {
        self_id: view.self_id,
        members: view
            .members
            .into_iter()
            .map(|member| MemberInput {
                node_id: member.node_id,
                alive: member.alive,
                values: member.values,
            })
            .collect(),
    }
}
