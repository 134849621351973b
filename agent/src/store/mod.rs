//! The policy store: current policies, their full history, and the store revision, in one redb file.
//!
//! Every write is one redb transaction that updates the policy, its name index, its history and the
//! store revision together, so a crash leaves either the whole change or none of it. The store knows
//! nothing of what a definition means: `policy::PolicyService` validates before it writes here.

mod documents;
mod ids;
pub mod migrate;
pub mod replica;
#[cfg(test)]
mod replica_tests;
pub mod schema;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_proto::{
    ChangeOp, DecodeError, Hlc, PolicyChange, PolicyRecord, ReplicaItem, decode, encode,
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use schema::{
    META, META_CLOCK_LOGICAL, META_CLOCK_WALL, META_LAST_ID, META_REVISION, POLICIES,
    POLICY_HISTORY, POLICY_NAME_HOLDERS, POLICY_NAMES,
};

pub use documents::DocWrite;
pub use ids::MAX_ID;
pub use replica::{MergeOutcome, ReplicaRevision};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("policy {id} not found")]
    NotFound { id: u64 },
    #[error("a policy named `{name}` already exists (id {existing_id})")]
    DuplicateName { name: String, existing_id: u64 },
    #[error("document `{key}` not found")]
    DocumentNotFound { key: String },
    #[error("policy {id} changed concurrently (expected version {expected}, found {found})")]
    VersionConflict { id: u64, expected: u64, found: u64 },
    #[error("data file {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "data file was written by a newer mesh-agent (schema {found}; this build reads up to {supported})"
    )]
    NewerSchema { found: u64, supported: u64 },
    #[error("{context}: {source}")]
    Db {
        context: &'static str,
        #[source]
        source: redb::Error,
    },
    #[error("cannot sign a change: {0}")]
    Sign(String),
    #[error("{context}: {source}")]
    Decode {
        context: &'static str,
        #[source]
        source: DecodeError,
    },
}

/// Adds what the store was doing to a redb error.
pub(crate) trait DbContext<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> DbContext<T> for Result<T, E> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|err| StoreError::Db {
            context,
            source: err.into(),
        })
    }
}

/// The fields of a policy that a user sets; the store adds id, version, times, stamp and author.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyFields {
    pub name: String,
    pub description: String,
    pub definition_json: String,
    pub active: bool,
    pub priority: i64,
}

