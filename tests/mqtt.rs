//! MQTT end to end: incidents in over a real broker, actions out to it, nothing lost across broker
//! outages and agent crashes, the outbox bound in both modes, the circuit breaker, and the
//! collector. The broker is rumqttd in-process, or the one `MESH_TEST_MQTT_URL` names (Mosquitto in
//! `.ci/run`); see `support/src/mqtt.rs`.

use test_support as common;
use test_support::mqtt;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use agent_decision::action_id;
use common::{Agent, Options, event, policy};
use mqtt::{Consumer, Proxy, Space, metric, wait_health};
use serde_json::{Value, json};

/// An agent with one policy matching `memory_leak` incidents; its id and version.
fn agent_with_policy(options: Options) -> (Agent, u64) {
    let agent = Agent::start(options);
    let (status, created) = agent.post(
        "/policies",
        &policy("leak", "incident.type == 'memory_leak'", 10),
    );
    assert_eq!(status, 201, "{created}");
    (agent, created["id"].as_u64().expect("policy id"))
}

fn leak(event_id: &str) -> Value {
    let mut e = event("memory_leak", 9.0, json!({"service": "payment-api"}));
    e["event_id"] = json!(event_id);
    e
}

/// POSTs matching incidents `ev-{from}`..`ev-{to - 1}`; each answer comes after its commit.
fn post_incidents(agent: &Agent, from: usize, to: usize) {
    for i in from..to {
        let (status, body) = agent.post("/evaluate", &leak(&format!("ev-{i}")));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body[0]["matched"], true, "{body}");
    }
}

fn expected_ids(node: &str, policy_id: u64, range: std::ops::Range<usize>) -> BTreeSet<String> {
    range
        .map(|i| action_id(node, &format!("ev-{i}"), policy_id, 1))
        .collect()
}

