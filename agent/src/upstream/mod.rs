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
//! (see [`crate::mqtt`]), so that loop only ever sees the requests this publisher gave that
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
pub mod metrics;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::audit::AuditLog;
use crate::metrics::Metrics;
use crate::mqtt::{Backoff, Connector, UpstreamConfig};
use crate::outbox::Outbox;

pub use breaker::{Breaker, BreakerSettings, BreakerView, State};

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
    pub outbox_when_full: crate::outbox::WhenFull,
    /// Seconds the oldest entry has waited; null when the outbox is empty.
    pub outbox_oldest_age_sec: Option<f64>,
}

/// Shared state of the upstream, for `/health`.
pub struct Upstream {
    outbox: Arc<Outbox>,
    breaker: Arc<Breaker>,
    connected: watch::Receiver<bool>,
    broker: String,
}

impl Upstream {
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

/// Starts the driver and the publisher.
pub fn start(
    connector: Connector,
    settings: UpstreamConfig,
    outbox: Arc<Outbox>,
    audit: AuditLog,
    max_message_bytes: usize,
    metrics: Arc<Metrics>,
) -> (Arc<Upstream>, UpstreamTasks) {
    let breaker = Arc::new(Breaker::new(
        BreakerSettings {
            failure_threshold: settings.failure_threshold,
            reset_timeout: Duration::from_secs(settings.reset_timeout_sec),
        },
        Arc::clone(&metrics),
    ));
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
        settings: settings.clone(),
        breaker: Arc::clone(&breaker),
        reports: reports_tx,
        connected: connected_tx,
        renewals,
        metrics: Arc::clone(&metrics),
    };
    let publisher = Publisher {
        outbox: Arc::clone(&outbox),
        audit,
        max_message_bytes,
        breaker: Arc::clone(&breaker),
        window: usize::from(settings.max_inflight) * 2,
        ack_timeout: Duration::from_millis(settings.ack_timeout_ms),
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

struct Driver {
    connector: Connector,
    settings: UpstreamConfig,
    breaker: Arc<Breaker>,
    reports: mpsc::UnboundedSender<Report>,
    connected: watch::Sender<bool>,
    /// The publisher asks for a new connection of the generation it names (a publish went
    /// unacknowledged too long); a request about an older connection is ignored.
    renewals: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
}

impl Driver {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.settings.reconnect_min_ms),
            Duration::from_millis(self.settings.reconnect_max_ms),
        );
        let window = usize::from(self.settings.max_inflight) * 2;
        let mut generation = 0u64;
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(wait) = self.breaker.permit() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.changed() => return,
                }
            }
            generation += 1;
            let (client, mut eventloop) = self.connector.pair(
                "-out",
                false,
                self.settings.max_inflight,
                window + 16,
                MAX_INCOMING,
            );
            let mut up = false;
            // Dropping the event loop mid-poll is fine: the whole connection is abandoned.
            let reason = loop {
                let event = tokio::select! {
                    event = eventloop.poll() => event,
                    // Only a renewal of this connection ends it; waking for any other would cancel
                    // a poll part way (a publish numbered but not yet written).
                    _ = renewal_of(&mut self.renewals, generation) => {
                        break "publish not acknowledged in time".to_owned();
                    }
                    _ = stop.changed() => {
                        // Say goodbye properly (a DISCONNECT on the wire), briefly.
                        let _ = client.try_disconnect();
                        let goodbye = async {
                            while !matches!(
                                eventloop.poll().await,
                                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)
                            ) {}
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
                        return;
                    }
                };
                let report = match event {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        debug!(session_present = ack.session_present, "upstream connected");
                        up = true;
                        backoff.reset();
                        self.metrics.upstream.connected.set(1);
                        let _ = self.connected.send(true);
                        Report::Connected {
                            generation,
                            client: client.clone(),
                        }
                    }
                    Ok(Event::Incoming(Incoming::PubAck(ack))) => Report::Acked {
                        generation,
                        pkid: ack.pkid,
                    },
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        Report::Sent { generation, pkid }
                    }
                    Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                        Report::HeldBack { generation, pkid }
                    }
                    Ok(_) => continue,
                    Err(err) => break err.to_string(),
                };
                if self.reports.send(report).is_err() {
                    return;
                }
            };
            let _ = self.reports.send(Report::Down { generation });
            self.metrics.upstream.connected.set(0);
            self.metrics.upstream.connection_failures.inc();
            let _ = self.connected.send(false);
            self.breaker.failure(&reason);
            let wait = backoff.next_wait();
            if up {
                warn!(error = %reason, "upstream connection lost; reconnecting");
            } else {
                warn!(error = %reason, retry_in_ms = wait.as_millis() as u64, "upstream connection failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// Resolves when the publisher asks to renew connection `generation`.
async fn renewal_of(renewals: &mut watch::Receiver<u64>, generation: u64) {
    if renewals.wait_for(|g| *g == generation).await.is_err() {
        // The publisher is gone: no renewal will come.
        std::future::pending::<()>().await;
    }
}

struct Publisher {
    outbox: Arc<Outbox>,
    /// Removes acknowledged entries (the data file's one writer).
    audit: AuditLog,
    /// Entries with a larger payload cannot be sent (the limit shrank since they were queued).
    max_message_bytes: usize,
    breaker: Arc<Breaker>,
    /// Entries handed to the client and not yet acknowledged, at most.
    window: usize,
    ack_timeout: Duration,
    renew: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    generation: u64,
    /// The current connection's client, while it is up.
    client: Option<AsyncClient>,
    /// Keys handed to the client whose packet id is not known yet, in order.
    handed: VecDeque<u64>,
    /// Packet id -> key of publishes sent and not yet acknowledged.
    in_flight: HashMap<u16, u64>,
    /// A publish rumqttc held back because its packet id was still in flight.
    held_back: Option<(u16, u64)>,
    /// The newest key handed to the current client.
    cursor: u64,
    /// Acknowledged keys waiting to be removed.
    acked: Vec<u64>,
    /// When the publisher last saw the broker acknowledge something (or had nothing in flight).
    last_progress: Instant,
}

impl Publisher {
    async fn run(
        mut self,
        mut reports: mpsc::UnboundedReceiver<Report>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(REMOVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut age_every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                // Reports first: a tick must never judge progress with acknowledgements unread.
                biased;
                report = reports.recv() => match report {
                    Some(report) => {
                        self.handle(report).await;
                        // Take whatever else is already reported before doing I/O.
                        while let Ok(report) = reports.try_recv() {
                            self.handle(report).await;
                        }
                    }
                    None => break,
                },
                _ = self.outbox.wait_committed() => {}
                _ = tick.tick() => {
                    self.check_progress();
                    if !self.acked.is_empty() {
                        self.remove_acked().await;
                    }
                }
                _ = age_every.tick() => self.show_age(),
                _ = stop.changed() => break,
            }
            if self.acked.len() >= REMOVE_BATCH {
                self.remove_acked().await;
            }
            self.feed();
        }
        self.finish(reports).await;
    }

    /// Stopping: hands nothing new over, lets what is in flight be acknowledged (up to the grace
    /// period), and waits until the acknowledged entries are removed.
    async fn finish(&mut self, mut reports: mpsc::UnboundedReceiver<Report>) {
        let deadline = tokio::time::sleep(STOP_GRACE);
        tokio::pin!(deadline);
        while self.client.is_some() && !(self.in_flight.is_empty() && self.handed.is_empty()) {
            tokio::select! {
                report = reports.recv() => match report {
                    Some(report) => self.handle(report).await,
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        self.remove_acked_now().await;
    }

    async fn handle(&mut self, report: Report) {
        match report {
            Report::Connected { generation, client } => {
                // Everything not yet removed is sent again, from the oldest: so first wait until
                // what was acknowledged is gone, or it would be sent again too.
                self.remove_acked_now().await;
                self.generation = generation;
                self.client = Some(client);
                self.handed.clear();
                self.in_flight.clear();
                self.held_back = None;
                self.cursor = 0;
                self.last_progress = Instant::now();
                let depth = self.outbox.depth();
                if depth == 0 {
                    // Nothing to send: the accepted connection is all there is to prove.
                    self.breaker.success();
                }
                info!(
                    outbox_depth = depth,
                    "upstream connected; sending the outbox"
                );
            }
            Report::Down { generation } if generation == self.generation => {
                self.client = None;
            }
            Report::Sent { generation, pkid } if generation == self.generation => {
                let key = match self.held_back {
                    Some((held, key)) if held == pkid => {
                        self.held_back = None;
                        Some(key)
                    }
                    _ => self.handed.pop_front(),
                };
                match key {
                    Some(key) => {
                        if self.in_flight.is_empty() {
                            self.last_progress = Instant::now();
                        }
                        self.in_flight.insert(pkid, key);
                    }
                    None => warn!(
                        pkid,
                        "publish reported that this publisher did not hand over"
                    ),
                }
            }
            Report::HeldBack { generation, pkid } if generation == self.generation => {
                if let Some(key) = self.handed.pop_front() {
                    self.held_back = Some((pkid, key));
                }
            }
            Report::Acked { generation, pkid } if generation == self.generation => {
                if let Some(key) = self.in_flight.remove(&pkid) {
                    self.metrics.upstream.published.inc();
                    self.acked.push(key);
                    self.last_progress = Instant::now();
                    self.breaker.success();
                }
            }
            // Reports of an abandoned connection.
            _ => {}
        }
    }

    /// Hands the next entries to the client, up to the window.
    fn feed(&mut self) {
        let Some(client) = &self.client else {
            return;
        };
        let busy = self.handed.len() + self.in_flight.len() + usize::from(self.held_back.is_some());
        if busy >= self.window || self.cursor >= self.outbox.last_committed() {
            return;
        }
        let entries = match self.outbox.read_after(self.cursor, self.window - busy) {
            Ok(entries) => entries,
            Err(err) => {
                warn!(error = %err, "cannot read the outbox");
                return;
            }
        };
        // Keys acknowledged but not yet removed are all at or below the cursor (a new connection
        // removes them before it starts over), so nothing read here was acknowledged already.
        for (key, entry) in entries {
            if entry.payload.len() > self.max_message_bytes {
                error!(
                    id = %entry.id,
                    topic = %entry.topic,
                    size = entry.payload.len(),
                    limit = self.max_message_bytes,
                    "outbox entry larger than mqtt.max_message_bytes can never be sent; dropped"
                );
                self.metrics.upstream.outbox_undeliverable.inc();
                self.acked.push(key);
                self.cursor = key;
                continue;
            }
            let payload = entry.payload.into_bytes();
            match client.try_publish(entry.topic, QoS::AtLeastOnce, false, payload) {
                Ok(()) => {
                    self.handed.push_back(key);
                    self.cursor = key;
                }
                // The request queue is full (or the connection is going away): later.
                Err(_) => break,
            }
        }
    }

    /// Publishes in flight with no acknowledgement for `ack_timeout`: renew the connection.
    fn check_progress(&mut self) {
        if self.client.is_some()
            && !self.in_flight.is_empty()
            && self.last_progress.elapsed() > self.ack_timeout
        {
            warn!(
                in_flight = self.in_flight.len(),
                timeout_ms = self.ack_timeout.as_millis() as u64,
                "broker has not acknowledged publishes; renewing the connection"
            );
            self.last_progress = Instant::now();
            self.renew.send_replace(self.generation);
        }
    }

    async fn remove_acked(&mut self) {
        let keys = std::mem::take(&mut self.acked);
        self.audit.remove_from_outbox(keys).await;
    }

    /// Removes the acknowledged entries and waits until that (and every removal before) is
    /// committed.
    async fn remove_acked_now(&mut self) {
        let keys = std::mem::take(&mut self.acked);
        if self.audit.remove_from_outbox_now(keys).await.is_err() {
            warn!("acknowledged entries could not be removed; they are sent again");
        }
    }

    fn show_age(&self) {
        let age = self.outbox.oldest_age().ok().flatten();
        self.metrics
            .upstream
            .outbox_oldest_age
            .set(age.map_or(0.0, |d| d.as_secs_f64()));
    }
}
