//! The one writer of rollouts: starts shadows and canaries (candidates validated first, as an
//! ordinary write would be), promotes, cancels, completes and fails them. Every write of a
//! rollout reloads the policy and Rego services, so what it asks of this node applies at once.

use std::sync::{Arc, Mutex};

use mesh_proto::DocKind;
use serde::Deserialize;
use serde_json::Value;
use tracing::info;

use agent_base::clock::now_ms;
use agent_store::{DocWrite, Store, StoreError};

use super::model::{BundleCandidate, CanaryPlan, Candidate, Plan, Rollout, State, Subject};
use super::overlay::RolloutReader;
use super::rank::canary_nodes;
use crate::opa::bundle::StoredBundle;
use crate::opa::data_tree;
use crate::opa::{OpaError, RegoService};
use crate::{PolicyError, PolicyPatch, PolicyService};

/// The longest bake time accepted: a day.
const MAX_BAKE_SEC: u64 = 86_400;
/// Open rollouts at most: each is in every node's gossip report and every reload.
pub const MAX_OPEN: usize = 32;
/// Ended rollouts kept at most (the newest), and for at most this long.
pub const KEEP_ENDED: usize = 100;
pub const KEEP_ENDED_MS: u64 = 7 * 24 * 3600 * 1000;

/// A canary plan as a caller gives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySettings {
    /// The share of the members that apply the change first (0 < fraction <= 1).
    pub fraction: f64,
    pub bake_sec: u64,
    #[serde(default)]
    pub max_failure_rate_rise: f64,
    #[serde(default)]
    pub min_canary_evaluations: u64,
}

