//! The replicated policy set: the latest signed version of every key (policies, Rego modules, data
//! documents; deletes kept as tombstones), a local log of which key changed when, and the merge of
//! changes pulled from peers.
//!
//! Every key is a last-writer-wins register ordered by (HLC stamp, author id). A local write and
//! its replica entry are one transaction ([`record_local`]); a batch pulled from a peer is merged
//! in one transaction together with the cursor saying how far that peer's log has been read
//! ([`Store::merge_remote`]). Each merged entry gets a new local sequence number, so a node's log
//! is "what changed here, in order", and peers pull from any node, not only from authors.
//!
//! Tombstones are kept for `tombstone_ttl` (see ARCHITECTURE.md, "Deletes and long absences").

use mesh_proto::{
    DocKind, DocumentRecord, LoggedChange, PolicyRecord, ReplicaItem, SignedChange, decode, encode,
};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use ring::digest::{Context, SHA256};
use tracing::warn;

use super::schema::{DOCUMENTS, META, POLICIES};
use super::tables::{self, Origin, decode_document, decode_policy};
use super::{DbContext, Store, StoreError, merge_clock, meta_u64};
use agent_identity::Signer;

use crate::schema::{
    META_INCARNATION, META_LAST_SYNC, META_MEMBERS_SEEN, META_REPLICA_SEQ, NODE_CERTS,
    PEER_CURSORS, REPLICA, REPLICA_LOG,
};

/// What a merge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Changes that won over what this node had.
    pub applied: usize,
    /// Changes this node already had, or had something newer than.
    pub stale: usize,
    pub policies_changed: bool,
    /// Rego modules or data documents changed.
    pub documents_changed: bool,
    /// A rollout changed (a shadow version or canary published, or a rollout's state).
    pub rollouts_changed: bool,
}

/// A page of this node's log, for a peer's pull.
pub struct LogPage {
    pub incarnation: u64,
    pub head: u64,
    pub changes: Vec<LoggedChange>,
    pub more: bool,
}

/// How far this node's replicated set is: the head of its log, and a digest of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRevision {
    pub incarnation: u64,
    pub head: u64,
    /// Hex of the first 16 bytes of SHA-256 over every (key, stamp, author, deleted) in key order:
    /// two nodes with the same digest hold the same winners.
    pub digest: String,
    /// Live (not deleted) keys.
    pub live: usize,
}

/// Records a local write of `item` as the new version of its key, signed if the node has a key.
pub(super) fn record_local(
    txn: &WriteTransaction,
    item: ReplicaItem,
    deleted: bool,
    signer: Option<&Signer>,
) -> Result<(), StoreError> {
    let signature = match signer {
        Some(signer) => sign(signer, &item, deleted)?,
        None => Vec::new(),
    };
    put_entry(
        txn,
        SignedChange {
            item,
            deleted,
            signature,
        },
    )
}

fn sign(signer: &Signer, item: &ReplicaItem, deleted: bool) -> Result<Vec<u8>, StoreError> {
    signer
        .sign(&SignedChange::signed_bytes(item, deleted))
        .map_err(|err| StoreError::Sign(err.to_string()))
}

/// Writes `change` as the current entry of its key under a new sequence number.
fn put_entry(txn: &WriteTransaction, change: SignedChange) -> Result<(), StoreError> {
    let key = change.item.key();
    let mut replica = txn.open_table(REPLICA).ctx("open replica")?;
    let mut log = txn.open_table(REPLICA_LOG).ctx("open replica log")?;
    let previous = replica
        .get(key.as_str())
        .ctx("read replica entry")?
        .map(|bytes| decode_entry(bytes.value()))
        .transpose()?;
    if let Some(previous) = previous {
        log.remove(previous.seq).ctx("drop old log entry")?;
    }
    let seq = next_seq(txn)?;
    log.insert(seq, key.as_str()).ctx("write replica log")?;
    replica
        .insert(
            key.as_str(),
            encode(&LoggedChange { seq, change }).as_slice(),
        )
        .ctx("write replica entry")?;
    Ok(())
}

