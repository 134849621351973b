//! What open rollouts ask of this service (see `crate::rollout`): the canary candidates this node
//! builds its set with (modules, data documents, bundles; a candidate that does not compile or
//! verify here is left out and noted, which fails its rollout), the checks a candidate passes
//! before a rollout starts, the one write of a subject its rollout lets through, and the refusal
//! of ordinary writes meanwhile.

use std::sync::Arc;

use mesh_proto::DocKind;
use serde_json::Value;
use tracing::error;

use agent_engine::rego::RegoSet;
use agent_store::{DocWrite, Store};
use mesh_proto::DocumentRecord;

use super::super::OpaError;
use super::super::data_tree;
use super::{PutBundle, RegoService};
use crate::rollout::{Overlays, Subject};

impl RegoService {
    /// The set of `modules`, `data` and `bundles` with this node's canary candidates applied. A
    /// candidate that does not compile with the rest is left out (and noted, which fails its
    /// rollout) if the rest compiles without it.
    pub(super) fn build(
        &self,
        modules: &[DocumentRecord],
        data: &[DocumentRecord],
        bundles: &[Arc<super::super::bundle::Bundle>],
    ) -> Result<RegoSet, OpaError> {
        let overlays = self
            .overlays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let candidate_bundles = self
            .overlay_bundles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if overlays.modules.is_empty() && overlays.data.is_empty() && candidate_bundles.is_empty() {
            return self.build_plain(modules, data, bundles);
        }
        let mut with_modules = modules.to_vec();
        let mut with_data = data.to_vec();
        let mut with_bundles = bundles.to_vec();
        let mut applied = Vec::new();
        for (rollout, bundle) in &candidate_bundles {
            with_bundles.retain(|b| b.name != bundle.name);
            with_bundles.push(Arc::clone(bundle));
            applied.push(rollout.clone());
        }
        for (rollout, id, text) in &overlays.modules {
            DocWrite::Put {
                kind: DocKind::RegoModule,
                name: id.clone(),
                body: text.clone(),
            }
            .apply_to(&mut with_modules);
            applied.push(rollout.clone());
        }
        for (rollout, path, value) in &overlays.data {
            for write in data_tree::put(&with_data, path, value.clone())? {
                write.apply_to(&mut with_data);
            }
            applied.push(rollout.clone());
        }
        // Compiled before the list of failures is locked: a report reads it meanwhile.
        let built = self.build_plain(&with_modules, &with_data, &with_bundles);
        let (set, failed) = match built {
            Ok(set) => (set, None),
            Err(err) => {
                // Without the candidates: if that fails too, the fault is not theirs.
                let plain = self.build_plain(modules, data, bundles)?;
                error!(rollouts = ?applied, error = %err, "canary candidates do not compile here; running without them");
                (plain, Some(err.to_string()))
            }
        };
        let mut failures = self
            .overlay_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match failed {
            None => failures.retain(|(rollout, _)| !applied.contains(rollout)),
            Some(why) => {
                for rollout in applied {
                    if !failures.iter().any(|(r, _)| *r == rollout) {
                        failures.push((rollout, why.clone()));
                    }
                }
            }
        }
        Ok(set)
    }

