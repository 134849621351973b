//! `mesh-sim quic`: N in-process nodes on real QUIC loopback sockets and the real clock, and what
//! the mesh promises measured: how long a write takes to reach every node, how long until a
//! stopped node is seen dead by all, and how many gossip bytes a node sends per second at steady
//! state. Prints a Markdown row (JSON with `--json`).

use std::time::{Duration, Instant};

use agent_mesh::members::MemberState;
use mesh_sim::report::median;
use mesh_sim::{Cluster, ClusterSettings};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Nodes in the mesh.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Gossip interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Policy writes to time (each at another node).
    #[arg(long, default_value_t = 10)]
    writes: usize,
    /// Seconds of steady state over which gossip traffic is measured.
    #[arg(long, default_value_t = 10)]
    steady_secs: u64,
    /// Print JSON instead of Markdown.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    nodes: usize,
    interval_ms: u64,
    /// Time until every node saw every other node alive.
    membership_ms: f64,
    /// Per write: time until every node held it.
    rollout_ms: Vec<f64>,
    rollout_median_ms: f64,
    rollout_max_ms: f64,
    /// Time until every other node saw a stopped node dead.
    failure_detection_ms: f64,
    /// Gossip payload bytes per second per node at steady state.
    gossip_payload_bytes_per_sec_per_node: f64,
    /// UDP bytes (QUIC, TLS and keep-alives included) per second per node at steady state.
    udp_bytes_per_sec_per_node: f64,
    /// Most (observer, running node) pairs seen not alive at once during the steady state.
    steady_false_alarms: usize,
}

const LIMIT: Duration = Duration::from_secs(120);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = ClusterSettings {
        gossip_interval: Duration::from_millis(args.interval_ms),
        ..ClusterSettings::default()
    };
    let start = Instant::now();
    let mut cluster = Cluster::start(args.nodes, settings).await?;
    eprintln!("{} nodes started in {:?}", args.nodes, start.elapsed());

    let n = args.nodes;
    let started = Instant::now();
    let mut membership = None;
    while started.elapsed() < LIMIT {
        let mut all = true;
        for node in &cluster.nodes {
            let Some(mesh) = &node.mesh else { continue };
            let alive = mesh
                .members()
                .await
                .iter()
                .filter(|m| m.state == MemberState::Alive)
                .count();
            if alive < n {
                all = false;
                break;
            }
        }
        if all {
            membership = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let membership = membership.ok_or_else(|| anyhow::anyhow!("membership never converged"))?;
    eprintln!("membership converged in {membership:?}");

    let mut rollout = Vec::with_capacity(args.writes);
    for k in 0..args.writes {
        let id = cluster.create_policy(k * 7 % n, &format!("sim-{k}"), k as i64)?;
        let took = cluster
            .wait_for(LIMIT, |c| c.all_have(id))
            .await?
            .ok_or_else(|| anyhow::anyhow!("write {k} never reached every node"))?;
        eprintln!("write {k}: every node had it after {took:?}");
        rollout.push(took.as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(args.interval_ms * 2)).await;
    }

    let (payload_before, udp_before) = cluster.gossip_bytes();
    let window = Instant::now();
    // Every half second, count (observer, node) pairs where a running node is not seen alive: a
    // healthy mesh at steady state has none (failure-detector false alarms would show here).
    let mut false_alarms = 0;
    while window.elapsed() < Duration::from_secs(args.steady_secs) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        false_alarms = false_alarms.max(cluster.not_alive_pairs().await);
    }
    let (payload_after, udp_after) = cluster.gossip_bytes();
    let seconds = window.elapsed().as_secs_f64();
    let per_node =
        |before: u64, after: u64| (after.saturating_sub(before)) as f64 / seconds / n as f64;

    let victim = n - 1;
    // Measure from a node every other node sees alive.
    while started.elapsed() < LIMIT * 2 {
        let (seen, running) = cluster.seen_as(victim, MemberState::Alive).await;
        if seen == running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The clock starts before the stop: closing the node's connections takes a while.
    let stopped = Instant::now();
    cluster.stop_node(victim).await;
    let mut detection = None;
    while stopped.elapsed() < LIMIT {
        let (seen, running) = cluster.seen_as(victim, MemberState::Dead).await;
        if seen == running {
            detection = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let detection =
        detection.ok_or_else(|| anyhow::anyhow!("the stopped node was never seen dead by all"))?;

    let report = Report {
        nodes: n,
        interval_ms: args.interval_ms,
        membership_ms: membership.as_secs_f64() * 1e3,
        rollout_median_ms: median(&rollout),
        rollout_max_ms: rollout.iter().copied().fold(0.0, f64::max),
        rollout_ms: rollout,
        failure_detection_ms: detection.as_secs_f64() * 1e3,
        gossip_payload_bytes_per_sec_per_node: per_node(payload_before, payload_after),
        udp_bytes_per_sec_per_node: per_node(udp_before, udp_after),
        steady_false_alarms: false_alarms,
    };
    cluster.shutdown().await;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "| nodes | interval | membership | rollout median | rollout max | dead seen by all | gossip payload / node | UDP / node | false alarms |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {} | {} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} KB/s | {:.1} KB/s | {} |",
            report.nodes,
            report.interval_ms,
            report.membership_ms,
            report.rollout_median_ms,
            report.rollout_max_ms,
            report.failure_detection_ms,
            report.gossip_payload_bytes_per_sec_per_node / 1e3,
            report.udp_bytes_per_sec_per_node / 1e3,
            report.steady_false_alarms,
        );
    }
    Ok(())
}
