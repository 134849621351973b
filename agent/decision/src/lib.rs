//! Decisions: what happens to an incident after it arrives. An [`Event`](event::Event) becomes an
//! incident (with an id, deduplicated within a window), the [`Decider`] evaluates it with the
//! engine, and the decision is recorded in the audit ring by the [`AuditLog`](audit::AuditLog)'s one
//! writer, in the same transaction as the actions it puts in the [`Outbox`](outbox::Outbox) for
//! the upstream. Audit summaries for the collector are windows of these decisions.
//!
//! Architecture invariant: decisions know no transport. The HTTP API and the MQTT intake hand
//! events in; the MQTT upstream takes messages out of the outbox. Nothing here opens a socket.

pub mod audit;
mod decider;
pub mod decision_log;
pub mod event;
pub mod facts;
pub mod mesh_actions;
mod metrics;
pub mod outbox;
pub mod replay;
pub mod summary;

pub use decider::{
    ActionSink, DecideError, DecideOptions, Decider, Decision, MESH_ACTION_EVENT, Pending,
    PolicyExplanation, REJECTED, TooLarge, action_id,
};
pub use facts::DecisionsConfig;
pub use metrics::{AuditMetrics, DecisionMetrics, OutboxMetrics};
