//! Every error the API returns, as `{"error": {"code", "message", ...details}}` with its status.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tracing::error;

use agent_policy::PolicyError;
use agent_store::StoreError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds a detail (`field`, `column`, `line`, ...) next to `code` and `message`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Places the error inside an element of a larger body, e.g. `[3]` of a batch.
    pub fn within(mut self, prefix: &str) -> ApiError {
        if prefix.is_empty() {
            return self;
        }
        if let Some(Value::String(field)) = self.details.get_mut("field") {
            *field = if field == "body" {
                prefix.to_owned()
            } else {
                format!("{prefix}.{field}")
            };
        }
        self.message = format!("{prefix}: {}", self.message);
        self
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422: the request is well-formed JSON but a value is wrong; `field` says which.
    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
            .with("field", field)
    }

    pub fn internal(err: &dyn std::error::Error) -> ApiError {
        error!(error = %err, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            err.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("code".into(), Value::from(self.code));
        body.insert("message".into(), Value::from(self.message));
        body.extend(self.details);
        (self.status, Json(json!({ "error": body }))).into_response()
    }
}

impl From<PolicyError> for ApiError {
    fn from(err: PolicyError) -> ApiError {
        match err {
            PolicyError::Invalid {
                field,
                message,
                column,
            } => {
                let text = match column {
                    Some(c) => format!("invalid `{field}` at column {c}: {message}"),
                    None => format!("invalid `{field}`: {message}"),
                };
                let mut out =
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy", text)
                        .with("field", field);
                if let Some(column) = column {
                    out = out.with("column", column);
                }
                out
            }
            PolicyError::NotFound { id } => {
                ApiError::not_found(format!("policy {id} not found")).with("id", id)
            }
            PolicyError::DuplicateName { name, existing_id } => ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_name",
                format!("a policy named `{name}` already exists (id {existing_id})"),
            )
            .with("name", name)
            .with("existing_id", existing_id),
            PolicyError::InRollout { subject, rollout } => ApiError::new(
                StatusCode::CONFLICT,
                "in_rollout",
                format!(
                    "{subject} has rollout {rollout} open; promote or cancel it first (GET /rollouts/{rollout})"
                ),
            )
            .with("rollout", rollout),
            PolicyError::Changed { id, base, now } => ApiError::new(
                StatusCode::CONFLICT,
                "changed",
                format!(
                    "policy {id} changed during its rollout: the candidate was made from version {base}, the policy is at version {now}"
                ),
            )
            .with("id", id),
            PolicyError::Store(err) => ApiError::internal(&*err),
        }
    }
}

impl From<agent_policy::rollout::RolloutError> for ApiError {
    fn from(err: agent_policy::rollout::RolloutError) -> ApiError {
        use agent_policy::rollout::RolloutError;
        match err {
            RolloutError::NotFound(id) => {
                ApiError::not_found(format!("rollout {id} not found")).with("id", id)
            }
            RolloutError::Invalid { field, message } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_rollout",
                format!("invalid `{field}`: {message}"),
            )
            .with("field", field),
            RolloutError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "rollout_conflict", message)
            }
            RolloutError::Policy(err) => ApiError::from(err),
            RolloutError::Opa(err) => {
                let status = match &err {
                    agent_policy::opa::OpaError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    agent_policy::opa::OpaError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    agent_policy::opa::OpaError::InRollout(_)
                    | agent_policy::opa::OpaError::Changed(_) => StatusCode::CONFLICT,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                ApiError::new(status, "invalid_candidate", err.to_string())
            }
            RolloutError::Store(err) => ApiError::internal(&err),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        ApiError::internal(&err)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> ApiError {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_body"
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::invalid("path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::invalid("query", rejection.body_text())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(err: tokio::task::JoinError) -> ApiError {
        ApiError::internal(&err)
    }
}
