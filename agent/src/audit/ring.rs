//! The audit ring's table operations: append with eviction, trim to capacity, read newest first.
//!
//! Keys are sequence numbers 1, 2, 3, ...; appending entry `seq` evicts entry `seq - capacity`, so an
//! append is one insert and at most one remove whatever the ring's size.

use mesh_proto::{AuditRecord, decode, encode};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::store::schema::AUDIT;
use crate::store::{DbContext, StoreError};

/// The sequence number of the newest entry, 0 for an empty ring.
pub fn head(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read().ctx("begin read")?;
    let table = txn.open_table(AUDIT).ctx("open audit ring")?;
    let last = table.last().ctx("read audit head")?;
    Ok(last.map_or(0, |(k, _)| k.value()))
}

/// Drops the oldest entries until at most `capacity` remain (the capacity may have shrunk).
pub fn trim(db: &Database, capacity: u64) -> Result<u64, StoreError> {
    let txn = db.begin_write().ctx("begin audit trim")?;
    let mut dropped = 0;
    {
        let mut table = txn.open_table(AUDIT).ctx("open audit ring")?;
        while table.len().ctx("count audit ring")? > capacity {
            table.pop_first().ctx("trim audit ring")?;
            dropped += 1;
        }
    }
    txn.commit().ctx("commit audit trim")?;
    Ok(dropped)
}

/// Appends `records` (already numbered) in one transaction, evicting what falls out of the ring.
pub fn append(
    txn: &WriteTransaction,
    records: &[AuditRecord],
    capacity: u64,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(AUDIT).ctx("open audit ring")?;
    for record in records {
        table
            .insert(record.seq, encode(record).as_slice())
            .ctx("append audit entry")?;
        if record.seq > capacity {
            table
                .remove(record.seq - capacity)
                .ctx("evict audit entry")?;
        }
    }
    Ok(())
}

/// Which entries a read wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query {
    pub limit: usize,
    /// Only entries in which this policy matched or lacked a field (the verdicts the ring keeps).
    pub policy_id: Option<u64>,
    /// Only entries at or after this time (Unix µs).
    pub since_us: Option<i64>,
    /// Only entries in which a policy (the `policy_id` one, if given) matched.
    pub matched_only: bool,
}

/// Reads entries newest first, with the ring's head as of the same snapshot.
pub fn read(db: &Database, query: Query) -> Result<(Vec<AuditRecord>, u64), StoreError> {
    let txn = db.begin_read().ctx("begin read")?;
    let table = txn.open_table(AUDIT).ctx("open audit ring")?;
    let head = table
        .last()
        .ctx("read audit head")?
        .map_or(0, |(k, _)| k.value());
    let mut out = Vec::with_capacity(query.limit.min(1024));
    for entry in table.iter().ctx("scan audit ring")?.rev() {
        if out.len() >= query.limit {
            break;
        }
        let (_, bytes) = entry.ctx("scan audit ring")?;
        let record: AuditRecord = decode(bytes.value()).map_err(|source| StoreError::Decode {
            context: "audit entry",
            source,
        })?;
        if query.since_us.is_some_and(|since| record.at_us < since) {
            // Entries are appended in time order: everything older follows.
            break;
        }
        if wanted(&record, &query) {
            out.push(record);
        }
    }
    Ok((out, head))
}

fn wanted(record: &AuditRecord, query: &Query) -> bool {
    match query.policy_id {
        Some(id) => record
            .results
            .iter()
            .any(|r| r.policy_id == id && (r.matched || !query.matched_only)),
        None => !query.matched_only || record.results.iter().any(|r| r.matched),
    }
}
