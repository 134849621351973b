//! The `fast` engine: every node is the agent's own code (chitchat, the pull protocol, the merge,
//! a store on redb's in-memory backend, the policy engine, decisions with mesh facts and mesh
//! actions, see [`agent`]) on one current-thread tokio runtime whose clock is paused, over the
//! in-memory network of [`network`]. Time moves only when every node is
//! waiting, straight to the next timer, so 1,000 nodes run far faster than real time, and with
//! the process's entropy seeded (see the binary's `entropy` module) a seed gives the same run.

pub mod agent;
mod incidents;
pub mod network;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_identity::TlsFiles;
use agent_mesh::{Identity, Mesh, MeshConfig, MeshMetrics};
use agent_store::Store;
use anyhow::Context;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;

use crate::reach::Reach;
use crate::report::{Detection, Recorder, Report, Run};
use crate::scenario::{FaultKind, Scenario, secs};
use agent::{Agent, Delivery};
use incidents::Workload;
use network::{LinkQuality, SimNet};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Mixed into the seed for the start offsets, so they are not the network's loss draws.
const START_JITTER_STREAM: u64 = 0x005e_ed0f_57a7;

/// Liveness sampling while a figure depends on it (membership, a detection), and otherwise.
const LIVENESS_FINE: Duration = Duration::from_millis(100);
const LIVENESS_COARSE: Duration = Duration::from_secs(1);

struct SimNode {
    id: String,
    addr: SocketAddr,
    store: Arc<Store>,
    /// While it runs.
    agent: Option<Agent>,
}

/// Node `i`'s address: 10.x.y.z, port 7946 (IP seeds: no DNS in a simulation).
pub fn node_addr(i: usize) -> SocketAddr {
    let n = i as u32 + 1;
    SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 7946))
}

pub fn node_id(i: usize) -> String {
    format!("node-{i:04}")
}

/// Runs `scenario` to its end on the current (current-thread, paused) runtime. `progress` is
/// told the simulated seconds done.
pub async fn run(scenario: &Scenario, progress: &dyn Fn(f64)) -> anyhow::Result<Report> {
    let start = Instant::now();
    let max_nodes = scenario.max_nodes();
    let dir = tempfile::tempdir()?;
    let tls = dir.path().join("tls");
    agent_identity::certs::init(&tls, false)?;
    for i in 0..max_nodes {
        agent_identity::certs::issue(&tls, &node_id(i), 30)?;
    }
    let net = SimNet::new(
        scenario.seed,
        LinkQuality {
            loss: scenario.network.loss,
            delay: ms(scenario.network.delay_ms),
        },
    );
    let (deliveries, delivered) = unbounded_channel();
    let mut sim = Sim {
        scenario,
        tls,
        net,
        nodes: Vec::with_capacity(max_nodes),
        start,
        recorder: Recorder::new(scenario),
        reach: Reach::default(),
        deliveries,
        delivered,
    };
    // Nodes start at seeded moments within the first gossip interval, as real ones do not all
    // start at once: started together, every node's rounds would tick at the same instants.
    let mut rng = StdRng::seed_from_u64(scenario.seed ^ START_JITTER_STREAM);
    let interval = Duration::from_millis(scenario.gossip_interval_ms);
    let mut offsets: Vec<Duration> = (0..scenario.nodes)
        .map(|_| interval.mul_f64(rng.random::<f64>()))
        .collect();
    offsets.sort();
    for offset in offsets {
        tokio::time::sleep_until(start + offset).await;
        sim.add_node().await?;
    }

    let end = start + secs(scenario.duration_sec);
    let sample = Duration::from_millis(scenario.sample_ms);
    let mut faults = scenario.faults.iter().peekable();
    let mut writes = scenario.writes.iter().enumerate().peekable();
    let mut workload = Workload::new(scenario)?;
    let mut next_sample = start;
    let mut next_liveness = start;
    loop {
        let now = Instant::now();
        sim.take_deliveries();
        while let Some(fault) = faults.next_if(|f| start + secs(f.at_sec) <= now) {
            sim.apply(&fault.kind).await?;
        }
        while let Some((k, write)) = writes.next_if(|(_, w)| start + secs(w.at_sec) <= now) {
            let policy = write.new_policy(k)?;
            sim.write(write.node, policy)
                .with_context(|| format!("writes[{k}]"))?;
        }
        while let Some(due) = workload.next_due(now - start) {
            sim.incident(due).await?;
        }
        if now >= next_sample {
            sim.sample_policies()?;
            next_sample += sample;
        }
        if now >= next_liveness {
            sim.sample_liveness().await;
            // Liveness costs O(nodes²): sampled finely only while something is to be timed, or
            // when no false alarm may go unseen.
            next_liveness += if sim.recorder.timing_liveness() || scenario.expect.no_false_dead {
                sample.max(LIVENESS_FINE)
            } else {
                sample.max(LIVENESS_COARSE)
            };
        }
        progress((now - start).as_secs_f64());
        if now >= end {
            break;
        }
        let next_event = [
            faults.peek().map(|f| start + secs(f.at_sec)),
            writes.peek().map(|(_, w)| start + secs(w.at_sec)),
            workload.next_at().map(|at| start + at),
            Some(next_sample),
            Some(next_liveness),
            Some(end),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(end);
        tokio::time::sleep_until(next_event.max(now)).await;
    }
    sim.take_deliveries();
    let elapsed = sim.elapsed();
    sim.recorder.ended(elapsed);
    for i in 0..sim.nodes.len() {
        sim.traffic_of(i);
    }
    let run = Run {
        pull_bytes: sim.recorder.pull_bytes(),
        ..Run::default()
    };
    let report = sim.recorder.finish(run);
    for node in sim.nodes {
        if let Some(agent) = node.agent {
            agent.stop().await;
        }
    }
    Ok(report)
}

fn ms(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.max(0.0) / 1e3)
}

