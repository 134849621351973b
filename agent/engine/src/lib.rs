//! Evaluation: an incident against every active policy, in priority order, in microseconds.
//!
//! The engine holds the current [`PolicySet`] behind an atomic pointer: evaluations never lock, and
//! a policy change swaps in a whole new set (built by the policy service) while evaluations in
//! flight finish on the set they started with. An incident rule's [`Definition`] is validated and
//! compiled here ([`Matcher`]); Rego modules are compiled into a [`RegoSet`] after the static
//! checks in [`rego`] (recursion, parse cost) that keep regorus from overflowing its stack.
//!
//! Architecture invariant: the engine reads no store and does no I/O. It is given policy records
//! and Rego modules, and answers evaluations; who persists them is the layer above.

mod definition;
mod health;
mod matcher;
mod metrics;
mod policy_set;
pub mod rego;
mod shadow;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::rego::EvalError;

pub use agent_condition::{
    Condition, ConditionError, Explanation, FactQuery, Facts, Incident, NoFacts, Outcome,
};
pub use definition::{
    Definition, DefinitionError, DefinitionPatch, MAX_RATE_LIMIT, Quorum, RateLimit, Scope,
};
pub use health::{Health, HealthSample};
pub use matcher::{Matcher, rego_input};
pub use metrics::EngineMetrics;
pub use policy_set::{CompiledPolicy, PolicySet};
pub use rego::{RegoEngine, RegoSet};
pub use shadow::{ShadowCounts, ShadowPolicy, ShadowSpec, ShadowStats, ShadowVerdict};

/// The evaluator of this node.
pub struct Engine {
    set: ArcSwap<PolicySet>,
    rego: Arc<RegoEngine>,
    metrics: EngineMetrics,
    health: Arc<Health>,
}

/// One policy's verdict on one incident.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub outcome: Outcome,
    pub elapsed_ns: u64,
    /// Set when the policy could not be evaluated (a failing Rego rule); it then did not match.
    pub error: Option<EvalError>,
}

/// An incident evaluated against one policy set: `verdicts[i]` belongs to `set.policies()[i]`,
/// `shadows[i]` to `set.shadows()[i]`.
#[derive(Debug)]
pub struct Evaluation {
    pub set: Arc<PolicySet>,
    pub verdicts: Vec<Verdict>,
    /// Time spent on the active policies (shadow versions not included).
    pub elapsed_ns: u64,
    pub shadows: Vec<ShadowVerdict>,
}

impl Evaluation {
    /// Each policy with its verdict, in evaluation order.
    pub fn iter(&self) -> impl Iterator<Item = (&CompiledPolicy, &Verdict)> {
        self.set
            .policies()
            .iter()
            .map(AsRef::as_ref)
            .zip(&self.verdicts)
    }

    /// Each shadow version with its verdict.
    pub fn shadow_verdicts(&self) -> impl Iterator<Item = (&ShadowPolicy, &ShadowVerdict)> {
        self.set
            .shadows()
            .iter()
            .map(AsRef::as_ref)
            .zip(&self.shadows)
    }

    /// The policies that matched, in evaluation order.
    pub fn matched(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.iter()
            .filter(|(_, v)| v.outcome.matched)
            .map(|(p, _)| p)
    }
}

impl Engine {
    pub fn new(rego: Arc<RegoEngine>, metrics: EngineMetrics) -> Engine {
        Engine {
            set: ArcSwap::from_pointee(PolicySet::default()),
            rego,
            metrics,
            health: Arc::default(),
        }
    }

    /// Counts into `health` (shared with the Rego decision path) instead of a counter of its own.
    pub fn with_health(mut self, health: Arc<Health>) -> Engine {
        self.health = health;
        self
    }

    /// This node's evaluation health: what a canary rollout is judged by.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The metrics the engine counts into; the policy service sets the set's sizes, and whoever
    /// refuses an event before it reaches [`evaluate`](Self::evaluate) counts it as an error.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// Makes `set` the one new evaluations use.
    pub fn replace(&self, set: PolicySet) {
        self.metrics
            .policy_revision
            .set(set.revision().min(i64::MAX as u64) as i64);
        self.set.store(Arc::new(set));
    }

    /// The policy set evaluations currently use.
    pub fn current(&self) -> Arc<PolicySet> {
        self.set.load_full()
    }

    /// Evaluates `incident` against every active policy, highest priority first, with the mesh
    /// and history facts `facts` answers.
    pub fn evaluate(&self, incident: &Incident, facts: &dyn Facts) -> Evaluation {
        let set = self.set.load_full();
        let started = Instant::now();
        let mut verdicts = Vec::with_capacity(set.len());
        let mut policy_started = started;
        let mut rego_input = None;
        // Whether any policy failed, and by its time limit: noted as they happen, so the common
        // path (no failure) pays nothing for the health count.
        let (mut failed, mut timed_out) = (false, false);
        let mut rego = || {
            let input = rego_input
                .get_or_insert_with(|| matcher::rego_input(incident, facts))
                .clone();
            (self.rego.current(), input)
        };
        for policy in set.policies() {
            let (outcome, error) = match policy.matcher.eval(incident, facts, &mut rego) {
                Ok(outcome) => (outcome, None),
                Err(err) => {
                    self.metrics.evaluation_errors.inc();
                    failed = true;
                    timed_out |= matches!(err, EvalError::TimeLimit { .. });
                    (Outcome::from_match(false), Some(err))
                }
            };
            let now = Instant::now();
            verdicts.push(Verdict {
                outcome,
                elapsed_ns: now.duration_since(policy_started).as_nanos() as u64,
                error,
            });
            policy_started = now;
            policy.evaluations.inc();
            if outcome.matched {
                policy.matches.inc();
            }
        }
        let elapsed = started.elapsed();
        self.metrics
            .evaluation_duration
            .observe(elapsed.as_secs_f64());
        self.health.record(failed, timed_out);
        let mut shadows = Vec::with_capacity(set.shadows().len());
        for (i, shadow) in set.shadows().iter().enumerate() {
            let shadow_started = Instant::now();
            let (outcome, error) = match shadow.policy.matcher.eval(incident, facts, &mut rego) {
                Ok(outcome) => (outcome, None),
                Err(err) => (Outcome::from_match(false), Some(err)),
            };
            let active_matched = set
                .shadowed_index(i)
                .is_some_and(|at| verdicts[at].outcome.matched);
            let agrees = outcome.matched == active_matched;
            shadow
                .stats
                .record(outcome.matched, agrees, error.is_some());
            shadows.push(ShadowVerdict {
                verdict: Verdict {
                    outcome,
                    elapsed_ns: shadow_started.elapsed().as_nanos() as u64,
                    error,
                },
                agrees,
            });
        }
        Evaluation {
            set,
            verdicts,
            elapsed_ns: elapsed.as_nanos() as u64,
            shadows,
        }
    }
}
