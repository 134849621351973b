//! `/v1/config` and `/v1/status`: what OPA says of itself, as far as it applies here.

use super::*;

/// `GET /v1/config`: the part of OPA's active configuration that applies here.
pub async fn config(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"result": {
        "labels": {"id": &*state.node_id, "version": env!("CARGO_PKG_VERSION")},
        "default_decision": "/system/main",
        "default_authorization_decision": "/system/authz/allow",
        "decision_logs": {"console": state.decision_log.is_some()},
    }}))
}

/// `GET /v1/status`: OPA's status document, with every bundle's status in OPA's shape.
pub async fn status(State(state): State<AppState>) -> Json<Value> {
    let bundles: Map<String, Value> = state
        .rego
        .bundle_status()
        .into_iter()
        .map(|s| (s.name.clone(), serde_json::to_value(s).unwrap_or_default()))
        .collect();
    let bundle_state = if state.rego.bundles_activated(&state.bundles.configured) {
        "OK"
    } else {
        "NOT_READY"
    };
    Json(json!({"result": {
        "labels": {"id": &*state.node_id, "version": env!("CARGO_PKG_VERSION")},
        "bundles": bundles,
        "plugins": {
            "bundle": {"state": bundle_state},
            "decision_logs": {"state": if state.decision_log.is_some() { "OK" } else { "NOT_READY" }},
            "status": {"state": "OK"},
        },
        "metrics": {"prometheus": {}},
    }}))
}
