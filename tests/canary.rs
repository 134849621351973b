//! Canary rollouts, end to end on five real agents in a gossip mesh: a change with a canary plan
//! runs first on the nodes its rendezvous hash picks; one whose evaluations fail there is reverted
//! on every node and marked failed with the reason, one that stays healthy is written everywhere
//! after its bake time; and a rollout goes on when the node that started it is killed, and that
//! node, restarted, ends with the rest.
//!
//! Waits are bounded by a generous patience, never asserted on.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::mesh::{Ca, alive_count};
use test_support::{Agent, wait_until};

const PATIENCE: Duration = Duration::from_secs(90);

/// A rule path every node decides: healthy at first.
const HEALTHY: &str = "package canary.gate\n\nimport rego.v1\n\nresult := {\"allow\": true, \"violations\": [], \"warnings\": [], \"rev\": 1}\n";
/// The same rule, changed and still healthy.
const HEALTHY_V2: &str = "package canary.gate\n\nimport rego.v1\n\nresult := {\"allow\": true, \"violations\": [], \"warnings\": [], \"rev\": 2}\n";
/// The same rule, changed so that every evaluation runs past the time limit.
const FAILING: &str = "package canary.gate\n\nimport rego.v1\n\nresult := {\"allow\": count([[x, y] | some x in numbers.range(1, 20000); some y in numbers.range(1, 20000)]) > 0, \"violations\": [], \"warnings\": [], \"rev\": 3}\n";

/// `n1`..`n5` in one mesh, once every node sees all of them alive, with the healthy module.
fn start_mesh(ca: &Ca, cluster: &str) -> Vec<Agent> {
    let nodes = test_support::mesh::start(ca, cluster, 5, |options, _| {
        options.env("MESH_AGENT_REGO_TIME_LIMIT_MS", "300")
    });
    on_every_node(&nodes, "the mesh", |n| match alive_count(n) {
        5 => Ok(()),
        seen => Err(format!("{seen} alive")),
    });
    let (status, body) = nodes[0].put_text("/v1/policies/gate", HEALTHY);
    assert_eq!(status, 200, "{body}");
    on_every_node(&nodes, "the healthy module", |n| match rev(n) {
        Some(1) => Ok(()),
        other => Err(format!("rev {other:?}")),
    });
    nodes
}

/// Waits until `check` holds on every node.
fn on_every_node(nodes: &[Agent], what: &str, check: impl Fn(&Agent) -> Result<(), String>) {
    test_support::mesh::on_every_node(nodes, PATIENCE, what, check)
}

/// Which revision of the gate answers on `node`: `None` when its evaluation failed. Each call has
/// an input of its own, so none is answered from the decision cache (a canary counts evaluations).
fn rev(node: &Agent) -> Option<u64> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = node.post(
        "/v1/data/canary/gate/result",
        &json!({"input": {"call": call}}),
    );
    if status != 200 || body.get("error").is_some() {
        return None;
    }
    body["result"]["rev"].as_u64()
}

