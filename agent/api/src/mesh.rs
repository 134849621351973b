//! `GET /mesh` (this node's view of the mesh in one object), `GET /mesh/members` (every node
//! it knows) and `GET /mesh/incidents` (the mesh-wide incidents it sees, and who sent each recent
//! mesh action). A node without a mesh answers with itself alone, so dashboards work either way.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use agent_mesh::{Member, MemberState, MeshSummary, RevisionView, StateCounts};

use super::{ApiError, AppState};

#[derive(Serialize)]
pub struct MeshView {
    /// `mesh`, or `single` for a node running alone (no TLS material).
    mode: &'static str,
    #[serde(flatten)]
    summary: MeshSummary,
}

pub async fn view(State(state): State<AppState>) -> Result<Json<MeshView>, ApiError> {
    Ok(Json(match &state.mesh {
        Some(mesh) => MeshView {
            mode: "mesh",
            summary: mesh
                .summary()
                .await
                .map_err(|err| ApiError::internal(&err))?,
        },
        None => {
            let revision = revision(&state).await?;
            MeshView {
                mode: "single",
                summary: MeshSummary {
                    cluster_id: String::new(),
                    node_id: state.node_id.to_string(),
                    gossip_addr: String::new(),
                    policy_revision: revision,
                    members: StateCounts {
                        alive: 1,
                        ..StateCounts::default()
                    },
                    converged: true,
                },
            }
        }
    }))
}

#[derive(Serialize)]
pub struct Members {
    members: Vec<MemberView>,
}

/// A member, with the revision of each OPA bundle it has activated (its gossiped
/// `bundles` value: a bundle is a unit of rollout).
#[derive(Serialize)]
pub struct MemberView {
    #[serde(flatten)]
    member: Member,
    bundles: std::collections::BTreeMap<String, String>,
}

/// The shared value each node gossips with its active bundles' revisions (JSON, name -> revision).
pub const BUNDLES_KEY: &str = "bundles";

pub async fn members(State(state): State<AppState>) -> Result<Json<Members>, ApiError> {
    let members = match &state.mesh {
        Some(mesh) => {
            let view = mesh.shared_view().await;
            mesh.members()
                .await
                .into_iter()
                .map(|member| {
                    let bundles = view
                        .members
                        .iter()
                        .find(|m| m.node_id == member.node_id)
                        .and_then(|m| m.values.iter().find(|(k, _)| k == BUNDLES_KEY))
                        .and_then(|(_, v)| serde_json::from_str(v).ok())
                        .unwrap_or_default();
                    MemberView { member, bundles }
                })
                .collect()
        }
        None => vec![MemberView {
            bundles: state.rego.bundle_revisions(),
            member: Member {
                node_id: state.node_id.to_string(),
                gossip_addr: String::new(),
                state: MemberState::Alive,
                heartbeat_age_ms: 0,
                policy_revision: Some(revision(&state).await?),
                agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                generation: 0,
                is_self: true,
            },
        }],
    };
    Ok(Json(Members { members }))
}

async fn revision(state: &AppState) -> Result<RevisionView, ApiError> {
    let store = Arc::clone(&state.store);
    let revision = tokio::task::spawn_blocking(move || store.replica_revision())
        .await
        .map_err(|err| ApiError::internal(&err))?
        .map_err(|err| ApiError::internal(&err))?;
    Ok(RevisionView {
        head: revision.head,
        digest: revision.digest,
    })
}

#[derive(Serialize)]
pub struct Incidents {
    #[serde(flatten)]
    incidents: agent_decision::facts::MeshIncidents,
    /// Recent mesh actions, newest first, with the node that sent each.
    actions: Vec<agent_decision::mesh_actions::RecentAction>,
}

pub async fn incidents(State(state): State<AppState>) -> Json<Incidents> {
    Json(Incidents {
        incidents: state.decider.mesh_incidents(),
        actions: state.decider.mesh_actions(),
    })
}
