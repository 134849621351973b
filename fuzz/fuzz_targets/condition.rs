//! The condition language: parse, compile, print and evaluate any source against any incident.
//!
//! Input: `<condition source> NUL <incident JSON>`. The JSON is an event (`event_type`,
//! `severity`, `context`, ...) as `/evaluate` takes it; a JSON object that is not an event becomes
//! the context of a fixed incident, and anything else gives the fixed incident itself.
//!
//! Checked beyond "never panics": an error's column lies within the source, and a parse tree
//! prints as source that parses back to the same tree (as the unit tests check for a few cases).

#![no_main]

use libfuzzer_sys::fuzz_target;
use agent_engine::Incident;
use agent_condition::{Condition, MAX_SOURCE_BYTES, parse};
use agent_decision::event::Event;
use serde_json::{Map, Value, json};

fn fixed_incident(context: Option<Map<String, Value>>) -> Incident {
    let context = context.unwrap_or_else(|| {
        let Value::Object(map) = json!({
            "load_avg": 12.5,
            "count": 3,
            "service": "nginx-frontend",
            "empty": "",
            "nothing": null,
            "flag": true,
            "tags": ["web", "edge", 5],
            "disks": [{"usage": 91, "mount": "/"}],
            "nested": {"deep": {"value": "x"}},
        }) else {
            unreachable!()
        };
        map
    });
    Incident {
        id: "inc-1".into(),
        kind: "cpu_spike".into(),
        severity: 7.0,
        timestamp: Some("2024-05-01T10:00:00Z".into()),
        context,
    }
}

fn incident_from(json: &[u8]) -> Incident {
    if let Ok(event) = serde_json::from_slice::<Event>(json) {
        return Incident {
            id: event.event_id.unwrap_or_else(|| "fuzz".into()),
            kind: event.event_type,
            severity: event.severity,
            timestamp: event.timestamp,
            context: event.context,
        };
    }
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(map)) => fixed_incident(Some(map)),
        _ => fixed_incident(None),
    }
}

fuzz_target!(|data: &[u8]| {
    let (source, json) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };

    // Printing: what parses prints as source that parses back to the same tree.
    match parse(source) {
        Ok(tree) => {
            let printed = tree.to_string();
            match parse(&printed) {
                Ok(again) => assert_eq!(again, tree, "{source:?} printed as {printed:?}"),
                // Escapes can make the printed text longer than the limit; that is not a bug.
                Err(err)
                    if printed.len() > MAX_SOURCE_BYTES
                        || err.message.contains("nests too deeply") => {}
                Err(err) => {
                    panic!("{source:?} printed as {printed:?}, which does not parse: {err}")
                }
            }
        }
        Err(err) => check_column(source, err.column),
    }

    let condition = match Condition::compile(source) {
        Ok(condition) => condition,
        Err(err) => {
            check_column(source, err.column);
            return;
        }
    };
    assert_eq!(condition.source(), source);
    let _ = format!("{condition:?}");

    let incident = incident_from(json);
    let outcome = condition.eval(&incident);
    let missing: Vec<&str> = condition.missing_fields(outcome).collect();
    assert_eq!(outcome.any_missing(), !missing.is_empty());
    // Evaluation is a pure function of the condition and the incident.
    assert_eq!(condition.eval(&incident), outcome);
    let clone = condition.clone();
    assert_eq!(clone.eval(&incident), outcome);
    // Explaining walks the same program: the same verdict, the same missing fields.
    let explanation = condition.explain(&incident, &agent_condition::NoFacts);
    assert_eq!(explanation.matched, outcome.matched);
    assert_eq!(explanation.missing, missing);
});

/// An error's column is 1-based, counted in chars, and at most one past the end.
fn check_column(source: &str, column: usize) {
    let chars = source.chars().count();
    assert!(
        (1..=chars + 1).contains(&column),
        "column {column} outside a source of {chars} chars: {source:?}"
    );
}