/// Why a rollout operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("rollout {0} not found")]
    NotFound(String),
    #[error("invalid `{field}`: {message}")]
    Invalid { field: String, message: String },
    /// The operation does not fit the rollout's state (or the subject has another rollout open).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Opa(#[from] OpaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RolloutError {
    fn invalid(field: &str, message: impl Into<String>) -> RolloutError {
        RolloutError::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Rollout reads and writes.
pub struct RolloutService {
    store: Arc<Store>,
    policies: Arc<PolicyService>,
    rego: Arc<RegoService>,
    /// Serializes read-modify-write of rollouts on this node.
    lock: Mutex<()>,
    /// The stored rollouts, shared with the services (the controller lists them twice a second).
    reader: RolloutReader,
}

impl RolloutService {
    pub fn new(
        store: Arc<Store>,
        policies: Arc<PolicyService>,
        rego: Arc<RegoService>,
    ) -> RolloutService {
        RolloutService {
            store,
            reader: policies.rollout_reader(),
            policies,
            rego,
            lock: Mutex::new(()),
        }
    }

    pub fn node_id(&self) -> &str {
        self.store.node_id()
    }

    /// Every rollout, oldest first, shared: decoded once per store revision.
    pub fn list(&self) -> Result<Arc<Vec<Rollout>>, RolloutError> {
        Ok(self.reader.read()?)
    }

    pub fn get(&self, id: &str) -> Result<Rollout, RolloutError> {
        let doc = self
            .store
            .get_document(DocKind::Rollout, id)?
            .ok_or_else(|| RolloutError::NotFound(id.to_owned()))?;
        Rollout::decode(&doc.body).map_err(|err| {
            RolloutError::Conflict(format!("rollout {id} is unreadable by this build: {err}"))
        })
    }

    /// The open rollout of `subject`, if any.
    pub fn open_for(&self, subject: &Subject) -> Result<Option<Rollout>, RolloutError> {
        Ok(self
            .list()?
            .iter()
            .find(|r| r.state.is_open() && &r.subject == subject)
            .cloned())
    }

    /// Publishes `patch` applied to policy `policy_id` as its shadow version.
    pub fn start_shadow(
        &self,
        policy_id: u64,
        patch: PolicyPatch,
    ) -> Result<Rollout, RolloutError> {
        let _guard = self.lock();
        let subject = Subject::Policy { id: policy_id };
        self.refuse_open(&subject)?;
        let (candidate, base) = self.policies.candidate(policy_id, patch)?;
        let rollout = self.new_rollout(
            subject,
            Candidate::Policy(candidate),
            Plan::Shadow,
            State::Shadow,
            Some(base),
        );
        self.write(&rollout)?;
        info!(rollout = %rollout.id, policy_id, "shadow version published");
        Ok(rollout)
    }

    /// Starts a canary of `candidate` for `subject` on a share of `members` (every node this one
    /// knows in the mesh, itself included).
    pub fn start_canary(
        &self,
        subject: Subject,
        candidate: CandidateInput,
        settings: CanarySettings,
        members: &[String],
    ) -> Result<Rollout, RolloutError> {
        if !(settings.fraction > 0.0 && settings.fraction <= 1.0) {
            return Err(RolloutError::invalid(
                "canary.fraction",
                format!("must be above 0 and at most 1, not {}", settings.fraction),
            ));
        }
        if settings.bake_sec == 0 || settings.bake_sec > MAX_BAKE_SEC {
            return Err(RolloutError::invalid(
                "canary.bake_sec",
                format!(
                    "must be 1 to {MAX_BAKE_SEC} seconds, not {}",
                    settings.bake_sec
                ),
            ));
        }
        if !(0.0..=1.0).contains(&settings.max_failure_rate_rise) {
            return Err(RolloutError::invalid(
                "canary.max_failure_rate_rise",
                format!(
                    "is a rate from 0 to 1, not {}",
                    settings.max_failure_rate_rise
                ),
            ));
        }
        let subject = match subject {
            Subject::Data { path } => Subject::Data {
                path: data_tree::normalize(&path),
            },
            other => other,
        };
        let _guard = self.lock();
        self.refuse_open(&subject)?;
        let (candidate, base) = match (&subject, candidate) {
            (Subject::Policy { id }, CandidateInput::Policy(patch)) => {
                let (candidate, base) = self.policies.candidate(*id, *patch)?;
                (Candidate::Policy(candidate), Some(base))
            }
            (Subject::RegoModule { id }, CandidateInput::RegoModule(text)) => {
                let base = self.rego.check_module(id, &text)?;
                (Candidate::RegoModule(text), base)
            }
            (Subject::Data { path }, CandidateInput::Data(value)) => {
                let base = self.rego.check_data(path, &value)?;
                (Candidate::Data(value), base)
            }
            (Subject::Bundle { name }, CandidateInput::Bundle(archive)) => {
                let (revision, base) = self.rego.check_bundle(name, &archive)?;
                (
                    Candidate::Bundle(BundleCandidate {
                        revision,
                        archive: StoredBundle::encode_archive(&archive),
                    }),
                    base,
                )
            }
            (subject, _) => {
                return Err(RolloutError::invalid(
                    "candidate",
                    format!("the candidate is not of the subject's kind ({subject})"),
                ));
            }
        };
        let mut rollout = self.new_rollout(subject, candidate, Plan::Shadow, State::Shadow, base);
        let mut everyone: Vec<String> = members.to_vec();
        everyone.push(self.store.node_id().to_owned());
        rollout.plan = Plan::Canary(CanaryPlan {
            fraction: settings.fraction,
            bake_sec: settings.bake_sec,
            max_failure_rate_rise: settings.max_failure_rate_rise,
            min_canary_evaluations: settings.min_canary_evaluations,
            nodes: canary_nodes(&rollout.id, &everyone, settings.fraction),
        });
        rollout.state = State::Baking {
            until_ms: rollout.created_at_ms + settings.bake_sec * 1000,
        };
        self.write(&rollout)?;
        info!(rollout = %rollout.id, subject = %rollout.subject, "canary rollout started");
        Ok(rollout)
    }

    /// Makes a shadow version the active one: written as the policy's next version everywhere.
    pub fn promote(&self, id: &str) -> Result<Rollout, RolloutError> {
        let _guard = self.lock();
        let mut rollout = self.get(id)?;
        if !rollout.is_shadow() {
            return Err(RolloutError::Conflict(format!(
                "rollout {id} is {}, not an open shadow version; only those are promoted",
                rollout.state.name()
            )));
        }
        let version = self.write_candidate(&rollout)?;
        rollout.state = State::Promoted {
            at_ms: now_ms(),
            by: self.store.node_id().to_owned(),
            version,
        };
        self.write(&rollout)?;
        info!(rollout = %id, version, "shadow version promoted");
        Ok(rollout)
    }

    /// Completes a canary: the candidate becomes the subject's next version everywhere.
    pub fn complete(&self, id: &str) -> Result<Rollout, RolloutError> {
        let _guard = self.lock();
        let mut rollout = self.get(id)?;
        if !matches!(rollout.state, State::Baking { .. }) {
            return Err(RolloutError::Conflict(format!(
                "rollout {id} is {}, not baking",
                rollout.state.name()
            )));
        }
        rollout.state = match self.write_candidate(&rollout) {
            Ok(version) => State::Completed {
                at_ms: now_ms(),
                by: self.store.node_id().to_owned(),
                version,
            },
            // The store failing is not the candidate's fault: try again later.
            Err(RolloutError::Store(err)) => return Err(RolloutError::Store(err)),
            Err(RolloutError::Policy(PolicyError::Store(err))) => {
                return Err(RolloutError::Policy(PolicyError::Store(err)));
            }
            Err(RolloutError::Opa(OpaError::Store(err))) => {
                return Err(RolloutError::Opa(OpaError::Store(err)));
            }
            // It cannot be written (the subject moved on, or no longer compiles with the rest).
            Err(err) => State::Failed {
                at_ms: now_ms(),
                by: self.store.node_id().to_owned(),
                reason: format!("the candidate could not be written: {err}"),
            },
        };
        self.write(&rollout)?;
        info!(rollout = %id, state = rollout.state.name(), "canary rollout judged");
        Ok(rollout)
    }

    /// Fails an open rollout: nothing is written to its subject, and the canary nodes revert.
    pub fn fail(&self, id: &str, reason: String) -> Result<Rollout, RolloutError> {
        let _guard = self.lock();
        let mut rollout = self.get(id)?;
        if !rollout.state.is_open() {
            return Ok(rollout);
        }
        rollout.state = State::Failed {
            at_ms: now_ms(),
            by: self.store.node_id().to_owned(),
            reason,
        };
        self.write(&rollout)?;
        info!(rollout = %id, state = ?rollout.state, "rollout failed; canary nodes revert");
        Ok(rollout)
    }

    /// Withdraws an open rollout.
    pub fn cancel(&self, id: &str) -> Result<Rollout, RolloutError> {
        let _guard = self.lock();
        let mut rollout = self.get(id)?;
        if !rollout.state.is_open() {
            return Err(RolloutError::Conflict(format!(
                "rollout {id} is already {}",
                rollout.state.name()
            )));
        }
        rollout.state = State::Cancelled {
            at_ms: now_ms(),
            by: self.store.node_id().to_owned(),
        };
        self.write(&rollout)?;
        info!(rollout = %id, "rollout cancelled");
        Ok(rollout)
    }

    /// Applies what the stored rollouts ask of this node (after the mesh merged some).
    pub fn reload(&self) -> Result<(), RolloutError> {
        self.rego.reload()?;
        self.policies.reload()?;
        Ok(())
    }

    /// Writes the candidate as its subject's next version, unless the subject moved on from
    /// the version the rollout started from; returns the version written.
    fn write_candidate(&self, rollout: &Rollout) -> Result<u64, RolloutError> {
        let base = rollout.base_version;
        match (&rollout.subject, &rollout.candidate) {
            (Subject::Policy { id }, Candidate::Policy(candidate)) => Ok(self
                .policies
                .write_candidate(*id, candidate, base.unwrap_or(0))?
                .version),
            (Subject::RegoModule { id }, Candidate::RegoModule(text)) => {
                Ok(self.rego.write_candidate_module(id, text.clone(), base)?)
            }
            (Subject::Data { path }, Candidate::Data(value)) => {
                Ok(self.rego.write_candidate_data(path, value.clone(), base)?)
            }
            (Subject::Bundle { name }, Candidate::Bundle(bundle)) => {
                let archive =
                    StoredBundle::decode_archive(&bundle.archive).map_err(OpaError::from)?;
                Ok(self.rego.write_candidate_bundle(name, &archive, base)?)
            }
            (subject, _) => Err(RolloutError::Conflict(format!(
                "rollout {}'s candidate does not fit its subject ({subject})",
                rollout.id
            ))),
        }
    }

    /// Refuses a new rollout of `subject` while one of it (or of data overlapping it) is open,
    /// and past [`MAX_OPEN`] open rollouts.
    fn refuse_open(&self, subject: &Subject) -> Result<(), RolloutError> {
        let all = self.list()?;
        let open: Vec<&Rollout> = all.iter().filter(|r| r.state.is_open()).collect();
        if let Some(other) = open.iter().find(|r| r.subject.overlaps(subject)) {
            return Err(RolloutError::Conflict(format!(
                "{} already has rollout {} open ({}); promote, cancel or wait for it",
                other.subject,
                other.id,
                other.state.name()
            )));
        }
        if open.len() >= MAX_OPEN {
            return Err(RolloutError::Conflict(format!(
                "{} rollouts are open, the most there may be; end one first",
                open.len()
            )));
        }
        Ok(())
    }

    /// Deletes ended rollouts past the newest [`KEEP_ENDED`] or older than [`KEEP_ENDED_MS`];
    /// returns how many. (Deleting is a replicated change: one node does it for the mesh.)
    pub fn prune(&self, ids: &[String]) -> Result<usize, RolloutError> {
        let _guard = self.lock();
        let writes: Vec<DocWrite> = ids
            .iter()
            .map(|id| DocWrite::Delete {
                kind: DocKind::Rollout,
                name: id.clone(),
            })
            .collect();
        if writes.is_empty() {
            return Ok(0);
        }
        let deleted = self.store.write_documents(writes)?.len();
        Ok(deleted)
    }

    /// Undoes a completion that lost to a failure or a cancellation written at the same time
    /// elsewhere (two coordinators during a partition, a cancel racing the bake's end): if the
    /// subject holds the candidate, written as the version after the rollout's base, the base
    /// version is written back. Returns whether it did.
    pub fn reconcile(&self, rollout: &Rollout) -> Result<bool, RolloutError> {
        if !matches!(
            rollout.state,
            State::Failed { .. } | State::Cancelled { .. }
        ) {
            return Ok(false);
        }
        let Some(base) = rollout.base_version else {
            return Ok(false);
        };
        let _guard = self.lock();
        match (&rollout.subject, &rollout.candidate) {
            (Subject::Policy { id }, Candidate::Policy(candidate)) => {
                let Ok(current) = self.policies.get(*id) else {
                    return Ok(false);
                };
                let holds = current.version == base + 1
                    && current.name == candidate.name
                    && current.description == candidate.description
                    && current.active == candidate.active
                    && current.priority == candidate.priority
                    && serde_json::from_str::<Value>(&current.definition_json)
                        .ok()
                        .as_ref()
                        == Some(&candidate.definition);
                if holds {
                    self.policies.rollback(*id, base)?;
                }
                Ok(holds)
            }
            (Subject::RegoModule { id }, Candidate::RegoModule(text)) => {
                let Ok(current) = self.rego.get_module(id) else {
                    return Ok(false);
                };
                let holds = current.version == base + 1 && current.body == *text;
                if holds {
                    self.rego.rollback(DocKind::RegoModule, id, base)?;
                }
                Ok(holds)
            }
            (Subject::Bundle { name }, Candidate::Bundle(bundle)) => {
                let Some(current) = self.store.get_document(DocKind::Bundle, name)? else {
                    return Ok(false);
                };
                let revision = StoredBundle::parse(&current.body)
                    .map(|stored| stored.revision)
                    .unwrap_or_default();
                let holds = current.version == base + 1 && revision == bundle.revision;
                if holds {
                    self.rego.rollback(DocKind::Bundle, name, base)?;
                }
                Ok(holds)
            }
            (Subject::Data { path }, Candidate::Data(value)) => {
                let Some(current) = self.store.get_document(DocKind::Data, path)? else {
                    return Ok(false);
                };
                let holds = current.version == base + 1
                    && serde_json::from_str::<Value>(&current.body).ok().as_ref() == Some(value);
                if holds {
                    self.rego.rollback(DocKind::Data, path, base)?;
                }
                Ok(holds)
            }
            _ => Ok(false),
        }
    }

    fn new_rollout(
        &self,
        subject: Subject,
        candidate: Candidate,
        plan: Plan,
        state: State,
        base_version: Option<u64>,
    ) -> Rollout {
        let created_at_ms = now_ms();
        // Unique on this node (ids carry the node's id): the next free millisecond.
        let mut at = created_at_ms;
        let id = loop {
            let id = format!("r-{at}-{}", self.store.node_id());
            match self.store.get_document(DocKind::Rollout, &id) {
                Ok(None) | Err(_) => break id,
                Ok(Some(_)) => at += 1,
            }
        };
        Rollout {
            id,
            subject,
            candidate,
            plan,
            state,
            base_version,
            created_at_ms,
            created_by: self.store.node_id().to_owned(),
        }
    }

    /// Stores `rollout` and applies it here. An ended rollout keeps no bundle archive: the
    /// bundle's document holds it if it was written, and ended rollouts are kept for a week.
    fn write(&self, rollout: &Rollout) -> Result<(), RolloutError> {
        let mut stored = rollout.clone();
        if !stored.state.is_open()
            && let Candidate::Bundle(bundle) = &mut stored.candidate
        {
            bundle.archive.clear();
        }
        self.store.write_documents(vec![DocWrite::Put {
            kind: DocKind::Rollout,
            name: stored.id.clone(),
            body: stored.encode(),
        }])?;
        self.reload()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A candidate as a caller gives it: a patch of an incident rule, a module's source, a value,
/// a bundle's archive.
#[derive(Debug, Clone)]
pub enum CandidateInput {
    Policy(Box<PolicyPatch>),
    RegoModule(String),
    Data(Value),
    Bundle(Vec<u8>),
}
