//! `/policies`: P0.4's CRUD, plus `/policies/{id}/versions` for the history.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use agent_policy::{ChangeView, NewPolicy, PolicyPatch, PolicyView};

use super::{ApiError, AppState, json};

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    active_only: bool,
}

pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<PolicyView>), ApiError> {
    let new: NewPolicy = json::parse(&body?)?;
    let service = state.policies.clone();
    let record = tokio::task::spawn_blocking(move || service.create(new)).await??;
    Ok((StatusCode::CREATED, Json(record.into())))
}

pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<PolicyView>>, ApiError> {
    let Query(query) = query?;
    let records = state.policies.list(query.active_only)?;
    Ok(Json(records.into_iter().map(PolicyView::from).collect()))
}

pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<PolicyView>, ApiError> {
    let Path(id) = id?;
    Ok(Json(state.policies.get(id)?.into()))
}

/// `PUT /policies/{id}`; with a `rollout` plan, the change starts a canary instead (202 with the
/// rollout) and reaches the mesh in steps.
pub async fn update(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Path(id) = id?;
    let mut patch: PolicyPatch = json::parse(&body?)?;
    if let Some(plan) = patch.rollout.take() {
        let subject = agent_policy::rollout::Subject::Policy { id };
        let candidate = agent_policy::rollout::CandidateInput::Policy(Box::new(patch));
        return Ok(super::rollouts::canary(&state, subject, candidate, plan)
            .await?
            .into_response());
    }
    let service = state.policies.clone();
    let record = tokio::task::spawn_blocking(move || service.update(id, patch)).await??;
    Ok(Json(PolicyView::from(record)).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    let service = state.policies.clone();
    tokio::task::spawn_blocking(move || service.delete(id)).await??;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn versions(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<Vec<ChangeView>>, ApiError> {
    let Path(id) = id?;
    let history = state.policies.history(id)?;
    Ok(Json(history.into_iter().map(ChangeView::from).collect()))
}

/// `POST /policies/{id}/rollback` with `{"version": N}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub version: u64,
}

pub async fn rollback(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PolicyView>, ApiError> {
    let Path(id) = id?;
    let request: RollbackRequest = json::parse(&body?)?;
    let service = state.policies.clone();
    let record =
        tokio::task::spawn_blocking(move || service.rollback(id, request.version)).await??;
    Ok(Json(record.into()))
}

/// How many recorded incidents a replay goes through unless told.
const DEFAULT_REPLAY: usize = 10_000;

/// `POST /policies/{id}/replay`: optionally a change to the definition, not saved.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub definition: Option<agent_engine::DefinitionPatch>,
    pub limit: Option<usize>,
}

/// `POST /policies/replay`: a whole definition for a policy not created yet.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayNewRequest {
    pub definition: agent_engine::Definition,
    pub limit: Option<usize>,
}

fn invalid(err: agent_engine::DefinitionError) -> ApiError {
    ApiError::from(agent_policy::PolicyError::from(err))
}

async fn run_replay(
    state: &AppState,
    policy_id: Option<u64>,
    definition: agent_engine::Definition,
    stored: Option<agent_engine::Definition>,
    limit: Option<usize>,
) -> Result<Json<agent_decision::replay::ReplayReport>, ApiError> {
    let matcher = definition.validate().map_err(invalid)?;
    let stored = stored.and_then(|d| d.validate().ok());
    let audit = state.audit.clone();
    let rego = state.rego.current_set();
    let limit = limit.unwrap_or(DEFAULT_REPLAY);
    let report = tokio::task::spawn_blocking(move || {
        agent_decision::replay::replay(&audit, policy_id, &matcher, stored.as_ref(), rego, limit)
    })
    .await
    .map_err(|err| ApiError::internal(&err))?
    .map_err(|err| ApiError::internal(&err))?;
    Ok(Json(report))
}

pub async fn replay(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<agent_decision::replay::ReplayReport>, ApiError> {
    let Path(id) = id?;
    let body = body?;
    let request: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        json::parse(&body)?
    };
    let record = state.policies.get(id)?;
    let stored = agent_engine::Definition::from_json(&record.definition_json)
        .map_err(|err| ApiError::internal(&err))?;
    let mut definition = stored.clone();
    if let Some(patch) = request.definition {
        definition.apply(patch);
    }
    run_replay(&state, Some(id), definition, Some(stored), request.limit).await
}

pub async fn replay_new(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<agent_decision::replay::ReplayReport>, ApiError> {
    let request: ReplayNewRequest = json::parse(&body?)?;
    run_replay(&state, None, request.definition, None, request.limit).await
}
