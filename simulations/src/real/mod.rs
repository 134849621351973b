//! The `real` engine: every node is the `mesh-agent` binary, a process of its own with its own
//! data directory, gossiping over QUIC with mutual TLS, each in a network namespace on a veth
//! pair into one bridge ([`netns`]). Faults are real: a kill is SIGKILL, a partition is blackhole
//! routes, loss and delay are injected under quinn by the agent's hidden `--sim-net-faults FILE`
//! (this kernel has no `netem`). `mesh-sim` drives and samples the nodes through their HTTP APIs
//! from the root namespace, on the wall clock, so a run is not repeatable to the millisecond.

mod netns;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::fast::network::Traffic;
use crate::fast::node_id;
use crate::reach::Reach;
use crate::report::{Detection, Recorder, Report, Run};
use crate::scenario::{FaultKind, Scenario, secs};
use netns::Network;

const HTTP_PORT: u16 = 8080;
const GOSSIP_PORT: u16 = 7946;
/// How long a node has to answer `/health` after it is started.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Liveness is sampled at most this often: each sample asks every node for its member list, and
/// at 100 nodes on 2 cores sampling every 250 ms took enough of the CPU the agents need to slow
/// the rollout it measures (writes past 10 s instead of about 6 s).
const LIVENESS_EVERY: Duration = Duration::from_secs(1);

struct Node {
    id: String,
    dir: PathBuf,
    api: SocketAddr,
    gossip: SocketAddr,
    process: Option<Child>,
    /// What its counters said when it was last stopped, added to what they say after.
    traffic: Traffic,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    agent: PathBuf,
    dir: PathBuf,
    tls: PathBuf,
    net: Network,
    nodes: Vec<Node>,
    http: reqwest::Client,
    start: Instant,
    recorder: Recorder,
    reach: Reach,
    /// Loss and delay for every node's links, and for some nodes', as the scenario set them: a
    /// node's own is the worse of the two, as in the fast engine.
    everyone: (f64, f64),
    degraded: HashMap<usize, (f64, f64)>,
    /// Whether any link is ever degraded: if not, the agents run on quinn's own socket.
    faulty: bool,
}

