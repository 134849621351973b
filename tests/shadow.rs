//! Shadow versions, end to end on five real agents in a gossip mesh with an MQTT upstream: a
//! shadow version published at one node is evaluated beside the active version on every node,
//! recorded in each audit ring and counted, never sent as an action; its report counts the
//! disagreements mesh-wide and per node, and lists this node's; promoting it makes it the active
//! version everywhere.
//!
//! Waits are bounded by a generous patience, never asserted on.

use std::time::Duration;

use serde_json::{Value, json};
use test_support::mesh::{Ca, alive_count};
use test_support::mqtt::{self, Consumer, Space};
use test_support::{Agent, event, holds_for, wait_until};

const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until `check` holds on every node.
fn on_every_node(nodes: &[Agent], what: &str, check: impl Fn(&Agent) -> Result<(), String>) {
    test_support::mesh::on_every_node(nodes, PATIENCE, what, check)
}

#[test]
fn a_shadow_version_is_evaluated_everywhere_never_acts_and_counts_its_disagreements() {
    let ca = Ca::new();
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let nodes = test_support::mesh::start(&ca, "shadow", 5, |options, id| {
        space.agent(options, mqtt::broker(), id)
    });
    on_every_node(&nodes, "the mesh", |n| match alive_count(n) {
        5 => Ok(()),
        seen => Err(format!("{seen} alive")),
    });
    for node in &nodes {
        mqtt::wait_health(node, "connected", |h| h["upstream"]["connected"] == true);
    }

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
    let id = created["id"].as_u64().unwrap();
    let path = format!("/policies/{id}");
    on_every_node(&nodes, "the policy", |n| match n.get(&path).0 {
        200 => Ok(()),
        status => Err(format!("{status}")),
    });

    // The shadow version matches from severity 5, with another action.
    let (status, shadow) = nodes[1].post(
        &format!("{path}/shadow"),
        &json!({"definition": {
            "condition": "incident.type == 'memory_leak' and incident.severity >= 5",
            "action": "shadow_only_action"
        }}),
    );
    assert_eq!(status, 201, "{shadow}");
    assert_eq!(shadow["state"], "shadow", "{shadow}");
    let rollout = shadow["id"].as_str().unwrap().to_owned();
    // Each node's engine evaluates the shadow once it says so of itself (its own entry in the
    // rollout's view comes from its engine's set, not from the store).
    on_every_node(&nodes, "the shadow in every engine", |n| {
        let (_, r) = n.get(&format!("/rollouts/{rollout}"));
        let me = r["nodes"]
            .as_array()
            .and_then(|nodes| nodes.first().cloned());
        me.filter(|me| r["state"] == "shadow" && me["runs"] == "active+shadow")
            .map(|_| ())
            .ok_or(r.to_string())
    });
    // The list shows it without its candidate (its size instead); the rollout itself has it.
    let (_, all) = nodes[0].get("/rollouts");
    let listed = all
        .as_array()
        .and_then(|all| all.iter().find(|r| r["id"] == rollout.as_str()))
        .expect("the shadow in /rollouts");
    assert!(listed.get("candidate").is_none(), "{listed}");
    assert!(listed["candidate_bytes"].as_u64() > Some(0), "{listed}");
    let (_, one) = nodes[0].get(&format!("/rollouts/{rollout}"));
    assert_eq!(
        one["candidate"]["policy"]["definition"]["action"], "shadow_only_action",
        "{one}"
    );
    // An ordinary write of the policy waits for the shadow to be promoted or withdrawn.
    let (status, refused) = nodes[2].put(&path, &json!({"priority": 6}));
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "in_rollout", "{refused}");

    // Each node: one incident where the versions disagree, two where they agree.
    for (i, node) in nodes.iter().enumerate() {
        for severity in [6.0, 9.5, 2.0] {
            let (status, answer) = node.post(
                "/evaluate",
                &event(
                    "memory_leak",
                    severity,
                    json!({"node": i, "severity": severity}),
                ),
            );
            assert_eq!(status, 200, "{answer}");
            // The answer is the active version's: the shadow never shows as a verdict.
            assert_eq!(answer.as_array().map(Vec::len), Some(1), "{answer}");
            assert_eq!(answer[0]["matched"], severity >= 9.0, "{answer}");
        }
    }
    // The audit ring holds the shadow's verdict beside the active one's.
    nodes[3].wait_audit_head(3);
    let (_, audit) = nodes[3].get("/audit?limit=3");
    let shadow_of = |entry: &Value| entry["shadow"][0].clone();
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{audit}");
    let disagreeing = entries
        .iter()
        .find(|e| e["input"]["severity"] == 6.0)
        .expect("the severity-6 entry");
    assert_eq!(shadow_of(disagreeing)["matched"], true, "{audit}");
    assert_eq!(shadow_of(disagreeing)["agrees"], false, "{audit}");
    assert_eq!(shadow_of(disagreeing)["rollout_id"], rollout.as_str());
    for entry in entries.iter().filter(|e| e["input"]["severity"] != 6.0) {
        assert_eq!(shadow_of(entry)["agrees"], true, "{audit}");
    }

    // The report: 15 evaluations mesh-wide, 5 disagreements, each node 3 and 1.
    let report = wait_until(PATIENCE, || {
        let (status, report) = nodes[0].get(&format!("{path}/shadow"));
        if status != 200 {
            return Err(report.to_string());
        }
        (report["mesh"]["evaluations"] == 15)
            .then_some(report.clone())
            .ok_or(report.to_string())
    });
    assert_eq!(report["mesh"]["disagreements"], 5, "{report}");
    assert_eq!(report["mesh"]["agreements"], 10, "{report}");
    assert_eq!(report["mesh"]["matches"], 10, "{report}");
    let per_node = report["nodes"].as_array().unwrap();
    assert_eq!(per_node.len(), 5, "{report}");
    for node in per_node {
        assert_eq!(
            (node["evaluations"].as_u64(), node["disagreements"].as_u64()),
            (Some(3), Some(1)),
            "{report}"
        );
    }
    // This node's own disagreement, with its incident.
    let listed = report["disagreements"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{report}");
    assert_eq!(listed[0]["incident"]["context"]["node"], 0, "{report}");
    assert_eq!(listed[0]["shadow_matched"], true);
    assert_eq!(listed[0]["active_matched"], false);

    // Five actions, all the active version's (severity 9.5 on each node); none of the shadow's.
    let actions = consumer.wait_until("the active version's actions", |m| m.len() >= 5);
    holds_for(Duration::from_secs(2), || match consumer.count() {
        5 => Ok(()),
        n => Err(format!("{n} actions: {:?}", consumer.messages())),
    });
    for action in &actions {
        assert_eq!(action["action"], "restart_service", "{action}");
        assert_eq!(action["incident"]["severity"], 9.5, "{action}");
    }

    // Promoted from another node: the shadow becomes the active version everywhere.
    let (status, promoted) = nodes[4].post(&format!("{path}/promote"), &json!({}));
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["state"], "promoted", "{promoted}");
    assert_eq!(promoted["version"], 2, "{promoted}");
    on_every_node(&nodes, "the promoted version", |n| {
        let (_, p) = n.get(&path);
        (p["version"] == 2 && p["definition"]["action"] == "shadow_only_action")
            .then_some(())
            .ok_or(p.to_string())
    });
    on_every_node(&nodes, "the promoted version in the engine", |n| {
        let (_, answer) = n.post(
            "/evaluate?dry_run=true",
            &event("memory_leak", 6.0, json!({})),
        );
        (answer[0]["matched"] == true)
            .then_some(())
            .ok_or(answer.to_string())
    });
    // The policy takes ordinary writes again.
    let (status, body) = nodes[2].put(&path, &json!({"priority": 6}));
    assert_eq!(status, 200, "{body}");
}
