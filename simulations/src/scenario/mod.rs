//! A scenario file (`mesh-sim run SCENARIO.toml`): the mesh, the network, the faults, the
//! workload, how long, the seed, and what must hold. Parsing checks every reference (a node
//! index past `nodes`, a fault after the end) so a bad scenario fails before anything runs,
//! naming the field.
//!
//! ```toml
//! name = "partition-heal"
//! engine = "fast"
//! nodes = 100
//! seed = 7
//! duration_sec = 30
//!
//! [network]
//! delay_ms = 1
//!
//! [[faults]]
//! at_sec = 2
//! kind = "partition"
//! groups = ["0..50", "50..100"]
//!
//! [[writes]]
//! at_sec = 4
//! node = 0
//!
//! [[incidents]]
//! type = "cpu_spike"
//! per_sec = 5
//! nodes = "0..40"
//! from_sec = 6
//!
//! [expect]
//! converge_within_sec = 3
//! no_duplicate_actions = true
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Largest scenario file read.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most faults, and most writes, in one scenario.
const MAX_EVENTS: usize = 1_000;
/// Most incident streams, and most incidents per simulated second over all nodes.
const MAX_STREAMS: usize = 100;
const MAX_INCIDENTS_PER_SEC: f64 = 100_000.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub engine: Engine,
    /// Nodes at the start; `join` faults add more.
    pub nodes: usize,
    pub seed: u64,
    /// Simulated (fast) or wall (real) seconds the scenario runs.
    pub duration_sec: f64,
    #[serde(default = "default_interval")]
    pub gossip_interval_ms: u64,
    /// The first `seeds` nodes are every node's seeds.
    #[serde(default = "default_seeds")]
    pub seeds: usize,
    #[serde(default = "default_phi")]
    pub phi_threshold: f64,
    /// How often the figures are sampled.
    #[serde(default = "default_sample")]
    pub sample_ms: u64,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub writes: Vec<Write>,
    /// Incidents detected on the nodes, decided by each node's own decider.
    #[serde(default)]
    pub incidents: Vec<Incidents>,
    #[serde(default)]
    pub expect: Expect,
}

fn default_interval() -> u64 {
    200
}
fn default_seeds() -> usize {
    3
}
fn default_phi() -> f64 {
    8.0
}
fn default_sample() -> u64 {
    50
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The agent's mesh code in one process, on a paused clock, over an in-memory network.
    Fast,
    /// Real `mesh-agent` processes in network namespaces.
    Real,
}

/// Every link, one way, from the start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default)]
    pub delay_ms: f64,
    #[serde(default)]
    pub loss: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RawFault")]
pub struct Fault {
    pub at_sec: f64,
    pub kind: FaultKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FaultKind {
    /// Stops nodes without a word: the others must detect it.
    Kill {
        nodes: NodeSet,
    },
    /// Starts stopped nodes again on their data.
    Restart {
        nodes: NodeSet,
    },
    /// Splits the network; nodes in no group form one more.
    Partition {
        groups: Vec<NodeSet>,
    },
    Heal,
    /// Loss and delay on the links of `nodes` (every link without `nodes`), from now on.
    Degrade {
        nodes: Option<NodeSet>,
        loss: f64,
        delay_ms: f64,
    },
    /// New, empty nodes join through the seeds.
    Join {
        count: usize,
    },
    /// Stops the node that sent the latest mesh action (none sent yet, or it has stopped
    /// already: nothing happens, and the report says so).
    KillActor,
}

/// A fault as written: one table, `kind` saying which other fields it takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at_sec: f64,
    kind: String,
    nodes: Option<NodeSet>,
    groups: Option<Vec<NodeSet>>,
    loss: Option<f64>,
    delay_ms: Option<f64>,
    count: Option<usize>,
}

impl TryFrom<RawFault> for Fault {
    type Error = String;

