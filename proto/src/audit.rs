//! Audit ring entries: one per evaluated event.

use serde::{Deserialize, Serialize};

use crate::Record;

/// One evaluation of one event against the active policy set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the ring: 1, 2, 3, ... for the lifetime of the data directory.
    pub seq: u64,
    pub at_us: i64,
    pub node: String,
    pub event_id: String,
    /// The incident as received, as compact JSON text.
    pub input_json: String,
    /// The store revision of the policy set evaluated: the policies active at this revision are
    /// the ones evaluated, which history can tell.
    pub policy_revision: u64,
    /// How many policies were evaluated.
    pub policies_evaluated: u32,
    /// The verdicts worth keeping: every policy that matched or lacked a field it read. Every other
    /// policy of the set evaluated to "no match" on complete data. (Keeping all of them would cost
    /// ~35 bytes per policy per event: 350 MB for a full ring of 100,000 events over 100 policies.)
    pub results: Vec<AuditResult>,
    /// Time spent evaluating every policy for this event.
    pub execution_time_ns: u64,
    /// SHA-256 of the stored bytes of entry `seq - 1` (zeros for the first entry ever): the ring
    /// is a hash chain, so a lost, reordered or altered entry shows (`mesh-agent audit verify`).
    pub prev_hash: [u8; 32],
    /// The verdicts of shadow versions evaluated beside the active ones: recorded, never acted on.
    pub shadow: Vec<ShadowResult>,
}

/// A shadow version's verdict on one event, beside the active version's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowResult {
    /// The policy the shadow version shadows.
    pub policy_id: u64,
    /// The rollout that published the shadow version.
    pub rollout_id: String,
    pub matched: bool,
    /// Whether the active version's verdict was the same (an inactive or absent active version
    /// counts as not matched).
    pub agrees: bool,
    pub execution_time_ns: u64,
    /// Why the shadow version could not be evaluated; it then did not match.
    pub error: Option<String>,
}

/// [`AuditRecord`] as schemas 9 to 11 stored it (format 3), before shadow verdicts: read as it
/// is, never rewritten (the hash chain covers the stored bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecordV3 {
    pub seq: u64,
    pub at_us: i64,
    pub node: String,
    pub event_id: String,
    pub input_json: String,
    pub policy_revision: u64,
    pub policies_evaluated: u32,
    pub results: Vec<AuditResult>,
    pub execution_time_ns: u64,
    pub prev_hash: [u8; 32],
}

/// [`AuditRecord`] as schemas 7 and 8 stored it (format 2), before actions had an outcome: read
/// as it is, never rewritten (the hash chain covers the stored bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecordV2 {
    /// Position in the ring: 1, 2, 3, ... for the lifetime of the data directory.
    pub seq: u64,
    pub at_us: i64,
    pub node: String,
    pub event_id: String,
    /// The incident as received, as compact JSON text.
    pub input_json: String,
    /// The store revision of the policy set evaluated: the policies active at this revision are
    /// the ones evaluated, which history can tell.
    pub policy_revision: u64,
    /// How many policies were evaluated.
    pub policies_evaluated: u32,
    /// The verdicts worth keeping: every policy that matched or lacked a field it read. Every other
    /// policy of the set evaluated to "no match" on complete data. (Keeping all of them would cost
    /// ~35 bytes per policy per event: 350 MB for a full ring of 100,000 events over 100 policies.)
    pub results: Vec<AuditResultV1>,
    /// Time spent evaluating every policy for this event.
    pub execution_time_ns: u64,
    /// SHA-256 of the stored bytes of entry `seq - 1` (zeros for the first entry ever): the ring
    /// is a hash chain, so a lost, reordered or altered entry shows (`mesh-agent audit verify`).
    pub prev_hash: [u8; 32],
}

/// [`AuditRecord`] as schemas 2 to 6 stored it, before the hash chain (read by migrations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecordV1 {
    /// Position in the ring: 1, 2, 3, ... for the lifetime of the data directory.
    pub seq: u64,
    pub at_us: i64,
    pub node: String,
    pub event_id: String,
    /// The incident as received, as compact JSON text.
    pub input_json: String,
    /// The store revision of the policy set evaluated: the policies active at this revision are
    /// the ones evaluated, which history can tell.
    pub policy_revision: u64,
    /// How many policies were evaluated.
    pub policies_evaluated: u32,
    /// The verdicts worth keeping: every policy that matched or lacked a field it read. Every other
    /// policy of the set evaluated to "no match" on complete data. (Keeping all of them would cost
    /// ~35 bytes per policy per event: 350 MB for a full ring of 100,000 events over 100 policies.)
    pub results: Vec<AuditResultV1>,
    /// Time spent evaluating every policy for this event.
    pub execution_time_ns: u64,
}

