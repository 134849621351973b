//! Decision logs (the `[decision_logs]` section): every decision, in OPA's decision-log shape, to
//! an MQTT topic through the outbox or to the journal (standard output, one JSON object a line).
//!
//! A log is `{decision_id, path, input, result, timestamp, metrics, labels, revision, bundles,
//! erased}` as OPA writes it, so a consumer of OPA's logs reads these too: OPA API decisions under
//! their rule path (`authz/allow`), incident decisions under `mesh_agent/incidents` with the
//! matched rules and their actions as the result. Fields named in `mask` (JSON pointers as OPA's
//! `/input/password`) are removed before the log leaves the process, and listed in `erased`.
//!
//! Nothing is dropped without being counted: logs for MQTT wait in a bounded queue and are
//! committed in batches into the outbox's own lane (bounded by `keep`, the oldest dropped and
//! counted there); a full queue, or a journal that cannot be written, counts the log in
//! `decision_logs_dropped_total` with the reason, and says so in the agent's log once a second at
//! most.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use agent_base::InvalidSetting;
use agent_base::clock::{now_us, rfc3339};

use crate::audit::AuditLog;
use crate::outbox::{Lane, OutboxItem, Room};

/// Where decision logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// No decision logs (the default: the audit ring keeps every incident decision anyway).
    #[default]
    Off,
    /// Standard output, one JSON object a line: the journal, under systemd.
    Journal,
    /// The MQTT broker, through the outbox (needs `mqtt.url`).
    Mqtt,
}

/// The `[decision_logs]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogsConfig {
    pub sink: Sink,
    /// The MQTT topic (`sink = "mqtt"`), as `mqtt.actions_topic` is.
    pub topic: String,
    /// Fields removed from every log, as JSON pointers under `/input` or `/result`
    /// (`/input/password`, `/input/user/ssn`).
    pub mask: Vec<String>,
    /// Logs held in the outbox at most while the broker is away; the oldest are dropped (counted).
    pub keep: u64,
}

impl Default for DecisionLogsConfig {
    fn default() -> DecisionLogsConfig {
        DecisionLogsConfig {
            sink: Sink::Off,
            topic: "decision_logs".into(),
            mask: Vec::new(),
            keep: 100_000,
        }
    }
}

