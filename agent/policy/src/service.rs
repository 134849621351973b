//! The one way policies change: validate, write to the store, then swap the engine's policy set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use mesh_proto::{ChangeOp, PolicyChange, PolicyRecord};
use tracing::{info, warn};

use agent_engine::{Engine, EngineMetrics, ShadowSpec};
use agent_store::{PolicyFields, Store, StoreError};

use crate::rollout::{Overlays, PolicyCandidate, RolloutReader, Subject, candidate_record};
use crate::{Definition, NewPolicy, PolicyError, PolicyPatch, validate_name};

/// What importing a policy file entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    Created,
    Updated,
    Unchanged,
}

/// Policy reads and writes for the API and the importer, keeping the engine in step with the store.
pub struct PolicyService {
    store: Arc<Store>,
    engine: Arc<Engine>,
    /// The engine's: the service keeps the set's sizes in them.
    metrics: EngineMetrics,
    /// Serializes write + engine swap, so the engine never goes back to an older policy set.
    write_lock: Mutex<()>,
    /// Policies with an open rollout (shadow or canary), and the rollout's id: an ordinary write
    /// of them is refused until it ends. Refreshed on every reload.
    in_rollout: Mutex<HashMap<u64, String>>,
    /// The stored rollouts (shared with the other services through `with_rollout_reader`).
    rollouts: RolloutReader,
}

impl PolicyService {
    /// Builds the service and loads the engine from what the store holds.
    pub fn new(store: Arc<Store>, engine: Arc<Engine>) -> Result<PolicyService, PolicyError> {
        let rollouts = RolloutReader::new(Arc::clone(&store));
        let service = PolicyService {
            store,
            metrics: engine.metrics().clone(),
            engine,
            write_lock: Mutex::new(()),
            in_rollout: Mutex::new(HashMap::new()),
            rollouts,
        };
        service.reload()?;
        Ok(service)
    }

    /// Reads rollouts through `reader`, shared with the other services, instead of a reader of
    /// its own: each reads them after every merge, and one decoding serves all.
    pub fn with_rollout_reader(mut self, reader: RolloutReader) -> PolicyService {
        self.rollouts = reader;
        self
    }

    /// The reader of stored rollouts this service uses.
    pub fn rollout_reader(&self) -> RolloutReader {
        self.rollouts.clone()
    }

    pub fn create(&self, new: NewPolicy) -> Result<PolicyRecord, PolicyError> {
        let fields = validated(
            new.name,
            new.description,
            &new.definition,
            new.active,
            new.priority,
        )?;
        self.write(|store| Ok(store.create(fields)?), |r| Some((r, false)))
    }

    /// Applies a partial update; fields not given keep their stored values.
    pub fn update(&self, id: u64, patch: PolicyPatch) -> Result<PolicyRecord, PolicyError> {
        if patch.rollout.is_some() {
            return Err(PolicyError::invalid(
                "rollout",
                "a change with a rollout plan goes through RolloutService::start_canary",
            ));
        }
        self.write(
            |store| {
                // Under the write lock: a reload (which refreshes what is under rollout) cannot
                // run between the check and the write.
                self.guard(id)?;
                let current = store.get(id)?.ok_or(StoreError::NotFound { id })?;
                let fields = patched(&current, patch)?;
                // Under the write lock no other local writer can slip in between read and write.
                Ok(store.update(id, current.version, fields)?)
            },
            |r| Some((r, false)),
        )
    }

    /// What policy `id` would be with `patch` applied, validated, as a rollout's candidate; and
    /// the version it would follow. Nothing is written.
    pub fn candidate(
        &self,
        id: u64,
        patch: PolicyPatch,
    ) -> Result<(PolicyCandidate, u64), PolicyError> {
        let current = self.store.get(id)?.ok_or(PolicyError::NotFound { id })?;
        let fields = patched(&current, patch)?;
        let definition = serde_json::from_str(&fields.definition_json)
            .map_err(|err| PolicyError::invalid("definition", err.to_string()))?;
        Ok((
            PolicyCandidate {
                name: fields.name,
                description: fields.description,
                definition,
                active: fields.active,
                priority: fields.priority,
            },
            current.version,
        ))
    }

    /// Writes a rollout's candidate as the next version of policy `id` (a canary that completed,
    /// a shadow promoted): the one write an open rollout lets through. Unchanged if the policy
    /// already holds it (a completion retried after a crash).
    pub fn write_candidate(
        &self,
        id: u64,
        candidate: &PolicyCandidate,
        base_version: u64,
    ) -> Result<PolicyRecord, PolicyError> {
        let definition = Definition::from_json(&candidate.definition.to_string())
            .map_err(|err| PolicyError::invalid("definition", err.to_string()))?;
        let fields = validated(
            candidate.name.clone(),
            candidate.description.clone(),
            &definition,
            candidate.active,
            candidate.priority,
        )?;
        self.write(
            |store| {
                let current = store.get(id)?.ok_or(StoreError::NotFound { id })?;
                let same = current.name == fields.name
                    && current.description == fields.description
                    && current.definition_json == fields.definition_json
                    && current.active == fields.active
                    && current.priority == fields.priority;
                if same {
                    return Ok((current, false));
                }
                if current.version != base_version {
                    return Err(PolicyError::Changed {
                        id,
                        base: base_version,
                        now: current.version,
                    });
                }
                Ok((store.update(id, current.version, fields)?, true))
            },
            |(record, written)| written.then_some((record, false)),
        )
        .map(|(record, _)| record)
    }

