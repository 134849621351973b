//! Rego modules and data documents in the store: versioned like policies, history kept.
//!
//! Writes come as a list applied in one transaction ([`Store::write_documents`]), because one
//! request can touch several documents (a data PUT replaces the documents below its path).

use mesh_proto::{ChangeOp, DocKind, DocumentChange, DocumentRecord, ReplicaItem, decode};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use super::schema::{DOCUMENT_HISTORY, DOCUMENTS};
use super::tables::{self, Origin, decode_document};
use super::{DbContext, Now, Store, StoreError, tick_clock};

/// One document change of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum DocWrite {
    /// Create or replace the document with this body.
    Put {
        kind: DocKind,
        name: String,
        body: String,
    },
    /// Delete the document (an error if it does not exist).
    Delete { kind: DocKind, name: String },
}

impl DocWrite {
    /// Applies this write to an in-memory list of documents, as the store would apply it to the
    /// stored ones (a new document's version, times and stamp stay zero): used to check what a
    /// change would lead to before committing it.
    pub fn apply_to(&self, docs: &mut Vec<DocumentRecord>) {
        match self {
            DocWrite::Put { kind, name, body } => {
                match docs.iter_mut().find(|d| d.kind == *kind && &d.name == name) {
                    Some(doc) => doc.body.clone_from(body),
                    None => docs.push(DocumentRecord {
                        kind: *kind,
                        name: name.clone(),
                        body: body.clone(),
                        version: 0,
                        created_at_us: 0,
                        updated_at_us: 0,
                        stamp: Default::default(),
                        author: String::new(),
                    }),
                }
            }
            DocWrite::Delete { kind, name } => {
                docs.retain(|d| !(d.kind == *kind && &d.name == name))
            }
        }
        docs.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

impl Store {
    /// Applies `writes` in order, in one transaction. A put whose body equals the stored one is
    /// skipped (no new version). Returns the records written, tombstones included.
    pub fn write_documents(
        &self,
        writes: Vec<DocWrite>,
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        self.write(|txn, now| {
            let mut out = Vec::with_capacity(writes.len());
            for write in writes {
                if let Some((record, deleted)) = apply(txn, now, self.node_id(), write)? {
                    super::replica::record_local(
                        txn,
                        ReplicaItem::Document(record.clone()),
                        deleted,
                        self.signer(),
                    )?;
                    out.push(record);
                }
            }
            Ok(out)
        })
    }

    pub fn get_document(
        &self,
        kind: DocKind,
        name: &str,
    ) -> Result<Option<DocumentRecord>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(DOCUMENTS).ctx("open documents")?;
        let bytes = table.get(kind.key(name).as_str()).ctx("read document")?;
        bytes.map(|b| decode_document(b.value())).transpose()
    }

    /// Every document of one kind, in name order.
    pub fn list_documents(&self, kind: DocKind) -> Result<Vec<DocumentRecord>, StoreError> {
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn.open_table(DOCUMENTS).ctx("open documents")?;
        let prefix = kind.prefix();
        let mut out = Vec::new();
        for entry in table.range(prefix..).ctx("scan documents")? {
            let (key, bytes) = entry.ctx("scan documents")?;
            if !key.value().starts_with(prefix) {
                break;
            }
            out.push(decode_document(bytes.value())?);
        }
        Ok(out)
    }

    /// Every change to one document, oldest first.
    pub fn document_history(
        &self,
        kind: DocKind,
        name: &str,
    ) -> Result<Vec<DocumentChange>, StoreError> {
        let key = kind.key(name);
        let txn = self.db.begin_read().ctx("begin read")?;
        let table = txn
            .open_table(DOCUMENT_HISTORY)
            .ctx("open document history")?;
        let mut out = Vec::new();
        for entry in table
            .range((key.as_str(), 0)..=(key.as_str(), u64::MAX))
            .ctx("scan document history")?
        {
            let (_, bytes) = entry.ctx("scan document history")?;
            out.push(decode(bytes.value()).map_err(|source| StoreError::Decode {
                context: "document history",
                source,
            })?);
        }
        Ok(out)
    }
}

fn apply(
    txn: &WriteTransaction,
    now: Now,
    author: &str,
    write: DocWrite,
) -> Result<Option<(DocumentRecord, bool)>, StoreError> {
    let (kind, name, body, op) = match write {
        DocWrite::Put { kind, name, body } => (kind, name, Some(body), ChangeOp::Update),
        DocWrite::Delete { kind, name } => (kind, name, None, ChangeOp::Delete),
    };
    let key = kind.key(&name);
    let current = tables::current_document(txn, &key)?;
    // Versions continue after a delete, so a re-created document never reuses a version.
    let last_version = match &current {
        Some(doc) => doc.version,
        None => last_history_version(txn, &key)?,
    };
    let record = match (body, &current) {
        (Some(body), Some(doc)) if doc.body == body => return Ok(None),
        (Some(body), _) => DocumentRecord {
            kind,
            name,
            body,
            version: last_version + 1,
            created_at_us: current.as_ref().map_or(now.us, |d| d.created_at_us),
            updated_at_us: now.us,
            stamp: tick_clock(txn, now.ms)?,
            author: author.to_owned(),
        },
        (None, Some(doc)) => DocumentRecord {
            version: doc.version + 1,
            updated_at_us: now.us,
            stamp: tick_clock(txn, now.ms)?,
            author: author.to_owned(),
            ..doc.clone()
        },
        (None, None) => return Err(StoreError::DocumentNotFound { key }),
    };
    let deleted = matches!(op, ChangeOp::Delete);
    tables::write_document(txn, &record, current.is_some(), deleted, Origin::Local)?;
    Ok(Some((record, deleted)))
}

fn last_history_version(txn: &WriteTransaction, key: &str) -> Result<u64, StoreError> {
    let table = txn
        .open_table(DOCUMENT_HISTORY)
        .ctx("open document history")?;
    let last = table
        .range((key, 0)..=(key, u64::MAX))
        .ctx("scan document history")?
        .next_back()
        .transpose()
        .ctx("scan document history")?;
    Ok(last.map_or(0, |(k, _)| k.value().1))
}
