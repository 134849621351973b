//! What a rollout is, as it is stored (JSON text in a `DocKind::Rollout` document, replicated like
//! every document): the subject it changes, the candidate, the plan and the state it has reached.
//!
//! A rollout changes nothing in the store's copy of its subject until it ends well: a shadow
//! version is evaluated beside the active one, a canary candidate is applied in place of it on
//! the canary nodes only. When a canary completes (or a shadow is promoted) the candidate is
//! written as the subject's next version, an ordinary change; when it fails or is cancelled the
//! canary nodes simply stop applying it, which is the revert.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::opa::data_tree::normalize;

/// What a rollout changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Subject {
    /// An incident rule, by id.
    Policy { id: u64 },
    /// A Rego module, by its OPA policy id.
    RegoModule { id: String },
    /// A data document, by its `/`-separated path under `data`.
    Data { path: String },
    /// An OPA bundle, by name: a unit of rollout (its modules and data change together).
    Bundle { name: String },
}

impl Subject {
    /// Whether a rollout of `self` and one of `other` would change the same thing: the same
    /// subject, or data documents one of which holds the other.
    pub fn overlaps(&self, other: &Subject) -> bool {
        match (self, other) {
            (Subject::Data { path: a }, Subject::Data { path: b }) => {
                let (a, b) = (normalize(a), normalize(b));
                let within = |outer: &str, inner: &str| {
                    outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"))
                };
                within(&a, &b) || within(&b, &a)
            }
            _ => self == other,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Policy { id } => write!(f, "policy {id}"),
            Subject::RegoModule { id } => write!(f, "Rego module {id:?}"),
            Subject::Data { path } => write!(f, "data document {path:?}"),
            Subject::Bundle { name } => write!(f, "bundle {name:?}"),
        }
    }
}

/// The new version a rollout proposes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Candidate {
    /// Every field of the incident rule as it would be written.
    Policy(PolicyCandidate),
    /// The module's Rego source.
    RegoModule(String),
    /// The data document's value.
    Data(Value),
    /// The bundle's new version.
    Bundle(BundleCandidate),
}

/// A bundle as the candidate of a rollout: its archive exactly as pushed (every node verifies it
/// with its own keys), and its revision. Once the rollout ends the archive is dropped from it
/// (the bundle document holds it if it was written): ended rollouts stay small.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleCandidate {
    pub revision: String,
    /// The `.tar.gz`, base64 (standard alphabet); empty once the rollout ended.
    pub archive: String,
}

/// An incident rule's fields, as the candidate of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCandidate {
    pub name: String,
    pub description: String,
    /// The definition, validated when the rollout was started.
    pub definition: Value,
    pub active: bool,
    pub priority: i64,
}

/// How a rollout reaches the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Plan {
    /// Evaluated beside the active version on every node, never acted on, until promoted.
    Shadow,
    /// Applied first on `nodes`, then everywhere after `bake_sec` if their failures did not rise.
    Canary(CanaryPlan),
}

/// A canary plan, with the canary nodes chosen when the rollout started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryPlan {
    /// The share of the members (at the start) that apply the candidate first.
    pub fraction: f64,
    /// How long the canary nodes run the candidate before the rest get it.
    pub bake_sec: u64,
    /// How much higher than the other nodes' the canary nodes' failure rate may be (0.0: any
    /// rise fails the rollout).
    pub max_failure_rate_rise: f64,
    /// The canary nodes must have evaluated at least this much for the rollout to complete.
    pub min_canary_evaluations: u64,
    /// The canary nodes: the members first by rendezvous hash of (rollout id, node id).
    pub nodes: Vec<String>,
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// A shadow version, evaluated beside the active one.
    Shadow,
    /// Canary nodes run the candidate until `until_ms` (Unix milliseconds).
    Baking { until_ms: u64 },
    /// The candidate was written as the subject's version `version`, everywhere.
    Completed {
        at_ms: u64,
        by: String,
        version: u64,
    },
    /// A shadow version made the active one, as the subject's version `version`.
    Promoted {
        at_ms: u64,
        by: String,
        version: u64,
    },
    /// The canary nodes' failures rose (or the candidate could not be applied): nothing was
    /// written, and every node runs the previous version.
    Failed {
        at_ms: u64,
        by: String,
        reason: String,
    },
    /// Withdrawn by an operator: nothing was written.
    Cancelled { at_ms: u64, by: String },
}

impl State {
    /// Whether the rollout still applies a candidate somewhere.
    pub fn is_open(&self) -> bool {
        matches!(self, State::Shadow | State::Baking { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Shadow => "shadow",
            State::Baking { .. } => "baking",
            State::Completed { .. } => "completed",
            State::Promoted { .. } => "promoted",
            State::Failed { .. } => "failed",
            State::Cancelled { .. } => "cancelled",
        }
    }
}

/// One rollout. (Its state's fields sit beside the others: `"state": "failed", "reason": ...`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub subject: Subject,
    pub candidate: Candidate,
    pub plan: Plan,
    #[serde(flatten)]
    pub state: State,
    /// The subject's version when the rollout started (none: it did not exist yet). The nodes
    /// not applying the candidate run it; the rollout fails if the subject changes meanwhile.
    pub base_version: Option<u64>,
    pub created_at_ms: u64,
    pub created_by: String,
}

impl Rollout {
    /// Whether this node applies the candidate in place of the subject now.
    pub fn applies_on(&self, node_id: &str) -> bool {
        match (&self.plan, &self.state) {
            (Plan::Canary(plan), State::Baking { .. }) => plan.nodes.iter().any(|n| n == node_id),
            _ => false,
        }
    }

    /// Whether this is an open shadow version.
    pub fn is_shadow(&self) -> bool {
        matches!(self.state, State::Shadow)
    }

    pub fn encode(&self) -> String {
        // A struct of strings, numbers and JSON values: serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(text: &str) -> Result<Rollout, serde_json::Error> {
        serde_json::from_str(text)
    }
}