    /// Refuses an ordinary write of a policy that has an open rollout.
    fn guard(&self, id: u64) -> Result<(), PolicyError> {
        let open = self
            .in_rollout
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match open.get(&id) {
            Some(rollout) => Err(PolicyError::InRollout {
                subject: Subject::Policy { id }.to_string(),
                rollout: rollout.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Writes a new version of policy `id` equal to its version `version` (name, description,
    /// definition, active flag, priority), which rolls out like any change. The version must be
    /// one the history holds and not the policy's deletion; a deleted policy cannot be rolled back
    /// (create it again).
    pub fn rollback(&self, id: u64, version: u64) -> Result<PolicyRecord, PolicyError> {
        self.write(
            |store| {
                self.guard(id)?;
                let history = store.history(id)?;
                if history.is_empty() {
                    return Err(PolicyError::NotFound { id });
                }
                let versions = || {
                    history
                        .iter()
                        .filter(|c| c.op != ChangeOp::Delete)
                        .map(|c| c.policy.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let Some(target) = history.iter().find(|c| c.policy.version == version) else {
                    return Err(PolicyError::invalid(
                        "version",
                        format!(
                            "policy {id} has no version {version}; it has {}",
                            versions()
                        ),
                    ));
                };
                if target.op == ChangeOp::Delete {
                    return Err(PolicyError::invalid(
                        "version",
                        format!(
                            "version {version} is the policy's deletion; roll back to one of {}",
                            versions()
                        ),
                    ));
                }
                let current = store.get(id)?.ok_or_else(|| {
                    PolicyError::invalid(
                        "version",
                        format!("policy {id} is deleted; create it again from version {version}"),
                    )
                })?;
                let old = &target.policy;
                let definition = Definition::from_json(&old.definition_json).map_err(|err| {
                    PolicyError::invalid(
                        "version",
                        format!("version {version}'s stored definition is unreadable: {err}"),
                    )
                })?;
                let fields = validated(
                    old.name.clone(),
                    old.description.clone(),
                    &definition,
                    old.active,
                    old.priority,
                )?;
                Ok(store.update(id, current.version, fields)?)
            },
            |r| Some((r, false)),
        )
    }

    pub fn delete(&self, id: u64) -> Result<PolicyRecord, PolicyError> {
        self.write(
            |store| {
                self.guard(id)?;
                Ok(store.delete(id)?)
            },
            |r| Some((r, true)),
        )
    }

    pub fn get(&self, id: u64) -> Result<PolicyRecord, PolicyError> {
        self.store.get(id)?.ok_or(PolicyError::NotFound { id })
    }

    /// Policies, highest priority first (ties by id, oldest first).
    pub fn list(&self, active_only: bool) -> Result<Vec<PolicyRecord>, PolicyError> {
        let mut all = self.store.list()?;
        all.retain(|p| p.active || !active_only);
        all.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    pub fn history(&self, id: u64) -> Result<Vec<PolicyChange>, PolicyError> {
        let history = self.store.history(id)?;
        if history.is_empty() {
            return Err(PolicyError::NotFound { id });
        }
        Ok(history)
    }

    /// Active policies the engine evaluates now.
    pub fn active_count(&self) -> usize {
        self.engine.current().len()
    }

    pub fn revision(&self) -> Result<u64, PolicyError> {
        Ok(self.store.revision()?)
    }

    /// Creates the policy, or brings the stored policy of the same name to it; unchanged if equal.
    pub fn import(&self, new: NewPolicy) -> Result<(ImportOutcome, PolicyRecord), PolicyError> {
        let fields = validated(
            new.name,
            new.description,
            &new.definition,
            new.active,
            new.priority,
        )?;
        self.write(
            |store| {
                let Some(current) = store.get_by_name(&fields.name)? else {
                    return Ok((ImportOutcome::Created, store.create(fields)?));
                };
                if let Err(err) = self.guard(current.id) {
                    // The files do not overrule a shadow or canary; the next import applies them.
                    warn!(policy_id = current.id, reason = %err, "policy file entry not imported while its rollout is open");
                    return Ok((ImportOutcome::Unchanged, current));
                }
                let unchanged = current.description == fields.description
                    && current.active == fields.active
                    && current.priority == fields.priority
                    && Definition::from_json(&current.definition_json)
                        .ok()
                        .as_ref()
                        == Some(&new.definition);
                if unchanged {
                    return Ok((ImportOutcome::Unchanged, current));
                }
                Ok((
                    ImportOutcome::Updated,
                    store.update(current.id, current.version, fields)?,
                ))
            },
            |(outcome, record)| (*outcome != ImportOutcome::Unchanged).then_some((record, false)),
        )
    }

    /// Runs `change` on the store, then swaps in the engine's set with the policy `changed` names
    /// (the record written, and whether it was deleted) recompiled: O(changed policy).
    fn write<T>(
        &self,
        change: impl FnOnce(&Store) -> Result<T, PolicyError>,
        changed: impl FnOnce(&T) -> Option<(&PolicyRecord, bool)>,
    ) -> Result<T, PolicyError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let out = change(&self.store)?;
        if let Some((record, deleted)) = changed(&out) {
            let revision = self.store.revision()?;
            match self
                .engine
                .current()
                .with_change(record, deleted, revision, &self.metrics)
            {
                Ok(set) => {
                    self.metrics.policies_active.set(set.len() as i64);
                    self.engine.replace(set);
                }
                // Validated before it was stored, so this build compiles it; if not, start over.
                Err(err) => {
                    warn!(policy_id = record.id, error = %err, "changed policy does not compile; reloading all");
                    self.reload_locked()?;
                }
            }
        }
        Ok(out)
    }

    /// Recompiles the active policies and swaps them into the engine (also after the mesh merged
    /// changes from peers into the store).
    pub fn reload(&self) -> Result<(), PolicyError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.reload_locked()
    }

    /// [`reload`](Self::reload), under the write lock already taken: a set built from an older
    /// snapshot never replaces a newer one.
    fn reload_locked(&self) -> Result<(), PolicyError> {
        let mut records = self.store.list()?;
        let revision = self.store.revision()?;
        let rollouts = self.rollouts.read()?;
        let overlays = Overlays::of(&rollouts, self.store.node_id());
        let created = |id: &str| {
            rollouts
                .iter()
                .find(|r| r.id == id)
                .map_or(0, |r| r.created_at_ms)
        };
        // A canary node runs the candidate in place of the stored version.
        for record in &mut records {
            if let Some((rollout, candidate)) = overlays.policies.get(&record.id) {
                *record = candidate_record(record, rollout, candidate, created(rollout));
            }
        }
        let shadows: Vec<ShadowSpec> = overlays
            .shadows
            .iter()
            .filter_map(|(rollout, id, candidate)| {
                let stored = records.iter().find(|r| r.id == *id)?;
                Some(ShadowSpec {
                    rollout_id: rollout.clone(),
                    record: candidate_record(stored, rollout, candidate, created(rollout)),
                })
            })
            .collect();
        let (set, invalid) = self
            .engine
            .current()
            .rebuild(records, revision, &self.metrics);
        for (record, err) in &invalid {
            // Possible only for data written by another build: this one validates before storing.
            warn!(policy_id = record.id, policy_name = %record.name, error = %err, "stored policy does not compile; not evaluated");
        }
        let (set, invalid_shadows) = set.with_shadows(&shadows);
        for (spec, err) in &invalid_shadows {
            warn!(rollout = %spec.rollout_id, policy_id = spec.record.id, error = %err, "shadow version does not compile; not evaluated");
        }
        *self
            .in_rollout
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = overlays
            .open
            .iter()
            .filter_map(|(subject, rollout)| match subject {
                Subject::Policy { id } => Some((*id, rollout.clone())),
                _ => None,
            })
            .collect();
        self.metrics.policies_active.set(set.len() as i64);
        self.metrics.policies_invalid.set(invalid.len() as i64);
        info!(revision, active = set.len(), "policy set loaded");
        self.engine.replace(set);
        Ok(())
    }
}

/// `current` with `patch` applied, validated.
fn patched(current: &PolicyRecord, patch: PolicyPatch) -> Result<PolicyFields, PolicyError> {
    let mut definition = Definition::from_json(&current.definition_json).map_err(|err| {
        PolicyError::invalid(
            "definition",
            format!("stored definition is unreadable: {err}"),
        )
    })?;
    if let Some(def_patch) = patch.definition {
        definition.apply(def_patch);
    }
    validated(
        patch.name.unwrap_or_else(|| current.name.clone()),
        patch
            .description
            .unwrap_or_else(|| current.description.clone()),
        &definition,
        patch.active.unwrap_or(current.active),
        patch.priority.unwrap_or(current.priority),
    )
}

fn validated(
    name: String,
    description: String,
    definition: &Definition,
    active: bool,
    priority: i64,
) -> Result<PolicyFields, PolicyError> {
    validate_name(&name)?;
    definition.validate()?;
    Ok(PolicyFields {
        name,
        description,
        definition_json: definition.to_json(),
        active,
        priority,
    })
}
