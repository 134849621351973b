//! The one way Rego modules, data documents and bundles change: check that the result compiles,
//! write the store, then swap the compiled set into the engine. A change that does not compile is
//! refused and the previous version stays in force. Bundles (`bundles.rs`) join the set beside
//! the modules and data written one by one, and own their roots.

mod bundles;
mod rollouts;

use std::sync::{Arc, Mutex, RwLock};

use mesh_proto::{ChangeOp, DocKind, DocumentChange, DocumentRecord};
use serde_json::Value;
use tracing::{error, info};

use agent_engine::rego::{ModuleSource, RegoEngine, RegoSet, RegoSettings};
use agent_store::{DocWrite, Store};

use super::OpaError;
use super::bundle::{Limits, Verification};
use super::data_tree;
use super::metrics::OpaMetrics;
use crate::rollout::{Overlays, RolloutReader};

pub use bundles::{BundleInfo, BundleStatus, PollNote, PutBundle};

/// Rego module and data reads and writes, keeping the engine in step with the store.
pub struct RegoService {
    store: Arc<Store>,
    engine: Arc<RegoEngine>,
    settings: RegoSettings,
    metrics: OpaMetrics,
    /// The most bytes all data documents may take together (`rego.max_data_bytes`).
    max_data_bytes: u64,
    write_lock: Mutex<()>,
    /// The keys bundles are verified with on this node, and the limits they are read under.
    verification: Arc<Verification>,
    limits: Limits,
    /// The bundles in the set now, and every bundle's status.
    bundles: RwLock<bundles::BundleState>,
    /// What open rollouts ask of this node (canary candidates it applies, subjects no ordinary
    /// write may change), read on every reload.
    overlays: Mutex<Overlays>,
    /// Canary candidates this node was to apply and could not compile: (rollout, why). A canary
    /// that does not compile on one of its nodes fails.
    overlay_failures: Mutex<Vec<(String, String)>>,
    /// The bundle candidates of `overlays`, read and verified once: (rollout, bundle).
    overlay_bundles: Mutex<Vec<(String, Arc<super::bundle::Bundle>)>>,
    /// The stored rollouts (shared with the other services through `with_rollout_reader`).
    rollouts: RolloutReader,
}

impl RegoService {
    /// Builds the service and compiles what the store holds. If the stored modules do not compile
    /// (written by another build), the agent starts with no Rego rather than not at all.
    pub fn new(
        store: Arc<Store>,
        engine: Arc<RegoEngine>,
        settings: RegoSettings,
        metrics: OpaMetrics,
    ) -> Result<RegoService, OpaError> {
        Self::with_bundles(
            store,
            engine,
            settings,
            metrics,
            Verification::default(),
            bundles::DEFAULT_LIMITS,
        )
    }

    /// [`new`](Self::new), verifying bundles with `verification` and reading them under `limits`
    /// (`[bundle]`). Stored bundles are verified with these keys before they are activated.
    pub fn with_bundles(
        store: Arc<Store>,
        engine: Arc<RegoEngine>,
        settings: RegoSettings,
        metrics: OpaMetrics,
        verification: Verification,
        limits: Limits,
    ) -> Result<RegoService, OpaError> {
        let rollouts = RolloutReader::new(Arc::clone(&store));
        let service = RegoService {
            store,
            engine,
            settings,
            metrics,
            max_data_bytes: u64::MAX,
            write_lock: Mutex::new(()),
            verification: Arc::new(verification),
            limits,
            bundles: RwLock::new(bundles::BundleState::default()),
            overlays: Mutex::new(Overlays::default()),
            overlay_failures: Mutex::new(Vec::new()),
            overlay_bundles: Mutex::new(Vec::new()),
            rollouts,
        };
        service.read_overlays()?;
        if let Err(err) = service.load_all("start") {
            error!(error = %err, "stored Rego modules do not compile; Rego is unavailable until fixed")
        }
        Ok(service)
    }

    /// The reader of stored rollouts this service uses; give it to the policy service
    /// (`PolicyService::with_rollout_reader`) so both decode them once.
    pub fn rollout_reader(&self) -> RolloutReader {
        self.rollouts.clone()
    }

