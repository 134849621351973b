//! `mesh-agent policy test DIR` (the agent's `opa test`): runs the test cases that live beside the
//! policies of a directory, through the same importer checks and engines the daemon uses.
//!
//! - Incident rules: `NAME.cases.toml` beside `*.rules.toml` files holds `[[case]]` tables with an
//!   `event`, the names of the rules it must `matches` (every other must not), and optionally the
//!   `missing` fields to report. A case can set the facts around the event: `mesh = { nodes_alive
//!   = 10, others_with = { cpu_spike = 2 }, max_severity = { cpu_spike = 7 } }` (the other alive
//!   nodes and what they report), and `history = [{ type = "memory_leak", ago_sec = 120 }]` /
//!   `matched_before = [{ policy = "p", ago_sec = 60 }]` (this node's earlier incidents and matches).
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

use agent_decision::DecisionsConfig;
use agent_decision::event::{Dedup, Event};
use agent_decision::facts::peers::TypeAcross;
use agent_decision::facts::{FactSources, PeerView};
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
    #[serde(default)]
    mesh: Option<CaseMesh>,
    #[serde(default)]
    history: Vec<CaseIncident>,
    #[serde(default)]
    matched_before: Vec<CaseMatch>,
}

/// The mesh around a case's node.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseMesh {
    /// Alive members, this node included.
    nodes_alive: usize,
    /// How many of the other alive members report each type.
    #[serde(default)]
    others_with: std::collections::HashMap<String, usize>,
    /// The highest severity they report, per type (default 1).
    #[serde(default)]
    max_severity: std::collections::HashMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseIncident {
    #[serde(rename = "type")]
    kind: String,
    ago_sec: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseMatch {
    policy: String,
    ago_sec: u64,
}

/// The node a case runs on, in the facts it sets up.
const CASE_NODE: &str = "policy-test";

/// The facts a case sets around its event.
fn case_facts(case: &IncidentCase, now_ms: u64) -> Result<FactSources, String> {
    let sources = FactSources::new(CASE_NODE, &DecisionsConfig::default(), 100_000);
    let mut earlier: Vec<(u64, &str, Option<&str>)> = case
        .history
        .iter()
        .map(|i| (i.ago_sec, i.kind.as_str(), None))
        .chain(
            case.matched_before
                .iter()
                .map(|m| (m.ago_sec, "", Some(m.policy.as_str()))),
        )
        .collect();
    // Oldest first, as the ring would give them.
    earlier.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (ago_sec, kind, policy) in earlier {
        sources.remember(kind, now_ms.saturating_sub(ago_sec * 1000), policy);
    }
    if let Some(mesh) = &case.mesh {
        if mesh.nodes_alive == 0 {
            return Err("`mesh.nodes_alive` counts this node: at least 1".into());
        }
        let others: Vec<String> = (1..mesh.nodes_alive).map(|i| format!("peer-{i}")).collect();
        let mut view = PeerView::alone(CASE_NODE);
        view.alive.extend(others.iter().cloned());
        view.known = view.alive.len();
        view.from_mesh = true;
        for (kind, &count) in &mesh.others_with {
            if count > others.len() {
                return Err(format!(
                    "`mesh.others_with.{kind}` is {count}, but there are only {} other alive nodes",
                    others.len()
                ));
            }
            let severity = mesh.max_severity.get(kind).copied().unwrap_or(1.0);
            view.types.insert(
                kind.clone(),
                TypeAcross {
                    nodes: others[..count]
                        .iter()
                        .map(|node| (node.clone(), 1, severity as f32))
                        .collect(),
                    max_severity: severity,
                },
            );
        }
        sources.set_peers(view);
    }
    Ok(sources)
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
    let incident = event.into_incident("policy test", case.name.as_bytes(), &dedup);
    let now_ms = agent_base::clock::now_ms();
    let facts = case_facts(case, now_ms)?;
    let evaluation = engine.evaluate(&incident, &facts.view(&incident, None, now_ms));
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
