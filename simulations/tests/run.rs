//! `mesh-sim run` end to end: the binary on scenarios, its exit status, its report files, and
//! the report page opened in a real browser (headless Chromium).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn mesh_sim() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mesh-sim"));
    command.env("RUST_LOG", "error");
    command
}

/// The `mesh-agent` binary the real engine runs: beside mesh-sim (`cargo test --workspace` builds
/// it; a run of this package alone needs `cargo build -p mesh-agent` first: a cargo inside the
/// test would wait on the build lock of the cargo running it).
fn agent_binary() -> PathBuf {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_mesh-sim")).with_file_name("mesh-agent");
    assert!(
        agent.is_file(),
        "{} is not built: run `cargo build -p mesh-agent` (or `cargo test --workspace`)",
        agent.display()
    );
    agent
}

/// The real engine needs root (network namespaces); without it its runs are left out, saying so.
fn can_run_real() -> bool {
    // Safety: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: the real engine needs root (network namespaces)");
    }
    root
}

/// Real-engine runs one at a time: two sets of agents on two cores would time each other.
static REAL_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Outcome {
    code: i32,
    stdout: String,
    report: Value,
    dir: PathBuf,
}

/// Runs the scenario in `text` (written to a file in `dir`), with `args` added.
fn run(dir: &Path, text: &str, args: &[&str]) -> Outcome {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("scenario.toml");
    std::fs::write(&file, text).unwrap();
    let out = dir.join("out");
    let mut command = mesh_sim();
    command
        .arg("run")
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .args(args);
    let real = text.contains("engine = \"real\"");
    let _one_at_a_time = real.then(|| REAL_RUNS.lock().unwrap_or_else(|p| p.into_inner()));
    if real {
        command.arg("--agent").arg(agent_binary());
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = output.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "mesh-sim failed ({code}): {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    Outcome {
        code,
        stdout,
        report,
        dir: out,
    }
}

const SMALL: &str = r#"
name = "small"
engine = "fast"
nodes = 12
seed = 5
duration_sec = 20
[network]
delay_ms = 2
loss = 0.02
[[writes]]
at_sec = 5
node = 0
[[writes]]
at_sec = 5
node = 3
[writes.policy]
name = "spike_scale_out"
[writes.policy.definition]
condition = "incident.type == 'cpu_spike' and mesh.fraction_with('cpu_spike') >= 0.3"
action = "scale_horizontal"
scope = "mesh"
reversibility_sec = 600
[[faults]]
at_sec = 8
kind = "kill"
nodes = [11]
[[writes]]
at_sec = 9
node = 6
[[incidents]]
type = "cpu_spike"
per_sec = 4
severity = 7
nodes = "0..5"
from_sec = 10
[expect]
membership_within_sec = 5
converge_within_sec = 2
detect_within_sec = 8
no_false_dead = true
no_duplicate_actions = true
mesh_actions = 1
"#;

/// The report without what depends on the machine.
fn figures(report: &Value) -> Value {
    let mut figures = report.clone();
    figures.as_object_mut().unwrap().remove("run");
    figures
}

