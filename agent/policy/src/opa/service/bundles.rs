//! The service's bundles: pushing one (`put_bundle`: read and verify, roots checked against the
//! other bundles, compiled with everything else, then stored and swapped in), removing one, and
//! activating what the store holds after a merge (`load_all`: every bundle that changed is
//! verified again with this node's keys). A bundle owns its roots: modules and data written
//! through the API under them are refused, as OPA refuses them. Each bundle's status is kept in
//! OPA's shape for `/v1/status`.

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_proto::{DocKind, DocumentRecord, Hlc};
use serde::Serialize;
use tracing::{error, info};

use agent_base::clock::{now_us, rfc3339};
use agent_engine::rego::outline;
use agent_store::DocWrite;

use super::super::OpaError;
use super::super::bundle::{Bundle, Limits, StoredBundle, manifest};
use super::super::data_tree;
use super::RegoService;

/// The limits of a service built without `[bundle]` (its defaults).
pub(super) const DEFAULT_LIMITS: Limits = Limits {
    max_bytes: 8 * 1024 * 1024,
    max_uncompressed_bytes: 64 * 1024 * 1024,
    max_files: 1_000,
};

/// Go's zero time, which OPA's status shows for "never".
const NEVER: &str = "0001-01-01T00:00:00Z";

/// A bundle in the set: the version of its document it was read from.
#[derive(Clone)]
pub(super) struct ActiveBundle {
    bundle: Arc<Bundle>,
    /// (stamp, author): which version of the replicated document this is, on every node.
    version: (Hlc, String),
    document_version: u64,
    source: String,
    etag: String,
}

#[derive(Default)]
pub(super) struct BundleState {
    active: BTreeMap<String, ActiveBundle>,
    status: BTreeMap<String, BundleStatus>,
}

/// A bundle's status in OPA's shape (`/v1/status` `bundles.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BundleStatus {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub active_revision: String,
    pub last_successful_download: String,
    pub last_successful_activation: String,
    pub last_request: String,
    pub last_successful_request: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_code: Option<u16>,
    #[serde(skip_serializing_if = "is_zero")]
    pub size: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl BundleStatus {
    fn new(name: &str) -> BundleStatus {
        BundleStatus {
            name: name.to_owned(),
            active_revision: String::new(),
            last_successful_download: NEVER.into(),
            last_successful_activation: NEVER.into(),
            last_request: NEVER.into(),
            last_successful_request: NEVER.into(),
            kind: "snapshot",
            code: String::new(),
            message: String::new(),
            errors: Vec::new(),
            http_code: None,
            size: 0,
        }
    }

    fn set_error(&mut self, err: &OpaError) {
        self.code = "bundle_error".into();
        match err {
            OpaError::Compile(compile) => {
                self.message = "error(s) occurred while compiling module(s)".into();
                self.errors = vec![serde_json::to_value(compile).unwrap_or_default()];
            }
            other => {
                self.message = other.to_string();
                self.errors.clear();
            }
        }
    }

    fn clear_error(&mut self) {
        self.code.clear();
        self.message.clear();
        self.errors.clear();
        self.http_code = None;
    }
}

/// `GET /v1/bundles/{name}`: the status, and what the bundle is.
#[derive(Debug, Clone, Serialize)]
pub struct BundleInfo {
    #[serde(flatten)]
    pub status: BundleStatus,
    /// The roots it owns (empty when it is not active).
    pub roots: Vec<String>,
    /// Its modules' ids.
    pub modules: Vec<String>,
    /// `push` or the URL it was downloaded from.
    pub source: String,
    pub etag: String,
    /// The version of its stored document.
    pub version: u64,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A bundle to activate.
pub struct PutBundle<'a> {
    pub name: &'a str,
    /// The `.tar.gz` as received.
    pub archive: &'a [u8],
    /// `push`, or the URL it was downloaded from.
    pub source: &'a str,
    /// The bundle server's ETag ("" for a push).
    pub etag: &'a str,
}

