//! The upstream publisher: sends the outbox to the broker (QoS 1), in key order, and removes an entry
//! only when the broker's PUBACK for it has arrived.
//!
//! Two tasks. The *driver* owns the rumqttc event loop of the current connection: it polls it and
//! forwards what matters (CONNACK, the packet id each publish was given, PUBACKs, errors), tagged
//! with the connection's generation; after an error it drops the connection, waits (backoff, and
//! the circuit breaker), and makes a new one. The *publisher* owns the outbox cursor: it hands
//! entries to the current connection's client and maps packet ids to outbox keys.
//!
//! How a PUBACK is matched to an outbox entry: rumqttc assigns packet ids inside the event loop, in
//! the order requests leave its queue, and reports each with `Outgoing::Publish(pkid)` (or
//! `Outgoing::AwaitAck(pkid)` when the id is still in flight: that publish is held back and is the
//! next `Outgoing::Publish` with the same id). Every connection is a fresh client and event loop
//! (see [`crate::connector`]), so that loop only ever sees the requests this publisher gave that
//! client, in order: the n-th `Outgoing::Publish`/`AwaitAck` of a generation is the n-th entry
//! handed to its client. Events of older generations are ignored; a new connection starts from the
//! oldest entry still in the outbox (an entry sent but not acknowledged before a disconnect is sent
//! again, under the same id: consumers de-duplicate by `action_id`). Acknowledged keys leave the
//! outbox through the audit writer, the data file's one writer.
//!
//! What counts for the circuit breaker: a connection that fails or drops, and publishes left
//! unacknowledged for `ack_timeout` (the connection is then renewed), are failures; a PUBACK is a
//! success, and so is a CONNACK when there is nothing to send. A CONNACK alone proves nothing about
//! a broker that accepts connections and never acknowledges a publish, so it does not close the
//! breaker or reset its count while messages wait.

pub mod breaker;
mod driver;
pub mod metrics;
mod publisher;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::AsyncClient;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use agent_decision::audit::AuditLog;
use agent_decision::outbox::{Outbox, WhenFull};

use crate::config::UpstreamConfig;
use crate::connector::Connector;

pub use breaker::{Breaker, BreakerSettings, BreakerView, State};
pub use metrics::UpstreamMetrics;

use driver::Driver;
use publisher::Publisher;

/// Acknowledged entries are handed to the writer for removal in batches: at most this many...
const REMOVE_BATCH: usize = 1024;
/// ...or this long after the first acknowledgement of a batch.
const REMOVE_EVERY: Duration = Duration::from_millis(20);
/// At a stop, how long publishes in flight may take to be acknowledged.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// PUBACKs carry no payload: anything larger from the broker is a protocol error.
const MAX_INCOMING: usize = 64 * 1024;

/// What `/health` shows of the upstream.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamView {
    pub broker: String,
    pub connected: bool,
    pub breaker: BreakerView,
    pub outbox_depth: u64,
    pub outbox_capacity: u64,
    pub outbox_when_full: WhenFull,
    /// Seconds the oldest entry has waited; null when the outbox is empty.
    pub outbox_oldest_age_sec: Option<f64>,
}

/// Shared state of the upstream, for `/health`.
pub struct Upstream {
    outbox: Arc<Outbox>,
    breaker: Arc<Breaker>,
    settings: watch::Sender<UpstreamConfig>,
    connected: watch::Receiver<bool>,
    broker: String,
}

impl Upstream {
    /// Takes new `[upstream]` settings (a reload): the breaker's at once, the backoff, in-flight
    /// window and ack timeout from the next connection. `false` when nothing changed.
    pub fn reconfigure(&self, settings: &UpstreamConfig) -> bool {
        if *self.settings.borrow() == *settings {
            return false;
        }
        self.breaker.set_settings(breaker_settings(settings));
        self.settings.send_replace(settings.clone());
        true
    }

