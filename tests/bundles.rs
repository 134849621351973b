//! OPA bundles end to end on five real agents in a gossip mesh, every agent verifying with the
//! same ES256 key: a signed bundle pushed to one node is activated and evaluated on all five; an
//! unsigned one and a tampered one are refused (400, saying why) and never appear on any node; a
//! bundle polled from a bundle server (this test's, counting what it answers, with ETags and
//! 304s) is downloaded once per revision for the whole mesh and served by all five; and
//! `/health?bundles=true` answers 200 only once the configured bundle is activated.
//!
//! Keys, signatures and archives are made by `test_support::bundles`, independently of the
//! agent's code, in OPA's formats. Waits are bounded by a generous patience, never asserted on.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use test_support::bundles::{Key, key, signatures, targz};
use test_support::mesh::Ca;
use test_support::{Agent, wait_until};

const PATIENCE: Duration = Duration::from_secs(90);
const NEVER: &str = "0001-01-01T00:00:00Z";

/// A bundle owning `data.acme.<package>`, whose rule allows the users in its data. Signed with
/// `key` when given; `tamper` changes the module after signing (it then allows everyone).
fn bundle(
    package: &str,
    revision: &str,
    users: &[&str],
    key: Option<&Key>,
    tamper: bool,
) -> Vec<u8> {
    // serde_json writes compact JSON with sorted keys: the canonical form OPA hashes.
    let manifest = json!({"revision": revision, "roots": [format!("acme/{package}")]});
    let module = format!(
        "package acme.{package}\nimport rego.v1\ndefault allow := false\nallow if input.user in data.acme.{package}.users\n"
    );
    let data = json!({"users": users});
    let mut files = vec![
        (".manifest".to_string(), manifest.to_string().into_bytes()),
        (format!("acme/{package}/policy.rego"), module.into_bytes()),
        (
            format!("acme/{package}/data.json"),
            data.to_string().into_bytes(),
        ),
    ];
    if let Some(key) = key {
        let signatures = signatures(key, &files);
        if tamper {
            files[1].1 =
                format!("package acme.{package}\nimport rego.v1\nallow := true\n").into_bytes();
        }
        files.push((".signatures.json".to_string(), signatures));
    }
    targz(&files)
}

/// What the bundle server serves: (ETag, archive), or nothing yet.
type Served = Arc<Mutex<Option<(String, Vec<u8>)>>>;

/// A bundle server: serves one archive under an ETag (404 until there is one), answers `304`
/// to `If-None-Match` with the current ETag, and counts what it answered.
struct BundleServer {
    addr: SocketAddr,
    current: Served,
    downloads: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
}

impl BundleServer {
    fn start() -> BundleServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = BundleServer {
            addr: listener.local_addr().unwrap(),
            current: Arc::default(),
            downloads: Arc::default(),
            not_modified: Arc::default(),
        };
        let (current, downloads, not_modified) = (
            Arc::clone(&server.current),
            Arc::clone(&server.downloads),
            Arc::clone(&server.not_modified),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut if_none_match = None;
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':')
                        && name.eq_ignore_ascii_case("if-none-match")
                    {
                        if_none_match = Some(value.trim().to_string());
                    }
                }
                let current = current.lock().unwrap().clone();
                let response: Vec<u8> = match current {
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                    Some((etag, _)) if if_none_match.as_deref() == Some(etag.as_str()) => {
                        not_modified.fetch_add(1, Ordering::SeqCst);
                        format!(
                            "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n"
                        )
                        .into_bytes()
                    }
                    Some((etag, body)) => {
                        downloads.fetch_add(1, Ordering::SeqCst);
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        out.extend_from_slice(&body);
                        out
                    }
                };
                let _ = stream.write_all(&response);
                let _ = stream.flush();
                let mut rest = [0u8; 64];
                let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
                let _ = stream.read(&mut rest);
            }
        });
        server
    }

    fn serve(&self, etag: &str, body: Vec<u8>) {
        *self.current.lock().unwrap() = Some((etag.to_string(), body));
    }
}

