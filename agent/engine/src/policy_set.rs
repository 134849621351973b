//! The compiled, immutable set of active policies the engine evaluates, in evaluation order.
//!
//! A set shares its compiled policies (`Arc`) with the set it was derived from: a write of one
//! policy compiles that policy only ([`PolicySet::with_change`]) and a reload after a merge
//! recompiles only the policies whose version changed, so a write costs O(changed policy) plus a
//! copy of the pointers, whatever the number of policies.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_proto::PolicyRecord;
use prometheus_client::metrics::counter::Counter;
use serde_json::value::RawValue;

use crate::definition::{Definition, DefinitionError, Quorum, RateLimit, Scope};
use crate::matcher::Matcher;
use crate::metrics::EngineMetrics;
use crate::shadow::{ShadowPolicy, ShadowSpec};

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
    pub scope: Scope,
    pub quorum: Option<Quorum>,
    /// How long after a firing the same incident key is suppressed (0: never).
    pub cooldown_ms: u64,
    pub rate_limit: Option<RateLimit>,
    /// Which write of the policy this is: two nodes can both write a version 3 (the mesh keeps
    /// one by stamp and author), so a reload reuses a compiled policy only on the same write.
    written: (mesh_proto::Hlc, Arc<str>),
    pub(crate) evaluations: Counter,
    pub(crate) matches: Counter,
}

/// The active policies, highest priority first (ties: lower id first), at one store revision,
/// and the shadow versions evaluated beside them.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<Arc<CompiledPolicy>>,
    revision: u64,
    shadows: Vec<Arc<ShadowPolicy>>,
    /// `shadow_active[i]`: the index in `policies` of the policy `shadows[i]` shadows, if active.
    shadow_active: Vec<Option<usize>>,
}

impl PolicySet {
    /// Compiles the active policies among `records`. Policies that do not compile are returned
    /// with their error instead of failing the whole set.
    pub fn build(
        records: Vec<PolicyRecord>,
        revision: u64,
        metrics: &EngineMetrics,
    ) -> (PolicySet, Vec<(PolicyRecord, DefinitionError)>) {
        PolicySet::default().rebuild(records, revision, metrics)
    }

    /// The set of `records`, reusing this set's compiled policies whose id and version match.
    pub fn rebuild(
        &self,
        records: Vec<PolicyRecord>,
        revision: u64,
        metrics: &EngineMetrics,
    ) -> (PolicySet, Vec<(PolicyRecord, DefinitionError)>) {
        let known: HashMap<u64, &Arc<CompiledPolicy>> =
            self.policies.iter().map(|p| (p.id, p)).collect();
        let mut policies = Vec::with_capacity(records.len());
        let mut invalid = Vec::new();
        for record in records.into_iter().filter(|r| r.active) {
            if let Some(policy) = known.get(&record.id)
                && policy.is_write_of(&record)
            {
                policies.push(Arc::clone(policy));
                continue;
            }
            match compile(&record, metrics) {
                Ok(policy) => policies.push(Arc::new(policy)),
                Err(err) => invalid.push((record, err)),
            }
        }
        policies.sort_by(|a, b| order(a, b));
        let set = PolicySet {
            policies,
            revision,
            shadows: self.shadows.clone(),
            shadow_active: Vec::new(),
        };
        (set.index_shadows(), invalid)
    }

    /// This set with `specs` as its shadow versions (replacing any it had). Shadows that do not
    /// compile are returned with their error and left out.
    pub fn with_shadows(
        &self,
        specs: &[ShadowSpec],
    ) -> (PolicySet, Vec<(ShadowSpec, DefinitionError)>) {
        let mut shadows = Vec::with_capacity(specs.len());
        let mut invalid = Vec::new();
        for spec in specs {
            let previous = self
                .shadows
                .iter()
                .find(|s| *s.rollout_id == *spec.rollout_id);
            match ShadowPolicy::build(spec, previous) {
                Ok(shadow) => shadows.push(shadow),
                Err(err) => invalid.push((spec.clone(), err)),
            }
        }
        let set = PolicySet {
            policies: self.policies.clone(),
            revision: self.revision,
            shadows,
            shadow_active: Vec::new(),
        };
        (set.index_shadows(), invalid)
    }

    /// Fills `shadow_active` from the policies and shadows as they are.
    fn index_shadows(mut self) -> PolicySet {
        self.shadow_active = self
            .shadows
            .iter()
            .map(|shadow| self.policies.iter().position(|p| p.id == shadow.policy.id))
            .collect();
        self
    }

    /// The shadow versions evaluated beside the active policies.
    pub fn shadows(&self) -> &[Arc<ShadowPolicy>] {
        &self.shadows
    }

    /// The index in [`policies`](Self::policies) of the active policy shadow `i` shadows.
    pub fn shadowed_index(&self, i: usize) -> Option<usize> {
        self.shadow_active.get(i).copied().flatten()
    }

    /// This set with one policy changed: `record` replaces the policy of its id (or is added), and
    /// leaves the set if it is inactive or `deleted`. Only `record` is compiled.
    pub fn with_change(
        &self,
        record: &PolicyRecord,
        deleted: bool,
        revision: u64,
        metrics: &EngineMetrics,
    ) -> Result<PolicySet, DefinitionError> {
        let mut policies: Vec<Arc<CompiledPolicy>> = self
            .policies
            .iter()
            .filter(|p| p.id != record.id)
            .cloned()
            .collect();
        if record.active && !deleted {
            let policy = Arc::new(compile(record, metrics)?);
            let at = policies.partition_point(|p| order(p, &policy).is_lt());
            policies.insert(at, policy);
        }
        let set = PolicySet {
            policies,
            revision,
            shadows: self.shadows.clone(),
            shadow_active: Vec::new(),
        };
        Ok(set.index_shadows())
    }

