//! mesh-agent: a policy agent for every node of an edge mesh.
//!
//! Data flows one way: an incident arrives ([`api`], or MQTT [`intake`]), the [`engine`] evaluates it
//! against the active policies, the [`decision`] is recorded in the [`audit`] ring. Policies change
//! only through [`policy::PolicyService`], which writes the [`store`] and swaps the engine's policy
//! set. See ARCHITECTURE.md.

pub mod api;
pub mod audit;
pub mod certs;
pub mod clock;
pub mod collector;
pub mod config;
pub mod daemon;
pub mod decision;
pub mod engine;
pub mod event;
pub mod fatal;
pub mod identity;
pub mod intake;
pub mod mesh;
pub mod metrics;
pub mod mqtt;
pub mod opa;
pub mod outbox;
pub mod policy;
pub mod policy_test;
pub mod store;
pub mod summary;
pub mod telemetry;
pub mod upstream;
