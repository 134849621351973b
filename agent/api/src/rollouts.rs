//! `/rollouts` and a policy's shadow version (`/policies/{id}/shadow`, `/promote`): starting,
//! reading and ending rollouts through `RolloutService`, and what every node reports about them
//! (its own report, and its peers' as gossiped).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use agent_engine::ShadowCounts;
use agent_policy::PolicyPatch;
use agent_policy::rollout::{
    CanarySettings, CandidateInput, Plan, Rollout, RolloutError, RolloutService,
    State as RolloutState, Subject,
};
use agent_rollout::{CanaryCounts, NodeReport, REPORT_KEY};
use agent_store::audit_ring::Query as AuditQuery;

use super::{ApiError, AppState, json};

/// Recent disagreements a shadow report lists unless told.
const DEFAULT_DISAGREEMENTS: usize = 20;
/// Audit entries a shadow report reads at most looking for them.
const MAX_SCANNED: usize = 10_000;
/// The incidents a shadow report lists take at most this many bytes (as stored).
const MAX_LISTED_BYTES: usize = 4 << 20;

/// Every node's report, this node's first: (node, alive, report).
async fn reports(state: &AppState) -> Vec<(String, bool, NodeReport)> {
    let mut out = vec![(state.node_id.to_string(), true, state.rollout_report.get())];
    if let Some(mesh) = &state.mesh {
        for member in mesh.shared_view().await.members {
            if *member.node_id == *state.node_id {
                continue;
            }
            let report = member
                .values
                .iter()
                .find(|(key, _)| key == REPORT_KEY)
                .and_then(|(_, value)| NodeReport::decode(value))
                .unwrap_or_default();
            out.push((member.node_id, member.alive, report));
        }
    }
    out
}

/// A rollout as `/rollouts` shows it: as stored, and which node runs which version.
#[derive(Serialize)]
pub struct RolloutView {
    #[serde(flatten)]
    rollout: Rollout,
    nodes: Vec<NodeView>,
    /// For a bundle: about how large its archive is (the archive itself is left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    archive_bytes: Option<usize>,
}

#[derive(Serialize)]
struct NodeView {
    node: String,
    alive: bool,
    /// While a canary bakes, `candidate` or `previous` as the node reports it; `active+shadow`
    /// once the node reports evaluating a shadow version (`active` before); `candidate` once it
    /// completed or was promoted; `previous` once it failed or was cancelled.
    runs: &'static str,
    /// While baking: whether the node says it runs the candidate, and its evaluations since.
    #[serde(skip_serializing_if = "Option::is_none")]
    canary: Option<CanaryCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<ShadowCounts>,
    /// Why the node cannot run the candidate, when it says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    broken: Option<String>,
}

fn view(mut rollout: Rollout, reports: &[(String, bool, NodeReport)]) -> RolloutView {
    // A bundle's archive (megabytes of base64) is not echoed: its revision says which it is.
    let archive_bytes = match &mut rollout.candidate {
        agent_policy::rollout::Candidate::Bundle(bundle) => {
            let bytes = bundle.archive.len() / 4 * 3;
            bundle.archive.clear();
            Some(bytes)
        }
        _ => None,
    };
    let nodes = reports
        .iter()
        .map(|(node, alive, report)| NodeView {
            node: node.clone(),
            alive: *alive,
            runs: match (&rollout.state, report.canaries.get(&rollout.id)) {
                // While it bakes, what the node says it runs (a node that has not said yet, or
                // cannot compile the candidate, runs the previous version).
                (RolloutState::Baking { .. }, Some(counts)) if counts.applies => "candidate",
                (RolloutState::Baking { .. }, _) => "previous",
                (RolloutState::Shadow, _) if report.shadows.contains_key(&rollout.id) => {
                    "active+shadow"
                }
                (RolloutState::Shadow, _) => "active",
                (RolloutState::Completed { .. } | RolloutState::Promoted { .. }, _) => "candidate",
                _ => "previous",
            },
            canary: report.canaries.get(&rollout.id).copied(),
            shadow: report.shadows.get(&rollout.id).copied(),
            broken: report.broken.get(&rollout.id).cloned(),
        })
        .collect();
    RolloutView {
        rollout,
        nodes,
        archive_bytes,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RolloutError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(work).await??)
}

