//! A mesh CA for end-to-end tests, made with `mesh-agent certs` (a module of the test-support crate).

use std::path::Path;
use std::process::Command;

use crate::bin;

pub struct Ca {
    dir: tempfile::TempDir,
}

impl Ca {
    pub fn new() -> Ca {
        let dir = tempfile::tempdir().expect("temp dir");
        certs(&["init"], dir.path());
        Ca { dir }
    }

    pub fn issue(&self, node_id: &str) {
        certs(&["issue", "--node-id", node_id], self.path());
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn certs(args: &[&str], dir: &Path) {
    let out = Command::new(bin())
        .arg("certs")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run mesh-agent certs");
    assert!(
        out.status.success(),
        "mesh-agent certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `n1`..`n<count>` in one mesh of cluster `cluster` with certificates of `ca`, `n1` the
/// seed of the others, gossiping every 150 ms; `extra` adds a node's own options (an upstream, a
/// window) given its id. Returns once every node is started (not once they see each other).
pub fn start(
    ca: &Ca,
    cluster: &str,
    count: usize,
    extra: impl Fn(crate::Options, &str) -> crate::Options,
) -> Vec<crate::Agent> {
    let mut seed: Option<std::net::SocketAddr> = None;
    let mut nodes = Vec::new();
    for i in 1..=count {
        let id = format!("n{i}");
        ca.issue(&id);
        let gossip = crate::free_udp_addr();
        let mut options = crate::Options::default()
            .node_id(&id)
            .tls_dir(ca.path())
            .gossip_listen(gossip)
            .cluster_id(cluster)
            .env("MESH_AGENT_MESH_GOSSIP_INTERVAL_MS", "150");
        if let Some(seed) = seed {
            options = options.seed(seed);
        }
        seed.get_or_insert(gossip);
        nodes.push(crate::Agent::start(extra(options, &id)));
    }
    nodes
}

/// Alive members `agent` sees.
pub fn alive_count(agent: &crate::Agent) -> usize {
    agent.get("/mesh/members").1["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count())
}

/// Waits until `check` holds on every node (`n1`, `n2`, ... in the failure's message), for at
/// most `patience`.
pub fn on_every_node(
    nodes: &[crate::Agent],
    patience: std::time::Duration,
    what: &str,
    check: impl Fn(&crate::Agent) -> Result<(), String>,
) {
    crate::wait_until(patience, || {
        let failing: Vec<String> = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| check(n).err().map(|why| format!("n{}: {why}", i + 1)))
            .collect();
        failing
            .is_empty()
            .then_some(())
            .ok_or(format!("{what}: {failing:?}"))
    });
}
