//! Wiring of the MQTT side into `mesh-agent run`: the outbox, the upstream publisher, the intake and
//! the summary task, started from the config and stopped in order at shutdown.

use std::sync::Arc;
use std::time::Duration;

use redb::Database;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::decision::{ActionSink, Decider};
use crate::engine::Engine;
use crate::event::Dedup;
use crate::metrics::Metrics;
use crate::mqtt::{Connector, MqttError};
use crate::outbox::{Outbox, OutboxBounds};
use crate::store::StoreError;
use crate::summary::WindowStats;
use crate::upstream::{self, Upstream, UpstreamTasks};

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
    config: &Config,
    db: Arc<Database>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<Outbox>>, StoreError> {
    if config.mqtt.url.is_none() {
        info!("no mqtt.url: running without MQTT (no intake, no upstream; actions are not queued)");
        return Ok(None);
    }
    let bounds = OutboxBounds {
        capacity: config.outbox.capacity,
        when_full: config.outbox.when_full,
        summary_capacity: config.summary.keep,
    };
    let outbox = Outbox::open(db, bounds, Arc::clone(metrics))?;
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

/// The decider every intake uses, and the MQTT side if configured.
pub fn start(
    config: &Config,
    node_id: &str,
    engine: Arc<Engine>,
    audit: AuditLog,
    outbox: Option<Arc<Outbox>>,
    metrics: Arc<Metrics>,
) -> Result<(Arc<Decider>, Option<MqttService>), StartError> {
    let decider = Decider::new(
        engine,
        audit.clone(),
        node_id.to_owned(),
        Dedup::new(config.dedup_window()),
    );
    match decider.reopen_windows(config.dedup_window()) {
        Ok(0) => {}
        Ok(open) => info!(open, "de-duplication windows re-opened from the audit ring"),
        Err(err) => {
            warn!(error = %err, "cannot re-open de-duplication windows from the audit ring")
        }
    }
    let Some(outbox) = outbox else {
        return Ok((Arc::new(decider), None));
    };
    let connector = Connector::from_config(&config.mqtt, node_id)?;
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
        Arc::clone(&metrics),
    );
    let (stop, stopped) = watch::channel(false);
    let intake = config.mqtt.intake.then(|| {
        let topics = config
            .mqtt
            .incident_topics
            .iter()
            .map(|t| format!("{}{t}", config.mqtt.topic_prefix))
            .collect();
        let settings = crate::intake::IntakeSettings {
            topics,
            max_bytes: config.mqtt.max_message_bytes,
        };
        crate::intake::start(
            connector,
            settings,
            Arc::clone(&decider),
            Arc::clone(&metrics),
            stopped.clone(),
        )
    });
    let summary = (config.summary.interval_sec > 0).then(|| {
        let sink = crate::summary::SummarySink {
            node_id: node_id.to_owned(),
            topic: config.mqtt.summaries_topic.clone(),
            interval: Duration::from_secs(config.summary.interval_sec),
            max_bytes: config.mqtt.max_message_bytes,
        };
        tokio::spawn(crate::summary::run(stats, sink, audit, stopped))
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
