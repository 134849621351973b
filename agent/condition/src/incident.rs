//! The incident as conditions see it: `incident.id`, `.type`, `.severity`, `.timestamp`, `.context.*`.
//!
//! An incident is built once per evaluated event (from the `/evaluate` body, later from MQTT intake) and
//! then read, never copied, by every policy's condition.

use serde_json::{Map, Value};

/// One incident detected on this node, in the shape conditions address.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    /// `incident.id`: the event's `event_id`, or one assigned on arrival.
    pub id: String,
    /// `incident.type`: the event's `event_type`.
    pub kind: String,
    /// `incident.severity`.
    pub severity: f64,
    /// `incident.timestamp`, as the event gave it (not parsed: conditions compare it as a string).
    pub timestamp: Option<String>,
    /// `incident.context`: free-form details (`load_avg`, `service`, ...).
    pub context: Map<String, Value>,
}
