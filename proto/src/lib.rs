//! Wire and storage types of mesh-agent, and their versioned encoding. No I/O lives here.
//!
//! Every record is stored as one format byte followed by its postcard encoding ([`codec`]). Postcard
//! is not self-describing, so a record type never changes shape in place: a new shape gets a new format
//! byte and the old type stays here, so that a newer agent can still read what an older one wrote (see
//! [`policy::PolicyRecordV1`]). JSON documents (definitions, incident inputs) travel as JSON text inside
//! records, because postcard cannot carry `serde_json::Value`.

pub mod audit;
pub mod clock;
pub mod codec;
pub mod document;
pub mod mesh;
pub mod policy;
pub mod shared;
pub mod upstream;

pub use audit::{
    ActionOutcome, AuditRecord, AuditRecordV1, AuditRecordV2, AuditRecordV3, AuditResult,
    AuditResultV1, ShadowResult, decode_audit,
};
pub use clock::Hlc;
pub use codec::{DecodeError, Record, decode, encode};
pub use document::{DocKind, DocumentChange, DocumentRecord};
pub use mesh::{LoggedChange, ReplicaItem, SignedChange};
pub use policy::{ChangeOp, PolicyChange, PolicyRecord, PolicyRecordV1};
pub use upstream::{
    ActionMessage, AuditSummary, IncidentView, MeshActionInfo, OutboxEntry, PolicySummary,
};
