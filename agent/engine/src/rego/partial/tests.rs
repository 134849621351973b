//! Partial evaluation: inlining, the known/unknown split, always and never true, OR of bodies,
//! each refused construct with its location, and the UCAST and SQL translations.

use std::time::Duration;

use serde_json::json;

use super::ucast::{self, Dialect, Target, Variant};
use super::*;
use crate::rego::{ModuleSource, RegoSet, RegoSettings};

fn set(modules: &[(&str, &str)], data: serde_json::Value) -> RegoSet {
    RegoSet::build(
        &modules
            .iter()
            .map(|(id, text)| ModuleSource {
                id: (*id).into(),
                text: (*text).into(),
            })
            .collect::<Vec<_>>(),
        data,
        1,
        RegoSettings {
            time_limit: Duration::from_millis(500),
        },
    )
    .unwrap()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The residual queries as text, one string per query.
fn texts(residuals: &Residuals) -> Option<Vec<String>> {
    residuals.queries.as_ref().map(|queries| {
        queries
            .iter()
            .map(|q| q.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))
            .collect()
    })
}

#[test]
fn comparisons_with_known_parts_substituted() {
    let set = set(
        &[(
            "f.rego",
            "package filters\n\ninclude if input.fruits.colour == input.colour\n",
        )],
        json!({}),
    );
    let out = set
        .partial(
            CompileQuery::Rule("filters/include"),
            Some(regorus::Value::from(json!({"colour": "red"}))),
            Some(&strings(&["input.fruits"])),
        )
        .unwrap();
    assert_eq!(texts(&out).unwrap(), vec![r#"eq(input.fruits.colour, "red")"#]);
}
