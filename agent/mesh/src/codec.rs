//! Turning chitchat envelopes into bytes and back, through chitchat's own UDP socket.
//!
//! chitchat 0.13 keeps its envelope encoding crate-private; the only public code that encodes
//! and decodes an envelope is its `UdpSocket`. So each codec owns a chitchat `UdpSocket` and a
//! plain UDP socket, both on 127.0.0.1, and lets the envelope make one loopback hop between them:
//! encoding sends the envelope from the chitchat socket to the plain one and reads the bytes;
//! decoding sends bytes from the plain socket to the chitchat one and reads the envelope. Only
//! datagrams from the partner socket are accepted. The cost is two loopback syscalls per message
//! (a few microseconds), against keeping our own copy of chitchat's wire format.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use chitchat::ChitchatEnvelope;
use chitchat::transport::{Socket, UdpSocket as ChitchatUdp};
use tokio::net::UdpSocket;

/// Largest encoded envelope: chitchat budgets messages to a UDP datagram.
pub const MAX_MESSAGE: usize = 65_507;
/// A hop that does not arrive in this time was dropped (a datagram chitchat could not decode).
const HOP_TIMEOUT: Duration = Duration::from_millis(500);
/// chitchat's envelope header: magic number (2 bytes, little-endian), protocol version (0 or 1),
/// message type (0 to 3). Checked before the hop, so junk is refused at once instead of after
/// [`HOP_TIMEOUT`] (which would hold up every other peer's gossip behind it).
const MAGIC_NUMBER: u16 = 45_139;
const MESSAGE_TYPES: u8 = 4;
const PROTOCOL_VERSIONS: u8 = 2;

pub struct Codec {
    chitchat: Box<dyn Socket>,
    chitchat_addr: SocketAddr,
    plain: UdpSocket,
    plain_addr: SocketAddr,
    buf: Vec<u8>,
}

impl Codec {
    pub async fn open() -> anyhow::Result<Codec> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let chitchat = ChitchatUdp::open(loopback).await?;
        let chitchat_addr = chitchat.local_addr()?;
        let plain = UdpSocket::bind(loopback)
            .await
            .context("binding the envelope codec's loopback socket")?;
        let plain_addr = plain.local_addr()?;
        Ok(Codec {
            chitchat: Box::new(chitchat),
            chitchat_addr,
            plain,
            plain_addr,
            buf: vec![0; MAX_MESSAGE],
        })
    }

    pub async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        self.chitchat.send(self.plain_addr, envelope).await?;
        let read = async {
            loop {
                let (len, from) = self.plain.recv_from(&mut self.buf).await?;
                if from == self.chitchat_addr {
                    return anyhow::Ok(self.buf[..len].to_vec());
                }
            }
        };
        match tokio::time::timeout(HOP_TIMEOUT, read).await {
            Ok(bytes) => bytes,
            Err(_) => bail!("envelope encoding hop timed out"),
        }
    }

    pub async fn decode(&mut self, bytes: &[u8]) -> anyhow::Result<ChitchatEnvelope> {
        if bytes.len() > MAX_MESSAGE {
            bail!("gossip message of {} bytes is over the limit", bytes.len());
        }
        if bytes.len() < 4
            || bytes[..2] != MAGIC_NUMBER.to_le_bytes()
            || bytes[2] >= PROTOCOL_VERSIONS
            || bytes[3] >= MESSAGE_TYPES
        {
            bail!("not a chitchat message (bad header)");
        }
        self.plain.send_to(bytes, self.chitchat_addr).await?;
        let read = async {
            loop {
                let outcome = self.chitchat.recv().await?;
                if outcome.from_addr == self.plain_addr {
                    return anyhow::Ok(outcome.envelope);
                }
            }
        };
        match tokio::time::timeout(HOP_TIMEOUT, read).await {
            Ok(envelope) => envelope,
            Err(_) => bail!("gossip message could not be decoded"),
        }
    }
}
