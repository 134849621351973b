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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpaPolicyLabel {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpaOutcomeLabel {
    policy: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpaErrorLabel {
    error_type: &'static str,
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
    // Rego decisions, under the names the orchestrator's OPA client exported, so its dashboards
    // and alerts keep working.
    opa_evaluations: Family<OpaOutcomeLabel, Counter>,
    opa_duration: Family<OpaPolicyLabel, Histogram>,
    opa_errors: Family<OpaErrorLabel, Counter>,
    pub opa_cache_hits: Counter,
    pub opa_cache_requests: Counter,
    pub rego_modules: Gauge,
    /// MQTT intake, outbox and upstream publisher.
    pub upstream: crate::upstream::metrics::UpstreamMetrics,
    /// Gossip, membership and rollout.
    pub mesh: crate::mesh::metrics::MeshMetrics,
    /// HTTP connections: open, evicted, refused, timed out.
    pub http: crate::api::HttpMetrics,
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
        let opa_evaluations = Family::<OpaOutcomeLabel, Counter>::default();
        registry.register(
            "opa_evaluations",
            "Rego decisions, by policy path and status (success, error)",
            opa_evaluations.clone(),
        );
        let opa_duration = Family::<OpaPolicyLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(1e-6, 2.0, 20))) as fn() -> Histogram,
        );
        registry.register(
            "opa_evaluation_duration_seconds",
            "Time to evaluate one Rego decision (cache hits excluded)",
            opa_duration.clone(),
        );
        let opa_errors = Family::<OpaErrorLabel, Counter>::default();
        registry.register(
            "opa_errors",
            "Rego evaluations that failed, by error type (evaluation_timeout, evaluation_error)",
            opa_errors.clone(),
        );
        let opa_cache_hits = Counter::default();
        registry.register(
            "opa_cache_hits",
            "Decisions answered from the cache",
            opa_cache_hits.clone(),
        );
        let opa_cache_requests = Counter::default();
        registry.register(
            "opa_cache_requests",
            "Decisions looked up in the cache",
            opa_cache_requests.clone(),
        );
        let rego_modules = Gauge::default();
        registry.register("rego_modules", "Rego modules loaded", rego_modules.clone());
        let upstream = crate::upstream::metrics::UpstreamMetrics::register(&mut registry);
        let mesh = crate::mesh::metrics::MeshMetrics::register(&mut registry);
        let http = crate::api::HttpMetrics::register(&mut registry);
        Metrics {
            upstream,
            mesh,
            http,
            registry,
            opa_evaluations,
            opa_duration,
            opa_errors,
            opa_cache_hits,
            opa_cache_requests,
            rego_modules,
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

    /// Counts one Rego evaluation of `policy` (a data path), its time, and its error if any.
    pub fn opa_evaluated(&self, policy: &str, seconds: f64, error: Option<&'static str>) {
        let label = OpaPolicyLabel {
            policy: policy.to_owned(),
        };
        self.opa_duration.get_or_create(&label).observe(seconds);
        let status = if error.is_some() { "error" } else { "success" };
        self.opa_evaluations
            .get_or_create(&OpaOutcomeLabel {
                policy: label.policy,
                status,
            })
            .inc();
        if let Some(error_type) = error {
            self.opa_errors
                .get_or_create(&OpaErrorLabel { error_type })
                .inc();
        }
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
