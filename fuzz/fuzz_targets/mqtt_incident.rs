//! An MQTT incident payload as `intake` takes it: parsed as an `Event` (serde_path_to_error, no
//! trailing characters), turned into an `Incident` with an id from a `Dedup` table, then seen by
//! a condition and as Rego input.
//!
//! Checked beyond "never panics": the same bytes from the same topic get the same id within the
//! window, and an id the table issued can be remembered (as on restart from the audit ring).

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use agent_condition::Condition;
use agent_engine::rego_input;
use agent_decision::event::{Dedup, Event};

const TOPIC: &str = "mesh/incidents/edge-1";

static DEDUP: LazyLock<Dedup> = LazyLock::new(|| Dedup::new(Duration::from_secs(300)));
static CONDITION: LazyLock<Condition> = LazyLock::new(|| {
    Condition::compile(
        "incident.type == 'memory_leak' and incident.severity >= 8 \
         or incident.context.service.startswith('payment') \
         or incident.context['load-avg'][0] > 10 \
         or incident.timestamp >= '2025-01-01' \
         or incident.id.matches('^evt-')",
    )
    .expect("the fixed condition compiles")
});

/// As `intake::parse` (private to the agent).
fn parse(payload: &[u8]) -> Result<Event, String> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let event: Event = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        format!("{path}: {}", err.into_inner())
    })?;
    de.end().map_err(|err| err.to_string())?;
    Ok(event)
}

fuzz_target!(|payload: &[u8]| {
    // Also the plain serde_json entry point, as `/evaluate` and tests use it.
    let _ = serde_json::from_slice::<Event>(payload);

    let event = match parse(payload) {
        Ok(event) => event,
        Err(reason) => {
            // A rejected payload is audited with its reason and its bytes (lossily, as text).
            let _ = (reason, String::from_utf8_lossy(payload));
            return;
        }
    };
    let given_id = event.event_id.clone();
    let again = event.clone();
    let incident = event.into_incident(TOPIC, payload, &DEDUP);
    match &given_id {
        Some(id) => assert_eq!(&incident.id, id),
        None => {
            assert!(!incident.id.is_empty());
            // A redelivery within the window keeps its id (unless the window closed between the
            // two calls, which five minutes make impossible here).
            let redelivered = again.into_incident(TOPIC, payload, &DEDUP);
            assert_eq!(redelivered.id, incident.id, "a redelivery got another id");
        }
    }
    // Restart: ids read back from the audit ring re-open their windows; any text is accepted.
    DEDUP.remember(&incident.id, agent_base::clock::now_ms());
    let _ = DEDUP.len();

    let outcome = CONDITION.eval(&incident);
    let _ = CONDITION.missing_fields(outcome).count();
    let _ = rego_input(&incident, &agent_engine::NoFacts);
    let _ = agent_decision::action_id("edge-1", &incident.id, 1, 1);
});
