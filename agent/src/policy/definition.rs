//! The definition of an incident rule, as users write it, and its validation.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::engine::condition::Condition;

use super::PolicyError;

/// What a rule does: P0.4's definition format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// When the rule matches, in the condition language (`engine::condition`).
    pub condition: String,
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
    pub action: Option<String>,
    pub modifiers: Option<Map<String, Value>>,
    pub reversibility_sec: Option<u64>,
}

impl Definition {
    /// Checks every field and compiles the condition. Errors name the field, and for a condition
    /// the column.
    pub fn validate(&self) -> Result<Condition, PolicyError> {
        if self.action.trim().is_empty() {
            return Err(PolicyError::invalid(
                "definition.action",
                "must not be empty",
            ));
        }
        Condition::compile(&self.condition).map_err(|err| PolicyError::Invalid {
            field: "definition.condition".into(),
            message: err.message,
            column: Some(err.column),
        })
    }

    pub fn apply(&mut self, patch: DefinitionPatch) {
        if let Some(condition) = patch.condition {
            self.condition = condition;
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
