//! The redb tables of an agent's data file, and the schema version that names their layout.
//!
//! Schema history:
//! - 1: `policies` (id -> `PolicyRecordV1`) and `meta` only; names were unique by scan, no history.
//! - 2: adds a version, clock stamp and author to every policy (`PolicyRecord`), the `policy_names`
//!   index, the `policy_history` of every change, and the `audit` ring.
//! - 3: adds `documents` (Rego modules and data documents) and their `document_history`.
//! - 4: adds replication (`replica`): `replica`, `replica_log`, `node_certs`,
//!   `peer_cursors`, and the file's incarnation.
//! - 5: adds the `outbox` (`OUTBOX`): messages for the MQTT broker until it acknowledges
//!   them. An older build would ignore them, so it must not open the file.
//! - 6: adds `outbox_summaries` (`OUTBOX_SUMMARIES`), the outbox's summary lane; new
//!   summaries no longer enter `outbox` (summaries a schema-5 build queued there are sent from it
//!   as before, counted with the actions). A build of schema 5 would never send the new lane.
//! - 7: audit entries become a hash chain (`AuditRecord` format 2 carries `prev_hash`); the
//!   migration re-encodes the ring, oldest first. An older build could not read the entries.
//! - 8: adds `policy_name_holders`, so a write finds who holds a name without scanning every
//!   policy; the migration fills it from the policies.
//! - 9: new audit entries are format 3 (`AuditResult` says what became of a matched rule's action:
//!   sent, deferred to another node, suppressed). Format 2 entries stay as they are (the hash
//!   chain covers their bytes) and are read as format 3 with no outcome; nothing is rewritten (a
//!   file migrated from before 7 now gets format 3 entries from the 6 -> 7 step). A build of
//!   schema 8 could not read the new entries.
//! - 10: adds `outbox_decision_logs` (`OUTBOX_DECISION_LOGS`), the outbox's lane of decision logs
//!   (`[decision_logs] sink = "mqtt"`). A build of schema 9 would never send the new lane.
//! - 11: new audit entries are format 4 (`AuditRecord` carries shadow verdicts); documents may be
//!   OPA bundles (`DocKind::Bundle`, keys `bundle:<name>`) and rollouts (`DocKind::Rollout`:
//!   shadow versions and canary rollouts), in the same tables. Format 3 entries are read as they
//!   are. A build of schema 10 could read neither (its replica scans decode every entry).

use redb::TableDefinition;

/// The layout this build writes. `migrate` brings older files up to it.
pub const SCHEMA_VERSION: u64 = 11;

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

/// The audit ring: sequence number -> encoded `AuditRecord`. Owned by `audit_ring`.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Rego modules, data documents and bundles: `DocKind::key(name)` -> encoded `DocumentRecord`.
pub const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");

/// Every change to a document: (key, version) -> encoded `DocumentChange`.
pub const DOCUMENT_HISTORY: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("document_history");

// Replication (`replica`): owned by the merge and the local write path.

/// key -> encoded `LoggedChange`: the winning version of every key, with the local sequence
/// number it was written or merged at.
pub const REPLICA: TableDefinition<&str, &[u8]> = TableDefinition::new("replica");
/// Local sequence number -> key; one entry per key (its latest), so reading the log after a
/// cursor yields each changed key once.
pub const REPLICA_LOG: TableDefinition<u64, &str> = TableDefinition::new("replica_log");
/// Node id -> certificate (DER) of every author whose changes this node holds, so that it can
/// hand them on with the changes.
pub const NODE_CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("node_certs");
/// "<peer node id>/<peer incarnation>" -> the last sequence number of that peer's log merged here.
pub const PEER_CURSORS: TableDefinition<&str, u64> = TableDefinition::new("peer_cursors");

pub const META_REPLICA_SEQ: &str = "replica_seq";
pub const META_INCARNATION: &str = "incarnation";
/// Wall-clock ms when this node last knew itself in step with a peer (merged from it, or saw the
/// same digest): a node whose last sync is older than the tombstone TTL may hold deleted keys.
pub const META_LAST_SYNC: &str = "last_sync_ms";
/// Members of the mesh this node's settled view last held (a majority's base after a restart).
pub const META_MEMBERS_SEEN: &str = "mesh_members_seen";

// The outbox (`agent_decision::outbox`): written in the audit writer's transaction.

/// The action lane: sequence number -> encoded `OutboxEntry`.
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// The summary lane: sequence number -> encoded `OutboxEntry`.
pub const OUTBOX_SUMMARIES: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox_summaries");
/// The decision-log lane: sequence number -> encoded `OutboxEntry`.
pub const OUTBOX_DECISION_LOGS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("outbox_decision_logs");
