//! Shadow versions: a candidate definition of a policy evaluated beside the active version on
//! every incident, its verdicts recorded and counted, never acted on.
//!
//! A shadow's counters live as long as its rollout does: a new policy set reuses the compiled
//! shadow (and so its counters) when the rollout and the candidate's write are the same.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mesh_proto::PolicyRecord;

use crate::policy_set::{CompiledPolicy, compile_detached};
use crate::{DefinitionError, Verdict};

/// What a shadow version is to be: its rollout, and the candidate as a policy record (the id is
/// the policy it shadows).
#[derive(Debug, Clone)]
pub struct ShadowSpec {
    pub rollout_id: String,
    pub record: PolicyRecord,
}

/// A compiled shadow version.
#[derive(Debug)]
pub struct ShadowPolicy {
    pub rollout_id: Arc<str>,
    /// The candidate, compiled; `policy.id` is the policy it shadows.
    pub policy: CompiledPolicy,
    pub stats: Arc<ShadowStats>,
}

/// How a shadow version's verdicts compared with the active version's, on this node.
#[derive(Debug, Default)]
pub struct ShadowStats {
    evaluations: AtomicU64,
    matches: AtomicU64,
    agreements: AtomicU64,
    errors: AtomicU64,
}

/// [`ShadowStats`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShadowCounts {
    pub evaluations: u64,
    pub matches: u64,
    pub agreements: u64,
    pub errors: u64,
}

impl ShadowCounts {
    pub fn disagreements(&self) -> u64 {
        self.evaluations.saturating_sub(self.agreements)
    }
}

impl ShadowStats {
    pub(crate) fn record(&self, matched: bool, agrees: bool, error: bool) {
        self.evaluations.fetch_add(1, Ordering::Relaxed);
        if matched {
            self.matches.fetch_add(1, Ordering::Relaxed);
        }
        if agrees {
            self.agreements.fetch_add(1, Ordering::Relaxed);
        }
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn counts(&self) -> ShadowCounts {
        ShadowCounts {
            evaluations: self.evaluations.load(Ordering::Relaxed),
            matches: self.matches.load(Ordering::Relaxed),
            agreements: self.agreements.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// A shadow version's verdict on one incident.
#[derive(Debug, Clone)]
pub struct ShadowVerdict {
    pub verdict: Verdict,
    /// Whether the active version's verdict was the same (no active version: not matched).
    pub agrees: bool,
}

impl ShadowPolicy {
    /// Compiles `spec`, reusing `previous` (and its counters) when it is the same rollout and
    /// the same write of the candidate.
    pub(crate) fn build(
        spec: &ShadowSpec,
        previous: Option<&Arc<ShadowPolicy>>,
    ) -> Result<Arc<ShadowPolicy>, DefinitionError> {
        if let Some(previous) = previous
            && *previous.rollout_id == *spec.rollout_id
            && previous.policy.is_write_of(&spec.record)
        {
            return Ok(Arc::clone(previous));
        }
        let stats = previous
            .filter(|p| *p.rollout_id == *spec.rollout_id)
            .map(|p| Arc::clone(&p.stats))
            .unwrap_or_default();
        Ok(Arc::new(ShadowPolicy {
            rollout_id: Arc::from(spec.rollout_id.as_str()),
            policy: compile_detached(&spec.record)?,
            stats,
        }))
    }
}
