//! The mesh's links: one QUIC endpoint per node, one long-lived connection per peer, mutual TLS.
//! Chitchat's gossip is carried over them (its adapter is [`crate::gossip`]), and so are the
//! requests of the pull protocol.
//!
//! A connection starts with a [`Hello`] each way on a bidirectional stream: the receiver checks
//! the protocol version, the cluster id, and that the node id claimed is the one the peer's
//! certificate was issued to; on any mismatch the connection is closed and the refusal logged.
//! Afterwards, gossip messages travel one per unidirectional stream (chitchat messages reach
//! ~64 KB, far over a QUIC datagram), and requests of the pull protocol one per bidirectional
//! stream.
//!
//! Sending never waits on the network: chitchat's gossip loop awaits `send` inline, so a message
//! goes into the peer's queue and a per-peer task dials (with back-off after a failure) and
//! writes. Receiving is fed from a channel, which keeps chitchat's `recv` cancel-safe.
//!
//! For partition tests a node can be told to drop every link to some addresses ([`Net::block`]):
//! messages to and from them are discarded and requests refused, as if the network cut them off.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

use mesh_proto::mesh::{Hello, MESH_PROTOCOL, Request, Response};
use mesh_proto::{decode, encode};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use agent_identity::Verifier;

use crate::codec::MAX_MESSAGE;
use crate::error::MeshError;
use crate::links::RequestHandler;
use crate::metrics::MeshMetrics;
use crate::tls;

/// Longest wait for a connection and its handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed dial, messages to that address are dropped for this long instead of redialing.
const DIAL_BACKOFF: Duration = Duration::from_millis(1_000);
/// Longest wait for a request's response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request or response body.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Gossip messages queued for one peer before newer ones are dropped (gossip tolerates loss).
const PEER_QUEUE: usize = 64;
/// Gossip messages received and waiting for the decoder.
const INBOUND_QUEUE: usize = 1_024;
/// Kernel buffer asked for the endpoint's UDP socket, each way. A gossip message of a 100-node
/// mesh is tens of QUIC packets, and several arrive at once; with Linux's default 208 KiB the
/// socket overflows whenever the endpoint's task is not scheduled for a moment (a busy or starved
/// CPU), the packets are lost, and QUIC's loss recovery turns that into handshakes and requests
/// that time out: a 100-node mesh on one 2-core machine took 109 s to converge instead of 3.
pub const SOCKET_BUFFER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("link to {0} is blocked")]
    Blocked(SocketAddr),
    #[error("{0} failed recently; not redialing yet")]
    Backoff(SocketAddr),
    #[error("connecting to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("{addr} refused: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("request to {addr}: {message}")]
    Request { addr: SocketAddr, message: String },
}

struct Peer {
    connection: quinn::Connection,
    node_id: String,
}

