//! End to end: real `mesh-agent` processes on loopback forming a gossip mesh (chitchat over QUIC
//! with mutual TLS), as a user would run them. Policy creates, updates, deletes and Rego modules
//! roll out to every node; a killed node is seen dead, and catches up when it restarts; a new empty
//! node gets the whole set; and nodes that must not join (a certificate from another CA, another
//! cluster id) never appear in the membership and never get a change in.
//!
//! Every wait is bounded by a generous patience (2 cores, tests in parallel) and never asserted on:
//! the tests assert what the nodes serve, not how fast.

use test_support as common;
use test_support::mesh as mesh_ca;

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Agent, Options, event, free_udp_addr, holds_for, policy, wait_until};
use mesh_ca::Ca;
use mesh_proto::mesh::{Hello, MESH_PROTOCOL, Request, Response};
use mesh_proto::{decode, encode};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde_json::{Value, json};

/// Bounds every wait for the mesh to do something.
const PATIENCE: Duration = Duration::from_secs(60);
const GOSSIP_INTERVAL_MS: &str = "150";
const CLUSTER: &str = "e2e";

const CANARY_REGO: &str = "package rollout.canary\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user == \"alice\"\n";

/// A mesh CA in a temp dir (`certs init`), which issues node certificates (`certs issue`).
struct Node {
    id: String,
    gossip: SocketAddr,
    agent: Agent,
}

impl Deref for Node {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }
}

/// Starts node `id` of `cluster` with a certificate `ca` issues now, joining through `seeds`.
fn start_node(id: &str, ca: &Ca, cluster: &str, seeds: &[SocketAddr]) -> Node {
    ca.issue(id);
    let gossip = free_udp_addr();
    let mut options = Options::default()
        .node_id(id)
        .tls_dir(ca.path())
        .gossip_listen(gossip)
        .cluster_id(cluster)
        .env("MESH_AGENT_MESH_GOSSIP_INTERVAL_MS", GOSSIP_INTERVAL_MS);
    for seed in seeds {
        options = options.seed(*seed);
    }
    Node {
        id: id.into(),
        gossip,
        agent: Agent::start(options),
    }
}

/// Starts nodes `n1`..`n<count>` of [`CLUSTER`]; `n1` is the seed of the others.
fn start_mesh(ca: &Ca, count: usize) -> Vec<Node> {
    let first = start_node("n1", ca, CLUSTER, &[]);
    let seed = first.gossip;
    let mut nodes = vec![first];
    for i in 2..=count {
        nodes.push(start_node(&format!("n{i}"), ca, CLUSTER, &[seed]));
    }
    nodes
}

/// `(node id, state)` of every member in `node`'s `/mesh/members`, in its order (by node id).
fn members(node: &Node) -> Vec<(String, String)> {
    let (status, body) = node.get("/mesh/members");
    assert_eq!(status, 200, "{}: GET /mesh/members: {body}", node.id);
    let list = body["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: GET /mesh/members: {body}", node.id));
    list.iter()
        .map(|m| {
            let field = |key: &str| {
                m[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: member without {key}: {m}", node.id))
                    .to_owned()
            };
            (field("node_id"), field("state"))
        })
        .collect()
}

/// The node ids in `node`'s `/mesh/members`.
fn member_ids(node: &Node) -> Vec<String> {
    members(node).into_iter().map(|(id, _)| id).collect()
}

fn states(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(id, state)| (id.to_string(), state.to_string()))
        .collect()
}

fn all_alive(ids: &[&str]) -> Vec<(String, String)> {
    ids.iter()
        .map(|id| (id.to_string(), "alive".to_string()))
        .collect()
}

/// Waits until every node in `nodes` lists exactly `want` (node id, state) in `/mesh/members`.
fn wait_members(nodes: &[&Node], want: &[(String, String)]) {
    wait_until(PATIENCE, || {
        let seen: Vec<(&str, Vec<(String, String)>)> =
            nodes.iter().map(|n| (n.id.as_str(), members(n))).collect();
        if seen.iter().all(|(_, m)| m == want) {
            Ok(())
        } else {
            Err(format!(
                "want {want:?} on every node; members seen: {seen:?}"
            ))
        }
    });
}

