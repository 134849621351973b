//! What operators read, checked against a busy agent: three real agents in a mesh with a real
//! broker, node and mesh rules matching, Rego decisions, rejected events, a refused token. Then
//! `promtool check metrics` accepts the scrape, `promtool check rules` the alert rules, and every
//! query of the Grafana dashboard names only metrics the agent exports, with the panels the P0.4
//! document asks for.
//!
//! Needs `promtool` (Debian: `prometheus`); `.ci/run` installs it.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use test_support::mesh::Ca;
use test_support::mqtt::{self, Space};
use test_support::{Agent, Options, event, wait_until};

const PATIENCE: Duration = Duration::from_secs(60);

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn promtool() -> &'static str {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "promtool is not installed (Debian: apt-get install prometheus); .ci/run installs it"
    );
    "promtool"
}

/// Three nodes with the upstream of `space`; `n1` the seed.
fn start_mesh(ca: &Ca, space: &Space) -> Vec<Agent> {
    test_support::mesh::start(ca, "observability", 3, |options, id| {
        space.agent(
            options.env("MESH_AGENT_DECISIONS_PUBLISH_INTERVAL_MS", "200"),
            mqtt::broker(),
            id,
        )
    })
}

fn scrape(agent: &Agent) -> String {
    reqwest::blocking::Client::new()
        .get(agent.url("/metrics"))
        .header("accept", "text/plain")
        .send()
        .and_then(|r| r.text())
        .expect("metrics")
}

/// The metric names a scrape exports: each family, with the sample names its type has.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The metric names a PromQL expression reads: identifiers followed by a selector or a range,
/// leaving out functions, keywords, labels and durations.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut depth_braces = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '{' {
            depth_braces += 1;
        } else if c == '}' {
            depth_braces -= 1;
        } else if c == '"' {
            // Skip a string literal.
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
        } else if (c.is_ascii_alphabetic() || c == '_') && depth_braces == 0 {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &expr[start..i];
            let before = expr[..start].trim_end();
            let next = expr[i..].trim_start().chars().next();
            let is_call = next == Some('(');
            let is_label_list =
                before.ends_with("by (") || before.ends_with("by(") || before.ends_with(',');
            let keyword = matches!(
                word,
                "by" | "without"
                    | "on"
                    | "ignoring"
                    | "group_left"
                    | "group_right"
                    | "and"
                    | "or"
                    | "unless"
                    | "offset"
                    | "bool"
                    // Aggregations, which may come before their `by (...)`.
                    | "sum"
                    | "min"
                    | "max"
                    | "avg"
                    | "count"
                    | "group"
                    | "stddev"
                    | "stdvar"
                    | "topk"
                    | "bottomk"
                    | "quantile"
                    | "count_values"
            );
            let duration = start > 0 && bytes[start - 1].is_ascii_digit();
            if !is_call && !keyword && !is_label_list && !duration {
                names.push(word.to_string());
            }
            continue;
        }
        i += 1;
    }
    names
}

