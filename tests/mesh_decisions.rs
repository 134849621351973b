//! Mesh-wide decisions end to end: real `mesh-agent` processes in a gossip mesh with a real broker.
//! A mesh-scoped rule acts once for the mesh when enough nodes see an incident, and not when too
//! few do; when the node that acted dies, the next-ranked node sends the same action (same id);
//! a flapping incident is throttled and the suppression audited; a history rule fires on the third
//! incident, not the second; `?explain=true` names the failing test.
//!
//! Waits are bounded by a generous patience, never asserted on.

use test_support as common;
use test_support::mesh as mesh_ca;
use test_support::mqtt;

use std::time::Duration;

use common::{Agent, Options, event, holds_for, wait_until};
use mesh_ca::Ca;
use mqtt::{Consumer, Space};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);
const CLUSTER: &str = "decisions";

struct Node {
    id: String,
    agent: Agent,
}

/// Starts `n1`..`n<count>`, each with the upstream of `space`, `n1` the seed of the others.
fn start_mesh(ca: &Ca, space: &Space, count: usize) -> Vec<Node> {
    let agents = test_support::mesh::start(ca, CLUSTER, count, |options, id| {
        let options = options
            .env("MESH_AGENT_DECISIONS_PUBLISH_INTERVAL_MS", "200")
            // One window for the whole test: the takeover must fall in the window of the action.
            .env("MESH_AGENT_DECISIONS_WINDOW_SEC", "3600");
        space.agent(options, mqtt::broker(), id)
    });
    agents
        .into_iter()
        .enumerate()
        .map(|(i, agent)| Node {
            id: format!("n{}", i + 1),
            agent,
        })
        .collect()
}

use test_support::mesh::alive_count;

fn mesh_rule() -> Value {
    json!({
        "name": "scale_out_mesh",
        "description": "scale out once when 30% of the mesh sees CPU spikes",
        "definition": {
            "condition": "incident.type == 'cpu_spike' and mesh.fraction_with('cpu_spike') >= 0.3",
            "action": "scale_horizontal",
            "modifiers": {"replicas_delta": 2},
            "reversibility_sec": 600,
            "scope": "mesh"
        },
        "active": true,
        "priority": 10
    })
}

/// How many nodes `node` sees with a `cpu_spike` in the window.
fn nodes_with_spike(node: &Agent) -> u64 {
    let (status, body) = node.get("/mesh/incidents");
    assert_eq!(status, 200, "{body}");
    body["types"]["cpu_spike"]["nodes_with"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_mesh_action_fires_once_when_enough_nodes_see_it_and_moves_when_its_actor_dies() {
    let ca = Ca::new();
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let mut nodes = start_mesh(&ca, &space, 5);
    wait_until(PATIENCE, || {
        let counts: Vec<usize> = nodes.iter().map(|n| alive_count(&n.agent)).collect();
        if counts.iter().all(|&c| c == 5) {
            Ok(())
        } else {
            Err(format!("alive members seen by n1..n5: {counts:?}"))
        }
    });
    for node in &nodes {
        mqtt::wait_health(&node.agent, "connected", |h| {
            h["upstream"]["connected"] == true
        });
    }
    let (status, created) = nodes[0].agent.post("/policies", &mesh_rule());
    assert_eq!(status, 201, "{created}");
    let policy_id = created["id"].as_u64().unwrap();
    wait_until(PATIENCE, || {
        let missing: Vec<&str> = nodes
            .iter()
            .filter(|n| n.agent.get(&format!("/policies/{policy_id}")).0 != 200)
            .map(|n| n.id.as_str())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("the rule has not reached {missing:?}"))
        }
    });

    // 1 of 5 (20%): no node acts.
    let (status, body) = nodes[0]
        .agent
        .post("/evaluate", &event("cpu_spike", 7.0, json!({})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["matched"], false, "{body}");
    // 2 of 5 (40%): once n2 sees n1's spike, its own crosses the threshold.
    wait_until(PATIENCE, || match nodes_with_spike(&nodes[1].agent) {
        1 => Ok(()),
        n => Err(format!("n2 sees {n} nodes with cpu_spike")),
    });
    let (status, body) = nodes[1]
        .agent
        .post("/evaluate", &event("cpu_spike", 8.0, json!({})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["matched"], true, "{body}");

    let first = consumer.wait_until("one scale_horizontal action", |m| !m.is_empty());
    // More spikes in the same window, on both nodes, are the same mesh action: none is sent again.
    for node in &nodes[..2] {
        let (status, body) = node
            .agent
            .post("/evaluate", &event("cpu_spike", 9.0, json!({})));
        assert_eq!(status, 200, "{body}");
    }
    holds_for(Duration::from_secs(3), || match consumer.count() {
        1 => Ok(()),
        n => Err(format!("{n} actions: {:?}", consumer.messages())),
    });
    let action = &first[0];
    assert_eq!(action["action"], "scale_horizontal", "{action}");
    assert_eq!(action["mesh"]["incident_key"], "cpu_spike", "{action}");
    assert_eq!(action["mesh"]["takeover"], false, "{action}");
    let actor = action["node_id"].as_str().unwrap().to_owned();
    let action_id = action["action_id"].as_str().unwrap().to_owned();
    // Every node names the same actor for it.
    wait_until(PATIENCE, || {
        for node in &nodes {
            let (_, body) = node.agent.get("/mesh/incidents");
            let named = body["actions"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["action_id"] == action_id.as_str()))
                .map(|a| a["actor"].clone());
            if named != Some(json!(actor)) {
                return Err(format!("{} names {named:?}, not {actor}", node.id));
            }
        }
        Ok(())
    });

    // The actor dies: the next-ranked alive node sends the same action.
    let index = nodes.iter().position(|n| n.id == actor).unwrap();
    nodes[index].agent.crash();
    let messages = consumer.wait_until("the action taken over by another node", |m| {
        m.iter().any(|a| a["node_id"] != actor.as_str())
    });
    let takeover = messages
        .iter()
        .find(|a| a["node_id"] != actor.as_str())
        .unwrap();
    assert_eq!(takeover["action_id"], action_id.as_str(), "{takeover}");
    assert_eq!(takeover["mesh"]["takeover"], true, "{takeover}");
    assert_eq!(takeover["action"], "scale_horizontal", "{takeover}");
    holds_for(Duration::from_secs(2), || match consumer.count() {
        2 => Ok(()),
        n => Err(format!("{n} actions: {:?}", consumer.messages())),
    });
}

/// One agent with an upstream and the rules `rules`.
fn agent_with(space: &Space, rules: &[Value]) -> Agent {
    let agent = Agent::start(space.agent(Options::default(), mqtt::broker(), "solo"));
    for rule in rules {
        let (status, body) = agent.post("/policies", rule);
        assert_eq!(status, 201, "{body}");
    }
    agent
}

fn rule(name: &str, condition: &str, extra: Value) -> Value {
    let mut definition = json!({
        "condition": condition,
        "action": format!("act_{name}"),
        "reversibility_sec": 0
    });
    for (key, value) in extra.as_object().unwrap() {
        definition[key] = value.clone();
    }
    json!({"name": name, "definition": definition, "active": true, "priority": 1})
}

#[test]
fn a_flapping_incident_is_throttled_and_the_suppression_audited() {
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let agent = agent_with(
        &space,
        &[rule(
            "restart",
            "incident.type == 'service_down'",
            json!({"cooldown_sec": 600}),
        )],
    );
    for _ in 0..3 {
        let (status, body) = agent.post("/evaluate", &event("service_down", 5.0, json!({})));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body[0]["matched"], true, "{body}");
    }
    consumer.wait_until("the first action", |m| !m.is_empty());
    holds_for(Duration::from_secs(2), || match consumer.count() {
        1 => Ok(()),
        n => Err(format!("{n} actions")),
    });
    let (status, audit) = agent.get("/audit?limit=3");
    assert_eq!(status, 200, "{audit}");
    let outcomes: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["results"][0]["action"])
        .collect();
    // Newest first: two suppressed, then the one sent.
    assert_eq!(outcomes[2]["status"], "sent", "{audit}");
    for outcome in &outcomes[..2] {
        assert_eq!(outcome["status"], "suppressed", "{audit}");
        let reason = outcome["reason"].as_str().unwrap();
        assert!(reason.starts_with("cooldown"), "{reason}");
    }
}

