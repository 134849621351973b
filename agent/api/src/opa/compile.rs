//! `/v1/compile` and `/v1/compile/{path}`: OPA's Compile API, through the engine's restricted
//! partial evaluator (`agent_engine::rego::partial`). `POST /v1/compile` answers residual
//! queries in OPA's AST JSON; `POST /v1/compile/{path}` compiles the rule `data.<path>` into the
//! data filter the `Accept` header names (UCAST, SQL, several at once, or the AST), answered with
//! that media type. What the evaluator does not support is answered 501 with the construct and
//! its location; what a target cannot express, 400 as OPA answers it (`pe_fragment_error`).

use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};

use agent_engine::rego::EvalError;
use agent_engine::rego::partial::sql;
use agent_engine::rego::partial::ucast::{self, FragmentError, Target};
use agent_engine::rego::partial::{CompileQuery, PartialError, Residuals};

use super::query::{Capped, MAX_QUERY_ANSWER_BYTES};
use super::*;

/// The body of both routes, as OPA reads it.
#[derive(Deserialize, Default)]
pub struct CompileRequest {
    query: Option<String>,
    input: Option<Value>,
    unknowns: Option<Vec<String>>,
    #[serde(default)]
    options: CompileOptions,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CompileOptions {
    /// Accepted and not needed: every rule is inlined (the result is the same, without
    /// `support` modules).
    #[serde(default)]
    #[allow(dead_code)]
    disable_inlining: Vec<String>,
    #[serde(rename = "targetSQLTableMappings")]
    target_sql_table_mappings: Option<Value>,
    target_dialects: Option<Vec<String>>,
    mask_rule: Option<String>,
}

const MULTI_TARGET: [&str; 2] = [
    "application/vnd.opa.multitarget+json",
    "application/vnd.styra.multitarget+json",
];

/// What a `/v1/compile/{path}` request asked for in its `Accept` header.
enum Wanted {
    Ast,
    One(Target),
    Multi,
}

fn read_request(body: &[u8]) -> Result<CompileRequest, OpaApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CompileRequest::default());
    }
    serde_json::from_slice(body).map_err(|err| {
        OpaApiError::invalid(format!(
            "error(s) occurred while decoding request: {err} (the body is {{\"query\"?, \
             \"input\"?, \"unknowns\"?, \"options\"?}})"
        ))
    })
}

impl From<PartialError> for OpaApiError {
    fn from(err: PartialError) -> OpaApiError {
        match err {
            PartialError::InvalidQuery { .. } | PartialError::InvalidUnknown { .. } => {
                OpaApiError::invalid(err.to_string())
            }
            PartialError::Unsupported {
                ref construct,
                ref location,
            } => OpaApiError {
                status: StatusCode::NOT_IMPLEMENTED,
                body: json!({
                    "code": "not_implemented",
                    "message": err.to_string(),
                    "errors": [{
                        "code": "pe_unsupported",
                        "message": format!("partial evaluation here does not support {construct}"),
                        "location": location,
                    }],
                }),
            },
            PartialError::TooLarge(message) => OpaApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("partial evaluation stopped: {message}"),
            ),
            PartialError::Eval(err @ EvalError::InvalidQuery { .. }) => {
                OpaApiError::invalid(err.to_string())
            }
            PartialError::Eval(err) => OpaApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                err.to_string(),
            ),
        }
    }
}

fn fragment_errors(errors: Vec<FragmentError>) -> OpaApiError {
    OpaApiError {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "code": "evaluation_error",
            "message": "error(s) occurred while evaluating query",
            "errors": errors,
        }),
    }
}

/// `{"result": ...}` written within the answer cap, with `content_type`.
fn answer(result: Value, content_type: &str) -> Result<Response, OpaApiError> {
    let mut out = Capped(Vec::new());
    if serde_json::to_writer(&mut out, &json!({ "result": result })).is_err() {
        return Err(OpaApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the compiled answer is larger than {MAX_QUERY_ANSWER_BYTES} bytes"),
        ));
    }
    Ok(([(CONTENT_TYPE, content_type.to_owned())], out.0).into_response())
}