#[test]
fn a_busy_agents_metrics_pass_promtool_and_feed_every_dashboard_panel() {
    let promtool = promtool();
    let ca = Ca::new();
    let space = Space::new();
    let nodes = start_mesh(&ca, &space);
    wait_until(PATIENCE, || {
        let alive = test_support::mesh::alive_count(&nodes[0]);
        (alive == 3).then_some(()).ok_or(format!("{alive} alive"))
    });
    for node in &nodes {
        mqtt::wait_health(node, "connected", |h| h["upstream"]["connected"] == true);
    }
    let busy = &nodes[0];
    let node_rule = json!({
        "name": "restart_on_leak",
        "definition": {
            "condition": "incident.type == 'memory_leak' and incident.severity >= 5",
            "action": "restart_service", "modifiers": {}, "reversibility_sec": 60
        },
        "active": true, "priority": 5
    });
    let mesh_rule = json!({
        "name": "scale_out_mesh",
        "definition": {
            "condition": "incident.type == 'cpu_spike' and mesh.fraction_with('cpu_spike') >= 0.3",
            "action": "scale_horizontal", "modifiers": {}, "reversibility_sec": 600,
            "scope": "mesh"
        },
        "active": true, "priority": 10
    });
    for rule in [&node_rule, &mesh_rule] {
        let (status, body) = busy.post("/policies", rule);
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = busy.put_text(
        "/v1/policies/authz",
        "package authz\nimport rego.v1\ndefault allow := false\nallow if input.user == \"ops\"\n",
    );
    assert_eq!(status, 200, "{body}");
    wait_until(PATIENCE, || {
        let revisions: Vec<Value> = nodes
            .iter()
            .map(|n| n.get("/policies").1.as_array().map_or(0, Vec::len).into())
            .collect();
        revisions
            .iter()
            .all(|t| t == &json!(2))
            .then_some(())
            .ok_or(format!("policies per node: {revisions:?}"))
    });
    for i in 0..50 {
        let (status, _) = busy.post("/evaluate", &event("memory_leak", 7.0, json!({"i": i})));
        assert_eq!(status, 200);
        busy.post("/v1/data/authz/allow", &json!({"input": {"user": "ops"}}));
    }
    let (status, _) = busy.post("/evaluate", &event("cpu_spike", 9.0, json!({})));
    assert_eq!(status, 200);
    let (status, _) = busy.post_raw("/evaluate", "{\"event_type\": 3}");
    assert_eq!(status, 422);
    // The mesh rule matched on the busy node: it sent the action, or left it to the node ranked
    // first.
    wait_until(PATIENCE, || {
        let text = scrape(busy);
        text.lines()
            .filter(|l| l.starts_with("decision_actions_total{scope=\"mesh\""))
            .any(|l| !l.ends_with(" 0"))
            .then_some(())
            .ok_or(text)
    });

    let text = scrape(busy);
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\nscrape:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("mesh_agent_build_info{version=")),
        "{text}"
    );

    let rules = Command::new(promtool)
        .args(["check", "rules"])
        .arg(repo().join("deploy/alerts.yml"))
        .output()
        .unwrap();
    assert!(
        rules.status.success(),
        "{}{}",
        String::from_utf8_lossy(&rules.stdout),
        String::from_utf8_lossy(&rules.stderr)
    );

    // The dashboard: every query reads metrics the agent exports, and P0.4's panels are there.
    let names = exported(&text);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut titles = Vec::new();
    let mut exprs = vec![
        dashboard["templating"]["list"][1]["query"]
            .as_str()
            .unwrap()
            .replace("label_values(", "")
            .replace(", instance)", ""),
    ];
    for panel in dashboard["panels"].as_array().unwrap() {
        titles.push(panel["title"].as_str().unwrap().to_lowercase());
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for expr in &exprs {
        let read = metric_names(expr);
        assert!(!read.is_empty(), "no metric found in `{expr}`");
        for name in read {
            assert!(
                names.contains(&name),
                "the dashboard reads `{name}` (in `{expr}`), which the agent does not export; it exports {names:?}"
            );
        }
    }
    for wanted in [
        "evaluations per minute",
        "average",
        "p95",
        "match rate",
        "action rate",
        "error rate",
        "members by state",
        "revision per node",
        "outbox depth",
        "mesh actions",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no dashboard panel for {wanted}: {titles:?}"
        );
    }
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(
            "sum by (policy_name) (rate(policy_evaluations_total{instance=~\"$instance\"}[1m])) / max(up)"
        ),
        vec!["policy_evaluations_total", "up"]
    );
    assert_eq!(
        metric_names("histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m])))"),
        vec!["x_bucket"]
    );
}

/// Each decision log line of `text` (standard output, mixed with the agent's own log lines).
fn decision_logs(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|line| line.starts_with('{'))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|doc| doc.get("decision_id").is_some())
        .collect()
}

