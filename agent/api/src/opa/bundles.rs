//! `/v1/bundles`: OPA bundles pushed to this node (`PUT /v1/bundles/{name}` with the `.tar.gz` as
//! the body), their status (`GET`), and their removal (`DELETE`). A bundle written here is stored
//! and rolled out to the mesh like any change; every node verifies it with its own keys.

use super::*;

use agent_policy::opa::PutBundle;

/// A canary plan for a pushed bundle, in the query: `?canary_fraction=0.2&bake_sec=300`
/// (`max_failure_rate_rise`, `min_canary_evaluations` as in `POST /rollouts`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushQuery {
    canary_fraction: Option<f64>,
    bake_sec: Option<u64>,
    max_failure_rate_rise: Option<f64>,
    min_canary_evaluations: Option<u64>,
}

/// `PUT /v1/bundles/{name}`: 200 with the revision activated, 400 saying what is wrong (and in
/// which file), 413 over `bundle.max_bytes`. With a canary plan in the query, 202 with the
/// rollout: the bundle reaches a share of the nodes first (see `POST /rollouts`).
pub async fn put_bundle(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<PushQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpaApiError> {
    let Query(query) = query?;
    let body = body?;
    match (query.canary_fraction, query.bake_sec) {
        (None, None) => {}
        (Some(fraction), Some(bake_sec)) => {
            let settings = agent_policy::rollout::CanarySettings {
                fraction,
                bake_sec,
                max_failure_rate_rise: query.max_failure_rate_rise.unwrap_or(0.0),
                min_canary_evaluations: query.min_canary_evaluations.unwrap_or(0),
            };
            let subject = agent_policy::rollout::Subject::Bundle { name };
            let candidate = agent_policy::rollout::CandidateInput::Bundle(body.to_vec());
            return Ok(
                match crate::rollouts::canary(&state, subject, candidate, settings).await {
                    Ok(started) => started.into_response(),
                    Err(err) => err.into_response(),
                },
            );
        }
        _ => {
            return Err(OpaApiError::invalid(
                "a canary plan takes both `canary_fraction` and `bake_sec`",
            ));
        }
    }
    let service = state.rego.clone();
    let (revision, changed) = tokio::task::spawn_blocking(move || {
        service.put_bundle(PutBundle {
            name: &name,
            archive: &body,
            source: "push",
            etag: "",
        })
    })
    .await??;
    Ok(Json(json!({"result": {"revision": revision, "changed": changed}})).into_response())
}

/// `GET /v1/bundles`: every bundle's status, by name.
pub async fn list_bundles(State(state): State<AppState>) -> Json<Value> {
    let statuses: Map<String, Value> = state
        .rego
        .bundle_status()
        .into_iter()
        .map(|s| (s.name.clone(), serde_json::to_value(s).unwrap_or_default()))
        .collect();
    Json(json!({"result": statuses}))
}

/// `GET /v1/bundles/{name}`: its status, roots, modules, source.
pub async fn get_bundle(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, OpaApiError> {
    let info = state
        .rego
        .bundle_info(&name)
        .ok_or_else(|| OpaError::NotFound(format!("bundle {name:?}")))?;
    Ok(Json(json!({"result": info})))
}

pub async fn delete_bundle(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, OpaApiError> {
    let service = state.rego.clone();
    tokio::task::spawn_blocking(move || service.delete_bundle(&name)).await??;
    Ok(Json(json!({})))
}