impl DecisionLogsConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        for pointer in &self.mask {
            if !(pointer.starts_with("/input/") || pointer.starts_with("/result/")) {
                return Err(InvalidSetting::new(
                    "decision_logs.mask",
                    format!(
                        "`{pointer}` is not a JSON pointer under /input/ or /result/ (as /input/password)"
                    ),
                ));
            }
        }
        if self.sink == Sink::Mqtt && self.topic.trim().is_empty() {
            return Err(InvalidSetting::new(
                "decision_logs.topic",
                "must not be empty",
            ));
        }
        if self.keep == 0 {
            return Err(InvalidSetting::new(
                "decision_logs.keep",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    reason: &'static str,
}

/// Logs written, and logs dropped with why.
#[derive(Debug, Clone, Default)]
pub struct DecisionLogMetrics {
    written: Family<SinkLabel, Counter>,
    dropped: Family<DropLabel, Counter>,
}

impl DecisionLogMetrics {
    pub fn register(registry: &mut Registry) -> DecisionLogMetrics {
        let metrics = DecisionLogMetrics::default();
        registry.register(
            "decision_logs",
            "Decision logs handed to their sink (journal; mqtt: committed to the outbox)",
            metrics.written.clone(),
        );
        registry.register(
            "decision_logs_dropped",
            "Decision logs dropped, by reason (queue_full, too_large, stopped, write_failed, not_committed; beyond decision_logs.keep in the outbox: outbox_decision_logs_dropped_total)",
            metrics.dropped.clone(),
        );
        for sink in ["journal", "mqtt"] {
            drop(metrics.written.get_or_create(&SinkLabel { sink }));
        }
        for reason in [
            "queue_full",
            "too_large",
            "stopped",
            "write_failed",
            "not_committed",
        ] {
            drop(metrics.dropped.get_or_create(&DropLabel { reason }));
        }
        metrics
    }
}

/// One decision to log.
pub struct Entry {
    /// The id the caller was given (OPA answers it beside the result).
    pub decision_id: String,
    /// The rule path (`authz/allow`), or `mesh_agent/incidents`.
    pub path: String,
    pub input: Value,
    pub result: Value,
    /// The policy revision the decision was made with.
    pub revision: u64,
    /// The revision of each OPA bundle in the set that decided, by bundle name (OPA's
    /// `bundles: {name: {revision}}`).
    pub bundles: std::collections::BTreeMap<String, String>,
    /// Time the evaluation took.
    pub eval_ns: u64,
}

/// Logs waiting for the outbox at most; past it a log is dropped and counted.
const QUEUE: usize = 16_384;
/// Logs committed together at most.
const BATCH: usize = 1_024;
/// The longest a log waits for its batch.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// The decision log of this node.
pub struct DecisionLog {
    node_id: String,
    mask: Vec<Vec<String>>,
    erased: Vec<String>,
    to: To,
    metrics: DecisionLogMetrics,
    /// Unix seconds of the last "dropped" warning, so a flood warns once a second.
    warned_at: AtomicI64,
}

enum To {
    Journal,
    Outbox {
        queue: mpsc::Sender<OutboxItem>,
        topic: String,
        /// The broker's limit (`mqtt.max_message_bytes`): a larger log could never be sent.
        max_bytes: usize,
        /// Tells the flushing task to commit what is queued and end.
        stop: tokio::sync::watch::Sender<bool>,
    },
}

impl DecisionLog {
    /// `None` when the sink is off. With `sink = "mqtt"`, `audit` is the writer of the outbox
    /// (`None` without MQTT: then the logs go to the journal, and the start says so).
    pub fn start(
        config: &DecisionLogsConfig,
        node_id: &str,
        max_message_bytes: usize,
        audit: Option<AuditLog>,
        metrics: DecisionLogMetrics,
    ) -> Option<(Arc<DecisionLog>, Option<JoinHandle<()>>)> {
        let (to, task) = match (config.sink, audit) {
            (Sink::Off, _) => return None,
            (Sink::Journal, _) => (To::Journal, None),
            (Sink::Mqtt, None) => {
                warn!(
                    "decision_logs.sink = \"mqtt\" without mqtt.url: decision logs go to the journal"
                );
                (To::Journal, None)
            }
            (Sink::Mqtt, Some(audit)) => {
                let (queue, queued) = mpsc::channel(QUEUE);
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let task = tokio::spawn(flush(queued, stopped, audit, metrics.clone()));
                (
                    To::Outbox {
                        queue,
                        topic: config.topic.clone(),
                        max_bytes: max_message_bytes,
                        stop,
                    },
                    Some(task),
                )
            }
        };
        let mask = config
            .mask
            .iter()
            .map(|pointer| {
                pointer
                    .split('/')
                    .skip(1)
                    .map(|part| part.replace("~1", "/").replace("~0", "~"))
                    .collect()
            })
            .collect();
        Some((
            Arc::new(DecisionLog {
                node_id: node_id.to_string(),
                mask,
                erased: config.mask.clone(),
                to,
                metrics,
                warned_at: AtomicI64::new(0),
            }),
            task,
        ))
    }

    /// Logs one decision: never blocks, never fails; a log that cannot be kept is counted.
    pub fn log(&self, entry: Entry) {
        let decision_id = entry.decision_id;
        let mut document = serde_json::json!({
            "decision_id": decision_id,
            "path": entry.path,
            "input": entry.input,
            "result": entry.result,
            "timestamp": rfc3339(now_us()),
            "metrics": { "timer_rego_query_eval_ns": entry.eval_ns },
            "labels": { "id": self.node_id, "version": env!("CARGO_PKG_VERSION") },
            "revision": entry.revision.to_string(),
            "bundles": entry
                .bundles
                .iter()
                .map(|(name, revision)| (name.clone(), serde_json::json!({"revision": revision})))
                .collect::<serde_json::Map<_, _>>(),
        });
        let mut erased = Vec::new();
        for (path, pointer) in self.mask.iter().zip(&self.erased) {
            if remove(&mut document, path) {
                erased.push(Value::String(pointer.clone()));
            }
        }
        if !erased.is_empty() {
            document["erased"] = Value::Array(erased);
        }
        let line = document.to_string();
        match &self.to {
            To::Journal => {
                let mut out = std::io::stdout().lock();
                match writeln!(out, "{line}") {
                    Ok(()) => self.written("journal"),
                    Err(err) => self.dropped("write_failed", &err.to_string()),
                }
            }
            To::Outbox {
                queue,
                topic,
                max_bytes,
                ..
            } => {
                if line.len() > *max_bytes {
                    self.dropped(
                        "too_large",
                        "the log is larger than mqtt.max_message_bytes; mask its large fields",
                    );
                    return;
                }
                let item = OutboxItem {
                    id: decision_id,
                    topic: topic.clone(),
                    payload: line,
                    lane: Lane::DecisionLog,
                };
                match queue.try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.dropped("queue_full", "the queue for the outbox is full")
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.dropped("stopped", "the agent is stopping")
                    }
                }
            }
        }
    }

    /// At a stop, before the audit writer closes: what is queued is committed, and the task
    /// started with the log ends (await its handle).
    pub fn stop(&self) {
        if let To::Outbox { stop, .. } = &self.to {
            let _ = stop.send(true);
        }
    }

    fn written(&self, sink: &'static str) {
        self.metrics
            .written
            .get_or_create(&SinkLabel { sink })
            .inc();
    }

    fn dropped(&self, reason: &'static str, why: &str) {
        self.metrics
            .dropped
            .get_or_create(&DropLabel { reason })
            .inc();
        let now = now_us() / 1_000_000;
        if self.warned_at.swap(now, Ordering::Relaxed) != now {
            warn!(
                reason,
                why, "decision log dropped (counted in decision_logs_dropped_total)"
            );
        }
    }
}