/// Waits until every node answers `GET path` with 200 and exactly `want`.
fn wait_served(nodes: &[&Node], path: &str, want: &Value) {
    wait_until(PATIENCE, || {
        let seen: Vec<(&str, u16, Value)> = nodes
            .iter()
            .map(|n| {
                let (status, body) = n.get(path);
                (n.id.as_str(), status, body)
            })
            .collect();
        if seen.iter().all(|(_, s, b)| *s == 200 && b == want) {
            Ok(())
        } else {
            Err(format!(
                "want every node to serve GET {path} = {want}; seen: {seen:?}"
            ))
        }
    });
}

/// Waits until every node answers `GET path` with 404.
fn wait_absent(nodes: &[&Node], path: &str) {
    wait_until(PATIENCE, || {
        let seen: Vec<(&str, u16, Value)> = nodes
            .iter()
            .map(|n| {
                let (status, body) = n.get(path);
                (n.id.as_str(), status, body)
            })
            .collect();
        if seen.iter().all(|(_, s, _)| *s == 404) {
            Ok(())
        } else {
            Err(format!(
                "want 404 for GET {path} everywhere; seen: {seen:?}"
            ))
        }
    });
}

/// Waits until every node's `/mesh` says `converged` with one policy digest; returns the digest.
fn wait_converged(nodes: &[&Node]) -> String {
    wait_until(PATIENCE, || {
        let seen: Vec<(&str, Value)> = nodes
            .iter()
            .map(|n| {
                let (status, body) = n.get("/mesh");
                assert_eq!(status, 200, "{}: GET /mesh: {body}", n.id);
                (n.id.as_str(), body)
            })
            .collect();
        let digest = &seen[0].1["policy_revision"]["digest"];
        let done = digest.as_str().is_some_and(|d| !d.is_empty())
            && seen.iter().all(|(_, view)| {
                view["mode"] == "mesh"
                    && view["converged"] == true
                    && view["policy_revision"]["digest"] == *digest
            });
        if done {
            Ok(digest.as_str().unwrap_or_default().to_owned())
        } else {
            Err(format!(
                "want every node converged on one digest; /mesh seen: {seen:?}"
            ))
        }
    })
}

fn digest(node: &Node) -> String {
    let (status, view) = node.get("/mesh");
    assert_eq!(status, 200, "{}: GET /mesh: {view}", node.id);
    view["policy_revision"]["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: GET /mesh: {view}", node.id))
        .to_owned()
}

fn create(node: &Node, name: &str) -> (u64, Value) {
    let (status, created) = node.post("/policies", &policy(name, "incident.severity > 1", 10));
    assert_eq!(status, 201, "{}: POST /policies {name}: {created}", node.id);
    assert_eq!(created["author"], node.id.as_str(), "{created}");
    let id = created["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: created without an id: {created}", node.id));
    (id, created)
}

