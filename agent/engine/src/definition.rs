//! The definition of an incident rule, as users write it, and its validation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use agent_condition::Condition;

use crate::matcher::Matcher;

/// Why a definition is refused: the field, what is wrong, and for a condition the column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid `{field}`: {message}{}", column.map(|c| format!(" (column {c})")).unwrap_or_default())]
pub struct DefinitionError {
    /// `definition.condition`, `definition.action`, ...
    pub field: String,
    pub message: String,
    /// For a condition: the 1-based column of the problem.
    pub column: Option<usize>,
}

impl DefinitionError {
    pub fn new(field: &str, message: impl Into<String>) -> DefinitionError {
        DefinitionError {
            field: field.to_owned(),
            message: message.into(),
            column: None,
        }
    }
}

/// What a rule does: P0.4's definition format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// When the rule matches, in the condition language (`agent_condition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Or: a Rego rule (`data.mesh.incidents.memory_leak.match`) that matches when `true`, with the
    /// incident as `input`. Exactly one of `condition` and `rego` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rego: Option<String>,
    /// What P0.3 should do, e.g. `trigger_p0_3_recovery`.
    pub action: String,
    /// Parameters passed to P0.3 with the action.
    #[serde(default)]
    pub modifiers: Map<String, Value>,
    /// How long the action stays reversible.
    #[serde(default)]
    pub reversibility_sec: u64,
}

/// A partial definition: the keys given replace the stored ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionPatch {
    pub condition: Option<String>,
    pub rego: Option<String>,
    pub action: Option<String>,
    pub modifiers: Option<Map<String, Value>>,
    pub reversibility_sec: Option<u64>,
}

impl Definition {
    /// Checks every field and compiles the matcher. Errors name the field, and for a condition
    /// the column.
    pub fn validate(&self) -> Result<Matcher, DefinitionError> {
        if self.action.trim().is_empty() {
            return Err(DefinitionError::new(
                "definition.action",
                "must not be empty",
            ));
        }
        match (&self.condition, &self.rego) {
            (Some(condition), None) => Condition::compile(condition)
                .map(Matcher::Condition)
                .map_err(|err| DefinitionError {
                    field: "definition.condition".into(),
                    message: err.message,
                    column: Some(err.column),
                }),
            (None, Some(path)) => {
                if !is_rule_path(path) {
                    return Err(DefinitionError::new(
                        "definition.rego",
                        format!(
                            "`{path}` is not a rule path like `data.mesh.incidents.memory_leak.match`"
                        ),
                    ));
                }
                Ok(Matcher::Rego { path: path.clone() })
            }
            (Some(_), Some(_)) => Err(DefinitionError::new(
                "definition",
                "give either `condition` or `rego`, not both",
            )),
            (None, None) => Err(DefinitionError::new(
                "definition.condition",
                "missing: give a `condition` (or a `rego` rule path)",
            )),
        }
    }

    pub fn apply(&mut self, patch: DefinitionPatch) {
        // Giving one kind of matcher replaces the other.
        if let Some(condition) = patch.condition {
            self.condition = Some(condition);
            self.rego = None;
        }
        if let Some(rego) = patch.rego {
            self.rego = Some(rego);
            self.condition = None;
        }
        if let Some(action) = patch.action {
            self.action = action;
        }
        if let Some(modifiers) = patch.modifiers {
            self.modifiers = modifiers;
        }
        if let Some(reversibility_sec) = patch.reversibility_sec {
            self.reversibility_sec = reversibility_sec;
        }
    }

    /// The compact JSON text the store keeps.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and a JSON map always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Definition, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// `data.a.b_c.d`: `data` and at least one more identifier.
fn is_rule_path(path: &str) -> bool {
    let mut parts = path.split('.');
    parts.next() == Some("data")
        && path.contains('.')
        && parts.all(|p| {
            p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}
