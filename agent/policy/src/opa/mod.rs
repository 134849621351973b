//! What replaces the orchestrator's OPA server: Rego modules and data kept in the store
//! ([`RegoService`]), decisions with a cache and a fail mode ([`Evaluator`]), and the aggregated
//! validation of several policies ([`validate`]), and OPA bundles ([`bundle`]), which the
//! service activates beside the modules and data written one by one.

pub mod bundle;
mod cache;
mod config;
pub mod data_tree;
mod evaluator;
mod metrics;
mod service;
pub mod validate;

use agent_engine::rego::CompileError;
use agent_store::StoreError;

pub use config::{FailMode, RegoConfig};
pub use evaluator::{Decision, Evaluator, fail_decision};
pub use metrics::OpaMetrics;
pub use service::{BundleInfo, BundleStatus, PollNote, PutBundle, RegoService};

/// Why a module or data change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpaError {
    #[error("error(s) occurred while compiling module(s): {0}")]
    Compile(#[from] CompileError),
    #[error("storage_not_found_error: {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// Over a byte budget (`rego.max_data_bytes`).
    #[error("{0}")]
    TooLarge(String),
    /// The module or data has an open canary rollout.
    #[error("{0}")]
    InRollout(String),
    /// A rollout's candidate was made from a version the module or data has moved on from.
    #[error("{0}")]
    Changed(String),
    #[error(transparent)]
    Data(#[from] data_tree::DataError),
    /// A bundle that was refused (malformed, too large, or not verified).
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    Store(Box<StoreError>),
}

impl From<StoreError> for OpaError {
    fn from(err: StoreError) -> OpaError {
        OpaError::Store(Box::new(err))
    }
}
