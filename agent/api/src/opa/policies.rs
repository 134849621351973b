//! `/v1/policies`: Rego modules in, raw text and an outline (`ast`) out.

use super::*;

/// A module as OPA lists it: `id`, `raw`, and `ast` with what clients read of it (the package's
/// path as terms, each rule's head name).
fn policy_view(set: &agent_engine::RegoSet, id: String, raw: String) -> Value {
    let ast = match set.outline(&id) {
        Some(outline) => {
            let path: Vec<Value> = outline
                .package
                .iter()
                .enumerate()
                .map(|(i, segment)| {
                    json!({"type": if i == 0 { "var" } else { "string" }, "value": segment})
                })
                .collect();
            let rules: Vec<Value> = outline
                .rules
                .iter()
                .map(|name| json!({"head": {"name": name}}))
                .collect();
            json!({"package": {"path": path}, "rules": rules})
        }
        // Outlines are made when the set is built: a module stored since (merging) has none yet.
        None => json!({}),
    };
    json!({"id": id, "raw": raw, "ast": ast})
}

pub async fn list_policies(State(state): State<AppState>) -> Result<Json<Value>, OpaApiError> {
    let modules = state.rego.list_modules()?;
    let set = state.rego.current_set();
    let result: Vec<Value> = modules
        .into_iter()
        .map(|m| policy_view(&set, m.name, m.body))
        .collect();
    Ok(Json(json!({ "result": result })))
}

pub async fn get_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpaApiError> {
    let module = state.rego.get_module(&id)?;
    let set = state.rego.current_set();
    Ok(Json(
        json!({"result": policy_view(&set, module.name, module.body)}),
    ))
}

pub async fn put_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<OpaQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, OpaApiError> {
    let started = Instant::now();
    let Query(query) = query?;
    let text = String::from_utf8(body?.to_vec())
        .map_err(|_| OpaApiError::invalid("the policy is not UTF-8 text"))?;
    let service = state.rego.clone();
    tokio::task::spawn_blocking(move || service.put_module(&id, text)).await??;
    let mut out = Map::new();
    if query.metrics {
        out.insert(
            "metrics".into(),
            json!({"timer_server_handler_ns": started.elapsed().as_nanos() as u64}),
        );
    }
    Ok(Json(Value::Object(out)))
}

pub async fn delete_policy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, OpaApiError> {
    let service = state.rego.clone();
    tokio::task::spawn_blocking(move || service.delete_module(&id)).await??;
    Ok(Json(json!({})))
}