fn put_bundle(node: &Agent, name: &str, archive: &[u8]) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .put(node.url(&format!("/v1/bundles/{name}")))
        .body(archive.to_vec())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// Waits until `check` holds on every node.
fn on_every_node(nodes: &[Agent], what: &str, check: impl Fn(&Agent) -> Result<(), String>) {
    test_support::mesh::on_every_node(nodes, PATIENCE, what, check)
}

fn allows(node: &Agent, package: &str, user: &str) -> Value {
    let (_, answer) = node.post(
        &format!("/v1/data/acme/{package}/allow"),
        &json!({"input": {"user": user}}),
    );
    answer["result"].clone()
}

fn bundle_status(node: &Agent, name: &str) -> Value {
    node.get("/v1/status").1["result"]["bundles"][name].clone()
}

/// Five agents in mesh `cluster` that verify bundles with `key`, with `extra` in their config
/// file, once all see each other; the directory and the CA hold their files (keep them alive).
fn mesh_verifying_with(
    key: &Key,
    cluster: &str,
    extra: &str,
) -> ((tempfile::TempDir, Ca), Vec<Agent>) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("bundle-key.pem");
    std::fs::write(&key_file, &key.public_pem).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[bundle.keys.test]\nalgorithm = \"ES256\"\nkey_file = {:?}\n\n{extra}",
            key_file.display().to_string()
        ),
    )
    .unwrap();
    let ca = Ca::new();
    let config_arg = config.display().to_string();
    let nodes = test_support::mesh::start(&ca, cluster, 5, |options, _| {
        options.arg("--config").arg(config_arg.clone())
    });
    on_every_node(&nodes, "all five alive", |n| {
        let alive = test_support::mesh::alive_count(n);
        (alive == 5).then_some(()).ok_or(format!("{alive} alive"))
    });
    ((dir, ca), nodes)
}

