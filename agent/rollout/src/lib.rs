//! Rollouts across the mesh: what each node reports about the open rollouts, and the coordinator
//! that completes or fails a canary from every member's reports.
//!
//! Every node gossips one value, `s.rollouts` ([`report`]): for each baking canary, whether it
//! runs the candidate and how its evaluations went since it saw the rollout start (evaluations,
//! failures, time limits, fail-mode answers); the canary candidates it could not compile; and
//! for each shadow version, how often it agreed with the active one. One live node coordinates
//! each canary (the first by rendezvous hash of the rollout id over the live members, so a
//! coordinator that dies is replaced by the next): it judges the reports ([`judge`]) and writes the
//! rollout's end through `RolloutService`, which the mesh then carries to every node.
//!
//! The rollouts themselves live in the store (`agent_policy::rollout`), so they survive any
//! node's restart; the counters do not (a restarted node counts again from its start).

mod controller;
pub mod judge;
pub mod report;

pub use controller::{LocalReport, RolloutController, spawn};
pub use report::{CanaryCounts, NodeReport, REPORT_KEY};
