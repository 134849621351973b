//! The HTTP server: accepts connections up to a cap, bounds how long a connection may sit idle or
//! trickle its headers, and how long a request may take, so no client can hold the API.
//!
//! `axum::serve` has none of these (20,000 idle sockets stay open for ever, and `/health` stops
//! answering). Here every connection is either *busy* (a request in flight) or *idle* (none yet,
//! or between keep-alive requests). Idle ones close after `idle_timeout`; a request's headers must
//! arrive within `header_read_timeout` (hyper's own timer); a request is answered 408 after
//! `request_timeout`. At `max_connections`, a new connection evicts the connection idle the
//! longest, so a flood of idle or half-open sockets cannot lock out a health check; only if every
//! connection is busy is the new one refused.
//!
//! Architecture invariant: the server knows no route and no service; it is given a `Router`. It
//! runs on a task of its own ([`spawn`]), so the whole connection machinery is compiled here,
//! once, and not into whatever crate awaits it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::{IntoResponse, Json};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::{debug, warn};

use agent_base::InvalidSetting;

pub mod auth;
pub mod limit;
pub mod tls;
pub use auth::{Auth, AuthConfig, AuthMetrics, Scope};
pub use limit::{ClientLimiter, EvaluateLimit, LimitsConfig, rate_limited};
pub use tls::{Tls, TlsFiles};

/// The `[http]` section of the config: limits on connections and requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Open connections at most; past it a new one evicts the longest idle, or is refused if
    /// every connection is busy. Keep it under the process's file limit (`LimitNOFILE`).
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout_ms: u64,
    /// Time a connection may stay open with no request in flight. hyper starts the header timer as
    /// soon as a kept-alive connection waits for its next request, so an idle connection closes
    /// after the shorter of this and `header_read_timeout_ms`.
    pub idle_timeout_ms: u64,
    /// Time a request may take, its body included; past it the answer is 408.
    pub request_timeout_ms: u64,
    /// PEM certificate chain: with `tls_key_file`, the API speaks HTTPS only ([`tls`]).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            max_connections: 512,
            header_read_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            request_timeout_ms: 30_000,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl HttpConfig {
    /// Checks the values: each must be at least 1; the first that is not is the `InvalidSetting`.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let positive = [
            ("http.max_connections", self.max_connections as u64),
            ("http.header_read_timeout_ms", self.header_read_timeout_ms),
            ("http.idle_timeout_ms", self.idle_timeout_ms),
            ("http.request_timeout_ms", self.request_timeout_ms),
        ];
        if let Some((key, _)) = positive.into_iter().find(|(_, value)| *value == 0) {
            return Err(InvalidSetting::new(key, "must be at least 1"));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => Err(InvalidSetting::new(
                "http.tls_key_file",
                "is needed with http.tls_cert_file",
            )),
            (None, Some(_)) => Err(InvalidSetting::new(
                "http.tls_cert_file",
                "is needed with http.tls_key_file",
            )),
            _ => Ok(()),
        }
    }

    /// The certificate files, when the API speaks HTTPS.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert_file.clone()?,
            key: self.tls_key_file.clone()?,
        })
    }

    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }
}

/// [`HttpConfig`] as durations.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
}

/// What the server counts, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    pub connections: Gauge,
    pub evicted: Counter,
    pub refused: Counter,
    pub timed_out: Counter,
    /// Requests answered 429 by a per-client rate limit ([`limit`]).
    pub rate_limited: Counter,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let metrics = HttpMetrics::default();
        registry.register(
            "http_connections",
            "Open HTTP connections",
            metrics.connections.clone(),
        );
        registry.register(
            "http_connections_evicted",
            "Idle HTTP connections closed to make room for a new one (at http.max_connections)",
            metrics.evicted.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections refused because every connection was busy",
            metrics.refused.clone(),
        );
        registry.register(
            "http_requests_timed_out",
            "HTTP requests answered 408 after http.request_timeout_ms",
            metrics.timed_out.clone(),
        );
        registry.register(
            "http_requests_rate_limited",
            "HTTP requests answered 429 by a per-client rate limit (limits.*)",
            metrics.rate_limited.clone(),
        );
        metrics
    }
}

/// How long connections still serving a request may finish after a stop.
const DRAIN: Duration = Duration::from_secs(10);

/// One open connection, as the accept loop sees it.
struct Slot {
    /// `None` while a request is in flight.
    idle_since: Option<Instant>,
    in_flight: usize,
    /// Chosen to make room; it closes as soon as its task runs.
    evicting: bool,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Connections {
    slots: Mutex<BTreeMap<u64, Slot>>,
    next_id: AtomicU64,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes room for one more connection: `false` if every connection is busy (or already
    /// leaving). Connections chosen to leave still count until they are gone, so the cap holds.
    fn make_room(&self, max: usize, metrics: &HttpMetrics) -> bool {
        let mut slots = self.lock();
        let leaving = slots.values().filter(|slot| slot.evicting).count();
        if slots.len() < max {
            return true;
        }
        if slots.len() - leaving >= max.max(1) || leaving == 0 {
            let oldest_idle = slots
                .values_mut()
                .filter(|slot| !slot.evicting && slot.idle_since.is_some())
                .min_by_key(|slot| slot.idle_since);
            if let Some(slot) = oldest_idle {
                slot.evicting = true;
                slot.close.notify_one();
                metrics.evicted.inc();
            }
        }
        // Admitted only while what leaves makes up for it.
        slots.len() - slots.values().filter(|slot| slot.evicting).count() < max.max(1)
    }

    fn open(&self) -> (u64, Arc<Notify>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Slot {
                idle_since: Some(Instant::now()),
                in_flight: 0,
                evicting: false,
                close: Arc::clone(&close),
            },
        );
        (id, close)
    }

    fn busy(&self, id: u64) {
        if let Some(slot) = self.lock().get_mut(&id) {
            slot.in_flight += 1;
            slot.idle_since = None;
        }
    }

    fn done(&self, id: u64) {
        if let Some(slot) = self.lock().get_mut(&id) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if slot.in_flight == 0 {
                slot.idle_since = Some(Instant::now());
            }
        }
    }

