//! The agent's one Prometheus registry: every subsystem registers its own metrics into it
//! (`FooMetrics::register`), and the daemon hands each its handles. `/metrics` renders the
//! registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use agent_decision::decision_log::DecisionLogMetrics;
use agent_decision::{AuditMetrics, DecisionMetrics, OutboxMetrics};
use agent_engine::EngineMetrics;
use agent_http::{AuthMetrics, HttpMetrics};
use agent_mesh::MeshMetrics;
use agent_mqtt::UpstreamMetrics;
use agent_policy::opa::OpaMetrics;

/// Every subsystem's metrics, registered into one registry.
pub struct Metrics {
    pub registry: Registry,
    pub engine: EngineMetrics,
    pub opa: OpaMetrics,
    pub audit: AuditMetrics,
    pub decisions: DecisionMetrics,
    pub decision_logs: DecisionLogMetrics,
    pub outbox: OutboxMetrics,
    pub upstream: UpstreamMetrics,
    pub mesh: MeshMetrics,
    pub http: HttpMetrics,
    pub auth: AuthMetrics,
    /// SIGHUP reloads, by outcome (`applied`, `failed`: the config did not load).
    pub reloads: ReloadMetrics,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadOutcome {
    outcome: &'static str,
}

/// Config reloads, by outcome.
#[derive(Debug, Clone, Default)]
pub struct ReloadMetrics(Family<ReloadOutcome, Counter>);

impl ReloadMetrics {
    /// `applied`, `partial` (a part could not be applied) or `failed` (the config did not load).
    pub fn count(&self, outcome: &'static str) {
        self.0.get_or_create(&ReloadOutcome { outcome }).inc();
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildInfo {
    version: &'static str,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        // Always 1: the version as a label, the Prometheus way of exporting a build.
        let build_info = Family::<BuildInfo, Gauge>::default();
        build_info
            .get_or_create(&BuildInfo {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "mesh_agent_build_info",
            "The agent's build: its version as a label; the value is always 1",
            build_info,
        );
        Metrics {
            engine: EngineMetrics::register(&mut registry),
            audit: AuditMetrics::register(&mut registry),
            decisions: DecisionMetrics::register(&mut registry),
            decision_logs: DecisionLogMetrics::register(&mut registry),
            opa: OpaMetrics::register(&mut registry),
            outbox: OutboxMetrics::register(&mut registry),
            upstream: UpstreamMetrics::register(&mut registry),
            mesh: MeshMetrics::register(&mut registry),
            http: HttpMetrics::register(&mut registry),
            auth: AuthMetrics::register(&mut registry),
            reloads: {
                let reloads = ReloadMetrics::default();
                registry.register(
                    "config_reloads",
                    "Config reloads on SIGHUP, by outcome (applied, partial, failed)",
                    reloads.0.clone(),
                );
                for outcome in ["applied", "partial", "failed"] {
                    drop(reloads.0.get_or_create(&ReloadOutcome { outcome }));
                }
                reloads
            },
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
