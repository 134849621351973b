//! What decides whether an incident rule matches: a compiled condition, or a Rego rule.

use agent_condition::{Condition, Explanation, Facts, Incident, Outcome};

use crate::rego::{EvalError, RegoSet};

/// A rule's test of an incident.
#[derive(Debug)]
pub enum Matcher {
    /// A condition in the agent's expression language.
    Condition(Condition),
    /// A Rego rule (`data.pkg.rule`) evaluated with the incident as `input`; it matches when its
    /// value is `true`.
    Rego { path: String },
}

impl Matcher {
    /// Evaluates the matcher. `rego` gives the Rego set and the incident as Rego input, built on
    /// first use (only events that reach a Rego rule pay for the conversion).
    #[inline]
    pub fn eval(
        &self,
        incident: &Incident,
        facts: &dyn Facts,
        rego: &mut impl FnMut() -> (std::sync::Arc<RegoSet>, regorus::Value),
    ) -> Result<Outcome, EvalError> {
        match self {
            Matcher::Condition(condition) => Ok(condition.eval_with(incident, facts)),
            Matcher::Rego { path } => {
                let (set, input) = rego();
                let value = set.evaluate(path, Some(input))?;
                Ok(Outcome::from_match(
                    value == Some(regorus::Value::from(true)),
                ))
            }
        }
    }

    /// Why the matcher matched or not: a condition's tests; for a Rego rule, `None` (its value
    /// is the whole answer).
    pub fn explain(&self, incident: &Incident, facts: &dyn Facts) -> Option<Explanation> {
        match self {
            Matcher::Condition(condition) => Some(condition.explain(incident, facts)),
            Matcher::Rego { .. } => None,
        }
    }

    /// Fields a condition read that the incident lacked (a Rego rule reports none).
    pub fn missing_fields(&self, outcome: Outcome) -> impl Iterator<Item = &str> + '_ {
        match self {
            Matcher::Condition(condition) => Some(condition.missing_fields(outcome)),
            Matcher::Rego { .. } => None,
        }
        .into_iter()
        .flatten()
    }
}

/// The incident as Rego sees it: `input.id`, `input.type`, `input.severity`, `input.timestamp`,
/// `input.context`, the same fields conditions read as `incident.*`, and the mesh facts under
/// `input.mesh` when there are any.
pub fn rego_input(incident: &Incident, facts: &dyn Facts) -> regorus::Value {
    let mut input = serde_json::json!({
        "id": incident.id,
        "type": incident.kind,
        "severity": incident.severity,
        "timestamp": incident.timestamp,
        "context": incident.context,
    });
    if let (Some(mesh), Some(map)) = (facts.rego_mesh(), input.as_object_mut()) {
        map.insert("mesh".into(), mesh);
    }
    regorus::Value::from(input)
}
