//! `POST /evaluate` and `POST /evaluate/batch`: P0.4's evaluation API.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use axum::http::StatusCode;

use agent_decision::audit::NotCommitted;
use agent_decision::event::Event;
use agent_decision::{DecideError, DecideOptions, Decision};

use super::{ApiError, AppState, json};

#[derive(Debug, Deserialize)]
pub struct EvaluateQuery {
    /// Evaluate without recording anything.
    #[serde(default)]
    dry_run: bool,
    /// Say for each policy why it matched or not.
    #[serde(default)]
    explain: bool,
}

/// One policy's result, as P0.4 returns it (plus `event_id` and `missing_fields`).
#[derive(Debug, Serialize)]
pub struct PolicyResult {
    event_id: String,
    policy_id: u64,
    policy_name: String,
    policy_version: u64,
    matched: bool,
    /// The action, modifiers and reversibility apply only to a match; null otherwise.
    action: Option<String>,
    modifiers: Option<Box<RawValue>>,
    reversibility_sec: Option<u64>,
    execution_time_ms: f64,
    /// Fields the condition read that the incident lacks (each made its comparison false).
    missing_fields: Vec<String>,
    /// Why this policy could not be evaluated (it then did not match).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// With `?explain=true`: the tests evaluated, the one that decided, each field's and fact's
    /// value, and the fields missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<agent_decision::PolicyExplanation>,
}

pub async fn one(
    State(state): State<AppState>,
    query: Result<Query<EvaluateQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<PolicyResult>>, ApiError> {
    let Query(query) = query?;
    let body = body?;
    let event = parse_event(&state, &body, "")?;
    let input = String::from_utf8_lossy(&body).into_owned();
    let incident = event.into_incident(SOURCE, &body, state.decider.dedup());
    let options = DecideOptions {
        dry_run: query.dry_run,
        explain: query.explain,
    };
    let pending = state
        .decider
        .decide_with(incident, input, options)
        .await
        .map_err(not_decided)?;
    if let Some(committed) = pending.committed {
        committed
            .await
            .map_err(|_| NotCommitted)
            .and_then(|result| result)
            .map_err(|err| not_decided(err.into()))?;
    }
    let decision = pending.decision;
    let mut results = results(&decision);
    if let Some(explanations) = &decision.explanations {
        for result in &mut results {
            result.explain = explanations
                .iter()
                .find(|e| e.policy_id == result.policy_id)
                .cloned();
        }
    }
    Ok(Json(results))
}

pub async fn batch(
    State(state): State<AppState>,
    query: Result<Query<EvaluateQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<Vec<PolicyResult>>>, ApiError> {
    let Query(query) = query?;
    let raw: Vec<Box<RawValue>> = json::parse(&body?)?;
    let policies = state.policies.active_count().max(1);
    if raw.len().saturating_mul(policies) > MAX_BATCH_RESULTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "a batch of {} events against {policies} active policies would answer {} results; \
                 at most {MAX_BATCH_RESULTS} per request (send at most {} events per batch)",
                raw.len(),
                raw.len().saturating_mul(policies),
                MAX_BATCH_RESULTS / policies
            ),
        )
        .with("max_results", MAX_BATCH_RESULTS));
    }
    // Every event is checked before any is evaluated: a bad batch records nothing.
    let mut events = Vec::with_capacity(raw.len());
    for (index, item) in raw.iter().enumerate() {
        events.push(parse_event(
            &state,
            item.get().as_bytes(),
            &format!("[{index}]"),
        )?);
    }
    // All or nothing: every action is built (and size-checked) before anything is recorded, and
    // the batch is committed in one transaction. If that fails the caller retries the batch:
    // events without an id get the same derived ids again, so their actions keep their ids.
    let batch = events
        .into_iter()
        .zip(raw)
        .map(|(event, item)| {
            let bytes = item.get().as_bytes();
            (
                event.into_incident(SOURCE, bytes, state.decider.dedup()),
                item.get().to_owned(),
            )
        })
        .collect();
    let decisions = state
        .decider
        .decide_batch(batch, query.dry_run)
        .await
        .map_err(not_decided)?;
    Ok(Json(decisions.iter().map(results).collect()))
}

/// The most results (events x active policies) one `/evaluate/batch` answers: about 10 MB of
/// JSON. A larger batch is refused whole, before anything is evaluated.
pub const MAX_BATCH_RESULTS: usize = 50_000;

/// Where HTTP events come from, for the ids of events that carry none.
const SOURCE: &str = "http:/evaluate";

fn not_decided(err: DecideError) -> ApiError {
    match err {
        // The caller must retry.
        DecideError::NotCommitted(_) | DecideError::Stopping(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_recorded",
            err.to_string(),
        ),
        DecideError::TooLarge(_) => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", err.to_string())
        }
    }
}

fn parse_event(state: &AppState, bytes: &[u8], at: &str) -> Result<Event, ApiError> {
    json::parse::<Event>(bytes).map_err(|err| {
        state.decider.count_rejected();
        err.within(at)
    })
}

fn results(decision: &Decision) -> Vec<PolicyResult> {
    decision
        .evaluation
        .iter()
        .map(|(policy, verdict)| {
            let matched = verdict.outcome.matched;
            PolicyResult {
                event_id: decision.incident.id.clone(),
                policy_id: policy.id,
                policy_name: policy.name.to_string(),
                policy_version: policy.version,
                matched,
                action: matched.then(|| policy.action.to_string()),
                modifiers: matched.then(|| policy.modifiers.clone()),
                reversibility_sec: matched.then_some(policy.reversibility_sec),
                execution_time_ms: verdict.elapsed_ns as f64 / 1e6,
                missing_fields: policy
                    .matcher
                    .missing_fields(verdict.outcome)
                    .map(str::to_owned)
                    .collect(),
                error: verdict.error.as_ref().map(ToString::to_string),
                explain: None,
            }
        })
        .collect()
}
