//! The example policies under `policies/` pass their own test cases, run by the same runner as
//! `mesh-agent policy test`.

use std::path::{Path, PathBuf};

use agent_app::policy_test;
use agent_policy::files;

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

/// The least number of cases each case file or folder must run, so that a lost file fails.
const MIN_CASES: &[(&str, usize)] = &[
    ("incidents/recovery.cases.toml", 12),
    ("mesh/mesh.cases.toml", 9),
    ("orchestrator/resource_limits.cases", 21),
    ("orchestrator/sla_enforcement.cases", 19),
    ("orchestrator/feature_flags.cases", 23),
];

#[test]
fn every_policy_case_holds() {
    let report = policy_test::run(&policies_dir()).unwrap();
    let failures: Vec<String> = report
        .results
        .iter()
        .filter_map(|r| {
            r.outcome
                .as_ref()
                .err()
                .map(|e| format!("{}: {}: {e}", r.file.display(), r.name))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
    for (suffix, min) in MIN_CASES {
        let found = report.count_for(suffix);
        assert!(
            found >= *min,
            "{suffix}: {found} case(s) ran, expected at least {min}"
        );
    }
}

#[test]
fn the_validation_policies_run_on_the_vm() {
    use agent_engine::rego::RegoSettings;
    let settings = RegoSettings {
        time_limit: std::time::Duration::from_secs(5),
    };
    let dir = policies_dir();
    let set = files::rego::read_dir(&dir)
        .unwrap()
        .compile(&dir, settings)
        .unwrap();
    for policy in ["resource_limits", "sla_enforcement", "feature_flags"] {
        let path = format!("data.neuralhive.orchestrator.{policy}.result");
        assert!(
            set.runs_on_vm(&path),
            "{path} falls back to the interpreter"
        );
    }
}

#[test]
fn a_wrong_expectation_fails_its_case() {
    // The runner must be able to fail: copy a policy with its cases and break one expectation.
    let tmp = tempfile::tempdir().unwrap();
    let src = policies_dir().join("rego/neuralhive/orchestrator");
    std::fs::copy(
        src.join("resource_limits.rego"),
        tmp.path().join("resource_limits.rego"),
    )
    .unwrap();
    let cases = tmp.path().join("resource_limits.cases");
    std::fs::create_dir(&cases).unwrap();
    std::fs::copy(
        src.join("resource_limits.cases/seed_example.input.json"),
        cases.join("seed_example.input.json"),
    )
    .unwrap();
    std::fs::write(
        cases.join("seed_example.output.json"),
        r#"{"allow": false, "violations": [], "warnings": []}"#,
    )
    .unwrap();
    std::fs::copy(
        policies_dir().join("incidents/recovery.rules.toml"),
        tmp.path().join("r.rules.toml"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("r.cases.toml"),
        "[[case]]\nname = \"wrong\"\nevent = { event_type = \"memory_leak\", severity = 9 }\nmatches = []\n",
    )
    .unwrap();
    let report = policy_test::run(tmp.path()).unwrap();
    assert_eq!((report.passed(), report.failed()), (0, 2), "{report:?}");
}

#[test]
fn every_incident_rule_fires_on_some_case_and_not_on_another() {
    // A rule no case makes fire (or no case of its own incident type keeps quiet) is untested.
    let dir = policies_dir().join("incidents");
    let rules = files::rules::read_dir(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("recovery.cases.toml")).unwrap();
    let cases: toml::Table = toml::from_str(&text).unwrap();
    let cases = cases["case"].as_array().unwrap();
    let matches = |case: &toml::Value, name: &str| {
        case["matches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m.as_str() == Some(name))
    };
    for rule in &rules {
        let name = &rule.policy.name;
        let kind = rule
            .policy
            .definition
            .condition
            .as_deref()
            .unwrap()
            .split('\'')
            .nth(1);
        assert!(
            cases.iter().any(|c| matches(c, name)),
            "{name} never matches"
        );
        assert!(
            cases
                .iter()
                .any(|c| !matches(c, name) && c["event"]["event_type"].as_str() == kind),
            "{name} has no case of its own incident type that must not match"
        );
    }
}