    pub fn view(&self) -> UpstreamView {
        UpstreamView {
            broker: self.broker.clone(),
            connected: *self.connected.borrow(),
            breaker: self.breaker.view(),
            outbox_depth: self.outbox.depth(),
            outbox_capacity: self.outbox.capacity(),
            outbox_when_full: self.outbox.when_full(),
            outbox_oldest_age_sec: self
                .outbox
                .oldest_age()
                .ok()
                .flatten()
                .map(|d| d.as_secs_f64()),
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

/// The running tasks; [`stop`](UpstreamTasks::stop) them at shutdown (the outbox keeps the rest).
pub struct UpstreamTasks {
    stop: watch::Sender<bool>,
    publisher: JoinHandle<()>,
    disconnect: watch::Sender<bool>,
    driver: JoinHandle<()>,
}

impl UpstreamTasks {
    /// Stops publishing: nothing new is handed over, publishes in flight get up to [`STOP_GRACE`] to be
    /// acknowledged, acknowledged entries are removed (the audit writer must still be running),
    /// then the connection is closed. What is left is sent after the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let publisher = self.publisher.abort_handle();
        // The publisher waits at most STOP_GRACE for acknowledgements, then for its removal commit.
        if tokio::time::timeout(STOP_GRACE * 2, self.publisher)
            .await
            .is_err()
        {
            warn!("upstream publisher did not stop in time");
            publisher.abort();
        }
        let _ = self.disconnect.send(true);
        let driver = self.driver.abort_handle();
        if tokio::time::timeout(STOP_GRACE, self.driver).await.is_err() {
            driver.abort();
        }
    }
}

/// What the driver tells the publisher.
enum Report {
    Connected {
        generation: u64,
        client: AsyncClient,
    },
    Sent {
        generation: u64,
        pkid: u16,
    },
    HeldBack {
        generation: u64,
        pkid: u16,
    },
    Acked {
        generation: u64,
        pkid: u16,
    },
    Down {
        generation: u64,
    },
}

fn breaker_settings(settings: &UpstreamConfig) -> BreakerSettings {
    BreakerSettings {
        failure_threshold: settings.failure_threshold,
        reset_timeout: Duration::from_secs(settings.reset_timeout_sec),
    }
}

/// Starts the driver and the publisher.
pub fn start(
    connector: Connector,
    settings: UpstreamConfig,
    outbox: Arc<Outbox>,
    audit: AuditLog,
    max_message_bytes: usize,
    metrics: UpstreamMetrics,
) -> (Arc<Upstream>, UpstreamTasks) {
    let breaker = Arc::new(Breaker::new(breaker_settings(&settings), metrics.clone()));
    let (settings_tx, settings_rx) = watch::channel(settings.clone());
    let (stop, stopped) = watch::channel(false);
    let (disconnect, disconnected) = watch::channel(false);
    let (connected_tx, connected) = watch::channel(false);
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let (renew, renewals) = watch::channel(0);
    let endpoint = connector.endpoint();
    let broker = format!(
        "{}://{}:{}",
        if endpoint.tls { "mqtts" } else { "mqtt" },
        endpoint.host,
        endpoint.port
    );
    let driver = Driver {
        connector,
        settings: settings_rx.clone(),
        breaker: Arc::clone(&breaker),
        reports: reports_tx,
        connected: connected_tx,
        renewals,
        metrics: metrics.clone(),
    };
    let publisher = Publisher {
        outbox: Arc::clone(&outbox),
        audit,
        max_message_bytes,
        breaker: Arc::clone(&breaker),
        window: usize::from(settings.max_inflight) * 2,
        ack_timeout: Duration::from_millis(settings.ack_timeout_ms),
        settings: settings_rx,
        renew,
        metrics,
        generation: 0,
        client: None,
        handed: VecDeque::new(),
        in_flight: HashMap::new(),
        held_back: None,
        cursor: 0,
        acked: Vec::new(),
        last_progress: Instant::now(),
    };
    let driver = tokio::spawn(driver.run(disconnected));
    let publisher = tokio::spawn(publisher.run(reports, stopped));
    info!(broker = %broker, "upstream publisher started");
    let upstream = Arc::new(Upstream {
        outbox,
        breaker,
        settings: settings_tx,
        connected,
        broker,
    });
    (
        upstream,
        UpstreamTasks {
            stop,
            publisher,
            disconnect,
            driver,
        },
    )
}