fn partial(
    state: &AppState,
    query: CompileQuery<'_>,
    request: &CompileRequest,
) -> Result<Residuals, OpaApiError> {
    let set = state.rego.current_set();
    let input = request.input.clone().map(regorus::Value::from);
    Ok(set.partial(query, input, request.unknowns.as_deref())?)
}

/// One target's `{"query": ...}`, or `None` when the query can never be true.
fn filter(
    residuals: &Residuals,
    target: Target,
    mappings: Option<&Value>,
) -> Result<Option<Value>, OpaApiError> {
    let Some(queries) = &residuals.queries else {
        return Ok(None);
    };
    let node = ucast::build(queries, target, mappings).map_err(fragment_errors)?;
    let query = match target {
        Target::Ucast(_) => ucast::to_json(node.as_ref()),
        Target::Sql(dialect) => Value::String(sql::where_clause(node.as_ref(), dialect)),
    };
    Ok(Some(json!({ "query": query })))
}

/// `POST /v1/compile` with `{"query", "input"?, "unknowns"?}`: the residual queries.
pub async fn compile(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpaApiError> {
    let request = read_request(&body?)?;
    let Some(query) = request.query.clone() else {
        return Err(OpaApiError::invalid(
            "error(s) occurred while parsing query: missing `query` (the query to compile)",
        ));
    };
    tokio::task::spawn_blocking(move || {
        let residuals = partial(&state, CompileQuery::Text(&query), &request)?;
        answer(residuals.to_opa_json(), "application/json")
    })
    .await?
}

/// `POST /v1/compile/{path}`: the rule `data.<path>` as the data filter `Accept` names.
pub async fn compile_filters(
    State(state): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpaApiError> {
    let mut request = read_request(&body?)?;
    // As OPA's filter route: no unknowns given (or none) means the default, `input`.
    if request.unknowns.as_ref().is_some_and(Vec::is_empty) {
        request.unknowns = None;
    }
    let accept = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let wanted = if accept.is_empty() {
        return Err(OpaApiError::invalid(
            "Accept header: missing required header",
        ));
    } else if accept.contains(',') {
        return Err(OpaApiError::invalid(
            "Accept header: multiple headers not supported",
        ));
    } else if accept == "application/json" {
        Wanted::Ast
    } else if MULTI_TARGET.contains(&accept.as_str()) {
        Wanted::Multi
    } else if let Some(target) = Target::from_media_type(&accept) {
        Wanted::One(target)
    } else {
        return Err(OpaApiError::invalid(format!(
            "Accept header: unsupported header: {accept}"
        )));
    };
    if request.options.mask_rule.is_some() {
        return Err(OpaApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "column masks (options.maskRule) are not supported by this agent",
        ));
    }
    let targets = match &wanted {
        Wanted::Multi => {
            let names = request.options.target_dialects.clone().unwrap_or_default();
            if names.is_empty() {
                return Err(OpaApiError::invalid(
                    "multi-target request: options.targetDialects names no target",
                ));
            }
            names
                .iter()
                .map(|name| {
                    Target::from_dialect(name).ok_or_else(|| {
                        OpaApiError::invalid(format!(
                            "multi-target request: unknown target/dialect combination: {name}"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => Vec::new(),
    };
    tokio::task::spawn_blocking(move || {
        let residuals = partial(&state, CompileQuery::Rule(&path), &request)?;
        let mappings = request.options.target_sql_table_mappings.as_ref();
        match wanted {
            Wanted::Ast => answer(residuals.to_opa_json(), "application/json"),
            Wanted::One(target) => {
                // Never true has no filter: OPA's documented `{"result": {}}`.
                let result = filter(&residuals, target, mappings)?.unwrap_or_else(|| json!({}));
                answer(result, &accept)
            }
            Wanted::Multi => {
                let mut result = Map::new();
                for target in targets {
                    let key = match target {
                        Target::Ucast(_) => "ucast",
                        Target::Sql(_) => target.keys().1,
                    };
                    if result.contains_key(key) {
                        continue;
                    }
                    if let Some(one) = filter(&residuals, target, mappings)? {
                        result.insert(key.to_owned(), one);
                    }
                }
                answer(Value::Object(result), &accept)
            }
        }
    })
    .await?
}
