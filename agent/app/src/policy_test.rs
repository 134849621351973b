//! `mesh-agent policy test DIR` (the agent's `opa test`): runs the test cases that live beside the
//! policies of a directory, through the same importer checks and engines the daemon uses.
//!
//! - Incident rules: `NAME.cases.toml` beside `*.rules.toml` files holds `[[case]]` tables with an
//!   `event`, the names of the rules it must `matches` (every other must not), and optionally the
//!   `missing` fields to report.
//! - Rego: `NAME.cases/` beside `NAME.rego` holds `CASE.input.json` and `CASE.output.json`; the
//!   module's `result` rule evaluated with the input must equal the output.
//!
//! Every Rego module and `data.json` under the directory is loaded, as `--policies` would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::PolicyRecord;
use serde::Deserialize;
use serde_json::Value;

use agent_decision::event::{Dedup, Event};
use agent_engine::rego::{RegoEngine, RegoSettings, data_path};
use agent_engine::{Engine, EngineMetrics, PolicySet};
use agent_policy::files::{self, FilesError, find_files};
use prometheus_client::registry::Registry;

/// Test evaluations get a generous time limit: a case should fail on its answer, not on a slow
/// machine.
const CASE_TIME_LIMIT: Duration = Duration::from_secs(5);

/// One case and what happened.
#[derive(Debug)]
pub struct CaseResult {
    /// The case file (incident cases) or cases folder (Rego), and the case's name.
    pub file: PathBuf,
    pub name: String,
    /// `Err` says what differed.
    pub outcome: Result<(), String>,
}