#[test]
fn incident_in_over_mqtt_becomes_an_action_with_every_field() {
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let (agent, policy_id) =
        agent_with_policy(space.agent(Options::default(), mqtt::broker(), "agent"));
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    // Subscription is asynchronous: publish until the intake has taken one incident.
    let incident = json!({
        "event_type": "memory_leak", "severity": 9,
        "context": {"service": "payment-api", "memory_usage_mb": 8192},
        "timestamp": "2025-10-20T12:00:00", "event_id": "inc-1"
    });
    let no_match = json!({"event_type": "cpu_spike", "severity": 3, "event_id": "inc-2"});
    let deadline = Instant::now() + mqtt::PATIENCE;
    while consumer.count() == 0 {
        mqtt::publish(
            &space.client_id("monitor"),
            &space.incident_topic(),
            &[
                no_match.to_string().into_bytes(),
                incident.to_string().into_bytes(),
            ],
        );
        assert!(
            Instant::now() < deadline,
            "no action:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let action = consumer.messages()[0].clone();
    assert_eq!(
        action["action_id"],
        action_id("test-node", "inc-1", policy_id, 1)
    );
    assert_eq!(action["node_id"], "test-node");
    assert_eq!(action["policy_id"], policy_id);
    assert_eq!(action["policy_name"], "leak");
    assert_eq!(action["policy_version"], 1);
    assert_eq!(action["action"], "act_leak");
    assert_eq!(action["modifiers"], json!({"k": "leak"}));
    assert_eq!(action["reversibility_sec"], 60);
    assert_eq!(action["incident"]["event_id"], "inc-1");
    assert_eq!(action["incident"]["event_type"], "memory_leak");
    assert_eq!(action["incident"]["severity"], 9.0);
    assert_eq!(action["incident"]["context"]["memory_usage_mb"], 8192);
    assert_eq!(action["incident"]["timestamp"], "2025-10-20T12:00:00");
    let decided = action["decided_at"].as_str().expect("decided_at");
    assert!(decided.ends_with('Z') && decided.contains('T'), "{decided}");
    // Only matched rules become actions: every message is for inc-1 (resends keep its id).
    for m in consumer.messages() {
        assert_eq!(m["action_id"], action["action_id"], "{m}");
    }
    // Both incidents are audited like /evaluate's.
    let (_, audit) = agent.get("/audit?limit=100");
    let ids: BTreeSet<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert!(ids.contains("inc-1") && ids.contains("inc-2"), "{audit}");
    wait_health(&agent, "outbox drained", |h| {
        h["upstream"]["outbox_depth"] == 0
    });
}

/// A matching incident whose event JSON is about `size` bytes (its context carries the bulk).
fn leak_of_size(event_id: &str, size: usize) -> Value {
    let mut e = leak(event_id);
    e["context"]["blob"] = json!("x".repeat(size));
    e
}

#[test]
fn malformed_payloads_are_rejected_and_the_intake_carries_on() {
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let options = space
        .agent(Options::default(), mqtt::broker(), "agent")
        .env("MESH_AGENT_MQTT_MAX_MESSAGE_BYTES", "4096");
    let (agent, policy_id) = agent_with_policy(options);
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    let deadline = Instant::now() + mqtt::PATIENCE;
    let mut round = 0;
    while consumer.count() == 0 {
        round += 1;
        mqtt::publish(
            &space.client_id("monitor"),
            &space.incident_topic(),
            &[
                b"not json at all".to_vec(),
                br#"{"event_type": "memory_leak", "severity": "high"}"#.to_vec(),
                // Over the limit itself; and under it, but its action would not be.
                leak_of_size("huge", 10_000).to_string().into_bytes(),
                leak_of_size("almost", 3_900).to_string().into_bytes(),
                leak(&format!("good-{round}")).to_string().into_bytes(),
            ],
        );
        assert!(
            Instant::now() < deadline,
            "no action:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ids: BTreeSet<String> = (1..=round)
        .map(|r| action_id("test-node", &format!("good-{r}"), policy_id, 1))
        .collect();
    assert!(ids.contains(consumer.messages()[0]["action_id"].as_str().unwrap_or("")));
    // Each malformed payload: counted, logged with its topic, audited as rejected.
    let metrics = agent.metrics();
    let rejected = metric(&metrics, "mqtt_intake_rejected_total");
    assert!(rejected >= 4.0, "{metrics}");
    assert_eq!(rejected as usize % 4, 0, "four per round: {metrics}");
    let log = agent.log_text();
    assert!(
        log.contains("malformed incident rejected") && log.contains(&space.incident_topic()),
        "{log}"
    );
    let (_, audit) = agent.get("/audit?limit=1000");
    let rejected: Vec<&Value> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["results"][0]["policy_name"] == "(rejected)")
        .collect();
    assert!(rejected.len() >= 4, "{audit}");
    let errors: Vec<&str> = rejected
        .iter()
        .filter_map(|e| e["results"][0]["error"].as_str())
        .collect();
    assert!(errors.iter().any(|e| e.contains("severity")), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("payload is") && e.contains("over mqtt.max_message_bytes (4096)")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("action message of policy `leak`")),
        "{errors:?}"
    );
    // Over HTTP, the incident whose action would be too large is refused, and nothing is queued.
    let (status, body) = agent.post("/evaluate", &leak_of_size("almost-http", 3_900));
    assert_eq!(status, 413, "{body}");
    assert!(
        body.to_string().contains("mqtt.max_message_bytes"),
        "{body}"
    );
    assert!(
        errors.iter().all(|e| e.contains(&space.incident_topic())),
        "{errors:?}"
    );
    assert!(
        rejected.iter().any(|e| e["input"] == "not json at all"),
        "{audit}"
    );
}

#[test]
fn broker_outage_with_1000_accepted_incidents_loses_none() {
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let proxy = Proxy::start(mqtt::broker());
    let (agent, policy_id) =
        agent_with_policy(space.agent(Options::default(), proxy.addr, "agent"));
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);

    proxy.cut();
    wait_health(&agent, "disconnected", |h| {
        h["upstream"]["connected"] == false
    });
    post_incidents(&agent, 0, 1000);
    let health = wait_health(&agent, "1000 in the outbox", |h| {
        h["upstream"]["outbox_depth"] == 1000
    });
    assert!(
        health["upstream"]["outbox_oldest_age_sec"]
            .as_f64()
            .is_some(),
        "{health}"
    );
    assert_eq!(consumer.count(), 0, "nothing can have gone out");

    proxy.restore();
    let counts = consumer.wait_distinct("action_id", 1000);
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(got, expected_ids("test-node", policy_id, 0..1000));
    wait_health(&agent, "outbox drained", |h| {
        h["upstream"]["outbox_depth"] == 0
    });
    let metrics = agent.metrics();
    assert!(
        metric(&metrics, "upstream_published_total") >= 1000.0,
        "{metrics}"
    );
}

#[test]
fn agent_killed_with_actions_in_the_outbox_loses_none() {
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let proxy = Proxy::start(mqtt::broker());
    let options = space.agent(Options::default(), proxy.addr, "agent");
    let (mut agent, policy_id) = agent_with_policy(options);
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);

    // Some go out while the broker is up, the rest wait in the outbox when the agent is killed.
    post_incidents(&agent, 0, 200);
    proxy.cut();
    post_incidents(&agent, 200, 1000);
    agent.crash();
    proxy.restore();
    agent.restart();

    let counts = consumer.wait_distinct("action_id", 1000);
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(got, expected_ids("test-node", policy_id, 0..1000));
    wait_health(&agent, "outbox drained", |h| {
        h["upstream"]["outbox_depth"] == 0
    });
}