/// Runs `scenario` with `agent` (the `mesh-agent` binary) as every node.
pub async fn run(
    scenario: &Scenario,
    agent: &Path,
    progress: &dyn Fn(f64),
) -> anyhow::Result<Report> {
    if !scenario.incidents.is_empty() {
        bail!(
            "incidents: the real engine drives policy changes and faults; incident workloads run on the fast engine"
        );
    }
    if scenario
        .faults
        .iter()
        .any(|f| matches!(f.kind, FaultKind::KillActor))
    {
        bail!("faults: kill_actor needs an incident workload, which runs on the fast engine");
    }
    if !agent.is_file() {
        bail!(
            "{}: no mesh-agent binary there (build it with `cargo build --release -p mesh-agent`, or give --agent)",
            agent.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let tls = dir.path().join("tls");
    agent_identity::certs::init(&tls, false)?;
    for i in 0..scenario.max_nodes() {
        agent_identity::certs::issue(&tls, &node_id(i), 30)?;
    }
    let mut sim = Sim {
        scenario,
        agent: agent.to_owned(),
        dir: dir.path().to_owned(),
        tls,
        net: Network::new(scenario.max_nodes())?,
        nodes: Vec::new(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()?,
        start: Instant::now(),
        recorder: Recorder::new(scenario),
        reach: Reach::default(),
        everyone: (scenario.network.loss, scenario.network.delay_ms),
        degraded: HashMap::new(),
        faulty: scenario.network.loss > 0.0
            || scenario.network.delay_ms > 0.0
            || scenario
                .faults
                .iter()
                .any(|f| matches!(f.kind, FaultKind::Degrade { .. })),
    };
    // Interrupted, the run still takes everything down (processes, namespaces, the bridge, the
    // kernel settings it raised) before it ends.
    let outcome = tokio::select! {
        outcome = sim.drive(progress) => outcome,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    // Every process goes, whatever happened; the network goes when `sim` drops.
    for node in &mut sim.nodes {
        if let Some(mut child) = node.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    outcome
}

impl Sim<'_> {
    async fn drive(&mut self, progress: &dyn Fn(f64)) -> anyhow::Result<Report> {
        let scenario = self.scenario;
        for _ in 0..scenario.nodes {
            self.add_node()?;
        }
        for i in 0..self.nodes.len() {
            self.wait_ready(i).await?;
        }
        // Time counts from when every node answers: starting 100 processes takes a while.
        self.start = Instant::now();
        for i in 0..self.nodes.len() {
            self.reach.up(i, self.start);
            self.recorder.node_up(i, Duration::ZERO);
        }
        let start = self.start;
        let end = start + secs(scenario.duration_sec);
        let sample = Duration::from_millis(scenario.sample_ms);
        let mut faults = scenario.faults.iter().peekable();
        let mut writes = scenario.writes.iter().enumerate().peekable();
        let mut next_sample = start;
        let mut next_liveness = start;
        loop {
            let now = Instant::now();
            while let Some(fault) = faults.next_if(|f| start + secs(f.at_sec) <= now) {
                self.apply(&fault.kind).await?;
            }
            while let Some((k, write)) = writes.next_if(|(_, w)| start + secs(w.at_sec) <= now) {
                self.write(write.node, write.policy_json(k))
                    .await
                    .with_context(|| format!("writes[{k}]"))?;
            }
            if now >= next_sample {
                self.sample_policies().await;
                next_sample = Instant::now().max(next_sample + sample);
            }
            if now >= next_liveness {
                self.sample_liveness().await;
                next_liveness = Instant::now().max(next_liveness + sample.max(LIVENESS_EVERY));
            }
            progress((Instant::now() - start).as_secs_f64());
            if Instant::now() >= end {
                break;
            }
            let next = [
                faults.peek().map(|f| start + secs(f.at_sec)),
                writes.peek().map(|(_, w)| start + secs(w.at_sec)),
                Some(next_sample),
                Some(next_liveness),
                Some(end),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(end);
            tokio::time::sleep_until(next).await;
        }
        let elapsed = self.elapsed();
        for i in 0..self.nodes.len() {
            if self.nodes[i].process.is_some() {
                self.nodes[i].traffic = self.traffic(i).await;
            }
        }
        self.recorder.ended(elapsed);
        for i in 0..self.nodes.len() {
            let traffic = std::mem::take(&mut self.nodes[i].traffic);
            self.recorder.traffic(i, traffic);
        }
        let logs: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| std::fs::read_to_string(n.dir.join("agent.log")).ok())
            .filter(|log| log.contains("panicked"))
            .collect();
        if !logs.is_empty() {
            bail!("{} agents panicked:\n{}", logs.len(), logs.join("\n"));
        }
        let recorder = std::mem::replace(&mut self.recorder, Recorder::new(self.scenario));
        Ok(recorder.finish(Run::default()))
    }

    fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    fn add_node(&mut self) -> anyhow::Result<()> {
        let i = self.nodes.len();
        self.net.add(i)?;
        let ip = self.net.addr(i);
        let dir = self.dir.join(node_id(i));
        std::fs::create_dir_all(&dir)?;
        self.nodes.push(Node {
            id: node_id(i),
            dir,
            api: SocketAddr::from((ip, HTTP_PORT)),
            gossip: SocketAddr::from((ip, GOSSIP_PORT)),
            process: None,
            traffic: Traffic::default(),
        });
        self.reach.add(i, Instant::now());
        self.write_faults(i)?;
        self.spawn(i)
    }

    /// Node `i`'s loss and delay: the worse of everyone's and its own.
    fn write_faults(&self, i: usize) -> anyhow::Result<()> {
        let (mut loss, mut delay_ms) = self.everyone;
        if let Some(&(own_loss, own_delay)) = self.degraded.get(&i) {
            loss = loss.max(own_loss);
            delay_ms = delay_ms.max(own_delay);
        }
        // Written whole, then renamed: the agent never reads half a file.
        let file = self.nodes[i].dir.join("net-faults");
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("loss={loss} delay_ms={delay_ms}\n"))?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let s = self.scenario;
        let seeds: Vec<String> = (0..s.seeds.min(s.max_nodes()))
            .filter(|&j| j != i)
            .map(|j| SocketAddr::from((self.net.addr(j), GOSSIP_PORT)).to_string())
            .collect();
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("agent.log"))?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.net.namespace(i)])
            .arg(&self.agent)
            .arg("run")
            .args(["--node-id", &node.id])
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .args(["--http-listen", &node.api.to_string()])
            .arg("--tls-dir")
            .arg(&self.tls)
            .args(["--gossip-listen", &node.gossip.to_string()])
            .args(["--cluster-id", "sim"])
            .env(
                "MESH_AGENT_MESH_GOSSIP_INTERVAL_MS",
                s.gossip_interval_ms.to_string(),
            )
            .env("MESH_AGENT_MESH_PHI_THRESHOLD", s.phi_threshold.to_string())
            .env(
                "MESH_AGENT_MESH_SUSPECT_AFTER_MS",
                (s.gossip_interval_ms * 10).to_string(),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for seed in &seeds {
            command.args(["--seed", seed]);
        }
        if self.faulty {
            command
                .arg("--sim-net-faults")
                .arg(node.dir.join("net-faults"));
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.agent.display()))?;
        self.nodes[i].process = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://{}/health", self.nodes[i].api);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(response) = self.http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if let Some(child) = self.nodes[i].process.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = std::fs::read_to_string(self.nodes[i].dir.join("agent.log"))
                    .unwrap_or_default();
                bail!("{} exited ({status}):\n{log}", self.nodes[i].id);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer /health within {READY_WITHIN:?}",
                    self.nodes[i].id
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn apply(&mut self, fault: &FaultKind) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let now = Instant::now();
        match fault {
            FaultKind::Kill { nodes } => {
                for i in nodes.resolve(n)? {
                    if self.nodes[i].process.is_none() {
                        continue;
                    }
                    let traffic = self.traffic(i).await;
                    self.nodes[i].traffic = traffic;
                    if let Some(mut child) = self.nodes[i].process.take() {
                        child.kill()?;
                        child.wait()?;
                    }
                    let observers = self.running();
                    self.recorder.killed(i, self.elapsed(), observers);
                }
            }
            FaultKind::Restart { nodes } => {
                for i in nodes.resolve(n)? {
                    if self.nodes[i].process.is_none() {
                        self.spawn(i)?;
                        self.wait_ready(i).await?;
                        self.reach.up(i, Instant::now());
                        self.recorder.node_up(i, self.elapsed());
                    }
                }
            }
            FaultKind::Partition { groups } => {
                let members = self.reach.partition(groups, now)?;
                self.net.partition(members)?;
                self.recorder.partitioned(self.elapsed());
            }
            FaultKind::Heal => {
                self.net.heal()?;
                self.reach.heal(now);
                self.recorder.healed(self.elapsed());
            }
            FaultKind::Degrade {
                nodes,
                loss,
                delay_ms,
            } => {
                match nodes {
                    Some(set) => {
                        for i in set.resolve(n)? {
                            self.degraded.insert(i, (*loss, *delay_ms));
                        }
                    }
                    None => self.everyone = (*loss, *delay_ms),
                }
                for i in 0..n {
                    self.write_faults(i)?;
                }
            }
            FaultKind::Join { count } => {
                for _ in 0..*count {
                    self.add_node()?;
                    let i = self.nodes.len() - 1;
                    // A node that joins during a partition is in the one more group, cut off
                    // from every listed group, as in the fast engine.
                    if let Some(groups) = self.reach.partition_in_force() {
                        self.net.partition(groups)?;
                    }
                    self.wait_ready(i).await?;
                    self.reach.up(i, Instant::now());
                    self.recorder.node_up(i, self.elapsed());
                }
            }
            // Refused before the run starts.
            FaultKind::KillActor => {}
        }
        Ok(())
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].process.is_some())
            .collect()
    }

    async fn write(&mut self, node: usize, policy: Value) -> anyhow::Result<()> {
        let at = self.elapsed();
        if self.nodes.get(node).is_none_or(|n| n.process.is_none()) {
            self.recorder.wrote(node, None, at, Vec::new());
            return Ok(());
        }
        let url = format!("http://{}/policies", self.nodes[node].api);
        let response = self.http.post(&url).json(&policy).send().await?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let Some(id) = body["id"].as_u64().filter(|_| status.is_success()) else {
            bail!("node {node} answered {status}: {body}");
        };
        let cohort = self.running();
        self.recorder.wrote(node, Some(id), at, cohort);
        Ok(())
    }

    /// GETs `path` from every running node at once; a node that does not answer is left out.
    async fn ask_all(&self, path: &str) -> HashMap<usize, Value> {
        let mut asks = JoinSet::new();
        for i in self.running() {
            let url = format!("http://{}{path}", self.nodes[i].api);
            let http = self.http.clone();
            asks.spawn(async move {
                let value = async { http.get(&url).send().await?.json::<Value>().await };
                (i, value.await.ok())
            });
        }
        let mut answers = HashMap::new();
        while let Some(joined) = asks.join_next().await {
            if let Ok((i, Some(value))) = joined {
                answers.insert(i, value);
            }
        }
        answers
    }

    async fn sample_policies(&mut self) {
        let at = self.elapsed();
        let running = self.running();
        let answers = self.ask_all("/policies").await;
        let ids = self.recorder.write_ids();
        let mut holders = vec![Vec::new(); ids.len()];
        for (&i, listing) in &answers {
            let held: HashSet<u64> = listing
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["id"].as_u64())
                .collect();
            for (k, id) in ids.iter().enumerate() {
                if held.contains(id) {
                    holders[k].push(i);
                }
            }
        }
        for list in &mut holders {
            list.sort_unstable();
        }
        self.recorder.policies(at, &running, &holders);
    }

    async fn sample_liveness(&mut self) {
        let at = self.elapsed();
        let now = Instant::now();
        let running = self.running();
        let answers = self.ask_all("/mesh/members").await;
        let running_ids: HashSet<&str> =
            running.iter().map(|&i| self.nodes[i].id.as_str()).collect();
        let pending = self.recorder.pending_detections();
        let mut all_see_all = true;
        let mut false_dead = 0;
        let mut detections = Vec::new();
        for &i in &running {
            // A node that did not answer in time says nothing this round.
            let Some(answer) = answers.get(&i) else {
                all_see_all = false;
                continue;
            };
            let alive: HashSet<&str> = answer["members"]
                .as_array()
                .into_iter()
                .flatten()
                // Live as chitchat holds it (alive or suspect), as the fast engine counts.
                .filter(|m| m["state"] != "dead")
                .filter_map(|m| m["node_id"].as_str())
                .collect();
            if running_ids.iter().any(|id| !alive.contains(id)) {
                all_see_all = false;
            }
            let reach = &self.reach;
            if reach.settled(i, now) {
                false_dead += running
                    .iter()
                    .filter(|&&j| reach.group(j) == reach.group(i) && reach.settled(j, now))
                    .filter(|&&j| !alive.contains(self.nodes[j].id.as_str()))
                    .count();
            }
            for &k in &pending {
                if !alive.contains(self.nodes[k].id.as_str()) {
                    detections.push(Detection {
                        killed: k,
                        observer: i,
                    });
                }
            }
        }
        self.recorder
            .liveness(at, &running, all_see_all, false_dead, &detections);
    }

    /// Node `i`'s gossip counters, as its `/metrics` says, added to those of its earlier runs.
    async fn traffic(&self, i: usize) -> Traffic {
        let earlier = &self.nodes[i].traffic;
        let url = format!("http://{}/metrics", self.nodes[i].api);
        let text = match self.http.get(&url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let counter = |name: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Traffic {
            gossip_bytes: earlier.gossip_bytes + counter("mesh_gossip_sent_bytes"),
            gossip_messages: earlier.gossip_messages,
            gossip_lost: earlier.gossip_lost + counter("mesh_gossip_dropped_messages"),
            pull_bytes: earlier.pull_bytes,
        }
    }
}

/// Resolves on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