/// One policy's verdict within an [`AuditRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditResult {
    pub policy_id: u64,
    pub policy_version: u64,
    pub policy_name: String,
    pub matched: bool,
    pub execution_time_ns: u64,
    /// Fields the condition read that the incident did not have.
    pub missing_fields: Vec<String>,
    /// Why the policy could not be evaluated (a Rego rule that failed or ran out of time).
    pub error: Option<String>,
    /// What became of the rule's action, when it matched: sent, left to another node, or
    /// suppressed (and why). `None` when it did not match or no upstream is configured.
    pub action: Option<ActionOutcome>,
}

/// What became of a matched rule's action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionOutcome {
    /// Put in the outbox under this action id.
    Sent { action_id: String },
    /// A mesh-scoped action that this node leaves to the node ranked first.
    Deferred { action_id: String, actor: String },
    /// Not sent, and why (cooldown, rate limit, no quorum).
    Suppressed { action_id: String, reason: String },
}

impl From<AuditResultV1> for AuditResult {
    fn from(old: AuditResultV1) -> AuditResult {
        AuditResult {
            policy_id: old.policy_id,
            policy_version: old.policy_version,
            policy_name: old.policy_name,
            matched: old.matched,
            execution_time_ns: old.execution_time_ns,
            missing_fields: old.missing_fields,
            error: old.error,
            action: None,
        }
    }
}

/// [`AuditResult`] before actions had an outcome (formats 1 and 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditResultV1 {
    pub policy_id: u64,
    pub policy_version: u64,
    pub policy_name: String,
    pub matched: bool,
    pub execution_time_ns: u64,
    /// Fields the condition read that the incident did not have.
    pub missing_fields: Vec<String>,
    /// Why the policy could not be evaluated (a Rego rule that failed or ran out of time).
    pub error: Option<String>,
}

impl Record for AuditRecord {
    const FORMAT: u8 = 4;
    const KIND: &'static str = "audit";
}

impl Record for AuditRecordV3 {
    const FORMAT: u8 = 3;
    const KIND: &'static str = "audit";
}

impl Record for AuditRecordV2 {
    const FORMAT: u8 = 2;
    const KIND: &'static str = "audit";
}

impl Record for AuditRecordV1 {
    const FORMAT: u8 = 1;
    const KIND: &'static str = "audit";
}

impl AuditRecordV1 {
    /// This entry in the current shape, chained to `prev_hash`.
    pub fn chained(self, prev_hash: [u8; 32]) -> AuditRecord {
        AuditRecord {
            seq: self.seq,
            at_us: self.at_us,
            node: self.node,
            event_id: self.event_id,
            input_json: self.input_json,
            policy_revision: self.policy_revision,
            policies_evaluated: self.policies_evaluated,
            results: self.results.into_iter().map(AuditResult::from).collect(),
            execution_time_ns: self.execution_time_ns,
            prev_hash,
            shadow: Vec::new(),
        }
    }
}

impl From<AuditRecordV2> for AuditRecord {
    fn from(old: AuditRecordV2) -> AuditRecord {
        AuditRecord {
            seq: old.seq,
            at_us: old.at_us,
            node: old.node,
            event_id: old.event_id,
            input_json: old.input_json,
            policy_revision: old.policy_revision,
            policies_evaluated: old.policies_evaluated,
            results: old.results.into_iter().map(AuditResult::from).collect(),
            execution_time_ns: old.execution_time_ns,
            prev_hash: old.prev_hash,
            shadow: Vec::new(),
        }
    }
}

impl From<AuditRecordV3> for AuditRecord {
    fn from(old: AuditRecordV3) -> AuditRecord {
        AuditRecord {
            seq: old.seq,
            at_us: old.at_us,
            node: old.node,
            event_id: old.event_id,
            input_json: old.input_json,
            policy_revision: old.policy_revision,
            policies_evaluated: old.policies_evaluated,
            results: old.results,
            execution_time_ns: old.execution_time_ns,
            prev_hash: old.prev_hash,
            shadow: Vec::new(),
        }
    }
}

/// Decodes an audit entry of any format this build knows (2, 3 or 4) in the current shape.
pub fn decode_audit(bytes: &[u8]) -> Result<AuditRecord, crate::DecodeError> {
    match bytes.first() {
        Some(&format) if format == AuditRecordV2::FORMAT => {
            crate::decode::<AuditRecordV2>(bytes).map(AuditRecord::from)
        }
        Some(&format) if format == AuditRecordV3::FORMAT => {
            crate::decode::<AuditRecordV3>(bytes).map(AuditRecord::from)
        }
        _ => crate::decode::<AuditRecord>(bytes),
    }
}