#[test]
fn actions_written_to_the_socket_but_never_acknowledged_stay_in_the_outbox() {
    // The broker never sees what the agent sends: rumqttc's publish() succeeds, the bytes leave
    // the agent, no PUBACK comes. Killed then, the agent must still have every action.
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let proxy = Proxy::start(mqtt::broker());
    let options = space.agent(Options::default(), proxy.addr, "agent");
    let (mut agent, policy_id) = agent_with_policy(options);
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    proxy.blackhole();
    post_incidents(&agent, 0, 50);
    // Give the publisher every chance to hand them over and write them out.
    std::thread::sleep(Duration::from_millis(500));
    let health = agent.get("/health").1;
    assert_eq!(health["upstream"]["outbox_depth"], 50, "{health}");
    assert_eq!(metric(&agent.metrics(), "upstream_published_total"), 0.0);
    agent.crash();
    assert_eq!(consumer.count(), 0);
    proxy.restore();
    agent.restart();
    let counts = consumer.wait_distinct("action_id", 50);
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(got, expected_ids("test-node", policy_id, 0..50));
}

#[test]
fn a_full_outbox_blocks_intake_until_the_broker_takes_some() {
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let proxy = Proxy::start(mqtt::broker());
    let options = space
        .agent(Options::default(), proxy.addr, "agent")
        .env("MESH_AGENT_OUTBOX_CAPACITY", "10")
        .env("MESH_AGENT_OUTBOX_WHEN_FULL", "block");
    let (agent, policy_id) = agent_with_policy(options);
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    proxy.cut();
    wait_health(&agent, "disconnected", |h| {
        h["upstream"]["connected"] == false
    });
    post_incidents(&agent, 0, 10);

    // The eleventh waits for room: it is accepted only once the broker is back.
    let url = agent.url("/evaluate");
    let blocked = std::thread::spawn(move || {
        let resp = reqwest::blocking::Client::new()
            .post(url)
            .json(&leak("ev-10"))
            .timeout(Duration::from_secs(120))
            .send()
            .expect("request");
        resp.status().as_u16()
    });
    let deadline = Instant::now() + mqtt::PATIENCE;
    while metric(&agent.metrics(), "outbox_full_waits_total") < 1.0 {
        assert!(Instant::now() < deadline, "the eleventh did not wait");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!blocked.is_finished(), "accepted while the outbox was full");
    assert_eq!(agent.get("/health").1["upstream"]["outbox_depth"], 10);

    proxy.restore();
    assert_eq!(blocked.join().expect("request thread"), 200);
    let counts = consumer.wait_distinct("action_id", 11);
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(got, expected_ids("test-node", policy_id, 0..11));
}

#[test]
fn a_full_outbox_drops_the_oldest_when_told_to() {
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let proxy = Proxy::start(mqtt::broker());
    let options = space
        .agent(Options::default(), proxy.addr, "agent")
        .env("MESH_AGENT_OUTBOX_CAPACITY", "10")
        .env("MESH_AGENT_OUTBOX_WHEN_FULL", "drop_oldest");
    let (agent, policy_id) = agent_with_policy(options);
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    proxy.cut();
    wait_health(&agent, "disconnected", |h| {
        h["upstream"]["connected"] == false
    });
    post_incidents(&agent, 0, 15);
    assert_eq!(agent.get("/health").1["upstream"]["outbox_depth"], 10);
    let metrics = agent.metrics();
    assert_eq!(metric(&metrics, "outbox_dropped_total"), 5.0, "{metrics}");
    assert!(
        agent
            .log_text()
            .contains("outbox full: oldest entry dropped")
    );

    proxy.restore();
    let counts = consumer.wait_distinct("action_id", 10);
    wait_health(&agent, "outbox drained", |h| {
        h["upstream"]["outbox_depth"] == 0
    });
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(
        got,
        expected_ids("test-node", policy_id, 5..15),
        "the newest ten"
    );
}

