//! Brings a data file written by any earlier schema up to [`SCHEMA_VERSION`], in one transaction.
//!
//! A fresh file is stamped with the current schema. A file from a newer build is refused rather than
//! guessed at. Each step reads the old shapes (kept in `mesh_proto`) and writes the new ones; if a
//! step fails, the transaction is dropped and the file is left exactly as it was.

use mesh_proto::{
    AuditRecordV1, ChangeOp, Hlc, PolicyChange, PolicyRecord, PolicyRecordV1, decode, encode,
};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableHandle, WriteTransaction};
use tracing::info;

use super::schema::{
    AUDIT, DOCUMENT_HISTORY, DOCUMENTS, META, META_CLOCK_LOGICAL, META_CLOCK_WALL, META_LAST_ID,
    META_REVISION, META_SCHEMA, POLICIES, POLICY_HISTORY, POLICY_NAME_HOLDERS, POLICY_NAMES,
    SCHEMA_VERSION,
};
use super::{DbContext, StoreError, replica, schema};

/// Migrates `db` to the current schema; `node_id` becomes the author of versions the old schema
/// did not attribute.
pub fn to_current(db: &Database, node_id: &str) -> Result<(), StoreError> {
    let txn = db.begin_write().ctx("begin migration")?;
    let found = schema_of(&txn)?;
    match found {
        None => info!(schema = SCHEMA_VERSION, "new data file"),
        Some(v) if v == SCHEMA_VERSION => {}
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::NewerSchema {
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
        Some(v) => {
            info!(from = v, to = SCHEMA_VERSION, "migrating data file");
            if v < 2 {
                v1_to_v2(&txn, node_id)?;
            }
            // 2 -> 3 only adds the document tables, created below like every table.
            if v < 4 {
                v3_to_v4(&txn)?;
            }
            if v < 5 {
                v4_to_v5(&txn)?;
            }
            // 5 -> 6 only adds the outbox's summary lane, created below like every table.
            if v < 7 {
                v6_to_v7(&txn)?;
            }
            if v < 8 {
                v7_to_v8(&txn)?;
            }
            // 8 -> 9 only changes the format of new audit entries; old ones are read as they are.
            // 9 -> 10 adds a table (below); 10 -> 11 changes the format of new audit entries and
            // allows new document kinds.
        }
    }
    // Creating every table up front lets readers open them without a write transaction.
    txn.open_table(POLICIES).ctx("create policies")?;
    txn.open_table(POLICY_NAMES).ctx("create policy names")?;
    txn.open_table(POLICY_NAME_HOLDERS)
        .ctx("create policy name holders")?;
    txn.open_table(POLICY_HISTORY)
        .ctx("create policy history")?;
    txn.open_table(AUDIT).ctx("create audit ring")?;
    txn.open_table(DOCUMENTS).ctx("create documents")?;
    txn.open_table(DOCUMENT_HISTORY)
        .ctx("create document history")?;
    txn.open_table(schema::REPLICA).ctx("create replica")?;
    txn.open_table(schema::REPLICA_LOG)
        .ctx("create replica log")?;
    txn.open_table(schema::NODE_CERTS)
        .ctx("create node certs")?;
    txn.open_table(schema::PEER_CURSORS)
        .ctx("create peer cursors")?;
    txn.open_table(schema::OUTBOX).ctx("create outbox")?;
    txn.open_table(schema::OUTBOX_SUMMARIES)
        .ctx("create outbox summaries")?;
    txn.open_table(schema::OUTBOX_DECISION_LOGS)
        .ctx("create outbox decision logs")?;
    if found.is_none_or(|v| v < 4) {
        // Drawn once per data file: peers key their cursors by it (see `store::replica`).
        let incarnation = u64::from_le_bytes(
            *uuid::Uuid::new_v4()
                .as_bytes()
                .first_chunk()
                .unwrap_or(&[1; 8]),
        );
        txn.open_table(META)
            .ctx("open meta")?
            .insert(schema::META_INCARNATION, incarnation)
            .ctx("write incarnation")?;
    }
    txn.open_table(META)
        .ctx("create meta")?
        .insert(META_SCHEMA, SCHEMA_VERSION)
        .ctx("write schema version")?;
    txn.commit().ctx("commit migration")?;
    Ok(())
}

/// Schema 3 -> 4: the current policies and documents become the replica's first entries.
fn v3_to_v4(txn: &WriteTransaction) -> Result<(), StoreError> {
    replica::seed_from_current(txn)
}

/// Schema 4 -> 5: an empty outbox.
fn v4_to_v5(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(schema::OUTBOX).ctx("create outbox")?;
    Ok(())
}

/// Schema 6 -> 7: the audit ring's entries, oldest first, re-encoded as a hash chain.
fn v6_to_v7(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut table = txn.open_table(AUDIT).ctx("open audit ring")?;
    let mut old = Vec::new();
    for entry in table.iter().ctx("scan audit ring")? {
        let (seq, bytes) = entry.ctx("scan audit ring")?;
        let record: AuditRecordV1 = decode(bytes.value()).map_err(|source| StoreError::Decode {
            context: "schema 6 audit entry",
            source,
        })?;
        old.push((seq.value(), record));
    }
    let mut prev_hash = [0u8; 32];
    let count = old.len();
    for (seq, record) in old {
        let encoded = encode(&record.chained(prev_hash));
        prev_hash = crate::audit_ring::entry_hash(&encoded);
        table
            .insert(seq, encoded.as_slice())
            .ctx("rewrite audit entry")?;
    }
    info!(entries = count, "audit ring chained");
    Ok(())
}

/// Schema 7 -> 8: who holds each name, from the policies themselves.
fn v7_to_v8(txn: &WriteTransaction) -> Result<(), StoreError> {
    let policies = txn.open_table(POLICIES).ctx("open policies")?;
    let mut holders = txn
        .open_table(POLICY_NAME_HOLDERS)
        .ctx("create policy name holders")?;
    for entry in policies.iter().ctx("scan policies")? {
        let (id, bytes) = entry.ctx("scan policies")?;
        let record: PolicyRecord = decode(bytes.value()).map_err(|source| StoreError::Decode {
            context: "policy",
            source,
        })?;
        holders
            .insert((record.name.as_str(), id.value()), ())
            .ctx("write policy name holder")?;
    }
    Ok(())
}

/// The schema a file was written with; `None` for a file no agent has written yet.
fn schema_of(txn: &WriteTransaction) -> Result<Option<u64>, StoreError> {
    let has_meta = txn
        .list_tables()
        .ctx("list tables")?
        .any(|t| t.name() == META.name());
    if !has_meta {
        return Ok(None);
    }
    let meta = txn.open_table(META).ctx("open meta")?;
    Ok(meta
        .get(META_SCHEMA)
        .ctx("read schema version")?
        .map(|v| v.value()))
}

/// Schema 1 -> 2: every policy becomes version 1 of itself, authored by this node, with a history.
fn v1_to_v2(txn: &WriteTransaction, node_id: &str) -> Result<(), StoreError> {
    let mut old = Vec::new();
    {
        let table = txn.open_table(POLICIES).ctx("open schema 1 policies")?;
        for entry in table.iter().ctx("scan schema 1 policies")? {
            let (_, bytes) = entry.ctx("scan schema 1 policies")?;
            let record: PolicyRecordV1 =
                decode(bytes.value()).map_err(|source| StoreError::Decode {
                    context: "schema 1 policy",
                    source,
                })?;
            old.push(record);
        }
    }
    let mut policies = txn.open_table(POLICIES).ctx("open policies")?;
    let mut names = txn.open_table(POLICY_NAMES).ctx("open policy names")?;
    let mut history = txn.open_table(POLICY_HISTORY).ctx("open policy history")?;
    let mut clock = Hlc::default();
    let mut last_id = 0;
    for (index, v1) in old.into_iter().enumerate() {
        // Schema 1 had no clock: the last update time is the best stamp there is.
        let stamp = Hlc {
            wall_ms: (v1.updated_at_us.max(0) / 1_000) as u64,
            logical: 0,
        };
        clock = clock.max(stamp);
        last_id = last_id.max(v1.id);
        let record = PolicyRecord {
            id: v1.id,
            name: v1.name,
            description: v1.description,
            definition_json: v1.definition_json,
            active: v1.active,
            priority: v1.priority,
            version: 1,
            created_at_us: v1.created_at_us,
            updated_at_us: v1.updated_at_us,
            stamp,
            author: node_id.to_owned(),
        };
        names
            .insert(record.name.as_str(), record.id)
            .ctx("index policy name")?;
        policies
            .insert(record.id, encode(&record).as_slice())
            .ctx("write policy")?;
        let change = PolicyChange {
            revision: index as u64 + 1,
            op: ChangeOp::Create,
            policy: record,
        };
        history
            .insert((change.policy.id, 1), encode(&change).as_slice())
            .ctx("write policy history")?;
    }
    let mut meta = txn.open_table(META).ctx("open meta")?;
    meta.insert(META_REVISION, policies.len().ctx("count policies")?)
        .ctx("write revision")?;
    meta.insert(META_LAST_ID, last_id).ctx("write last id")?;
    meta.insert(META_CLOCK_WALL, clock.wall_ms)
        .ctx("write clock")?;
    meta.insert(META_CLOCK_LOGICAL, u64::from(clock.logical))
        .ctx("write clock")?;
    Ok(())
}