#[test]
fn decisions_are_logged_in_opas_shape_with_masked_fields_to_the_journal_and_to_mqtt() {
    let space = Space::new();
    let topic = format!("{}decision_logs", space.prefix);
    let consumer = test_support::mqtt::Consumer::subscribe(&space.client_id("logs"), &topic);
    let journal = Agent::start(
        Options::default()
            .node_id("journal-node")
            .env("MESH_AGENT_DECISION_LOGS_SINK", "journal")
            .env(
                "MESH_AGENT_DECISION_LOGS_MASK",
                "/input/password,/input/user/ssn",
            ),
    );
    let mqtt_node = Agent::start(
        space.agent(
            Options::default()
                .node_id("mqtt-node")
                .env("MESH_AGENT_DECISION_LOGS_SINK", "mqtt")
                .env("MESH_AGENT_DECISION_LOGS_TOPIC", &topic)
                .env("MESH_AGENT_DECISION_LOGS_MASK", "/input/password"),
            mqtt::broker(),
            "mqtt-node",
        ),
    );
    for agent in [&journal, &mqtt_node] {
        let (status, body) = agent.put_text(
            "/v1/policies/authz",
            "package authz\nimport rego.v1\ndefault allow := false\nallow if input.user.name == \"ops\"\n",
        );
        assert_eq!(status, 200, "{body}");
    }
    let input = json!({"input": {"user": {"name": "ops", "ssn": "123-45"}, "password": "hunter2"}});
    let (status, answer) = journal.post("/v1/data/authz/allow", &input);
    assert_eq!(status, 200, "{answer}");
    let (status, _) = journal.post(
        "/evaluate",
        &event("memory_leak", 7.0, json!({"host": "a"})),
    );
    assert_eq!(status, 200);

    let logs = wait_until(PATIENCE, || {
        let logs = decision_logs(&journal.log_text());
        (logs.len() >= 2)
            .then(|| logs.clone())
            .ok_or(journal.log_text())
    });
    let opa = logs
        .iter()
        .find(|l| l["path"] == "authz/allow")
        .expect("the OPA decision is logged");
    assert_eq!(opa["decision_id"], answer["decision_id"], "{opa}");
    assert_eq!(opa["result"], json!(true));
    assert_eq!(
        opa["input"],
        json!({"user": {"name": "ops"}}),
        "masked: {opa}"
    );
    assert_eq!(opa["erased"], json!(["/input/password", "/input/user/ssn"]));
    assert_eq!(opa["labels"]["id"], "journal-node");
    for key in ["timestamp", "metrics", "revision", "bundles"] {
        assert!(opa.get(key).is_some(), "{key} missing: {opa}");
    }
    assert!(!journal.log_text().contains("hunter2"));
    let incident = logs
        .iter()
        .find(|l| l["path"] == "mesh_agent/incidents")
        .expect("the incident decision is logged");
    assert_eq!(incident["input"]["event_type"], "memory_leak", "{incident}");

    // Through the outbox to the broker.
    let (status, answer) = mqtt_node.post("/v1/data/authz/allow", &input);
    assert_eq!(status, 200, "{answer}");
    let received = consumer.wait_until("the decision log", |messages| {
        messages
            .iter()
            .any(|m| m["decision_id"] == answer["decision_id"])
    });
    let log = received
        .iter()
        .find(|m| m["decision_id"] == answer["decision_id"])
        .unwrap();
    assert_eq!(log["path"], "authz/allow");
    assert!(log["input"].get("password").is_none(), "{log}");
    assert_eq!(
        log["input"]["user"]["ssn"], "123-45",
        "only what is masked goes"
    );
    // Counted once committed to the outbox, which may be a moment after the broker has it.
    wait_until(PATIENCE, || {
        let metrics = mqtt_node.metrics();
        metrics
            .lines()
            .any(|l| l.starts_with("decision_logs_total{sink=\"mqtt\"}") && !l.ends_with(" 0"))
            .then_some(())
            .ok_or(metrics)
    });
}
