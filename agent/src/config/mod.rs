//! The agent's configuration: embedded defaults, then a TOML file, then `MESH_AGENT_<KEY>`
//! environment variables, then command-line flags, each overriding the one before.
//!
//! Every problem is reported with where it came from: the file's line and column, or the
//! environment variable's name, and what was expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::mqtt::config::{MqttConfig, OutboxConfig, SummaryConfig, UpstreamConfig};

/// Prefix of environment variables that override config keys (`audit.capacity` is
/// `MESH_AGENT_AUDIT_CAPACITY`).
pub const ENV_PREFIX: &str = "MESH_AGENT_";

/// A config problem, saying where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("`{key}` {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Everything the daemon can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id; defaults to the host name.
    pub node_id: Option<String>,
    /// Where the data file lives.
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    pub http_listen: SocketAddr,
    /// Policy files imported at start (idempotently).
    pub policies_dir: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Events without an `event_id` that are byte-for-byte the same (from the same source) within
    /// this many seconds are one incident (a retry or a redelivery); after it, a new one.
    pub dedup_window_sec: u64,
    pub http: crate::api::HttpConfig,
    pub audit: AuditConfig,
    pub rego: RegoConfig,
    pub mesh: MeshConfig,
    pub mqtt: MqttConfig,
    pub outbox: OutboxConfig,
    pub upstream: UpstreamConfig,
    pub summary: SummaryConfig,
}

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

/// Joining a mesh: gossip over QUIC with mutual TLS. Without `tls_dir` the node runs alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// Directory with `ca.pem`, `<node-id>.pem` and `<node-id>.key` (from `mesh-agent certs`).
    pub tls_dir: Option<PathBuf>,
    /// Nodes of another cluster id are ignored.
    pub cluster_id: String,
    /// UDP address gossip (QUIC) listens on.
    pub gossip_listen: SocketAddr,
    /// Address peers reach this node at; default: `gossip_listen`, or, if that is a wildcard,
    /// this host's address on the route to the first seed.
    pub gossip_advertise: Option<SocketAddr>,
    /// Gossip addresses (`host:port`) of nodes to join through.
    pub seeds: Vec<String>,
    /// Time between gossip rounds.
    pub gossip_interval_ms: u64,
    /// Failure detector: phi above which a node is dead (higher: slower and surer).
    pub phi_threshold: f64,
    /// A live node not heard from for this long is shown as `suspect`.
    pub suspect_after_ms: u64,
    /// How long a dead node stays listed before it is forgotten.
    pub dead_node_grace_sec: u64,
    /// How long a delete is remembered (see ARCHITECTURE.md: a node away longer rejoins empty).
    pub tombstone_ttl_sec: u64,
}

impl Default for MeshConfig {
    fn default() -> MeshConfig {
        MeshConfig {
            tls_dir: None,
            cluster_id: "mesh-agent".into(),
            gossip_listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            gossip_advertise: None,
            seeds: Vec::new(),
            gossip_interval_ms: 200,
            phi_threshold: 8.0,
            suspect_after_ms: 2_000,
            dead_node_grace_sec: 24 * 3600,
            tombstone_ttl_sec: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Entries kept; the oldest is dropped first.
    pub capacity: u64,
    /// Bytes the kept entries may take (encoded); the oldest are dropped first.
    pub max_bytes: u64,
    /// Longest time an accepted entry waits before it is committed (what a crash can lose).
    pub commit_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_id: None,
            data_dir: PathBuf::from("./mesh-data"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8004)),
            policies_dir: None,
            log_format: LogFormat::Human,
            max_body_bytes: 1024 * 1024,
            dedup_window_sec: 120,
            http: crate::api::HttpConfig::default(),
            audit: AuditConfig::default(),
            rego: RegoConfig::default(),
            mesh: MeshConfig::default(),
            mqtt: MqttConfig::default(),
            outbox: OutboxConfig::default(),
            upstream: UpstreamConfig::default(),
            summary: SummaryConfig::default(),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            capacity: 100_000,
            max_bytes: 64 * 1024 * 1024,
            commit_interval_ms: 200,
        }
    }
}

