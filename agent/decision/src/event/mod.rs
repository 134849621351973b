//! The incident event as monitors send it (P0.4's `/evaluate` body, MQTT payloads), and its
//! conversion into the [`Incident`] conditions read.

mod dedup;

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de};
use serde_json::{Map, Value};

use agent_engine::Incident;

pub use dedup::{Dedup, MAX_ENTRIES as DEDUP_MAX_ENTRIES};

/// The longest `event_id` accepted, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 256;
/// The longest `event_type` accepted, in bytes: a type is gossiped, indexed and throttled by.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;

/// One detected incident: a JSON object (an array or a scalar is refused, not read by position).
/// Unknown fields are ignored (monitors add their own), but the audit keeps the event exactly as
/// received.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: String,
    pub severity: f64,
    pub context: Map<String, Value>,
    pub timestamp: Option<String>,
    /// Given by the monitor (non-empty), or assigned on arrival.
    pub event_id: Option<String>,
}

#[derive(Deserialize)]
struct Fields {
    #[serde(deserialize_with = "event_type")]
    event_type: String,
    severity: f64,
    #[serde(default)]
    context: Map<String, Value>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default, deserialize_with = "event_id")]
    event_id: Option<String>,
}

fn event_type<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let kind = String::deserialize(deserializer)?;
    if kind.len() > MAX_EVENT_TYPE_BYTES {
        return Err(de::Error::custom(format!(
            "`event_type` is {} bytes, over {MAX_EVENT_TYPE_BYTES}",
            kind.len()
        )));
    }
    Ok(kind)
}

fn event_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let id = Option::<String>::deserialize(deserializer)?;
    match &id {
        Some(id) if id.is_empty() => Err(de::Error::custom(
            "`event_id` must not be empty (leave it out and the agent assigns one)",
        )),
        Some(id) if id.len() > MAX_EVENT_ID_BYTES => Err(de::Error::custom(format!(
            "`event_id` is {} bytes, over {MAX_EVENT_ID_BYTES}",
            id.len()
        ))),
        _ => Ok(id),
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Event, D::Error> {
        struct ObjectOnly;
        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = Event;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event: a JSON object with `event_type` and `severity`")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Event, A::Error> {
                let fields = Fields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Event {
                    event_type: fields.event_type,
                    severity: fields.severity,
                    context: fields.context,
                    timestamp: fields.timestamp,
                    event_id: fields.event_id,
                })
            }
        }
        deserializer.deserialize_map(ObjectOnly)
    }
}

impl Event {
    /// The incident conditions see. An event without an id gets one from `dedup`, derived from
    /// where it came from (`source`: an MQTT topic, an HTTP route) and its exact bytes: a retry or
    /// redelivery within the de-duplication window gets the same id, and its actions the same ids.
    pub fn into_incident(self, source: &str, bytes: &[u8], dedup: &Dedup) -> Incident {
        Incident {
            id: self
                .event_id
                .unwrap_or_else(|| dedup.id_for(source, bytes, agent_base::clock::now_ms())),
            kind: self.event_type,
            severity: self.severity,
            timestamp: self.timestamp,
            context: self.context,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_are_events() {
        let event: Event =
            serde_json::from_str(r#"{"event_type": "memory_leak", "severity": 9}"#).unwrap();
        assert_eq!(event.event_type, "memory_leak");
        let err = serde_json::from_str::<Event>(r#"["memory_leak", 9, {}, null, "a"]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected an event: a JSON object"), "{err}");
        assert!(serde_json::from_str::<Event>("9").is_err());
    }

    #[test]
    fn event_ids_are_non_empty_and_bounded() {
        let err =
            serde_json::from_str::<Event>(r#"{"event_type": "x", "severity": 1, "event_id": ""}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("must not be empty"), "{err}");
        let long = format!(
            r#"{{"event_type": "x", "severity": 1, "event_id": "{}"}}"#,
            "a".repeat(MAX_EVENT_ID_BYTES + 1)
        );
        assert!(serde_json::from_str::<Event>(&long).is_err());
        let long_type = format!(
            r#"{{"event_type": "{}", "severity": 1}}"#,
            "t".repeat(MAX_EVENT_TYPE_BYTES + 1)
        );
        let err = serde_json::from_str::<Event>(&long_type)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`event_type` is 257 bytes"), "{err}");
        let null: Event =
            serde_json::from_str(r#"{"event_type": "x", "severity": 1, "event_id": null}"#)
                .unwrap();
        assert_eq!(null.event_id, None);
    }
}
