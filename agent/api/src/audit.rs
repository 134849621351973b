//! `GET /audit?limit=&policy_id=&since=&matched=`: the audit ring, newest first.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use mesh_proto::AuditRecord;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use agent_base::clock::{parse_rfc3339, rfc3339};
use agent_decision::audit;

use super::{ApiError, AppState};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;
/// A page ends before its entries (encoded) pass this size: one response stays a few MB however
/// large the events were. `next_before` continues it.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
    /// Only entries older than this sequence number: the `next_before` of the previous page.
    before: Option<u64>,
    /// Only entries in which this policy matched or lacked a field.
    policy_id: Option<u64>,
    /// RFC 3339 time; only entries at or after it.
    since: Option<String>,
    /// Only entries where a policy (the `policy_id` one, if given) matched.
    #[serde(default)]
    matched: bool,
}

#[derive(Debug, Serialize)]
pub struct AuditPage {
    capacity: u64,
    /// Sequence number of the newest committed entry.
    head: u64,
    entries: Vec<EntryView>,
    /// Set when the page stopped at its size cap before `limit`: pass it as `before` to read on.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<u64>,
}

#[derive(Debug, Serialize)]
struct EntryView {
    seq: u64,
    timestamp: String,
    node: String,
    event_id: String,
    input: Box<RawValue>,
    execution_time_ms: f64,
    policy_revision: u64,
    policies_evaluated: u32,
    /// Policies that matched or lacked a field; every other policy evaluated did not match.
    results: Vec<ResultView>,
    /// Shadow versions evaluated beside the active ones: recorded, never acted on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shadow: Vec<ShadowView>,
}

#[derive(Debug, Serialize)]
struct ShadowView {
    policy_id: u64,
    rollout_id: String,
    matched: bool,
    /// Whether the active version's verdict was the same.
    agrees: bool,
    execution_time_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ResultView {
    policy_id: u64,
    policy_version: u64,
    policy_name: String,
    matched: bool,
    execution_time_ms: f64,
    missing_fields: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// What became of the action of a rule that matched (with an upstream configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<ActionView>,
}

/// `sent`, `deferred` (a mesh action left to the node ranked first) or `suppressed` (and why).
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum ActionView {
    Sent { action_id: String },
    Deferred { action_id: String, actor: String },
    Suppressed { action_id: String, reason: String },
}

impl From<mesh_proto::ActionOutcome> for ActionView {
    fn from(outcome: mesh_proto::ActionOutcome) -> ActionView {
        use mesh_proto::ActionOutcome;
        match outcome {
            ActionOutcome::Sent { action_id } => ActionView::Sent { action_id },
            ActionOutcome::Deferred { action_id, actor } => {
                ActionView::Deferred { action_id, actor }
            }
            ActionOutcome::Suppressed { action_id, reason } => {
                ActionView::Suppressed { action_id, reason }
            }
        }
    }
}

pub async fn read(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("`limit` must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let since_us = query
        .since
        .as_deref()
        .map(|text| {
            parse_rfc3339(text).map_err(|err| {
                ApiError::invalid(
                    "since",
                    format!("`since` must be an RFC 3339 time like 2026-11-23T09:00:00Z: {err}"),
                )
            })
        })
        .transpose()?;
    let log = state.audit.clone();
    let ring_query = audit::Query {
        limit,
        before_seq: query.before,
        max_bytes: MAX_PAGE_BYTES,
        policy_id: query.policy_id,
        since_us,
        matched_only: query.matched,
    };
    let page = tokio::task::spawn_blocking(move || log.read(ring_query)).await??;
    Ok(Json(AuditPage {
        capacity: state.audit.settings().capacity,
        head: page.head,
        entries: page.records.into_iter().map(EntryView::from).collect(),
        next_before: page.next_before,
    }))
}

impl From<AuditRecord> for EntryView {
    fn from(record: AuditRecord) -> EntryView {
        EntryView {
            seq: record.seq,
            timestamp: rfc3339(record.at_us),
            node: record.node,
            event_id: record.event_id,
            // Stored inputs were valid JSON when received; anything else shows as null.
            input: RawValue::from_string(record.input_json).unwrap_or_default(),
            execution_time_ms: record.execution_time_ns as f64 / 1e6,
            policy_revision: record.policy_revision,
            policies_evaluated: record.policies_evaluated,
            results: record
                .results
                .into_iter()
                .map(|r| ResultView {
                    policy_id: r.policy_id,
                    policy_version: r.policy_version,
                    policy_name: r.policy_name,
                    matched: r.matched,
                    execution_time_ms: r.execution_time_ns as f64 / 1e6,
                    missing_fields: r.missing_fields,
                    error: r.error,
                    action: r.action.map(ActionView::from),
                })
                .collect(),
            shadow: record
                .shadow
                .into_iter()
                .map(|s| ShadowView {
                    policy_id: s.policy_id,
                    rollout_id: s.rollout_id,
                    matched: s.matched,
                    agrees: s.agrees,
                    execution_time_ms: s.execution_time_ns as f64 / 1e6,
                    error: s.error,
                })
                .collect(),
        }
    }
}
