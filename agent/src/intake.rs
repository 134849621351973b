//! MQTT intake: incidents from the node's monitor, on the seed's routing keys as topics
//! (`incident/detected`, `anomaly/detected`, `threshold/exceeded`), each payload the `/evaluate`
//! event JSON, evaluated and audited through the same [`Decider`] as `/evaluate`.
//!
//! An incident is acknowledged to the broker (PUBACK, manual acks) only after its decision is
//! recorded: at once for an incident no rule matched (its audit entry, like `/evaluate`'s, is
//! group-committed), after the commit of its audit entry and actions for one that matched. Until
//! then the broker keeps it and redelivers it after a reconnect; since action ids are derived from
//! the incident (its `event_id`, or for an event without one a hash of topic and payload), a
//! redelivered incident yields the same action ids. Acknowledgements are sent in arrival order, by
//! one task per connection, so an acknowledgement never reaches a later connection.
//!
//! A malformed payload is counted, logged with its topic, audited as rejected, acknowledged (a
//! redelivery would not make it valid), and the intake carries on.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, Publish, QoS, SubscribeFilter};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::audit::Committed;
use crate::decision::Decider;
use crate::event::Event as IncidentEvent;
use crate::metrics::Metrics;
use crate::mqtt::{Backoff, Connector};

/// Incidents received and not yet acknowledged, at most, per connection.
const ACK_QUEUE: usize = 1024;

/// Starts the intake; it runs until `stop`.
pub fn start(
    connector: Connector,
    topics: Vec<String>,
    decider: Arc<Decider>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    info!(topics = ?topics, "MQTT intake subscribing");
    let intake = Intake {
        connector,
        topics,
        decider,
        metrics,
    };
    tokio::spawn(intake.run(stop))
}

struct Intake {
    connector: Connector,
    topics: Vec<String>,
    decider: Arc<Decider>,
    metrics: Arc<Metrics>,
}

impl Intake {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let (client, mut eventloop) = self.connector.pair("-in", true, 100, 4 * ACK_QUEUE);
            let (acks, queue) = mpsc::channel(ACK_QUEUE);
            let renew = Arc::new(Notify::new());
            let acker = tokio::spawn(acknowledge(client.clone(), queue, Arc::clone(&renew)));
            let reason = loop {
                // Dropping the event loop mid-poll is fine: the whole connection is abandoned.
                let event = tokio::select! {
                    event = eventloop.poll() => event,
                    _ = renew.notified() => break "a decision could not be recorded".to_owned(),
                    _ = stop.changed() => {
                        drop(acks);
                        // Acknowledge what is committed before leaving.
                        let _ = tokio::time::timeout(Duration::from_secs(5), acker).await;
                        let _ = client.try_disconnect();
                        return;
                    }
                };
                match event {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        backoff.reset();
                        info!(
                            session_present = ack.session_present,
                            "MQTT intake connected"
                        );
                        let filters = self
                            .topics
                            .iter()
                            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                        if let Err(err) = client.try_subscribe_many(filters) {
                            break format!("cannot subscribe: {err}");
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(publish))) => {
                        let committed = self.take(&publish).await;
                        if acks.send((publish, committed)).await.is_err() {
                            break "acknowledgement task stopped".to_owned();
                        }
                    }
                    Ok(_) => {}
                    Err(err) => break err.to_string(),
                }
            };
            drop(acks);
            acker.abort();
            let wait = backoff.next_wait();
            warn!(error = %reason, retry_in_ms = wait.as_millis() as u64, "MQTT intake disconnected");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Decides on one incident; returns what to wait for before acknowledging it.
    async fn take(&self, publish: &Publish) -> Option<Committed> {
        self.metrics.upstream.intake_received.inc();
        let mut event: IncidentEvent = match parse(&publish.payload) {
            Ok(event) => event,
            Err(reason) => {
                self.metrics.upstream.intake_rejected.inc();
                self.metrics.evaluation_errors.inc();
                warn!(topic = %publish.topic, error = %reason, "malformed incident rejected");
                self.decider
                    .reject(&publish.topic, &publish.payload, &reason)
                    .await;
                return None;
            }
        };
        if event.event_id.is_none() {
            event.event_id = Some(content_id(&publish.topic, &publish.payload));
        }
        let input = String::from_utf8_lossy(&publish.payload).into_owned();
        let pending = self
            .decider
            .decide_deferred(event.into_incident(), input, false)
            .await;
        debug!(
            topic = %publish.topic,
            event_id = %pending.decision.incident.id,
            actions = pending.committed.is_some(),
            "incident decided"
        );
        pending.committed
    }
}

/// Acknowledges incidents in arrival order, each once its decision is recorded.
async fn acknowledge(
    client: AsyncClient,
    mut queue: mpsc::Receiver<(Publish, Option<Committed>)>,
    renew: Arc<Notify>,
) {
    while let Some((publish, committed)) = queue.recv().await {
        let recorded = match committed {
            Some(committed) => matches!(committed.await, Ok(Ok(()))),
            None => true,
        };
        if !recorded {
            // Not acknowledged: the broker redelivers it on the next connection.
            warn!(topic = %publish.topic, "decision not recorded; incident left unacknowledged");
            renew.notify_one();
            return;
        }
        if client.ack(&publish).await.is_err() {
            return;
        }
    }
}

/// The event in a payload, or why it is not one (with the field, line and column).
fn parse(payload: &[u8]) -> Result<IncidentEvent, String> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let event: IncidentEvent = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        if path == "." {
            err.into_inner().to_string()
        } else {
            format!("{path}: {}", err.into_inner())
        }
    })?;
    de.end().map_err(|err| err.to_string())?;
    Ok(event)
}

/// An id for an event that came without one: the same payload on the same topic (a redelivery)
/// gets the same id.
pub fn content_id(topic: &str, payload: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(topic.as_bytes());
    ctx.update(b"\0");
    ctx.update(payload);
    let digest = ctx.finish();
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("mqtt-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_says_what_is_wrong() {
        assert!(parse(br#"{"event_type":"x","severity":3}"#).is_ok());
        let err = parse(br#"{"event_type":"x","severity":"high"}"#).unwrap_err();
        assert!(err.contains("severity"), "{err}");
        let err = parse(br#"{"severity":3}"#).unwrap_err();
        assert!(err.contains("event_type"), "{err}");
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"event_type":"x","severity":3} trailing"#).is_err());
    }

    #[test]
    fn content_ids_follow_topic_and_payload() {
        let a = content_id("incident/detected", b"{}");
        assert_eq!(a, content_id("incident/detected", b"{}"));
        assert_ne!(a, content_id("anomaly/detected", b"{}"));
        assert_ne!(a, content_id("incident/detected", b"{ }"));
    }
}