/// One node's endpoint and its connections.
pub struct Net {
    endpoint: quinn::Endpoint,
    hello: Hello,
    verifier: Arc<Verifier>,
    handler: RequestHandler,
    peers: Mutex<HashMap<SocketAddr, Peer>>,
    dialing: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    failed: Mutex<HashMap<SocketAddr, Instant>>,
    queues: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    blocked: RwLock<HashSet<SocketAddr>>,
    /// Gossip received: from which address, on which connection (`stable_id`), the bytes.
    inbound: mpsc::Sender<(SocketAddr, usize, Vec<u8>)>,
    pub stats: MeshMetrics,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a map update that cannot leave the map inconsistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Net {
    /// Runs the endpoint on `socket` (bound by the caller, so that it knows the port before it
    /// says hello) and starts accepting connections. Gossip messages that arrive come out of the
    /// returned receiver, for the chitchat transport ([`crate::gossip::QuicTransport`]). With
    /// `faults` (simulations only), what the socket sends is subject to them.
    #[allow(clippy::too_many_arguments)]
    pub fn bind(
        socket: std::net::UdpSocket,
        server: quinn::ServerConfig,
        client: quinn::ClientConfig,
        hello: Hello,
        verifier: Arc<Verifier>,
        handler: RequestHandler,
        stats: MeshMetrics,
        faults: Option<Arc<crate::faults::NetFaults>>,
    ) -> Result<(Arc<Net>, Inbound), MeshError> {
        size_buffers(&socket);
        let mut endpoint =
            crate::faults::endpoint(socket, server, faults).map_err(MeshError::Endpoint)?;
        endpoint.set_default_client_config(client);
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let net = Arc::new(Net {
            endpoint,
            hello,
            verifier,
            handler,
            peers: Mutex::default(),
            dialing: Mutex::default(),
            failed: Mutex::default(),
            queues: Mutex::default(),
            blocked: RwLock::default(),
            inbound,
            stats,
        });
        tokio::spawn(Arc::clone(&net).accept_loop());
        Ok((net, inbound_rx))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Drops every link to `addr` until [`unblock`](Self::unblock) (partition tests).
    pub fn block(&self, addr: SocketAddr) {
        self.blocked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr);
    }

    pub fn unblock(&self, addr: SocketAddr) {
        self.blocked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
        lock(&self.failed).remove(&addr);
    }

    fn is_blocked(&self, addr: SocketAddr) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&addr)
    }

    /// UDP bytes sent on the connections open now (QUIC and TLS overhead included).
    pub fn udp_bytes_sent(&self) -> u64 {
        lock(&self.peers)
            .values()
            .map(|p| p.connection.stats().udp_tx.bytes)
            .sum()
    }

    /// Closes every connection and the endpoint, and waits until the peers were told, so the
    /// address can be bound again.
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        // The per-peer send tasks end when their queues go; they hold the `Net` until then.
        lock(&self.queues).clear();
        lock(&self.peers).clear();
        self.endpoint.wait_idle().await;
    }

    /// Sends one request to the node at `addr` and waits for its response.
    pub async fn request(
        self: &Arc<Self>,
        addr: SocketAddr,
        request: &Request,
    ) -> Result<Response, NetError> {
        let connection = self.connection(addr).await?;
        let fail = |message: String| NetError::Request { addr, message };
        let exchange = async {
            let (mut send, mut recv) = connection
                .open_bi()
                .await
                .map_err(|e| fail(e.to_string()))?;
            send.write_all(&encode(request))
                .await
                .map_err(|e| fail(e.to_string()))?;
            send.finish().map_err(|e| fail(e.to_string()))?;
            let bytes = recv
                .read_to_end(MAX_RESPONSE)
                .await
                .map_err(|e| fail(e.to_string()))?;
            decode::<Response>(&bytes).map_err(|e| fail(e.to_string()))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(fail("timed out".into())),
        }
    }

    /// The open connection to `addr`, dialing (once, however many callers wait) if there is none.
    async fn connection(self: &Arc<Self>, addr: SocketAddr) -> Result<quinn::Connection, NetError> {
        if self.is_blocked(addr) {
            return Err(NetError::Blocked(addr));
        }
        if let Some(connection) = self.open_connection(addr) {
            return Ok(connection);
        }
        let dial_lock = Arc::clone(lock(&self.dialing).entry(addr).or_default());
        let _dialing = dial_lock.lock().await;
        if let Some(connection) = self.open_connection(addr) {
            return Ok(connection);
        }
        if lock(&self.failed)
            .get(&addr)
            .is_some_and(|at| at.elapsed() < DIAL_BACKOFF)
        {
            return Err(NetError::Backoff(addr));
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, self.dial(addr)).await {
            Ok(Ok(connection)) => {
                lock(&self.failed).remove(&addr);
                Ok(connection)
            }
            Ok(Err(err)) => {
                lock(&self.failed).insert(addr, Instant::now());
                Err(err)
            }
            Err(_) => {
                lock(&self.failed).insert(addr, Instant::now());
                Err(NetError::Connect {
                    addr,
                    message: "timed out".into(),
                })
            }
        }
    }

    fn open_connection(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        let peers = lock(&self.peers);
        let peer = peers.get(&addr)?;
        peer.connection
            .close_reason()
            .is_none()
            .then(|| peer.connection.clone())
    }

    async fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<quinn::Connection, NetError> {
        let fail = |message: String| NetError::Connect { addr, message };
        let connection = self
            .endpoint
            .connect(addr, tls::SERVER_NAME)
            .map_err(|e| fail(e.to_string()))?
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| fail(e.to_string()))?;
        send.write_all(&encode(&Request::Hello(self.hello.clone())))
            .await
            .map_err(|e| fail(e.to_string()))?;
        send.finish().map_err(|e| fail(e.to_string()))?;
        let bytes = recv
            .read_to_end(64 * 1024)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let theirs = match decode::<Response>(&bytes) {
            Ok(Response::Hello(hello)) => hello,
            Ok(Response::Refused(reason)) => {
                self.stats.peers_refused.inc();
                warn!(peer = %addr, %reason, "peer refused this node");
                return Err(NetError::Refused { addr, reason });
            }
            Ok(_) => return Err(fail("unexpected answer to hello".into())),
            Err(err) => return Err(fail(err.to_string())),
        };
        if let Err(reason) = self.check_hello(&connection, &theirs) {
            self.stats.peers_refused.inc();
            warn!(peer = %addr, claimed = %theirs.node_id, %reason, "refused peer");
            connection.close(1u32.into(), reason.as_bytes());
            return Err(NetError::Refused { addr, reason });
        }
        self.adopt(addr, connection.clone(), theirs.node_id);
        Ok(connection)
    }

    /// Checks a peer's hello against this node's and against the certificate of the connection.
    fn check_hello(&self, connection: &quinn::Connection, theirs: &Hello) -> Result<(), String> {
        if theirs.protocol != MESH_PROTOCOL {
            return Err(format!(
                "speaks mesh protocol {}, this node {MESH_PROTOCOL}",
                theirs.protocol
            ));
        }
        if theirs.cluster_id != self.hello.cluster_id {
            return Err(format!(
                "belongs to cluster `{}`, this node to `{}`",
                theirs.cluster_id, self.hello.cluster_id
            ));
        }
        let cert = tls::peer_cert(connection).ok_or("presented no certificate")?;
        self.verifier
            .check_node_cert(&theirs.node_id, &cert)
            .map_err(|err| err.to_string())?;
        // Its signatures can be checked from now on.
        self.verifier
            .learn(&theirs.node_id, &cert)
            .map_err(|err| err.to_string())
    }

    /// Closes the connection held for `addr` if it is still connection `stable_id` (not one the
    /// node opened since); the node may dial or be dialed again.
    pub(crate) fn disconnect(&self, addr: SocketAddr, stable_id: usize, reason: &str) {
        let mut peers = lock(&self.peers);
        if peers
            .get(&addr)
            .is_some_and(|p| p.connection.stable_id() == stable_id)
            && let Some(peer) = peers.remove(&addr)
        {
            warn!(peer = %addr, node_id = %peer.node_id, reason, "disconnected a peer");
            self.stats.peers_refused.inc();
            peer.connection.close(2u32.into(), reason.as_bytes());
        }
    }

    /// The node whose open connection holds `addr`, if any.
    fn holder_of(&self, addr: SocketAddr) -> Option<String> {
        lock(&self.peers)
            .get(&addr)
            .filter(|peer| peer.connection.close_reason().is_none())
            .map(|peer| peer.node_id.clone())
    }

    /// Registers a handshaken connection as the one to `addr` and serves what the peer sends.
    fn adopt(self: &Arc<Self>, addr: SocketAddr, connection: quinn::Connection, node_id: String) {
        debug!(peer = %addr, node_id = %node_id, "connected");
        lock(&self.peers).insert(
            addr,
            Peer {
                connection: connection.clone(),
                node_id,
            },
        );
        tokio::spawn(Arc::clone(self).receive_gossip(addr, connection.clone()));
        tokio::spawn(Arc::clone(self).serve_requests(addr, connection));
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let net = Arc::clone(&self);
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match tokio::time::timeout(CONNECT_TIMEOUT, net.accept(incoming)).await {
                    Ok(Ok(())) => {}
                    // Counted in `accept`, before the peer hears of it.
                    Ok(Err(reason)) => {
                        warn!(peer = %remote, %reason, "refused incoming connection")
                    }
                    Err(_) => debug!(peer = %remote, "incoming connection timed out"),
                }
            });
        }
    }

    async fn accept(self: &Arc<Self>, incoming: quinn::Incoming) -> Result<(), String> {
        // TLS has checked the client's chain against the mesh CA by the time this resolves.
        let connection = match incoming.await {
            Ok(connection) => connection,
            Err(err) => {
                self.stats.peers_refused.inc();
                return Err(format!("TLS handshake failed: {err}"));
            }
        };
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        let bytes = recv
            .read_to_end(64 * 1024)
            .await
            .map_err(|e| e.to_string())?;
        let theirs = match decode::<Request>(&bytes) {
            Ok(Request::Hello(hello)) => hello,
            Ok(_) => return Err("first request was not a hello".into()),
            Err(err) => return Err(err.to_string()),
        };
        let verdict = self.check_hello(&connection, &theirs);
        let gossip_addr = theirs.gossip_addr.parse::<SocketAddr>();
        let answer = match (&verdict, &gossip_addr) {
            (Err(reason), _) => Response::Refused(reason.clone()),
            (Ok(()), Err(_)) => Response::Refused(format!(
                "gossip address `{}` is not an address",
                theirs.gossip_addr
            )),
            (Ok(()), Ok(_)) => Response::Hello(self.hello.clone()),
        };
        // A valid node must not take over another live node's address: the connection kept for
        // an address is where this node's gossip and pulls for that address go.
        let answer = match (&answer, &gossip_addr) {
            (Response::Hello(_), Ok(addr)) => match self.holder_of(*addr) {
                Some(holder) if holder != theirs.node_id => Response::Refused(format!(
                    "gossip address {addr} belongs to node `{holder}`, connected"
                )),
                _ => answer,
            },
            _ => answer,
        };
        let refused = matches!(answer, Response::Refused(_));
        if refused {
            self.stats.peers_refused.inc();
        }
        send.write_all(&encode(&answer))
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        if let Response::Refused(reason) = answer {
            // Let the refusal reach the peer before the connection goes.
            let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
            connection.close(1u32.into(), reason.as_bytes());
            return Err(format!(
                "node `{}` ({}): {reason}",
                theirs.node_id,
                connection.remote_address()
            ));
        }
        if let Ok(addr) = gossip_addr {
            info!(peer = %addr, node_id = %theirs.node_id, "peer connected");
            self.adopt(addr, connection, theirs.node_id);
        }
        Ok(())
    }

    async fn receive_gossip(self: Arc<Self>, addr: SocketAddr, connection: quinn::Connection) {
        while let Ok(mut stream) = connection.accept_uni().await {
            let Ok(bytes) = stream.read_to_end(MAX_MESSAGE).await else {
                continue;
            };
            if self.is_blocked(addr) {
                continue;
            }
            self.stats.gossip_bytes_received.inc_by(bytes.len() as u64);
            if self
                .inbound
                .try_send((addr, connection.stable_id(), bytes))
                .is_err()
            {
                self.stats.gossip_messages_dropped.inc();
            }
        }
        let mut peers = lock(&self.peers);
        if peers
            .get(&addr)
            .is_some_and(|p| p.connection.stable_id() == connection.stable_id())
        {
            peers.remove(&addr);
        }
    }

    async fn serve_requests(self: Arc<Self>, addr: SocketAddr, connection: quinn::Connection) {
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let net = Arc::clone(&self);
            tokio::spawn(async move {
                let Ok(bytes) = recv.read_to_end(64 * 1024).await else {
                    return;
                };
                let response = if net.is_blocked(addr) {
                    Response::Refused("link blocked".into())
                } else {
                    match decode::<Request>(&bytes) {
                        Ok(request) => {
                            let handler = Arc::clone(&net.handler);
                            tokio::task::spawn_blocking(move || handler(request))
                                .await
                                .unwrap_or_else(|err| {
                                    Response::Refused(format!("internal error: {err}"))
                                })
                        }
                        Err(err) => {
                            net.stats.messages_refused.inc();
                            warn!(peer = %addr, error = %err, "refused a malformed request");
                            Response::Refused(format!("bad request: {err}"))
                        }
                    }
                };
                if send.write_all(&encode(&response)).await.is_ok() {
                    let _ = send.finish();
                }
            });
        }
    }

    /// Queues one encoded gossip message for `addr`; never waits.
    pub(crate) fn send_gossip(self: &Arc<Self>, addr: SocketAddr, bytes: Vec<u8>) {
        if self.is_blocked(addr) {
            return;
        }
        let mut queues = lock(&self.queues);
        let queue = queues.entry(addr).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            tokio::spawn(Arc::clone(self).send_loop(addr, rx));
            tx
        });
        if queue.try_send(bytes).is_err() {
            self.stats.gossip_messages_dropped.inc();
        }
    }

    async fn send_loop(self: Arc<Self>, addr: SocketAddr, mut queue: mpsc::Receiver<Vec<u8>>) {
        while let Some(bytes) = queue.recv().await {
            let connection = match self.connection(addr).await {
                Ok(connection) => connection,
                Err(err) => {
                    debug!(peer = %addr, error = %err, "gossip message dropped");
                    self.stats.gossip_messages_dropped.inc();
                    continue;
                }
            };
            let len = bytes.len() as u64;
            let sent = async {
                let mut stream = connection.open_uni().await?;
                stream.write_all(&bytes).await?;
                stream.finish()?;
                anyhow::Ok(())
            };
            match sent.await {
                Ok(()) => {
                    self.stats.gossip_bytes_sent.inc_by(len);
                }
                Err(err) => {
                    debug!(peer = %addr, error = %err, "gossip message lost");
                    self.stats.gossip_messages_dropped.inc();
                }
            }
        }
    }

    /// The node id of the peer at `addr`, if connected.
    pub fn peer_node_id(&self, addr: SocketAddr) -> Option<String> {
        lock(&self.peers).get(&addr).map(|p| p.node_id.clone())
    }
}