#[test]
fn a_history_rule_fires_on_the_third_incident_and_explain_names_the_failing_test() {
    let space = Space::new();
    let agent = agent_with(
        &space,
        &[rule(
            "third_leak",
            "incident.type == 'memory_leak' and history.count('memory_leak', '10m') >= 3",
            json!({}),
        )],
    );
    for (n, want) in [(1, false), (2, false), (3, true)] {
        let (status, body) = agent.post(
            "/evaluate?explain=true",
            &event("memory_leak", 5.0, json!({})),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body[0]["matched"], want, "incident {n}: {body}");
        let explain = &body[0]["explain"];
        assert_eq!(
            explain["decided_by"], "history.count('memory_leak', '10m') >= 3",
            "incident {n}: {explain}"
        );
        let fact = &explain["clauses"][1]["values"][0];
        assert_eq!(
            fact["name"], "history.count('memory_leak', '10m')",
            "{explain}"
        );
        assert_eq!(fact["value"], json!(n as f64), "{explain}");
        assert_eq!(fact["fact"], true, "{explain}");
    }
    // A dry run counts the incident it evaluates but records nothing.
    let (_, body) = agent.post(
        "/evaluate?dry_run=true",
        &event("memory_leak", 5.0, json!({})),
    );
    assert_eq!(body[0]["matched"], true, "{body}");
    let (_, other) = agent.post(
        "/evaluate?explain=true",
        &event("cpu_spike", 5.0, json!({"load": 3})),
    );
    assert_eq!(
        other[0]["explain"]["decided_by"], "incident.type == 'memory_leak'",
        "{other}"
    );
    assert_eq!(
        other[0]["explain"]["clauses"][0]["result"], false,
        "{other}"
    );
}

#[test]
fn rego_rules_see_the_mesh_under_input_mesh() {
    let space = Space::new();
    let agent = agent_with(&space, &[]);
    let module = "package mesh.rules\n\nimport rego.v1\n\ndefault widespread := false\n\n\
                  widespread if input.mesh.incidents[input.type].fraction_with >= 0.5\n\n\
                  alone if input.mesh.nodes_alive == 1\n";
    let (status, body) = agent.put_text("/v1/policies/mesh/rules.rego", module);
    assert_eq!(status, 200, "{body}");
    let rule = json!({
        "name": "widespread",
        "definition": {"rego": "data.mesh.rules.widespread", "action": "act", "cooldown_sec": 0},
        "active": true,
        "priority": 1
    });
    let (status, body) = agent.post("/policies", &rule);
    assert_eq!(status, 201, "{body}");
    // A node alone is the whole mesh: its own incident is 100% of it.
    let (status, body) = agent.post("/evaluate", &event("cpu_spike", 5.0, json!({})));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["matched"], true, "{body}");
    let (_, value) = agent.post(
        "/v1/data/mesh/rules/alone",
        &json!({"input": {"mesh": {"nodes_alive": 1}}}),
    );
    assert_eq!(value["result"], true, "{value}");
}
