//! The local HTTP API: P0.4's policy CRUD and `/evaluate`, plus health, metrics and the audit ring.
//!
//! Handlers only translate HTTP to calls on the services (`PolicyService`, `Decider`, `AuditLog`)
//! and back; they hold no logic of their own. Store writes run on the blocking pool, since a redb
//! commit waits for fsync.

mod audit;
mod error;
mod evaluate;
mod health;
mod json;
mod policies;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::audit::AuditLog;
use crate::decision::Decider;
use crate::metrics::Metrics;
use crate::policy::PolicyService;

pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub policies: Arc<PolicyService>,
    pub decider: Arc<Decider>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub node_id: Arc<str>,
}

/// All routes, with request bodies limited to `max_body_bytes`.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/policies", post(policies::create).get(policies::list))
        .route(
            "/policies/{id}",
            get(policies::get)
                .put(policies::update)
                .delete(policies::delete),
        )
        .route("/policies/{id}/versions", get(policies::versions))
        .route("/evaluate", post(evaluate::one))
        .route("/evaluate/batch", post(evaluate::batch))
        .route("/audit", get(audit::read))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