    /// Refuses data writes that would take all data documents past `bytes` together. Every data
    /// write recompiles the whole data tree, so this bounds its time as well as its memory.
    pub fn with_max_data_bytes(mut self, bytes: u64) -> RegoService {
        self.max_data_bytes = bytes;
        self
    }

    /// Creates or replaces a module. Returns whether anything changed.
    pub fn put_module(&self, id: &str, text: String) -> Result<bool, OpaError> {
        let _guard = self.lock();
        // Under the write lock: a reload (which refreshes what is under rollout) cannot run
        // between the check and the write.
        self.guard_module(id)?;
        self.put_module_locked(id, text)
    }

    fn put_module_locked(&self, id: &str, text: String) -> Result<bool, OpaError> {
        if id.trim_matches('/').is_empty() {
            return Err(OpaError::BadRequest("a policy id must not be empty".into()));
        }
        self.check_module_scope(id, Some(&text))?;
        self.change_locked(vec![DocWrite::Put {
            kind: DocKind::RegoModule,
            name: id.to_owned(),
            body: text,
        }])
    }

    pub fn delete_module(&self, id: &str) -> Result<(), OpaError> {
        let _guard = self.lock();
        self.guard_module(id)?;
        self.check_module_scope(id, None)?;
        if self.store.get_document(DocKind::RegoModule, id)?.is_none() {
            return Err(OpaError::NotFound(format!("policy id {id:?}")));
        }
        self.change_locked(vec![DocWrite::Delete {
            kind: DocKind::RegoModule,
            name: id.to_owned(),
        }])
        .map(|_| ())
    }

    /// A module by id: one written through the API or policy files, or one of a bundle's.
    pub fn get_module(&self, id: &str) -> Result<DocumentRecord, OpaError> {
        if let Some(module) = self.store.get_document(DocKind::RegoModule, id)? {
            return Ok(module);
        }
        self.bundle_modules()
            .into_iter()
            .find(|m| m.name == id)
            .ok_or_else(|| OpaError::NotFound(format!("policy id {id:?}")))
    }

    /// Every module, those of bundles included (under their ids, `<bundle>/<path>`), by id.
    pub fn list_modules(&self) -> Result<Vec<DocumentRecord>, OpaError> {
        let mut modules = self.store.list_documents(DocKind::RegoModule)?;
        modules.extend(self.bundle_modules());
        modules.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(modules)
    }

    /// Makes `value` the data at `path` (OPA's `PUT /v1/data/{path}`).
    pub fn put_data(&self, path: &str, value: Value) -> Result<bool, OpaError> {
        let _guard = self.lock();
        self.guard_data(path)?;
        self.put_data_locked(path, value)
    }

    fn put_data_locked(&self, path: &str, value: Value) -> Result<bool, OpaError> {
        self.check_path_scope(path)?;
        let docs = self.store.list_documents(DocKind::Data)?;
        let writes = data_tree::put(&docs, path, value)?;
        self.change_locked(writes)
    }

