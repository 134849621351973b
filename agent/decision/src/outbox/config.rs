//! The `[outbox]` config section.

use agent_base::InvalidSetting;
use serde::{Deserialize, Serialize};

use super::WhenFull;

/// The outbox: how much it holds, and what happens when it is full.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    pub capacity: u64,
    pub when_full: WhenFull,
}

impl Default for OutboxConfig {
    fn default() -> OutboxConfig {
        OutboxConfig {
            capacity: 100_000,
            when_full: WhenFull::Block,
        }
    }
}

impl OutboxConfig {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.capacity == 0 {
            return Err(InvalidSetting::new("outbox.capacity", "must be at least 1"));
        }
        Ok(())
    }
}
