//! OPA's REST API, with OPA's request and response shapes, so that OPA clients work against the
//! agent unchanged: `policies.rs` (`/v1/policies`), `data.rs` (`/v1/data`), `decisions.rs`
//! (`/v1/validate`, the default decision, batches), `query.rs` (`/v1/query`), `compile.rs`
//! (`/v1/compile`, `/v1/compile/{path}`: partial evaluation and data filters), `server.rs`
//! (`/v1/config`, `/v1/status`), `bundles.rs` (`/v1/bundles`), and the agent's own `versions.rs`
//! (history and rollback of modules, data documents and bundles). This file has what they share:
//! OPA's error shape, its query parameters, and the one decision path.

mod bundles;
mod compile;
mod data;
mod decisions;
mod policies;
mod query;
mod server;
mod versions;

pub use bundles::*;
pub use compile::*;
pub use data::*;
pub use decisions::*;
pub use policies::*;
pub use query::*;
pub use server::*;
pub use versions::*;

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
            OpaError::InRollout(message) => {
                OpaApiError::new(StatusCode::CONFLICT, "in_rollout", message)
            }
            OpaError::Changed(message) => {
                OpaApiError::new(StatusCode::CONFLICT, "changed", message)
            }
            OpaError::Data(data_tree::DataError::NotFound(path)) => OpaApiError::new(
                StatusCode::NOT_FOUND,
                "resource_not_found",
                format!("storage_not_found_error: /{path}: document does not exist"),
            ),
            OpaError::Data(other) => OpaApiError::invalid(other.to_string()),
            OpaError::Bundle(err) => match err.kind {
                agent_policy::opa::bundle::BundleErrorKind::TooLarge => {
                    OpaApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", err.message)
                }
                agent_policy::opa::bundle::BundleErrorKind::Unverified => {
                    OpaApiError::new(StatusCode::BAD_REQUEST, "bundle_unverified", err.message)
                }
                agent_policy::opa::bundle::BundleErrorKind::Invalid => {
                    OpaApiError::invalid(err.message)
                }
            },
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
    /// `?provenance=true`: which build and which bundle revisions answered (OPA's shape).
    #[serde(default, deserialize_with = "go_bool")]
    provenance: bool,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    provenance: Option<Value>,
}

/// What a decision says of its answer with `?provenance=true`.
#[derive(Debug, Clone, Copy, Default)]
struct Asked {
    metrics: bool,
    provenance: bool,
}

impl From<&OpaQuery> for Asked {
    fn from(query: &OpaQuery) -> Asked {
        Asked {
            metrics: query.metrics,
            provenance: query.provenance,
        }
    }
}

/// Makes one decision. The result is shared with the cache, not copied.
fn decide(
    state: &AppState,
    path: &str,
    input: Option<&Value>,
    asked: Asked,
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
            bundles: decision.bundles.as_ref().clone(),
            eval_ns: decision.eval_ns,
        });
    }
    DecisionBody {
        result,
        error,
        decision_id,
        provenance: asked.provenance.then(|| {
            let bundles: Map<String, Value> = decision
                .bundles
                .iter()
                .map(|(name, revision)| (name.clone(), json!({"revision": revision})))
                .collect();
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "build_commit": "",
                "build_timestamp": "",
                "build_hostname": "",
                "bundles": bundles,
            })
        }),
        metrics: asked.metrics.then(|| {
            json!({
                "timer_rego_query_eval_ns": decision.eval_ns,
                "timer_server_handler_ns": started.elapsed().as_nanos() as u64,
                "counter_decision_cache_hit": u64::from(decision.cached),
            })
        }),
        warning,
    }
}