    /// Applies a JSON Patch (RFC 6902) to the data at `path` (OPA's `PATCH /v1/data/{path}`): its
    /// pointers are relative to `path`. As OPA, only `add`, `remove` and `replace` (400 for any
    /// other), and a pointer whose parent is missing is not found (404). Each operation is written
    /// where it lands, as a PUT or DELETE there would be, so the documents below `path` stay
    /// documents of their own (their history, their rollback). All or nothing.
    pub fn patch_data(&self, path: &str, patch: &json_patch::Patch) -> Result<bool, OpaError> {
        use json_patch::PatchOperation;
        let _guard = self.lock();
        self.guard_data(path)?;
        self.check_path_scope(path)?;
        let mut docs = self.store.list_documents(DocKind::Data)?;
        let mut tree = data_tree::tree(&docs)?;
        let base: Vec<String> = data_tree::normalize(path)
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let mut writes = Vec::new();
        for (index, op) in patch.0.iter().enumerate() {
            let pointer = match op {
                PatchOperation::Add(op) => &op.path,
                PatchOperation::Remove(op) => &op.path,
                PatchOperation::Replace(op) => &op.path,
                _ => {
                    return Err(OpaError::BadRequest(format!(
                        "patch operation {index}: bad patch operation; the data API takes add, remove and replace"
                    )));
                }
            };
            let mut full = base.clone();
            full.extend(pointer.tokens().map(|t| t.decoded().into_owned()));
            if full
                .iter()
                .any(|segment| segment.contains('/') || segment.is_empty())
            {
                return Err(OpaError::BadRequest(format!(
                    "patch operation {index}: a data path segment cannot be empty or hold `/`"
                )));
            }
            // The same operation on the whole tree, to see what it does there.
            let escaped: String = full
                .iter()
                .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
                .collect();
            let mut rebased =
                serde_json::to_value(op).map_err(|err| OpaError::BadRequest(err.to_string()))?;
            rebased["path"] = Value::String(escaped);
            let rebased: PatchOperation = serde_json::from_value(rebased)
                .map_err(|err| OpaError::BadRequest(err.to_string()))?;
            json_patch::patch(&mut tree, &[rebased]).map_err(|err| {
                OpaError::NotFound(format!("patch operation {index} ({}): {err}", pointer))
            })?;
            // Array elements are written with their array.
            let mut point = full;
            while point.len() > 1 {
                let parent = point[..point.len() - 1]
                    .iter()
                    .try_fold(&tree, |at, key| at.get(key.as_str()));
                if matches!(parent, Some(Value::Array(_))) || point.last().is_some_and(|l| l == "-")
                {
                    point.pop();
                } else {
                    break;
                }
            }
            let now = point
                .iter()
                .try_fold(&tree, |at, key| at.get(key.as_str()))
                .cloned();
            let point = point.join("/");
            let op_writes = match now {
                Some(value) => data_tree::put(&docs, &point, value)?,
                None => data_tree::delete(&docs, &point)?,
            };
            for write in &op_writes {
                write.apply_to(&mut docs);
            }
            writes.extend(op_writes);
        }
        self.change_locked(writes)
    }

    /// Removes the data at `path` (OPA's `DELETE /v1/data/{path}`).
    pub fn delete_data(&self, path: &str) -> Result<(), OpaError> {
        let _guard = self.lock();
        self.guard_data(path)?;
        self.check_path_scope(path)?;
        let docs = self.store.list_documents(DocKind::Data)?;
        let writes = data_tree::delete(&docs, path)?;
        self.change_locked(writes).map(|_| ())
    }

    /// Every change to a module (`DocKind::RegoModule`, by id) or a data document
    /// (`DocKind::Data`, by its path), oldest first.
    pub fn history(&self, kind: DocKind, name: &str) -> Result<Vec<DocumentChange>, OpaError> {
        let name = match kind {
            DocKind::Data => data_tree::normalize(name),
            DocKind::RegoModule | DocKind::Bundle => name.to_owned(),
            DocKind::Rollout => {
                return Err(OpaError::BadRequest(
                    "rollouts have no Rego history; see GET /rollouts".into(),
                ));
            }
        };
        let history = self.store.document_history(kind, &name)?;
        if history.is_empty() {
            return Err(OpaError::NotFound(format!("no history for {name:?}")));
        }
        Ok(history)
    }

    /// Writes the module or data document back to its version `version`, as a new change that
    /// rolls out like any other (a module is compiled with the rest first, as on a PUT).
    pub fn rollback(&self, kind: DocKind, name: &str, version: u64) -> Result<(), OpaError> {
        let history = self.history(kind, name)?;
        let kept: Vec<String> = history
            .iter()
            .filter(|c| c.op != ChangeOp::Delete)
            .map(|c| c.document.version.to_string())
            .collect();
        let Some(target) = history.iter().find(|c| c.document.version == version) else {
            return Err(OpaError::BadRequest(format!(
                "{name:?} has no version {version}; it has {}",
                kept.join(", ")
            )));
        };
        if target.op == ChangeOp::Delete {
            return Err(OpaError::BadRequest(format!(
                "version {version} of {name:?} is its deletion; roll back to one of {}",
                kept.join(", ")
            )));
        }
        let body = target.document.body.clone();
        match kind {
            DocKind::Data => {
                let value: Value = serde_json::from_str(&body).map_err(|err| {
                    OpaError::BadRequest(format!(
                        "version {version} of {name:?} is not valid JSON: {err}"
                    ))
                })?;
                self.put_data(&target.document.name, value).map(|_| ())
            }
            DocKind::RegoModule => self.put_module(&target.document.name, body).map(|_| ()),
            // A bundle's old version is pushed again: verified with today's keys first.
            DocKind::Bundle => {
                let stored = super::bundle::StoredBundle::parse(&body)?;
                self.put_bundle(PutBundle {
                    name: &target.document.name,
                    archive: &stored.archive()?,
                    source: &stored.source,
                    etag: &stored.etag,
                })
                .map(|_| ())
            }
            DocKind::Rollout => Err(OpaError::BadRequest(
                "a rollout is not rolled back; cancel it (POST /rollouts/{id}/cancel)".into(),
            )),
        }
    }

