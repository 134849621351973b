//! The central collector (`mesh-agent collector`): subscribes to the agents' audit summaries and
//! actions, keeps them in a redb file of its own, and serves them over HTTP.
//!
//! Messages are acknowledged to the broker only after the batch holding them is committed, so a
//! crash of the collector loses nothing the broker delivered (it redelivers, and summaries and
//! actions are kept by id, once).

mod http;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, Publish, QoS, SubscribeFilter};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use agent_store::StoreError;

use crate::connector::{Backoff, Connector, MqttError};
use store::{CollectorStore, Received};

/// The collector's data file inside its data directory.
pub const DATA_FILE: &str = "collector.redb";

/// What the collector is told on the command line.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    pub mqtt_url: String,
    pub client_id: String,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub summaries_topic: String,
    pub actions_topic: String,
    /// Per-client rate of its routes, as the agent's `[limits]` (0: no limit).
    pub limits: agent_http::LimitsConfig,
    /// Bearer tokens, as the agent's `[auth]`: every route is a read.
    pub auth: agent_http::AuthConfig,
}

/// Why the collector could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] agent_http::auth::AuthError),
    #[error("collector HTTP server failed: {0}")]
    Serve(String),
    #[error("opening the collector's data file: {0}")]
    Task(String),
}

/// Runs the collector until SIGTERM or SIGINT.
pub async fn run(settings: CollectorSettings) -> Result<(), CollectorError> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|source| CollectorError::DataDir {
        path: settings.data_dir.display().to_string(),
        source,
    })?;
    let path = settings.data_dir.join(DATA_FILE);
    let store = Arc::new(
        tokio::task::spawn_blocking(move || CollectorStore::open(&path))
            .await
            .map_err(|err| CollectorError::Task(err.to_string()))??,
    );
    let connector = Connector::plain(&settings.mqtt_url, &settings.client_id)?;
    let subscriber = tokio::spawn(subscribe(
        connector,
        vec![
            settings.summaries_topic.clone(),
            settings.actions_topic.clone(),
        ],
        settings.summaries_topic.clone(),
        Arc::clone(&store),
    ));
    let listen_err = |source| CollectorError::Listen {
        addr: settings.http_listen,
        source,
    };
    let listener = TcpListener::bind(settings.http_listen)
        .await
        .map_err(listen_err)?;
    info!(addr = %listener.local_addr().map_err(listen_err)?, broker = %settings.mqtt_url, "collector listening");
    // The agent's server: connection cap, header, idle and request timeouts, the same limits.
    let auth = agent_http::Auth::new(&settings.auth, agent_http::AuthMetrics::default())?;
    // SIGHUP reads the token file again (rotation), as the agent does.
    let hangups = {
        let auth = std::sync::Arc::clone(&auth);
        let config = settings.auth.clone();
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::spawn(async move {
            let Some(hangups) = hangups.as_mut() else {
                return;
            };
            while hangups.recv().await.is_some() {
                match auth.reload(&config) {
                    Ok(()) => info!("SIGHUP: token file read again"),
                    Err(err) => {
                        tracing::error!(error = %err, "SIGHUP: cannot read the token file; no token is accepted until it can be")
                    }
                }
            }
        })
    };
    let limit = agent_http::EvaluateLimit::new(&settings.limits, Default::default());
    let router = http::router(store)
        .layer(axum::middleware::from_fn_with_state(
            limit,
            agent_http::rate_limited,
        ))
        .layer(axum::middleware::from_fn_with_state(
            (auth, every_route_reads as agent_http::auth::Classify),
            agent_http::auth::authorized,
        ));
    let server = agent_http::spawn(
        listener,
        router,
        agent_http::HttpConfig::default().limits(),
        agent_http::HttpMetrics::default(),
        None,
        Box::pin(stop_signal()),
    );
    let served = server.await;
    subscriber.abort();
    hangups.abort();
    served.map_err(|err| CollectorError::Serve(err.to_string()))?;
    Ok(())
}

fn every_route_reads(_: &axum::http::Method, _: &str) -> Option<agent_http::Scope> {
    Some(agent_http::Scope::Read)
}

/// SIGTERM (systemd) or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    info!("collector stopping");
}

async fn subscribe(
    connector: Connector,
    topics: Vec<String>,
    summaries_topic: String,
    store: Arc<CollectorStore>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let (client, mut eventloop) =
            connector.pair("", true, 100, 8192, crate::config::MAX_MQTT_PAYLOAD);
        let (tx, rx) = mpsc::channel(4096);
        let keeper = tokio::spawn(keep_and_ack(
            client.clone(),
            rx,
            summaries_topic.clone(),
            Arc::clone(&store),
        ));
        let reason = loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    backoff.reset();
                    info!(topics = ?topics, "collector subscribed");
                    let filters = topics
                        .iter()
                        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    if let Err(err) = client.try_subscribe_many(filters) {
                        break err.to_string();
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    if tx.send(publish).await.is_err() {
                        break "store task stopped".to_owned();
                    }
                }
                Ok(_) => {}
                Err(err) => break err.to_string(),
            }
        };
        keeper.abort();
        let wait = backoff.next_wait();
        warn!(error = %reason, retry_in_ms = wait.as_millis() as u64, "collector disconnected");
        tokio::time::sleep(wait).await;
    }
}

/// Commits what arrived in batches, then acknowledges it, in order.
async fn keep_and_ack(
    client: AsyncClient,
    mut rx: mpsc::Receiver<Publish>,
    summaries_topic: String,
    store: Arc<CollectorStore>,
) {
    let mut publishes = Vec::with_capacity(1024);
    while rx.recv_many(&mut publishes, 1024).await > 0 {
        let batch: Vec<Received> = publishes
            .iter()
            .filter_map(|p| received(p, &summaries_topic))
            .collect();
        let keeper = Arc::clone(&store);
        let kept = tokio::task::spawn_blocking(move || keeper.keep(&batch)).await;
        match kept {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(error = %err, "cannot keep a batch; it will be redelivered");
                return;
            }
            Err(err) => {
                warn!(error = %err, "collector store task failed");
                return;
            }
        }
        for publish in publishes.drain(..) {
            if client.ack(&publish).await.is_err() {
                return;
            }
        }
    }
}

fn received(publish: &Publish, summaries_topic: &str) -> Option<Received> {
    let value: Value = match serde_json::from_slice(&publish.payload) {
        Ok(value) => value,
        Err(err) => {
            warn!(topic = %publish.topic, error = %err, "collector: payload is not JSON; skipped");
            return None;
        }
    };
    let text = |field: &str| value[field].as_str().map(str::to_owned);
    if publish.topic == summaries_topic {
        match (text("summary_id"), text("node_id")) {
            (Some(id), Some(node_id)) => Some(Received::Summary {
                id,
                node_id,
                json: value.to_string(),
            }),
            _ => {
                warn!(topic = %publish.topic, "collector: summary without summary_id/node_id; skipped");
                None
            }
        }
    } else {
        match text("action_id") {
            Some(id) => Some(Received::Action {
                id,
                json: value.to_string(),
            }),
            None => {
                warn!(topic = %publish.topic, "collector: action without action_id; skipped");
                None
            }
        }
    }
}
