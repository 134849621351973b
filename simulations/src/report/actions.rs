//! What the incident workload did: incidents decided, the actions the nodes' upstreams sent (a
//! mesh action by id, with every node that sent it), duplicates, and the engine's evaluation
//! latency. Latency is the wall time of real evaluations, so it sits under `run`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::fast::agent::{Delivery, Evaluated};

/// Latency buckets: 100 ns times 2^(k/4), up to about 105 ms (k = 80), then one more for the
/// rest.
const BUCKETS: usize = 82;
const FIRST_BOUND_NS: f64 = 100.0;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Actions {
    /// Incidents decided, and those in which a policy failed to evaluate.
    pub incidents: u64,
    pub evaluation_errors: u64,
    /// Actions of node-scoped rules sent.
    pub node_actions: u64,
    /// Mesh actions by id, in the order first sent.
    pub mesh: Vec<MeshAction>,
    /// Sends of an id already sent, not as a takeover, or as a takeover while every node that
    /// sent it before still runs and no partition is in force: two nodes acting for the mesh at
    /// once.
    pub duplicates: u64,
    /// Sends of an id already sent, by the node ranked next, once the node that sent it had
    /// stopped (or a partition was in force): the consumer sees one action, the id is the same.
    pub takeovers: u64,
    /// `kill_actor` faults that found no actor yet (ms).
    pub kill_actor_missed_ms: Vec<f64>,
    /// Per simulated second (all as long; sends taken from the outbox just past the end count in
    /// one more second): incidents decided, node actions sent, mesh actions sent (takeovers
    /// included) and duplicates.
    pub per_sec: PerSec,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PerSec {
    pub incidents: Vec<u64>,
    pub node_actions: Vec<u64>,
    pub mesh_actions: Vec<u64>,
    pub duplicates: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeshAction {
    pub action_id: String,
    pub policy_id: u64,
    pub incident_key: String,
    /// Every send, in order.
    pub sends: Vec<MeshSend>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MeshSend {
    pub node: usize,
    pub at_ms: f64,
    pub takeover: bool,
    pub claimed_by: String,
}

/// Evaluation latency over every incident of the run: the engine's own measure
/// (`Evaluation::elapsed_ns`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    /// Upper bounds of the buckets the median and the 99th percentile fall in, µs.
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: f64,
    /// (upper bound µs, count) of every non-empty bucket; the last bucket's bound is infinite
    /// (`null` in JSON).
    pub buckets: Vec<(f64, u64)>,
}

pub struct ActionTrack {
    actions: Actions,
    by_id: BTreeMap<String, usize>,
    latency: [u64; BUCKETS],
    max_ns: u64,
    /// The node of the latest mesh send.
    latest_actor: Option<usize>,
}

impl ActionTrack {
    pub fn new() -> ActionTrack {
        ActionTrack {
            actions: Actions::default(),
            by_id: BTreeMap::new(),
            latency: [0; BUCKETS],
            max_ns: 0,
            latest_actor: None,
        }
    }

    pub fn evaluated(&mut self, at: Duration, evaluated: Evaluated) {
        let a = &mut self.actions;
        a.incidents += 1;
        a.evaluation_errors += u64::from(evaluated.errors > 0);
        bump(&mut a.per_sec.incidents, at);
        self.latency[bucket(evaluated.elapsed_ns)] += 1;
        self.max_ns = self.max_ns.max(evaluated.elapsed_ns);
    }

    /// `justified` says whether a takeover from these earlier senders is one (they stopped, or
    /// a partition is in force).
    pub fn delivered(
        &mut self,
        at: Duration,
        delivery: Delivery,
        justified: impl Fn(&[usize]) -> bool,
    ) {
        let a = &mut self.actions;
        let message = delivery.message;
        let Some(mesh) = message.mesh else {
            a.node_actions += 1;
            bump(&mut a.per_sec.node_actions, at);
            return;
        };
        bump(&mut a.per_sec.mesh_actions, at);
        self.latest_actor = Some(delivery.node);
        let send = MeshSend {
            node: delivery.node,
            at_ms: at.as_secs_f64() * 1e3,
            takeover: mesh.takeover,
            claimed_by: mesh.claimed_by,
        };
        match self.by_id.get(&message.action_id) {
            Some(&k) => {
                let senders: Vec<usize> = a.mesh[k].sends.iter().map(|s| s.node).collect();
                if send.takeover && justified(&senders) {
                    a.takeovers += 1;
                } else {
                    a.duplicates += 1;
                    bump(&mut a.per_sec.duplicates, at);
                }
                a.mesh[k].sends.push(send);
            }
            None => {
                self.by_id.insert(message.action_id.clone(), a.mesh.len());
                a.mesh.push(MeshAction {
                    action_id: message.action_id,
                    policy_id: message.policy_id,
                    incident_key: mesh.incident_key,
                    sends: vec![send],
                });
            }
        }
    }

    pub fn latest_actor(&self) -> Option<usize> {
        self.latest_actor
    }

    pub fn no_actor(&mut self, at: Duration) {
        self.actions
            .kill_actor_missed_ms
            .push(at.as_secs_f64() * 1e3);
    }

    /// The figures, every per-second series `seconds` long.
    pub fn finish(&self, seconds: usize) -> (Actions, Latency) {
        let mut actions = self.actions.clone();
        let per = &actions.per_sec;
        let seconds = [
            seconds,
            per.incidents.len(),
            per.node_actions.len(),
            per.mesh_actions.len(),
            per.duplicates.len(),
        ]
        .into_iter()
        .max()
        .unwrap_or(seconds);
        for series in [
            &mut actions.per_sec.incidents,
            &mut actions.per_sec.node_actions,
            &mut actions.per_sec.mesh_actions,
            &mut actions.per_sec.duplicates,
        ] {
            series.resize(seconds, 0);
        }
        (actions, self.latency())
    }

    fn latency(&self) -> Latency {
        let count: u64 = self.latency.iter().sum();
        let quantile = |q: f64| -> Option<f64> {
            let rank = (q * count as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            self.latency.iter().enumerate().find_map(|(k, &n)| {
                seen += n;
                (count > 0 && seen >= rank).then(|| upper_us(k))
            })
        };
        Latency {
            count,
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            max_us: self.max_ns as f64 / 1e3,
            buckets: self
                .latency
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(k, &n)| (upper_us(k), n))
                .collect(),
        }
    }
}

fn bump(series: &mut Vec<u64>, at: Duration) {
    let second = at.as_secs() as usize;
    if series.len() <= second {
        series.resize(second + 1, 0);
    }
    series[second] += 1;
}

fn bucket(ns: u64) -> usize {
    if (ns as f64) <= FIRST_BOUND_NS {
        return 0;
    }
    let k = (4.0 * (ns as f64 / FIRST_BOUND_NS).log2()).ceil() as usize;
    k.min(BUCKETS - 1)
}

/// The upper bound of bucket `k`, µs (the last one's is infinite).
fn upper_us(k: usize) -> f64 {
    if k == BUCKETS - 1 {
        return f64::INFINITY;
    }
    FIRST_BOUND_NS * 2f64.powf(k as f64 / 4.0) / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values() {
        for ns in [1, 100, 101, 1_000, 12_345, 1_000_000, u64::MAX] {
            let k = bucket(ns);
            assert!(ns as f64 / 1e3 <= upper_us(k), "{ns} in {k}");
            if k > 0 {
                assert!(ns as f64 / 1e3 > upper_us(k - 1), "{ns} in {k}");
            }
        }
    }
}