/// Every case of a directory.
#[derive(Debug, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.outcome.is_ok()).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// Cases run from files whose path ends with `suffix`.
    pub fn count_for(&self, suffix: &str) -> usize {
        self.results
            .iter()
            .filter(|r| r.file.ends_with(suffix))
            .count()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentCases {
    case: Vec<IncidentCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentCase {
    name: String,
    event: Value,
    matches: Vec<String>,
    #[serde(default)]
    missing: Option<Vec<String>>,
}

/// Runs every case under `dir`. Errors are problems with the files themselves (unreadable,
/// malformed, policies that do not compile); a case that gives the wrong answer is a failed result.
pub fn run(dir: &Path) -> Result<Report, FilesError> {
    let settings = RegoSettings {
        time_limit: CASE_TIME_LIMIT,
    };
    let rego_dir = files::rego::read_dir(dir)?;
    let set = rego_dir.compile(dir, settings)?;
    let rego = Arc::new(RegoEngine::new(settings));
    rego.replace(set);

    let mut report = Report::default();
    for cases in find_files(dir, &|name| name.ends_with(".cases.toml"))? {
        run_incident_cases(&cases, &rego, &mut report)?;
    }
    for module in &rego_dir.modules {
        let cases = dir.join(&module.id).with_extension("cases");
        if cases.is_dir() {
            let package = package_of(&module.text).ok_or_else(|| FilesError::Parse {
                path: dir.join(&module.id).display().to_string(),
                message: "no `package` line".into(),
            })?;
            run_rego_cases(
                &cases,
                &format!("data.{package}.result"),
                &rego,
                &mut report,
            )?;
        }
    }
    Ok(report)
}

fn run_incident_cases(
    path: &Path,
    rego: &Arc<RegoEngine>,
    report: &mut Report,
) -> Result<(), FilesError> {
    let shown = path.display().to_string();
    let text = read(path)?;
    let cases: IncidentCases = toml::from_str(&text).map_err(|err| FilesError::Parse {
        path: shown.clone(),
        message: err.to_string(),
    })?;
    // The rules are those of the directory the cases are in.
    let rules = files::rules::read_dir(path.parent().unwrap_or(Path::new(".")))?;
    let records: Vec<PolicyRecord> = rules
        .into_iter()
        .enumerate()
        .map(|(index, file_policy)| {
            let policy = file_policy.policy;
            PolicyRecord {
                id: index as u64 + 1,
                name: policy.name,
                description: policy.description,
                definition_json: policy.definition.to_json(),
                active: policy.active,
                priority: policy.priority,
                version: 1,
                created_at_us: 0,
                updated_at_us: 0,
                stamp: Default::default(),
                author: "policy-test".into(),
            }
        })
        .collect();
    // Test runs count into a registry of their own: nothing scrapes them.
    let metrics = EngineMetrics::register(&mut Registry::default());
    let engine = Engine::new(Arc::clone(rego), metrics.clone());
    let (set, invalid) = PolicySet::build(records, 0, &metrics);
    if let Some((record, err)) = invalid.into_iter().next() {
        return Err(FilesError::Parse {
            path: shown,
            message: format!("rule `{}`: {err}", record.name),
        });
    }
    engine.replace(set);
    for case in cases.case {
        let outcome = check_incident_case(&engine, &case);
        report.results.push(CaseResult {
            file: path.to_path_buf(),
            name: case.name,
            outcome,
        });
    }
    Ok(())
}

fn check_incident_case(engine: &Engine, case: &IncidentCase) -> Result<(), String> {
    let event: Event = serde_json::from_value(case.event.clone())
        .map_err(|err| format!("the event is not valid: {err}"))?;
    let dedup = Dedup::new(std::time::Duration::ZERO);
    let evaluation =
        engine.evaluate(&event.into_incident("policy test", case.name.as_bytes(), &dedup));
    if let Some((policy, verdict)) = evaluation.iter().find(|(_, v)| v.error.is_some()) {
        return Err(format!(
            "rule `{}` failed: {:?}",
            policy.name, verdict.error
        ));
    }
    let mut matched: Vec<String> = evaluation.matched().map(|p| p.name.to_string()).collect();
    let mut expected = case.matches.clone();
    matched.sort();
    expected.sort();
    if matched != expected {
        return Err(format!("expected matches {expected:?}, got {matched:?}"));
    }
    if let Some(missing) = &case.missing {
        let reported: Vec<String> = evaluation
            .iter()
            .flat_map(|(p, v)| {
                p.matcher
                    .missing_fields(v.outcome)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        if &reported != missing {
            return Err(format!(
                "expected missing fields {missing:?}, got {reported:?}"
            ));
        }
    }
    Ok(())
}

fn run_rego_cases(
    dir: &Path,
    rule: &str,
    rego: &RegoEngine,
    report: &mut Report,
) -> Result<(), FilesError> {
    let set = rego.current();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|source| FilesError::Read {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".input.json").map(str::to_owned)
        })
        .collect();
    names.sort();
    for name in names {
        let input = read_json(&dir.join(format!("{name}.input.json")))?;
        let expected = read_json(&dir.join(format!("{name}.output.json")))?;
        let outcome = match set.evaluate(rule, Some(regorus::Value::from(input))) {
            Ok(Some(value)) => {
                let actual = serde_json::to_value(&value).unwrap_or(Value::Null);
                if actual == expected {
                    Ok(())
                } else {
                    Err(format!(
                        "{rule} differs\nexpected: {}\nactual:   {}",
                        expected, actual
                    ))
                }
            }
            Ok(None) => Err(format!("{rule} is undefined")),
            Err(err) => Err(err.to_string()),
        };
        report.results.push(CaseResult {
            file: dir.to_path_buf(),
            name,
            outcome,
        });
    }
    Ok(())
}

/// The package of a module: `package a.b` -> `a.b`.
fn package_of(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("package "))
        .map(|p| p.trim().to_owned())
        .filter(|p| data_path(&p.replace('.', "/")) == format!("data.{p}"))
}

fn read(path: &Path) -> Result<String, FilesError> {
    std::fs::read_to_string(path).map_err(|source| FilesError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_json(path: &Path) -> Result<Value, FilesError> {
    serde_json::from_str(&read(path)?).map_err(|err| FilesError::Parse {
        path: path.display().to_string(),
        message: err.to_string(),
    })
}
