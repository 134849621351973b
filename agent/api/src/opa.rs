//! OPA's REST API (`/v1/policies`, `/v1/data`) and `/v1/validate`, with OPA's request and response
//! shapes, so that OPA clients work against the agent unchanged.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use agent_engine::rego::data_path;
use agent_policy::opa::validate::{self, ValidateError, ValidationRequest};
use agent_policy::opa::{OpaError, data_tree, fail_decision};

use super::AppState;

/// An error in OPA's shape: `{"code", "message", "errors"?}`.
pub struct OpaApiError {
    status: StatusCode,
    body: Value,
}

impl OpaApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> OpaApiError {
        OpaApiError {
            status,
            body: json!({"code": code, "message": message.into()}),
        }
    }

    fn invalid(message: impl Into<String>) -> OpaApiError {
        OpaApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }
}

impl IntoResponse for OpaApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<OpaError> for OpaApiError {
    fn from(err: OpaError) -> OpaApiError {
        match err {
            OpaError::Compile(compile) => OpaApiError {
                status: StatusCode::BAD_REQUEST,
                body: json!({
                    "code": "invalid_parameter",
                    "message": "error(s) occurred while compiling module(s)",
                    "errors": [compile],
                }),
            },
            OpaError::NotFound(what) => OpaApiError::new(
                StatusCode::NOT_FOUND,
                "resource_not_found",
                format!("storage_not_found_error: {what}"),
            ),
            OpaError::BadRequest(message) => OpaApiError::invalid(message),
            OpaError::TooLarge(message) => {
                OpaApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            }
            OpaError::Data(data_tree::DataError::NotFound(path)) => OpaApiError::new(
                StatusCode::NOT_FOUND,
                "resource_not_found",
                format!("storage_not_found_error: /{path}: document does not exist"),
            ),
            OpaError::Data(other) => OpaApiError::invalid(other.to_string()),
            OpaError::Store(err) => {
                tracing::error!(error = %err, "OPA API request failed");
                OpaApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    err.to_string(),
                )
            }
        }
    }
}

impl From<BytesRejection> for OpaApiError {
    fn from(rejection: BytesRejection) -> OpaApiError {
        OpaApiError::new(
            rejection.status(),
            "invalid_parameter",
            rejection.body_text(),
        )
    }
}

impl From<QueryRejection> for OpaApiError {
    fn from(rejection: QueryRejection) -> OpaApiError {
        OpaApiError::invalid(rejection.body_text())
    }
}

impl From<tokio::task::JoinError> for OpaApiError {
    fn from(err: tokio::task::JoinError) -> OpaApiError {
        OpaApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            err.to_string(),
        )
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct OpaQuery {
    #[serde(default, deserialize_with = "go_bool")]
    metrics: bool,
    /// `GET /v1/data?input=<JSON>`: the input, URL-encoded JSON (OPA takes it on GET too).
    input: Option<String>,
}

/// A boolean query parameter as OPA's server reads it: `true` in any case (clients send
/// Python's `True`), or given with no value, is true; anything else is false.
fn go_bool<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok(text.is_empty() || text.eq_ignore_ascii_case("true"))
}

fn parse_json(body: &[u8]) -> Result<Value, OpaApiError> {
    serde_json::from_slice(body)
        .map_err(|err| OpaApiError::invalid(format!("body is not valid JSON: {err}")))
}

// ---- /v1/policies ----

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

// ---- /v1/data ----

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
        query.metrics,
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
        query.metrics,
        warning,
    )))
}

/// A decision in OPA's shape: `result` (absent when undefined), `decision_id`, and `metrics` when
/// asked. A failed evaluation is answered by the fail mode, with the `error` beside it.
#[derive(Serialize)]
pub struct DecisionBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Arc<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
    decision_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<Value>,
}