struct Sim<'a> {
    scenario: &'a Scenario,
    tls: std::path::PathBuf,
    net: Arc<SimNet>,
    nodes: Vec<SimNode>,
    start: Instant,
    recorder: Recorder,
    reach: Reach,
    /// Actions the nodes' upstreams took out of their outboxes, not yet recorded.
    deliveries: UnboundedSender<Delivery>,
    delivered: UnboundedReceiver<Delivery>,
}

impl Sim<'_> {
    fn config(&self, i: usize) -> MeshConfig {
        let interval = self.scenario.gossip_interval_ms;
        MeshConfig {
            tls_dir: None,
            cluster_id: "sim".into(),
            gossip_listen: node_addr(i),
            gossip_advertise: Some(node_addr(i)),
            seeds: (0..self.scenario.seeds.min(self.scenario.max_nodes()))
                .filter(|&j| j != i)
                .map(|j| node_addr(j).to_string())
                .collect(),
            gossip_interval_ms: interval,
            phi_threshold: self.scenario.phi_threshold,
            suspect_after_ms: interval * 10,
            dead_node_grace_sec: 3_600,
            tombstone_ttl_sec: 7 * 24 * 3_600,
            sim_net_faults: None,
        }
    }

    async fn add_node(&mut self) -> anyhow::Result<()> {
        let i = self.nodes.len();
        let id = node_id(i);
        let store = Arc::new(Store::open_in_memory(&id)?);
        self.nodes.push(SimNode {
            id,
            addr: node_addr(i),
            store,
            agent: None,
        });
        self.reach.add(i, Instant::now());
        self.start_node(i).await
    }

    async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].agent.is_some() {
            return Ok(());
        }
        let config = self.config(i);
        let grace = config.dead_node_grace();
        let node = &self.nodes[i];
        let files = TlsFiles::read(&self.tls, &node.id)?;
        let identity = Identity::from_files(&node.id, &self.tls, &files)?;
        let net = Arc::clone(&self.net);
        let addr = node.addr;
        let store = Arc::clone(&node.store);
        let start_mesh = async |on_merged| {
            let mesh = Mesh::start_on(
                &node.id,
                config,
                (addr, addr),
                store,
                identity,
                MeshMetrics::default(),
                on_merged,
                move |handler| Ok(net.attach(addr, handler)),
            )
            .await?;
            anyhow::Ok(mesh)
        };
        let agent = Agent::start(
            i,
            &node.id,
            Arc::clone(&node.store),
            grace,
            self.deliveries.clone(),
            start_mesh,
        )
        .await
        .with_context(|| format!("starting {}", node.id))?;
        let node = &mut self.nodes[i];
        node.agent = Some(agent);
        self.reach.up(i, Instant::now());
        let at = self.elapsed();
        self.recorder.node_up(i, at);
        Ok(())
    }

    async fn apply(&mut self, fault: &FaultKind) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let now = Instant::now();
        match fault {
            FaultKind::Kill { nodes } => {
                for i in nodes.resolve(n)? {
                    self.kill(i).await;
                }
            }
            FaultKind::KillActor => {
                self.take_deliveries();
                match self.recorder.latest_actor() {
                    Some(i) if self.nodes[i].agent.is_some() => self.kill(i).await,
                    _ => self.recorder.no_actor(self.elapsed()),
                }
            }
            FaultKind::Restart { nodes } => {
                for i in nodes.resolve(n)? {
                    self.start_node(i).await?;
                }
            }
            FaultKind::Partition { groups } => {
                let addrs: Vec<Vec<SocketAddr>> = self
                    .reach
                    .partition(groups, now)?
                    .iter()
                    .map(|members| members.iter().map(|&i| self.nodes[i].addr).collect())
                    .collect();
                self.net.partition(&addrs);
                self.recorder.partitioned(self.elapsed());
            }
            FaultKind::Heal => {
                self.net.heal();
                self.reach.heal(now);
                self.recorder.healed(self.elapsed());
            }
            FaultKind::Degrade {
                nodes,
                loss,
                delay_ms,
            } => {
                let quality = LinkQuality {
                    loss: *loss,
                    delay: ms(*delay_ms),
                };
                match nodes {
                    None => self.net.set_everyone(quality),
                    Some(set) => {
                        for i in set.resolve(n)? {
                            self.net.set_node(self.nodes[i].addr, Some(quality));
                        }
                    }
                }
            }
            FaultKind::Join { count } => {
                for _ in 0..*count {
                    self.add_node().await?;
                }
            }
        }
        Ok(())
    }

    async fn kill(&mut self, i: usize) {
        if let Some(agent) = self.nodes[i].agent.take() {
            agent.stop().await;
            let n = self.nodes.len();
            let observers = (0..n).filter(|&j| self.nodes[j].agent.is_some()).collect();
            self.recorder.killed(i, self.elapsed(), observers);
        }
    }

    fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    /// Records the actions the upstreams have taken so far.
    fn take_deliveries(&mut self) {
        let at = self.elapsed();
        while let Ok(delivery) = self.delivered.try_recv() {
            self.recorder.delivered(at, delivery);
        }
    }

    /// Decides a due incident on its node, if that node runs.
    async fn incident(&mut self, due: incidents::Due) -> anyhow::Result<()> {
        let Some(agent) = self.nodes.get(due.node).and_then(|n| n.agent.as_ref()) else {
            return Ok(());
        };
        let event_id = format!("{}-{}-{}", self.nodes[due.node].id, due.stream, due.seq);
        let evaluated = agent
            .decide(event_id, &due.kind, due.severity)
            .await
            .with_context(|| format!("an incident on node {}", due.node))?;
        self.recorder.evaluated(due.at, evaluated);
        Ok(())
    }

    fn write(&mut self, node: usize, policy: agent_policy::NewPolicy) -> anyhow::Result<()> {
        let Some(agent) = self.nodes.get(node).and_then(|n| n.agent.as_ref()) else {
            let at = self.elapsed();
            self.recorder.wrote(node, None, at, Vec::new());
            return Ok(());
        };
        let record = agent.policies.create(policy)?;
        let cohort = self.running();
        self.recorder
            .wrote(node, Some(record.id), self.elapsed(), cohort);
        Ok(())
    }

    /// Which running nodes hold each write.
    fn sample_policies(&mut self) -> anyhow::Result<()> {
        let at = self.elapsed();
        let running = self.running();
        let ids = self.recorder.write_ids();
        let mut holders = vec![Vec::new(); ids.len()];
        for &i in &running {
            for (k, id) in ids.iter().enumerate() {
                if self.nodes[i].store.get(*id)?.is_some() {
                    holders[k].push(i);
                }
            }
        }
        self.recorder.policies(at, &running, &holders);
        Ok(())
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].agent.is_some())
            .collect()
    }

    /// What every running node's failure detector says of the others.
    async fn sample_liveness(&mut self) {
        let at = self.elapsed();
        let now = Instant::now();
        let running = self.running();
        let running_ids: HashSet<&str> =
            running.iter().map(|&i| self.nodes[i].id.as_str()).collect();
        let pending: Vec<(usize, String)> = self
            .recorder
            .pending_detections()
            .into_iter()
            .map(|k| (k, self.nodes[k].id.clone()))
            .collect();
        let mut all_see_all = true;
        let mut false_dead = 0usize;
        let mut detections = Vec::new();
        // A peer counts for an observer once both have been up and reachable from each other for
        // SETTLE: the same set for every settled observer of a partition group.
        let mut settled_by_group: HashMap<usize, HashSet<&str>> = HashMap::new();
        for &j in &running {
            if self.reach.settled(j, now) {
                settled_by_group
                    .entry(self.reach.group(j))
                    .or_default()
                    .insert(self.nodes[j].id.as_str());
            }
        }
        let nobody = HashSet::new();
        for &i in &running {
            let node = &self.nodes[i];
            let Some(mesh) = node.agent.as_ref().map(Agent::mesh) else {
                continue;
            };
            let settled = if self.reach.settled(i, now) {
                settled_by_group
                    .get(&self.reach.group(i))
                    .unwrap_or(&nobody)
            } else {
                &nobody
            };
            let live_running = mesh.count_live(|id| running_ids.contains(id)).await;
            if live_running < running.len() {
                all_see_all = false;
            }
            if !settled.is_empty() {
                let live_settled = mesh.count_live(|id| settled.contains(id)).await;
                false_dead += settled.len().saturating_sub(live_settled);
            }
            for (k, killed) in &pending {
                if mesh.count_live(|id| id == killed).await == 0 {
                    detections.push(Detection {
                        killed: *k,
                        observer: i,
                    });
                }
            }
        }
        self.recorder
            .liveness(at, &running, all_see_all, false_dead, &detections);
    }

    fn traffic_of(&mut self, i: usize) {
        let traffic = self.net.traffic(self.nodes[i].addr);
        self.recorder.traffic(i, traffic);
    }
}
