//! Decisions beyond `/v1/data`: `/v1/validate` (several policies at once), OPA's default decision
//! (`POST /`) and batches (`/v1/batch/data`).

use super::*;

pub async fn validate(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<validate::ValidationResult>, OpaApiError> {
    let request: ValidationRequest = serde_json::from_slice(&body?)
        .map_err(|err| OpaApiError::invalid(format!("invalid validation request: {err}")))?;
    match validate::validate(&state.evaluator, &request) {
        Ok(result) => Ok(Json(result)),
        Err(err @ ValidateError::NotFound(_)) => Err(OpaApiError::new(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            err.to_string(),
        )),
        Err(err @ ValidateError::NoPolicies) => Err(OpaApiError::invalid(err.to_string())),
    }
}

/// `POST /` with the input as the whole body: the value of `data.system.main` (OPA's default
/// decision), as the whole answer; 404 `undefined_document` when it is not defined.
pub async fn default_decision(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpaApiError> {
    let body = body?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(parse_json(&body)?)
    };
    let decided = decide(
        &state,
        "system/main",
        input.as_ref(),
        Asked::default(),
        None,
    );
    if let Some(error) = decided.error {
        return Err(OpaApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: error,
        });
    }
    match decided.result {
        Some(value) => Ok(Json((*value).clone()).into_response()),
        None => Err(OpaApiError::new(
            StatusCode::NOT_FOUND,
            "undefined_document",
            "document missing: data.system.main (the default decision)",
        )),
    }
}

/// Inputs of one batch at most.
const MAX_BATCH_INPUTS: usize = 1_000;
/// The longest one batch may evaluate for: inputs left when it is spent are answered 500
/// (`batch_time_exceeded`), since the blocking work outlives a request that timed out.
const MAX_BATCH_TIME: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Deserialize)]
pub struct BatchRequest {
    inputs: Map<String, Value>,
}

/// `POST /v1/batch/data/{path}` with `{"inputs": {"id": input, ...}}`: one decision per input,
/// `{"responses": {"id": {"result", "decision_id"}}}`; 207 with each entry's
/// `http_status_code` when some failed.
pub async fn batch_decisions(
    State(state): State<AppState>,
    Path(path): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpaApiError> {
    let request: BatchRequest = serde_json::from_slice(&body?).map_err(|err| {
        OpaApiError::invalid(format!(
            "the body must be {{\"inputs\": {{\"id\": input, ...}}}}: {err}"
        ))
    })?;
    if request.inputs.len() > MAX_BATCH_INPUTS {
        return Err(OpaApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_parameter",
            format!(
                "{} inputs; a batch takes at most {MAX_BATCH_INPUTS}",
                request.inputs.len()
            ),
        ));
    }
    let answers = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        request
            .inputs
            .into_iter()
            .map(|(id, input)| {
                if started.elapsed() > MAX_BATCH_TIME {
                    let message = format!(
                        "not evaluated: the batch used its {} s",
                        MAX_BATCH_TIME.as_secs()
                    );
                    let skipped = DecisionBody {
                        result: None,
                        error: Some(json!({"code": "batch_time_exceeded", "message": message})),
                        decision_id: uuid::Uuid::new_v4().to_string(),
                        metrics: None,
                        warning: None,
                        provenance: None,
                    };
                    return (id, skipped);
                }
                let decided = decide(&state, &path, Some(&input), Asked::default(), None);
                (id, decided)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    let mixed = answers.iter().any(|(_, d)| d.error.is_some());
    let mut responses = Map::new();
    for (id, decided) in answers {
        let entry = match decided.error {
            Some(mut error) if mixed => {
                error["http_status_code"] = json!("500");
                error
            }
            _ => {
                let mut entry = json!({"decision_id": decided.decision_id});
                if let Some(result) = decided.result {
                    entry["result"] = (*result).clone();
                }
                if mixed {
                    entry["http_status_code"] = json!("200");
                }
                entry
            }
        };
        responses.insert(id, entry);
    }
    let status = if mixed {
        StatusCode::MULTI_STATUS
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "responses": responses }))).into_response())
}