/// `GET /policies` on `node`.
fn policy_list(node: &Node) -> Value {
    let (status, list) = node.get("/policies");
    assert_eq!(status, 200, "{}: GET /policies: {list}", node.id);
    list
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `node`'s log has a line containing every one of `words`; returns the line.
fn wait_log_line(node: &Node, words: &[&str]) -> String {
    wait_until(PATIENCE, || {
        let log = node.log_text();
        match log
            .lines()
            .find(|line| words.iter().all(|w| line.contains(w)))
        {
            Some(line) => Ok(line.to_owned()),
            None => Err(format!(
                "{}: no log line with {words:?}; log:\n{log}",
                node.id
            )),
        }
    })
}

#[test]
fn five_nodes_roll_out_create_update_delete() {
    let ca = Ca::new();
    let nodes = start_mesh(&ca, 5);
    let all: Vec<&Node> = nodes.iter().collect();
    wait_members(&all, &all_alive(&["n1", "n2", "n3", "n4", "n5"]));

    // Created at n1: every node serves the very same record (version, author, timestamps)...
    let (id, created) = create(&nodes[0], "disk_full");
    assert_eq!(created["version"], 1, "{created}");
    let path = format!("/policies/{id}");
    wait_served(&all, &path, &created);
    // ... and evaluates incidents against it: the engine took it, not only the store.
    for node in &nodes {
        wait_until(PATIENCE, || {
            let (status, results) = node.post("/evaluate", &event("disk_full", 5.0, json!({})));
            let matched = status == 200
                && results.as_array().is_some_and(|r| {
                    r.iter()
                        .any(|d| d["policy_id"] == id && d["matched"] == true)
                });
            if matched {
                Ok(())
            } else {
                Err(format!("{}: POST /evaluate: {status} {results}", node.id))
            }
        });
    }

    // Updated at n2 (a partial update): version 2 by n2 everywhere.
    let (status, updated) = nodes[1].put(
        &path,
        &json!({"priority": 5, "definition": {"action": "page_oncall"}}),
    );
    assert_eq!(status, 200, "n2: PUT {path}: {updated}");
    assert_eq!(
        (
            &updated["version"],
            &updated["author"],
            &updated["priority"],
            &updated["definition"]["action"],
            &updated["definition"]["condition"],
        ),
        (
            &json!(2),
            &json!("n2"),
            &json!(5),
            &json!("page_oncall"),
            &json!("incident.severity > 1")
        ),
        "n2: PUT {path}: {updated}"
    );
    wait_served(&all, &path, &updated);

    // Deleted at n3: gone everywhere.
    let (status, body) = nodes[2].delete(&path);
    assert_eq!(status, 204, "n3: DELETE {path}: {body}");
    wait_absent(&all, &path);
    for node in &nodes {
        let list = policy_list(node);
        assert!(
            !names(&list).contains(&"disk_full".to_owned()),
            "{}: GET /policies still lists the deleted policy: {list}",
            node.id
        );
    }

    // A Rego module put at n4: every node serves it and decides with it.
    let module = "/v1/policies/rollout/canary.rego";
    let (status, body) = nodes[3].put_text(module, CANARY_REGO);
    assert_eq!(status, 200, "n4: PUT {module}: {body}");
    let (status, stored) = nodes[3].get(module);
    assert_eq!(status, 200, "n4: GET {module}: {stored}");
    assert_eq!(stored["result"]["raw"], CANARY_REGO, "{stored}");
    wait_served(&all, module, &stored);
    for node in &nodes {
        wait_until(PATIENCE, || {
            let (status, decision) = node.post(
                "/v1/data/rollout/canary/allow",
                &json!({"input": {"user": "alice"}}),
            );
            if status == 200 && decision["result"] == true {
                Ok(())
            } else {
                Err(format!(
                    "{}: POST /v1/data/rollout/canary/allow: {status} {decision}",
                    node.id
                ))
            }
        });
    }

    // One policy set everywhere (one digest), and every node sees every other holding it.
    wait_converged(&all);
}

#[test]
fn killed_node_is_seen_dead_and_catches_up_after_restart() {
    let ca = Ca::new();
    let mut nodes = start_mesh(&ca, 4);
    let ids = ["n1", "n2", "n3", "n4"];
    wait_members(&nodes.iter().collect::<Vec<_>>(), &all_alive(&ids));
    let (doomed_id, doomed) = create(&nodes[1], "doomed");
    let doomed_path = format!("/policies/{doomed_id}");
    wait_served(&nodes.iter().collect::<Vec<_>>(), &doomed_path, &doomed);
    let generation = |node: &Node, of: &str| -> u64 {
        let (_, body) = node.get("/mesh/members");
        body["members"]
            .as_array()
            .and_then(|l| l.iter().find(|m| m["node_id"] == of))
            .and_then(|m| m["generation"].as_u64())
            .unwrap_or_else(|| panic!("{}: no generation for {of}: {body}", node.id))
    };
    let first_generation = generation(&nodes[0], "n4");

    nodes[3].crash();
    let others: Vec<&Node> = nodes[..3].iter().collect();
    wait_members(
        &others,
        &states(&[
            ("n1", "alive"),
            ("n2", "alive"),
            ("n3", "alive"),
            ("n4", "dead"),
        ]),
    );

    // While n4 is down: a create at n1, a delete at n2.
    let (fresh_id, fresh) = create(&nodes[0], "fresh");
    let fresh_path = format!("/policies/{fresh_id}");
    let (status, body) = nodes[1].delete(&doomed_path);
    assert_eq!(status, 204, "n2: DELETE {doomed_path}: {body}");
    wait_served(&others, &fresh_path, &fresh);
    wait_absent(&others, &doomed_path);
    let digest_while_down = wait_converged(&others);

    // n4 comes back on its data dir and ports: alive everywhere (a new generation), same set.
    nodes[3].restart();
    let all: Vec<&Node> = nodes.iter().collect();
    wait_members(&all, &all_alive(&ids));
    for node in &nodes[..3] {
        let seen = generation(node, "n4");
        assert!(
            seen > first_generation,
            "{}: n4's generation {seen}, before the restart {first_generation}",
            node.id
        );
    }
    let digest = wait_converged(&all);
    assert_eq!(
        digest, digest_while_down,
        "the set changed when n4 came back"
    );
    let (status, body) = nodes[3].get(&fresh_path);
    assert_eq!(
        (status, &body),
        (200, &fresh),
        "n4: GET {fresh_path} (created while it was down)"
    );
    let (status, body) = nodes[3].get(&doomed_path);
    assert_eq!(
        status, 404,
        "n4: GET {doomed_path} (deleted while it was down): {body}"
    );
    assert_eq!(
        policy_list(&nodes[3]),
        policy_list(&nodes[0]),
        "n4's policies differ from n1's"
    );
}

#[test]
fn a_new_empty_node_gets_the_whole_set() {
    let ca = Ca::new();
    let mut nodes = start_mesh(&ca, 3);
    wait_members(
        &nodes.iter().collect::<Vec<_>>(),
        &all_alive(&["n1", "n2", "n3"]),
    );
    // Changes from every node: creates, an update and a delete of another node's policy, a module.
    let (a_id, a) = create(&nodes[0], "a");
    let (b_id, b) = create(&nodes[1], "b");
    create(&nodes[2], "c");
    let b_path = format!("/policies/{b_id}");
    wait_served(&[&nodes[0]], &b_path, &b);
    let (status, body) = nodes[0].delete(&b_path);
    assert_eq!(status, 204, "n1: DELETE {b_path}: {body}");
    let a_path = format!("/policies/{a_id}");
    wait_served(&[&nodes[2]], &a_path, &a);
    let (status, a2) = nodes[2].put(&a_path, &json!({"active": false}));
    assert_eq!(status, 200, "n3: PUT {a_path}: {a2}");
    let (status, body) = nodes[1].put_text("/v1/policies/rollout/canary.rego", CANARY_REGO);
    assert_eq!(status, 200, "n2: PUT module: {body}");
    let digest = wait_converged(&nodes.iter().collect::<Vec<_>>());

    let seed = nodes[1].gossip;
    nodes.push(start_node("n4", &ca, CLUSTER, &[seed]));
    let all: Vec<&Node> = nodes.iter().collect();
    wait_members(&all, &all_alive(&["n1", "n2", "n3", "n4"]));
    assert_eq!(wait_converged(&all), digest, "the set changed with n4");
    let newcomer = &nodes[3];
    let list = policy_list(newcomer);
    assert_eq!(
        list,
        policy_list(&nodes[0]),
        "n4's policies differ from n1's"
    );
    let mut held = names(&list);
    held.sort();
    assert_eq!(held, ["a", "c"], "n4: GET /policies: {list}");
    assert_eq!(newcomer.get(&a_path), (200, a2), "n4: GET {a_path}");
    assert_eq!(newcomer.get(&b_path).0, 404, "n4: GET {b_path}");
    let (_, modules) = newcomer.get("/v1/policies");
    assert_eq!(
        modules,
        nodes[0].get("/v1/policies").1,
        "n4's Rego modules differ from n1's"
    );
}

#[test]
fn a_node_from_another_ca_never_joins() {
    let ca = Ca::new();
    let nodes = start_mesh(&ca, 3);
    let good: Vec<&Node> = nodes.iter().collect();
    let good_ids = ["n1", "n2", "n3"];
    wait_members(&good, &all_alive(&good_ids));

    // Same cluster id, seeded with n1, but its certificate comes from another CA.
    let rogue_ca = Ca::new();
    let intruder = start_node("intruder", &rogue_ca, CLUSTER, &[nodes[0].gossip]);
    let (planted_id, _) = create(&intruder, "planted");
    let planted_path = format!("/policies/{planted_id}");

    // The good nodes keep working after the intruder started: a change made at n2 reaches all.
    let (marker_id, marker) = create(&nodes[1], "marker");
    let marker_path = format!("/policies/{marker_id}");
    wait_served(&good, &marker_path, &marker);
    // The intruder did knock (so the checks below are not vacuous): n1, its seed, refused it.
    // Only n1 hears from it: nobody else can learn its address.
    let line = wait_log_line(&nodes[0], &["refused"]);
    println!("n1 refused the intruder: {line}");

    // An absence check: nothing can be waited for, so it holds over a settling period of many
    // gossip rounds (150 ms each), checked throughout.
    holds_for(Duration::from_secs(4), || {
        for node in &good {
            let ids = member_ids(node);
            if ids != good_ids {
                return Err(format!("{}: members {ids:?}", node.id));
            }
            let (status, body) = node.get(&planted_path);
            if status != 404 {
                return Err(format!(
                    "{}: GET {planted_path} (the intruder's policy): {status} {body}",
                    node.id
                ));
            }
            let list = policy_list(node);
            if names(&list).contains(&"planted".to_owned()) {
                return Err(format!("{}: GET /policies: {list}", node.id));
            }
        }
        let seen = members(&intruder);
        if seen != all_alive(&["intruder"]) {
            return Err(format!("intruder: members {seen:?}"));
        }
        let (status, body) = intruder.get(&marker_path);
        if status != 404 {
            return Err(format!(
                "intruder: GET {marker_path} (a good node's policy): {status} {body}"
            ));
        }
        Ok(())
    });
    let digests: Vec<String> = good.iter().map(|n| digest(n)).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "good nodes' digests: {digests:?}"
    );
}

