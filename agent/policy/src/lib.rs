//! The policy services every writer goes through (HTTP API, policy files, the mesh's reloads):
//! incident rules in the shapes of the P0.4 API ([`PolicyService`]), Rego modules and data in
//! OPA's ([`opa`]), and policy directories ([`files`]).
//!
//! Architecture invariant: a change that does not validate or compile changes nothing, neither
//! the store nor the engine. No HTTP or MQTT type appears here.

pub mod files;
pub mod opa;
pub mod rollout;
mod service;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use mesh_proto::{ChangeOp, PolicyChange, PolicyRecord};

use agent_base::clock::rfc3339;
use agent_engine::DefinitionError;
use agent_store::StoreError;

pub use agent_engine::{Definition, DefinitionPatch};
pub use service::{ImportOutcome, PolicyService};

/// Longest policy name accepted.
const MAX_NAME_CHARS: usize = 256;

/// Why a policy operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid `{field}`: {message}{}", column.map(|c| format!(" (column {c})")).unwrap_or_default())]
    Invalid {
        field: String,
        message: String,
        /// For a condition: the 1-based column of the problem.
        column: Option<usize>,
    },
    #[error("policy {id} not found")]
    NotFound { id: u64 },
    #[error("a policy named `{name}` already exists (id {existing_id})")]
    DuplicateName { name: String, existing_id: u64 },
    /// The policy has an open rollout (a shadow version or a canary): it changes through the
    /// rollout (promote, or wait for it) or after it is cancelled.
    #[error(
        "{subject} has rollout {rollout} open; promote or cancel it first (GET /rollouts/{rollout})"
    )]
    InRollout { subject: String, rollout: String },
    /// A rollout's candidate was made from version `base`, and the policy has moved on since.
    #[error(
        "policy {id} changed during its rollout: the candidate was made from version {base}, the policy is at version {now}"
    )]
    Changed { id: u64, base: u64, now: u64 },
    #[error(transparent)]
    Store(Box<StoreError>),
}

impl PolicyError {
    pub fn invalid(field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            field: field.to_owned(),
            message: message.into(),
            column: None,
        }
    }
}

impl From<DefinitionError> for PolicyError {
    fn from(err: DefinitionError) -> PolicyError {
        PolicyError::Invalid {
            field: err.field,
            message: err.message,
            column: err.column,
        }
    }
}

impl From<StoreError> for PolicyError {
    fn from(err: StoreError) -> PolicyError {
        match err {
            StoreError::NotFound { id } => PolicyError::NotFound { id },
            StoreError::DuplicateName { name, existing_id } => {
                PolicyError::DuplicateName { name, existing_id }
            }
            other => PolicyError::Store(Box::new(other)),
        }
    }
}

/// `POST /policies`, and one policy of a policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPolicy {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub definition: Definition,
    #[serde(default = "active_by_default")]
    pub active: bool,
    #[serde(default)]
    pub priority: i64,
    // Set by the agent: accepted and ignored, so that a policy read with GET can be sent back with
    // PUT, or to another node with POST, unchanged. (Inline: `flatten` would defeat
    // `deny_unknown_fields`.)
    #[serde(default, rename = "id")]
    pub _id: Option<IgnoredAny>,
    #[serde(default, rename = "version")]
    pub _version: Option<IgnoredAny>,
    #[serde(default, rename = "created_at")]
    pub _created_at: Option<IgnoredAny>,
    #[serde(default, rename = "updated_at")]
    pub _updated_at: Option<IgnoredAny>,
    #[serde(default, rename = "author")]
    pub _author: Option<IgnoredAny>,
}

/// `PUT /policies/{id}`: any field; for `definition`, any of its keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    pub name: Option<String>,
    pub description: Option<String>,
    pub definition: Option<DefinitionPatch>,
    pub active: Option<bool>,
    pub priority: Option<i64>,
    /// A canary plan: the change reaches a share of the nodes first, the rest after a bake time
    /// unless their failures rose (see [`rollout`]).
    pub rollout: Option<rollout::CanarySettings>,
    // Set by the agent: accepted and ignored, so that a policy read with GET can be sent back with
    // PUT, or to another node with POST, unchanged. (Inline: `flatten` would defeat
    // `deny_unknown_fields`.)
    #[serde(default, rename = "id")]
    pub _id: Option<IgnoredAny>,
    #[serde(default, rename = "version")]
    pub _version: Option<IgnoredAny>,
    #[serde(default, rename = "created_at")]
    pub _created_at: Option<IgnoredAny>,
    #[serde(default, rename = "updated_at")]
    pub _updated_at: Option<IgnoredAny>,
    #[serde(default, rename = "author")]
    pub _author: Option<IgnoredAny>,
}

fn active_by_default() -> bool {
    true
}

/// Checks a name: present, printable, not too long.
fn validate_name(name: &str) -> Result<(), PolicyError> {
    if name.trim().is_empty() {
        return Err(PolicyError::invalid("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(PolicyError::invalid(
            "name",
            format!("is longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(PolicyError::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A policy as the API shows it: P0.4's fields plus `version` and `author`.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    pub id: u64,
    pub name: String,
    pub description: String,
    pub definition: Box<RawValue>,
    pub active: bool,
    pub priority: i64,
    pub version: u64,
    pub author: String,
    pub created_at: String,
    pub updated_at: String,
}

impl From<PolicyRecord> for PolicyView {
    fn from(record: PolicyRecord) -> PolicyView {
        // The store only holds definitions this module serialized; a damaged one shows as null
        // rather than failing the whole listing.
        let definition = RawValue::from_string(record.definition_json).unwrap_or_default();
        PolicyView {
            id: record.id,
            name: record.name,
            description: record.description,
            definition,
            active: record.active,
            priority: record.priority,
            version: record.version,
            author: record.author,
            created_at: rfc3339(record.created_at_us),
            updated_at: rfc3339(record.updated_at_us),
        }
    }
}

/// One entry of `GET /policies/{id}/versions`.
#[derive(Debug, Serialize)]
pub struct ChangeView {
    pub revision: u64,
    pub op: &'static str,
    pub policy: PolicyView,
}

impl From<PolicyChange> for ChangeView {
    fn from(change: PolicyChange) -> ChangeView {
        ChangeView {
            revision: change.revision,
            op: match change.op {
                ChangeOp::Create => "create",
                ChangeOp::Update => "update",
                ChangeOp::Delete => "delete",
            },
            policy: change.policy.into(),
        }
    }
}
