//! Safe rollout, timed on real agents in a gossip mesh on this machine (loopback, default gossip
//! interval of 200 ms).
//!
//! ```sh
//! cargo build --release -p mesh-agent --example rollout_bench
//! target/release/examples/rollout_bench canary-revert --nodes 5 --runs 5
//! ```
//!
//! `canary-revert`: a Rego module's canary whose every evaluation runs into the time limit. From the
//! first decision that fails on a canary node (the canary failing, as its callers see it) until
//! every node answers with the previous version again (the rollout failed, the mesh carried that
//! to every node, each reverted). Each run starts a fresh mesh.
//!
//! The agent binary is the `mesh-agent` beside this example's directory (`target/release/`), or
//! `MESH_AGENT_BIN`.

use std::time::{Duration, Instant};

use serde_json::json;
use test_support::mesh::{Ca, alive_count};
use test_support::{Agent, wait_until};

const PATIENCE: Duration = Duration::from_secs(120);

const HEALTHY: &str =
    "package bench.gate\n\nimport rego.v1\n\nresult := {\"allow\": true, \"rev\": 1}\n";
const FAILING: &str = "package bench.gate\n\nimport rego.v1\n\nresult := {\"allow\": count([[x, y] | some x in numbers.range(1, 20000); some y in numbers.range(1, 20000)]) > 0, \"rev\": 2}\n";

struct Args {
    mode: String,
    nodes: usize,
    runs: usize,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage());
    let mut args = Args {
        mode,
        nodes: 5,
        runs: 5,
    };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--nodes" => args.nodes = value.parse().unwrap_or_else(|_| usage()),
            "--runs" => args.runs = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    args
}

fn usage() -> ! {
    eprintln!("usage: rollout_bench canary-revert [--nodes N] [--runs N]");
    std::process::exit(2)
}

fn main() {
    let args = args();
    let mut times = Vec::new();
    for run in 1..=args.runs {
        let took = match args.mode.as_str() {
            "canary-revert" => canary_revert(args.nodes, run),
            _ => usage(),
        };
        println!("run {run}: {:.3} s", took.as_secs_f64());
        times.push(took);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{} nodes, {} runs: median {:.3} s (min {:.3}, max {:.3})",
        args.nodes,
        times.len(),
        median.as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );
}

/// `n1`..`nN` in one mesh with the default gossip interval, once all see each other.
fn mesh(ca: &Ca, cluster: &str, nodes: usize) -> Vec<Agent> {
    let agents = test_support::mesh::start(ca, cluster, nodes, |options, _| {
        options
            .env("MESH_AGENT_MESH_GOSSIP_INTERVAL_MS", "200")
            .env("MESH_AGENT_REGO_TIME_LIMIT_MS", "50")
            .env("RUST_LOG", "warn")
    });
    wait_until(PATIENCE, || {
        let seen: Vec<usize> = agents.iter().map(alive_count).collect();
        seen.iter()
            .all(|&s| s == nodes)
            .then_some(())
            .ok_or(format!("alive seen: {seen:?}"))
    });
    agents
}

/// The gate's revision on `node`, `None` when the decision failed.
fn rev(node: &Agent) -> Option<u64> {
    let (status, body) = node.post("/v1/data/bench/gate/result", &json!({"input": {}}));
    if status != 200 || body.get("error").is_some() {
        return None;
    }
    body["result"]["rev"].as_u64()
}

fn canary_revert(nodes: usize, run: usize) -> Duration {
    let ca = Ca::new();
    let agents = mesh(&ca, &format!("bench-canary-{run}"), nodes);
    let (status, body) = agents[0].put_text("/v1/policies/gate", HEALTHY);
    assert_eq!(status, 200, "{body}");
    wait_until(PATIENCE, || {
        agents
            .iter()
            .all(|a| rev(a) == Some(1))
            .then_some(())
            .ok_or("the healthy module everywhere".to_owned())
    });
    let (status, rollout) = agents[0].post(
        "/rollouts",
        &json!({
            "subject": {"kind": "rego_module", "id": "gate"},
            "module": FAILING,
            "canary": {"fraction": 0.4, "bake_sec": 3600}
        }),
    );
    assert_eq!(status, 202, "{rollout}");
    let canary: usize = rollout["plan"]["nodes"][0]
        .as_str()
        .and_then(|n| n[1..].parse().ok())
        .expect("a canary node");
    let canary = &agents[canary - 1];
    // The first decision that fails on a canary node: the canary has failed, as callers see it.
    let failed_at = wait_until(PATIENCE, || {
        let asked = Instant::now();
        match rev(canary) {
            None => Ok(asked),
            Some(_) => Err("the canary node still answers".to_owned()),
        }
    });
    wait_until(PATIENCE, || {
        let behind = agents.iter().filter(|a| rev(a) != Some(1)).count();
        (behind == 0)
            .then_some(())
            .ok_or(format!("{behind} nodes not reverted"))
    });
    failed_at.elapsed()
}
