//! The compiled, immutable set of active policies the engine evaluates, in evaluation order.

use std::sync::Arc;

use mesh_proto::PolicyRecord;
use prometheus_client::metrics::counter::Counter;
use serde_json::value::RawValue;

use crate::engine::matcher::Matcher;
use crate::metrics::Metrics;
use crate::policy::{Definition, PolicyError};

/// One active policy, ready to evaluate: matcher compiled, response fields pre-serialized.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub id: u64,
    pub version: u64,
    pub name: Arc<str>,
    pub priority: i64,
    pub matcher: Matcher,
    pub action: Arc<str>,
    /// Serialized once here, so a response copies bytes instead of re-encoding a map.
    pub modifiers: Box<RawValue>,
    pub reversibility_sec: u64,
    pub(crate) evaluations: Counter,
    pub(crate) matches: Counter,
}

/// The active policies, highest priority first (ties: lower id first), at one store revision.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<CompiledPolicy>,
    revision: u64,
}

impl PolicySet {
    /// Compiles the active policies among `records`. Policies that do not compile are returned
    /// with their error instead of failing the whole set.
    pub fn build(
        records: Vec<PolicyRecord>,
        revision: u64,
        metrics: &Metrics,
    ) -> (PolicySet, Vec<(PolicyRecord, PolicyError)>) {
        let mut policies = Vec::with_capacity(records.len());
        let mut invalid = Vec::new();
        for record in records.into_iter().filter(|r| r.active) {
            match compile(&record, metrics) {
                Ok(policy) => policies.push(policy),
                Err(err) => invalid.push((record, err)),
            }
        }
        policies.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        (PolicySet { policies, revision }, invalid)
    }

    pub fn policies(&self) -> &[CompiledPolicy] {
        &self.policies
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The store revision this set was built from.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

fn compile(record: &PolicyRecord, metrics: &Metrics) -> Result<CompiledPolicy, PolicyError> {
    let definition = Definition::from_json(&record.definition_json)
        .map_err(|err| PolicyError::invalid("definition", err.to_string()))?;
    let matcher = definition.validate()?;
    let modifiers = serde_json::value::to_raw_value(&definition.modifiers)
        .map_err(|err| PolicyError::invalid("definition.modifiers", err.to_string()))?;
    let (evaluations, matches) = metrics.policy_counters(&record.name);
    Ok(CompiledPolicy {
        id: record.id,
        version: record.version,
        name: Arc::from(record.name.as_str()),
        priority: record.priority,
        matcher,
        action: Arc::from(definition.action.as_str()),
        modifiers,
        reversibility_sec: definition.reversibility_sec,
        evaluations,
        matches,
    })
}
