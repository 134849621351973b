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
    /// Who acts on a match: every matching node (`node`, the default), or one node for the whole
    /// mesh (`mesh`).
    #[serde(default, skip_serializing_if = "Scope::is_node")]
    pub scope: Scope,
    /// For a mesh-scoped rule: act only while this node sees a majority of the mesh alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<Quorum>,
    /// After the action fires for an incident key, further firings for that key within this many
    /// seconds are suppressed (audited as such). Default: `reversibility_sec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_sec: Option<u64>,
    /// At most `max` firings of this action per incident key in any `per_sec` seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Who acts when a rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every node that matches acts.
    #[default]
    Node,
    /// One alive node acts for the whole mesh, chosen by rendezvous hashing.
    Mesh,
}

impl Scope {
    fn is_node(&self) -> bool {
        *self == Scope::Node
    }
}

/// When a mesh-scoped rule may act during a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quorum {
    /// Only while more than half of the last known membership is seen alive.
    Majority,
}

/// The highest `rate_limit.max`: firings are remembered per key up to this many.
pub const MAX_RATE_LIMIT: u32 = 64;

/// A limit on how often an action fires for one incident key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub max: u32,
    pub per_sec: u64,
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
    pub scope: Option<Scope>,
    /// `null` clears these three; absent leaves them.
    #[serde(default, deserialize_with = "clearable")]
    pub quorum: Option<Option<Quorum>>,
    #[serde(default, deserialize_with = "clearable")]
    pub cooldown_sec: Option<Option<u64>>,
    #[serde(default, deserialize_with = "clearable")]
    pub rate_limit: Option<Option<RateLimit>>,
}

/// A patch key given as `null` (`Some(None)`: clear it) apart from one left out (`None`).
fn clearable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
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
        if self.quorum.is_some() && self.scope != Scope::Mesh {
            return Err(DefinitionError::new(
                "definition.quorum",
                "only a rule with \"scope\": \"mesh\" has a quorum",
            ));
        }
        if let Some(limit) = self.rate_limit
            && !(1..=MAX_RATE_LIMIT).contains(&limit.max)
        {
            return Err(DefinitionError::new(
                "definition.rate_limit.max",
                format!("must be between 1 and {MAX_RATE_LIMIT}"),
            ));
        }
        if let Some(limit) = self.rate_limit
            && limit.per_sec == 0
        {
            return Err(DefinitionError::new(
                "definition.rate_limit.per_sec",
                "must be at least 1",
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
        if let Some(scope) = patch.scope {
            self.scope = scope;
        }
        if let Some(quorum) = patch.quorum {
            self.quorum = quorum;
        }
        if let Some(cooldown_sec) = patch.cooldown_sec {
            self.cooldown_sec = cooldown_sec;
        }
        if let Some(rate_limit) = patch.rate_limit {
            self.rate_limit = rate_limit;
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
