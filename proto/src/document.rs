//! Stored documents beside the incident rules: Rego modules, JSON data documents, and OPA bundles.

use serde::{Deserialize, Serialize};

use crate::{ChangeOp, Hlc, Record};

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DocKind {
    /// Rego source; the name is the module id of OPA's policy API.
    RegoModule,
    /// A JSON document; the name is its `/`-separated path under `data` ("" for the root).
    Data,
    /// An OPA bundle; the name is the bundle's name, the body a JSON text holding the archive as
    /// it was pushed or downloaded (base64) and what its poller needs (ETag, source).
    Bundle,
    /// A rollout (a shadow version or a canary change) as JSON text; the name is the rollout id.
    /// Kinds are added last: postcard numbers variants in order, so older encodings still decode.
    Rollout,
}

impl DocKind {
    /// The prefix of this kind's keys in the documents table.
    pub fn prefix(self) -> &'static str {
        match self {
            DocKind::RegoModule => "rego:",
            DocKind::Data => "data:",
            DocKind::Bundle => "bundle:",
            DocKind::Rollout => "rollout:",
        }
    }

    /// The table key of the document `name` of this kind.
    pub fn key(self, name: &str) -> String {
        format!("{}{name}", self.prefix())
    }
}

/// One document at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub kind: DocKind,
    pub name: String,
    /// Rego source text, or compact JSON text (a bundle's is JSON too).
    pub body: String,
    /// 1 on creation, +1 on every change; a delete is `last + 1` in the history.
    pub version: u64,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub stamp: Hlc,
    pub author: String,
}

impl Record for DocumentRecord {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "document";
}

/// One entry of a document's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentChange {
    pub revision: u64,
    pub op: ChangeOp,
    pub document: DocumentRecord,
}

impl Record for DocumentChange {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "document change";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_encodings_and_prefixes_do_not_nest() {
        // postcard writes a unit variant as its index: a kind added later must not move these.
        assert_eq!(postcard::to_allocvec(&DocKind::RegoModule).unwrap(), [0]);
        assert_eq!(postcard::to_allocvec(&DocKind::Data).unwrap(), [1]);
        assert_eq!(postcard::to_allocvec(&DocKind::Bundle).unwrap(), [2]);
        let kinds = [DocKind::RegoModule, DocKind::Data, DocKind::Bundle];
        for a in kinds {
            for b in kinds {
                assert!(a == b || !a.prefix().starts_with(b.prefix()));
            }
        }
        assert_eq!(DocKind::Bundle.key("authz"), "bundle:authz");
    }
}