#[test]
fn a_seed_gives_the_same_report_and_another_seed_another() {
    let dir = tempfile::tempdir().unwrap();
    let a = run(&dir.path().join("a"), SMALL, &[]);
    let b = run(&dir.path().join("b"), SMALL, &[]);
    let c = run(&dir.path().join("c"), SMALL, &["--seed", "6"]);
    assert_eq!(a.code, 0, "{}", a.stdout);
    assert_eq!(figures(&a.report), figures(&b.report));
    assert_ne!(figures(&a.report), figures(&c.report));
    // What was measured is there: the writes reached every node, the kill was seen by all, the
    // spikes on 5 of 11 nodes were decided and led to one mesh action from one node.
    let writes = a.report["writes"].as_array().unwrap();
    assert_eq!(writes.len(), 3);
    let actions = &a.report["actions"];
    assert_eq!(actions["incidents"], 5 * 4 * 10, "{actions}");
    // Every spike matched both default rules (severity > 1): two node actions each.
    assert_eq!(actions["node_actions"], 2 * 5 * 4 * 10, "{actions}");
    assert_eq!(actions["mesh"].as_array().unwrap().len(), 1, "{actions}");
    assert_eq!(actions["mesh"][0]["sends"].as_array().unwrap().len(), 1);
    assert_eq!(actions["duplicates"], 0);
    assert_eq!(a.report["run"]["evaluation"]["count"], 5 * 4 * 10);
    assert!(writes.iter().all(|w| w["reach_100_ms"].is_number()));
    assert_eq!(a.report["kills"][0]["node"], 11);
    assert_eq!(
        a.report["kills"][0]["observers_ms"]
            .as_array()
            .unwrap()
            .len(),
        11
    );
    assert!(
        a.report["gossip"]["bytes_per_node_per_sec"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn a_failed_expectation_fails_the_run_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing rolls out in a millisecond.
    let text = SMALL.replace("converge_within_sec = 2", "converge_within_sec = 0.001");
    let outcome = run(dir.path(), &text, &[]);
    assert_eq!(outcome.code, 1, "{}", outcome.stdout);
    assert!(
        outcome
            .stdout
            .contains("FAILED every write reaches every node within 0.001 s"),
        "{}",
        outcome.stdout
    );
    let failed: Vec<&Value> = outcome.report["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ok"] == false)
        .collect();
    assert_eq!(failed.len(), 1);
}

#[test]
fn a_bad_scenario_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, SMALL.replace("nodes = [11]", "nodes = [12]")).unwrap();
    let output = mesh_sim()
        .arg("run")
        .arg(&file)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("faults[0].nodes"), "{stderr}");
    assert!(stderr.contains("node 12 does not exist"), "{stderr}");
    assert!(!dir.path().join("out").exists());
}

const REAL: &str = r#"
name = "real-small"
engine = "real"
nodes = 6
seed = 1
duration_sec = 24
sample_ms = 100
[network]
delay_ms = 5
loss = 0.05
[[writes]]
at_sec = 3
node = 0
[[faults]]
at_sec = 6
kind = "partition"
groups = ["0..3", "3..6"]
[[writes]]
at_sec = 7
node = 5
[[faults]]
at_sec = 11
kind = "heal"
[[faults]]
at_sec = 14
kind = "kill"
nodes = [2]
[[faults]]
at_sec = 15
kind = "join"
count = 1
[[writes]]
at_sec = 17
node = 6
[expect]
membership_within_sec = 10
converge_within_sec = 5
detect_within_sec = 8
"#;

/// Real processes, real faults: a write made on one side of a partition (blackhole routes
/// between namespaces) stays on that side until the heal, then reaches everyone; a SIGKILLed
/// node is seen dead; a node that joins later catches up; 5% loss and 5 ms delay under quinn.
#[test]
fn the_real_engine_runs_agents_in_namespaces_with_real_faults() {
    if !can_run_real() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let outcome = run(dir.path(), REAL, &[]);
    assert_eq!(outcome.code, 0, "{}", outcome.stdout);
    let r = &outcome.report;
    assert_eq!(r["engine"], "real");
    // The write made at 7 s on node 5's side: until the heal at 11 s, at most that half (3 of
    // 6) holds it.
    let t = r["series"]["policy_t_ms"].as_array().unwrap();
    let fraction = r["series"]["policy_fraction"][1].as_array().unwrap();
    let before_heal: Vec<f64> = t
        .iter()
        .zip(fraction)
        .filter(|(t, _)| t.as_f64().unwrap() < 10_900.0)
        .map(|(_, f)| f.as_f64().unwrap())
        .collect();
    assert!(
        before_heal.iter().any(|&f| f > 0.0),
        "written: {before_heal:?}"
    );
    assert!(
        before_heal.iter().all(|&f| f <= 0.5),
        "crossed the partition: {before_heal:?}"
    );
    // Its reach is counted from the heal.
    assert!(r["writes"][1]["counted_from_ms"].as_f64().unwrap() >= 11_000.0);
    assert!(r["writes"][1]["reach_100_ms"].is_number());
    assert_eq!(r["kills"][0]["node"], 2);
    assert!(r["kills"][0]["all_seen_ms"].is_number());
    // The node that joined holds the write made on it and everyone else's.
    assert!(r["writes"][2]["reach_100_ms"].is_number());
    assert!(r["gossip"]["bytes_per_node_per_sec"].as_f64().unwrap() > 0.0);
}

