//! Stored incident policies: the current record of a policy and the history of its changes.

use serde::{Deserialize, Serialize};

use crate::{Hlc, Record};

/// A policy as stored (schema 2): every field of P0.4's Policy table, plus its version, the clock
/// stamp of that version and the node that wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// JSON-safe (< 2^53), unique across nodes without coordination.
    pub id: u64,
    pub name: String,
    pub description: String,
    /// The definition (`condition`, `action`, `modifiers`, `reversibility_sec`) as compact JSON text.
    pub definition_json: String,
    pub active: bool,
    pub priority: i64,
    /// 1 on creation, +1 on every update; a delete is version `last + 1` in the history.
    pub version: u64,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    /// When this version was written, by the author's hybrid logical clock.
    pub stamp: Hlc,
    /// The node that wrote this version.
    pub author: String,
}

impl Record for PolicyRecord {
    const FORMAT: u8 = 2;
    const KIND: &'static str = "policy";
}

/// A policy as schema 1 stored it: P0.4's columns only, no version, stamp or author, and no history.
/// Kept so that `store::migrate` can read files written by the first release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecordV1 {
    pub id: u64,
    pub name: String,
    pub description: String,
    pub definition_json: String,
    pub active: bool,
    pub priority: i64,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

impl Record for PolicyRecordV1 {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "policy (schema 1)";
}

/// What a change did to a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOp {
    Create,
    Update,
    Delete,
}

/// One entry of a policy's history: the policy as it was after the change (for a delete, as it was
/// when deleted, with the delete's own version, stamp and author).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyChange {
    /// The store-wide revision this change produced (1, 2, 3, ... on this node).
    pub revision: u64,
    pub op: ChangeOp,
    pub policy: PolicyRecord,
}

impl Record for PolicyChange {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "policy change";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeError, decode, encode};

    fn sample() -> PolicyRecord {
        PolicyRecord {
            id: 42,
            name: "memory_leak_recovery".into(),
            description: "d".into(),
            definition_json: r#"{"action":"a"}"#.into(),
            active: true,
            priority: 10,
            version: 3,
            created_at_us: 1,
            updated_at_us: 2,
            stamp: Hlc {
                wall_ms: 5,
                logical: 1,
            },
            author: "edge-1".into(),
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&sample());
        assert_eq!(bytes[0], 2);
        assert_eq!(decode::<PolicyRecord>(&bytes).unwrap(), sample());
    }

    #[test]
    fn refuses_another_format() {
        let bytes = encode(&sample());
        let err = decode::<PolicyRecordV1>(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Format {
                    found: 2,
                    expected: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_truncated_bytes() {
        let bytes = encode(&sample());
        assert!(decode::<PolicyRecord>(&bytes[..bytes.len() - 3]).is_err());
        assert!(decode::<PolicyRecord>(&[]).is_err());
    }
}
