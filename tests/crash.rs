//! Crash consistency: 20 times, an agent under mixed load (HTTP evaluations, MQTT incidents, local
//! policy writes, and policy writes arriving by gossip from a peer) is killed with SIGKILL at a
//! random moment. Each time, before it restarts, its data file is checked as it was left: the
//! store opens, the audit ring is a whole hash chain (`mesh-agent audit verify`), every incident
//! it acknowledged over HTTP has its action delivered or still in the outbox, and every policy
//! write it acknowledged is in the store. At the end every acknowledged incident's action has
//! been delivered, and both nodes hold every acknowledged policy write.

use test_support as common;
use test_support::mesh as mesh_ca;
use test_support::mqtt;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{Agent, Options, bin, free_udp_addr, policy, wait_until};
use mesh_ca::Ca;
use mesh_proto::{OutboxEntry, PolicyRecord, decode};
use mqtt::{Consumer, Space};
use redb::{ReadableDatabase, ReadableTable};
use serde_json::{Value, json};

const ROUNDS: usize = 20;
const PATIENCE: Duration = Duration::from_secs(90);

fn mesh_options(ca: &Ca, id: &str, gossip: SocketAddr, seed: Option<SocketAddr>) -> Options {
    ca.issue(id);
    let mut options = Options::default()
        .node_id(id)
        .tls_dir(ca.path())
        .gossip_listen(gossip)
        .cluster_id("crash")
        .env("MESH_AGENT_MESH_GOSSIP_INTERVAL_MS", "100")
        .env("MESH_AGENT_AUDIT_COMMIT_INTERVAL_MS", "20");
    if let Some(seed) = seed {
        options = options.seed(seed);
    }
    options
}

/// A pseudo-random number from the clock (no dependency needed for a kill moment).
fn jitter(max_ms: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    nanos.wrapping_mul(6364136223846793005) % max_ms
}

/// What the data file of a stopped agent holds: its policy names and the event ids of the
/// actions still in its outbox.
fn left_on_disk(agent: &Agent) -> (BTreeSet<String>, BTreeSet<String>) {
    let path = agent.data_dir.join("agent.redb");
    let db = redb::ReadOnlyDatabase::open(&path).expect("the store opens after SIGKILL");
    let txn = db.begin_read().unwrap();
    let policies: BTreeSet<String> = txn
        .open_table(agent_store::schema::POLICIES)
        .unwrap()
        .iter()
        .unwrap()
        .map(|entry| {
            let (_, bytes) = entry.unwrap();
            decode::<PolicyRecord>(bytes.value()).unwrap().name
        })
        .collect();
    let outbox: BTreeSet<String> = txn
        .open_table(agent_store::schema::OUTBOX)
        .unwrap()
        .iter()
        .unwrap()
        .filter_map(|entry| {
            let (_, bytes) = entry.unwrap();
            let entry: OutboxEntry = decode(bytes.value()).unwrap();
            let payload: Value = serde_json::from_str(&entry.payload).unwrap();
            payload["incident"]["event_id"].as_str().map(str::to_owned)
        })
        .collect();
    (policies, outbox)
}

/// The incident ids of the action messages received.
fn event_ids(messages: &[Value]) -> BTreeSet<String> {
    messages
        .iter()
        .filter_map(|m| m["incident"]["event_id"].as_str().map(str::to_owned))
        .collect()
}

fn verify_audit(agent: &Agent) {
    let out = Command::new(bin())
        .args(["audit", "verify", "--data-dir"])
        .arg(&agent.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Default)]
struct Acked {
    http_incidents: Mutex<BTreeSet<String>>,
    mqtt_incidents: Mutex<BTreeSet<String>>,
    local_writes: Mutex<BTreeSet<String>>,
    gossip_writes: Mutex<BTreeSet<String>>,
}

fn incident(id: &str) -> Value {
    json!({"event_type": "crash", "severity": 5, "event_id": id})
}