#[test]
fn nodes_of_another_cluster_are_ignored() {
    let ca = Ca::new();
    let nodes = start_mesh(&ca, 2);
    let main: Vec<&Node> = nodes.iter().collect();
    wait_members(&main, &all_alive(&["n1", "n2"]));

    // A valid certificate from the same CA, but another cluster id; seeded with n1.
    let stranger = start_node("x1", &ca, "other", &[nodes[0].gossip]);
    let (foreign_id, _) = create(&stranger, "foreign");
    let foreign_path = format!("/policies/{foreign_id}");

    let (marker_id, marker) = create(&nodes[1], "marker");
    let marker_path = format!("/policies/{marker_id}");
    wait_served(&main, &marker_path, &marker);
    let line = wait_log_line(&nodes[0], &["refused", "other"]);
    println!("n1 refused x1: {line}");

    // An absence check over a settling period of many gossip rounds, checked throughout.
    holds_for(Duration::from_secs(4), || {
        for node in &main {
            let ids = member_ids(node);
            if ids != ["n1", "n2"] {
                return Err(format!("{}: members {ids:?}", node.id));
            }
            let (status, body) = node.get(&foreign_path);
            if status != 404 {
                return Err(format!(
                    "{}: GET {foreign_path} (x1's policy): {status} {body}",
                    node.id
                ));
            }
        }
        let seen = member_ids(&stranger);
        if seen != ["x1"] {
            return Err(format!("x1: members {seen:?}"));
        }
        let (status, body) = stranger.get(&marker_path);
        if status != 404 {
            return Err(format!(
                "x1: GET {marker_path} (the main cluster's policy): {status} {body}"
            ));
        }
        Ok(())
    });
}

