//! The wiring between the mesh and the decision layer, both ways: this node's incident summary,
//! claims and mesh actions go out as shared gossip values; every member's come back as the view
//! mesh facts read, after which the decider sends the mesh actions it is now first-ranked for.
//!
//! It runs when a peer's values or the live set change (at once), when this node's claims change
//! (at once), and every `decisions.publish_interval_ms` (the sliding window moves on).

use std::sync::Arc;
use std::time::Duration;

use agent_decision::Decider;
use agent_decision::facts::{MemberInput, MeshInput, PeerView};
use agent_mesh::{Mesh, SharedView};
use tokio::task::JoinHandle;
use tracing::warn;

pub fn spawn(mesh: Arc<Mesh>, decider: Arc<Decider>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let changed = mesh.shared_changed();
        let mut ticker =
            tokio::time::interval(Duration::from_millis(decider.config().publish_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unreadable_logged = std::collections::HashSet::new();
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = decider.mesh_actions_changed() => {}
                _ = ticker.tick() => {}
            }
            mesh.publish(decider.gossip_values()).await;
            let view = PeerView::from_input(input(mesh.shared_view().await));
            for (node, problem) in &view.unreadable {
                // Once per peer and problem: a peer of a newer build would repeat it every round.
                if unreadable_logged.insert((node.clone(), problem.clone())) {
                    warn!(peer = %node, problem = %problem, "a peer's shared gossip value cannot be read; ignored");
                }
            }
            decider.set_peers(view);
            if let Err(err) = decider.act_on_mesh().await {
                warn!(error = %err, "the mesh actions this node was to send could not be recorded");
            }
        }
    })
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