    fn try_from(raw: RawFault) -> Result<Fault, String> {
        let kind = raw.kind.clone();
        let allowed: &[&str] = match kind.as_str() {
            "kill" | "restart" => &["nodes"],
            "partition" => &["groups"],
            "heal" => &[],
            "degrade" => &["nodes", "loss", "delay_ms"],
            "join" => &["count"],
            "kill_actor" => &[],
            other => {
                return Err(format!(
                    "unknown fault kind `{other}` (kill, restart, partition, heal, degrade, join, kill_actor)"
                ));
            }
        };
        let given = [
            ("nodes", raw.nodes.is_some()),
            ("groups", raw.groups.is_some()),
            ("loss", raw.loss.is_some()),
            ("delay_ms", raw.delay_ms.is_some()),
            ("count", raw.count.is_some()),
        ];
        if let Some((field, _)) = given.iter().find(|(f, set)| *set && !allowed.contains(f)) {
            return Err(format!("a `{kind}` fault takes no `{field}`"));
        }
        let need = |what: &str| format!("a `{kind}` fault needs `{what}`");
        let fault = match kind.as_str() {
            "kill" => FaultKind::Kill {
                nodes: raw.nodes.ok_or_else(|| need("nodes"))?,
            },
            "restart" => FaultKind::Restart {
                nodes: raw.nodes.ok_or_else(|| need("nodes"))?,
            },
            "partition" => FaultKind::Partition {
                groups: raw.groups.ok_or_else(|| need("groups"))?,
            },
            "heal" => FaultKind::Heal,
            "kill_actor" => FaultKind::KillActor,
            "degrade" => FaultKind::Degrade {
                nodes: raw.nodes,
                loss: raw.loss.unwrap_or(0.0),
                delay_ms: raw.delay_ms.unwrap_or(0.0),
            },
            _ => FaultKind::Join {
                count: raw.count.ok_or_else(|| need("count"))?,
            },
        };
        Ok(Fault {
            at_sec: raw.at_sec,
            kind: fault,
        })
    }
}

/// Nodes by index: `[1, 5, 9]`, `"10..20"` (half-open), or `"all"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NodeSet {
    List(Vec<usize>),
    Text(String),
}

impl NodeSet {
    /// The indices, checked against `n` nodes.
    pub fn resolve(&self, n: usize) -> anyhow::Result<Vec<usize>> {
        let nodes: Vec<usize> = match self {
            NodeSet::List(list) => list.clone(),
            NodeSet::Text(text) if text == "all" => (0..n).collect(),
            NodeSet::Text(text) => {
                let (a, b) = text
                    .split_once("..")
                    .with_context(|| format!("`{text}` is not \"all\" or a range \"a..b\""))?;
                let a: usize = a
                    .trim()
                    .parse()
                    .with_context(|| format!("`{text}`: start"))?;
                let b: usize = b.trim().parse().with_context(|| format!("`{text}`: end"))?;
                if a >= b {
                    bail!("`{text}` is empty");
                }
                (a..b).collect()
            }
        };
        if let Some(bad) = nodes.iter().find(|&&i| i >= n) {
            bail!("node {bad} does not exist (there are {n} by then)");
        }
        Ok(nodes)
    }
}

/// A policy created at `node` at `at_sec`, through the node's policy service (as the API does).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Write {
    pub at_sec: f64,
    pub node: usize,
    /// The policy, as `POST /policies` takes it. Without it: a node-scoped rule named `sim-K`
    /// (`incident.severity > 1` restarts).
    #[serde(default)]
    pub policy: Option<serde_json::Value>,
}

impl Write {
    /// The policy write `k` creates, as `POST /policies` takes it.
    pub fn policy_json(&self, k: usize) -> serde_json::Value {
        self.policy.clone().unwrap_or_else(|| {
            serde_json::json!({
                "name": format!("sim-{k}"),
                "definition": {"condition": "incident.severity > 1", "action": "restart"},
                "priority": k,
            })
        })
    }

    /// The same, read as the API reads it (checked when the scenario is read).
    pub fn new_policy(&self, k: usize) -> anyhow::Result<agent_policy::NewPolicy> {
        Ok(serde_json::from_value(self.policy_json(k))?)
    }
}

/// A stream of incidents of one type on each of `nodes` (every node there by `from_sec`
/// without it), `per_sec` per node, from `from_sec` to `to_sec` (the end without it). Each node's
/// first incident comes at a seeded moment within the first period.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incidents {
    #[serde(rename = "type")]
    pub kind: String,
    pub per_sec: f64,
    #[serde(default)]
    pub nodes: Option<NodeSet>,
    #[serde(default)]
    pub from_sec: f64,
    #[serde(default)]
    pub to_sec: Option<f64>,
    #[serde(default = "default_severity")]
    pub severity: f64,
}

