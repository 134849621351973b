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
    /// The incident conditions see. An event without an id gets one derived from where it came
    /// from (`source`: an MQTT topic, an HTTP route) and its exact bytes, so a retried or
    /// redelivered event gets the same id, and its actions the same action ids.
    pub fn into_incident(self, source: &str, bytes: &[u8]) -> Incident {
        Incident {
            id: self.event_id.unwrap_or_else(|| content_id(source, bytes)),
            kind: self.event_type,
            severity: self.severity,
            timestamp: self.timestamp,
            context: self.context,
        }
    }
}

/// An id for an event that came without one: the same bytes from the same source get the same id.
pub fn content_id(source: &str, bytes: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(source.as_bytes());
    ctx.update(b"\0");
    ctx.update(bytes);
    let digest = ctx.finish();
    let mut id = String::with_capacity(4 + 32);
    id.push_str("evt-");
    for byte in &digest.as_ref()[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::content_id;

    #[test]
    fn content_ids_follow_source_and_bytes() {
        let a = content_id("incident/detected", b"{}");
        assert_eq!(a, content_id("incident/detected", b"{}"));
        assert_ne!(a, content_id("anomaly/detected", b"{}"));
        assert_ne!(a, content_id("incident/detected", b"{ }"));
        // The separator keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(content_id("ab", b"c"), content_id("a", b"bc"));
        assert_eq!(a.len(), 36);
    }
}
