//! A `POST /policies` body (and a `PUT /policies/{id}` patch) through the API's parsing and the
//! validation `PolicyService::create` / `update` run: `NewPolicy` read as `api::json::parse` reads
//! it (serde_path_to_error, no trailing characters), then `Definition::validate`.
//!
//! Checked beyond "never panics": a definition that validates is stored as JSON
//! (`Definition::to_json`) that reads back (`Definition::from_json`) and validates again, as the
//! store and a later `PUT` rely on; and the stored policy shows through `PolicyView`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use agent_engine::Incident;
use agent_engine::Matcher;
use agent_policy::{Definition, NewPolicy, PolicyPatch, PolicyView};
use mesh_proto::{Hlc, PolicyRecord};
use serde::de::DeserializeOwned;

/// As `api::json::parse` (private to the agent): the value, then nothing but whitespace.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|err| {
            // The error's path and message are what the API reports: build them.
            let _ = (err.path().to_string(), err.inner().to_string());
        })
        .ok()?;
    de.end().ok()?;
    Some(value)
}

fn incident() -> Incident {
    Incident {
        id: "inc-1".into(),
        kind: "memory_leak".into(),
        severity: 9.0,
        timestamp: Some("2025-10-20T12:00:00".into()),
        context: serde_json::from_str(r#"{"service":"payment-api","memory_usage_mb":8192}"#)
            .unwrap_or_default(),
    }
}

/// What the service does with a definition that validates, and what the store later reads back.
fn check_valid(
    definition: &Definition,
    name: String,
    description: String,
    active: bool,
    priority: i64,
) {
    let matcher = match definition.validate() {
        Ok(matcher) => matcher,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    let stored = definition.to_json();
    let back = Definition::from_json(&stored)
        .unwrap_or_else(|err| panic!("stored definition {stored:?} does not read back: {err}"));
    assert_eq!(back.condition, definition.condition, "{stored}");
    assert_eq!(back.rego, definition.rego, "{stored}");
    assert_eq!(back.action, definition.action, "{stored}");
    assert_eq!(
        back.reversibility_sec, definition.reversibility_sec,
        "{stored}"
    );
    if let Err(err) = back.validate() {
        panic!("stored definition {stored:?} no longer validates: {err}");
    }

    if let Matcher::Condition(condition) = &matcher {
        let outcome = condition.eval(&incident());
        let _ = matcher.missing_fields(outcome).count();
    }

    let record = PolicyRecord {
        id: 1,
        name,
        description,
        definition_json: stored.clone(),
        active,
        priority,
        version: 1,
        created_at_us: 1_760_961_600_000_000,
        updated_at_us: 1_760_961_600_000_000,
        stamp: Hlc {
            wall_ms: 1_760_961_600_000,
            logical: 0,
        },
        author: "edge-1".into(),
    };
    let view = PolicyView::from(record);
    assert_eq!(
        view.definition.get(),
        stored,
        "a stored definition shows as null"
    );
    let shown = serde_json::to_string(&view).expect("a policy view serializes");
    let _: serde_json::Value = serde_json::from_str(&shown).expect("a policy view is JSON");
}

fuzz_target!(|data: &[u8]| {
    // POST /policies
    if let Some(new) = parse::<NewPolicy>(data) {
        check_valid(
            &new.definition,
            new.name,
            new.description,
            new.active,
            new.priority,
        );
    }

    // PUT /policies/{id}: the patch applied to a stored definition, then validated.
    if let Some(patch) = parse::<PolicyPatch>(data) {
        if let Some(def_patch) = patch.definition {
            let mut definition = Definition {
                condition: Some("incident.type == 'memory_leak' and incident.severity >= 8".into()),
                rego: None,
                action: "trigger_p0_3_recovery".into(),
                modifiers: Default::default(),
                reversibility_sec: 300,
                scope: Default::default(),
                quorum: None,
                cooldown_sec: None,
                rate_limit: None,
            };
            definition.apply(def_patch);
            check_valid(
                &definition,
                patch.name.unwrap_or_else(|| "p".into()),
                patch.description.unwrap_or_default(),
                patch.active.unwrap_or(true),
                patch.priority.unwrap_or(0),
            );
        }
    }

    // A bare definition, as the store reads one back.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(definition) = Definition::from_json(text)
    {
        check_valid(&definition, "p".into(), String::new(), true, 0);
    }
});