/// `GET /rollouts`: every rollout without its candidate (`candidate_bytes` says how large it is;
/// `GET /rollouts/{id}` has it), so the list stays small whatever the candidates hold.
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    let service = state.rollouts.clone();
    let rollouts = blocking(move || service.list()).await?;
    let reports = reports(&state).await;
    let listed = rollouts
        .iter()
        .map(|rollout| {
            let mut listed =
                serde_json::to_value(view(rollout.clone(), &reports)).unwrap_or(Value::Null);
            if let Some(candidate) = listed.as_object_mut().and_then(|o| o.remove("candidate")) {
                listed["candidate_bytes"] = Value::from(candidate.to_string().len());
            }
            listed
        })
        .collect();
    Ok(Json(listed))
}

pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    let Path(id) = id?;
    let service = state.rollouts.clone();
    let rollout = blocking(move || service.get(&id)).await?;
    Ok(Json(view(rollout, &reports(&state).await)))
}

/// `POST /rollouts`: a canary of a policy (a patch of it), a Rego module or a data document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    subject: Subject,
    /// For a policy: the change, as `PUT /policies/{id}` takes it.
    #[serde(default)]
    policy: Option<PolicyPatch>,
    /// For a Rego module: its new source.
    #[serde(default)]
    module: Option<String>,
    /// For a data document: its new value.
    #[serde(default)]
    data: Option<Value>,
    /// For a bundle: its `.tar.gz`, base64 (or `PUT /v1/bundles/{name}?canary_fraction=...`
    /// with the archive as the body).
    #[serde(default)]
    bundle: Option<String>,
    canary: CanarySettings,
}

/// The ids of the live members this node knows (itself excluded): a canary's nodes are chosen
/// among them and this node.
async fn members(state: &AppState) -> Vec<String> {
    match &state.mesh {
        Some(mesh) => mesh
            .shared_view()
            .await
            .members
            .into_iter()
            .filter(|m| m.alive && *m.node_id != *state.node_id)
            .map(|m| m.node_id)
            .collect(),
        None => Vec::new(),
    }
}

pub async fn start(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let request: StartRequest = json::parse(&body?)?;
    let given = [
        request.policy.is_some(),
        request.module.is_some(),
        request.data.is_some(),
        request.bundle.is_some(),
    ];
    let wanted = match request.subject {
        Subject::Policy { .. } => 0,
        Subject::RegoModule { .. } => 1,
        Subject::Data { .. } => 2,
        Subject::Bundle { .. } => 3,
    };
    if given.iter().filter(|g| **g).count() != 1 || !given[wanted] {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rollout",
            format!(
                "a rollout of a {} takes exactly one of `policy`, `module`, `data`, `bundle`: `{}`",
                subject_kind(&request.subject),
                ["policy", "module", "data", "bundle"][wanted]
            ),
        ));
    }
    let candidate = if let Some(patch) = request.policy {
        CandidateInput::Policy(Box::new(patch))
    } else if let Some(text) = request.module {
        CandidateInput::RegoModule(text)
    } else if let Some(value) = request.data {
        CandidateInput::Data(value)
    } else {
        let text = request.bundle.unwrap_or_default();
        let archive =
            agent_policy::opa::bundle::StoredBundle::decode_archive(&text).map_err(|err| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_rollout",
                    format!("`bundle` must be the archive in base64: {err}"),
                )
                .with("field", "bundle")
            })?;
        CandidateInput::Bundle(archive)
    };
    canary(&state, request.subject, candidate, request.canary).await
}

fn subject_kind(subject: &Subject) -> &'static str {
    match subject {
        Subject::Policy { .. } => "policy",
        Subject::RegoModule { .. } => "Rego module",
        Subject::Data { .. } => "data document",
        Subject::Bundle { .. } => "bundle",
    }
}

