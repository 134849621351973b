//! The audit ring's table operations: append with eviction, trim to its bounds, read newest first.
//!
//! Keys are sequence numbers 1, 2, 3, ...; appending entry `seq` evicts entry `seq - entries`, so an
//! append is one insert and at most one remove whatever the ring's size. The ring is bounded in
//! bytes too: the encoded size of its entries is kept in `meta` (`audit_bytes`), and an append that
//! takes it over `bytes` evicts the oldest entries until it fits (large events keep fewer entries).
//!
//! The ring is a hash chain: every entry carries the SHA-256 of the stored bytes of the one before
//! it (read back in the same transaction that appends), so [`verify`] can tell a stopped agent's
//! ring is gap-free and unaltered from its oldest kept entry to its head.

use mesh_proto::{AuditRecord, decode_audit, encode};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::schema::{AUDIT, META, META_AUDIT_BYTES};
use crate::{DbContext, StoreError};

/// How much the ring keeps: the newest `entries`, and at most `bytes` of them (encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub entries: u64,
    pub bytes: u64,
}

/// The sequence number of the newest entry, 0 for an empty ring.
pub fn head(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read().ctx("begin read")?;
    let table = txn.open_table(AUDIT).ctx("open audit ring")?;
    let last = table.last().ctx("read audit head")?;
    Ok(last.map_or(0, |(k, _)| k.value()))
}

/// Recounts the ring's bytes and drops the oldest entries until it is within `bounds` (which may
/// have shrunk, or an older build kept no byte count). Returns how many entries were dropped.
pub fn trim(db: &Database, bounds: Bounds) -> Result<u64, StoreError> {
    let txn = db.begin_write().ctx("begin audit trim")?;
    let mut dropped = 0;
    {
        let mut table = txn.open_table(AUDIT).ctx("open audit ring")?;
        let mut bytes = 0u64;
        for entry in table.iter().ctx("scan audit ring")? {
            let (_, value) = entry.ctx("scan audit ring")?;
            bytes += value.value().len() as u64;
        }
        // As in `append`, the newest entry stays even alone over the byte bound: the sequence
        // numbers go on from it.
        while table.len().ctx("count audit ring")? > bounds.entries
            || (bytes > bounds.bytes && table.len().ctx("count audit ring")? > 1)
        {
            let Some((_, value)) = table.pop_first().ctx("trim audit ring")? else {
                break;
            };
            bytes -= value.value().len() as u64;
            dropped += 1;
        }
        let mut meta = txn.open_table(META).ctx("open meta")?;
        meta.insert(META_AUDIT_BYTES, bytes)
            .ctx("write audit bytes")?;
    }
    txn.commit().ctx("commit audit trim")?;
    Ok(dropped)
}

