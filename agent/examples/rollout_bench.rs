//! Safe rollout, timed on real agents in a gossip mesh on this machine (loopback, default gossip
//! interval of 200 ms).
//!
//! ```sh
//! cargo build --release -p mesh-agent --example rollout_bench
//! target/release/examples/rollout_bench canary-revert --nodes 5 --runs 5
//! target/release/examples/rollout_bench bundle --nodes 50 --runs 5 --bytes 1000000
//! ```
//!
//! `canary-revert`: a Rego module's canary whose every evaluation runs into the time limit. From the
//! first decision that fails on a canary node (the canary failing, as its callers see it) until
//! every node answers with the previous version again (the rollout failed, the mesh carried that
//! to every node, each reverted). One mesh; each run rolls out a module of its own.
//!
//! `bundle`: a signed bundle of about `--bytes` (its `.tar.gz`; the data is random, so gzip
//! cannot shrink it much) pushed to one node, until every node has verified and activated it
//! (`/v1/status` names its revision). One mesh; each run pushes a new revision to another node.
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
    bytes: usize,
}

fn args() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage());
    let mut args = Args {
        mode,
        nodes: 5,
        runs: 5,
        bytes: 1_000_000,
    };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--nodes" => args.nodes = value.parse().unwrap_or_else(|_| usage()),
            "--runs" => args.runs = value.parse().unwrap_or_else(|_| usage()),
            "--bytes" => args.bytes = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    args
}

fn usage() -> ! {
    eprintln!("usage: rollout_bench canary-revert|bundle [--nodes N] [--runs N] [--bytes N]");
    std::process::exit(2)
}

fn main() {
    let args = args();
    let mut times = Vec::new();
    match args.mode.as_str() {
        "canary-revert" => {
            let ca = Ca::new();
            let agents = mesh(&ca, "bench-canary", args.nodes, &[]);
            // A node judges no rollout in its first 10 s (its view of the members is filling):
            // measure a mesh past that, as a mesh in service is.
            std::thread::sleep(Duration::from_secs(12));
            for run in 1..=args.runs {
                let took = canary_revert(&agents, run);
                println!("run {run}: {:.3} s", took.as_secs_f64());
                times.push(took);
            }
        }
        "bundle" => times = bundle_rollout(args.nodes, args.runs, args.bytes),
        _ => usage(),
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
fn mesh(ca: &Ca, cluster: &str, nodes: usize, extra: &[&str]) -> Vec<Agent> {
    let agents = test_support::mesh::start(ca, cluster, nodes, |options, _| {
        let mut options = options
            .env("MESH_AGENT_MESH_GOSSIP_INTERVAL_MS", "200")
            .env("MESH_AGENT_REGO_TIME_LIMIT_MS", "50")
            .env("RUST_LOG", "warn");
        for arg in extra {
            options = options.arg(*arg);
        }
        options
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

fn canary_revert(agents: &[Agent], run: usize) -> Duration {
    let module = format!("gate{run}");
    let package = format!("bench.gate{run}");
    let path = format!("/v1/data/bench/gate{run}/result");
    let rev = |node: &Agent| -> Option<u64> {
        // An input of its own each time: no answer comes from the decision cache.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (status, body) = node.post(&path, &json!({"input": {"call": call}}));
        if status != 200 || body.get("error").is_some() {
            return None;
        }
        body["result"]["rev"].as_u64()
    };
    let (status, body) = agents[0].put_text(
        &format!("/v1/policies/{module}"),
        &HEALTHY.replace("bench.gate", &package),
    );
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
            "subject": {"kind": "rego_module", "id": module},
            "module": FAILING.replace("bench.gate", &package),
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

/// Random text of `bytes` characters (base64 of random bytes: gzip keeps about three quarters).
fn noise(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut raw = vec![0u8; bytes * 3 / 4];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .expect("random bytes");
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn bundle_rollout(nodes: usize, runs: usize, bytes: usize) -> Vec<Duration> {
    let key = test_support::bundles::key();
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("bundle-key.pem");
    std::fs::write(&key_file, &key.public_pem).expect("key file");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[bundle.keys.test]\nalgorithm = \"ES256\"\nkey_file = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .expect("config");
    let ca = Ca::new();
    let config = config.display().to_string();
    let agents = mesh(&ca, "bench-bundle", nodes, &["--config", &config]);
    let mut times = Vec::new();
    for run in 1..=runs {
        let revision = format!("r{run}");
        // Roughly `bytes` of archive: the random text compresses to about 3/4 of itself.
        let data = serde_json::json!({"users": ["alice"], "padding": noise(bytes * 4 / 3)});
        let archive = test_support::bundles::signed(&key, "bench/big", &revision, &data);
        let target = &agents[(run - 1) % agents.len()];
        let started = Instant::now();
        let response = reqwest::blocking::Client::new()
            .put(target.url("/v1/bundles/big"))
            .body(archive.clone())
            .timeout(PATIENCE)
            .send()
            .expect("push");
        assert_eq!(response.status().as_u16(), 200, "{:?}", response.text());
        wait_until(PATIENCE, || {
            let behind = agents
                .iter()
                .filter(|a| {
                    a.get("/v1/status").1["result"]["bundles"]["big"]["active_revision"]
                        != revision.as_str()
                })
                .count();
            (behind == 0)
                .then_some(())
                .ok_or(format!("{behind} nodes without {revision}"))
        });
        let took = started.elapsed();
        println!(
            "run {run}: {:.3} s ({} bytes of archive)",
            took.as_secs_f64(),
            archive.len()
        );
        times.push(took);
    }
    times
}
