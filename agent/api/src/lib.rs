//! The local HTTP API: P0.4's policy CRUD and `/evaluate`, plus health, metrics and the audit ring.
//!
//! Handlers only translate HTTP to calls on the services (`PolicyService`, `Decider`, `AuditLog`)
//! and back; they hold no logic of their own. Store writes run on the blocking pool, since a redb
//! commit waits for fsync.
//!
//! Architecture invariant: the API goes through the same services every other intake uses; the
//! layers below never depend on it.

mod access;
mod audit;
mod error;
mod evaluate;
mod health;
mod json;
mod mesh;
mod opa;
mod policies;
mod rollouts;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, get, post};

use agent_decision::Decider;
use agent_decision::audit::AuditLog;
use agent_policy::PolicyService;
use agent_policy::opa::{Evaluator, RegoService};
use prometheus_client::registry::Registry;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub policies: Arc<PolicyService>,
    pub rego: Arc<RegoService>,
    pub evaluator: Arc<Evaluator>,
    pub decider: Arc<Decider>,
    pub audit: AuditLog,
    /// The agent's one registry, which `/metrics` renders.
    pub metrics: Arc<Registry>,
    pub node_id: Arc<str>,
    pub store: Arc<agent_store::Store>,
    /// `None` when the node runs alone.
    pub mesh: Option<Arc<agent_mesh::Mesh>>,
    /// `None` without MQTT.
    pub upstream: Option<Arc<agent_mqtt::Upstream>>,
    /// `None` unless `[decision_logs]` has a sink.
    pub decision_log: Option<Arc<agent_decision::decision_log::DecisionLog>>,
    pub rollouts: Arc<agent_policy::rollout::RolloutService>,
    /// Wakes the rollout controller after a rollout was written here.
    pub rollout_wake: Arc<tokio::sync::Notify>,
    /// This node's report on the open rollouts (its peers' come by gossip).
    pub rollout_report: agent_rollout::LocalReport,
    pub bundles: BundlesApi,
}

/// What the bundle routes need of `[bundle]`.
#[derive(Clone, Debug, Default)]
pub struct BundlesApi {
    /// Largest archive `PUT /v1/bundles/{name}` takes (`bundle.max_bytes`).
    pub max_bytes: usize,
    /// The polled bundles (`[[bundles]]`): `GET /health?bundles=true` waits for them.
    pub configured: Arc<[String]>,
}

/// What guards the routes: who may call which ([`access`]), and how often a client may evaluate.
pub struct Guards {
    pub auth: Arc<agent_http::Auth>,
    /// On `/evaluate`, `/evaluate/batch`, OPA's `POST /v1/data...` and `/v1/validate`.
    pub evaluate_limit: Arc<agent_http::EvaluateLimit>,
}

/// The API's routes, with request bodies limited to `max_body_bytes`; every request is checked
/// by `guards.auth` first, and the evaluation routes are rate limited per client.
pub fn router(state: AppState, max_body_bytes: usize, guards: Guards) -> Router {
    let bundles_max_bytes = state.bundles.max_bytes;
    let limited = |route: MethodRouter<AppState>| {
        route.route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&guards.evaluate_limit),
            agent_http::rate_limited,
        ))
    };
    Router::new()
        .route("/policies", post(policies::create).get(policies::list))
        .route(
            "/policies/{id}",
            get(policies::get)
                .put(policies::update)
                .delete(policies::delete),
        )
        .route("/policies/{id}/versions", get(policies::versions))
        .route("/policies/{id}/rollback", post(policies::rollback))
        .route("/policies/{id}/replay", limited(post(policies::replay)))
        .route(
            "/policies/{id}/shadow",
            limited(get(rollouts::shadow_report))
                .post(rollouts::start_shadow)
                .delete(rollouts::withdraw_shadow),
        )
        .route("/policies/{id}/promote", post(rollouts::promote))
        .route("/rollouts", get(rollouts::list).post(rollouts::start))
        .route("/rollouts/{id}", get(rollouts::get))
        .route("/rollouts/{id}/cancel", post(rollouts::cancel))
        .route("/policies/replay", limited(post(policies::replay_new)))
        .route("/evaluate", limited(post(evaluate::one)))
        .route("/evaluate/batch", limited(post(evaluate::batch)))
        .route("/audit", get(audit::read))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .route("/mesh", get(mesh::view))
        .route("/mesh/members", get(mesh::members))
        .route("/mesh/incidents", get(mesh::incidents))
        // OPA's router treats a trailing slash as the same route (clients send `/v1/policies/`).
        .route("/v1/policies", get(opa::list_policies))
        .route("/v1/policies/", get(opa::list_policies))
        .route(
            "/v1/policies/{*id}",
            get(opa::get_policy)
                .put(opa::put_policy)
                .delete(opa::delete_policy),
        )
        .route(
            "/v1/data",
            get(opa::get_data_root)
                .put(opa::put_data_root)
                .patch(opa::patch_data_root)
                .merge(limited(post(opa::post_data_root))),
        )
        .route(
            "/v1/data/",
            get(opa::get_data_root)
                .put(opa::put_data_root)
                .patch(opa::patch_data_root)
                .merge(limited(post(opa::post_data_root))),
        )
        .route(
            "/v1/data/{*path}",
            get(opa::get_data)
                .put(opa::put_data)
                .patch(opa::patch_data)
                .delete(opa::delete_data)
                .merge(limited(post(opa::post_data))),
        )
        .route(
            "/v1/query",
            limited(get(opa::get_query)).merge(limited(post(opa::post_query))),
        )
        .route("/v1/compile", limited(post(opa::compile)))
        .route("/v1/compile/{*path}", limited(post(opa::compile_filters)))
        .route(
            "/v1/batch/data/{*path}",
            limited(post(opa::batch_decisions)),
        )
        .route("/", limited(post(opa::default_decision)))
        .route("/v1/bundles", get(opa::list_bundles))
        .route("/v1/bundles/", get(opa::list_bundles))
        .route(
            "/v1/bundles/{name}",
            get(opa::get_bundle)
                .delete(opa::delete_bundle)
                // A bundle is larger than other bodies: its own limit.
                .merge(
                    axum::routing::put(opa::put_bundle)
                        .layer(DefaultBodyLimit::max(bundles_max_bytes.max(max_body_bytes))),
                ),
        )
        .route("/v1/config", get(opa::config))
        .route("/v1/status", get(opa::status))
        .route("/v1/validate", limited(post(opa::validate)))
        .route("/rego/versions", get(opa::document_versions))
        .route("/rego/rollback", post(opa::rollback_document))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError::new(
                    axum::http::StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not allowed on {}", uri.path()),
                )
            },
        )
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            (guards.auth, access::scope as agent_http::auth::Classify),
            agent_http::auth::authorized,
        ))
        .with_state(state)
}
