//! Safe rollout, end to end on five real agents in a gossip mesh: a rollback made at any node
//! writes the old definition back as a new version, and every node ends up with it: incident
//! policies, Rego modules and data documents alike.
//!
//! Waits are bounded by a generous patience, never asserted on.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::mesh::Ca;
use test_support::{Agent, event, wait_until};

const PATIENCE: Duration = Duration::from_secs(60);

/// `n1`..`n<count>` in one mesh, once every node sees all of them alive.
fn start_mesh(ca: &Ca, count: usize) -> Vec<Agent> {
    let nodes = test_support::mesh::start(ca, "rollout", count, |options, _| options);
    wait_until(PATIENCE, || {
        let alive: Vec<usize> = nodes.iter().map(test_support::mesh::alive_count).collect();
        alive
            .iter()
            .all(|&a| a == count)
            .then_some(())
            .ok_or(format!("alive members seen: {alive:?}"))
    });
    nodes
}

/// Waits until `check` holds on every node.
fn on_every_node(nodes: &[Agent], what: &str, check: impl Fn(&Agent) -> Result<(), String>) {
    test_support::mesh::on_every_node(nodes, PATIENCE, what, check)
}

/// Whether `node`'s engine (not only its store) matches the incident, without recording it.
fn engine_matches(node: &Agent, severity: f64) -> bool {
    let (_, answer) = node.post(
        "/evaluate?dry_run=true",
        &event("memory_leak", severity, json!({})),
    );
    answer[0]["matched"] == true
}

