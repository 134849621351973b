//! What a run measured: the [`Recorder`] collects samples while a scenario runs, and
//! [`Report`] is what it turns them into (`report.json`; `report.html` draws it, see [`html`]).
//!
//! Every figure is in simulated time for the `fast` engine, so the same seed gives the same
//! report; what depends on the machine (wall time, memory) is kept apart under `run`.

mod actions;
mod expect;
pub mod html;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::fast::agent::{Delivery, Evaluated};
use crate::fast::network::Traffic;
use crate::scenario::Scenario;
use actions::ActionTrack;
pub use actions::{Actions, Latency, MeshAction, MeshSend, PerSec};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub engine: String,
    pub nodes: usize,
    pub max_nodes: usize,
    pub seed: u64,
    pub gossip_interval_ms: u64,
    pub duration_sec: f64,
    /// When every running node first saw every running node live.
    pub membership_ms: Option<f64>,
    pub writes: Vec<WriteFigures>,
    pub rollout: Rollout,
    pub kills: Vec<KillFigures>,
    /// Most (observer, node) pairs at once where a node up and reachable for 10 s or more was
    /// not seen live.
    pub false_dead_max: usize,
    pub gossip: Gossip,
    /// The incident workload and the actions it led to.
    pub actions: Actions,
    pub series: Series,
    pub expectations: Vec<Expectation>,
    /// Machine-dependent: left out when two runs are compared.
    pub run: Run,
}

#[derive(Debug, Clone, Serialize)]
pub struct WriteFigures {
    pub node: usize,
    pub at_ms: f64,
    /// From the write, or from the heal when it was made during a partition. Reach counts the
    /// nodes running at the write that still run (one restarted or joined later is not waited
    /// for).
    pub counted_from_ms: f64,
    pub reach_99_ms: Option<f64>,
    pub reach_100_ms: Option<f64>,
    /// The write's node was not running: nothing was written.
    pub skipped: bool,
}

