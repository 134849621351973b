//! `/v1/data`: OPA's data documents (PUT, PATCH, DELETE) and decisions (GET, POST).

use super::*;

pub async fn put_data_root(
    state: State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, OpaApiError> {
    put_data(state, Path(String::new()), body).await
}

pub async fn put_data(
    State(state): State<AppState>,
    Path(path): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, OpaApiError> {
    let value = parse_json(&body?)?;
    let service = state.rego.clone();
    tokio::task::spawn_blocking(move || service.put_data(&path, value)).await??;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn patch_data_root(
    state: State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, OpaApiError> {
    patch_data(state, Path(String::new()), body).await
}

/// `PATCH /v1/data/{path}` with a JSON Patch (RFC 6902) document: 204, or 400 saying why.
pub async fn patch_data(
    State(state): State<AppState>,
    Path(path): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, OpaApiError> {
    let patch: json_patch::Patch = serde_json::from_slice(&body?).map_err(|err| {
        OpaApiError::invalid(format!(
            "body is not a JSON Patch (a list of {{\"op\", \"path\", ...}}): {err}"
        ))
    })?;
    let service = state.rego.clone();
    tokio::task::spawn_blocking(move || service.patch_data(&path, &patch)).await??;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_data(
    State(state): State<AppState>,
    Path(path): Path<String>,
) -> Result<StatusCode, OpaApiError> {
    let service = state.rego.clone();
    tokio::task::spawn_blocking(move || service.delete_data(&path)).await??;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn get_data_root(
    state: State<AppState>,
    query: Result<Query<OpaQuery>, QueryRejection>,
) -> Result<Json<DecisionBody>, OpaApiError> {
    get_data(state, Path(String::new()), query).await
}

pub async fn get_data(
    State(state): State<AppState>,
    Path(path): Path<String>,
    query: Result<Query<OpaQuery>, QueryRejection>,
) -> Result<Json<DecisionBody>, OpaApiError> {
    let Query(query) = query?;
    let input = match &query.input {
        Some(text) => Some(serde_json::from_str::<Value>(text).map_err(|err| {
            OpaApiError::invalid(format!("the `input` parameter is not valid JSON: {err}"))
        })?),
        None => None,
    };
    Ok(Json(decide(
        &state,
        &path,
        input.as_ref(),
        Asked::from(&query),
        None,
    )))
}

pub async fn post_data_root(
    state: State<AppState>,
    query: Result<Query<OpaQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DecisionBody>, OpaApiError> {
    post_data(state, Path(String::new()), query, body).await
}

pub async fn post_data(
    State(state): State<AppState>,
    Path(path): Path<String>,
    query: Result<Query<OpaQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DecisionBody>, OpaApiError> {
    let Query(query) = query?;
    let body = body?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match parse_json(&body)? {
            Value::Object(mut request) => request.remove("input"),
            _ => {
                return Err(OpaApiError::invalid(
                    "the request body must be an object like {\"input\": ...}",
                ));
            }
        }
    };
    // OPA answers without input, and says so.
    let warning = input.is_none().then(
        || json!({"code": "api_usage_warning", "message": "'input' key missing from the request"}),
    );
    Ok(Json(decide(
        &state,
        &path,
        input.as_ref(),
        Asked::from(&query),
        warning,
    )))
}
