//! The `[rego]` config section: limits and failure handling of Rego decisions.

use serde::{Deserialize, Serialize};

use agent_base::InvalidSetting;

/// What a Rego decision is when its evaluation fails (time limit, or an error in the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Deny, with the reason as a violation.
    FailClosed,
    /// Allow, with the reason as a warning.
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegoConfig {
    /// Longest a Rego evaluation may run; past it, `fail_mode` decides.
    pub time_limit_ms: u64,
    pub fail_mode: FailMode,
    /// How long a decision is reused for the same policy version and input; 0 disables the cache.
    pub cache_ttl_sec: u64,
    /// Most decisions the cache keeps.
    pub cache_entries: usize,
    /// Bytes all data documents (`PUT /v1/data`) may take together.
    pub max_data_bytes: u64,
    /// Rego evaluations stop while the agent holds more memory than this (process-wide).
    pub max_memory_bytes: u64,
}

impl Default for RegoConfig {
    fn default() -> RegoConfig {
        RegoConfig {
            time_limit_ms: 250,
            fail_mode: FailMode::FailClosed,
            cache_ttl_sec: 30,
            cache_entries: 10_000,
            max_data_bytes: 16 * 1024 * 1024,
            max_memory_bytes: 512 * 1024 * 1024,
        }
    }
}

impl RegoConfig {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.max_memory_bytes < 64 * 1024 * 1024 {
            return Err(InvalidSetting::new(
                "rego.max_memory_bytes",
                "must be at least 67108864 (64 MiB): the agent itself needs some",
            ));
        }
        if !(1..=60_000).contains(&self.time_limit_ms) {
            return Err(InvalidSetting::new(
                "rego.time_limit_ms",
                "must be between 1 and 60000",
            ));
        }
        Ok(())
    }

    /// The engine's settings from this section.
    pub fn settings(&self) -> agent_engine::rego::RegoSettings {
        agent_engine::rego::RegoSettings {
            time_limit: std::time::Duration::from_millis(self.time_limit_ms),
        }
    }
}
