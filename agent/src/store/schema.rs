//! The redb tables of an agent's data file, and the schema version that names their layout.
//!
//! Schema history:
//! - 1: `policies` (id -> `PolicyRecordV1`) and `meta` only; names were unique by scan, no history.
//! - 2: adds a version, clock stamp and author to every policy (`PolicyRecord`), the `policy_names`
//!   index, the `policy_history` of every change, and the `audit` ring.
//! - 3: adds `documents` (Rego modules and data documents) and their `document_history`.
//! - 4: adds replication (`store::replica`): `replica`, `replica_log`, `node_certs`,
//!   `peer_cursors`, and the file's incarnation.
//! - 5: adds the `outbox` (`outbox::OUTBOX`): messages for the MQTT broker until it acknowledges
//!   them. An older build would ignore them, so it must not open the file.
//! - 6: adds `outbox_summaries` (`outbox::OUTBOX_SUMMARIES`), the outbox's summary lane; new
//!   summaries no longer enter `outbox` (summaries a schema-5 build queued there are sent from it
//!   as before, counted with the actions). A build of schema 5 would never send the new lane.
//! - 7: audit entries become a hash chain (`AuditRecord` format 2 carries `prev_hash`); the
//!   migration re-encodes the ring, oldest first. An older build could not read the entries.
//! - 8: adds `policy_name_holders`, so a write finds who holds a name without scanning every
//!   policy; the migration fills it from the policies.

use redb::TableDefinition;

/// The layout this build writes. `store::migrate` brings older files up to it.
pub const SCHEMA_VERSION: u64 = 8;

/// Small named counters: schema version, store revision, last issued id, clock.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub const META_SCHEMA: &str = "schema_version";
pub const META_REVISION: &str = "revision";
pub const META_LAST_ID: &str = "last_policy_id";
pub const META_CLOCK_WALL: &str = "clock_wall_ms";
pub const META_CLOCK_LOGICAL: &str = "clock_logical";
/// Bytes of the encoded entries in the audit ring (kept by `audit::ring`, recounted at start).
pub const META_AUDIT_BYTES: &str = "audit_bytes";

/// Current policies: id -> encoded `PolicyRecord`.
pub const POLICIES: TableDefinition<u64, &[u8]> = TableDefinition::new("policies");

/// Unique name index: name -> id.
pub const POLICY_NAMES: TableDefinition<&str, u64> = TableDefinition::new("policy_names");

/// Every live policy by (name, id): the lowest id of a name is the one `policy_names` points at
/// (two nodes can create one name concurrently; both policies are kept).
pub const POLICY_NAME_HOLDERS: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("policy_name_holders");

/// Every change ever made: (policy id, version) -> encoded `PolicyChange`.
pub const POLICY_HISTORY: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("policy_history");

/// The audit ring: sequence number -> encoded `AuditRecord`. Owned by `audit::ring`.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Rego modules and data documents: `DocKind::key(name)` -> encoded `DocumentRecord`.
pub const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");

/// Every change to a document: (key, version) -> encoded `DocumentChange`.
pub const DOCUMENT_HISTORY: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("document_history");
