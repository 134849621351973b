//! The agent's configuration: embedded defaults, then a TOML file, then `MESH_AGENT_<KEY>`
//! environment variables, then command-line flags, each overriding the one before.
//!
//! Every problem is reported with where it came from: the file's line and column, or the
//! environment variable's name, and what was expected.
//!
//! Each section belongs to the subsystem it configures, with its defaults and its validation
//! (`[mesh]` is `agent_mesh::MeshConfig`, ...); this module assembles them into one file and one
//! set of `MESH_AGENT_*` variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_base::InvalidSetting;
use serde::{Deserialize, Serialize};

pub use agent_decision::DecisionsConfig;
pub use agent_decision::audit::AuditConfig;
pub use agent_decision::decision_log::DecisionLogsConfig;
pub use agent_decision::outbox::OutboxConfig;
pub use agent_decision::summary::SummaryConfig;
pub use agent_http::{AuthConfig, HttpConfig, LimitsConfig};
pub use agent_mesh::MeshConfig;
pub use agent_mqtt::{MqttConfig, UpstreamConfig};
pub use agent_policy::opa::bundle::{BundlesConfig, SourceConfig};
pub use agent_policy::opa::{FailMode, RegoConfig};

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

impl From<InvalidSetting> for ConfigError {
    fn from(err: InvalidSetting) -> ConfigError {
        ConfigError::Invalid {
            key: err.key,
            message: err.message,
        }
    }
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
    /// What is logged, as `RUST_LOG` says it (`info`, `warn,agent_mesh=debug`); `RUST_LOG`, when
    /// set, wins. SIGHUP applies a new value.
    pub log_level: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Events without an `event_id` that are byte-for-byte the same (from the same source) within
    /// this many seconds are one incident (a retry or a redelivery); after it, a new one.
    pub dedup_window_sec: u64,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub audit: AuditConfig,
    pub rego: RegoConfig,
    /// `[bundle]`: how every OPA bundle is read and verified.
    pub bundle: BundlesConfig,
    /// `[[bundles]]`: the bundle servers to poll, one entry each.
    pub bundles: Vec<SourceConfig>,
    pub mesh: MeshConfig,
    pub mqtt: MqttConfig,
    pub outbox: OutboxConfig,
    pub upstream: UpstreamConfig,
    pub summary: SummaryConfig,
    pub decisions: DecisionsConfig,
    pub decision_logs: DecisionLogsConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_id: None,
            data_dir: PathBuf::from("./mesh-data"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8004)),
            policies_dir: None,
            log_format: LogFormat::Human,
            log_level: "info".into(),
            max_body_bytes: 1024 * 1024,
            dedup_window_sec: 120,
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            audit: AuditConfig::default(),
            rego: RegoConfig::default(),
            bundle: BundlesConfig::default(),
            bundles: Vec::new(),
            mesh: MeshConfig::default(),
            mqtt: MqttConfig::default(),
            outbox: OutboxConfig::default(),
            upstream: UpstreamConfig::default(),
            summary: SummaryConfig::default(),
            decisions: DecisionsConfig::default(),
            decision_logs: DecisionLogsConfig::default(),
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

/// Keys that hold tables or lists of tables: the config file sets them, no variable can.
const FILE_ONLY_KEYS: &[&str] = &["bundle.keys", "bundles"];

/// Every key, with its type; an environment variable for any other key is refused as a typo.
const KEYS: &[(&str, Kind)] = &[
    ("node_id", Kind::Text),
    ("data_dir", Kind::Text),
    ("http_listen", Kind::Text),
    ("policies_dir", Kind::Text),
    ("log_format", Kind::Text),
    ("log_level", Kind::Text),
    ("max_body_bytes", Kind::Integer),
    ("dedup_window_sec", Kind::Integer),
    ("http.max_connections", Kind::Integer),
    ("http.header_read_timeout_ms", Kind::Integer),
    ("http.idle_timeout_ms", Kind::Integer),
    ("http.request_timeout_ms", Kind::Integer),
    ("http.tls_cert_file", Kind::Text),
    ("http.tls_key_file", Kind::Text),
    ("auth.read_token_file", Kind::Text),
    ("auth.admin_token_file", Kind::Text),
    ("limits.evaluate_per_second", Kind::Integer),
    ("limits.evaluate_burst", Kind::Integer),
    ("audit.capacity", Kind::Integer),
    ("audit.max_bytes", Kind::Integer),
    ("audit.commit_interval_ms", Kind::Integer),
    ("rego.time_limit_ms", Kind::Integer),
    ("rego.fail_mode", Kind::Text),
    ("rego.cache_ttl_sec", Kind::Integer),
    ("rego.cache_entries", Kind::Integer),
    ("rego.max_data_bytes", Kind::Integer),
    ("rego.max_memory_bytes", Kind::Integer),
    ("bundle.max_bytes", Kind::Integer),
    ("bundle.max_uncompressed_bytes", Kind::Integer),
    ("bundle.max_files", Kind::Integer),
    ("bundle.keyid", Kind::Text),
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
    ("decisions.window_sec", Kind::Integer),
    ("decisions.gossip_max_bytes", Kind::Integer),
    ("decisions.publish_interval_ms", Kind::Integer),
    ("decisions.share_incidents", Kind::Bool),
    ("decision_logs.sink", Kind::Text),
    ("decision_logs.topic", Kind::Text),
    ("decision_logs.mask", Kind::List),
    ("decision_logs.keep", Kind::Integer),
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

    /// Checks what types alone cannot: each section checks its own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(node_id) = &self.node_id {
            agent_identity::validate_node_id(node_id).map_err(|message| ConfigError::Invalid {
                key: "node_id",
                message,
            })?;
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(ConfigError::Invalid {
                key: "log_level",
                message: format!("is not a log filter (`info`, `warn,agent_mesh=debug`): {err}"),
            });
        }
        self.http.validate()?;
        self.limits.validate()?;
        self.audit.validate()?;
        self.rego.validate()?;
        self.bundle.validate()?;
        agent_policy::opa::bundle::validate_sources(&self.bundles)?;
        self.mesh.validate()?;
        self.mqtt.validate()?;
        self.summary.validate()?;
        self.outbox.validate()?;
        self.upstream.validate()?;
        self.decisions.validate()?;
        self.decision_logs.validate()?;
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
        if let Some(key) = FILE_ONLY_KEYS.iter().find(|key| env_var_name(key) == var) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: format!("`{key}` holds tables: set it in the config file"),
            });
        }
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