#[test]
fn bundles_are_verified_everywhere_and_polled_once_per_mesh() {
    let key = key();
    let server = BundleServer::start();
    let (_dir, nodes) = mesh_verifying_with(
        &key,
        "bundles",
        &format!(
            "[[bundles]]\nname = \"polled\"\nurl = \"http://{}/bundles/polled.tar.gz\"\n\
             min_delay_sec = 1\nmax_delay_sec = 1\n",
            server.addr
        ),
    );

    // The configured bundle is not served yet: not healthy with ?bundles=true, healthy without.
    for node in &nodes {
        assert_eq!(node.get("/health?bundles=true").0, 500);
        assert_eq!(node.get("/health").0, 200);
    }

    // A signed bundle pushed to n1 is activated and evaluated on all five.
    let signed = bundle("authz", "v1", &["alice"], Some(&key), false);
    let (status, answer) = put_bundle(&nodes[0], "authz", &signed);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["revision"], "v1");
    on_every_node(&nodes, "the pushed bundle decides", |n| {
        match (allows(n, "authz", "alice"), allows(n, "authz", "bob")) {
            (Value::Bool(true), Value::Bool(false)) => Ok(()),
            other => Err(format!("alice, bob: {other:?}")),
        }
    });
    for node in &nodes {
        let status = bundle_status(node, "authz");
        assert_eq!(status["active_revision"], "v1", "{status}");
        assert_eq!(status["type"], "snapshot");
        assert_ne!(status["last_successful_activation"], NEVER);
        assert!(status.get("code").is_none(), "{status}");
    }
    // Every member gossips the revision it runs.
    wait_until(PATIENCE, || {
        let members = nodes[0].get("/mesh/members").1["members"].clone();
        let revisions: Vec<Value> = members
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["bundles"]["authz"].clone())
            .collect();
        (revisions.len() == 5 && revisions.iter().all(|r| r == "v1"))
            .then_some(())
            .ok_or(format!("{revisions:?}"))
    });

    // Unsigned and tampered bundles are refused where they are pushed, saying why.
    let unsigned = bundle("evil", "e1", &["mallory"], None, false);
    let (status, answer) = put_bundle(&nodes[1], "evil", &unsigned);
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("missing .signatures.json"),
        "{answer}"
    );
    let tampered = bundle("authz", "v2", &["alice"], Some(&key), true);
    let (status, answer) = put_bundle(&nodes[2], "authz", &tampered);
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("acme/authz/policy.rego: digest mismatch"),
        "{answer}"
    );
    let (status, answer) = put_bundle(&nodes[3], "junk", b"not a bundle at all");
    assert_eq!(status, 400, "{answer}");
    // Writes under the bundle's roots are refused as OPA refuses them.
    let (status, answer) = nodes[4].put("/v1/data/acme/authz/users", &json!(["mallory"]));
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("owned by bundle \"authz\"")
    );
    // Markers written after the refusals on the nodes that refused: once every node has them,
    // it has everything those nodes wrote before, and no refused bundle is anywhere.
    nodes[1].put("/v1/data/markers/n2", &json!(true));
    nodes[2].put("/v1/data/markers/n3", &json!(true));
    on_every_node(&nodes, "markers", |n| {
        let (_, answer) = n.get("/v1/data/markers");
        (answer["result"] == json!({"n2": true, "n3": true}))
            .then_some(())
            .ok_or(answer.to_string())
    });
    for node in &nodes {
        assert_eq!(node.get("/v1/bundles/evil").0, 404);
        assert_eq!(node.get("/v1/bundles/junk").0, 404);
        assert_eq!(bundle_status(node, "authz")["active_revision"], "v1");
        assert_eq!(allows(node, "authz", "bob"), Value::Bool(false));
        assert_eq!(allows(node, "evil", "mallory"), Value::Null);
    }

    // The polled bundle: once the server has it, one node downloads it and all five serve it.
    // When each node last asked the server (never: no status yet, or Go's zero time).
    let last_request = |n: &Agent| match bundle_status(n, "polled")["last_request"].as_str() {
        Some(at) if at != NEVER => at.to_string(),
        _ => NEVER.to_string(),
    };
    let polls_before: Vec<String> = nodes.iter().map(last_request).collect();
    server.serve(
        "\"p1\"",
        bundle("polled", "p1", &["carol"], Some(&key), false),
    );
    on_every_node(&nodes, "the polled bundle decides", |n| {
        match allows(n, "polled", "carol") {
            Value::Bool(true) => Ok(()),
            other => Err(format!("carol: {other}")),
        }
    });
    // The poller goes on asking with the ETag the mesh holds, and is told nothing changed.
    wait_until(PATIENCE, || {
        let n = server.not_modified.load(Ordering::SeqCst);
        (n >= 3).then_some(()).ok_or(format!("{n} 304s"))
    });
    assert_eq!(
        server.downloads.load(Ordering::SeqCst),
        1,
        "one download per mesh"
    );
    for node in &nodes {
        assert_eq!(node.get("/health?bundles=true").0, 200);
        assert_eq!(bundle_status(node, "polled")["active_revision"], "p1");
    }
    // Exactly one node asked the server since it started serving.
    let pollers: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| last_request(n) != polls_before[*i])
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(pollers.len(), 1, "nodes that polled: {pollers:?}");

    // A new revision on the server: downloaded once more, for everyone.
    let before = server.not_modified.load(Ordering::SeqCst);
    server.serve(
        "\"p2\"",
        bundle("polled", "p2", &["dave"], Some(&key), false),
    );
    on_every_node(&nodes, "the new polled revision decides", |n| {
        match (
            allows(n, "polled", "dave"),
            bundle_status(n, "polled")["active_revision"].clone(),
        ) {
            (Value::Bool(true), revision) if revision == "p2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    wait_until(PATIENCE, || {
        let n = server.not_modified.load(Ordering::SeqCst);
        (n >= before + 3).then_some(()).ok_or(format!("{n} 304s"))
    });
    assert_eq!(
        server.downloads.load(Ordering::SeqCst),
        2,
        "one download per revision"
    );
}

