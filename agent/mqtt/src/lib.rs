//! MQTT: the broker connector, the incident intake, the upstream publisher (outbox to broker, with
//! its circuit breaker), and the central collector (`mesh-agent collector`).
//!
//! Architecture invariant: this crate is transport. Incidents go in through
//! [`Decider`](agent_decision::Decider) and messages come out of the
//! [`Outbox`](agent_decision::outbox::Outbox); what a decision is, and how it is recorded, is
//! decided below. Nothing here writes the data file except through the audit writer.

pub mod collector;
mod config;
mod connector;
mod intake;
mod service;
pub mod upstream;

pub use config::{MAX_MQTT_PAYLOAD, MqttConfig, UpstreamConfig};
pub use connector::{Backoff, Connector, Endpoint, MqttError};
pub use service::{MqttSections, MqttService, StartError, open_outbox, start};
pub use upstream::{Upstream, UpstreamMetrics, UpstreamView};