fn start_canary(node: &Agent, module: &str, bake_sec: u64) -> (Value, String) {
    let (status, rollout) = node.post(
        "/rollouts",
        &json!({
            "subject": {"kind": "rego_module", "id": "gate"},
            "module": module,
            // The canary nodes must have decided something: a canary is judged by evidence.
            "canary": {"fraction": 0.4, "bake_sec": bake_sec, "min_canary_evaluations": 3}
        }),
    );
    assert_eq!(status, 202, "{rollout}");
    assert_eq!(rollout["state"], "baking", "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_owned();
    (rollout, id)
}

/// The canary nodes' indexes (0-based) in `nodes`.
fn canary_nodes(rollout: &Value) -> Vec<usize> {
    let chosen: Vec<usize> = rollout["plan"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap()[1..].parse::<usize>().unwrap() - 1)
        .collect();
    assert_eq!(chosen.len(), 2, "40% of 5 nodes: {rollout}");
    chosen
}

#[test]
fn a_canary_whose_evaluations_fail_is_reverted_everywhere() {
    let ca = Ca::new();
    let nodes = start_mesh(&ca, "canary-fail");
    // A long bake: only a failure ends this rollout in time.
    let (rollout, id) = start_canary(&nodes[0], FAILING, 3_600);
    let canaries = canary_nodes(&rollout);
    // The canary nodes run the candidate (their decisions fail); the others the version before.
    for (i, node) in nodes.iter().enumerate() {
        if canaries.contains(&i) {
            wait_until(PATIENCE, || match rev(node) {
                None => Ok(()),
                Some(rev) => Err(format!("n{} still answers rev {rev}", i + 1)),
            });
        } else {
            assert_eq!(rev(node), Some(1), "n{} is not a canary node", i + 1);
        }
    }
    // The coordinator sees the canary nodes' failures rise and fails the rollout; every node
    // then runs the previous version again. (Callers keep asking the canary nodes meanwhile.)
    on_every_node(&nodes, "the failed rollout", |n| {
        for &i in &canaries {
            rev(&nodes[i]);
        }
        let (_, r) = n.get(&format!("/rollouts/{id}"));
        (r["state"] == "failed").then_some(()).ok_or(r.to_string())
    });
    let (_, failed) = nodes[3].get(&format!("/rollouts/{id}"));
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("failures rose"), "{failed}");
    // "... failed (N errors, T time limits, F fail-mode answers) ...": the failures were time
    // limits, answered by the fail mode.
    let count_before = |what: &str| -> u64 {
        let at = reason
            .find(what)
            .unwrap_or_else(|| panic!("{what} in {reason}"));
        reason[..at]
            .split_whitespace()
            .last()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count before {what} in {reason}"))
    };
    assert!(count_before(" time limits") > 0, "{failed}");
    assert!(count_before(" fail-mode answers") > 0, "{failed}");
    on_every_node(&nodes, "the previous version", |n| match rev(n) {
        Some(1) => Ok(()),
        other => Err(format!("rev {other:?}")),
    });
    // Nothing was written: the module is at its first version, with its first text.
    for node in &nodes {
        let (_, module) = node.get("/v1/policies/gate");
        assert_eq!(module["result"]["raw"], HEALTHY, "{module}");
    }
    let (_, view) = nodes[1].get(&format!("/rollouts/{id}"));
    for node in view["nodes"].as_array().unwrap() {
        assert_eq!(node["runs"], "previous", "{view}");
    }
    // Ordinary writes of the module are allowed again.
    let (status, body) = nodes[2].put_text("/v1/policies/gate", HEALTHY_V2);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_healthy_canary_completes_and_survives_the_death_of_the_node_that_started_it() {
    let ca = Ca::new();
    let mut nodes = start_mesh(&ca, "canary-ok");
    // Started at n3, which is killed at once; the rollout lives in every node's store.
    let (rollout, id) = start_canary(&nodes[2], HEALTHY_V2, 8);
    let canaries = canary_nodes(&rollout);
    let (status, refused) = nodes[2].put_text("/v1/policies/gate", FAILING);
    assert_eq!(
        status, 409,
        "a baking module takes no ordinary write: {refused}"
    );
    on_every_node(&nodes, "the rollout", |n| {
        let (status, r) = n.get(&format!("/rollouts/{id}"));
        (status == 200).then_some(()).ok_or(r.to_string())
    });
    nodes[2].crash();
    let alive: Vec<usize> = vec![0, 1, 3, 4];
    // While it bakes, the canary nodes answer with the candidate and the others with the
    // previous version (the view says which node runs which).
    for &i in &alive {
        if canaries.contains(&i) {
            wait_until(PATIENCE, || match rev(&nodes[i]) {
                Some(2) => Ok(()),
                other => Err(format!("n{}: rev {other:?}", i + 1)),
            });
        }
    }
    // What each live node reports it runs reaches the others by gossip: wait for it.
    wait_until(PATIENCE, || {
        let (_, view) = nodes[alive[0]].get(&format!("/rollouts/{id}"));
        if view["state"] != "baking" {
            return Ok(());
        }
        let wrong: Vec<String> = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|node| {
                let index = node["node"].as_str()?[1..].parse::<usize>().ok()? - 1;
                let expected = if canaries.contains(&index) {
                    "candidate"
                } else {
                    "previous"
                };
                (alive.contains(&index) && node["runs"] != expected)
                    .then(|| format!("{}: {} (not {expected})", node["node"], node["runs"]))
            })
            .collect();
        wrong.is_empty().then_some(()).ok_or(format!("{wrong:?}"))
    });
    let survivors: Vec<&Agent> = alive.iter().map(|&i| &nodes[i]).collect();
    wait_until(PATIENCE, || {
        // Callers keep deciding on every live node while it bakes.
        for node in &survivors {
            rev(node);
        }
        let views: Vec<Value> = survivors
            .iter()
            .map(|n| n.get(&format!("/rollouts/{id}")).1)
            .collect();
        let states: Vec<&Value> = views.iter().map(|v| &v["state"]).collect();
        if let Some(failed) = views.iter().find(|v| v["state"] == "failed") {
            panic!("the healthy canary failed: {failed}");
        }
        states
            .iter()
            .all(|s| *s == "completed")
            .then_some(())
            .ok_or(format!("states: {states:?}"))
    });
    let (_, done) = survivors[0].get(&format!("/rollouts/{id}"));
    assert_eq!(done["version"], 2, "{done}");
    assert_ne!(done["by"], "n3", "n3 was dead when it completed: {done}");
    for node in &survivors {
        assert_eq!(rev(node), Some(2));
        let (_, module) = node.get("/v1/policies/gate");
        assert_eq!(module["result"]["raw"], HEALTHY_V2, "{module}");
    }
    // The node that started it comes back to the same end.
    // (As a canary node it may answer with the candidate from its own store before it has
    // pulled the end: wait for the end.)
    nodes[2].restart();
    wait_until(PATIENCE, || {
        let (_, seen) = nodes[2].get(&format!("/rollouts/{id}"));
        match (seen["state"].as_str(), rev(&nodes[2])) {
            (Some("completed"), Some(2)) => Ok(()),
            other => Err(format!("n3: {other:?}")),
        }
    });
    let (_, module) = nodes[2].get("/v1/policies/gate");
    assert_eq!(module["result"]["raw"], HEALTHY_V2, "{module}");
}

