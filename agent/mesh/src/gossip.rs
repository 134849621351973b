//! The chitchat adapter: chitchat's `Transport` and `Socket` over the QUIC links of [`Net`].
//! Messages are encoded and decoded with chitchat's own serialization ([`Codec`]); a connection
//! that keeps sending undecodable gossip is cut off.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use tokio::sync::mpsc;
use tracing::warn;

use crate::codec::Codec;
use crate::transport::{Inbound, Net};

/// Decoded gossip messages waiting for chitchat.
const INBOUND_QUEUE: usize = 1_024;
/// Undecodable gossip messages within [`JUNK_WINDOW`] after which a connection is closed.
const JUNK_LIMIT: u32 = 3;
const JUNK_WINDOW: Duration = Duration::from_secs(60);

/// chitchat's view of the network: opens a socket backed by a [`Net`].
pub struct QuicTransport {
    net: Arc<Net>,
    inbound: Mutex<Option<Inbound>>,
}

impl QuicTransport {
    /// The transport over `net`, fed with the gossip messages `Net::bind` returned.
    pub fn new(net: Arc<Net>, inbound: Inbound) -> QuicTransport {
        QuicTransport {
            net,
            inbound: Mutex::new(Some(inbound)),
        }
    }
}

#[async_trait]
impl Transport for QuicTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        // The endpoint is already bound (in `Net::bind`) on the listen address.
        let taken = self
            .inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut inbound) = taken else {
            anyhow::bail!("the QUIC transport opens one socket");
        };
        let (decoded_tx, decoded_rx) = mpsc::channel(INBOUND_QUEUE);
        let mut decoder = Codec::open().await?;
        let stats = self.net.stats.clone();
        // Weak: the task lives as long as `Net`'s inbound sender, which `Net` itself holds; a strong
        // reference would keep the endpoint (and its UDP port) alive after the mesh stops.
        let net = Arc::downgrade(&self.net);
        tokio::spawn(async move {
            // Undecodable messages per connection within a window: one that keeps sending them
            // is cut off, valid messages between them or not.
            let mut junk: HashMap<usize, (Instant, u32)> = HashMap::new();
            while let Some((from_addr, connection_id, bytes)) = inbound.recv().await {
                let num_bytes_received = bytes.len();
                match decoder.decode(&bytes).await {
                    Ok(envelope) => {
                        let outcome = RecvOutcome {
                            from_addr,
                            envelope,
                            num_bytes_received,
                        };
                        if decoded_tx.send(outcome).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        stats.messages_refused.inc();
                        warn!(peer = %from_addr, error = %err, "undecodable gossip message");
                        let now = Instant::now();
                        junk.retain(|_, (since, _)| now.duration_since(*since) < JUNK_WINDOW);
                        let (_, count) = junk.entry(connection_id).or_insert((now, 0));
                        *count += 1;
                        if *count >= JUNK_LIMIT {
                            junk.remove(&connection_id);
                            if let Some(net) = net.upgrade() {
                                net.disconnect(from_addr, connection_id, "sent undecodable gossip");
                            }
                        }
                    }
                }
            }
        });
        Ok(Box::new(QuicSocket {
            net: Arc::clone(&self.net),
            encoder: Codec::open().await?,
            decoded: decoded_rx,
        }))
    }
}

struct QuicSocket {
    net: Arc<Net>,
    encoder: Codec,
    decoded: mpsc::Receiver<RecvOutcome>,
}

#[async_trait]
impl Socket for QuicSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.net.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // An error here would tell chitchat the transport is broken for good; a message that
        // could not be encoded is only one lost message.
        let bytes = match self.encoder.encode(envelope).await {
            Ok(bytes) => bytes,
            Err(err) => {
                warn!(peer = %to, error = %err, "gossip message not encoded");
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        };
        let num_bytes_sent = bytes.len();
        self.net.send_gossip(to, bytes);
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.decoded
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the mesh network stopped"))
    }
}
