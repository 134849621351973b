//! The agent's one Prometheus registry: every subsystem registers its own metrics into it
//! (`FooMetrics::register`), and the daemon hands each its handles. `/metrics` renders the
//! registry.

use prometheus_client::registry::Registry;

use agent_decision::{AuditMetrics, OutboxMetrics};
use agent_engine::EngineMetrics;
use agent_http::HttpMetrics;
use agent_mesh::MeshMetrics;
use agent_mqtt::UpstreamMetrics;
use agent_policy::opa::OpaMetrics;

/// Every subsystem's metrics, registered into one registry.
pub struct Metrics {
    pub registry: Registry,
    pub engine: EngineMetrics,
    pub opa: OpaMetrics,
    pub audit: AuditMetrics,
    pub outbox: OutboxMetrics,
    pub upstream: UpstreamMetrics,
    pub mesh: MeshMetrics,
    pub http: HttpMetrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        Metrics {
            engine: EngineMetrics::register(&mut registry),
            audit: AuditMetrics::register(&mut registry),
            opa: OpaMetrics::register(&mut registry),
            outbox: OutboxMetrics::register(&mut registry),
            upstream: UpstreamMetrics::register(&mut registry),
            mesh: MeshMetrics::register(&mut registry),
            http: HttpMetrics::register(&mut registry),
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