    fn idle_since(&self, id: u64) -> Option<Instant> {
        self.lock().get(&id).and_then(|slot| slot.idle_since)
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// What ends the server: it stops accepting when this resolves.
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Serves `router` on `listener` on a task of its own until `shutdown` resolves, then lets
/// requests in flight finish (for at most [`DRAIN`]). The handle resolves when it has stopped.
/// With `tls`, every connection is HTTPS; its handshake has `header_read_timeout` to finish.
pub fn spawn(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: HttpMetrics,
    tls: Option<Arc<Tls>>,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(serve(listener, router, limits, metrics, tls, shutdown))
}

async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: HttpMetrics,
    tls: Option<Arc<Tls>>,
    shutdown: Shutdown,
) {
    let connections = Arc::new(Connections::default());
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors (EMFILE) or a connection reset before accept: make
                    // room by closing an idle connection, and try again shortly.
                    warn!(error = %err, "cannot accept an HTTP connection");
                    connections.make_room(0, &metrics);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        if !connections.make_room(limits.max_connections, &metrics) {
            metrics.refused.inc();
            debug!(%peer, "every HTTP connection is busy; refused");
            drop(stream);
            continue;
        }
        let (id, close) = connections.open();
        metrics.connections.inc();
        tasks.spawn(connection(
            stream,
            tls.as_ref().map(|tls| tls.acceptor()),
            id,
            close,
            router.clone(),
            limits,
            Arc::clone(&connections),
            metrics.clone(),
            stopped.clone(),
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            left = tasks.len(),
            "HTTP connections still open after the drain; closed"
        );
        tasks.abort_all();
        metrics.connections.set(0);
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    id: u64,
    close: Arc<Notify>,
    router: Router,
    limits: HttpLimits,
    connections: Arc<Connections>,
    metrics: HttpMetrics,
    stopped: watch::Receiver<bool>,
) {
    let peer = stream.peer_addr().ok();
    match tls {
        None => {
            serve_connection(
                stream,
                peer,
                id,
                close,
                router,
                limits,
                &connections,
                &metrics,
                stopped,
            )
            .await
        }
        Some(acceptor) => {
            // A client that never finishes its handshake is an idle socket: the same bound as
            // a request's headers, and an eviction closes it as well.
            let handshake = tokio::select! {
                shaken = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)) => shaken,
                _ = close.notified() => Ok(Err(std::io::Error::other("evicted during the handshake"))),
            };
            match handshake {
                Ok(Ok(stream)) => {
                    serve_connection(
                        stream,
                        peer,
                        id,
                        close,
                        router,
                        limits,
                        &connections,
                        &metrics,
                        stopped,
                    )
                    .await
                }
                Ok(Err(err)) => debug!(?peer, error = %err, "TLS handshake failed"),
                Err(_) => debug!(?peer, "TLS handshake timed out"),
            }
        }
    }
    connections.close(id);
    metrics.connections.dec();
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection<S>(
    stream: S,
    peer: Option<std::net::SocketAddr>,
    id: u64,
    close: Arc<Notify>,
    router: Router,
    limits: HttpLimits,
    connections: &Arc<Connections>,
    metrics: &HttpMetrics,
    mut stopped: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let connections = Arc::clone(connections);
        let metrics = metrics.clone();
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let router = router.clone();
            let connections = Arc::clone(&connections);
            let metrics = metrics.clone();
            async move {
                connections.busy(id);
                let mut request = request.map(Body::new);
                // Who asks, for per-client limits ([`limit`]).
                if let Some(peer) = peer {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                }
                let answer =
                    tokio::time::timeout(limits.request_timeout, router.oneshot(request)).await;
                connections.done(id);
                let response: Response<Body> = match answer {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        metrics.timed_out.inc();
                        // The API's error shape (`{"error": {"code", "message"}}`).
                        let message = format!(
                            "the request took longer than http.request_timeout_ms ({} ms)",
                            limits.request_timeout.as_millis()
                        );
                        let body = serde_json::json!({
                            "error": { "code": "request_timeout", "message": message }
                        });
                        (StatusCode::REQUEST_TIMEOUT, Json(body)).into_response()
                    }
                };
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let idle_deadline = connections
            .idle_since(id)
            .map(|since| since + limits.idle_timeout);
        let next_check = match (closing, idle_deadline) {
            (Some(since), _) => since + DRAIN,
            (None, Some(deadline)) => deadline,
            (None, None) => Instant::now() + limits.idle_timeout,
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    debug!(error = %err, "HTTP connection ended");
                }
                break;
            }
            // Evicted: it had nothing in flight, so it goes at once (a graceful shutdown would
            // leave a half-sent header open until its timeout).
            _ = close.notified() => break,
            _ = stopped.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            _ = tokio::time::sleep_until(next_check) => {
                if closing.is_some() {
                    // Still busy long after it was asked to close: drop it.
                    break;
                }
                if connections.idle_since(id).is_some_and(|since| since.elapsed() >= limits.idle_timeout) {
                    break;
                }
            }
        }
    }
}
