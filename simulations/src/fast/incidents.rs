//! The scenario's incident workload as one schedule: every stream's incidents on every one of its
//! nodes, in time order. A node's first incident of a stream comes at a seeded moment within the
//! stream's first period, then one every period, so nodes do not all detect at the same instant.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::scenario::Scenario;

/// Mixed into the seed for the phases, so they are not the network's or the start's draws.
const PHASE_STREAM: u64 = 0x1ac1_de47_5eed;

/// One incident to decide now.
pub struct Due {
    /// When it was due, from the start.
    pub at: Duration,
    pub stream: usize,
    pub node: usize,
    /// Its number within the stream on that node.
    pub seq: u64,
    pub kind: String,
    pub severity: f64,
}

struct Stream {
    kind: String,
    severity: f64,
    period: Duration,
    until: Duration,
}

pub struct Workload {
    streams: Vec<Stream>,
    /// (when, stream, node, seq) of each node's next incident of each stream.
    next: BinaryHeap<Reverse<(Duration, usize, usize, u64)>>,
}

impl Workload {
    pub fn new(scenario: &Scenario) -> anyhow::Result<Workload> {
        let mut rng = StdRng::seed_from_u64(scenario.seed ^ PHASE_STREAM);
        let mut streams = Vec::new();
        let mut next = BinaryHeap::new();
        for (s, spec) in scenario.incidents.iter().enumerate() {
            let period = Duration::from_secs_f64(1.0 / spec.per_sec);
            let from = Duration::from_secs_f64(spec.from_sec);
            let until = Duration::from_secs_f64(spec.until_sec(scenario));
            for node in spec.nodes(scenario)? {
                let first = from + period.mul_f64(rng.random::<f64>());
                if first < until {
                    next.push(Reverse((first, s, node, 0)));
                }
            }
            streams.push(Stream {
                kind: spec.kind.clone(),
                severity: spec.severity,
                period,
                until,
            });
        }
        Ok(Workload { streams, next })
    }

    /// When the next incident is due, from the start.
    pub fn next_at(&self) -> Option<Duration> {
        self.next.peek().map(|Reverse((at, ..))| *at)
    }

    /// The next incident due by `now` (from the start), if any; schedules that node's next one.
    pub fn next_due(&mut self, now: Duration) -> Option<Due> {
        if self.next_at()? > now {
            return None;
        }
        let Reverse((at, s, node, seq)) = self.next.pop()?;
        let stream = &self.streams[s];
        let then = at + stream.period;
        if then < stream.until {
            self.next.push(Reverse((then, s, node, seq + 1)));
        }
        Some(Due {
            at,
            stream: s,
            node,
            seq,
            kind: stream.kind.clone(),
            severity: stream.severity,
        })
    }
}
