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
mod matcher;
mod metrics;
mod policy_set;
pub mod rego;

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
pub use matcher::{Matcher, rego_input};
pub use metrics::EngineMetrics;
pub use policy_set::{CompiledPolicy, PolicySet};
pub use rego::{RegoEngine, RegoSet};

/// The evaluator of this node.
pub struct Engine {
    set: ArcSwap<PolicySet>,
    rego: Arc<RegoEngine>,
    metrics: EngineMetrics,
}

/// One policy's verdict on one incident.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub outcome: Outcome,
    pub elapsed_ns: u64,
    /// Set when the policy could not be evaluated (a failing Rego rule); it then did not match.
    pub error: Option<EvalError>,
}

/// An incident evaluated against one policy set: `verdicts[i]` belongs to `set.policies()[i]`.
#[derive(Debug)]
pub struct Evaluation {
    pub set: Arc<PolicySet>,
    pub verdicts: Vec<Verdict>,
    pub elapsed_ns: u64,
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
        }
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
        Evaluation {
            set,
            verdicts,
            elapsed_ns: elapsed.as_nanos() as u64,
        }
    }
}
