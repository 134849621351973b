//! The metrics of Rego decisions, under the names the orchestrator's OPA client exported, so its
//! dashboards and alerts keep working.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
struct BundleOutcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpaErrorLabel {
    error_type: &'static str,
}

type DurationFamily = Family<OpaPolicyLabel, Histogram, fn() -> Histogram>;

/// Handles on the Rego metrics. Cheap to clone: every clone counts into the same series.
#[derive(Clone)]
pub struct OpaMetrics {
    evaluations: Family<OpaOutcomeLabel, Counter>,
    duration: DurationFamily,
    errors: Family<OpaErrorLabel, Counter>,
    pub cache_hits: Counter,
    pub cache_requests: Counter,
    pub rego_modules: Gauge,
    bundle_activations: Family<BundleOutcome, Counter>,
    bundles_active: Gauge,
}

impl OpaMetrics {
    pub fn register(registry: &mut Registry) -> OpaMetrics {
        let metrics = OpaMetrics {
            evaluations: Family::default(),
            duration: Family::new_with_constructor(
                (|| Histogram::new(exponential_buckets(1e-6, 2.0, 20))) as fn() -> Histogram,
            ),
            errors: Family::default(),
            cache_hits: Counter::default(),
            cache_requests: Counter::default(),
            rego_modules: Gauge::default(),
            bundle_activations: Family::default(),
            bundles_active: Gauge::default(),
        };
        registry.register(
            "opa_evaluations",
            "Rego decisions, by policy path and status (success, error)",
            metrics.evaluations.clone(),
        );
        registry.register(
            "opa_evaluation_duration_seconds",
            "Time to evaluate one Rego decision (cache hits excluded)",
            metrics.duration.clone(),
        );
        registry.register(
            "opa_errors",
            "Rego evaluations that failed, by error type (evaluation_timeout, evaluation_error)",
            metrics.errors.clone(),
        );
        registry.register(
            "opa_cache_hits",
            "Decisions answered from the cache",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "opa_cache_requests",
            "Decisions looked up in the cache",
            metrics.cache_requests.clone(),
        );
        registry.register(
            "rego_modules",
            "Rego modules loaded",
            metrics.rego_modules.clone(),
        );
        registry.register(
            "bundle_activations",
            "OPA bundles activated on this node, or refused (pushed, downloaded or merged: not \
             verified, overlapping roots, not compiling), by outcome",
            metrics.bundle_activations.clone(),
        );
        for outcome in ["activated", "refused"] {
            let _ = metrics
                .bundle_activations
                .get_or_create(&BundleOutcome { outcome });
        }
        registry.register(
            "bundles_active",
            "OPA bundles in the Rego set",
            metrics.bundles_active.clone(),
        );
        metrics
    }

    /// Counts a bundle activated; `active` bundles are in the set now.
    pub fn bundle_activated(&self, active: usize) {
        self.bundle_activations
            .get_or_create(&BundleOutcome {
                outcome: "activated",
            })
            .inc();
        self.bundles_active.set(active as i64);
    }

    /// Counts a bundle refused.
    pub fn bundle_refused(&self) {
        self.bundle_activations
            .get_or_create(&BundleOutcome { outcome: "refused" })
            .inc();
    }

    /// Counts one Rego evaluation of `policy` (a data path), its time, and its error if any.
    pub fn evaluated(&self, policy: &str, seconds: f64, error: Option<&'static str>) {
        let label = OpaPolicyLabel {
            policy: policy.to_owned(),
        };
        self.duration.get_or_create(&label).observe(seconds);
        let status = if error.is_some() { "error" } else { "success" };
        self.evaluations
            .get_or_create(&OpaOutcomeLabel {
                policy: label.policy,
                status,
            })
            .inc();
        if let Some(error_type) = error {
            self.errors
                .get_or_create(&OpaErrorLabel { error_type })
                .inc();
        }
    }
}
