//! The publisher: owns the outbox cursor, hands entries to the current connection's client, maps
//! packet ids to outbox keys, and removes an entry once its PUBACK has arrived.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use agent_decision::audit::AuditLog;
use agent_decision::outbox::Outbox;

use super::*;

pub(super) struct Publisher {
    pub(super) outbox: Arc<Outbox>,
    /// Removes acknowledged entries (the data file's one writer).
    pub(super) audit: AuditLog,
    /// Entries with a larger payload cannot be sent (the limit shrank since they were queued).
    pub(super) max_message_bytes: usize,
    pub(super) breaker: Arc<Breaker>,
    /// Entries handed to the client and not yet acknowledged, at most.
    pub(super) window: usize,
    pub(super) ack_timeout: Duration,
    /// Where `window` and `ack_timeout` come from: read again at every new connection.
    pub(super) settings: watch::Receiver<UpstreamConfig>,
    pub(super) renew: watch::Sender<u64>,
    pub(super) metrics: UpstreamMetrics,
    pub(super) generation: u64,
    /// The current connection's client, while it is up.
    pub(super) client: Option<AsyncClient>,
    /// Keys handed to the client whose packet id is not known yet, in order.
    pub(super) handed: VecDeque<u64>,
    /// Packet id -> key of publishes sent and not yet acknowledged.
    pub(super) in_flight: HashMap<u16, u64>,
    /// A publish rumqttc held back because its packet id was still in flight.
    pub(super) held_back: Option<(u16, u64)>,
    /// The newest key handed to the current client.
    pub(super) cursor: u64,
    /// Acknowledged keys waiting to be removed.
    pub(super) acked: Vec<u64>,
    /// When the publisher last saw the broker acknowledge something (or had nothing in flight).
    pub(super) last_progress: Instant,
}

impl Publisher {
    pub(super) async fn run(
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
                {
                    let settings = self.settings.borrow_and_update();
                    self.window = usize::from(settings.max_inflight) * 2;
                    self.ack_timeout = Duration::from_millis(settings.ack_timeout_ms);
                }
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
                    self.metrics.published.inc();
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
                self.metrics.outbox_undeliverable.inc();
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
            .outbox_oldest_age
            .set(age.map_or(0.0, |d| d.as_secs_f64()));
    }
}
