//! mesh-agent: a policy agent for every node of an edge mesh. This crate is the daemon on top of
//! the layers in `agent/*`: it assembles the config ([`config`]), the metrics registry
//! ([`metrics`]) and telemetry, and wires the layers together ([`daemon`]); `main.rs` is the CLI.
//!
//! Data flows one way: an incident arrives (`agent_api`, or MQTT `agent_mqtt`), the `agent_engine`
//! evaluates it, the decision (`agent_decision`) is recorded in the audit ring and the outbox, and
//! goes upstream. Policies change only through `agent_policy`'s services, which write the
//! `agent_store` and swap the engine's policy set; gossip (`agent_mesh`) feeds the store. See
//! ARCHITECTURE.md.

pub mod config;
pub mod daemon;
pub mod metrics;
pub mod policy_test;
pub mod telemetry;