#[test]
fn the_circuit_breaker_opens_on_failures_and_closes_when_the_broker_is_back() {
    let space = Space::new();
    let proxy = Proxy::start(mqtt::broker());
    let options = space
        .agent(Options::default(), proxy.addr, "agent")
        .env("MESH_AGENT_UPSTREAM_FAILURE_THRESHOLD", "3")
        .env("MESH_AGENT_UPSTREAM_RESET_TIMEOUT_SEC", "1");
    let agent = Agent::start(options);
    let health = wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    assert_eq!(health["upstream"]["breaker"]["state"], "closed");
    assert_eq!(health["upstream"]["breaker"]["failure_threshold"], 3);

    proxy.cut();
    wait_health(&agent, "breaker open", |h| {
        h["upstream"]["breaker"]["state"] == "open"
    });
    let metrics = agent.metrics();
    assert_eq!(
        metric(&metrics, "upstream_circuit_breaker_state{state=\"open\"}"),
        1.0,
        "{metrics}"
    );
    // Half-open trials keep failing while the broker is away, and open it again.
    wait_health(&agent, "a failed trial", |_| {
        agent.log_text().contains("\"half_open\"") || agent.log_text().contains("half_open")
    });

    proxy.restore();
    wait_health(&agent, "breaker closed", |h| {
        h["upstream"]["breaker"]["state"] == "closed" && h["upstream"]["connected"] == true
    });
    let log = agent.log_text();
    for change in [
        "old_state=\"closed\"",
        "new_state=\"open\"",
        "new_state=\"closed\"",
    ] {
        assert!(
            log.contains("upstream_circuit_breaker_state_change") && log.contains(change),
            "{change} not logged:\n{log}"
        );
    }
    let metrics = agent.metrics();
    assert_eq!(
        metric(&metrics, "upstream_circuit_breaker_state{state=\"closed\"}"),
        1.0,
        "{metrics}"
    );
}

