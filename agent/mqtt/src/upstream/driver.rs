//! The driver: owns the rumqttc event loop of the current connection, polls it, and reports to the
//! publisher what matters (CONNACK, the packet id each publish was given, PUBACKs, errors), tagged
//! with the connection's generation; after an error it drops the connection, waits (backoff, and
//! the circuit breaker), and makes a new one.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{Event, Incoming, Outgoing};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::config::UpstreamConfig;
use crate::connector::{Backoff, Connector};

use super::*;

pub(super) struct Driver {
    pub(super) connector: Connector,
    /// The settings in force; a reload's take effect from the next connection.
    pub(super) settings: watch::Receiver<UpstreamConfig>,
    pub(super) breaker: Arc<Breaker>,
    pub(super) reports: mpsc::UnboundedSender<Report>,
    pub(super) connected: watch::Sender<bool>,
    /// The publisher asks for a new connection of the generation it names (a publish went
    /// unacknowledged too long); a request about an older connection is ignored.
    pub(super) renewals: watch::Receiver<u64>,
    pub(super) metrics: UpstreamMetrics,
}

impl Driver {
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let backoff_of = |settings: &UpstreamConfig| {
            Backoff::new(
                Duration::from_millis(settings.reconnect_min_ms),
                Duration::from_millis(settings.reconnect_max_ms),
            )
        };
        let mut backoff = backoff_of(&self.settings.borrow_and_update());
        let mut generation = 0u64;
        loop {
            if *stop.borrow() {
                return;
            }
            if self.settings.has_changed().unwrap_or(false) {
                backoff = backoff_of(&self.settings.borrow_and_update());
            }
            let max_inflight = self.settings.borrow().max_inflight;
            let window = usize::from(max_inflight) * 2;
            if let Err(wait) = self.breaker.permit() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stop.changed() => return,
                }
            }
            generation += 1;
            let (client, mut eventloop) =
                self.connector
                    .pair("-out", false, max_inflight, window + 16, MAX_INCOMING);
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
                        self.metrics.connected.set(1);
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
            self.metrics.connected.set(0);
            self.metrics.connection_failures.inc();
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