/// Asks the kernel for [`SOCKET_BUFFER`] each way on `socket`. Linux grants at most
/// `net.core.rmem_max` / `wmem_max` (208 KiB on a stock kernel); the node still works with less, so a shortfall is a warning that says which
/// setting to raise (`deploy/sysctl/60-mesh-agent.conf` raises both).
fn size_buffers(socket: &std::net::UdpSocket) {
    let state = match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(state) => state,
        Err(err) => {
            warn!(error = %err, "cannot inspect the gossip socket; its buffers stay as they are");
            return;
        }
    };
    let _ = state.set_recv_buffer_size(socket.into(), SOCKET_BUFFER);
    let _ = state.set_send_buffer_size(socket.into(), SOCKET_BUFFER);
    // Linux reports twice what it grants (the other half is its bookkeeping).
    let granted = |size: std::io::Result<usize>| size.map_or(0, |bytes| bytes / 2);
    let recv = granted(state.recv_buffer_size(socket.into()));
    let send = granted(state.send_buffer_size(socket.into()));
    if recv < SOCKET_BUFFER || send < SOCKET_BUFFER {
        warn!(
            asked = SOCKET_BUFFER,
            recv,
            send,
            "the gossip socket got smaller kernel buffers than asked: bursts of gossip may be lost under load; raise net.core.rmem_max and net.core.wmem_max"
        );
    } else {
        debug!(recv, send, "gossip socket buffers");
    }
}

/// Gossip messages as they arrive: (from, connection id, bytes).
pub type Inbound = mpsc::Receiver<(SocketAddr, usize, Vec<u8>)>;