#[test]
fn the_collector_receives_summaries_from_three_agents() {
    let space = Space::new();
    let collector = mqtt::Collector::start(
        mqtt::broker(),
        &space.client_id("collector"),
        &space.summaries_topic(),
        &space.actions_topic(),
    );
    let agents: Vec<(Agent, u64)> = (1..=3)
        .map(|n| {
            let node = format!("edge-{n}");
            let options = space
                .agent(Options::default().node_id(&node), mqtt::broker(), &node)
                .env("MESH_AGENT_SUMMARY_INTERVAL_SEC", "1");
            agent_with_policy(options)
        })
        .collect();
    for (n, (agent, _)) in agents.iter().enumerate() {
        // Agent n evaluates n + 1 incidents.
        for i in 0..=n {
            let (status, body) = agent.post("/evaluate", &leak(&format!("c-{n}-{i}")));
            assert_eq!(status, 200, "{body}");
        }
    }
    // Every node's summaries add up to what it evaluated.
    let deadline = Instant::now() + mqtt::PATIENCE;
    loop {
        let (status, nodes) = collector.get("/collector/nodes");
        assert_eq!(status, 200, "{nodes}");
        let (_, summaries) = collector.get("/collector/summaries?limit=1000");
        let evaluated = |node: &str| -> u64 {
            summaries["summaries"]
                .as_array()
                .map(|all| {
                    all.iter()
                        .filter(|s| s["node_id"] == node)
                        .filter_map(|s| s["evaluated"].as_u64())
                        .sum()
                })
                .unwrap_or(0)
        };
        let listed = nodes["nodes"].as_array().map_or(0, Vec::len);
        if listed == 3 && (1..=3).all(|n| evaluated(&format!("edge-{n}")) == n as u64) {
            let node = &nodes["nodes"][0];
            for field in [
                "node_id",
                "window_start",
                "window_end",
                "policies",
                "latency_p50_us",
                "latency_p99_us",
                "policy_revision",
                "audit_head",
            ] {
                assert!(!node["last_summary"][field].is_null(), "{field}: {node}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "collector: {nodes}\n{summaries}\n{}",
            collector.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The per-policy counts name the policy.
    let (_, nodes) = collector.get("/collector/nodes");
    for node in nodes["nodes"].as_array().expect("nodes") {
        for p in node["last_summary"]["policies"]
            .as_array()
            .expect("policies")
        {
            assert_eq!(p["policy_name"], "leak", "{node}");
        }
    }
    // The actions reached the collector too (6 incidents in all).
    let (_, actions) = collector.get("/collector/actions?limit=100");
    assert_eq!(
        actions["actions"].as_array().map_or(0, Vec::len),
        6,
        "{actions}"
    );
}

#[test]
fn the_breaker_opens_on_a_broker_that_accepts_connections_but_never_acknowledges() {
    // Every reconnect is accepted (CONNACK), every publish goes unacknowledged: that is a failure
    // each time, and an accepted connection must not wipe the count while actions wait.
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let proxy = Proxy::start(mqtt::broker());
    let options = space
        .agent(Options::default(), proxy.addr, "agent")
        .env("MESH_AGENT_UPSTREAM_FAILURE_THRESHOLD", "3")
        .env("MESH_AGENT_UPSTREAM_ACK_TIMEOUT_MS", "300");
    let (agent, policy_id) = agent_with_policy(options);
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    proxy.mute();
    post_incidents(&agent, 0, 1);
    wait_health(&agent, "breaker open", |h| {
        h["upstream"]["breaker"]["state"] == "open"
    });
    let log = agent.log_text();
    assert!(
        log.contains("broker has not acknowledged publishes"),
        "{log}"
    );
    assert_eq!(consumer.count(), 0);
    assert_eq!(agent.get("/health").1["upstream"]["outbox_depth"], 1);

    // The broker starts acknowledging: the half-open trial delivers and closes the breaker.
    proxy.restore();
    let counts = consumer.wait_distinct("action_id", 1);
    let got: BTreeSet<String> = counts.keys().cloned().collect();
    assert_eq!(got, expected_ids("test-node", policy_id, 0..1));
    wait_health(&agent, "breaker closed, outbox drained", |h| {
        h["upstream"]["breaker"]["state"] == "closed" && h["upstream"]["outbox_depth"] == 0
    });
}

/// The event ids in the newest `limit` audit entries, with how often each appears.
fn audited(agent: &Agent, limit: usize) -> std::collections::BTreeMap<String, usize> {
    let (_, audit) = agent.get(&format!("/audit?limit={limit}"));
    let mut counts = std::collections::BTreeMap::new();
    for entry in audit["entries"].as_array().expect("entries") {
        if let Some(id) = entry["event_id"].as_str() {
            *counts.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// Publishes `marker` until the agent has audited it; the broker delivers in order, so whatever
/// it had queued for the intake before (redeliveries included) has been taken by then.
fn publish_marker(agent: &Agent, space: &Space, marker: &str) {
    mqtt::publish(
        &space.client_id("monitor"),
        &space.incident_topic(),
        &[leak(marker).to_string().into_bytes()],
    );
    let deadline = Instant::now() + mqtt::PATIENCE;
    while !audited(agent, 10_000).contains_key(marker) {
        assert!(
            Instant::now() < deadline,
            "{marker} not audited:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stopped_agent_acknowledges_what_it_recorded_so_nothing_comes_back_after_restart() {
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let (mut agent, policy_id) =
        agent_with_policy(space.agent(Options::default(), mqtt::broker(), "agent"));
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    publish_marker(&agent, &space, "first");
    // Stop while incidents are still arriving and being committed.
    let incidents: Vec<Vec<u8>> = (0..300)
        .map(|i| leak(&format!("ev-{i}")).to_string().into_bytes())
        .collect();
    mqtt::publish(
        &space.client_id("monitor"),
        &space.incident_topic(),
        &incidents,
    );
    let deadline = Instant::now() + mqtt::PATIENCE;
    while !audited(&agent, 10_000).contains_key("ev-0") {
        assert!(Instant::now() < deadline, "ev-0 not audited");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    agent.restart();
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    publish_marker(&agent, &space, "after-restart");
    // Each incident was taken exactly once: recorded and acknowledged before the stop, or left
    // unacknowledged and taken after the restart. (With a broker that drops acknowledgements
    // read just before a DISCONNECT, some come twice: never lost, and under the same ids.)
    let counts = audited(&agent, 10_000);
    let once = mqtt::broker_keeps_order_to_disconnect();
    for i in 0..300 {
        let seen = counts.get(&format!("ev-{i}")).copied().unwrap_or(0);
        assert!(
            seen == 1 || (!once && seen == 2),
            "ev-{i} taken {seen} times: {counts:?}\n{}",
            agent.log_text()
        );
    }
    let log = agent.log_text();
    assert!(
        !log.contains("stopped before every recorded incident was acknowledged"),
        "{log}"
    );
    // And each action went out once: what the broker acknowledged before the stop left the
    // outbox before the agent exited, so the restart did not send it again.
    wait_health(&agent, "outbox drained", |h| {
        h["upstream"]["outbox_depth"] == 0
    });
    let mut expected = expected_ids("test-node", policy_id, 0..300);
    for marker in ["first", "after-restart"] {
        expected.insert(action_id("test-node", marker, policy_id, 1));
    }
    let messages = consumer.wait_until("every action", |m| {
        mqtt::distinct(m, "action_id").len() >= expected.len()
    });
    assert_eq!(mqtt::distinct(&messages, "action_id"), expected);
    if once {
        assert_eq!(messages.len(), expected.len(), "an action was sent twice");
    }
}

#[test]
fn a_reconnecting_intake_does_not_replay_retained_incidents() {
    let space = Space::new();
    mqtt::publish_retained(
        &space.client_id("monitor"),
        &space.incident_topic(),
        &[leak("retained").to_string().into_bytes()],
    );
    let proxy = Proxy::start(mqtt::broker());
    let (agent, _) = agent_with_policy(space.agent(Options::default(), proxy.addr, "agent"));
    publish_marker(&agent, &space, "before");
    assert_eq!(audited(&agent, 1000).get("retained"), Some(&1));

    // The connection drops and comes back: the broker resumes the session, subscriptions and all.
    proxy.cut();
    wait_health(&agent, "disconnected", |h| {
        h["upstream"]["connected"] == false
    });
    proxy.restore();
    let deadline = Instant::now() + mqtt::PATIENCE;
    while agent.log_text().matches("MQTT intake connected").count() < 2 {
        assert!(Instant::now() < deadline, "intake did not reconnect");
        std::thread::sleep(Duration::from_millis(20));
    }
    publish_marker(&agent, &space, "after");
    assert_eq!(
        audited(&agent, 1000).get("retained"),
        Some(&1),
        "{}",
        agent.log_text()
    );
    // Clear the retained message (a shared broker keeps it).
    mqtt::publish_retained(
        &space.client_id("monitor"),
        &space.incident_topic(),
        &[Vec::new()],
    );
}

#[test]
fn a_retried_batch_of_events_without_ids_sends_each_action_under_one_id() {
    // A caller whose batch timed out sends it again: events that carry no id get the same
    // derived ids the second time, so the consumer's de-duplication sees each action once.
    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let proxy = Proxy::start(mqtt::broker());
    let options = space.agent(Options::default(), proxy.addr, "agent");
    let (agent, _) = agent_with_policy(options);
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    proxy.cut();
    let batch: Vec<Value> = (0..20)
        .map(|i| event("memory_leak", 9.0, json!({"pod": i})))
        .collect();
    let (status, first) = agent.post("/evaluate/batch", &json!(batch));
    assert_eq!(status, 200, "{first}");
    let (status, again) = agent.post("/evaluate/batch", &json!(batch));
    assert_eq!(status, 200, "{again}");
    let ids = |answer: &Value| -> Vec<String> {
        answer
            .as_array()
            .expect("one answer per event")
            .iter()
            .map(|results| {
                results[0]["event_id"]
                    .as_str()
                    .expect("event_id")
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(ids(&first), ids(&again));
    assert_eq!(
        ids(&first).iter().collect::<BTreeSet<_>>().len(),
        20,
        "distinct events get distinct ids"
    );
    assert_eq!(agent.get("/health").1["upstream"]["outbox_depth"], 40);

    proxy.restore();
    wait_health(&agent, "outbox drained", |h| {
        h["upstream"]["outbox_depth"] == 0
    });
    // Both copies of every action arrive; they carry 20 ids between them.
    let messages = consumer.wait_until("40 messages", |m| m.len() >= 40);
    assert_eq!(mqtt::distinct(&messages, "action_id").len(), 20);
    let incidents: BTreeSet<String> = consumer
        .messages()
        .iter()
        .filter_map(|m| m["incident"]["event_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(incidents, ids(&first).into_iter().collect());
}

#[test]
fn a_stop_turns_away_requests_waiting_for_outbox_room() {
    // The broker is away and the outbox full: a request waits for room. SIGTERM must not wait
    // for a broker that may never come back: the request is answered 503 and the agent exits.
    let space = Space::new();
    let proxy = Proxy::start(mqtt::broker());
    let options = space
        .agent(Options::default(), proxy.addr, "agent")
        .env("MESH_AGENT_OUTBOX_CAPACITY", "1")
        .env("MESH_AGENT_OUTBOX_WHEN_FULL", "block");
    let (mut agent, _) = agent_with_policy(options);
    wait_health(&agent, "connected", |h| h["upstream"]["connected"] == true);
    proxy.cut();
    post_incidents(&agent, 0, 1);
    let url = agent.url("/evaluate");
    let blocked = std::thread::spawn(move || {
        let resp = reqwest::blocking::Client::new()
            .post(url)
            .json(&leak("ev-1"))
            .timeout(Duration::from_secs(120))
            .send()
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().unwrap_or(Value::Null))
    });
    let deadline = Instant::now() + mqtt::PATIENCE;
    while metric(&agent.metrics(), "outbox_full_waits_total") < 1.0 {
        assert!(Instant::now() < deadline, "the second did not wait");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = agent.terminate();
    assert!(status.success(), "{status:?}\n{}", agent.log_text());
    let (code, body) = blocked.join().expect("request thread");
    assert_eq!(code, 503, "{body}");
    assert!(body.to_string().contains("stopping"), "{body}");
    // The first action is still in the outbox for the next start.
    agent.restart();
    assert_eq!(agent.get("/health").1["upstream"]["outbox_depth"], 1);
}

#[test]
fn incidents_and_actions_travel_over_mqtts_with_a_client_certificate() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let pki = tmp.path();
    agent_identity::certs::init(pki, false).expect("CA");
    // The broker's certificate names the host the agent dials; the agent's is its client identity.
    let (broker_cert, broker_key) =
        agent_identity::certs::issue(pki, "localhost", 30).expect("cert");
    let (agent_cert, agent_key) = agent_identity::certs::issue(pki, "edge-1", 30).expect("cert");
    let ca = pki.join("ca.pem");
    let front = mqtt::TlsFront::start(mqtt::broker(), &broker_cert, &broker_key, &ca);
    let url = format!("mqtts://localhost:{}", front.addr.port());

    let space = Space::new();
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let options = space
        .agent_at(Options::default(), &url, "agent")
        .env("MESH_AGENT_MQTT_CA_FILE", ca.display().to_string())
        .env(
            "MESH_AGENT_MQTT_CLIENT_CERT_FILE",
            agent_cert.display().to_string(),
        )
        .env(
            "MESH_AGENT_MQTT_CLIENT_KEY_FILE",
            agent_key.display().to_string(),
        );
    let (agent, policy_id) = agent_with_policy(options);
    let health = wait_health(&agent, "connected over TLS", |h| {
        h["upstream"]["connected"] == true
    });
    assert_eq!(
        health["upstream"]["broker"],
        format!("mqtts://localhost:{}", front.addr.port())
    );
    // In over TLS (the intake), out over TLS (the publisher).
    let deadline = Instant::now() + mqtt::PATIENCE;
    while consumer.count() == 0 {
        mqtt::publish(
            &space.client_id("monitor"),
            &space.incident_topic(),
            &[leak("tls-1").to_string().into_bytes()],
        );
        assert!(
            Instant::now() < deadline,
            "no action:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        consumer.messages()[0]["action_id"],
        action_id("test-node", "tls-1", policy_id, 1)
    );
    assert_eq!(front.refused.load(std::sync::atomic::Ordering::SeqCst), 0);

    // Without its client certificate the agent is refused, and says why.
    let space = Space::new();
    let options = space
        .agent_at(Options::default(), &url, "bare")
        .env("MESH_AGENT_MQTT_CA_FILE", ca.display().to_string());
    let bare = Agent::start(options);
    let deadline = Instant::now() + mqtt::PATIENCE;
    while metric(&bare.metrics(), "upstream_connection_failures_total") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "no failed attempt:\n{}",
            bare.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(bare.get("/health").1["upstream"]["connected"], false);
    assert!(front.refused.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}
