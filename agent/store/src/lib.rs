//! The data file (redb): current policies and documents with their full history and the store
//! revision, the replicated set the mesh merges into, and the tables other layers own in the same
//! file (the audit ring, the outbox), all named in [`schema`].
//!
//! Every write is one redb transaction that updates the record, its name index, its history and the
//! store revision together (through one table writer, whether the version was made here or merged
//! from a peer), so a crash leaves either the whole change or none of it.
//!
//! Architecture invariant: the store knows nothing of what a definition means (the policy service
//! validates before it writes here) and calls no layer above it.

pub mod audit_ring;
mod documents;
mod ids;
mod migrate;
mod replica;
#[cfg(test)]
mod replica_tests;
pub mod schema;
mod tables;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use mesh_proto::{DecodeError, Hlc, PolicyChange, PolicyRecord, ReplicaItem, decode};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use schema::{
    META, META_CLOCK_LOGICAL, META_CLOCK_WALL, META_LAST_ID, META_REVISION, POLICIES,
    POLICY_HISTORY, POLICY_NAMES,
};
use tables::{Origin, decode_policy};

pub use documents::DocWrite;
pub use ids::MAX_ID;
pub use migrate::to_current as migrate;

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

/// Adds what the store was doing to a redb error. Public: every subsystem's tables live in this
/// data file, and their errors read the same.
pub trait DbContext<T> {
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
    signer: OnceLock<Arc<agent_identity::Signer>>,
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
        Store::on(db, node_id)
    }

    /// A store held in memory only (redb's in-memory backend): a simulated node's.
    pub fn open_in_memory(node_id: &str) -> Result<Store, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|source| StoreError::Open {
                path: "(memory)".into(),
                source,
            })?;
        Store::on(db, node_id)
    }

    fn on(db: Database, node_id: &str) -> Result<Store, StoreError> {
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
            tables::write_policy(txn, None, &record, false, Origin::Local)?;
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
            let current = tables::current_policy(txn, id)?.ok_or(StoreError::NotFound { id })?;
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
            tables::write_policy(txn, Some(&current), &record, false, Origin::Local)?;
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
            let current = tables::current_policy(txn, id)?.ok_or(StoreError::NotFound { id })?;
            let tombstone = PolicyRecord {
                version: current.version + 1,
                updated_at_us: now.us,
                stamp: tick_clock(txn, now.ms)?,
                author: self.node_id.clone(),
                ..current.clone()
            };
            // Another policy may hold the same name (concurrent creates on two nodes): the
            // writer points the name at it.
            tables::write_policy(txn, Some(&current), &tombstone, true, Origin::Local)?;
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
        let us = agent_base::clock::now_us().max(0);
        Now {
            ms: (us / 1_000) as u64,
            us,
        }
    }
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
