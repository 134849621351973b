//! The engine's metrics: evaluations and matches per policy, evaluation time, and the sizes of the
//! policy set, registered into the agent's one registry by the daemon.
//!
//! Per-policy counters are looked up once, when a policy is compiled into the set, and kept in the
//! compiled policy, so counting an evaluation is one atomic add, not a label-map lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy_name: String,
}

/// Handles on the engine's metrics. Cheap to clone: every clone counts into the same series.
#[derive(Clone)]
pub struct EngineMetrics {
    evaluations: Family<PolicyLabel, Counter>,
    matches: Family<PolicyLabel, Counter>,
    /// Time to evaluate one event against the whole active policy set.
    pub evaluation_duration: Histogram,
    /// Events that could not be evaluated (rejected input, or a policy that failed to evaluate).
    pub evaluation_errors: Counter,
    pub policies_active: Gauge,
    /// The store revision the policy set in force was built from: the same on every node once a
    /// change has rolled out.
    pub policy_revision: Gauge,
    /// Policies in the store whose definition this build could not compile (kept, but not evaluated).
    pub policies_invalid: Gauge,
}

impl EngineMetrics {
    pub fn register(registry: &mut Registry) -> EngineMetrics {
        // 1 µs .. ~16 ms: evaluation is expected in the microseconds.
        let metrics = EngineMetrics {
            evaluations: Family::default(),
            matches: Family::default(),
            evaluation_duration: Histogram::new(exponential_buckets(1e-6, 2.0, 15)),
            evaluation_errors: Counter::default(),
            policies_active: Gauge::default(),
            policy_revision: Gauge::default(),
            policies_invalid: Gauge::default(),
        };
        registry.register(
            "policy_evaluations",
            "Policy evaluations, by policy",
            metrics.evaluations.clone(),
        );
        registry.register(
            "policy_matches",
            "Policy matches, by policy",
            metrics.matches.clone(),
        );
        registry.register(
            "policy_evaluation_duration_seconds",
            "Time to evaluate one event against every active policy",
            metrics.evaluation_duration.clone(),
        );
        registry.register(
            "policy_evaluation_errors",
            "Events rejected as invalid or that failed to evaluate",
            metrics.evaluation_errors.clone(),
        );
        registry.register(
            "policies_active",
            "Active policies in the engine",
            metrics.policies_active.clone(),
        );
        registry.register(
            "policy_revision",
            "Store revision the policy set in force was built from (the same on every node once a change has rolled out)",
            metrics.policy_revision.clone(),
        );
        registry.register(
            "policies_invalid",
            "Stored policies whose definition does not compile (not evaluated)",
            metrics.policies_invalid.clone(),
        );
        metrics
    }

    /// The (evaluations, matches) counters of one policy, to keep in its compiled form.
    pub fn policy_counters(&self, policy_name: &str) -> (Counter, Counter) {
        let label = PolicyLabel {
            policy_name: policy_name.to_owned(),
        };
        (
            self.evaluations.get_or_create_owned(&label),
            self.matches.get_or_create_owned(&label),
        )
    }
}