/// Removes the field at `path` (its parts) from `document`; `true` if it was there.
fn remove(document: &mut Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = document;
    for part in parents {
        at = match at {
            Value::Object(map) => match map.get_mut(part) {
                Some(next) => next,
                None => return false,
            },
            Value::Array(items) => {
                match part.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(next) => next,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match at {
        Value::Object(map) => map.remove(last).is_some(),
        _ => false,
    }
}

/// Commits queued logs into the outbox in batches, through the audit writer.
async fn flush(
    mut queued: mpsc::Receiver<OutboxItem>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    audit: AuditLog,
    metrics: DecisionLogMetrics,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut stopping = false;
    loop {
        if stopping {
            // Whatever is queued, in batches, then the end.
            while batch.len() < BATCH {
                match queued.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
        } else {
            let first = tokio::select! {
                first = queued.recv() => first,
                _ = stop.changed() => {
                    stopping = true;
                    continue;
                }
            };
            let Some(first) = first else {
                return;
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, queued.recv()).await {
                    Ok(Some(item)) => batch.push(item),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let count = batch.len() as u64;
        let committed = audit
            .append_durable(Vec::new(), std::mem::take(&mut batch), Room::none())
            .await;
        let label = match committed.await {
            Ok(Ok(())) => {
                metrics
                    .written
                    .get_or_create(&SinkLabel { sink: "mqtt" })
                    .inc_by(count);
                continue;
            }
            _ => DropLabel {
                reason: "not_committed",
            },
        };
        metrics.dropped.get_or_create(&label).inc_by(count);
        warn!(count, "decision logs not committed to the outbox; dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_fields_are_removed_and_listed() {
        let mut doc = serde_json::json!({"input": {"user": {"name": "a", "ssn": "1"}, "password": "p"}, "result": true});
        assert!(remove(&mut doc, &["input".into(), "password".into()]));
        assert!(remove(
            &mut doc,
            &["input".into(), "user".into(), "ssn".into()]
        ));
        assert!(!remove(&mut doc, &["input".into(), "missing".into()]));
        assert_eq!(
            doc,
            serde_json::json!({"input": {"user": {"name": "a"}}, "result": true})
        );
        let bad = DecisionLogsConfig {
            mask: vec!["password".into()],
            ..DecisionLogsConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