    pub fn policies(&self) -> &[Arc<CompiledPolicy>] {
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

/// Evaluation order: highest priority first, ties by id (oldest first).
fn order(a: &CompiledPolicy, b: &CompiledPolicy) -> std::cmp::Ordering {
    b.priority.cmp(&a.priority).then(a.id.cmp(&b.id))
}

impl CompiledPolicy {
    /// Whether this was compiled from this very write of `record` (id, version, stamp, author).
    pub(crate) fn is_write_of(&self, record: &PolicyRecord) -> bool {
        self.id == record.id
            && self.version == record.version
            && self.written.0 == record.stamp
            && *self.written.1 == *record.author
    }
}

fn compile(
    record: &PolicyRecord,
    metrics: &EngineMetrics,
) -> Result<CompiledPolicy, DefinitionError> {
    let (evaluations, matches) = metrics.policy_counters(&record.name);
    compile_with(record, evaluations, matches)
}

/// Compiles `record` with counters of its own, not the per-policy series: a shadow version
/// must not count as the active policy's evaluations.
pub(crate) fn compile_detached(record: &PolicyRecord) -> Result<CompiledPolicy, DefinitionError> {
    compile_with(record, Counter::default(), Counter::default())
}

fn compile_with(
    record: &PolicyRecord,
    evaluations: Counter,
    matches: Counter,
) -> Result<CompiledPolicy, DefinitionError> {
    let definition = Definition::from_json(&record.definition_json)
        .map_err(|err| DefinitionError::new("definition", err.to_string()))?;
    let matcher = definition.validate()?;
    let modifiers = serde_json::value::to_raw_value(&definition.modifiers)
        .map_err(|err| DefinitionError::new("definition.modifiers", err.to_string()))?;
    Ok(CompiledPolicy {
        id: record.id,
        version: record.version,
        name: Arc::from(record.name.as_str()),
        priority: record.priority,
        matcher,
        action: Arc::from(definition.action.as_str()),
        modifiers,
        reversibility_sec: definition.reversibility_sec,
        scope: definition.scope,
        quorum: definition.quorum,
        cooldown_ms: definition
            .cooldown_sec
            .unwrap_or(definition.reversibility_sec)
            .saturating_mul(1000),
        rate_limit: definition.rate_limit,
        written: (record.stamp, Arc::from(record.author.as_str())),
        evaluations,
        matches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, version: u64, priority: i64, active: bool) -> PolicyRecord {
        PolicyRecord {
            id,
            name: format!("p{id}"),
            description: String::new(),
            definition_json: r#"{"condition":"incident.severity > 1","action":"a"}"#.into(),
            active,
            priority,
            version,
            created_at_us: 0,
            updated_at_us: 0,
            stamp: mesh_proto::Hlc {
                wall_ms: version,
                logical: 0,
            },
            author: "n1".into(),
        }
    }

    fn ids(set: &PolicySet) -> Vec<u64> {
        set.policies().iter().map(|p| p.id).collect()
    }

    #[test]
    fn a_change_compiles_only_the_policy_changed_and_keeps_the_order() {
        let metrics =
            EngineMetrics::register(&mut prometheus_client::registry::Registry::default());
        let records: Vec<PolicyRecord> = (1..=1000)
            .map(|id| record(id, 1, (id % 7) as i64, true))
            .collect();
        let (set, invalid) = PolicySet::build(records, 1, &metrics);
        assert!(invalid.is_empty());
        let changed = set
            .with_change(&record(500, 2, 100, true), false, 2, &metrics)
            .unwrap();
        assert_eq!(changed.policies()[0].id, 500, "highest priority first");
        for policy in changed.policies().iter().filter(|p| p.id != 500) {
            let before = set.policies().iter().find(|p| p.id == policy.id).unwrap();
            assert!(
                Arc::ptr_eq(before, policy),
                "policy {} was recompiled",
                policy.id
            );
        }
        // The store after the change: policy 500 at version 2, the others as they were.
        let after = || -> Vec<PolicyRecord> {
            (1..=1000)
                .map(|id| match id {
                    500 => record(id, 2, 100, true),
                    _ => record(id, 1, (id % 7) as i64, true),
                })
                .collect()
        };
        let rebuilt = PolicySet::build(after(), 2, &metrics).0;
        assert_eq!(
            ids(&changed),
            ids(&rebuilt),
            "the same order as a full build"
        );
        // Deleted or deactivated: it leaves the set; the others stay shared.
        let gone = changed
            .with_change(&record(500, 3, 100, false), false, 3, &metrics)
            .unwrap();
        assert_eq!(gone.len(), 999);
        let deleted = changed
            .with_change(&record(7, 2, 0, true), true, 3, &metrics)
            .unwrap();
        assert!(!ids(&deleted).contains(&7));
        // A reload reuses every policy whose write it already has.
        let reloaded = changed.rebuild(after(), 4, &metrics).0;
        assert!(
            reloaded
                .policies()
                .iter()
                .zip(changed.policies())
                .all(|(a, b)| Arc::ptr_eq(a, b))
        );
    }
}
