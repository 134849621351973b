//! The metrics of MQTT intake and the upstream publisher (with what it sees of the outbox: its
//! oldest entry, acknowledged and undeliverable ones), registered into the agent's one registry by
//! the daemon. The outbox's own depth, drops and waits are `agent_decision::OutboxMetrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// Every metric of the MQTT side. Cheap to clone: every clone counts into the same series.
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// PUBACKs the broker sent for outbox messages (each then leaves the outbox).
    pub published: Counter,
    pub outbox_oldest_age: Gauge<f64, AtomicU64>,
    /// Entries larger than the publisher may send (the limit shrank since they were queued).
    pub outbox_undeliverable: Counter,
    /// 1 for the breaker's current state, 0 for the others.
    pub breaker_state: Family<StateLabel, Gauge>,
    pub breaker_transitions: Counter,
    pub connected: Gauge,
    pub connection_failures: Counter,
    pub intake_received: Counter,
    pub intake_rejected: Counter,
}

impl UpstreamMetrics {
    pub fn register(registry: &mut Registry) -> UpstreamMetrics {
        let m = UpstreamMetrics {
            published: Counter::default(),
            outbox_oldest_age: Gauge::default(),
            outbox_undeliverable: Counter::default(),
            breaker_state: Family::default(),
            breaker_transitions: Counter::default(),
            connected: Gauge::default(),
            connection_failures: Counter::default(),
            intake_received: Counter::default(),
            intake_rejected: Counter::default(),
        };
        registry.register(
            "upstream_published",
            "Outbox messages the broker acknowledged (PUBACK); each then leaves the outbox",
            m.published.clone(),
        );
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest message in the outbox (0 when empty)",
            m.outbox_oldest_age.clone(),
        );
        registry.register(
            "outbox_undeliverable",
            "Outbox entries larger than mqtt.max_message_bytes, dropped unsent (logged)",
            m.outbox_undeliverable.clone(),
        );
        registry.register(
            "upstream_circuit_breaker_state",
            "Upstream circuit breaker: 1 for the current state (closed, open, half_open)",
            m.breaker_state.clone(),
        );
        registry.register(
            "upstream_circuit_breaker_transitions",
            "Upstream circuit breaker state changes",
            m.breaker_transitions.clone(),
        );
        registry.register(
            "upstream_connected",
            "1 while the upstream MQTT connection is up",
            m.connected.clone(),
        );
        registry.register(
            "upstream_connection_failures",
            "Failed or lost upstream MQTT connections",
            m.connection_failures.clone(),
        );
        registry.register(
            "mqtt_intake_received",
            "Incident messages received over MQTT",
            m.intake_received.clone(),
        );
        registry.register(
            "mqtt_intake_rejected",
            "Incident messages rejected as malformed",
            m.intake_rejected.clone(),
        );
        m
    }
}
