//! `GET /health` (P0.4's shape, plus what an operator checks first) and `GET /metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
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

/// `?bundles=true` (OPA's): healthy only once every configured bundle is activated.
#[derive(Debug, Default, serde::Deserialize)]
pub struct HealthQuery {
    #[serde(default)]
    bundles: Option<String>,
}

pub async fn health(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<HealthQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Health>, ApiError> {
    let wants_bundles = query
        .ok()
        .and_then(|q| q.0.bundles)
        .is_some_and(|v| v.is_empty() || v.eq_ignore_ascii_case("true"));
    if wants_bundles && !state.rego.bundles_activated(&state.bundles.configured) {
        let missing: Vec<&str> = state
            .bundles
            .configured
            .iter()
            .filter(|name| !state.rego.bundles_activated(std::slice::from_ref(name)))
            .map(String::as_str)
            .collect();
        return Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "bundles_not_activated",
            format!(
                "configured bundles not activated yet: {}",
                missing.join(", ")
            ),
        ));
    }
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

/// OpenMetrics to a scraper that asks for it (Prometheus does, in `Accept`), else Prometheus'
/// classic text format, which every other reader of `/metrics` (promtool, curl, older agents)
/// understands.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    let text = render(&state.metrics);
    if openmetrics {
        ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], text)
    } else {
        (
            [(CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE)],
            classic_text(&text),
        )
    }
}

/// The content type of the OpenMetrics text Prometheus scrapes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of Prometheus' classic text format.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as Prometheus' classic text format: a counter's `HELP` and `TYPE` name its
/// sample (`foo_total`, where OpenMetrics names the family `foo`), `UNIT` and `EOF` lines go,
/// `unknown` is `untyped`. The samples themselves are written the same way in both.
fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 256);
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
            && kind == "counter"
        {
            counters.insert(name.to_string());
        }
    }
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match meta {
            Some((tag, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                let tail = if tag == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                };
                out.push_str(tag);
                out.push_str(&name);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Every metric of the agent, in the OpenMetrics text format.
fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_named_by_their_sample_in_the_classic_format() {
        let open = "# HELP hits Hits.\n# TYPE hits counter\nhits_total 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n";
        assert_eq!(
            super::classic_text(open),
            "# HELP hits_total Hits.\n# TYPE hits_total counter\nhits_total 3\n# HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }
}
