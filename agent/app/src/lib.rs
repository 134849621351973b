//! The agent's assembly below the API: the one config file ([`config`]: every subsystem's section,
//! file, `MESH_AGENT_*` variables, flags), the one metrics registry ([`metrics`]), logging
//! ([`telemetry`]), and `mesh-agent policy test` ([`policy_test`]). The daemon binary (`agent/`)
//! wires the layers with them.
//!
//! Architecture invariant: nothing here depends on the HTTP API's handlers, so a change to them
//! rebuilds only the API and the binary on top.

pub mod config;
pub mod metrics;
pub mod policy_test;
pub mod telemetry;
