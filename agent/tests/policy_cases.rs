//! Runs every `*.cases.toml` under `policies/` against the rules beside it, through the same importer
//! and engine the daemon uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_agent::engine::Engine;
use mesh_agent::event::Event;
use mesh_agent::metrics::Metrics;
use mesh_agent::policy::{PolicyService, files};
use mesh_agent::store::Store;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    event: serde_json::Value,
    matches: Vec<String>,
    #[serde(default)]
    missing: Option<Vec<String>>,
}

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn case_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            case_files(&path, out);
        } else if path.to_string_lossy().ends_with(".cases.toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_policy_case_holds() {
    let mut files_found = Vec::new();
    case_files(&policies_dir(), &mut files_found);
    assert!(!files_found.is_empty(), "no case files under policies/");
    let mut checked = 0;
    for cases_path in files_found {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&tmp.path().join("a.redb"), "case-runner").unwrap());
        let metrics = Arc::new(Metrics::new());
        let engine = Arc::new(Engine::new(Arc::clone(&metrics)));
        let service = PolicyService::new(store, Arc::clone(&engine), metrics).unwrap();
        // The rules are the files in the same directory as the cases.
        let rules = files::read_dir(cases_path.parent().unwrap()).unwrap();
        let imported = files::import(&service, rules).unwrap();
        assert!(
            imported.created > 0,
            "{}: no rules beside the cases",
            cases_path.display()
        );

        let text = std::fs::read_to_string(&cases_path).unwrap();
        let cases: CasesFile = toml::from_str(&text).unwrap();
        for case in cases.case {
            let event: Event = serde_json::from_value(case.event.clone()).unwrap_or_else(|e| {
                panic!(
                    "{}: case `{}`: bad event: {e}",
                    cases_path.display(),
                    case.name
                )
            });
            let evaluation = engine.evaluate(&event.into_incident());
            let matched: Vec<String> = evaluation.matched().map(|p| p.name.to_string()).collect();
            let mut expected = case.matches.clone();
            expected.sort();
            let mut got = matched.clone();
            got.sort();
            assert_eq!(
                got,
                expected,
                "{}: case `{}`",
                cases_path.display(),
                case.name
            );
            if let Some(missing) = case.missing {
                let reported: Vec<String> = evaluation
                    .iter()
                    .flat_map(|(p, v)| {
                        p.condition
                            .missing_fields(v.outcome)
                            .map(str::to_owned)
                            .collect::<Vec<_>>()
                    })
                    .collect();
                assert_eq!(
                    reported,
                    missing,
                    "{}: case `{}`: missing fields",
                    cases_path.display(),
                    case.name
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} cases ran");
}

#[test]
fn every_rule_fires_on_some_case_and_not_on_another() {
    // A rule no case makes fire (or no case keeps quiet) is untested.
    let dir = policies_dir().join("incidents");
    let rules = files::read_dir(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("recovery.cases.toml")).unwrap();
    let cases: CasesFile = toml::from_str(&text).unwrap();
    for rule in &rules {
        let name = &rule.policy.name;
        assert!(
            cases.case.iter().any(|c| c.matches.contains(name)),
            "{name} never matches"
        );
        assert!(
            cases.case.iter().any(|c| !c.matches.contains(name)
                && c.event.get("event_type").and_then(|t| t.as_str())
                    == rule.policy.definition.condition.split('\'').nth(1)),
            "{name} has no case of its own incident type that must not match"
        );
    }
}