/// Starts a canary; 202: it is under way.
pub(crate) async fn canary(
    state: &AppState,
    subject: Subject,
    candidate: CandidateInput,
    settings: CanarySettings,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    if let Subject::Bundle { name } = &subject
        && state.bundles.configured.iter().any(|polled| polled == name)
    {
        // Its poller would replace whatever the canary completes with the server's version.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "rollout_conflict",
            format!(
                "bundle {name:?} is polled from a bundle server ([[bundles]]): its versions come from there, not from a canary"
            ),
        ));
    }
    let members = members(state).await;
    let service = state.rollouts.clone();
    let rollout =
        blocking(move || service.start_canary(subject, candidate, settings, &members)).await?;
    state.rollout_wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(view(rollout, &reports(state).await)),
    ))
}

pub async fn cancel(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    let Path(id) = id?;
    let service = state.rollouts.clone();
    let rollout = blocking(move || service.cancel(&id)).await?;
    state.rollout_wake.notify_one();
    Ok(Json(view(rollout, &reports(&state).await)))
}

/// `POST /policies/{id}/shadow`: the change, as `PUT /policies/{id}` takes it, published as the
/// policy's shadow version.
pub async fn start_shadow(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let Path(id) = id?;
    let patch: PolicyPatch = json::parse(&body?)?;
    if patch.rollout.is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rollout",
            "a shadow version takes no `rollout` plan: it is promoted by POST /policies/{id}/promote",
        ));
    }
    let service = state.rollouts.clone();
    let rollout = blocking(move || service.start_shadow(id, patch)).await?;
    state.rollout_wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(view(rollout, &reports(&state).await)),
    ))
}

/// The open shadow rollout of policy `id`, or 404.
async fn open_shadow(state: &AppState, id: u64) -> Result<Rollout, ApiError> {
    let service = state.rollouts.clone();
    let open = blocking(move || service.open_for(&Subject::Policy { id })).await?;
    match open {
        Some(rollout) if rollout.is_shadow() => Ok(rollout),
        _ => Err(ApiError::not_found(format!(
            "policy {id} has no shadow version (publish one with POST /policies/{id}/shadow)"
        ))
        .with("id", id)),
    }
}

pub async fn promote(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    end_shadow(&state, id?.0, RolloutService::promote).await
}

