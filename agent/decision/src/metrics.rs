//! The metrics of the decider, the audit writer and the outbox, registered into the agent's one
//! registry by the daemon.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    /// `node` or `mesh`: the rule's scope.
    scope: &'static str,
    /// `sent` (to the outbox), `deferred` (to the mesh's first-ranked node), `suppressed`.
    outcome: &'static str,
}

/// What the decider decided about matched rules' actions, counted once each is committed.
#[derive(Clone, Default)]
pub struct DecisionMetrics {
    actions: Family<ActionLabels, Counter>,
}

impl DecisionMetrics {
    pub fn register(registry: &mut Registry) -> DecisionMetrics {
        let metrics = DecisionMetrics::default();
        registry.register(
            "decision_actions",
            "Actions of matched rules, by the rule's scope (node, mesh) and outcome (sent, deferred to the mesh's first-ranked node, suppressed)",
            metrics.actions.clone(),
        );
        // Every series from the start, so that a rate over it is 0 rather than absent.
        for scope in ["node", "mesh"] {
            for outcome in ["sent", "deferred", "suppressed"] {
                drop(
                    metrics
                        .actions
                        .get_or_create(&ActionLabels { scope, outcome }),
                );
            }
        }
        metrics
    }

    pub(crate) fn action(&self, mesh: bool, outcome: &mesh_proto::ActionOutcome) {
        let outcome = match outcome {
            mesh_proto::ActionOutcome::Sent { .. } => "sent",
            mesh_proto::ActionOutcome::Deferred { .. } => "deferred",
            mesh_proto::ActionOutcome::Suppressed { .. } => "suppressed",
        };
        let scope = if mesh { "mesh" } else { "node" };
        self.actions
            .get_or_create(&ActionLabels { scope, outcome })
            .inc();
    }
}

/// The audit writer's metrics. Cheap to clone: every clone counts into the same series.
#[derive(Clone)]
pub struct AuditMetrics {
    pub appended: Counter,
    pub commit_duration: Histogram,
    pub pending: Gauge,
}

impl AuditMetrics {
    pub fn register(registry: &mut Registry) -> AuditMetrics {
        // 100 µs .. ~3 s: one group commit, fsync included.
        let metrics = AuditMetrics {
            appended: Counter::default(),
            commit_duration: Histogram::new(exponential_buckets(1e-4, 2.0, 15)),
            pending: Gauge::default(),
        };
        registry.register(
            "audit_entries_committed",
            "Audit entries committed to the ring",
            metrics.appended.clone(),
        );
        registry.register(
            "audit_commit_duration_seconds",
            "Time to commit one group of audit entries",
            metrics.commit_duration.clone(),
        );
        registry.register(
            "audit_pending_entries",
            "Audit entries accepted but not yet committed",
            metrics.pending.clone(),
        );
        metrics
    }
}

/// The outbox's metrics. Cheap to clone: every clone counts into the same series.
#[derive(Clone)]
pub struct OutboxMetrics {
    pub depth: Gauge,
    pub dropped: Counter,
    /// Decision logs dropped past `decision_logs.keep`.
    pub dropped_logs: Counter,
    /// Times an intake had to wait for outbox room (`block`).
    pub full_waits: Counter,
}

impl OutboxMetrics {
    pub fn register(registry: &mut Registry) -> OutboxMetrics {
        let metrics = OutboxMetrics {
            depth: Gauge::default(),
            dropped: Counter::default(),
            dropped_logs: Counter::default(),
            full_waits: Counter::default(),
        };
        registry.register(
            "outbox_depth",
            "Messages in the outbox waiting for the broker's acknowledgement",
            metrics.depth.clone(),
        );
        registry.register(
            "outbox_dropped",
            "Messages dropped from a full outbox (actions under when_full = drop_oldest, summaries beyond summary.keep)",
            metrics.dropped.clone(),
        );
        registry.register(
            "outbox_decision_logs_dropped",
            "Decision logs dropped from the outbox past decision_logs.keep (the oldest first)",
            metrics.dropped_logs.clone(),
        );
        registry.register(
            "outbox_full_waits",
            "Decisions that waited for room in a full outbox (when_full = block)",
            metrics.full_waits.clone(),
        );
        metrics
    }
}
