//! Wiring of the MQTT side into `mesh-agent run`: the outbox, the upstream publisher, the intake and
//! the summary task, started from the config and stopped in order at shutdown.

use std::sync::Arc;
use std::time::Duration;

use redb::Database;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use agent_decision::audit::AuditLog;
use agent_decision::outbox::{Outbox, OutboxBounds, OutboxConfig};
use agent_decision::summary::{self, SummaryConfig, WindowStats};
use agent_decision::{ActionSink, Decider, OutboxMetrics};
use agent_store::StoreError;

use crate::config::{MqttConfig, UpstreamConfig};
use crate::connector::{Connector, MqttError};
use crate::intake;
use crate::upstream::{self, Upstream, UpstreamMetrics, UpstreamTasks};

/// The config sections the MQTT side reads.
#[derive(Clone, Copy)]
pub struct MqttSections<'a> {
    pub mqtt: &'a MqttConfig,
    pub outbox: &'a OutboxConfig,
    pub upstream: &'a UpstreamConfig,
    pub summary: &'a SummaryConfig,
    /// Decision logs held in the outbox at most (`decision_logs.keep`).
    pub decision_logs_keep: u64,
}

/// Why the MQTT side could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("outbox: {0}")]
    Store(#[from] StoreError),
    #[error("mqtt: {0}")]
    Mqtt(#[from] MqttError),
}

/// The outbox, when MQTT is configured (without a broker nobody would drain it).
pub fn open_outbox(
    config: MqttSections<'_>,
    db: Arc<Database>,
    metrics: OutboxMetrics,
) -> Result<Option<Arc<Outbox>>, StoreError> {
    if config.mqtt.url.is_none() {
        info!("no mqtt.url: running without MQTT (no intake, no upstream; actions are not queued)");
        return Ok(None);
    }
    let bounds = OutboxBounds {
        capacity: config.outbox.capacity,
        when_full: config.outbox.when_full,
        summary_capacity: config.summary.keep,
        log_capacity: config.decision_logs_keep,
    };
    let outbox = Outbox::open(db, bounds, metrics)?;
    if outbox.depth() > 0 {
        info!(
            depth = outbox.depth(),
            "outbox holds messages from before the restart; they are sent again, in order"
        );
    }
    Ok(Some(outbox))
}

/// The running MQTT side.
pub struct MqttService {
    upstream: Arc<Upstream>,
    tasks: UpstreamTasks,
    intake: Option<JoinHandle<()>>,
    summary: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl MqttService {
    pub fn upstream(&self) -> Arc<Upstream> {
        Arc::clone(&self.upstream)
    }

    /// Stops in order: the intake and the summaries (what is recorded is acknowledged first), then
    /// the publisher (what is in flight may still be acknowledged and removed). The audit writer
    /// must still be running: it commits those removals. What is still in the outbox is sent after
    /// the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in [self.intake, self.summary].into_iter().flatten() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.tasks.stop().await;
        info!("MQTT stopped");
    }
}

/// The MQTT side, if configured (an outbox was opened): `decider` gets the outbox as its action
/// sink, and the intake decides with it. Returns the decider every intake uses.
pub fn start(
    config: MqttSections<'_>,
    node_id: &str,
    decider: Decider,
    audit: AuditLog,
    outbox: Option<Arc<Outbox>>,
    metrics: UpstreamMetrics,
) -> Result<(Arc<Decider>, Option<MqttService>), StartError> {
    let Some(outbox) = outbox else {
        return Ok((Arc::new(decider), None));
    };
    let connector = Connector::from_config(config.mqtt, node_id)?;
    let stats = Arc::new(WindowStats::new());
    let decider = Arc::new(
        decider
            .with_upstream(ActionSink {
                outbox: Arc::clone(&outbox),
                topic: config.mqtt.actions_topic.clone(),
                max_bytes: config.mqtt.max_message_bytes,
            })
            .with_stats(Arc::clone(&stats)),
    );
    let (upstream, tasks) = upstream::start(
        connector.clone(),
        config.upstream.clone(),
        outbox,
        audit.clone(),
        config.mqtt.max_message_bytes,
        metrics.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let intake = config.mqtt.intake.then(|| {
        let topics = config
            .mqtt
            .incident_topics
            .iter()
            .map(|t| format!("{}{t}", config.mqtt.topic_prefix))
            .collect();
        let settings = intake::IntakeSettings {
            topics,
            max_bytes: config.mqtt.max_message_bytes,
        };
        intake::start(
            connector,
            settings,
            Arc::clone(&decider),
            metrics.clone(),
            stopped.clone(),
        )
    });
    let summary = (config.summary.interval_sec > 0).then(|| {
        let sink = summary::SummarySink {
            node_id: node_id.to_owned(),
            topic: config.mqtt.summaries_topic.clone(),
            interval: Duration::from_secs(config.summary.interval_sec),
            max_bytes: config.mqtt.max_message_bytes,
        };
        tokio::spawn(summary::run(stats, sink, audit, stopped))
    });
    Ok((
        decider,
        Some(MqttService {
            upstream,
            tasks,
            intake,
            summary,
            stop,
        }),
    ))
}
