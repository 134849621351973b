//! The `[decisions]` config section: the sliding window of mesh facts and what gossip carries.

use serde::{Deserialize, Serialize};

use agent_base::InvalidSetting;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionsConfig {
    /// Length of the sliding window of incidents that mesh facts count, and of a mesh action's
    /// window (one action per rule, incident key and window).
    pub window_sec: u64,
    /// The most bytes this node's incident summary takes in gossip.
    pub gossip_max_bytes: usize,
    /// How often this node republishes its incident summary (only when it changed).
    pub publish_interval_ms: u64,
    /// Whether this node gossips its incident summary. Off, peers do not count its incidents in
    /// their mesh facts (its claims and mesh actions are gossiped still).
    pub share_incidents: bool,
}

impl Default for DecisionsConfig {
    fn default() -> DecisionsConfig {
        DecisionsConfig {
            window_sec: 60,
            gossip_max_bytes: 1024,
            publish_interval_ms: 1000,
            share_incidents: true,
        }
    }
}

impl DecisionsConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(1..=86_400).contains(&self.window_sec) {
            return Err(InvalidSetting::new(
                "decisions.window_sec",
                "must be between 1 and 86400",
            ));
        }
        if !(64..=4096).contains(&self.gossip_max_bytes) {
            return Err(InvalidSetting::new(
                "decisions.gossip_max_bytes",
                "must be between 64 and 4096",
            ));
        }
        if !(50..=60_000).contains(&self.publish_interval_ms) {
            return Err(InvalidSetting::new(
                "decisions.publish_interval_ms",
                "must be between 50 and 60000",
            ));
        }
        if self.publish_interval_ms > self.window_ms() / 2 {
            // Peers drop a summary two windows old; it is refreshed every half window.
            return Err(InvalidSetting::new(
                "decisions.publish_interval_ms",
                "must be at most half of decisions.window_sec",
            ));
        }
        Ok(())
    }

    pub fn window_ms(&self) -> u64 {
        self.window_sec * 1000
    }
}