pub async fn withdraw_shadow(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<RolloutView>, ApiError> {
    end_shadow(&state, id?.0, RolloutService::cancel).await
}

/// Ends policy `id`'s open shadow version with `end` (promote or cancel).
async fn end_shadow(
    state: &AppState,
    id: u64,
    end: fn(&RolloutService, &str) -> Result<Rollout, RolloutError>,
) -> Result<Json<RolloutView>, ApiError> {
    let rollout = open_shadow(state, id).await?;
    let service = state.rollouts.clone();
    let rollout = blocking(move || end(&service, &rollout.id)).await?;
    state.rollout_wake.notify_one();
    Ok(Json(view(rollout, &reports(state).await)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowQuery {
    /// Disagreements listed at most (default 20, at most 1,000).
    limit: Option<usize>,
}

/// `GET /policies/{id}/shadow`.
#[derive(Serialize)]
pub struct ShadowReport {
    rollout: Rollout,
    /// Every node's counts summed (each since the node started or the shadow was published).
    mesh: Agreement,
    nodes: Vec<NodeAgreement>,
    /// This node's recent incidents on which the two versions differed, newest first.
    disagreements: Vec<Disagreement>,
    /// Audit entries read looking for them.
    scanned: usize,
}

#[derive(Serialize, Default)]
struct Agreement {
    evaluations: u64,
    agreements: u64,
    disagreements: u64,
    /// agreements / evaluations (1.0 with none).
    agreement_rate: f64,
    /// How often the shadow version matched.
    matches: u64,
    errors: u64,
}

impl Agreement {
    fn of(counts: &ShadowCounts) -> Agreement {
        Agreement {
            evaluations: counts.evaluations,
            agreements: counts.agreements,
            disagreements: counts.disagreements(),
            agreement_rate: if counts.evaluations == 0 {
                1.0
            } else {
                counts.agreements as f64 / counts.evaluations as f64
            },
            matches: counts.matches,
            errors: counts.errors,
        }
    }
}

#[derive(Serialize)]
struct NodeAgreement {
    node: String,
    alive: bool,
    /// None: the node has not reported this shadow version (yet).
    #[serde(flatten)]
    agreement: Option<Agreement>,
}

#[derive(Serialize)]
struct Disagreement {
    seq: u64,
    at: String,
    event_id: String,
    incident: Box<serde_json::value::RawValue>,
    active_matched: bool,
    shadow_matched: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn shadow_report(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
    query: Result<Query<ShadowQuery>, QueryRejection>,
) -> Result<Json<ShadowReport>, ApiError> {
    let Path(id) = id?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(DEFAULT_DISAGREEMENTS).min(1_000);
    // The latest shadow of the policy, open or not, so a promoted one can still be read.
    let service = state.rollouts.clone();
    let rollout = blocking(move || service.list())
        .await?
        .iter()
        .rev()
        .find(|r| r.subject == Subject::Policy { id } && matches!(r.plan, Plan::Shadow))
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "policy {id} has no shadow version (publish one with POST /policies/{id}/shadow)"
            ))
            .with("id", id)
        })?;
    let mut total = ShadowCounts::default();
    let mut nodes = Vec::new();
    for (node, alive, report) in reports(&state).await {
        let counts = report.shadows.get(&rollout.id).copied();
        if let Some(c) = &counts {
            total.evaluations += c.evaluations;
            total.agreements += c.agreements;
            total.matches += c.matches;
            total.errors += c.errors;
        }
        nodes.push(NodeAgreement {
            node,
            alive,
            agreement: counts.as_ref().map(Agreement::of),
        });
    }
    let audit = state.audit.clone();
    let rollout_id = rollout.id.clone();
    let (disagreements, scanned) =
        tokio::task::spawn_blocking(move || disagreements(&audit, &rollout_id, limit))
            .await
            .map_err(|err| ApiError::internal(&err))??;
    Ok(Json(ShadowReport {
        rollout,
        mesh: Agreement::of(&total),
        nodes,
        disagreements,
        scanned,
    }))
}

/// The newest `limit` entries of this node's ring where the shadow of `rollout_id` disagreed,
/// reading at most [`MAX_SCANNED`] entries.
fn disagreements(
    audit: &agent_decision::audit::AuditLog,
    rollout_id: &str,
    limit: usize,
) -> Result<(Vec<Disagreement>, usize), ApiError> {
    let mut found = Vec::new();
    let mut scanned = 0;
    let mut bytes = 0;
    let mut before = None;
    while found.len() < limit && scanned < MAX_SCANNED && bytes < MAX_LISTED_BYTES {
        let page = audit.read(AuditQuery {
            limit: 500,
            before_seq: before,
            max_bytes: 4 << 20,
            ..AuditQuery::default()
        })?;
        let Some(last) = page.records.last() else {
            break;
        };
        before = Some(last.seq);
        for record in page.records {
            scanned += 1;
            let Some(shadow) = record
                .shadow
                .iter()
                .find(|s| s.rollout_id == rollout_id && !s.agrees)
            else {
                continue;
            };
            if found.len() == limit || bytes >= MAX_LISTED_BYTES {
                break;
            }
            bytes += record.input_json.len();
            found.push(Disagreement {
                seq: record.seq,
                at: agent_base::clock::rfc3339(record.at_us),
                event_id: record.event_id.clone(),
                incident: serde_json::value::RawValue::from_string(record.input_json.clone())
                    .unwrap_or_else(|_| {
                        serde_json::value::to_raw_value(&record.input_json)
                            .unwrap_or_else(|_| Default::default())
                    }),
                active_matched: !shadow.matched,
                shadow_matched: shadow.matched,
                error: shadow.error.clone(),
            });
        }
    }
    Ok((found, scanned))
}