    /// The compiled set decisions use now.
    pub fn current_set(&self) -> Arc<RegoSet> {
        self.engine.current()
    }

    pub fn module_count(&self) -> usize {
        self.engine.current().module_count()
    }

    /// Recompiles what the store holds and swaps it in: after the mesh merged changes from peers.
    /// Every bundle that changed is verified again with this node's keys; one that does not
    /// verify or compile is not activated (its status says why). If the merged modules do not
    /// compile here (they compiled at their author), the set in force stays.
    pub fn reload(&self) -> Result<(), OpaError> {
        let _guard = self.lock();
        self.read_overlays()?;
        if let Err(err) = self.load_all("merged from the mesh") {
            error!(error = %err, "merged Rego modules do not compile here; the previous set stays in force")
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Compiles the state `writes` lead to; only if it compiles, commits them and swaps it in.
    fn change_locked(&self, writes: Vec<DocWrite>) -> Result<bool, OpaError> {
        let mut modules = self.store.list_documents(DocKind::RegoModule)?;
        let mut data = self.store.list_documents(DocKind::Data)?;
        let data_bytes_before: u64 = data.iter().map(|d| d.body.len() as u64).sum();
        for write in &writes {
            match write {
                DocWrite::Put {
                    kind: DocKind::RegoModule,
                    ..
                }
                | DocWrite::Delete {
                    kind: DocKind::RegoModule,
                    ..
                } => write.apply_to(&mut modules),
                _ => write.apply_to(&mut data),
            }
        }
        let data_bytes: u64 = data.iter().map(|d| d.body.len() as u64).sum();
        // A write that shrinks the data passes even over the budget (it may have been lowered).
        if data_bytes > self.max_data_bytes && data_bytes > data_bytes_before {
            return Err(OpaError::TooLarge(format!(
                "the data documents would take {data_bytes} bytes together, over \
                 rego.max_data_bytes ({}); nothing was changed",
                self.max_data_bytes
            )));
        }
        let active = self.active_bundles();
        let set = self.build(&modules, &data, &active)?;
        let written = self.store.write_documents(writes)?;
        if written.is_empty() {
            return Ok(false);
        }
        let revision = self.store.revision()?;
        info!(revision, modules = modules.len(), "Rego policy set loaded");
        self.swap(set.at_revision(revision));
        Ok(true)
    }

    /// Compiles modules, data documents and bundles into one set. A bundle's data takes the place
    /// of whatever lies under its roots (it owns them); its modules join the others.
    fn build_plain(
        &self,
        modules: &[DocumentRecord],
        data: &[DocumentRecord],
        bundles: &[Arc<super::bundle::Bundle>],
    ) -> Result<RegoSet, OpaError> {
        let mut sources: Vec<ModuleSource> = modules
            .iter()
            .map(|m| ModuleSource {
                id: m.name.clone(),
                text: m.body.clone(),
            })
            .collect();
        let mut tree = data_tree::tree(data)?;
        let mut revisions = std::collections::BTreeMap::new();
        for bundle in bundles {
            sources.extend(bundle.modules.iter().cloned());
            for root in &bundle.manifest.roots {
                data_tree::replace_at(&mut tree, root, bundle.data_at(root).cloned());
            }
            revisions.insert(bundle.name.clone(), bundle.manifest.revision.clone());
        }
        Ok(RegoSet::build(&sources, tree, 0, self.settings)?.with_bundles(revisions))
    }

    fn swap(&self, set: RegoSet) {
        self.metrics.rego_modules.set(set.module_count() as i64);
        self.engine.replace(set);
    }
}

#[cfg(test)]
mod tests;