/// What a poller says of one request to a bundle server.
pub struct PollNote<'a> {
    pub name: &'a str,
    /// The request got an answer (200 or 304).
    pub ok: bool,
    pub http_code: Option<u16>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl RegoService {
    /// Activates the bundle `put.name` from its archive: read and verified with this node's keys,
    /// its roots checked against the other bundles', compiled with everything else; only then
    /// stored (and so rolled out to the mesh) and swapped in. Returns its revision and whether
    /// anything changed (the same archive pushed again changes nothing).
    pub fn put_bundle(&self, put: PutBundle<'_>) -> Result<(String, bool), OpaError> {
        let _guard = self.lock();
        // Under the write lock: a bundle with an open rollout changes only through it.
        self.guard_bundle(put.name)?;
        self.put_bundle_locked(put)
    }

    /// [`put_bundle`](Self::put_bundle), under the write lock, past the rollout guard.
    pub(super) fn put_bundle_locked(&self, put: PutBundle<'_>) -> Result<(String, bool), OpaError> {
        let bundle = Arc::new(
            Bundle::read(put.name, put.archive, &self.verification, &self.limits)
                .inspect_err(|_| self.metrics.bundle_refused())?,
        );
        let mut others = self.active_bundles();
        others.retain(|b| b.name != put.name);
        if let Some(other) = others.iter().find(|other| bundle.overlaps(other)) {
            self.metrics.bundle_refused();
            return Err(OpaError::BadRequest(format!(
                "detected overlapping roots in bundle manifest with: [{}] (bundle {:?} has roots {:?}, {:?} has {:?})",
                other.name, put.name, bundle.manifest.roots, other.name, other.manifest.roots
            )));
        }
        let revision = bundle.manifest.revision.clone();
        if let Some(stored) = self.store.get_document(DocKind::Bundle, put.name)?
            && let Ok(stored) = StoredBundle::parse(&stored.body)
            && stored.source == put.source
            && stored.etag == put.etag
            && stored.archive().is_ok_and(|a| a == put.archive)
            && self.bundles_read().active.contains_key(put.name)
        {
            return Ok((revision, false));
        }
        let modules = self.store.list_documents(DocKind::RegoModule)?;
        let data = self.store.list_documents(DocKind::Data)?;
        let mut bundles = others;
        bundles.push(Arc::clone(&bundle));
        let set = self
            .build(&modules, &data, &bundles)
            .inspect_err(|_| self.metrics.bundle_refused())?;
        let at = rfc3339(now_us());
        let body = StoredBundle::new(put.archive, &revision, put.source, put.etag, &at).to_json();
        let written = self.store.write_documents(vec![DocWrite::Put {
            kind: DocKind::Bundle,
            name: put.name.to_owned(),
            body,
        }])?;
        let store_revision = self.store.revision()?;
        self.swap(set.at_revision(store_revision));
        let mut state = self.bundles_write();
        if let Some(record) = written.first() {
            state.active.insert(
                put.name.to_owned(),
                ActiveBundle {
                    bundle: Arc::clone(&bundle),
                    version: (record.stamp, record.author.clone()),
                    document_version: record.version,
                    source: put.source.to_owned(),
                    etag: put.etag.to_owned(),
                },
            );
        }
        let status = state
            .status
            .entry(put.name.to_owned())
            .or_insert_with(|| BundleStatus::new(put.name));
        status.active_revision.clone_from(&revision);
        status.last_successful_download = at.clone();
        status.last_successful_activation = at;
        status.size = bundle.size;
        status.clear_error();
        self.metrics.bundle_activated(state.active.len());
        info!(bundle = put.name, revision = %revision, source = put.source, store_revision, "bundle activated");
        Ok((revision, true))
    }

    /// Removes the bundle `name` (its modules and its data with it).
    pub fn delete_bundle(&self, name: &str) -> Result<(), OpaError> {
        let _guard = self.lock();
        self.guard_bundle(name)?;
        if self.store.get_document(DocKind::Bundle, name)?.is_none() {
            return Err(OpaError::NotFound(format!("bundle {name:?}")));
        }
        let modules = self.store.list_documents(DocKind::RegoModule)?;
        let data = self.store.list_documents(DocKind::Data)?;
        let mut bundles = self.active_bundles();
        bundles.retain(|b| b.name != name);
        let set = self.build(&modules, &data, &bundles)?;
        self.store.write_documents(vec![DocWrite::Delete {
            kind: DocKind::Bundle,
            name: name.to_owned(),
        }])?;
        self.swap(set.at_revision(self.store.revision()?));
        let mut state = self.bundles_write();
        state.active.remove(name);
        state.status.remove(name);
        self.metrics.bundle_activated(state.active.len());
        info!(bundle = name, "bundle removed");
        Ok(())
    }

    /// The stored document of bundle `name` (what its poller needs: ETag, source), if any.
    pub fn stored_bundle(&self, name: &str) -> Result<Option<StoredBundle>, OpaError> {
        match self.store.get_document(DocKind::Bundle, name)? {
            Some(doc) => Ok(Some(StoredBundle::parse(&doc.body)?)),
            None => Ok(None),
        }
    }

    /// Records what a poller's request to the bundle server of `name` gave.
    pub fn note_poll(&self, note: PollNote<'_>) {
        let mut state = self.bundles_write();
        let active = state.active.contains_key(note.name);
        let status = state
            .status
            .entry(note.name.to_owned())
            .or_insert_with(|| BundleStatus::new(note.name));
        let now = rfc3339(now_us());
        status.last_request.clone_from(&now);
        status.http_code = note.http_code.filter(|c| *c != 200 && *c != 304);
        if note.ok {
            status.last_successful_request = now;
        }
        if let Some(message) = note.error {
            status.code = "bundle_error".into();
            status.message = message;
            status.errors.clear();
        } else if note.ok && active {
            status.clear_error();
        }
    }

    /// Every bundle's status, by name.
    pub fn bundle_status(&self) -> Vec<BundleStatus> {
        self.bundles_read().status.values().cloned().collect()
    }

    /// One bundle's status and what it is; `None` if this node knows nothing of it.
    pub fn bundle_info(&self, name: &str) -> Option<BundleInfo> {
        let state = self.bundles_read();
        let status = state.status.get(name)?.clone();
        let active = state.active.get(name);
        Some(BundleInfo {
            status,
            roots: active.map_or_else(Vec::new, |a| a.bundle.manifest.roots.clone()),
            modules: active.map_or_else(Vec::new, |a| {
                a.bundle.modules.iter().map(|m| m.id.clone()).collect()
            }),
            source: active.map_or_else(String::new, |a| a.source.clone()),
            etag: active.map_or_else(String::new, |a| a.etag.clone()),
            version: active.map_or(0, |a| a.document_version),
            metadata: active.map_or_else(Default::default, |a| a.bundle.manifest.metadata.clone()),
        })
    }

    /// The revision of every bundle decisions use now, by name (`/mesh/members` gossips it): on
    /// a canary node, the candidate's.
    pub fn bundle_revisions(&self) -> BTreeMap<String, String> {
        self.engine.current().bundle_revisions().as_ref().clone()
    }

    /// Whether every bundle in `names` is active (`GET /health?bundles=true`).
    pub fn bundles_activated(&self, names: &[String]) -> bool {
        let state = self.bundles_read();
        names.iter().all(|name| state.active.contains_key(name))
    }

    /// Activates what the store holds: modules, data, and every stored bundle, each verified
    /// again (with this node's keys) when its document changed since it was last activated here.
    /// One that does not verify, overlaps another's roots, or does not compile is not activated;
    /// it is logged, counted and shown in its status (its previous version, if any, stays).
    pub(super) fn load_all(&self, why: &str) -> Result<(), OpaError> {
        let modules = self.store.list_documents(DocKind::RegoModule)?;
        let data = self.store.list_documents(DocKind::Data)?;
        let stored = self.store.list_documents(DocKind::Bundle)?;
        let revision = self.store.revision()?;
        let previous = self.bundles_read().active.clone();
        let mut kept: BTreeMap<String, ActiveBundle> = BTreeMap::new();
        let mut fresh: Vec<(ActiveBundle, String)> = Vec::new();
        let mut failed: Vec<(String, OpaError)> = Vec::new();
        for doc in &stored {
            let version = (doc.stamp, doc.author.clone());
            match previous.get(&doc.name) {
                Some(active) if active.version == version => {
                    kept.insert(doc.name.clone(), active.clone());
                }
                _ => match self.read_stored(doc) {
                    Ok((active, at)) => fresh.push((active, at)),
                    Err(err) => {
                        // OPA keeps the bundle it had when a new one fails to activate.
                        if let Some(old) = previous.get(&doc.name) {
                            kept.insert(doc.name.clone(), old.clone());
                        }
                        failed.push((doc.name.clone(), err));
                    }
                },
            }
        }
        // Roots: a fresh bundle may not overlap a kept one, nor an earlier fresh one.
        let mut accepted: Vec<(ActiveBundle, String)> = Vec::new();
        for (candidate, at) in fresh {
            let clash = kept
                .values()
                .filter(|k| k.bundle.name != candidate.bundle.name)
                .map(|k| &k.bundle)
                .chain(accepted.iter().map(|(a, _)| &a.bundle))
                .find(|other| candidate.bundle.overlaps(other))
                .map(|other| other.name.clone());
            match clash {
                Some(other) => failed.push((
                    candidate.bundle.name.clone(),
                    OpaError::BadRequest(format!(
                        "detected overlapping roots in bundle manifest with: [{other}]"
                    )),
                )),
                None => {
                    kept.remove(&candidate.bundle.name);
                    accepted.push((candidate, at));
                }
            }
        }
        let mut all: Vec<Arc<Bundle>> = kept.values().map(|a| Arc::clone(&a.bundle)).collect();
        all.extend(accepted.iter().map(|(a, _)| Arc::clone(&a.bundle)));
        let set = match self.build(&modules, &data, &all) {
            Ok(set) => set,
            Err(err) if !accepted.is_empty() => {
                // The new bundles do not compile with the rest here: without them.
                let message = err.to_string();
                for (candidate, _) in accepted.drain(..) {
                    let name = candidate.bundle.name.clone();
                    if let Some(old) = previous.get(&name) {
                        kept.insert(name.clone(), old.clone());
                    }
                    failed.push((
                        name,
                        match &err {
                            OpaError::Compile(compile) => OpaError::Compile(compile.clone()),
                            _ => OpaError::BadRequest(message.clone()),
                        },
                    ));
                }
                let all: Vec<Arc<Bundle>> = kept.values().map(|a| Arc::clone(&a.bundle)).collect();
                self.build(&modules, &data, &all)?
            }
            Err(err) => return Err(err),
        };
        self.swap(set.at_revision(revision));
        let mut state = self.bundles_write();
        let BundleState { active, status } = &mut *state;
        *active = kept;
        let now = rfc3339(now_us());
        for (candidate, downloaded_at) in accepted {
            let name = candidate.bundle.name.clone();
            let entry = status
                .entry(name.clone())
                .or_insert_with(|| BundleStatus::new(&name));
            entry
                .active_revision
                .clone_from(&candidate.bundle.manifest.revision);
            entry.last_successful_download = downloaded_at;
            entry.last_successful_activation.clone_from(&now);
            entry.size = candidate.bundle.size;
            entry.clear_error();
            info!(bundle = %name, revision = %candidate.bundle.manifest.revision, why, "bundle activated");
            active.insert(name, candidate);
        }
        for (name, err) in &failed {
            error!(bundle = %name, error = %err, why, "bundle not activated on this node");
            self.metrics.bundle_refused();
            status
                .entry(name.clone())
                .or_insert_with(|| BundleStatus::new(name))
                .set_error(err);
        }
        // Bundles deleted elsewhere are gone from the status too (those a poller here asks for
        // stay: their requests are news).
        status.retain(|name, s| stored.iter().any(|d| &d.name == name) || s.last_request != NEVER);
        self.metrics.bundle_activated(active.len());
        info!(
            revision,
            modules = modules.len(),
            bundles = active.len(),
            why,
            "Rego policy set loaded"
        );
        Ok(())
    }

    /// Reads and verifies a stored bundle document.
    fn read_stored(&self, doc: &DocumentRecord) -> Result<(ActiveBundle, String), OpaError> {
        let stored = StoredBundle::parse(&doc.body)?;
        let archive = stored.archive()?;
        let bundle = Bundle::read(&doc.name, &archive, &self.verification, &self.limits)?;
        Ok((
            ActiveBundle {
                bundle: Arc::new(bundle),
                version: (doc.stamp, doc.author.clone()),
                document_version: doc.version,
                source: stored.source,
                etag: stored.etag,
            },
            stored.downloaded_at,
        ))
    }

    /// The bundles in the set now.
    pub(super) fn active_bundles(&self) -> Vec<Arc<Bundle>> {
        self.bundles_read()
            .active
            .values()
            .map(|a| Arc::clone(&a.bundle))
            .collect()
    }

    /// The modules of the active bundles, as records (read-only: they change with their bundle).
    pub(super) fn bundle_modules(&self) -> Vec<DocumentRecord> {
        let state = self.bundles_read();
        state
            .active
            .values()
            .flat_map(|a| {
                a.bundle.modules.iter().map(|m| DocumentRecord {
                    kind: DocKind::RegoModule,
                    name: m.id.clone(),
                    body: m.text.clone(),
                    version: a.document_version,
                    created_at_us: 0,
                    updated_at_us: 0,
                    stamp: a.version.0,
                    author: a.version.1.clone(),
                })
            })
            .collect()
    }

    /// Refuses a data write at `path` that a bundle owns (OPA's `checkPathScope`).
    pub(super) fn check_path_scope(&self, path: &str) -> Result<(), OpaError> {
        let path = data_tree::normalize(path);
        let state = self.bundles_read();
        if path.is_empty() && !state.active.is_empty() {
            return Err(OpaError::BadRequest(
                "can't write to document root with bundle roots configured".into(),
            ));
        }
        for (name, active) in &state.active {
            for root in &active.bundle.manifest.roots {
                if root.is_empty() {
                    return Err(OpaError::BadRequest(format!(
                        "all paths owned by bundle {name:?}"
                    )));
                }
                if manifest::overlap(root, &path) {
                    return Err(OpaError::BadRequest(format!(
                        "path {path} is owned by bundle {name:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Refuses a module write (`text`) or delete (`None`) of `id` whose package a bundle owns,
    /// and any write to a bundle's own module.
    pub(super) fn check_module_scope(&self, id: &str, text: Option<&str>) -> Result<(), OpaError> {
        if let Some(owner) = self
            .bundles_read()
            .active
            .values()
            .find(|a| a.bundle.modules.iter().any(|m| m.id == id))
        {
            return Err(OpaError::BadRequest(format!(
                "policy id {id:?} is owned by bundle {:?}",
                owner.bundle.name
            )));
        }
        let mut packages = Vec::new();
        if let Some(text) = text
            && let Ok(parsed) = outline(id, text)
        {
            packages.push(parsed.package[1..].join("/"));
        }
        if let Some(existing) = self.store.get_document(DocKind::RegoModule, id)?
            && let Ok(parsed) = outline(id, &existing.body)
        {
            packages.push(parsed.package[1..].join("/"));
        }
        for package in packages {
            self.check_path_scope(&package)?;
        }
        Ok(())
    }

    fn bundles_read(&self) -> std::sync::RwLockReadGuard<'_, BundleState> {
        self.bundles
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bundles_write(&self) -> std::sync::RwLockWriteGuard<'_, BundleState> {
        self.bundles
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