/// The agent's data file.
pub struct Store {
    db: Arc<Database>,
    node_id: String,
    node_tag: u64,
    /// Serializes writers so the clock and id counter advance in commit order.
    writer: Mutex<()>,
    /// This node's key, once it is in a mesh: local changes are signed with it.
    signer: OnceLock<Arc<crate::identity::Signer>>,
    /// Bumped after every committed write, so the mesh can publish the new revision.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Store {
    /// Opens (or creates) the data file at `path`, migrating an older schema in place.
    pub fn open(path: &Path, node_id: &str) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        migrate::to_current(&db, node_id)?;
        Ok(Store {
            db: Arc::new(db),
            node_id: node_id.to_owned(),
            node_tag: ids::node_tag(node_id),
            writer: Mutex::new(()),
            signer: OnceLock::new(),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The underlying database, shared with the audit ring (one file, one writer at a time).
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Changes whenever a write commits (policies, documents, merges).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Creates a policy. Fails with `DuplicateName` if the name is taken.
    pub fn create(&self, fields: PolicyFields) -> Result<PolicyRecord, StoreError> {
        self.write(|txn, now| {
            check_name_free(txn, &fields.name, None)?;
            let id = allocate_id(txn, now.ms, self.node_tag)?;
            let record = PolicyRecord {
                id,
                name: fields.name,
                description: fields.description,
                definition_json: fields.definition_json,
                active: fields.active,
                priority: fields.priority,
                version: 1,
                created_at_us: now.us,
                updated_at_us: now.us,
                stamp: tick_clock(txn, now.ms)?,
                author: self.node_id.clone(),
            };
            put_policy(txn, &record, None)?;
            record_change(txn, ChangeOp::Create, &record)?;
            replica::record_local(
                txn,
                ReplicaItem::Policy(record.clone()),
                false,
                self.signer(),
            )?;
            Ok(record)
        })
    }

    /// Replaces a policy's fields, if it is still at `expected_version`.
    pub fn update(
        &self,
        id: u64,
        expected_version: u64,
        fields: PolicyFields,
    ) -> Result<PolicyRecord, StoreError> {
        self.write(|txn, now| {
            let current = get_in(txn, id)?.ok_or(StoreError::NotFound { id })?;
            if current.version != expected_version {
                return Err(StoreError::VersionConflict {
                    id,
                    expected: expected_version,
                    found: current.version,
                });
            }
            check_name_free(txn, &fields.name, Some(id))?;
            let record = PolicyRecord {
                name: fields.name,
                description: fields.description,
                definition_json: fields.definition_json,
                active: fields.active,
                priority: fields.priority,
                version: current.version + 1,
                updated_at_us: now.us,
                stamp: tick_clock(txn, now.ms)?,
                author: self.node_id.clone(),
                ..current.clone()
            };
            put_policy(txn, &record, Some(&current.name))?;
            record_change(txn, ChangeOp::Update, &record)?;
            replica::record_local(
                txn,
                ReplicaItem::Policy(record.clone()),
                false,
                self.signer(),
            )?;
            Ok(record)
        })
    }

    /// Deletes a policy, keeping its history (the delete is the last version).
    pub fn delete(&self, id: u64) -> Result<PolicyRecord, StoreError> {
        self.write(|txn, now| {
            let current = get_in(txn, id)?.ok_or(StoreError::NotFound { id })?;
            txn.open_table(POLICIES)
                .ctx("open policies")?
                .remove(id)
                .ctx("delete policy")?;
            release_name(txn, &current.name, id)?;
            // Another policy may hold the same name (concurrent creates on two nodes).
            reindex_name(txn, &current.name)?;
            let tombstone = PolicyRecord {
                version: current.version + 1,
                updated_at_us: now.us,
                stamp: tick_clock(txn, now.ms)?,
                author: self.node_id.clone(),
                ..current
            };
            record_change(txn, ChangeOp::Delete, &tombstone)?;
            replica::record_local(
                txn,
                ReplicaItem::Policy(tombstone.clone()),
                true,
                self.signer(),
            )?;
            Ok(tombstone)
        })
    }

    pub fn get(&self, id: u64) -> Result<Option<PolicyRecord>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(POLICIES).ctx("open policies")?;
        let Some(bytes) = table.get(id).ctx("read policy")? else {
            return Ok(None);
        };
        decode_policy(bytes.value()).map(Some)
    }

    pub fn get_by_name(&self, name: &str) -> Result<Option<PolicyRecord>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let names = txn.open_table(POLICY_NAMES).ctx("open policy names")?;
        let Some(id) = names.get(name).ctx("read policy name")?.map(|v| v.value()) else {
            return Ok(None);
        };
        drop(names);
        let table = txn.open_table(POLICIES).ctx("open policies")?;
        match table.get(id).ctx("read policy")? {
            Some(bytes) => decode_policy(bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Every current policy, in id order.
    pub fn list(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(POLICIES).ctx("open policies")?;
        let mut out = Vec::with_capacity(table.len().ctx("count policies")? as usize);
        for entry in table.iter().ctx("scan policies")? {
            let (_, bytes) = entry.ctx("scan policies")?;
            out.push(decode_policy(bytes.value())?);
        }
        Ok(out)
    }

    /// Every change to one policy, oldest first (empty if the id never existed).
    pub fn history(&self, id: u64) -> Result<Vec<PolicyChange>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(POLICY_HISTORY).ctx("open policy history")?;
        let mut out = Vec::new();
        for entry in table
            .range((id, 0)..=(id, u64::MAX))
            .ctx("scan policy history")?
        {
            let (_, bytes) = entry.ctx("scan policy history")?;
            out.push(decode(bytes.value()).map_err(|source| StoreError::Decode {
                context: "policy history",
                source,
            })?);
        }
        Ok(out)
    }

    /// The store revision: how many changes this data file has recorded.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let meta = txn.open_table(META).ctx("open meta")?;
        Ok(meta
            .get(META_REVISION)
            .ctx("read revision")?
            .map_or(0, |v| v.value()))
    }

    fn write<T>(
        &self,
        change: impl FnOnce(&WriteTransaction, Now) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A poisoned lock only means another writer panicked; the database itself stayed consistent.
        let _guard = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let txn = self.db.begin_write().ctx("begin write")?;
        let out = change(&txn, Now::read())?;
        txn.commit().ctx("commit policy change")?;
        self.changes.send_modify(|n| *n += 1);
        Ok(out)
    }
}

#[derive(Clone, Copy)]
struct Now {
    ms: u64,
    us: i64,
}

impl Now {
    fn read() -> Now {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Now {
            ms: since_epoch.as_millis() as u64,
            us: since_epoch.as_micros() as i64,
        }
    }
}

fn decode_policy(bytes: &[u8]) -> Result<PolicyRecord, StoreError> {
    decode(bytes).map_err(|source| StoreError::Decode {
        context: "policy",
        source,
    })
}

fn get_in(txn: &WriteTransaction, id: u64) -> Result<Option<PolicyRecord>, StoreError> {
    let table = txn.open_table(POLICIES).ctx("open policies")?;
    let bytes = table.get(id).ctx("read policy")?;
    bytes.map(|b| decode_policy(b.value())).transpose()
}

fn check_name_free(
    txn: &WriteTransaction,
    name: &str,
    owner: Option<u64>,
) -> Result<(), StoreError> {
    let names = txn.open_table(POLICY_NAMES).ctx("open policy names")?;
    match names.get(name).ctx("read policy name")?.map(|v| v.value()) {
        Some(existing_id) if Some(existing_id) != owner => Err(StoreError::DuplicateName {
            name: name.to_owned(),
            existing_id,
        }),
        _ => Ok(()),
    }
}

fn put_policy(
    txn: &WriteTransaction,
    record: &PolicyRecord,
    previous_name: Option<&str>,
) -> Result<(), StoreError> {
    txn.open_table(POLICIES)
        .ctx("open policies")?
        .insert(record.id, encode(record).as_slice())
        .ctx("write policy")?;
    if let Some(previous) = previous_name.filter(|p| *p != record.name) {
        release_name(txn, previous, record.id)?;
        reindex_name(txn, previous)?;
    }
    hold_name(txn, &record.name, record.id)?;
    reindex_name(txn, &record.name)
}

/// Records that policy `id` is called `name` (see [`POLICY_NAME_HOLDERS`]).
pub(crate) fn hold_name(txn: &WriteTransaction, name: &str, id: u64) -> Result<(), StoreError> {
    txn.open_table(POLICY_NAME_HOLDERS)
        .ctx("open policy name holders")?
        .insert((name, id), ())
        .ctx("write policy name holder")?;
    Ok(())
}

/// Records that policy `id` is no longer called `name`.
pub(crate) fn release_name(txn: &WriteTransaction, name: &str, id: u64) -> Result<(), StoreError> {
    txn.open_table(POLICY_NAME_HOLDERS)
        .ctx("open policy name holders")?
        .remove((name, id))
        .ctx("drop policy name holder")?;
    Ok(())
}

/// Points the name index at the live policy called `name` with the lowest id, or drops the entry
/// if none is left. Names are unique per node, but two nodes can create one name concurrently;
/// every node then resolves it the same way, and when one of them goes the other takes the name.
pub(crate) fn reindex_name(txn: &WriteTransaction, name: &str) -> Result<(), StoreError> {
    let holder = txn
        .open_table(POLICY_NAME_HOLDERS)
        .ctx("open policy name holders")?
        .range((name, 0)..=(name, u64::MAX))
        .ctx("read policy name holders")?
        .next()
        .transpose()
        .ctx("read policy name holders")?
        .map(|(key, _)| key.value().1);
    let mut names = txn.open_table(POLICY_NAMES).ctx("open policy names")?;
    match holder {
        Some(id) => names.insert(name, id).ctx("index policy name")?,
        None => names.remove(name).ctx("drop policy name")?,
    };
    Ok(())
}

fn record_change(
    txn: &WriteTransaction,
    op: ChangeOp,
    record: &PolicyRecord,
) -> Result<(), StoreError> {
    let revision = next_revision(txn)?;
    let change = PolicyChange {
        revision,
        op,
        policy: record.clone(),
    };
    txn.open_table(POLICY_HISTORY)
        .ctx("open policy history")?
        .insert((record.id, record.version), encode(&change).as_slice())
        .ctx("write policy history")?;
    Ok(())
}

/// Advances and returns the store revision: one per change, policies and documents alike.
fn next_revision(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META).ctx("open meta")?;
    let revision = meta
        .get(META_REVISION)
        .ctx("read revision")?
        .map_or(0, |v| v.value())
        + 1;
    meta.insert(META_REVISION, revision).ctx("write revision")?;
    Ok(revision)
}