#[test]
fn a_rollback_at_any_node_restores_the_old_definition_on_every_node() {
    let ca = Ca::new();
    let nodes = start_mesh(&ca, 5);

    // An incident policy, changed once, then rolled back to its first version from another node.
    let v1 = json!({
        "name": "restart_on_leak",
        "definition": {
            "condition": "incident.type == 'memory_leak' and incident.severity >= 5",
            "action": "restart_service", "modifiers": {"grace_sec": 5}, "reversibility_sec": 60
        },
        "active": true, "priority": 5
    });
    let (status, created) = nodes[0].post("/policies", &v1);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    let path = format!("/policies/{id}");
    on_every_node(&nodes, "the policy", |n| {
        (n.get(&path).0 == 200)
            .then_some(())
            .ok_or("missing".into())
    });
    let (status, v2) = nodes[1].put(
        &path,
        &json!({"definition": {"condition": "incident.type == 'memory_leak' and incident.severity >= 9"}, "priority": 7}),
    );
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["version"], 2);
    on_every_node(&nodes, "version 2", |n| {
        let (_, p) = n.get(&path);
        (p["version"] == 2).then_some(()).ok_or(p.to_string())
    });
    // The store has it; the engine swaps it in right after the merge.
    on_every_node(&nodes, "version 2 in the engine", |n| {
        (!engine_matches(n, 6.0))
            .then_some(())
            .ok_or("matches".into())
    });
    let (_, matched) = nodes[4].post("/evaluate", &event("memory_leak", 6.0, json!({})));
    assert_eq!(matched[0]["matched"], false, "version 2 wants 9: {matched}");

    let (status, rolled) = nodes[2].post(&format!("{path}/rollback"), &json!({"version": 1}));
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(
        rolled["version"], 3,
        "a rollback is a new version: {rolled}"
    );
    assert_eq!(rolled["definition"], created["definition"], "{rolled}");
    assert_eq!(rolled["priority"], 5);
    on_every_node(&nodes, "the rolled-back policy", |n| {
        let (_, p) = n.get(&path);
        (p["version"] == 3 && p["definition"] == created["definition"] && p["priority"] == 5)
            .then_some(())
            .ok_or(p.to_string())
    });
    on_every_node(&nodes, "version 3 in the engine", |n| {
        engine_matches(n, 6.0)
            .then_some(())
            .ok_or("does not match".into())
    });
    for node in &nodes {
        let (_, answer) = node.post("/evaluate", &event("memory_leak", 6.0, json!({})));
        assert_eq!(answer[0]["matched"], true, "version 1 again: {answer}");
    }
    let (_, history) = nodes[3].get(&format!("{path}/versions"));
    let versions: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["policy"]["version"])
        .collect();
    assert_eq!(versions, vec![&json!(1), &json!(2), &json!(3)], "{history}");

    // Replay, before anything is changed: n5 recorded the incident twice, unmatched under
    // version 2 and matched under version 3; a stricter condition would un-match the second.
    // (Replay reads what the ring has committed.)
    let head = nodes[4].wait_audit_head(2)["head"].clone();
    let (status, report) = nodes[4].post(
        &format!("{path}/replay"),
        &json!({"definition": {"condition": "incident.type == 'memory_leak' and incident.severity >= 9"}}),
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["replayed"], 2, "{report}");
    assert_eq!(report["matched_then"], 1, "{report}");
    assert_eq!(report["matched_now"], 0, "{report}");
    assert_eq!(report["no_longer_matching"], 1, "{report}");
    // Against the stored definition replayed the same way, the change un-matches both.
    assert_eq!(report["differs_from_stored"], 2, "{report}");
    assert_eq!(report["truncated"], false, "{report}");
    assert_eq!(report["changes"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["changes"][0]["recorded"], true, "{report}");
    assert_eq!(
        report["changes"][0]["event_type"], "memory_leak",
        "{report}"
    );
    // The stored definition replayed as it is changes nothing for the incident it matched.
    let (_, same) = nodes[4].post(&format!("{path}/replay"), &json!({}));
    assert_eq!(same["matched_now"], 2, "{same}");
    assert_eq!(
        same["newly_matching"], 1,
        "the one version 2 missed: {same}"
    );
    // A policy not created yet: what it would have matched.
    let (status, fresh) = nodes[4].post(
        "/policies/replay",
        &json!({"definition": {"condition": "incident.severity >= 1", "action": "page", "modifiers": {}, "reversibility_sec": 0}}),
    );
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["newly_matching"], 2, "{fresh}");
    let (status, bad) = nodes[4].post(
        &format!("{path}/replay"),
        &json!({"definition": {"condition": "incident.severity >>> 1"}}),
    );
    assert_eq!(status, 422, "{bad}");
    // Nothing was recorded or changed by the replays.
    assert_eq!(nodes[4].get(&path).1["version"], 3);
    assert_eq!(
        nodes[4].get("/audit?limit=1").1["head"],
        head,
        "a replay recorded something"
    );

    // What cannot be rolled back says why.
    let (status, body) = nodes[0].post(&format!("{path}/rollback"), &json!({"version": 99}));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "version", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has 1, 2, 3"),
        "{body}"
    );
    let (status, _) = nodes[0].post("/policies/424242/rollback", &json!({"version": 1}));
    assert_eq!(status, 404);
    let (status, _) = nodes[0].post(&format!("{path}/rollback"), &json!({"version": "one"}));
    assert_eq!(status, 422);

    // A Rego module and a data document, the same way.
    let module = |user: &str| {
        format!(
            "package authz\nimport rego.v1\ndefault allow := false\nallow if input.user == \"{user}\"\n"
        )
    };
    let allowed = |n: &Agent, user: &str| {
        n.post("/v1/data/authz/allow", &json!({"input": {"user": user}}))
            .1["result"]
            == true
    };
    // Version 1 everywhere before version 2 is written (two first versions written at once on
    // two nodes are a conflict the mesh settles, not a history of two versions).
    assert_eq!(
        nodes[0].put_text("/v1/policies/authz", &module("ops")).0,
        200
    );
    assert_eq!(nodes[0].put("/v1/data/limits", &json!({"max": 1})).0, 204);
    on_every_node(&nodes, "module and data version 1", |n| {
        (allowed(n, "ops") && n.get("/v1/data/limits").1["result"] == json!({"max": 1}))
            .then_some(())
            .ok_or("not yet".into())
    });
    assert_eq!(
        nodes[1].put_text("/v1/policies/authz", &module("admin")).0,
        200
    );
    assert_eq!(nodes[1].put("/v1/data/limits", &json!({"max": 2})).0, 204);
    on_every_node(&nodes, "module and data version 2", |n| {
        (allowed(n, "admin") && n.get("/v1/data/limits").1["result"] == json!({"max": 2}))
            .then_some(())
            .ok_or("not yet".into())
    });
    let (status, versions) = nodes[2].get("/rego/versions?module=authz");
    assert_eq!(status, 200, "{versions}");
    assert_eq!(
        versions["result"].as_array().unwrap().len(),
        2,
        "{versions}"
    );
    let (status, body) = nodes[3].post("/rego/rollback", &json!({"module": "authz", "version": 1}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = nodes[4].post("/rego/rollback", &json!({"data": "limits", "version": 1}));
    assert_eq!(status, 200, "{body}");
    on_every_node(&nodes, "module and data version 1", |n| {
        (allowed(n, "ops")
            && !allowed(n, "admin")
            && n.get("/v1/data/limits").1["result"] == json!({"max": 1}))
        .then_some(())
        .ok_or("not yet".into())
    });
    let (status, body) = nodes[0].post("/rego/rollback", &json!({"module": "authz", "version": 7}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("no version 7"),
        "{body}"
    );
    let (status, _) = nodes[0].post("/rego/rollback", &json!({"version": 1}));
    assert_eq!(status, 400, "a document must be named");
}
