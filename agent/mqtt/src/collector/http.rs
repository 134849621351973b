//! The collector's HTTP API: `GET /collector/summaries?node=&limit=`, `GET /collector/nodes` (the
//! last summary of each node), `GET /collector/actions?limit=`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::store::CollectorStore;
use agent_store::StoreError;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    node: Option<String>,
    limit: Option<usize>,
}

pub fn router(store: Arc<CollectorStore>) -> Router {
    Router::new()
        .route("/collector/summaries", get(summaries))
        .route("/collector/nodes", get(nodes))
        .route("/collector/actions", get(actions))
        .with_state(store)
}

fn failed(err: StoreError) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"error": {"code": "internal", "message": err.to_string()}})),
    )
        .into_response()
}

async fn summaries(
    State(store): State<Arc<CollectorStore>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).min(10_000);
    match store.summaries(query.node.as_deref(), limit) {
        Ok(list) => Json(json!({ "summaries": list })).into_response(),
        Err(err) => failed(err),
    }
}

async fn nodes(State(store): State<Arc<CollectorStore>>) -> Response {
    match store.nodes() {
        Ok(list) => {
            let nodes: Vec<_> = list
                .into_iter()
                .map(|(node_id, last)| json!({"node_id": node_id, "last_summary": last}))
                .collect();
            Json(json!({ "nodes": nodes })).into_response()
        }
        Err(err) => failed(err),
    }
}

async fn actions(
    State(store): State<Arc<CollectorStore>>,
    Query(query): Query<ListQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).min(10_000);
    match store.actions(limit) {
        Ok(list) => Json(json!({ "actions": list })).into_response(),
        Err(err) => failed(err),
    }
}
