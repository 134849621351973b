//! `/v1/query`: OPA's ad-hoc queries, answered within a byte cap.

use super::*;

#[derive(Deserialize)]
pub struct QueryRequest {
    query: String,
    input: Option<Value>,
}

#[derive(Deserialize)]
pub struct QueryParams {
    q: Option<String>,
}

/// Bytes an ad-hoc query's answer may take: shared values (`[a | a[_]]` nested) cost little to
/// evaluate and can expand enormously when written out, so the writing stops here.
pub(super) const MAX_QUERY_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// A writer that refuses to grow past its cap.
pub(super) struct Capped(pub(super) Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + bytes.len() > MAX_QUERY_ANSWER_BYTES {
            return Err(std::io::Error::other("answer too large"));
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn ad_hoc(state: &AppState, query: &str, input: Option<Value>) -> Result<Response, OpaApiError> {
    let set = state.rego.current_set();
    let input = input.map(regorus::Value::from);
    match set.ad_hoc(query, input) {
        Ok(rows) => {
            // As OPA: no solution is an answer without `result`.
            let mut out = Capped(Vec::new());
            let written = if rows.is_empty() {
                serde_json::to_writer(&mut out, &json!({}))
            } else {
                serde_json::to_writer(&mut out, &json!({ "result": rows }))
            };
            if written.is_err() {
                return Err(OpaApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_parameter",
                    format!(
                        "the query's answer is larger than {MAX_QUERY_ANSWER_BYTES} bytes; bind less"
                    ),
                ));
            }
            Ok((
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                out.0,
            )
                .into_response())
        }
        Err(err @ agent_engine::rego::EvalError::InvalidQuery { .. }) => {
            Err(OpaApiError::invalid(err.to_string()))
        }
        Err(err) => Err(OpaApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            err.to_string(),
        )),
    }
}

/// `POST /v1/query` with `{"query": "...", "input": ...}`: one row of bindings per solution.
pub async fn post_query(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpaApiError> {
    let request: QueryRequest = serde_json::from_slice(&body?).map_err(|err| {
        OpaApiError::invalid(format!(
            "the body must be {{\"query\": \"...\", \"input\"?: ...}}: {err}"
        ))
    })?;
    tokio::task::spawn_blocking(move || ad_hoc(&state, &request.query, request.input)).await?
}

/// `GET /v1/query?q=...`.
pub async fn get_query(
    State(state): State<AppState>,
    query: Result<Query<QueryParams>, QueryRejection>,
) -> Result<Response, OpaApiError> {
    let Query(params) = query?;
    let Some(q) = params.q else {
        return Err(OpaApiError::invalid("missing parameter `q` (the query)"));
    };
    tokio::task::spawn_blocking(move || ad_hoc(&state, &q, None)).await?
}