fn next_seq(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META).ctx("open meta")?;
    let seq = meta_u64(&meta, META_REPLICA_SEQ)? + 1;
    meta.insert(META_REPLICA_SEQ, seq)
        .ctx("write replica seq")?;
    Ok(seq)
}

fn decode_entry(bytes: &[u8]) -> Result<LoggedChange, StoreError> {
    decode(bytes).map_err(|source| StoreError::Decode {
        context: "replica entry",
        source,
    })
}

fn cursor_key(peer: &str, incarnation: u64) -> String {
    format!("{peer}/{incarnation}")
}

/// Fills the replica from the current policies and documents of a file written before
/// replication existed (schema 3): each becomes an unsigned entry, signed when the node joins a
/// mesh ([`Store::sign_own_changes`]).
pub(super) fn seed_from_current(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut items = Vec::new();
    for entry in txn
        .open_table(POLICIES)
        .ctx("open policies")?
        .iter()
        .ctx("scan policies")?
    {
        let (_, bytes) = entry.ctx("scan policies")?;
        items.push(ReplicaItem::Policy(decode_policy(bytes.value())?));
    }
    for entry in txn
        .open_table(DOCUMENTS)
        .ctx("open documents")?
        .iter()
        .ctx("scan documents")?
    {
        let (_, bytes) = entry.ctx("scan documents")?;
        items.push(ReplicaItem::Document(decode_document(bytes.value())?));
    }
    for item in items {
        record_local(txn, item, false, None)?;
    }
    Ok(())
}

impl Store {
    /// Gives the store this node's key: from now on every local change is signed.
    pub fn set_signer(&self, signer: std::sync::Arc<Signer>) {
        // Set once at mesh start; a second call keeps the first signer.
        let _ = self.signer.set(signer);
    }

    pub(super) fn signer(&self) -> Option<&Signer> {
        self.signer.get().map(|s| s.as_ref())
    }

    /// Signs every change this node authored that has no signature yet (made while it ran alone,
    /// or before schema 4), and records this node's certificate. Returns how many were signed.
    pub fn sign_own_changes(&self) -> Result<usize, StoreError> {
        let Some(signer) = self.signer.get().cloned() else {
            return Ok(0);
        };
        self.write(|txn, _| {
            txn.open_table(NODE_CERTS)
                .ctx("open node certs")?
                .insert(signer.node_id(), signer.cert_der())
                .ctx("write node cert")?;
            let mut unsigned = Vec::new();
            for entry in txn
                .open_table(REPLICA)
                .ctx("open replica")?
                .iter()
                .ctx("scan replica")?
            {
                let (_, bytes) = entry.ctx("scan replica")?;
                let logged = decode_entry(bytes.value())?;
                if logged.change.signature.is_empty() {
                    unsigned.push(logged);
                }
            }
            let mut signed = 0;
            let mut replica = txn.open_table(REPLICA).ctx("open replica")?;
            for mut logged in unsigned {
                if logged.change.item.author() != signer.node_id() {
                    // Written by another node id on this data file (the node was renamed): it
                    // cannot be signed by this key, so it stays local.
                    warn!(key = %logged.change.item.key(), author = logged.change.item.author(), "unsigned change by another node id stays local");
                    continue;
                }
                logged.change.signature =
                    sign(&signer, &logged.change.item, logged.change.deleted)?;
                replica
                    .insert(logged.change.item.key().as_str(), encode(&logged).as_slice())
                    .ctx("write replica entry")?;
                signed += 1;
            }
            Ok(signed)
        })
    }

    /// This data file's incarnation: a random number drawn when the file was created, so peers
    /// can tell a wiped and re-created node from the one they had read before.
    pub fn incarnation(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let meta = txn.open_table(META).ctx("open meta")?;
        meta_u64(&meta, META_INCARNATION)
    }