    /// Re-reads what the open rollouts ask of this node.
    pub(super) fn read_overlays(&self) -> Result<(), OpaError> {
        let rollouts = self.rollouts.read()?;
        let overlays = Overlays::of(&rollouts, self.store.node_id());
        self.overlay_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|(rollout, _)| overlays.open.values().any(|open| open == rollout));
        // Bundle candidates are read and verified with this node's keys once per rollout; one
        // that does not verify here fails its rollout like one that does not compile.
        let mut parsed = self
            .overlay_bundles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        parsed.retain(|(rollout, _)| overlays.bundles.iter().any(|(r, _, _)| r == rollout));
        let failed: Vec<String> = self
            .overlay_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(rollout, _)| rollout.clone())
            .collect();
        for (rollout, name, archive) in &overlays.bundles {
            // Read and verified once per rollout, whether it passed or not.
            if parsed.iter().any(|(r, _)| r == rollout) || failed.contains(rollout) {
                continue;
            }
            let read =
                super::super::bundle::StoredBundle::decode_archive(archive).and_then(|bytes| {
                    super::super::bundle::Bundle::read(
                        name,
                        &bytes,
                        &self.verification,
                        &self.limits,
                    )
                });
            match read {
                Ok(bundle) => parsed.push((rollout.clone(), Arc::new(bundle))),
                Err(err) => {
                    error!(rollout = %rollout, bundle = %name, error = %err, "the bundle candidate does not verify here; running without it");
                    let mut failures = self
                        .overlay_failures
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    if !failures.iter().any(|(r, _)| r == rollout) {
                        failures.push((rollout.clone(), err.to_string()));
                    }
                }
            }
        }
        drop(parsed);
        *self
            .overlays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = overlays;
        Ok(())
    }

    /// Checks that `archive` as bundle `name` verifies here, owns roots no other bundle owns and
    /// compiles with everything else; returns its revision and the version of the bundle's
    /// document now (none if new). Nothing is written.
    pub fn check_bundle(
        &self,
        name: &str,
        archive: &[u8],
    ) -> Result<(String, Option<u64>), OpaError> {
        let bundle =
            super::super::bundle::Bundle::read(name, archive, &self.verification, &self.limits)?;
        let mut bundles = self.active_bundles();
        bundles.retain(|b| b.name != name);
        if let Some(other) = bundles.iter().find(|other| bundle.overlaps(other)) {
            return Err(OpaError::BadRequest(format!(
                "detected overlapping roots in bundle manifest with: [{}]",
                other.name
            )));
        }
        let revision = bundle.manifest.revision.clone();
        bundles.push(Arc::new(bundle));
        let modules = self.store.list_documents(DocKind::RegoModule)?;
        let data = self.store.list_documents(DocKind::Data)?;
        self.build_plain(&modules, &data, &bundles)?;
        let base = self
            .store
            .get_document(DocKind::Bundle, name)?
            .map(|d| d.version);
        Ok((revision, base))
    }

    /// Writes a rollout's bundle candidate (pushed, as a push would be), unless the bundle moved
    /// on from `base` meanwhile; returns the version of the bundle's document.
    pub fn write_candidate_bundle(
        &self,
        name: &str,
        archive: &[u8],
        base: Option<u64>,
    ) -> Result<u64, OpaError> {
        let _guard = self.lock();
        let current = self.store.get_document(DocKind::Bundle, name)?;
        let holds = current.as_ref().is_some_and(|doc| {
            super::super::bundle::StoredBundle::parse(&doc.body)
                .ok()
                .and_then(|stored| stored.archive().ok())
                .is_some_and(|bytes| bytes == archive)
        });
        if !holds {
            let now = current.as_ref().map(|d| d.version);
            if now != base {
                return Err(OpaError::Changed(format!(
                    "bundle {name:?} changed during its rollout: the candidate was made from version {base:?}, it is at {now:?}"
                )));
            }
            self.put_bundle_locked(PutBundle {
                name,
                archive,
                source: "push",
                etag: "",
            })?;
        }
        Ok(self
            .store
            .get_document(DocKind::Bundle, name)?
            .map_or(0, |d| d.version))
    }

    /// Refuses an ordinary write of a bundle that has an open rollout.
    pub(super) fn guard_bundle(&self, name: &str) -> Result<(), OpaError> {
        let overlays = self
            .overlays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let subject = Subject::Bundle {
            name: name.to_owned(),
        };
        match overlays.open_on(&subject) {
            Some(rollout) => Err(OpaError::InRollout(format!(
                "{subject} has rollout {rollout} open; cancel it or wait for it (GET /rollouts/{rollout})"
            ))),
            None => Ok(()),
        }
    }

    /// Canary candidates this node should run and cannot compile: (rollout, why).
    pub fn overlay_failures(&self) -> Vec<(String, String)> {
        self.overlay_failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Checks that `text` as module `id` compiles with everything else; returns the module's
    /// current version (none if new). Nothing is written.
    pub fn check_module(&self, id: &str, text: &str) -> Result<Option<u64>, OpaError> {
        if id.trim_matches('/').is_empty() {
            return Err(OpaError::BadRequest("a policy id must not be empty".into()));
        }
        self.check_module_scope(id, Some(text))?;
        let mut modules = self.store.list_documents(DocKind::RegoModule)?;
        let data = self.store.list_documents(DocKind::Data)?;
        let base = modules.iter().find(|m| m.name == id).map(|m| m.version);
        DocWrite::Put {
            kind: DocKind::RegoModule,
            name: id.to_owned(),
            body: text.to_owned(),
        }
        .apply_to(&mut modules);
        self.build_plain(&modules, &data, &self.active_bundles())?;
        Ok(base)
    }

    /// Checks that `value` at `path` makes a data tree that compiles with the modules; returns
    /// the version of the document at `path` (none if there is none). Nothing is written.
    pub fn check_data(&self, path: &str, value: &Value) -> Result<Option<u64>, OpaError> {
        self.check_path_scope(path)?;
        let modules = self.store.list_documents(DocKind::RegoModule)?;
        let mut data = self.store.list_documents(DocKind::Data)?;
        let normalized = data_tree::normalize(path);
        let base = data
            .iter()
            .find(|d| d.name == normalized)
            .map(|d| d.version);
        for write in data_tree::put(&data, path, value.clone())? {
            write.apply_to(&mut data);
        }
        let bytes: u64 = data.iter().map(|d| d.body.len() as u64).sum();
        if bytes > self.max_data_bytes {
            return Err(OpaError::TooLarge(format!(
                "the data documents would take {bytes} bytes together, over rego.max_data_bytes ({})",
                self.max_data_bytes
            )));
        }
        self.build_plain(&modules, &data, &self.active_bundles())?;
        Ok(base)
    }

    /// Writes a rollout's module candidate (the one write its open rollout lets through),
    /// unless the module moved on from `base` (its version when the rollout started) meanwhile;
    /// returns the module's version.
    pub fn write_candidate_module(
        &self,
        id: &str,
        text: String,
        base: Option<u64>,
    ) -> Result<u64, OpaError> {
        let _guard = self.lock();
        let current = self.store.get_document(DocKind::RegoModule, id)?;
        if current.as_ref().is_none_or(|c| c.body != text) {
            let now = current.as_ref().map(|c| c.version);
            if now != base {
                return Err(OpaError::Changed(format!(
                    "module {id:?} changed during its rollout: the candidate was made from version {base:?}, it is at {now:?}"
                )));
            }
            self.put_module_locked(id, text)?;
        }
        Ok(self.get_module(id)?.version)
    }

    /// Writes a rollout's data candidate, unless the document at `path` moved on from `base`
    /// meanwhile; returns the version of the document at `path` (0 if the value went into a
    /// document above it).
    pub fn write_candidate_data(
        &self,
        path: &str,
        value: Value,
        base: Option<u64>,
    ) -> Result<u64, OpaError> {
        let _guard = self.lock();
        let normalized = data_tree::normalize(path);
        let version_at = |store: &Store| -> Result<Option<u64>, OpaError> {
            Ok(store
                .get_document(DocKind::Data, &normalized)?
                .map(|d| d.version))
        };
        let now = version_at(&self.store)?;
        let unchanged = self
            .store
            .get_document(DocKind::Data, &normalized)?
            .is_some_and(|d| serde_json::from_str::<Value>(&d.body).ok().as_ref() == Some(&value));
        if !unchanged {
            if now != base {
                return Err(OpaError::Changed(format!(
                    "data at {normalized:?} changed during its rollout: the candidate was made from version {base:?}, it is at {now:?}"
                )));
            }
            self.put_data_locked(path, value)?;
        }
        Ok(version_at(&self.store)?.unwrap_or(0))
    }

    pub(super) fn guard_module(&self, id: &str) -> Result<(), OpaError> {
        let overlays = self
            .overlays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let subject = Subject::RegoModule { id: id.to_owned() };
        match overlays.open_on(&subject) {
            Some(rollout) => Err(OpaError::InRollout(format!(
                "{subject} has rollout {rollout} open; cancel it or wait for it (GET /rollouts/{rollout})"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses a data write that overlaps a data document with an open rollout.
    pub(super) fn guard_data(&self, path: &str) -> Result<(), OpaError> {
        let path = data_tree::normalize(path);
        let overlays = self
            .overlays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (subject, rollout) in &overlays.open {
            if let Subject::Data { path: open } = subject {
                let open = data_tree::normalize(open);
                let nested = |outer: &str, inner: &str| {
                    outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"))
                };
                if nested(&open, &path) || nested(&path, &open) {
                    return Err(OpaError::InRollout(format!(
                        "data at {path:?} overlaps {subject}, which has rollout {rollout} open; cancel it or wait for it (GET /rollouts/{rollout})"
                    )));
                }
            }
        }
        Ok(())
    }
}
