//! What a node says about the open rollouts, as one gossip value (`s.rollouts`): compact JSON,
//! bounded in entries and bytes, so a peer's value can be read without trusting its size.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use agent_engine::{HealthSample, ShadowCounts};

/// The gossip key (under the mesh's shared prefix).
pub const REPORT_KEY: &str = "rollouts";

/// Entries of each kind a node publishes at most (the oldest open rollouts first).
pub const MAX_ENTRIES: usize = 32;

/// A peer's value longer than this is not read.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// The most characters of a compile error a node publishes.
const MAX_REASON_CHARS: usize = 200;

/// One node's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// Baking canaries, by rollout id.
    #[serde(default, rename = "c")]
    pub canaries: BTreeMap<String, CanaryCounts>,
    /// Canary candidates this node should run and cannot compile: rollout id -> why.
    #[serde(default, rename = "x")]
    pub broken: BTreeMap<String, String>,
    /// Shadow versions, by rollout id.
    #[serde(default, rename = "s")]
    pub shadows: BTreeMap<String, ShadowCounts>,
}

/// A node's evaluations while a canary bakes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryCounts {
    /// Whether the node runs the candidate.
    #[serde(rename = "a")]
    pub applies: bool,
    #[serde(rename = "n")]
    pub evaluations: u64,
    #[serde(rename = "f")]
    pub failures: u64,
    #[serde(rename = "t")]
    pub timeouts: u64,
    #[serde(rename = "m")]
    pub fail_mode: u64,
}

impl CanaryCounts {
    pub fn new(applies: bool, health: HealthSample) -> CanaryCounts {
        CanaryCounts {
            applies,
            evaluations: health.evaluations,
            failures: health.failures(),
            timeouts: health.timeouts,
            fail_mode: health.fail_mode,
        }
    }

    /// The sum of two nodes' counts (`applies` if either does).
    pub fn add(&self, other: &CanaryCounts) -> CanaryCounts {
        CanaryCounts {
            applies: self.applies || other.applies,
            evaluations: self.evaluations.saturating_add(other.evaluations),
            failures: self.failures.saturating_add(other.failures),
            timeouts: self.timeouts.saturating_add(other.timeouts),
            fail_mode: self.fail_mode.saturating_add(other.fail_mode),
        }
    }

    /// Failures per evaluation (0 with no evaluations).
    pub fn failure_rate(&self) -> f64 {
        if self.evaluations == 0 {
            0.0
        } else {
            self.failures as f64 / self.evaluations as f64
        }
    }
}

impl NodeReport {
    /// Keeps at most [`MAX_ENTRIES`] of each kind and short reasons, so the value stays small.
    pub fn bounded(mut self) -> NodeReport {
        fn keep<V>(map: &mut BTreeMap<String, V>) {
            while map.len() > MAX_ENTRIES {
                map.pop_last();
            }
        }
        keep(&mut self.canaries);
        keep(&mut self.broken);
        keep(&mut self.shadows);
        for reason in self.broken.values_mut() {
            if reason.chars().count() > MAX_REASON_CHARS {
                *reason = reason.chars().take(MAX_REASON_CHARS).collect::<String>() + "...";
            }
        }
        self
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A peer's value; `None` when it is too long or not a report.
    pub fn decode(text: &str) -> Option<NodeReport> {
        if text.len() > MAX_REPORT_BYTES {
            return None;
        }
        serde_json::from_str(text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_and_stays_bounded() {
        let mut report = NodeReport::default();
        for i in 0..100 {
            report.canaries.insert(
                format!("r-{i:03}"),
                CanaryCounts {
                    applies: true,
                    evaluations: 10,
                    failures: 1,
                    timeouts: 0,
                    fail_mode: 1,
                },
            );
        }
        report.broken.insert("r-1".into(), "x".repeat(10_000));
        let report = report.bounded();
        assert_eq!(report.canaries.len(), MAX_ENTRIES);
        let text = report.encode();
        assert!(text.len() < MAX_REPORT_BYTES, "{} bytes", text.len());
        assert_eq!(NodeReport::decode(&text), Some(report));
        assert_eq!(NodeReport::decode("not json"), None);
        assert_eq!(NodeReport::decode(&"x".repeat(MAX_REPORT_BYTES + 1)), None);
    }
}
