//! The agent's own (not OPA's): the history of a Rego module, data document or bundle, and
//! rollback.

use super::*;

/// Which document: `?module=ID`, `?data=PATH` or `?bundle=NAME` (in a query or a rollback body).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentRef {
    module: Option<String>,
    data: Option<String>,
    bundle: Option<String>,
    /// Rollback only: the version to write back.
    version: Option<u64>,
}

impl DocumentRef {
    fn target(&self) -> Result<(mesh_proto::DocKind, &str), OpaApiError> {
        match (&self.module, &self.data, &self.bundle) {
            (Some(module), None, None) => Ok((mesh_proto::DocKind::RegoModule, module)),
            (None, Some(data), None) => Ok((mesh_proto::DocKind::Data, data)),
            (None, None, Some(bundle)) => Ok((mesh_proto::DocKind::Bundle, bundle)),
            _ => Err(OpaApiError::invalid(
                "name one document: `module` (a policy id), `data` (a data path) or `bundle` (a bundle name)",
            )),
        }
    }
}

/// One change of a document's history.
#[derive(Serialize)]
pub struct DocumentChangeView {
    revision: u64,
    op: &'static str,
    version: u64,
    /// The module's text, or the data document's JSON: only when one version is asked for
    /// (`&version=N`), since a data document may be megabytes and its history is kept whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    bytes: usize,
    updated_at: String,
    author: String,
}

/// `GET /rego/versions?module=ID` or `?data=PATH`: every change, oldest first, without bodies;
/// `&version=N` gives that version with its body.
pub async fn document_versions(
    State(state): State<AppState>,
    query: Result<Query<DocumentRef>, QueryRejection>,
) -> Result<Json<Value>, OpaApiError> {
    let Query(query) = query?;
    let (kind, name) = query.target()?;
    let history = state.rego.history(kind, name)?;
    let one = query.version;
    if let Some(version) = one
        && !history.iter().any(|c| c.document.version == version)
    {
        return Err(OpaApiError::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            format!("{name:?} has no version {version}"),
        ));
    }
    let changes: Vec<DocumentChangeView> = history
        .into_iter()
        .filter(|change| one.is_none_or(|v| change.document.version == v))
        .map(|change| DocumentChangeView {
            revision: change.revision,
            op: match change.op {
                mesh_proto::ChangeOp::Create => "create",
                mesh_proto::ChangeOp::Update => "update",
                mesh_proto::ChangeOp::Delete => "delete",
            },
            version: change.document.version,
            bytes: change.document.body.len(),
            body: one.map(|_| change.document.body),
            updated_at: agent_base::clock::rfc3339(change.document.updated_at_us),
            author: change.document.author,
        })
        .collect();
    Ok(Json(json!({ "result": changes })))
}

/// `POST /rego/rollback` with `{"module": ID, "version": N}` or `{"data": PATH, "version": N}`.
pub async fn rollback_document(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, OpaApiError> {
    let request: DocumentRef = serde_json::from_slice(&body?)
        .map_err(|err| OpaApiError::invalid(format!("invalid rollback request: {err}")))?;
    let Some(version) = request.version else {
        return Err(OpaApiError::invalid("`version` is required"));
    };
    let (kind, name) = request.target()?;
    let (kind, name) = (kind, name.to_owned());
    let rego = Arc::clone(&state.rego);
    let written = name.clone();
    tokio::task::spawn_blocking(move || rego.rollback(kind, &written, version)).await??;
    Ok(Json(
        json!({ "result": { "rolled_back": name, "to_version": version } }),
    ))
}
