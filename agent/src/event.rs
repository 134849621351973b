//! The incident event as monitors send it (P0.4's `/evaluate` body, later also MQTT payloads), and its
//! conversion into the [`Incident`] conditions read.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::engine::Incident;

/// One detected incident. Unknown fields are ignored (monitors add their own), but the audit keeps
/// the event exactly as received.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub event_type: String,
    pub severity: f64,
    #[serde(default)]
    pub context: Map<String, Value>,
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Given by the monitor, or assigned on arrival.
    #[serde(default)]
    pub event_id: Option<String>,
}

impl Event {
    /// The incident conditions see; assigns an id if the event has none.
    pub fn into_incident(self) -> Incident {
        Incident {
            id: self
                .event_id
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            kind: self.event_type,
            severity: self.severity,
            timestamp: self.timestamp,
            context: self.context,
        }
    }
}