/// SHA-256 of an entry's stored bytes: the `prev_hash` of the entry after it.
pub fn entry_hash(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Appends `records` (already numbered) in one transaction, chaining each to the one before it
/// and evicting what falls out of the ring.
pub fn append(
    txn: &WriteTransaction,
    records: &mut [AuditRecord],
    bounds: Bounds,
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(AUDIT).ctx("open audit ring")?;
    let mut prev_hash = table
        .last()
        .ctx("read audit head")?
        .map_or([0u8; 32], |(_, bytes)| entry_hash(bytes.value()));
    let mut meta = txn.open_table(META).ctx("open meta")?;
    let mut bytes = meta
        .get(META_AUDIT_BYTES)
        .ctx("read audit bytes")?
        .map_or(0, |v| v.value());
    for record in records.iter_mut() {
        record.prev_hash = prev_hash;
        let encoded = encode(&*record);
        prev_hash = entry_hash(&encoded);
        bytes += encoded.len() as u64;
        table
            .insert(record.seq, encoded.as_slice())
            .ctx("append audit entry")?;
        if record.seq > bounds.entries
            && let Some(evicted) = table
                .remove(record.seq - bounds.entries)
                .ctx("evict audit entry")?
        {
            bytes -= evicted.value().len() as u64;
        }
    }
    // The newest entry always stays, even alone over the bound (an event is at most
    // `max_body_bytes` or `mqtt.max_message_bytes`).
    while bytes > bounds.bytes && table.len().ctx("count audit ring")? > 1 {
        let Some((_, evicted)) = table.pop_first().ctx("evict audit entry")? else {
            break;
        };
        bytes -= evicted.value().len() as u64;
    }
    meta.insert(META_AUDIT_BYTES, bytes)
        .ctx("write audit bytes")?;
    Ok(())
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// Sequence numbers of the oldest and newest entries (0 and 0 for an empty ring).
    pub first: u64,
    pub last: u64,
    /// The first entry that breaks the chain, and how; `None` if the ring is whole.
    pub broken: Option<(u64, String)>,
}

/// Checks the ring, oldest to newest: sequence numbers without gaps, every entry readable, and
/// every entry's `prev_hash` the hash of the entry before it. The oldest kept entry's own
/// `prev_hash` names an evicted entry and cannot be checked.
pub fn verify(db: &impl ReadableDatabase) -> Result<Verified, StoreError> {
    let txn = db.begin_read().ctx("begin read")?;
    let mut verified = Verified {
        entries: 0,
        first: 0,
        last: 0,
        broken: None,
    };
    let schema = txn
        .open_table(META)
        .ctx("open meta")?
        .get(crate::schema::META_SCHEMA)
        .ctx("read schema version")?
        .map(|v| v.value());
    if let Some(schema) = schema.filter(|v| *v < 7) {
        verified.broken = Some((
            0,
            format!(
                "the file has schema {schema}, from before the audit chain: start the agent once \
                 to migrate it"
            ),
        ));
        return Ok(verified);
    }
    let table = txn.open_table(AUDIT).ctx("open audit ring")?;
    let mut previous: Option<(u64, [u8; 32])> = None;
    for entry in table.iter().ctx("scan audit ring")? {
        let (seq, bytes) = entry.ctx("scan audit ring")?;
        let (seq, bytes) = (seq.value(), bytes.value());
        let problem = match decode_audit(bytes) {
            Err(err) => Some(format!("entry {seq} cannot be read: {err}")),
            Ok(record) if record.seq != seq => {
                Some(format!("entry {seq} says it is entry {}", record.seq))
            }
            Ok(record) => match previous {
                Some((prev_seq, _)) if seq != prev_seq + 1 => Some(format!(
                    "entries {} to {} are missing",
                    prev_seq + 1,
                    seq - 1
                )),
                Some((prev_seq, prev_hash)) if record.prev_hash != prev_hash => Some(format!(
                    "entry {seq} does not follow entry {prev_seq} (its prev_hash differs)"
                )),
                _ => None,
            },
        };
        if verified.entries == 0 {
            verified.first = seq;
        }
        verified.entries += 1;
        verified.last = seq;
        if let Some(problem) = problem
            && verified.broken.is_none()
        {
            verified.broken = Some((seq, problem));
        }
        previous = Some((seq, entry_hash(bytes)));
    }
    Ok(verified)
}

/// The ring's size in bytes, as last committed.
pub fn bytes(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read().ctx("begin read")?;
    let meta = txn.open_table(META).ctx("open meta")?;
    Ok(meta
        .get(META_AUDIT_BYTES)
        .ctx("read audit bytes")?
        .map_or(0, |v| v.value()))
}

/// Which entries a read wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query {
    pub limit: usize,
    /// Only entries older than this sequence number (the next page of an earlier read).
    pub before_seq: Option<u64>,
    /// Stop once the entries read take this many bytes (encoded), after at least one; 0: no cap.
    pub max_bytes: usize,
    /// Only entries in which this policy matched or lacked a field (the verdicts the ring keeps).
    pub policy_id: Option<u64>,
    /// Only entries at or after this time (Unix µs).
    pub since_us: Option<i64>,
    /// Only entries in which a policy (the `policy_id` one, if given) matched.
    pub matched_only: bool,
}

/// Entries read, newest first.
#[derive(Debug, Default)]
pub struct Page {
    pub records: Vec<AuditRecord>,
    /// The ring's head as of the same snapshot.
    pub head: u64,
    /// Set when the read stopped at its byte cap: read on with `before_seq` set to it.
    pub next_before: Option<u64>,
}

/// Reads entries newest first, with the ring's head as of the same snapshot.
pub fn read(db: &Database, query: Query) -> Result<Page, StoreError> {
    let txn = db.begin_read().ctx("begin read")?;
    let table = txn.open_table(AUDIT).ctx("open audit ring")?;
    let head = table
        .last()
        .ctx("read audit head")?
        .map_or(0, |(k, _)| k.value());
    let mut out = Vec::with_capacity(query.limit.min(1024));
    let mut taken = 0usize;
    let mut next_before = None;
    let upper = query.before_seq.unwrap_or(u64::MAX);
    for entry in table.range(..upper).ctx("scan audit ring")?.rev() {
        if out.len() >= query.limit {
            break;
        }
        let (seq, bytes) = entry.ctx("scan audit ring")?;
        if query.max_bytes > 0 && !out.is_empty() && taken + bytes.value().len() > query.max_bytes {
            next_before = Some(seq.value() + 1);
            break;
        }
        let record: AuditRecord =
            decode_audit(bytes.value()).map_err(|source| StoreError::Decode {
                context: "audit entry",
                source,
            })?;
        if query.since_us.is_some_and(|since| record.at_us < since) {
            // Entries are appended in time order: everything older follows.
            break;
        }
        if wanted(&record, &query) {
            taken += bytes.value().len();
            out.push(record);
        }
    }
    Ok(Page {
        records: out,
        head,
        next_before,
    })
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