/// Over the writes that reached 99% (100%) of the nodes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rollout {
    /// Writes that never reached every node.
    pub incomplete: usize,
    pub reach_99_median_ms: Option<f64>,
    pub reach_99_max_ms: Option<f64>,
    pub reach_100_median_ms: Option<f64>,
    pub reach_100_max_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KillFigures {
    pub node: usize,
    pub at_ms: f64,
    /// When the first and the last running node saw it dead, from the kill.
    pub first_seen_ms: Option<f64>,
    pub all_seen_ms: Option<f64>,
    /// When each observer saw it dead, from the kill, in order.
    pub observers_ms: Vec<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Gossip {
    /// chitchat payload bytes a node sent per second, the mean over nodes.
    pub bytes_per_node_per_sec: f64,
    pub bytes_per_node_per_sec_max: f64,
    pub messages: u64,
    /// Messages the network dropped (loss, partitions, nodes down).
    pub messages_lost: u64,
    /// Each node's bytes per second, by node.
    pub per_node: Vec<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// Sample times, ms.
    pub policy_t_ms: Vec<f64>,
    /// Per write, the fraction of running nodes holding it at each sample.
    pub policy_fraction: Vec<Vec<f64>>,
    pub liveness_t_ms: Vec<f64>,
    pub running: Vec<usize>,
    pub false_dead: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Expectation {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    pub wall_ms: f64,
    pub peak_rss_mb: f64,
    /// Bytes of pull responses, all nodes. Not repeatable to the byte: changes and certificates
    /// carry ECDSA signatures (70 to 72 bytes in DER), signed with nonces ring reads from the
    /// kernel directly, which the seeded entropy cannot reach.
    pub pull_bytes: u64,
    /// The engine's evaluation latency, wall time.
    pub evaluation: Latency,
}

/// An observer that saw a killed node dead.
pub struct Detection {
    pub killed: usize,
    pub observer: usize,
}

struct WriteTrack {
    node: usize,
    id: Option<u64>,
    at: Duration,
    /// The nodes running when it was made: reach is counted among those still running (a node
    /// restarted or joined later catches up on its own time).
    cohort: Vec<usize>,
    reach_99: Option<Duration>,
    reach_100: Option<Duration>,
    fractions: Vec<f64>,
}

struct KillTrack {
    node: usize,
    at: Duration,
    /// The nodes running at the kill: only they are timed (a node that starts later never knew
    /// the killed one live).
    observers: Vec<usize>,
    seen: BTreeMap<usize, Duration>,
    all: Option<Duration>,
    /// Restarted before everyone saw it dead: no longer timed.
    cancelled: bool,
}

pub struct Recorder {
    scenario: Scenario,
    writes: Vec<WriteTrack>,
    kills: Vec<KillTrack>,
    membership: Option<Duration>,
    /// (time, partitioned after it).
    splits: Vec<(Duration, bool)>,
    series: Series,
    false_dead_max: usize,
    /// Per node: time up so far, and since when it runs (while it does).
    up: BTreeMap<usize, (Duration, Option<Duration>)>,
    traffic: BTreeMap<usize, Traffic>,
    actions: ActionTrack,
    end: Duration,
}

impl Recorder {
    pub fn new(scenario: &Scenario) -> Recorder {
        Recorder {
            scenario: scenario.clone(),
            writes: Vec::new(),
            kills: Vec::new(),
            membership: None,
            splits: Vec::new(),
            series: Series::default(),
            false_dead_max: 0,
            up: BTreeMap::new(),
            traffic: BTreeMap::new(),
            actions: ActionTrack::new(),
            end: Duration::ZERO,
        }
    }

    pub fn node_up(&mut self, i: usize, at: Duration) {
        let up = self.up.entry(i).or_default();
        up.1.get_or_insert(at);
        for kill in self
            .kills
            .iter_mut()
            .filter(|k| k.node == i && k.all.is_none())
        {
            kill.cancelled = true;
        }
    }

    /// Node `i` stopped at `at`; `observers` are the nodes still running.
    pub fn killed(&mut self, i: usize, at: Duration, observers: Vec<usize>) {
        if let Some((total, since)) = self.up.get_mut(&i)
            && let Some(since) = since.take()
        {
            *total += at.saturating_sub(since);
        }
        self.kills.push(KillTrack {
            node: i,
            at,
            observers,
            seen: BTreeMap::new(),
            all: None,
            cancelled: false,
        });
    }

    pub fn partitioned(&mut self, at: Duration) {
        self.splits.push((at, true));
    }

    pub fn healed(&mut self, at: Duration) {
        self.splits.push((at, false));
    }

    pub fn writes(&self) -> usize {
        self.writes.len()
    }

    /// A write made at `node` (`None`: the node was not running, nothing was written) with the
    /// nodes running then.
    pub fn wrote(&mut self, node: usize, id: Option<u64>, at: Duration, cohort: Vec<usize>) {
        self.writes.push(WriteTrack {
            node,
            id,
            at,
            cohort,
            reach_99: None,
            reach_100: None,
            fractions: Vec::new(),
        });
    }

    /// The ids of the writes made so far (0 for a skipped one, which no node holds).
    pub fn write_ids(&self) -> Vec<u64> {
        self.writes.iter().map(|w| w.id.unwrap_or(0)).collect()
    }

    /// At `at`, `holders[k]` are the running nodes (of `running`) holding write `k`.
    pub fn policies(&mut self, at: Duration, running: &[usize], holders: &[Vec<usize>]) {
        self.series.policy_t_ms.push(ms(at));
        for (k, write) in self.writes.iter_mut().enumerate() {
            let fraction = if running.is_empty() {
                0.0
            } else {
                holders[k].len() as f64 / running.len() as f64
            };
            // Samples before the write are zero.
            while write.fractions.len() + 1 < self.series.policy_t_ms.len() {
                write.fractions.push(0.0);
            }
            write.fractions.push(fraction);
            let expected = write.cohort.iter().filter(|i| running.contains(i)).count();
            if write.id.is_none() || expected == 0 {
                continue;
            }
            let holding = write
                .cohort
                .iter()
                .filter(|i| holders[k].contains(i))
                .count();
            if write.reach_99.is_none() && holding * 100 >= expected * 99 {
                write.reach_99 = Some(at - write.at);
            }
            if write.reach_100.is_none() && holding == expected {
                write.reach_100 = Some(at - write.at);
            }
        }
    }

    /// True while a figure needs liveness sampled finely (membership, a detection).
    pub fn timing_liveness(&self) -> bool {
        self.membership.is_none() || !self.pending_detections().is_empty()
    }

    /// Killed nodes not yet seen dead by every running node.
    pub fn pending_detections(&self) -> Vec<usize> {
        self.kills
            .iter()
            .filter(|k| k.all.is_none() && !k.cancelled)
            .map(|k| k.node)
            .collect()
    }

    pub fn liveness(
        &mut self,
        at: Duration,
        running: &[usize],
        all_see_all: bool,
        false_dead: usize,
        detections: &[Detection],
    ) {
        if all_see_all && self.membership.is_none() {
            self.membership = Some(at);
        }
        self.series.liveness_t_ms.push(ms(at));
        self.series.running.push(running.len());
        self.series.false_dead.push(false_dead);
        self.false_dead_max = self.false_dead_max.max(false_dead);
        for kill in self
            .kills
            .iter_mut()
            .filter(|k| k.all.is_none() && !k.cancelled)
        {
            for d in detections
                .iter()
                .filter(|d| d.killed == kill.node && kill.observers.contains(&d.observer))
            {
                kill.seen.entry(d.observer).or_insert(at - kill.at);
            }
            // Every observer still running has seen it (one that stopped since is not waited for).
            let waiting = kill
                .observers
                .iter()
                .filter(|i| running.contains(i))
                .any(|i| !kill.seen.contains_key(i));
            if !waiting && !kill.seen.is_empty() {
                kill.all = Some(at - kill.at);
            }
        }
    }

    pub fn evaluated(&mut self, at: Duration, evaluated: Evaluated) {
        self.actions.evaluated(at, evaluated);
    }

    pub fn delivered(&mut self, at: Duration, delivery: Delivery) {
        let up = &self.up;
        let partitioned = self.splits.last().is_some_and(|(_, split)| *split);
        let running = |i: &usize| up.get(i).is_some_and(|(_, since)| since.is_some());
        self.actions.delivered(at, delivery, |senders| {
            partitioned || !senders.iter().any(running)
        });
    }

    /// The node that sent the latest mesh action.
    pub fn latest_actor(&self) -> Option<usize> {
        self.actions.latest_actor()
    }

    /// A `kill_actor` fault at `at` found no actor.
    pub fn no_actor(&mut self, at: Duration) {
        self.actions.no_actor(at);
    }

    pub fn traffic(&mut self, i: usize, traffic: Traffic) {
        self.traffic.insert(i, traffic);
    }

    pub fn ended(&mut self, at: Duration) {
        self.end = at;
        for (total, since) in self.up.values_mut() {
            if let Some(since) = since.take() {
                *total += at.saturating_sub(since);
            }
        }
    }

    /// When the write at `at` could first reach everyone: then, or at the heal of a partition
    /// in force then.
    fn counted_from(&self, at: Duration) -> Duration {
        let split_then = self
            .splits
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .is_some_and(|(_, split)| *split);
        if !split_then {
            return at;
        }
        self.splits
            .iter()
            .find(|(t, split)| *t > at && !split)
            .map_or(at, |(t, _)| *t)
    }

    /// Bytes of pull responses so far, all nodes (see [`Run::pull_bytes`]).
    pub fn pull_bytes(&self) -> u64 {
        self.traffic.values().map(|t| t.pull_bytes).sum()
    }

    pub fn finish(self, run: Run) -> Report {
        let s = &self.scenario;
        let (actions, evaluation) = self.actions.finish(s.duration_sec.ceil() as usize);
        let run = Run { evaluation, ..run };
        let writes: Vec<WriteFigures> = self
            .writes
            .iter()
            .map(|w| {
                let from = self.counted_from(w.at);
                WriteFigures {
                    node: w.node,
                    at_ms: ms(w.at),
                    counted_from_ms: ms(from),
                    reach_99_ms: w.reach_99.map(|d| ms((w.at + d).saturating_sub(from))),
                    reach_100_ms: w.reach_100.map(|d| ms((w.at + d).saturating_sub(from))),
                    skipped: w.id.is_none(),
                }
            })
            .collect();
        let made: Vec<&WriteFigures> = writes.iter().filter(|w| !w.skipped).collect();
        // Over the writes that got there (one that never did is named by its expectation, and
        // counted in `incomplete`).
        let figures = |pick: fn(&WriteFigures) -> Option<f64>| {
            let values: Vec<f64> = made.iter().filter_map(|w| pick(w)).collect();
            (!values.is_empty()).then_some(values)
        };
        let r99 = figures(|w| w.reach_99_ms);
        let r100 = figures(|w| w.reach_100_ms);
        let rollout = Rollout {
            incomplete: made.iter().filter(|w| w.reach_100_ms.is_none()).count(),
            reach_99_median_ms: r99.as_deref().map(median),
            reach_99_max_ms: r99.as_deref().map(max),
            reach_100_median_ms: r100.as_deref().map(median),
            reach_100_max_ms: r100.as_deref().map(max),
        };
        let kills: Vec<KillFigures> = self
            .kills
            .iter()
            .filter(|k| !k.cancelled || k.all.is_some())
            .map(|k| {
                let mut observers: Vec<f64> = k.seen.values().map(|d| ms(*d)).collect();
                observers.sort_by(f64::total_cmp);
                KillFigures {
                    node: k.node,
                    at_ms: ms(k.at),
                    first_seen_ms: observers.first().copied(),
                    all_seen_ms: k.all.map(ms),
                    observers_ms: observers,
                }
            })
            .collect();
        let gossip = self.gossip();
        let mut series = self.series.clone();
        let samples = series.policy_t_ms.len();
        series.policy_fraction = self
            .writes
            .iter()
            .map(|w| {
                let mut fractions = w.fractions.clone();
                fractions.resize(samples, 0.0);
                fractions
            })
            .collect();
        let mut report = Report {
            scenario: s.name.clone(),
            description: s.description.clone(),
            engine: format!("{:?}", s.engine).to_lowercase(),
            nodes: s.nodes,
            max_nodes: s.max_nodes(),
            seed: s.seed,
            gossip_interval_ms: s.gossip_interval_ms,
            duration_sec: s.duration_sec,
            membership_ms: self.membership.map(ms),
            writes,
            rollout,
            kills,
            false_dead_max: self.false_dead_max,
            gossip,
            actions,
            series,
            expectations: Vec::new(),
            run,
        };
        report.expectations = expect::expectations(s, &report);
        report
    }

    fn gossip(&self) -> Gossip {
        let mut g = Gossip::default();
        for (i, t) in &self.traffic {
            let up = self.up.get(i).map_or(Duration::ZERO, |(total, _)| *total);
            let rate = if up.is_zero() {
                0.0
            } else {
                t.gossip_bytes as f64 / up.as_secs_f64()
            };
            g.per_node.push(rate);
            g.messages += t.gossip_messages;
            g.messages_lost += t.gossip_lost;
        }
        if !g.per_node.is_empty() {
            g.bytes_per_node_per_sec = g.per_node.iter().sum::<f64>() / g.per_node.len() as f64;
            g.bytes_per_node_per_sec_max = max(&g.per_node);
        }
        g
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::MIN, f64::max)
}
