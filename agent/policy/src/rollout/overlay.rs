//! What the open rollouts ask of this node: the canary candidates it applies in place of their
//! subjects, the shadow versions it evaluates beside the active ones, and the subjects no
//! ordinary write may change meanwhile. Computed from the stored rollouts on every reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_proto::{DocKind, Hlc, PolicyRecord};
use serde_json::Value;
use tracing::warn;

use agent_store::{Store, StoreError};

use super::model::{Candidate, PolicyCandidate, Rollout, Subject};

/// The open rollouts' effect on one node.
#[derive(Debug, Clone, Default)]
pub struct Overlays {
    /// Incident rules this node runs a canary candidate of, by policy id: (rollout, candidate).
    pub policies: HashMap<u64, (String, PolicyCandidate)>,
    /// Shadow versions: (rollout, policy id, candidate).
    pub shadows: Vec<(String, u64, PolicyCandidate)>,
    /// Rego modules this node runs a canary candidate of: (rollout, module id, source).
    pub modules: Vec<(String, String, String)>,
    /// Data documents this node runs a canary candidate of: (rollout, path, value).
    pub data: Vec<(String, String, Value)>,
    /// Bundles this node runs a canary candidate of: (rollout, name, archive in base64).
    pub bundles: Vec<(String, String, String)>,
    /// Every subject with an open rollout, on any node, and the rollout's id.
    pub open: HashMap<Subject, String>,
}

impl Overlays {
    /// The overlays of `rollouts` on node `node_id`.
    pub fn of(rollouts: &[Rollout], node_id: &str) -> Overlays {
        let mut overlays = Overlays::default();
        for rollout in rollouts.iter().filter(|r| r.state.is_open()) {
            overlays
                .open
                .insert(rollout.subject.clone(), rollout.id.clone());
            let shadow = rollout.is_shadow();
            if !shadow && !rollout.applies_on(node_id) {
                continue;
            }
            let id = rollout.id.clone();
            match (&rollout.subject, &rollout.candidate) {
                (Subject::Policy { id: policy }, Candidate::Policy(candidate)) if shadow => {
                    overlays.shadows.push((id, *policy, candidate.clone()))
                }
                (Subject::Policy { id: policy }, Candidate::Policy(candidate)) => {
                    overlays.policies.insert(*policy, (id, candidate.clone()));
                }
                (Subject::RegoModule { id: module }, Candidate::RegoModule(text)) if !shadow => {
                    overlays.modules.push((id, module.clone(), text.clone()))
                }
                (Subject::Data { path }, Candidate::Data(value)) if !shadow => {
                    overlays.data.push((id, path.clone(), value.clone()))
                }
                (Subject::Bundle { name }, Candidate::Bundle(bundle)) if !shadow => overlays
                    .bundles
                    .push((id, name.clone(), bundle.archive.clone())),
                _ => {
                    warn!(rollout = %rollout.id, subject = %rollout.subject, "rollout's candidate does not fit its subject; ignored")
                }
            }
        }
        overlays
    }

    /// The open rollout of `subject`, if any.
    pub fn open_on(&self, subject: &Subject) -> Option<&str> {
        self.open.get(subject).map(String::as_str)
    }
}

/// The stored rollouts, decoded once per store revision and shared by everyone who reads them on
/// this node (the policy service, the Rego service, the rollout service and its controller): a
/// bundle's candidate is megabytes of JSON, and all of them read after every merge.
#[derive(Clone)]
pub struct RolloutReader {
    store: Arc<Store>,
    cached: Arc<Mutex<Option<Decoded>>>,
}

/// The rollouts as of a store revision.
type Decoded = (u64, Arc<Vec<Rollout>>);

impl RolloutReader {
    pub fn new(store: Arc<Store>) -> RolloutReader {
        RolloutReader {
            store,
            cached: Arc::default(),
        }
    }

    /// Every rollout, oldest first.
    pub fn read(&self) -> Result<Arc<Vec<Rollout>>, StoreError> {
        // The revision is read before the documents: a change committed in between makes the
        // next call read again, never keeps an older list under a newer revision.
        let revision = self.store.revision()?;
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, list)) = cached.as_ref()
            && *at == revision
        {
            return Ok(Arc::clone(list));
        }
        let list = Arc::new(read_rollouts(&self.store)?);
        *cached = Some((revision, Arc::clone(&list)));
        Ok(list)
    }
}

/// Every stored rollout, oldest first; one that cannot be read (written by another build) is
/// logged and left out.
fn read_rollouts(store: &Store) -> Result<Vec<Rollout>, StoreError> {
    let mut rollouts: Vec<Rollout> = store
        .list_documents(DocKind::Rollout)?
        .into_iter()
        .filter_map(|doc| match Rollout::decode(&doc.body) {
            Ok(rollout) => Some(rollout),
            Err(err) => {
                warn!(rollout = %doc.name, error = %err, "stored rollout is unreadable; ignored");
                None
            }
        })
        .collect();
    rollouts.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
    Ok(rollouts)
}

/// The policy record a candidate stands for, as the engine compiles it: the stored policy's id and
/// creation, the candidate's fields, the next version, written "by" the rollout.
pub fn candidate_record(
    stored: &PolicyRecord,
    rollout_id: &str,
    candidate: &PolicyCandidate,
    created_at_ms: u64,
) -> PolicyRecord {
    PolicyRecord {
        id: stored.id,
        name: candidate.name.clone(),
        description: candidate.description.clone(),
        definition_json: candidate.definition.to_string(),
        active: candidate.active,
        priority: candidate.priority,
        version: stored.version + 1,
        created_at_us: stored.created_at_us,
        updated_at_us: (created_at_ms as i64).saturating_mul(1000),
        stamp: Hlc {
            wall_ms: created_at_ms,
            logical: 0,
        },
        author: format!("rollout:{rollout_id}"),
    }
}