/// Each shipped scenario, scaled down to `SCALE` nodes (node indices mapped proportionally),
/// passes its own expectations.
#[test]
fn every_shipped_scenario_passes_at_a_small_scale() {
    const SCALE: usize = 20;
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut ran = 0;
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let mut scenario: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        if scenario["engine"].as_str() == Some("real") && !can_run_real() {
            continue;
        }
        let nodes = scenario["nodes"].as_integer().unwrap() as usize;
        scale(&mut scenario, nodes, SCALE);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let outcome = run(&dir.path().join(&name), &scenario.to_string(), &[]);
        assert_eq!(
            outcome.code, 0,
            "{name} at {SCALE} nodes:\n{}",
            outcome.stdout
        );
        ran += 1;
    }
    assert!(
        ran >= 4,
        "only {ran} scenarios found in {}",
        shipped.display()
    );
}

/// Maps every node index of `scenario` from `from` nodes to `to`.
fn scale(scenario: &mut toml::Table, from: usize, to: usize) {
    let map = |i: i64| (i as usize * to / from) as i64;
    scenario.insert("nodes".into(), toml::Value::Integer(to as i64));
    let set = |v: &mut toml::Value| match v {
        toml::Value::Array(list) => {
            let mut scaled: Vec<i64> = list.iter().map(|i| map(i.as_integer().unwrap())).collect();
            scaled.dedup();
            *list = scaled.into_iter().map(toml::Value::Integer).collect();
        }
        toml::Value::String(text) if text.contains("..") => {
            let (a, b) = text.split_once("..").unwrap();
            let (a, b) = (map(a.parse().unwrap()), map(b.parse().unwrap()));
            *text = format!("{a}..{}", b.max(a + 1));
        }
        _ => {}
    };
    for fault in scenario
        .get_mut("faults")
        .and_then(|f| f.as_array_mut())
        .into_iter()
        .flatten()
    {
        let fault = fault.as_table_mut().unwrap();
        if let Some(count) = fault.get_mut("count") {
            let scaled = (count.as_integer().unwrap() as usize * to / from).max(1);
            *count = toml::Value::Integer(scaled as i64);
        }
        if let Some(nodes) = fault.get_mut("nodes") {
            set(nodes);
        }
        for group in fault
            .get_mut("groups")
            .and_then(|g| g.as_array_mut())
            .into_iter()
            .flatten()
        {
            set(group);
        }
    }
    for stream in scenario
        .get_mut("incidents")
        .and_then(|i| i.as_array_mut())
        .into_iter()
        .flatten()
    {
        if let Some(nodes) = stream.get_mut("nodes") {
            set(nodes);
        }
    }
    for write in scenario
        .get_mut("writes")
        .and_then(|w| w.as_array_mut())
        .into_iter()
        .flatten()
    {
        let node = write.get_mut("node").unwrap();
        *node = toml::Value::Integer(map(node.as_integer().unwrap()));
    }
}

/// The page opens in a browser with no network and draws its plots: Chromium renders it
/// headless, and the DOM it built holds every plot as SVG with the lines drawn.
#[test]
fn the_report_page_renders_its_plots_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = run(dir.path(), SMALL, &[]);
    let page = outcome.dir.join("report.html");
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("this test needs Chromium (Debian: apt-get install chromium; .ci/run installs it)");
    let profile = dir.path().join("profile");
    let headless = |extra: &[&str]| {
        let output = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "chromium: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    let dom = String::from_utf8(headless(&["--dump-dom"]).stdout).unwrap();
    assert_eq!(dom.matches("<svg").count(), 7, "seven plots");
    // Two writes' rollout lines, the kill's detection line, and running / false dead.
    assert!(dom.matches("<polyline").count() >= 5, "lines drawn");
    assert!(dom.contains("<rect"), "bars drawn");
    assert!(dom.contains("small"), "the scenario's name");
    assert!(
        dom.contains("Mesh action sends per second"),
        "the actions plot"
    );
    assert!(
        dom.contains("Evaluations by engine latency"),
        "the latency plot"
    );
    let shot = dir.path().join("report.png");
    headless(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=800,2600",
    ]);
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}