/// A peer that is not a mesh-agent and skips the checks one would make: it accepts any server
/// certificate, presents `<node_id>.pem` from `tls_dir`, and says hello as `node_id` of `cluster`.
/// Returns the node's answer to the hello, or why there was none.
fn lenient_hello(
    target: SocketAddr,
    tls_dir: &Path,
    node_id: &str,
    cluster: &str,
) -> Result<Response, String> {
    hostile_peer(target, tls_dir, node_id, cluster, None, &[], &[], false).map(|(hello, _)| hello)
}

/// [`lenient_hello`], advertising `advertise` as its gossip address (default: its own), then,
/// if the hello was answered, sending each of `requests` (raw bytes) on a stream of its own and
/// each of `gossip` as a gossip message; with `until_closed`, it then waits for the node to close
/// the connection (an error if it does not). Returns the hello's answer and each request's.
#[allow(clippy::too_many_arguments)]
fn hostile_peer(
    target: SocketAddr,
    tls_dir: &Path,
    node_id: &str,
    cluster: &str,
    advertise: Option<SocketAddr>,
    requests: &[Vec<u8>],
    gossip: &[Vec<u8>],
    until_closed: bool,
) -> Result<(Response, Vec<Result<Response, String>>), String> {
    let cert = CertificateDer::from_pem_file(tls_dir.join(format!("{node_id}.pem"))).unwrap();
    let key = PrivateKeyDer::from_pem_file(tls_dir.join(format!("{node_id}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    crypto.alpn_protocols = vec![b"mesh-agent/1".to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
    let hello = |local: SocketAddr| {
        Request::Hello(Hello {
            protocol: MESH_PROTOCOL,
            cluster_id: cluster.into(),
            node_id: node_id.into(),
            gossip_addr: advertise.unwrap_or(local).to_string(),
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        let local = endpoint.local_addr().unwrap();
        let ask = |connection: quinn::Connection, bytes: Vec<u8>| async move {
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| format!("open stream: {e}"))?;
            send.write_all(&bytes)
                .await
                .map_err(|e| format!("send: {e}"))?;
            send.finish().map_err(|e| format!("send: {e}"))?;
            let bytes = recv
                .read_to_end(1024 * 1024)
                .await
                .map_err(|e| format!("read answer: {e}"))?;
            decode::<Response>(&bytes).map_err(|e| format!("answer: {e}"))
        };
        let exchange = async {
            let connection = endpoint
                .connect(target, "mesh-agent")
                .map_err(|e| format!("connect: {e}"))?
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let answer = ask(connection.clone(), encode(&hello(local))).await?;
            let mut answers = Vec::new();
            if matches!(answer, Response::Hello(_)) {
                for bytes in gossip {
                    if let Ok(mut send) = connection.open_uni().await {
                        let _ = send.write_all(bytes).await;
                        let _ = send.finish();
                    }
                }
                for bytes in requests {
                    answers.push(ask(connection.clone(), bytes.clone()).await);
                }
                if until_closed {
                    // Whatever the load, the node closes it (or the exchange times out).
                    connection.closed().await;
                } else {
                    // Let the gossip streams be read before the connection goes.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            connection.close(0u32.into(), b"done");
            Ok((answer, answers))
        };
        let result = tokio::time::timeout(PATIENCE, exchange)
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        endpoint.wait_idle().await;
        result
    })
}

/// Accepts any server certificate (checking only that the handshake is signed with its key).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_even_if_the_client_trusts_anything() {
    // A stock agent with foreign certificates gives up on its own (it does not trust the mesh's
    // server certificate), so the node's check of the client certificate never runs. A peer that
    // skips that check is what makes the node's own check matter.
    let ca = Ca::new();
    let nodes = start_mesh(&ca, 1);
    let n1 = &nodes[0];

    // Control: the same client with a certificate of the mesh CA gets n1's hello back.
    ca.issue("probe");
    match lenient_hello(n1.gossip, ca.path(), "probe", CLUSTER) {
        Ok(Response::Hello(hello)) => assert_eq!(hello.node_id, "n1", "{hello:?}"),
        other => panic!(
            "a client with a mesh certificate got {other:?}; n1's log:\n{}",
            n1.log_text()
        ),
    }

    // A certificate from another CA, even one issued to a mesh node's id: no hello, refused.
    let rogue_ca = Ca::new();
    rogue_ca.issue("n2");
    let answer = lenient_hello(n1.gossip, rogue_ca.path(), "n2", CLUSTER);
    assert!(
        !matches!(answer, Ok(Response::Hello(_))),
        "a client with a foreign certificate got n1's hello: {answer:?}"
    );
    let line = wait_log_line(n1, &["refused", "certificate"]);
    println!("client from another CA: {answer:?}; n1 logged: {line}");
    assert_eq!(member_ids(n1), ["n1"]);
}

fn metric(node: &Node, name: &str) -> f64 {
    node.metrics()
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_hostile_peer_with_a_valid_certificate_is_refused_counted_and_harmless() {
    let ca = Ca::new();
    let nodes = start_mesh(&ca, 2);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    wait_members(&[n1, n2], &all_alive(&["n1", "n2"]));
    ca.issue("evil");

    // Truncated, garbage and wrongly framed requests; undecodable gossip.
    let pull = encode(&Request::Pull(mesh_proto::mesh::PullRequest {
        since: 0,
        limit: 10,
    }));
    let truncated = pull[..pull.len() - 1].to_vec();
    let requests = vec![truncated, b"garbage".to_vec(), vec![0xff; 4096], Vec::new()];
    let gossip = vec![b"not a chitchat message".to_vec(), vec![0u8; 2000]];
    let (hello, answers) = hostile_peer(
        n1.gossip,
        ca.path(),
        "evil",
        CLUSTER,
        None,
        &requests,
        &gossip,
        false,
    )
    .expect("a valid certificate gets a hello");
    assert!(matches!(hello, Response::Hello(_)), "{hello:?}");
    for (request, answer) in requests.iter().zip(&answers) {
        match answer {
            Ok(Response::Refused(reason)) => assert!(reason.contains("bad request"), "{reason}"),
            other => panic!("{} bytes: {other:?}", request.len()),
        }
    }
    wait_until(PATIENCE, || {
        let refused = metric(n1, "mesh_messages_refused_total");
        if refused >= 6.0 {
            Ok(())
        } else {
            Err(format!("mesh_messages_refused_total {refused}"))
        }
    });

    // A peer that keeps sending junk gossip is cut off.
    let refused_before = metric(n1, "mesh_peers_refused_total");
    let junk = vec![b"junk".to_vec(); 5];
    let (hello, _) = hostile_peer(
        n1.gossip,
        ca.path(),
        "evil",
        CLUSTER,
        None,
        &[],
        &junk,
        true,
    )
    .expect("the node closes the connection of a peer sending junk");
    assert!(matches!(hello, Response::Hello(_)), "{hello:?}");
    wait_until(PATIENCE, || {
        let refused = metric(n1, "mesh_peers_refused_total");
        if refused > refused_before {
            Ok(())
        } else {
            Err(format!("mesh_peers_refused_total {refused}"))
        }
    });

    // A valid node advertising another live node's gossip address is refused.
    let refused_before = metric(n1, "mesh_peers_refused_total");
    let (answer, _) = hostile_peer(
        n1.gossip,
        ca.path(),
        "evil",
        CLUSTER,
        Some(n2.gossip),
        &[],
        &[],
        false,
    )
    .expect("an answer");
    match answer {
        Response::Refused(reason) => assert!(reason.contains("belongs to node `n2`"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(metric(n1, "mesh_peers_refused_total") > refused_before);

    // The mesh carries on: a change still reaches the other node, and n2 stays alive.
    let (id, _) = create(n1, "after-the-attack");
    wait_until(PATIENCE, || {
        let (status, body) = n2.get(&format!("/policies/{id}"));
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    });
    wait_members(&[n1, n2], &all_alive(&["n1", "n2"]));
}