/// How an environment variable's text becomes a TOML value.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    Float,
    /// Comma-separated.
    List,
    /// `true` or `false`.
    Bool,
}

/// Every key, with its type; an environment variable for any other key is refused as a typo.
const KEYS: &[(&str, Kind)] = &[
    ("node_id", Kind::Text),
    ("data_dir", Kind::Text),
    ("http_listen", Kind::Text),
    ("policies_dir", Kind::Text),
    ("log_format", Kind::Text),
    ("max_body_bytes", Kind::Integer),
    ("dedup_window_sec", Kind::Integer),
    ("http.max_connections", Kind::Integer),
    ("http.header_read_timeout_ms", Kind::Integer),
    ("http.idle_timeout_ms", Kind::Integer),
    ("http.request_timeout_ms", Kind::Integer),
    ("audit.capacity", Kind::Integer),
    ("audit.max_bytes", Kind::Integer),
    ("audit.commit_interval_ms", Kind::Integer),
    ("rego.time_limit_ms", Kind::Integer),
    ("rego.fail_mode", Kind::Text),
    ("rego.cache_ttl_sec", Kind::Integer),
    ("rego.cache_entries", Kind::Integer),
    ("rego.max_data_bytes", Kind::Integer),
    ("rego.max_memory_bytes", Kind::Integer),
    ("mesh.tls_dir", Kind::Text),
    ("mesh.cluster_id", Kind::Text),
    ("mesh.gossip_listen", Kind::Text),
    ("mesh.gossip_advertise", Kind::Text),
    ("mesh.seeds", Kind::List),
    ("mesh.gossip_interval_ms", Kind::Integer),
    ("mesh.phi_threshold", Kind::Float),
    ("mesh.suspect_after_ms", Kind::Integer),
    ("mesh.dead_node_grace_sec", Kind::Integer),
    ("mesh.tombstone_ttl_sec", Kind::Integer),
    ("mqtt.url", Kind::Text),
    ("mqtt.client_id", Kind::Text),
    ("mqtt.username", Kind::Text),
    ("mqtt.password", Kind::Text),
    ("mqtt.keep_alive_sec", Kind::Integer),
    ("mqtt.ca_file", Kind::Text),
    ("mqtt.client_cert_file", Kind::Text),
    ("mqtt.client_key_file", Kind::Text),
    ("mqtt.intake", Kind::Bool),
    ("mqtt.topic_prefix", Kind::Text),
    ("mqtt.incident_topics", Kind::List),
    ("mqtt.actions_topic", Kind::Text),
    ("mqtt.summaries_topic", Kind::Text),
    ("mqtt.max_message_bytes", Kind::Integer),
    ("outbox.capacity", Kind::Integer),
    ("outbox.when_full", Kind::Text),
    ("upstream.max_inflight", Kind::Integer),
    ("upstream.ack_timeout_ms", Kind::Integer),
    ("upstream.reconnect_min_ms", Kind::Integer),
    ("upstream.reconnect_max_ms", Kind::Integer),
    ("upstream.failure_threshold", Kind::Integer),
    ("upstream.reset_timeout_sec", Kind::Integer),
    ("summary.interval_sec", Kind::Integer),
    ("summary.keep", Kind::Integer),
];