#[test]
fn a_policy_change_with_a_rollout_plan_is_a_canary() {
    let ca = Ca::new();
    let nodes = start_mesh(&ca, "canary-policy");
    let (status, created) = nodes[0].post(
        "/policies",
        &json!({
            "name": "restart_on_leak",
            "definition": {
                "condition": "incident.type == 'memory_leak' and incident.severity >= 9",
                "action": "restart_service", "reversibility_sec": 60
            },
            "active": true, "priority": 5
        }),
    );
    assert_eq!(status, 201, "{created}");
    let path = format!("/policies/{}", created["id"]);
    on_every_node(&nodes, "the policy", |n| match n.get(&path).0 {
        200 => Ok(()),
        status => Err(format!("{status}")),
    });
    let (status, rollout) = nodes[1].put(
        &path,
        &json!({
            "definition": {"condition": "incident.type == 'memory_leak' and incident.severity >= 5"},
            "rollout": {"fraction": 0.4, "bake_sec": 4, "min_canary_evaluations": 2}
        }),
    );
    assert_eq!(status, 202, "{rollout}");
    assert_eq!(rollout["subject"]["kind"], "policy", "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_owned();
    let matches = |n: &Agent| {
        let (_, answer) = n.post(
            "/evaluate?dry_run=true",
            &test_support::event("memory_leak", 6.0, json!({})),
        );
        answer[0]["matched"] == true
    };
    let canaries = canary_nodes(&rollout);
    // While it bakes, the canary nodes match from severity 5, the others from 9.
    for &i in &canaries {
        wait_until(PATIENCE, || {
            let (_, r) = nodes[i].get(&format!("/rollouts/{id}"));
            (matches(&nodes[i]) || r["state"] != "baking")
                .then_some(())
                .ok_or(format!("n{} does not run the candidate: {r}", i + 1))
        });
    }
    on_every_node(&nodes, "the completed rollout", |n| {
        // Incidents keep coming (recorded, so the canary nodes have evaluated something).
        n.post(
            "/evaluate",
            &test_support::event("memory_leak", 6.0, json!({})),
        );
        let (_, r) = n.get(&format!("/rollouts/{id}"));
        (r["state"] == "completed")
            .then_some(())
            .ok_or(r.to_string())
    });
    on_every_node(&nodes, "version 2 everywhere", |n| {
        let (_, p) = n.get(&path);
        (p["version"] == 2 && matches(n))
            .then_some(())
            .ok_or(p.to_string())
    });
}