    /// The head of this node's log and the digest of its replicated set.
    pub fn replica_revision(&self) -> Result<ReplicaRevision, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let meta = txn.open_table(META).ctx("open meta")?;
        let head = meta_u64(&meta, META_REPLICA_SEQ)?;
        let incarnation = meta_u64(&meta, META_INCARNATION)?;
        let mut hash = Context::new(&SHA256);
        let mut live = 0;
        for entry in txn
            .open_table(REPLICA)
            .ctx("open replica")?
            .iter()
            .ctx("scan replica")?
        {
            let (key, bytes) = entry.ctx("scan replica")?;
            let logged = decode_entry(bytes.value())?;
            let item = &logged.change.item;
            let stamp = item.stamp();
            hash.update(key.value().as_bytes());
            hash.update(&[0]);
            hash.update(&stamp.wall_ms.to_be_bytes());
            hash.update(&stamp.logical.to_be_bytes());
            hash.update(item.author().as_bytes());
            hash.update(&[0, u8::from(logged.change.deleted)]);
            if !logged.change.deleted {
                live += 1;
            }
        }
        let digest = hash.finish();
        let digest = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(ReplicaRevision {
            incarnation,
            head,
            digest,
            live,
        })
    }

    /// The entries of this node's log after `since`, oldest first, at most `limit`, and no more
    /// than `max_bytes` of encoded entries (a page always holds one entry, however large: a
    /// bundle document is megabytes, and 512 of them would not fit one response).
    pub fn log_since(
        &self,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<LogPage, StoreError> {
        self.read_log(since, limit, max_bytes, false)
    }

    fn read_log(
        &self,
        since: u64,
        limit: usize,
        max_bytes: usize,
        with_unsigned: bool,
    ) -> Result<LogPage, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let meta = txn.open_table(META).ctx("open meta")?;
        let head = meta_u64(&meta, META_REPLICA_SEQ)?;
        let incarnation = meta_u64(&meta, META_INCARNATION)?;
        let log = txn.open_table(REPLICA_LOG).ctx("open replica log")?;
        let replica = txn.open_table(REPLICA).ctx("open replica")?;
        let mut changes = Vec::new();
        let mut bytes_taken = 0usize;
        let mut more = false;
        for entry in log
            .range(since.saturating_add(1)..)
            .ctx("scan replica log")?
        {
            if changes.len() == limit {
                more = true;
                break;
            }
            let (_, key) = entry.ctx("scan replica log")?;
            let Some(bytes) = replica.get(key.value()).ctx("read replica entry")? else {
                continue;
            };
            let size = bytes.value().len();
            if !changes.is_empty() && bytes_taken.saturating_add(size) > max_bytes {
                more = true;
                break;
            }
            let logged = decode_entry(bytes.value())?;
            // Unsigned entries (a node that ran alone, before it signed them) are not handed on.
            if with_unsigned || !logged.change.signature.is_empty() {
                bytes_taken = bytes_taken.saturating_add(size);
                changes.push(logged);
            }
        }
        Ok(LogPage {
            incarnation,
            head,
            changes,
            more,
        })
    }

    /// Like [`log_since`](Self::log_since), with unsigned entries too: for tests of the merge
    /// rules without certificates.
    #[cfg(test)]
    pub(crate) fn log_since_unsigned(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<LogPage, StoreError> {
        self.read_log(since, limit, usize::MAX, true)
    }

    /// [`log_since_unsigned`](Self::log_since_unsigned) with a byte budget.
    #[cfg(test)]
    pub(crate) fn log_since_unsigned_bytes(
        &self,
        since: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<LogPage, StoreError> {
        self.read_log(since, limit, max_bytes, true)
    }

    /// The certificates this node holds for `authors` (DER).
    pub fn node_certs(&self, authors: &[&str]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let certs = txn.open_table(NODE_CERTS).ctx("open node certs")?;
        let mut out = Vec::new();
        for author in authors {
            if let Some(der) = certs.get(*author).ctx("read node cert")? {
                out.push(((*author).to_owned(), der.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// How far the log of `peer` (at `incarnation`) has been merged here.
    pub fn peer_cursor(&self, peer: &str, incarnation: u64) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let cursors = txn.open_table(PEER_CURSORS).ctx("open peer cursors")?;
        Ok(cursors
            .get(cursor_key(peer, incarnation).as_str())
            .ctx("read peer cursor")?
            .map_or(0, |v| v.value()))
    }

    /// Merges changes pulled from `peer`'s log (already verified by the caller) and moves the
    /// cursor for that peer to `cursor`, in one transaction. `certs` are the verified
    /// certificates of the changes' authors, kept to hand on with the changes.
    pub fn merge_remote(
        &self,
        peer: &str,
        incarnation: u64,
        cursor: u64,
        changes: Vec<SignedChange>,
        certs: &[(String, Vec<u8>)],
    ) -> Result<MergeOutcome, StoreError> {
        self.write(|txn, now| {
            let mut outcome = MergeOutcome::default();
            {
                let mut table = txn.open_table(NODE_CERTS).ctx("open node certs")?;
                for (author, der) in certs {
                    table
                        .insert(author.as_str(), der.as_slice())
                        .ctx("write node cert")?;
                }
            }
            for change in changes {
                let key = change.item.key();
                let current = txn
                    .open_table(REPLICA)
                    .ctx("open replica")?
                    .get(key.as_str())
                    .ctx("read replica entry")?
                    .map(|bytes| decode_entry(bytes.value()))
                    .transpose()?;
                let newer = current
                    .as_ref()
                    .is_none_or(|c| change.item.order() > c.change.item.order());
                if !newer {
                    outcome.stale += 1;
                    continue;
                }
                // Local changes made after this one must order after it.
                merge_clock(txn, change.item.stamp(), now.ms)?;
                match &change.item {
                    ReplicaItem::Policy(policy) => {
                        apply_policy(txn, policy, change.deleted)?;
                        outcome.policies_changed = true;
                    }
                    ReplicaItem::Document(doc) => {
                        apply_document(txn, doc, change.deleted)?;
                        if doc.kind == DocKind::Rollout {
                            outcome.rollouts_changed = true;
                        } else {
                            outcome.documents_changed = true;
                        }
                    }
                }
                put_entry(txn, change)?;
                outcome.applied += 1;
            }
            txn.open_table(PEER_CURSORS)
                .ctx("open peer cursors")?
                .insert(cursor_key(peer, incarnation).as_str(), cursor)
                .ctx("write peer cursor")?;
            txn.open_table(META)
                .ctx("open meta")?
                .insert(META_LAST_SYNC, now.ms)
                .ctx("write last sync")?;
            Ok(outcome)
        })
    }

    /// Records that this node was in step with a peer just now.
    pub fn mark_synced(&self) -> Result<(), StoreError> {
        self.write(|txn, now| {
            txn.open_table(META)
                .ctx("open meta")?
                .insert(META_LAST_SYNC, now.ms)
                .ctx("write last sync")?;
            Ok(())
        })
    }

    /// When this node was last in step with a peer (ms since the epoch); `None` if never.
    pub fn last_synced_ms(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let meta = txn.open_table(META).ctx("open meta")?;
        Ok(meta
            .get(META_LAST_SYNC)
            .ctx("read last sync")?
            .map(|v| v.value()))
    }

    /// Notes how many members (alive or dead) this node's settled view of the mesh holds: the
    /// next run counts a majority against it until its own view has settled.
    pub fn note_members_seen(&self, members: u64) -> Result<(), StoreError> {
        self.write(|txn, _| {
            txn.open_table(META)
                .ctx("open meta")?
                .insert(META_MEMBERS_SEEN, members)
                .ctx("write members seen")?;
            Ok(())
        })
    }

    /// What [`note_members_seen`](Self::note_members_seen) last noted; `None` if never.
    pub fn members_seen(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let meta = txn.open_table(META).ctx("open meta")?;
        Ok(meta
            .get(META_MEMBERS_SEEN)
            .ctx("read members seen")?
            .map(|v| v.value()))
    }

    /// After a full pull by a node that was away longer than the tombstone TTL: drops the keys
    /// the peer does not have and that were last written before `horizon_ms`. Their deletes may
    /// have been forgotten by the mesh already, so keeping them could bring deleted policies
    /// back. Keys written after the horizon are kept (a delete of them would still be known).
    /// Returns the keys dropped.
    pub fn drop_absent_before(
        &self,
        present: &std::collections::HashSet<String>,
        horizon_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        self.write(|txn, _| {
            let mut doomed = Vec::new();
            for entry in txn
                .open_table(REPLICA)
                .ctx("open replica")?
                .iter()
                .ctx("scan replica")?
            {
                let (key, bytes) = entry.ctx("scan replica")?;
                let logged = decode_entry(bytes.value())?;
                if !present.contains(key.value()) && logged.change.item.stamp().wall_ms < horizon_ms
                {
                    doomed.push((key.value().to_owned(), logged));
                }
            }
            let mut keys = Vec::with_capacity(doomed.len());
            for (key, logged) in doomed {
                // Removed from the domain tables as a delete would, but without a tombstone: the
                // key is simply unknown here from now on, as at the peer.
                match &logged.change.item {
                    ReplicaItem::Policy(p) if !logged.change.deleted => {
                        apply_policy(txn, p, true)?;
                    }
                    ReplicaItem::Document(d) if !logged.change.deleted => {
                        apply_document(txn, d, true)?;
                    }
                    _ => {}
                }
                txn.open_table(REPLICA)
                    .ctx("open replica")?
                    .remove(key.as_str())
                    .ctx("drop replica entry")?;
                txn.open_table(REPLICA_LOG)
                    .ctx("open replica log")?
                    .remove(logged.seq)
                    .ctx("drop replica log entry")?;
                keys.push(key);
            }
            Ok(keys)
        })
    }

    /// Drops tombstones whose stamp is older than `horizon_ms` (wall clock, ms since the epoch).
    /// Returns how many were dropped.
    pub fn drop_tombstones_before(&self, horizon_ms: u64) -> Result<usize, StoreError> {
        self.write(|txn, _| {
            let mut expired = Vec::new();
            for entry in txn
                .open_table(REPLICA)
                .ctx("open replica")?
                .iter()
                .ctx("scan replica")?
            {
                let (key, bytes) = entry.ctx("scan replica")?;
                let logged = decode_entry(bytes.value())?;
                if logged.change.deleted && logged.change.item.stamp().wall_ms < horizon_ms {
                    expired.push((key.value().to_owned(), logged.seq));
                }
            }
            let mut replica = txn.open_table(REPLICA).ctx("open replica")?;
            let mut log = txn.open_table(REPLICA_LOG).ctx("open replica log")?;
            for (key, seq) in &expired {
                replica.remove(key.as_str()).ctx("drop tombstone")?;
                log.remove(*seq).ctx("drop tombstone log entry")?;
            }
            Ok(expired.len())
        })
    }
}

/// Writes a merged policy version (or its delete) through the table writer local writes use.
fn apply_policy(
    txn: &WriteTransaction,
    incoming: &PolicyRecord,
    deleted: bool,
) -> Result<(), StoreError> {
    let current = tables::current_policy(txn, incoming.id)?;
    tables::write_policy(txn, current.as_ref(), incoming, deleted, Origin::Merged)
}

/// Writes a merged document version (or its delete) through the table writer local writes use.
fn apply_document(
    txn: &WriteTransaction,
    incoming: &DocumentRecord,
    deleted: bool,
) -> Result<(), StoreError> {
    let key = incoming.kind.key(&incoming.name);
    let existed = tables::document_exists(txn, &key)?;
    tables::write_document(txn, incoming, existed, deleted, Origin::Merged).map(|_| ())
}
