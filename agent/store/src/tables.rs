//! The table writer: how one version of a policy or a document (or its delete) enters the tables,
//! the name index and the history. Both write paths use it: a local write (`Store::create`, ...,
//! `Store::write_documents`), which makes the version, and a merge (`Store::merge_remote`), which
//! receives it, so a version lands the same way wherever it was made. The one difference is in the
//! history: a version made here is recorded under its number; a merged one is recorded only if
//! the number is free, since concurrent edits on two nodes can give two versions one number and
//! the history keeps the first one seen.

use mesh_proto::{
    ChangeOp, DocumentChange, DocumentRecord, PolicyChange, PolicyRecord, decode, encode,
};
use redb::{ReadableTable, WriteTransaction};

use crate::schema::{
    DOCUMENT_HISTORY, DOCUMENTS, POLICIES, POLICY_HISTORY, POLICY_NAME_HOLDERS, POLICY_NAMES,
};
use crate::{DbContext, StoreError, next_revision};

/// The policy the table holds under `id`.
pub(crate) fn current_policy(
    txn: &WriteTransaction,
    id: u64,
) -> Result<Option<PolicyRecord>, StoreError> {
    let table = txn.open_table(POLICIES).ctx("open policies")?;
    let bytes = table.get(id).ctx("read policy")?;
    bytes.map(|b| decode_policy(b.value())).transpose()
}

/// Whether the table holds a document under `key` (without decoding it).
pub(crate) fn document_exists(txn: &WriteTransaction, key: &str) -> Result<bool, StoreError> {
    let table = txn.open_table(DOCUMENTS).ctx("open documents")?;
    Ok(table.get(key).ctx("read document")?.is_some())
}

/// The document the table holds under `key`.
pub(crate) fn current_document(
    txn: &WriteTransaction,
    key: &str,
) -> Result<Option<DocumentRecord>, StoreError> {
    let table = txn.open_table(DOCUMENTS).ctx("open documents")?;
    let bytes = table.get(key).ctx("read document")?;
    bytes.map(|b| decode_document(b.value())).transpose()
}

/// Where a version comes from, which decides how its history entry is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Made by this node: recorded under its number.
    Local,
    /// Merged from a peer: recorded only if no entry holds its number yet.
    Merged,
}

/// Writes `version` of a policy over `previous` (what the table held), or its delete: the policy
/// table, the name index, and a history entry at the next store revision.
pub(crate) fn write_policy(
    txn: &WriteTransaction,
    previous: Option<&PolicyRecord>,
    version: &PolicyRecord,
    deleted: bool,
    origin: Origin,
) -> Result<(), StoreError> {
    {
        let mut policies = txn.open_table(POLICIES).ctx("open policies")?;
        if deleted {
            policies.remove(version.id).ctx("delete policy")?;
        } else {
            policies
                .insert(version.id, encode(version).as_slice())
                .ctx("write policy")?;
        }
    }
    // Two nodes may create policies with one name concurrently; every node keeps both and
    // indexes the name to the lower id, so all nodes resolve the name the same way.
    if let Some(previous) = previous {
        release_name(txn, &previous.name, previous.id)?;
    }
    if !deleted {
        hold_name(txn, &version.name, version.id)?;
    }
    if let Some(previous) = previous.filter(|p| p.name != version.name) {
        reindex_name(txn, &previous.name)?;
    }
    reindex_name(txn, &version.name)?;
    let change = PolicyChange {
        revision: next_revision(txn)?,
        op: op_of(deleted, previous.is_some()),
        policy: version.clone(),
    };
    let mut history = txn.open_table(POLICY_HISTORY).ctx("open policy history")?;
    if origin == Origin::Local
        || history
            .get((version.id, version.version))
            .ctx("read policy history")?
            .is_none()
    {
        history
            .insert((version.id, version.version), encode(&change).as_slice())
            .ctx("write policy history")?;
    }
    Ok(())
}

/// Writes `version` of a document (or its delete) over what the table held (`existed`), and a
/// history entry at the next store revision. Returns the change's operation.
pub(crate) fn write_document(
    txn: &WriteTransaction,
    version: &DocumentRecord,
    existed: bool,
    deleted: bool,
    origin: Origin,
) -> Result<ChangeOp, StoreError> {
    let key = version.kind.key(&version.name);
    {
        let mut table = txn.open_table(DOCUMENTS).ctx("open documents")?;
        if deleted {
            table.remove(key.as_str()).ctx("delete document")?;
        } else {
            table
                .insert(key.as_str(), encode(version).as_slice())
                .ctx("write document")?;
        }
    }
    let op = op_of(deleted, existed);
    let change = DocumentChange {
        revision: next_revision(txn)?,
        op,
        document: version.clone(),
    };
    let mut history = txn
        .open_table(DOCUMENT_HISTORY)
        .ctx("open document history")?;
    if origin == Origin::Local
        || history
            .get((key.as_str(), version.version))
            .ctx("read document history")?
            .is_none()
    {
        history
            .insert((key.as_str(), version.version), encode(&change).as_slice())
            .ctx("write document history")?;
    }
    Ok(op)
}

fn op_of(deleted: bool, existed: bool) -> ChangeOp {
    match (deleted, existed) {
        (true, _) => ChangeOp::Delete,
        (false, false) => ChangeOp::Create,
        (false, true) => ChangeOp::Update,
    }
}

/// Records that policy `id` is called `name` (see [`POLICY_NAME_HOLDERS`]).
fn hold_name(txn: &WriteTransaction, name: &str, id: u64) -> Result<(), StoreError> {
    txn.open_table(POLICY_NAME_HOLDERS)
        .ctx("open policy name holders")?
        .insert((name, id), ())
        .ctx("write policy name holder")?;
    Ok(())
}

/// Records that policy `id` is no longer called `name`.
fn release_name(txn: &WriteTransaction, name: &str, id: u64) -> Result<(), StoreError> {
    txn.open_table(POLICY_NAME_HOLDERS)
        .ctx("open policy name holders")?
        .remove((name, id))
        .ctx("drop policy name holder")?;
    Ok(())
}

/// Points the name index at the live policy called `name` with the lowest id, or drops the entry
/// if none is left. Names are unique per node, but two nodes can create one name concurrently;
/// every node then resolves it the same way, and when one of them goes the other takes the name.
fn reindex_name(txn: &WriteTransaction, name: &str) -> Result<(), StoreError> {
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

pub(crate) fn decode_policy(bytes: &[u8]) -> Result<PolicyRecord, StoreError> {
    decode(bytes).map_err(|source| StoreError::Decode {
        context: "policy",
        source,
    })
}

pub(crate) fn decode_document(bytes: &[u8]) -> Result<DocumentRecord, StoreError> {
    decode(bytes).map_err(|source| StoreError::Decode {
        context: "document",
        source,
    })
}
