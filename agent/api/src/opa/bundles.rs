//! `/v1/bundles`: OPA bundles pushed to this node (`PUT /v1/bundles/{name}` with the `.tar.gz` as
//! the body), their status (`GET`), and their removal (`DELETE`). A bundle written here is stored
//! and rolled out to the mesh like any change; every node verifies it with its own keys.

use super::*;

use agent_policy::opa::PutBundle;

/// `PUT /v1/bundles/{name}`: 200 with the revision activated, 400 saying what is wrong (and in
/// which file), 413 over `bundles.max_bytes`.
pub async fn put_bundle(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, OpaApiError> {
    let body = body?;
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
    Ok(Json(
        json!({"result": {"revision": revision, "changed": changed}}),
    ))
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