fn default_severity() -> f64 {
    5.0
}

impl Incidents {
    /// The nodes this stream runs on.
    pub fn nodes(&self, scenario: &Scenario) -> anyhow::Result<Vec<usize>> {
        let there = scenario.nodes_at(self.from_sec);
        match &self.nodes {
            Some(set) => set.resolve(there),
            None => Ok((0..there).collect()),
        }
    }

    pub fn until_sec(&self, scenario: &Scenario) -> f64 {
        self.to_sec.unwrap_or(scenario.duration_sec)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Every write reaches every node running then within this long (for a write made during a
    /// partition: of the heal).
    pub converge_within_sec: Option<f64>,
    /// Every node sees every other running node alive within this long of the start.
    pub membership_within_sec: Option<f64>,
    /// Every running node sees each killed node dead within this long.
    pub detect_within_sec: Option<f64>,
    /// No running, reachable node is ever seen dead by another.
    #[serde(default)]
    pub no_false_dead: bool,
    /// No action is sent twice, but for a takeover (the same id, sent again by the next-ranked
    /// node once the actor was seen dead).
    #[serde(default)]
    pub no_duplicate_actions: bool,
    /// Exactly this many mesh actions (distinct ids) are sent.
    pub mesh_actions: Option<usize>,
}

impl Scenario {
    pub fn read(path: &Path) -> anyhow::Result<Scenario> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        if size > MAX_FILE_BYTES {
            bail!(
                "scenario {}: {size} bytes (at most {MAX_FILE_BYTES})",
                path.display()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Every index and time in range, every rate a rate.
    fn check(&self) -> anyhow::Result<()> {
        if self.nodes == 0 || self.nodes > 10_000 {
            bail!("nodes: {} (1 to 10,000)", self.nodes);
        }
        if !(self.duration_sec > 0.0 && self.duration_sec <= 3_600.0) {
            bail!(
                "duration_sec: {} (over 0, at most 3,600)",
                self.duration_sec
            );
        }
        if !(10..=60_000).contains(&self.gossip_interval_ms) {
            bail!(
                "gossip_interval_ms: {} (10 to 60,000)",
                self.gossip_interval_ms
            );
        }
        let phi = self.phi_threshold;
        if !(phi.is_finite() && phi > 0.0 && phi <= 100.0) {
            bail!("phi_threshold: {phi} (over 0, at most 100)");
        }
        if self.sample_ms < 10 {
            bail!("sample_ms: {} (at least 10)", self.sample_ms);
        }
        if !(1..=100).contains(&self.seeds) {
            bail!("seeds: {} (1 to 100)", self.seeds);
        }
        check_link("network", self.network.loss, self.network.delay_ms)?;
        // The report keeps a sample per write per `sample_ms`: both counts are bounded.
        if self.faults.len() > MAX_EVENTS || self.writes.len() > MAX_EVENTS {
            bail!(
                "{} faults and {} writes (at most {MAX_EVENTS} each)",
                self.faults.len(),
                self.writes.len()
            );
        }
        self.check_times("faults", self.faults.iter().map(|f| f.at_sec))?;
        self.check_times("writes", self.writes.iter().map(|w| w.at_sec))?;
        let mut nodes = self.nodes;
        for (i, fault) in self.faults.iter().enumerate() {
            let field = |what: &str| format!("faults[{i}].{what}");
            match &fault.kind {
                FaultKind::Kill { nodes: set } | FaultKind::Restart { nodes: set } => {
                    set.resolve(nodes).with_context(|| field("nodes"))?;
                }
                FaultKind::Partition { groups } => {
                    if groups.is_empty() {
                        bail!("{}: at least one group", field("groups"));
                    }
                    for (g, set) in groups.iter().enumerate() {
                        set.resolve(nodes)
                            .with_context(|| field(&format!("groups[{g}]")))?;
                    }
                }
                FaultKind::Heal | FaultKind::KillActor => {}
                FaultKind::Degrade {
                    nodes: set,
                    loss,
                    delay_ms,
                } => {
                    if let Some(set) = set {
                        set.resolve(nodes).with_context(|| field("nodes"))?;
                    }
                    check_link(&format!("faults[{i}]"), *loss, *delay_ms)?;
                }
                FaultKind::Join { count } => {
                    if *count == 0 || nodes + count > 10_000 {
                        bail!("{}: {count} (1 up to 10,000 nodes in all)", field("count"));
                    }
                    nodes += count;
                }
            }
        }
        if self.incidents.len() > MAX_STREAMS {
            bail!(
                "incidents: {} streams (at most {MAX_STREAMS})",
                self.incidents.len()
            );
        }
        let mut rate = 0.0;
        for (i, stream) in self.incidents.iter().enumerate() {
            let field = |what: &str| format!("incidents[{i}].{what}");
            if !(stream.per_sec > 0.0 && stream.per_sec <= 1_000.0) {
                bail!(
                    "{}: {} (over 0, at most 1,000)",
                    field("per_sec"),
                    stream.per_sec
                );
            }
            let until = stream.until_sec(self);
            if !(0.0 <= stream.from_sec && stream.from_sec < until && until <= self.duration_sec) {
                bail!(
                    "{}: {} to {until} s (from before to, within duration_sec {})",
                    field("from_sec"),
                    stream.from_sec,
                    self.duration_sec
                );
            }
            if stream.kind.is_empty() || stream.kind.len() > 256 {
                bail!("{}: 1 to 256 bytes", field("type"));
            }
            if !stream.severity.is_finite() {
                bail!("{}: {} (a number)", field("severity"), stream.severity);
            }
            rate +=
                stream.per_sec * stream.nodes(self).with_context(|| field("nodes"))?.len() as f64;
        }
        if rate > MAX_INCIDENTS_PER_SEC {
            bail!("incidents: {rate} per second over all nodes (at most {MAX_INCIDENTS_PER_SEC})");
        }
        let mut names = std::collections::HashSet::new();
        for (i, write) in self.writes.iter().enumerate() {
            let field = format!("writes[{i}].policy");
            let policy = write.new_policy(i).with_context(|| field.clone())?;
            policy
                .definition
                .validate()
                .with_context(|| format!("{field}.definition"))?;
            if !names.insert(policy.name.clone()) {
                bail!(
                    "{field}.name: `{}` is written twice (a name is unique in the mesh)",
                    policy.name
                );
            }
        }
        for (i, write) in self.writes.iter().enumerate() {
            let at = write.at_sec;
            let there = self.nodes_at(at);
            if write.node >= there {
                bail!(
                    "writes[{i}].node: node {} does not exist at {at} s (there are {there} by then)",
                    write.node
                );
            }
        }
        Ok(())
    }

    /// Every node there will ever be (`nodes` plus those that join).
    pub fn max_nodes(&self) -> usize {
        self.nodes_at(f64::INFINITY)
    }

    /// The nodes there are at `at` seconds: faults at the same instant come first, so a node
    /// that joins then can be written to.
    pub fn nodes_at(&self, at: f64) -> usize {
        self.nodes
            + self
                .faults
                .iter()
                .filter(|f| f.at_sec <= at)
                .map(|f| match f.kind {
                    FaultKind::Join { count } => count,
                    _ => 0,
                })
                .sum::<usize>()
    }

    /// The `what` (faults or writes) happen in time order, within the run.
    fn check_times(&self, what: &str, times: impl Iterator<Item = f64>) -> anyhow::Result<()> {
        let mut last = 0.0;
        for (i, at) in times.enumerate() {
            if !(0.0..=self.duration_sec).contains(&at) || at < last {
                bail!(
                    "{what}[{i}].at_sec: {at} ({what} in time order, within duration_sec {})",
                    self.duration_sec
                );
            }
            last = at;
        }
        Ok(())
    }
}

/// A scenario time (seconds, never negative) as a duration from the start.
pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn check_link(field: &str, loss: f64, delay_ms: f64) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&loss) {
        bail!("{field}.loss: {loss} (a fraction, 0 up to 1)");
    }
    if !(0.0..=10_000.0).contains(&delay_ms) {
        bail!("{field}.delay_ms: {delay_ms} (0 to 10,000)");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
