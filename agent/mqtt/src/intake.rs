//! MQTT intake: incidents from the node's monitor, on the seed's routing keys as topics
//! (`incident/detected`, `anomaly/detected`, `threshold/exceeded`), each payload the `/evaluate`
//! event JSON, evaluated and audited through the same [`Decider`] as `/evaluate`.
//!
//! An incident is acknowledged to the broker (PUBACK, manual acks) only after its decision is
//! recorded: at once for an incident no rule matched (its audit entry, like `/evaluate`'s, is
//! group-committed), after the commit of its audit entry and actions for one that matched. Until
//! then the broker keeps it and redelivers it after a reconnect; since action ids are derived from
//! the incident (its `event_id`, or for an event without one a hash of topic and payload), a
//! redelivered incident yields the same action ids.
//!
//! Three tasks per connection, so that none waits on another's slow step: the *poller* polls the
//! event loop without pause (so keep-alives flow even while a full outbox holds decisions back) and
//! queues each incident; the *decider* decides them in arrival order; the *acknowledger* sends the
//! PUBACKs in arrival order, each once its decision is recorded, on the connection the incident
//! came on. How many incidents wait between them is bounded by the broker: it sends no more
//! unacknowledged messages than its in-flight window.
//!
//! A malformed or oversized payload is counted, logged with its topic, audited as rejected,
//! acknowledged (a redelivery would not make it valid), and the intake carries on. The intake
//! subscribes when the broker has no session for it (and once per start, so changed topics take
//! effect); a resumed session keeps its subscriptions, and subscribing again would make the broker
//! replay retained incidents.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, Outgoing, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use agent_decision::audit::Committed;
use agent_decision::event::Event as IncidentEvent;
use agent_decision::{DecideError, Decider};

use crate::config::MAX_MQTT_PAYLOAD;
use crate::connector::{Backoff, Connector};
use crate::upstream::UpstreamMetrics;

/// Decided incidents waiting for their acknowledgement, at most, per connection.
const ACK_QUEUE: usize = 1024;
/// Received incidents waiting to be decided, at most, per connection. Far above any broker's
/// in-flight window: the poller never waits on it in practice.
const DECIDE_QUEUE: usize = 65_536;
/// How long a stopping intake may take to record and acknowledge what it received.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the intake needs.
pub struct IntakeSettings {
    pub topics: Vec<String>,
    /// Larger payloads are rejected (`mqtt.max_message_bytes`).
    pub max_bytes: usize,
}

/// Starts the intake; it runs until `stop`.
pub fn start(
    connector: Connector,
    settings: IntakeSettings,
    decider: Arc<Decider>,
    metrics: UpstreamMetrics,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    info!(topics = ?settings.topics, "MQTT intake subscribing");
    let taker = Arc::new(Taker {
        decider,
        metrics,
        max_bytes: settings.max_bytes,
    });
    tokio::spawn(run(connector, settings.topics, taker, stop))
}

async fn run(
    connector: Connector,
    topics: Vec<String>,
    taker: Arc<Taker>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut subscribed = false;
    loop {
        // Incoming packets up to MQTT's own limit: rumqttc drops a connection on a larger one, and
        // the broker would redeliver it forever. Oversized incidents are rejected after receipt.
        let (client, mut eventloop) =
            connector.pair("-in", true, 100, 4 * ACK_QUEUE, MAX_MQTT_PAYLOAD);
        let (incoming, to_decide) = mpsc::channel(DECIDE_QUEUE);
        let (decided, to_ack) = mpsc::channel(ACK_QUEUE);
        let decider = tokio::spawn(decide_in_order(Arc::clone(&taker), to_decide, decided));
        let acker = tokio::spawn(acknowledge(client.clone(), to_ack));
        // If this task is aborted (a stop that took too long), they go with it.
        let tasks = AbortOnDrop([decider.abort_handle(), acker.abort_handle()]);
        let reason = loop {
            // Dropping the event loop mid-poll is fine: the whole connection is abandoned.
            let event = tokio::select! {
                event = eventloop.poll() => event,
                _ = stop.changed() => {
                    drop(incoming);
                    finish(&client, &mut eventloop, decider, acker).await;
                    return;
                }
            };
            match event {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    info!(
                        session_present = ack.session_present,
                        "MQTT intake connected"
                    );
                    if ack.session_present && subscribed {
                        backoff.reset();
                        continue;
                    }
                    let filters = topics
                        .iter()
                        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if let Err(err) = client.try_subscribe_many(filters) {
                        break format!("cannot subscribe: {err}");
                    }
                }
                // Subscribed only once the broker says so: a connection lost before the SUBACK
                // may leave a session without the subscriptions, and the next one subscribes again.
                Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .filter(|code| matches!(code, SubscribeReasonCode::Failure))
                        .count();
                    if refused > 0 {
                        break format!("the broker refused {refused} of the incident topics");
                    }
                    info!(topics = ?topics, "MQTT intake subscribed");
                    // Only now: a broker that refuses the topics is retried with a growing wait.
                    backoff.reset();
                    subscribed = true;
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    if incoming.send(publish).await.is_err() {
                        break "decision task stopped".to_owned();
                    }
                }
                Ok(_) => {}
                Err(err) => break err.to_string(),
            }
        };
        // What was received and not acknowledged is redelivered on the next connection.
        drop(tasks);
        let wait = backoff.next_wait();
        warn!(error = %reason, retry_in_ms = wait.as_millis() as u64, "MQTT intake disconnected");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Stopping: decides what was received, acknowledges what is recorded and disconnects, while
