//! Logging: `tracing` to stderr, human-readable or JSON lines, filtered by `log_level` (or by
//! `RUST_LOG`, which wins when set). The filter can be replaced while the agent runs
//! ([`LogLevel::set`], on SIGHUP).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::LogFormat;

/// The filter in force, and the means to change it.
pub struct LogLevel {
    /// `None` when `RUST_LOG` decides, or when another subscriber was installed first (tests).
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    current: std::sync::Mutex<String>,
}

/// What [`LogLevel::set`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum LevelChange {
    Unchanged,
    Applied,
    /// `RUST_LOG` is set, and it wins.
    Overridden,
}

impl LogLevel {
    /// Replaces the filter with `level` (already validated by the config).
    pub fn set(&self, level: &str) -> Result<LevelChange, String> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *current == level {
            return Ok(LevelChange::Unchanged);
        }
        let Some(handle) = &self.handle else {
            return Ok(LevelChange::Overridden);
        };
        let filter = EnvFilter::try_new(level).map_err(|err| err.to_string())?;
        handle.reload(filter).map_err(|err| err.to_string())?;
        *current = level.to_string();
        Ok(LevelChange::Applied)
    }
}

/// Installs the global subscriber; later calls (e.g. in tests) are ignored.
pub fn init(format: LogFormat, level: &str) -> LogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let overridden = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Human => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
    };
    LogLevel {
        handle: (installed.is_ok() && !overridden).then_some(handle),
        current: std::sync::Mutex::new(level.to_string()),
    }
}