/// Which revision of the bundle `authz` decided on `node` (decisions carry bundle revisions in
/// their provenance); each call with an input of its own, so none is answered from the cache.
fn decided_revision(node: &Agent) -> Option<String> {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let (_, answer) = node.post(
        "/v1/data/acme/authz/allow?provenance=true",
        &json!({"input": {"user": format!("caller-{call}")}}),
    );
    answer["provenance"]["bundles"]["authz"]["revision"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn a_bundle_is_a_unit_of_rollout_canary_and_rollback() {
    let key = key();
    let (_dir, nodes) = mesh_verifying_with(&key, "bundle-rollout", "");
    let v1 = bundle("authz", "v1", &["alice"], Some(&key), false);
    let (status, answer) = put_bundle(&nodes[0], "authz", &v1);
    assert_eq!(status, 200, "{answer}");
    on_every_node(&nodes, "v1 decides", |n| match decided_revision(n) {
        Some(rev) if rev == "v1" => Ok(()),
        other => Err(format!("{other:?}")),
    });

    // v2 with a canary plan: 202, the rollout; its canary nodes decide with v2 first.
    let v2 = bundle("authz", "v2", &["alice", "bob"], Some(&key), false);
    let response = reqwest::blocking::Client::new()
        .put(
            nodes[1]
                .url("/v1/bundles/authz?canary_fraction=0.4&bake_sec=10&min_canary_evaluations=2"),
        )
        .body(v2)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let rollout: Value = response.json().unwrap();
    assert_eq!(
        rollout["subject"],
        json!({"kind": "bundle", "name": "authz"})
    );
    assert_eq!(
        rollout["candidate"]["bundle"]["revision"], "v2",
        "{rollout}"
    );
    let id = rollout["id"].as_str().unwrap().to_owned();
    // An ordinary push of the bundle waits for the rollout.
    let again = bundle("authz", "v3", &["carol"], Some(&key), false);
    let (status, refused) = put_bundle(&nodes[1], "authz", &again);
    assert_eq!(status, 409, "{refused}");
    let canaries: Vec<usize> = rollout["plan"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap()[1..].parse::<usize>().unwrap() - 1)
        .collect();
    for &i in &canaries {
        wait_until(PATIENCE, || match decided_revision(&nodes[i]) {
            Some(rev) if rev == "v2" => Ok(()),
            other => Err(format!("n{}: {other:?}", i + 1)),
        });
    }
    // Meanwhile the others decide with v1 (while it bakes: 10 s).
    let (_, still) = nodes[0].get(&format!("/rollouts/{id}"));
    if still["state"] == "baking" {
        for i in (0..5).filter(|i| !canaries.contains(i)) {
            assert_eq!(
                decided_revision(&nodes[i]).as_deref(),
                Some("v1"),
                "n{}",
                i + 1
            );
        }
    }
    // Healthy: it completes, and every node then decides with v2 (bob is allowed everywhere).
    on_every_node(&nodes, "the completed bundle rollout", |n| {
        decided_revision(n);
        let (_, r) = n.get(&format!("/rollouts/{id}"));
        (r["state"] == "completed")
            .then_some(())
            .ok_or(r.to_string())
    });
    on_every_node(&nodes, "v2 everywhere", |n| {
        match (decided_revision(n), allows(n, "authz", "bob")) {
            (Some(rev), Value::Bool(true)) if rev == "v2" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // The ended rollout keeps no archive.
    let (_, ended) = nodes[4].get(&format!("/rollouts/{id}"));
    assert_eq!(ended["candidate"]["bundle"]["archive"], "", "{ended}");

    // Rolled back to its first version from another node: v1 everywhere again.
    let (_, versions) = nodes[3].get("/rego/versions?bundle=authz");
    assert_eq!(
        versions["result"].as_array().map(Vec::len),
        Some(2),
        "{versions}"
    );
    let (status, body) = nodes[3].post("/rego/rollback", &json!({"bundle": "authz", "version": 1}));
    assert_eq!(status, 200, "{body}");
    on_every_node(&nodes, "v1 again", |n| {
        match (decided_revision(n), allows(n, "authz", "bob")) {
            (Some(rev), Value::Bool(false)) if rev == "v1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}
