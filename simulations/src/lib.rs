//! `mesh-sim`: many mesh-agent nodes on one machine, scripted faults, figures and reports.
//!
//! - [`scenario`]: the scenario file (nodes, engine, network, faults, writes, expectations).
//! - [`fast`]: the `fast` engine, the agent's layers below the API (mesh, store, engine,
//!   decisions) on a paused clock over an in-memory network, deterministic for a seed.
//! - [`real`]: the `real` engine, `mesh-agent` processes in network namespaces, real faults.
//! - [`report`]: what a run measured (`report.json`) and its page (`report.html`).
//! - [`cluster`]: N in-process nodes on real QUIC loopback sockets and the real clock (the
//!   `quic` command and the partition test).

pub mod cluster;
pub mod fast;
pub mod reach;
pub mod real;
pub mod report;
pub mod scenario;

pub use cluster::{Cluster, ClusterSettings, Node};
