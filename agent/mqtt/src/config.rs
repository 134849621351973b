//! The `[mqtt]` and `[upstream]` config sections. (`[outbox]` and `[summary]` belong to
//! `agent_decision`, whose outbox and summaries they shape.)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use agent_base::InvalidSetting;

use crate::connector::Endpoint;

/// The largest packet MQTT can carry (its remaining-length field), so the largest payload too.
pub const MAX_MQTT_PAYLOAD: usize = 268_435_455;

/// The broker, and the topics incidents arrive on and messages leave on. Without `url` the agent
/// runs without MQTT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS with rustls).
    pub url: Option<String>,
    /// Client id; the intake connects as `<client_id>-in`, the publisher as `<client_id>-out`.
    /// Default: `mesh-agent-<node_id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive_sec: u64,
    /// CA certificate (PEM) for `mqtts://`; default: the Mozilla roots are not bundled, so set it.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that require them.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Subscribe to the incident topics (set false for an upstream-only agent).
    pub intake: bool,
    /// Put in front of every incident topic (e.g. `site-1/`).
    pub topic_prefix: String,
    /// The seed's routing keys as MQTT topics (RabbitMQ's MQTT plugin maps `/` to `.`).
    pub incident_topics: Vec<String>,
    /// Where action messages for P0.3 go.
    pub actions_topic: String,
    /// Where audit summaries for the collector go.
    pub summaries_topic: String,
    /// The largest message payload, either way: a larger incident is rejected, an incident whose
    /// action would be larger is refused (HTTP 413), and a larger summary sheds its least evaluated
    /// policies, so nothing queued exceeds what the publisher may send.
    pub max_message_bytes: usize,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            url: None,
            client_id: None,
            username: None,
            password: None,
            keep_alive_sec: 30,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            intake: true,
            topic_prefix: String::new(),
            incident_topics: vec![
                "incident/detected".into(),
                "anomaly/detected".into(),
                "threshold/exceeded".into(),
            ],
            actions_topic: "p03/actions".into(),
            summaries_topic: "collector/summaries".into(),
            max_message_bytes: 1024 * 1024,
        }
    }
}

/// The publisher: its window, reconnect backoff, and circuit breaker (the seed's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Publishes sent and not yet acknowledged, at most.
    pub max_inflight: u16,
    /// A publish unacknowledged this long counts as a failure and the connection is renewed.
    pub ack_timeout_ms: u64,
    /// Reconnect backoff: first wait, doubled per failure up to the maximum.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one trial (half-open).
    pub reset_timeout_sec: u64,
}

impl Default for UpstreamConfig {
    fn default() -> UpstreamConfig {
        UpstreamConfig {
            max_inflight: 100,
            ack_timeout_ms: 10_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
            failure_threshold: 5,
            reset_timeout_sec: 60,
        }
    }
}

impl MqttConfig {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key, message: String| InvalidSetting { key, message };
        if let Some(url) = &self.url {
            Endpoint::parse(url).map_err(|err| invalid("mqtt.url", err.to_string()))?;
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(invalid(
                "mqtt.client_cert_file",
                "needs mqtt.client_key_file too (and the other way round)".into(),
            ));
        }
        if self.keep_alive_sec < 5 {
            return Err(invalid("mqtt.keep_alive_sec", "must be at least 5".into()));
        }
        for topic in self
            .incident_topics
            .iter()
            .chain([&self.actions_topic, &self.summaries_topic])
        {
            if topic.is_empty() {
                return Err(invalid("mqtt.incident_topics", "a topic is empty".into()));
            }
        }
        for (key, topic) in [
            ("mqtt.actions_topic", &self.actions_topic),
            ("mqtt.summaries_topic", &self.summaries_topic),
        ] {
            if topic.contains(['+', '#']) {
                return Err(invalid(
                    key,
                    format!("`{topic}` has a wildcard; publish topics cannot"),
                ));
            }
        }
        if !(1024..=MAX_MQTT_PAYLOAD).contains(&self.max_message_bytes) {
            return Err(invalid(
                "mqtt.max_message_bytes",
                format!("must be between 1024 and {MAX_MQTT_PAYLOAD} (MQTT's own limit)"),
            ));
        }
        Ok(())
    }
}

impl UpstreamConfig {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let invalid = |key, message: String| InvalidSetting { key, message };
        if self.max_inflight == 0 {
            return Err(invalid(
                "upstream.max_inflight",
                "must be at least 1".into(),
            ));
        }
        if self.failure_threshold == 0 {
            return Err(invalid(
                "upstream.failure_threshold",
                "must be at least 1".into(),
            ));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(invalid(
                "upstream.reconnect_max_ms",
                "needs 0 < reconnect_min_ms <= reconnect_max_ms".into(),
            ));
        }
        if self.ack_timeout_ms < 100 {
            return Err(invalid(
                "upstream.ack_timeout_ms",
                "must be at least 100".into(),
            ));
        }
        Ok(())
    }
}
