//! `GET /health` (P0.4's shape, plus what an operator checks first) and `GET /metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;

use agent_base::clock::{now_us, rfc3339};
use prometheus_client::registry::Registry;

use super::{ApiError, AppState};

#[derive(Debug, Serialize)]
pub struct Health {
    status: &'static str,
    timestamp: String,
    node_id: String,
    version: &'static str,
    /// Store revision: the number of policy changes this node has recorded.
    policy_revision: u64,
    active_policies: usize,
    audit_head: u64,
    /// The MQTT upstream (broker, connection, circuit breaker, outbox); absent without MQTT.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<agent_mqtt::UpstreamView>,
}

pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    Ok(Json(Health {
        status: "healthy",
        timestamp: rfc3339(now_us()),
        node_id: state.node_id.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        policy_revision: state.policies.revision()?,
        active_policies: state.policies.active_count(),
        audit_head: state.audit.head()?,
        upstream: state.upstream.as_ref().map(|u| u.view()),
    }))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        render(&state.metrics),
    )
}

/// The content type of the OpenMetrics text Prometheus scrapes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric of the agent, in the OpenMetrics text format.
fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