/// Makes one decision. The result is shared with the cache, not copied.
fn decide(
    state: &AppState,
    path: &str,
    input: Option<&Value>,
    metrics: bool,
    warning: Option<Value>,
) -> DecisionBody {
    let started = Instant::now();
    let decision = state.evaluator.decide(&data_path(path), input);
    let (result, error) = match decision.result {
        Ok(value) => (value, None),
        Err(err) => (
            Some(Arc::new(fail_decision(state.evaluator.fail_mode(), &err))),
            Some(json!({"code": err.kind(), "message": err.to_string()})),
        ),
    };
    let decision_id = uuid::Uuid::new_v4().to_string();
    if let Some(log) = &state.decision_log {
        log.log(agent_decision::decision_log::Entry {
            decision_id: decision_id.clone(),
            path: path.trim_matches('/').to_string(),
            input: input.cloned().unwrap_or(Value::Null),
            result: result.as_deref().cloned().unwrap_or(Value::Null),
            revision: decision.revision,
            eval_ns: decision.eval_ns,
        });
    }
    DecisionBody {
        result,
        error,
        decision_id,
        metrics: metrics.then(|| {
            json!({
                "timer_rego_query_eval_ns": decision.eval_ns,
                "timer_server_handler_ns": started.elapsed().as_nanos() as u64,
                "counter_decision_cache_hit": u64::from(decision.cached),
            })
        }),
        warning,
    }
}

// ---- /v1/validate ----

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

// ---- mesh-agent's own: versions and rollback of Rego modules and data documents ----

/// Which document: `?module=ID` or `?data=PATH` (in a query or a rollback body).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentRef {
    module: Option<String>,
    data: Option<String>,
    /// Rollback only: the version to write back.
    version: Option<u64>,
}

impl DocumentRef {
    fn target(&self) -> Result<(mesh_proto::DocKind, &str), OpaApiError> {
        match (&self.module, &self.data) {
            (Some(module), None) => Ok((mesh_proto::DocKind::RegoModule, module)),
            (None, Some(data)) => Ok((mesh_proto::DocKind::Data, data)),
            _ => Err(OpaApiError::invalid(
                "name one document: `module` (a policy id) or `data` (a data path)",
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
    tokio::task::spawn_blocking(move || rego.rollback(kind, &written, version))
        .await
        .map_err(|err| {
            OpaApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                err.to_string(),
            )
        })??;
    Ok(Json(
        json!({ "result": { "rolled_back": name, "to_version": version } }),
    ))
}

// ---- /v1/query, /v1/config, /v1/status ----

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
const MAX_QUERY_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// A writer that refuses to grow past its cap.
struct Capped(Vec<u8>);

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
    tokio::task::spawn_blocking(move || ad_hoc(&state, &request.query, request.input))
        .await
        .map_err(|err| {
            OpaApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                err.to_string(),
            )
        })?
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
    tokio::task::spawn_blocking(move || ad_hoc(&state, &q, None))
        .await
        .map_err(|err| {
            OpaApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                err.to_string(),
            )
        })?
}

/// `GET /v1/config`: the part of OPA's active configuration that applies here.
pub async fn config(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"result": {
        "labels": {"id": &*state.node_id, "version": env!("CARGO_PKG_VERSION")},
        "default_decision": "/system/main",
        "default_authorization_decision": "/system/authz/allow",
        "decision_logs": {"console": state.decision_log.is_some()},
    }}))
}

/// `GET /v1/status`: OPA's status document (the agent has no bundle plugin yet).
pub async fn status(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"result": {
        "labels": {"id": &*state.node_id, "version": env!("CARGO_PKG_VERSION")},
        "bundles": {},
        "plugins": {
            "decision_logs": {"state": if state.decision_log.is_some() { "OK" } else { "NOT_READY" }},
            "status": {"state": "OK"},
        },
        "metrics": {"prometheus": {}},
    }}))
}

/// `POST /v1/compile`: OPA's partial evaluation, which regorus does not have. Said plainly, so a
/// client can fall back to `/v1/query` or `/v1/data`.
pub async fn compile() -> OpaApiError {
    OpaApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        "partial evaluation (POST /v1/compile) is not supported by this agent; evaluate with POST /v1/data/{path} or POST /v1/query",
    )
}

// ---- OPA's default decision and batch decisions (the TypeScript SDK calls both) ----

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
    let decided = decide(&state, "system/main", input.as_ref(), false, None);
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
                    };
                    return (id, skipped);
                }
                let decided = decide(&state, &path, Some(&input), false, None);
                (id, decided)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|err| {
        OpaApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            err.to_string(),
        )
    })?;
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