impl Config {
    /// Defaults, overridden by `file` (if given) and then by `MESH_AGENT_*` variables in `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
                ConfigError::Env {
                    var: env_var_name(&err.path().to_string()),
                    message: err.into_inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(node_id) = &self.node_id {
            validate_node_id(node_id).map_err(|message| ConfigError::Invalid {
                key: "node_id",
                message,
            })?;
        }
        self.http
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid { key, message })?;
        if self.audit.capacity == 0 {
            return Err(ConfigError::Invalid {
                key: "audit.capacity",
                message: "must be at least 1".into(),
            });
        }
        if self.audit.max_bytes < 1024 * 1024 {
            return Err(ConfigError::Invalid {
                key: "audit.max_bytes",
                message: "must be at least 1048576 (1 MiB)".into(),
            });
        }
        if !(1..=60_000).contains(&self.audit.commit_interval_ms) {
            return Err(ConfigError::Invalid {
                key: "audit.commit_interval_ms",
                message: "must be between 1 and 60000".into(),
            });
        }
        if self.rego.max_memory_bytes < 64 * 1024 * 1024 {
            return Err(ConfigError::Invalid {
                key: "rego.max_memory_bytes",
                message: "must be at least 67108864 (64 MiB): the agent itself needs some".into(),
            });
        }
        if !(1..=60_000).contains(&self.rego.time_limit_ms) {
            return Err(ConfigError::Invalid {
                key: "rego.time_limit_ms",
                message: "must be between 1 and 60000".into(),
            });
        }
        self.mesh.validate()?;
        crate::mqtt::config::validate(&self.mqtt, &self.outbox, &self.upstream, &self.summary)?;
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "max_body_bytes",
                message: "must be at least 1024".into(),
            });
        }
        Ok(())
    }

    /// The node id: configured, or the host name.
    pub fn resolved_node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            let cleaned: String = host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            if cleaned.is_empty() {
                "mesh-agent".into()
            } else {
                cleaned
            }
        })
    }

    pub fn dedup_window(&self) -> Duration {
        Duration::from_secs(self.dedup_window_sec)
    }

    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.audit.commit_interval_ms)
    }
}

impl MeshConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        if !(10..=60_000).contains(&self.gossip_interval_ms) {
            return Err(invalid(
                "mesh.gossip_interval_ms",
                "must be between 10 and 60000",
            ));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(invalid("mesh.phi_threshold", "must be a positive number"));
        }
        if self.cluster_id.is_empty() {
            return Err(invalid("mesh.cluster_id", "must not be empty"));
        }
        if self.tombstone_ttl_sec < 60 {
            return Err(invalid("mesh.tombstone_ttl_sec", "must be at least 60"));
        }
        for seed in &self.seeds {
            if !seed.contains(':') {
                return Err(ConfigError::Invalid {
                    key: "mesh.seeds",
                    message: format!("`{seed}` is not host:port"),
                });
            }
        }
        Ok(())
    }

    pub fn gossip_interval(&self) -> Duration {
        Duration::from_millis(self.gossip_interval_ms)
    }
}

/// A node id is used in file names and certificates: letters, digits, `-`, `_`, `.`; 1-128 long.
pub fn validate_node_id(node_id: &str) -> Result<(), String> {
    if node_id.is_empty() || node_id.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if let Some(bad) = node_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(format!(
            "contains `{bad}`; use letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    // Deserializing the text straight into `Config` gives errors with line, column and the key.
    toml::from_str::<Config>(&text).map_err(|err| ConfigError::File {
        path: shown.clone(),
        message: err.to_string(),
    })?;
    text.parse::<toml::Table>()
        .map_err(|err| ConfigError::File {
            path: shown,
            message: err.to_string(),
        })
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, text) in env {
        let Some(suffix) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((key, kind)) = KEYS.iter().find(|(key, _)| env_var_name(key) == var) else {
            let known: Vec<String> = KEYS.iter().map(|(k, _)| env_var_name(k)).collect();
            return Err(ConfigError::Env {
                var: var.clone(),
                message: format!(
                    "`{}` is not a config key; known variables: {}",
                    suffix.to_lowercase(),
                    known.join(", ")
                ),
            });
        };
        let value = match kind {
            Kind::Text => toml::Value::String(text),
            Kind::Integer => {
                toml::Value::Integer(text.trim().parse().map_err(|_| ConfigError::Env {
                    var: var.clone(),
                    message: format!("expected an integer, found `{text}`"),
                })?)
            }
            Kind::Float => {
                toml::Value::Float(text.trim().parse().map_err(|_| ConfigError::Env {
                    var: var.clone(),
                    message: format!("expected a number, found `{text}`"),
                })?)
            }
            Kind::Bool => {
                toml::Value::Boolean(text.trim().parse().map_err(|_| ConfigError::Env {
                    var: var.clone(),
                    message: format!("expected true or false, found `{text}`"),
                })?)
            }
            Kind::List => toml::Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| toml::Value::String(item.to_owned()))
                    .collect(),
            ),
        };
        set_path(table, key, value);
    }
    Ok(())
}

/// `audit.capacity` -> `MESH_AGENT_AUDIT_CAPACITY`.
fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_uppercase())
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests;
