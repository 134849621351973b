//! Runs the Rego policies under `policies/rego` against their cases.
//!
//! Every `*.rego` file is loaded into one `regorus::Engine`. For a policy `dir/name.rego` of package
//! `pkg`, each `dir/name.cases/<case>.input.json` is set as the input, `data.<pkg>.result` is
//! evaluated, and the result must equal `dir/name.cases/<case>.output.json` as JSON.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The least number of cases each package must have, so that a lost `.cases` folder or case file
/// fails the test instead of passing with nothing checked.
const MIN_CASES: &[(&str, usize)] = &[
    ("data.neuralhive.orchestrator.resource_limits", 21),
    ("data.neuralhive.orchestrator.sla_enforcement", 19),
    ("data.neuralhive.orchestrator.feature_flags", 23),
];

const INPUT_SUFFIX: &str = ".input.json";
const OUTPUT_SUFFIX: &str = ".output.json";

fn rego_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/rego")
}

fn rego_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rego_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rego") {
            out.push(path);
        }
    }
}

/// A path as shown in failures: relative to the repository when it is under `policies/rego`.
fn shown(path: &Path) -> String {
    match path.strip_prefix(rego_dir()) {
        Ok(rest) => Path::new("policies/rego").join(rest).display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{}: bad JSON: {e}", path.display()))
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap()
}

/// The case names in a `.cases` folder, checking that every input has an output and vice versa.
fn case_names(dir: &Path) -> Vec<String> {
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(case) = name.strip_suffix(INPUT_SUFFIX) {
            inputs.push(case.to_string());
        } else if let Some(case) = name.strip_suffix(OUTPUT_SUFFIX) {
            outputs.push(case.to_string());
        } else {
            panic!(
                "{}: unexpected file `{name}` (cases are <case>{INPUT_SUFFIX} and <case>{OUTPUT_SUFFIX})",
                dir.display()
            );
        }
    }
    inputs.sort();
    outputs.sort();
    assert_eq!(
        inputs,
        outputs,
        "{}: every case needs both an input and an output file",
        dir.display()
    );
    inputs
}

fn all_rego_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rego_files(&rego_dir(), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no .rego files under policies/rego");
    files
}

#[test]
fn every_rego_policy_parses_on_its_own() {
    for path in all_rego_files() {
        let mut engine = regorus::Engine::new();
        let package = engine
            .add_policy(path.display().to_string(), read(&path))
            .unwrap_or_else(|e| panic!("{}: does not parse: {e}", shown(&path)));
        // The result rule must exist (an unknown rule path is an error, not undefined).
        engine.set_input(regorus::Value::new_object());
        engine
            .eval_rule(format!("{package}.result"))
            .unwrap_or_else(|e| panic!("{}: {package}.result: {e}", path.display()));
    }
}

#[test]
fn every_rego_policy_case_holds() {
    let files = all_rego_files();

    // Every module goes into one engine, as the agent would load them; add_policy also checks
    // that each file parses.
    let mut engine = regorus::Engine::new();
    let mut policies = Vec::new();
    for path in &files {
        let package = engine
            .add_policy(path.display().to_string(), read(path))
            .unwrap_or_else(|e| panic!("{}: does not parse: {e}", shown(path)));
        policies.push((path, package));
    }

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (path, package) in &policies {
        let cases_dir = path.with_extension("cases");
        if !cases_dir.is_dir() {
            failures.push(format!("{}: no cases folder", shown(&cases_dir)));
            continue;
        }
        let rule = format!("{package}.result");
        for case in case_names(&cases_dir) {
            *counts.entry(package.clone()).or_default() += 1;
            let shown = format!("{}/{case}", shown(&cases_dir));
            let input = read_json(&cases_dir.join(format!("{case}{INPUT_SUFFIX}")));
            let expected = read_json(&cases_dir.join(format!("{case}{OUTPUT_SUFFIX}")));
            engine.set_input(regorus::Value::from(input));
            let actual = match engine.eval_rule(rule.clone()) {
                Ok(regorus::Value::Undefined) => {
                    failures.push(format!("{shown}: {rule} is undefined"));
                    continue;
                }
                Ok(value) => serde_json::to_value(&value).unwrap(),
                Err(e) => {
                    failures.push(format!("{shown}: evaluating {rule} failed: {e}"));
                    continue;
                }
            };
            if actual != expected {
                failures.push(format!(
                    "{shown}: {rule} differs\nexpected:\n{}\nactual:\n{}",
                    pretty(&expected),
                    pretty(&actual)
                ));
            }
        }
    }
    for (package, min) in MIN_CASES {
        let found = counts.get(*package).copied().unwrap_or(0);
        if found < *min {
            failures.push(format!(
                "{package}: {found} case(s) ran, expected at least {min}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