fn allocate_id(txn: &WriteTransaction, now_ms: u64, tag: u64) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META).ctx("open meta")?;
    let policies = txn.open_table(POLICIES).ctx("open policies")?;
    let history = txn.open_table(POLICY_HISTORY).ctx("open policy history")?;
    let mut last = meta
        .get(META_LAST_ID)
        .ctx("read last id")?
        .map_or(0, |v| v.value());
    loop {
        let id = ids::next_id(now_ms, tag, last);
        // An id is never reused, not even one whose policy was deleted (its history keeps the id).
        let taken = policies.get(id).ctx("read policy")?.is_some()
            || history
                .range((id, 0)..=(id, u64::MAX))
                .ctx("read policy history")?
                .next()
                .is_some();
        if !taken {
            meta.insert(META_LAST_ID, id).ctx("write last id")?;
            return Ok(id);
        }
        last = id;
    }
}

fn tick_clock(txn: &WriteTransaction, now_ms: u64) -> Result<Hlc, StoreError> {
    advance_clock(txn, |last| last.tick(now_ms))
}

/// Moves the clock past a stamp seen from a peer, so local changes made after a merge order after it.
fn merge_clock(txn: &WriteTransaction, seen: Hlc, now_ms: u64) -> Result<Hlc, StoreError> {
    advance_clock(txn, |last| last.merge(seen, now_ms))
}

fn advance_clock(txn: &WriteTransaction, step: impl FnOnce(Hlc) -> Hlc) -> Result<Hlc, StoreError> {
    let mut meta = txn.open_table(META).ctx("open meta")?;
    let last = Hlc {
        wall_ms: meta_u64(&meta, META_CLOCK_WALL)?,
        logical: meta_u64(&meta, META_CLOCK_LOGICAL)? as u32,
    };
    let next = step(last);
    meta.insert(META_CLOCK_WALL, next.wall_ms)
        .ctx("write clock")?;
    meta.insert(META_CLOCK_LOGICAL, u64::from(next.logical))
        .ctx("write clock")?;
    Ok(next)
}

/// A counter of the meta table; 0 if it was never written.
fn meta_u64(meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, StoreError> {
    Ok(meta.get(key).ctx("read meta")?.map_or(0, |v| v.value()))
}

#[cfg(test)]
mod tests;
