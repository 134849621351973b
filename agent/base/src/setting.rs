//! The error of a config section's validation: which key, and what is wrong with its value. Each
//! subsystem validates its own section; the daemon reports the key as the operator wrote it.

/// A config value that types alone could not refuse, e.g. `mesh.gossip_interval_ms` out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}` {message}")]
pub struct InvalidSetting {
    /// The full key, `section.name` (`audit.capacity`).
    pub key: &'static str,
    pub message: String,
}

impl InvalidSetting {
    pub fn new(key: &'static str, message: impl Into<String>) -> InvalidSetting {
        InvalidSetting {
            key,
            message: message.into(),
        }
    }
}
