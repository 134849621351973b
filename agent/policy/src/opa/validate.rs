//! `POST /v1/validate`: several validation policies on one input, aggregated into the
//! orchestrator's `ValidationResult` (`valid`, `violations`, `warnings`, `policy_decisions`).
//!
//! Each listed policy's `result` rule is read. A result with `allow` contributes its violations and
//! warnings; any other result (the feature flags) is only a decision. The policies are evaluated one
//! after the other on the calling thread: each takes microseconds in-process, less than handing work
//! to another thread would cost.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use agent_engine::rego::data_path;

use super::evaluator::{Evaluator, fail_decision};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationRequest {
    #[serde(default)]
    pub input: Value,
    /// Policy paths, `/`-separated (`neuralhive/orchestrator/resource_limits`).
    pub policies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub policy_name: String,
    pub rule_name: String,
    pub severity: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct ValidationResult {
    pub valid: bool,
    pub violations: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// Each policy's `result`, by policy name (the last path segment).
    pub policy_decisions: Map<String, Value>,
}

/// Why a validation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("policy `{0}` has no `result` rule (is the module loaded?)")]
    NotFound(String),
    #[error("`policies` is empty: name at least one policy path")]
    NoPolicies,
}

pub fn validate(
    evaluator: &Evaluator,
    request: &ValidationRequest,
) -> Result<ValidationResult, ValidateError> {
    if request.policies.is_empty() {
        return Err(ValidateError::NoPolicies);
    }
    let mut out = ValidationResult {
        valid: true,
        violations: Vec::new(),
        warnings: Vec::new(),
        policy_decisions: Map::new(),
    };
    for policy in &request.policies {
        let name = policy
            .trim_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(policy)
            .to_owned();
        let path = format!("{}.result", data_path(policy));
        let decision = evaluator.decide(&path, Some(&request.input));
        let result = match decision.result {
            Ok(Some(value)) => (*value).clone(),
            Ok(None) => return Err(ValidateError::NotFound(policy.clone())),
            Err(err) => fail_decision(evaluator.fail_mode(), &err),
        };
        if let Some(allow) = result.get("allow").and_then(Value::as_bool) {
            out.valid &= allow;
            out.violations
                .extend(findings(&name, result.get("violations")));
            out.warnings.extend(findings(&name, result.get("warnings")));
        }
        out.policy_decisions.insert(name, result);
    }
    Ok(out)
}

fn findings(policy_name: &str, list: Option<&Value>) -> Vec<Finding> {
    let text = |item: &Value, key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    list.and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|item| Finding {
                    policy_name: policy_name.to_owned(),
                    rule_name: text(item, "rule"),
                    severity: text(item, "severity"),
                    message: text(item, "message"),
                })
                .collect()
        })
        .unwrap_or_default()
}