#[test]
fn sigkill_under_mixed_load_loses_nothing_acknowledged() {
    let space = Space::new();
    let ca = Ca::new();
    let peer_gossip = free_udp_addr();
    let peer = Agent::start(mesh_options(&ca, "peer", peer_gossip, None));
    let victim_options = space.agent(
        mesh_options(&ca, "victim", free_udp_addr(), Some(peer_gossip)),
        mqtt::broker(),
        "victim",
    );
    let mut victim = Agent::start(victim_options);
    let consumer = Consumer::subscribe(&space.client_id("consumer"), &space.actions_topic());
    let (status, body) = victim.post("/policies", &policy("crash", "incident.type == 'crash'", 1));
    assert_eq!(status, 201, "{body}");

    let acked = Arc::new(Acked::default());
    for round in 0..ROUNDS {
        let running = Arc::new(AtomicBool::new(true));
        let mut load = Vec::new();
        // HTTP evaluations: acknowledged by a 200.
        load.push({
            let (running, acked) = (Arc::clone(&running), Arc::clone(&acked));
            let url = victim.url("/evaluate");
            thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                for i in 0.. {
                    if !running.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("h{round}-{i}");
                    let sent = http.post(&url).json(&incident(&id)).send();
                    match sent {
                        Ok(resp) if resp.status() == 200 => {
                            acked.http_incidents.lock().unwrap().insert(id);
                        }
                        _ => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        });
        // Local policy writes and writes at the peer (which reach the victim by gossip).
        for (who, url) in [("l", victim.url("/policies")), ("g", peer.url("/policies"))] {
            let (running, acked) = (Arc::clone(&running), Arc::clone(&acked));
            load.push(thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                for i in 0.. {
                    if !running.load(Ordering::Relaxed) {
                        break;
                    }
                    let name = format!("{who}{round}-{i}");
                    let sent = http
                        .post(&url)
                        .json(&policy(&name, "incident.type == 'never'", 0))
                        .send();
                    match sent {
                        Ok(resp) if resp.status() == 201 => {
                            let set = if who == "l" {
                                &acked.local_writes
                            } else {
                                &acked.gossip_writes
                            };
                            set.lock().unwrap().insert(name);
                        }
                        _ => thread::sleep(Duration::from_millis(5)),
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        // MQTT incidents, published to the broker (which keeps them for the victim's session).
        load.push({
            let (running, acked) = (Arc::clone(&running), Arc::clone(&acked));
            let topic = space.incident_topic();
            let client = space.client_id(&format!("monitor-{round}"));
            thread::spawn(move || {
                for batch in 0.. {
                    if !running.load(Ordering::Relaxed) {
                        break;
                    }
                    let ids: Vec<String> =
                        (0..10).map(|i| format!("m{round}-{batch}-{i}")).collect();
                    let payloads: Vec<Vec<u8>> = ids
                        .iter()
                        .map(|id| incident(id).to_string().into_bytes())
                        .collect();
                    mqtt::publish(&client, &topic, &payloads);
                    acked.mqtt_incidents.lock().unwrap().extend(ids);
                    thread::sleep(Duration::from_millis(20));
                }
            })
        });

        thread::sleep(Duration::from_millis(200 + jitter(800)));
        victim.crash();
        running.store(false, Ordering::Relaxed);
        for thread in load {
            thread.join().unwrap();
        }

        // The data file as SIGKILL left it.
        verify_audit(&victim);
        let (policies, outbox) = left_on_disk(&victim);
        let local = acked.local_writes.lock().unwrap().clone();
        let lost: Vec<_> = local.difference(&policies).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged policy writes lost: {lost:?}"
        );
        // Not in the outbox: the broker acknowledged it, so it reaches the consumer (maybe a
        // moment after the kill). A lost action never does.
        let http = acked.http_incidents.lock().unwrap().clone();
        let sent: BTreeSet<String> = http.difference(&outbox).cloned().collect();
        wait_until(PATIENCE, || {
            let delivered = event_ids(&consumer.messages());
            let missing: Vec<_> = sent.difference(&delivered).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "round {round}: acknowledged incidents neither in the outbox nor delivered: \
                     {missing:?}"
                ))
            }
        });
        victim.restart();
    }

    // Everything acknowledged arrives in the end, and both nodes hold every acknowledged write.
    let want: BTreeSet<String> = acked
        .http_incidents
        .lock()
        .unwrap()
        .union(&acked.mqtt_incidents.lock().unwrap())
        .cloned()
        .collect();
    for (what, set) in [
        ("HTTP incidents", &acked.http_incidents),
        ("MQTT incidents", &acked.mqtt_incidents),
        ("local policy writes", &acked.local_writes),
        ("gossiped policy writes", &acked.gossip_writes),
    ] {
        assert!(
            !set.lock().unwrap().is_empty(),
            "no {what} were acknowledged"
        );
    }
    consumer.wait_until("every acknowledged incident's action", |messages| {
        want.is_subset(&event_ids(messages))
    });
    let writes: BTreeSet<String> = acked
        .local_writes
        .lock()
        .unwrap()
        .union(&acked.gossip_writes.lock().unwrap())
        .cloned()
        .collect();
    for node in [&victim, &peer] {
        wait_until(PATIENCE, || {
            let (_, list) = node.get("/policies");
            let names: BTreeSet<String> = list
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|p| p["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let missing: Vec<_> = writes.difference(&names).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("missing policies: {missing:?}"))
            }
        });
    }
}
