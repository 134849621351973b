//! The agent's Prometheus metrics: one registry, and handles the hot paths hold on to.
//!
//! Per-policy counters are looked up once, when a policy is compiled into the engine, and kept in
//! the compiled policy, so counting an evaluation is one atomic add, not a label-map lookup.

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

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    evaluations: Family<PolicyLabel, Counter>,
    matches: Family<PolicyLabel, Counter>,
    /// Time to evaluate one event against the whole active policy set.
    pub evaluation_duration: Histogram,
    /// Events that could not be evaluated (rejected input, or a policy that failed to evaluate).
    pub evaluation_errors: Counter,
    pub policies_active: Gauge,
    /// Policies in the store whose definition this build could not compile (kept, but not evaluated).
    pub policies_invalid: Gauge,
    pub audit_appended: Counter,
    pub audit_commit_duration: Histogram,
    pub audit_pending: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let evaluations = Family::<PolicyLabel, Counter>::default();
        registry.register(
            "policy_evaluations",
            "Policy evaluations, by policy",
            evaluations.clone(),
        );
        let matches = Family::<PolicyLabel, Counter>::default();
        registry.register(
            "policy_matches",
            "Policy matches, by policy",
            matches.clone(),
        );
        // 1 µs .. ~16 ms: evaluation is expected in the microseconds.
        let evaluation_duration = Histogram::new(exponential_buckets(1e-6, 2.0, 15));
        registry.register(
            "policy_evaluation_duration_seconds",
            "Time to evaluate one event against every active policy",
            evaluation_duration.clone(),
        );
        let evaluation_errors = Counter::default();
        registry.register(
            "policy_evaluation_errors",
            "Events rejected as invalid or that failed to evaluate",
            evaluation_errors.clone(),
        );
        let policies_active = Gauge::default();
        registry.register(
            "policies_active",
            "Active policies in the engine",
            policies_active.clone(),
        );
        let policies_invalid = Gauge::default();
        registry.register(
            "policies_invalid",
            "Stored policies whose definition does not compile (not evaluated)",
            policies_invalid.clone(),
        );
        let audit_appended = Counter::default();
        registry.register(
            "audit_entries_committed",
            "Audit entries committed to the ring",
            audit_appended.clone(),
        );
        // 100 µs .. ~3 s: one group commit, fsync included.
        let audit_commit_duration = Histogram::new(exponential_buckets(1e-4, 2.0, 15));
        registry.register(
            "audit_commit_duration_seconds",
            "Time to commit one group of audit entries",
            audit_commit_duration.clone(),
        );
        let audit_pending = Gauge::default();
        registry.register(
            "audit_pending_entries",
            "Audit entries accepted but not yet committed",
            audit_pending.clone(),
        );
        Metrics {
            registry,
            evaluations,
            matches,
            evaluation_duration,
            evaluation_errors,
            policies_active,
            policies_invalid,
            audit_appended,
            audit_commit_duration,
            audit_pending,
        }
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

    /// Everything, in the OpenMetrics text format Prometheus scrapes.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
