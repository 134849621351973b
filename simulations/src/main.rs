//! `mesh-sim`: runs scenarios of many mesh-agent nodes and reports what happened.
//!
//! - `mesh-sim run SCENARIO.toml --out DIR`: runs a scenario, writes `DIR/report.json` and
//!   `DIR/report.html`, prints a summary, and exits non-zero when an expectation fails.
//! - `mesh-sim quic --nodes N`: N in-process nodes on real QUIC and the real clock, measured.

mod entropy;
mod quic;

// The daemon's allocator comes with the engine: regorus makes its mimalloc the global allocator
// of every binary that links it (glibc's malloc spent a quarter of a 100-node simulation's CPU
// where mimalloc spends little).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_sim::fast;
use mesh_sim::report::{Report, Run, html};
use mesh_sim::scenario::{Engine, Scenario};

#[derive(Parser)]
#[command(name = "mesh-sim", about = "Simulate a mesh of mesh-agent nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario file and write its report.
    Run {
        scenario: PathBuf,
        /// Directory for report.json and report.html (created).
        #[arg(long)]
        out: PathBuf,
        /// Run with this seed instead of the scenario's.
        #[arg(long)]
        seed: Option<u64>,
        /// The `mesh-agent` binary the real engine runs [default: beside mesh-sim].
        #[arg(long, value_name = "FILE")]
        agent: Option<PathBuf>,
    },
    /// Measure N in-process nodes on real QUIC loopback sockets.
    Quic(quic::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run {
            scenario,
            out,
            seed,
            agent,
        } => run(&scenario, &out, seed, agent),
        Command::Quic(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(quic::run(args)))
            .map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("mesh-sim: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Simulated time starts at 2026-01-01T00:00:00Z, whenever the run happens.
const SIM_EPOCH_US: i64 = 1_767_225_600_000_000;
static SIM_START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();

fn sim_now_us() -> i64 {
    let since = SIM_START.get().map_or(Duration::ZERO, |start| {
        tokio::time::Instant::now().saturating_duration_since(*start)
    });
    SIM_EPOCH_US + since.as_micros() as i64
}

/// Runs the scenario at `path`; `Ok(false)` when an expectation failed.
fn run(path: &Path, out: &Path, seed: Option<u64>, agent: Option<PathBuf>) -> anyhow::Result<bool> {
    let mut scenario = Scenario::read(path)?;
    if let Some(seed) = seed {
        scenario.seed = seed;
    }
    let report = match scenario.engine {
        Engine::Fast => run_fast(&scenario, out)?,
        Engine::Real => run_real(&scenario, out, agent)?,
    };
    write_report(&report, out)
}

/// The bar drawn while a scenario runs, in simulated (or wall) milliseconds.
fn progress_bar(scenario: &Scenario, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new((scenario.duration_sec * 1e3) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit} ms, {{elapsed}} wall"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(scenario.name.clone());
    bar
}

fn run_real(scenario: &Scenario, out: &Path, agent: Option<PathBuf>) -> anyhow::Result<Report> {
    let agent = match agent {
        Some(agent) => agent,
        None => std::env::current_exe()?
            .parent()
            .context("mesh-sim's directory")?
            .join("mesh-agent"),
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bar = progress_bar(scenario, "wall");
    let wall = std::time::Instant::now();
    let runtime = tokio::runtime::Runtime::new()?;
    let progress = |secs: f64| bar.set_position((secs * 1e3) as u64);
    let report = runtime.block_on(mesh_sim::real::run(scenario, &agent, &progress));
    bar.finish_and_clear();
    let mut report = report?;
    report.run.wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    Ok(report)
}

fn run_fast(scenario: &Scenario, out: &Path) -> anyhow::Result<Report> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    entropy::seed(scenario.seed);
    agent_base::clock::set_source(sim_now_us);

    let done_ms = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(scenario, "simulated");
    let wall = std::time::Instant::now();
    // The engine runs on a thread started after the seed (std's hash keys are per thread), and
    // the bar is drawn from this one, so drawing draws no randomness from the engine's stream.
    let engine = {
        let scenario = scenario.clone();
        let done_ms = Arc::clone(&done_ms);
        std::thread::Builder::new()
            .name("mesh-sim".into())
            .stack_size(64 << 20)
            .spawn(move || -> anyhow::Result<Report> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()?;
                runtime.block_on(async {
                    let _ = SIM_START.set(tokio::time::Instant::now());
                    let progress =
                        |secs: f64| done_ms.store((secs * 1e3) as u64, Ordering::Relaxed);
                    fast::run(&scenario, &progress).await
                })
            })?
    };
    while !engine.is_finished() {
        bar.set_position(done_ms.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut report = engine
        .join()
        .map_err(|_| anyhow::anyhow!("the simulation thread panicked"))??;
    bar.finish_and_clear();
    report.run = Run {
        wall_ms: wall.elapsed().as_secs_f64() * 1e3,
        peak_rss_mb: peak_rss_mb(),
        ..report.run
    };
    Ok(report)
}

/// Writes `report.json` and `report.html`, prints the summary; `Ok(false)` when an expectation
/// failed.
fn write_report(report: &Report, out: &Path) -> anyhow::Result<bool> {
    let json = out.join("report.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let page = out.join("report.html");
    std::fs::write(&page, html::render(report)?)
        .with_context(|| format!("writing {}", page.display()))?;
    print_summary(report);
    println!("report: {} and {}", json.display(), page.display());
    Ok(report.expectations.iter().all(|e| e.ok))
}

fn print_summary(r: &Report) {
    let opt = |v: Option<f64>| v.map_or("never".to_owned(), |v| format!("{v:.0} ms"));
    println!(
        "{} ({} engine, {} nodes, seed {}): {:.1} s {} in {:.1} s wall, peak {:.0} MB",
        r.scenario,
        r.engine,
        r.max_nodes,
        r.seed,
        r.duration_sec,
        if r.engine == "real" {
            "of scenario (after every node answered)"
        } else {
            "simulated"
        },
        r.run.wall_ms / 1e3,
        r.run.peak_rss_mb
    );
    println!("  membership complete: {}", opt(r.membership_ms));
    if !r.writes.is_empty() {
        println!(
            "  rollout: 99% median {} max {}; 100% median {} max {}{}",
            opt(r.rollout.reach_99_median_ms),
            opt(r.rollout.reach_99_max_ms),
            opt(r.rollout.reach_100_median_ms),
            opt(r.rollout.reach_100_max_ms),
            match r.rollout.incomplete {
                0 => String::new(),
                n => format!(
                    " ({n} of {} writes never reached every node)",
                    r.writes.len()
                ),
            }
        );
    }
    for k in &r.kills {
        println!(
            "  node {} killed at {:.0} ms: first seen dead {}, by all {}",
            k.node,
            k.at_ms,
            opt(k.first_seen_ms),
            opt(k.all_seen_ms)
        );
    }
    let a = &r.actions;
    if a.incidents > 0 {
        println!(
            "  incidents: {} decided ({} with a failed policy), engine latency median {} p99 {}",
            a.incidents,
            a.evaluation_errors,
            bound(r.run.evaluation.p50_us),
            bound(r.run.evaluation.p99_us)
        );
        println!(
            "  actions: {} node, {} mesh ({} duplicates, {} takeovers)",
            a.node_actions,
            a.mesh.len(),
            a.duplicates,
            a.takeovers
        );
    }
    println!(
        "  gossip: {:.1} KB/s per node (max {:.1}), {}; false dead pairs at most {}",
        r.gossip.bytes_per_node_per_sec / 1e3,
        r.gossip.bytes_per_node_per_sec_max / 1e3,
        if r.gossip.messages > 0 {
            format!(
                "{} of {} messages lost",
                r.gossip.messages_lost, r.gossip.messages
            )
        } else {
            // The real engine reads the agents' counters: drops, not every message.
            format!("{} messages dropped by the agents", r.gossip.messages_lost)
        },
        r.false_dead_max
    );
    for e in &r.expectations {
        println!(
            "  {} {}: {}",
            if e.ok { "ok    " } else { "FAILED" },
            e.what,
            e.detail
        );
    }
}

/// A latency bucket's upper bound.
fn bound(us: Option<f64>) -> String {
    match us {
        Some(us) if us.is_finite() => format!("<= {us:.1} us"),
        Some(_) => "over 100 ms".into(),
        None => "none".into(),
    }
}

/// The process's peak resident memory (`VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
