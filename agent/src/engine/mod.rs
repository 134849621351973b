//! Evaluation: an incident against every active policy, in priority order, in microseconds.
//!
//! The engine holds the current [`PolicySet`] behind an atomic pointer: evaluations never lock, and
//! a policy change swaps in a whole new set (built by `policy::PolicyService`) while evaluations in
//! flight finish on the set they started with.

pub mod condition;
pub mod incident;
mod policy_set;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;

pub use condition::Outcome;
pub use incident::Incident;
pub use policy_set::{CompiledPolicy, PolicySet};

/// The evaluator of this node.
pub struct Engine {
    set: ArcSwap<PolicySet>,
    metrics: Arc<Metrics>,
}

/// One policy's verdict on one incident.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    pub outcome: Outcome,
    pub elapsed_ns: u64,
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
        self.set.policies().iter().zip(&self.verdicts)
    }

    /// The policies that matched, in evaluation order.
    pub fn matched(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.iter()
            .filter(|(_, v)| v.outcome.matched)
            .map(|(p, _)| p)
    }
}

impl Engine {
    pub fn new(metrics: Arc<Metrics>) -> Engine {
        Engine {
            set: ArcSwap::from_pointee(PolicySet::default()),
            metrics,
        }
    }

    /// Makes `set` the one new evaluations use.
    pub fn replace(&self, set: PolicySet) {
        self.set.store(Arc::new(set));
    }

    /// The policy set evaluations currently use.
    pub fn current(&self) -> Arc<PolicySet> {
        self.set.load_full()
    }

    /// Evaluates `incident` against every active policy, highest priority first.
    pub fn evaluate(&self, incident: &Incident) -> Evaluation {
        let set = self.set.load_full();
        let started = Instant::now();
        let mut verdicts = Vec::with_capacity(set.len());
        let mut policy_started = started;
        for policy in set.policies() {
            let outcome = policy.condition.eval(incident);
            let now = Instant::now();
            verdicts.push(Verdict {
                outcome,
                elapsed_ns: now.duration_since(policy_started).as_nanos() as u64,
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