/// polling the event loop (it is what writes the acknowledgements, and then the DISCONNECT, to
/// the socket). Gives up after [`STOP_GRACE`]; whatever is left unacknowledged is redelivered
/// after the next start. (A broker must process a connection's packets in order, DISCONNECT last;
/// Mosquitto does, while rumqttd 0.20 sometimes drops acknowledgements it has read but not yet
/// processed when the DISCONNECT arrives: those incidents come again, under the same ids.)
async fn finish(
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    decider: JoinHandle<()>,
    acker: JoinHandle<()>,
) {
    // Past the grace period they are stopped, not left to append behind a closing writer.
    let stragglers = [decider.abort_handle(), acker.abort_handle()];
    let flush = async {
        let _ = decider.await;
        let _ = acker.await;
        // Queued behind the last acknowledgement.
        let _ = client.disconnect().await;
    };
    tokio::pin!(flush);
    let deadline = tokio::time::sleep(STOP_GRACE);
    tokio::pin!(deadline);
    let mut flushed = false;
    loop {
        tokio::select! {
            _ = &mut deadline => {
                warn!("MQTT intake stopped before every recorded incident was acknowledged");
                stragglers.iter().for_each(|task| task.abort());
                return;
            }
            _ = &mut flush, if !flushed => flushed = true,
            event = eventloop.poll() => match event {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => {
                    debug!(flushed, "MQTT intake disconnected");
                    return;
                }
                // A new incident now is not taken: unacknowledged, it is redelivered.
                Ok(_) => {}
            },
        }
    }
}

/// Aborts its tasks when dropped.
struct AbortOnDrop<const N: usize>([tokio::task::AbortHandle; N]);

impl<const N: usize> Drop for AbortOnDrop<N> {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

/// When an incident may be acknowledged.
enum Ack {
    /// Now: recorded (or rejected) with nothing to wait for.
    Now,
    /// Once its audit entry and actions are committed.
    AfterCommit(Committed),
    /// Never on this connection: nothing was recorded (the agent is stopping, or its data file
    /// failed); the broker redelivers it after the next connect.
    Never,
}

/// Decides queued incidents in arrival order and hands them on for acknowledgement. After the
/// first incident that could not be recorded, it records nothing more: the agent is stopping or
/// its data file failed, and those incidents are redelivered after the restart. The connection
/// stays up meanwhile (no reconnect churn, no redelivery while stopping).
async fn decide_in_order(
    taker: Arc<Taker>,
    mut incoming: mpsc::Receiver<Publish>,
    decided: mpsc::Sender<(Publish, Ack)>,
) {
    let mut refusing = false;
    while let Some(publish) = incoming.recv().await {
        let ack = if refusing {
            Ack::Never
        } else {
            taker.take(&publish).await
        };
        refusing |= matches!(ack, Ack::Never);
        if decided.send((publish, ack)).await.is_err() {
            return;
        }
    }
}

/// Acknowledges incidents in arrival order, each once its decision is recorded.
/// MQTT wants acknowledgements in the order the incidents came: once one is left
/// unacknowledged, so are all after it (the broker redelivers them all after the next connect).
/// The queue is still drained, so the decider is never stuck behind it.
async fn acknowledge(client: AsyncClient, mut queue: mpsc::Receiver<(Publish, Ack)>) {
    let mut acknowledging = true;
    while let Some((publish, ack)) = queue.recv().await {
        if !acknowledging {
            continue;
        }
        let recorded = match ack {
            Ack::Now => true,
            Ack::AfterCommit(committed) => matches!(committed.await, Ok(Ok(()))),
            Ack::Never => false,
        };
        if !recorded {
            warn!(topic = %publish.topic, "decision not recorded; incident left unacknowledged");
            acknowledging = false;
            continue;
        }
        if client.ack(&publish).await.is_err() {
            acknowledging = false;
        }
    }
}

/// Turns one received message into a decision (or a rejection).
struct Taker {
    decider: Arc<Decider>,
    metrics: UpstreamMetrics,
    max_bytes: usize,
}

impl Taker {
    /// Decides on one incident; returns when to acknowledge it.
    async fn take(&self, publish: &Publish) -> Ack {
        self.metrics.intake_received.inc();
        let event = if publish.payload.len() > self.max_bytes {
            Err(format!(
                "payload is {} bytes, over mqtt.max_message_bytes ({})",
                publish.payload.len(),
                self.max_bytes
            ))
        } else {
            parse(&publish.payload)
        };
        let event = match event {
            Ok(event) => event,
            Err(reason) => return self.reject(publish, &reason).await,
        };
        let input = String::from_utf8_lossy(&publish.payload).into_owned();
        let incident = event.into_incident(&publish.topic, &publish.payload, self.decider.dedup());
        match self.decider.decide_deferred(incident, input, false).await {
            Ok(pending) => {
                debug!(
                    topic = %publish.topic,
                    event_id = %pending.decision.incident.id,
                    actions = pending.committed.is_some(),
                    "incident decided"
                );
                pending.committed.map_or(Ack::Now, Ack::AfterCommit)
            }
            Err(err @ DecideError::TooLarge(_)) => self.reject(publish, &err.to_string()).await,
            Err(DecideError::Stopping(_) | DecideError::NotCommitted(_)) => Ack::Never,
        }
    }

    /// Audits a payload as rejected; acknowledged at once (a redelivery would not make it valid).
    async fn reject(&self, publish: &Publish, reason: &str) -> Ack {
        self.metrics.intake_rejected.inc();
        self.decider.count_rejected();
        warn!(topic = %publish.topic, error = %reason, "malformed incident rejected");
        match self
            .decider
            .reject(&publish.topic, &publish.payload, reason)
            .await
        {
            Ok(()) => Ack::Now,
            Err(_) => Ack::Never,
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
}
