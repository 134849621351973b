//! The `fast` engine's network: every node's gossip and pull requests go through one in-memory
//! switch that decides, with the scenario's seeded RNG, whether each message arrives and when.
//!
//! Gossip messages are chitchat envelopes. Each one is serialized and parsed again on the way
//! (through a private pair of chitchat's in-memory sockets), so a message is exactly as large as
//! it would be on the wire, the MTU is chitchat's own, and the receiver gets its own copy. A
//! message is lost with the link's loss rate, delayed by the link's delay, and dropped when the
//! sender and receiver are in different partition groups or the receiver is down.
//!
//! Pull requests are answered by the receiving node's own handler (its store). Loss on a
//! request is modelled as QUIC would live it: each lost transmission costs a retransmission
//! timeout ([`retransmit_after`]). A request reaching a node that is down or cut off when it
//! arrives, or a response that cannot get back, fails at [`agent_mesh::REQUEST_TIMEOUT`], as a
//! request on a dead connection would; so does an exchange slower than that.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_mesh::{Links, NetError, RequestHandler};
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport};
use mesh_proto::mesh::{Request, Response};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

/// chitchat's own budget for one message.
const MTU: usize = 65_507;
/// Gossip messages waiting for a node's gossip loop; more are dropped, as a full socket would.
const INBOX: usize = 1_024;

/// Loss and delay on a link, one way.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkQuality {
    pub loss: f64,
    pub delay: Duration,
}

/// Bytes and messages one node sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    pub gossip_bytes: u64,
    pub gossip_messages: u64,
    pub gossip_lost: u64,
    pub pull_bytes: u64,
}

#[derive(Default)]
struct Endpoint {
    inbox: Option<mpsc::Sender<RecvOutcome>>,
    handler: Option<RequestHandler>,
}

struct Switch {
    rng: StdRng,
    endpoints: HashMap<SocketAddr, Endpoint>,
    /// Partition groups: nodes talk only within their group. `None`: one network.
    groups: Option<HashMap<SocketAddr, usize>>,
    everyone: LinkQuality,
    /// Faults on one node's links (both ways), over `everyone`'s.
    per_node: HashMap<SocketAddr, LinkQuality>,
    traffic: HashMap<SocketAddr, Traffic>,
}

/// The switch all simulated nodes hang off.
pub struct SimNet {
    switch: Mutex<Switch>,
}

impl SimNet {
    pub fn new(seed: u64, everyone: LinkQuality) -> Arc<SimNet> {
        Arc::new(SimNet {
            switch: Mutex::new(Switch {
                rng: StdRng::seed_from_u64(seed),
                endpoints: HashMap::new(),
                groups: None,
                everyone,
                per_node: HashMap::new(),
                traffic: HashMap::new(),
            }),
        })
    }

    fn switch(&self) -> std::sync::MutexGuard<'_, Switch> {
        // Every critical section is a map update that leaves the switch consistent.
        self.switch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The links of the node at `addr`, answering pulls with `handler`.
    pub fn attach(self: &Arc<Self>, addr: SocketAddr, handler: RequestHandler) -> Arc<dyn Links> {
        self.switch().endpoints.entry(addr).or_default().handler = Some(handler);
        Arc::new(SimLinks {
            addr,
            net: Arc::clone(self),
            transport: SimTransport {
                addr,
                net: Arc::clone(self),
            },
        })
    }

    /// Splits the network into `groups` (addresses not listed form one more group).
    pub fn partition(&self, groups: &[Vec<SocketAddr>]) {
        let mut map = HashMap::new();
        for (g, members) in groups.iter().enumerate() {
            for addr in members {
                map.insert(*addr, g);
            }
        }
        self.switch().groups = Some(map);
    }

    pub fn heal(&self) {
        self.switch().groups = None;
    }

    pub fn set_everyone(&self, quality: LinkQuality) {
        self.switch().everyone = quality;
    }

    pub fn set_node(&self, addr: SocketAddr, quality: Option<LinkQuality>) {
        let mut switch = self.switch();
        match quality {
            Some(q) => switch.per_node.insert(addr, q),
            None => switch.per_node.remove(&addr),
        };
    }

    pub fn traffic(&self, addr: SocketAddr) -> Traffic {
        self.switch()
            .traffic
            .get(&addr)
            .copied()
            .unwrap_or_default()
    }
}

impl Switch {
    fn group(&self, addr: SocketAddr) -> usize {
        match &self.groups {
            None => 0,
            Some(map) => map.get(&addr).copied().unwrap_or(usize::MAX),
        }
    }

    fn reachable(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.group(from) == self.group(to)
    }

    /// The worse of the two ends' qualities and everyone's.
    fn quality(&self, from: SocketAddr, to: SocketAddr) -> LinkQuality {
        let mut q = self.everyone;
        for end in [from, to] {
            if let Some(own) = self.per_node.get(&end) {
                q.loss = q.loss.max(own.loss);
                q.delay = q.delay.max(own.delay);
            }
        }
        q
    }

    /// When a datagram from `from` reaches `to`, or `None` if it does not.
    fn fate(&mut self, from: SocketAddr, to: SocketAddr) -> Option<Duration> {
        if !self.reachable(from, to) {
            return None;
        }
        let q = self.quality(from, to);
        if q.loss > 0.0 && self.rng.random::<f64>() < q.loss {
            return None;
        }
        Some(q.delay)
    }

    /// How long one way of a request takes with QUIC recovering each lost transmission.
    fn request_leg(&mut self, from: SocketAddr, to: SocketAddr) -> Duration {
        let q = self.quality(from, to);
        let mut took = q.delay;
        let mut tries = 0;
        while q.loss > 0.0 && tries < 16 && self.rng.random::<f64>() < q.loss {
            took += retransmit_after(q.delay);
            tries += 1;
        }
        took
    }
}

/// QUIC's probe timeout for a link of one-way `delay`: about three round trips, at least 25 ms.
pub fn retransmit_after(delay: Duration) -> Duration {
    (delay * 6).max(Duration::from_millis(25))
}

struct SimLinks {
    addr: SocketAddr,
    net: Arc<SimNet>,
    transport: SimTransport,
}

#[async_trait]
impl Links for SimLinks {
    fn gossip(&self) -> &dyn Transport {
        &self.transport
    }

    async fn request(&self, to: SocketAddr, request: &Request) -> Result<Response, NetError> {
        let timed_out = || NetError::Request {
            addr: to,
            message: "timed out".into(),
        };
        // As the daemon's `Net::request`: the whole exchange within the request timeout.
        let exchange = async {
            let there = self.net.switch().request_leg(self.addr, to);
            tokio::time::sleep(there).await;
            // Whether the request arrives is decided when it does: the node may have stopped or
            // been cut off on the way.
            let handler = {
                let switch = self.net.switch();
                switch
                    .endpoints
                    .get(&to)
                    .and_then(|e| e.handler.clone())
                    .filter(|_| switch.reachable(self.addr, to))
            };
            let Some(handler) = handler else {
                return std::future::pending().await;
            };
            let response = handler(request.clone());
            let back = {
                let mut switch = self.net.switch();
                let bytes = mesh_proto::encode(&response).len() as u64;
                switch.traffic.entry(to).or_default().pull_bytes += bytes;
                switch.request_leg(to, self.addr)
            };
            tokio::time::sleep(back).await;
            if !self.net.switch().reachable(to, self.addr) {
                return std::future::pending().await;
            }
            Ok(response)
        };
        tokio::time::timeout(agent_mesh::REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    async fn close(&self) {
        self.net.switch().endpoints.remove(&self.addr);
    }
}

struct SimTransport {
    addr: SocketAddr,
    net: Arc<SimNet>,
}

#[async_trait]
impl Transport for SimTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let (tx, inbox) = mpsc::channel(INBOX);
        self.net
            .switch()
            .endpoints
            .entry(self.addr)
            .or_default()
            .inbox = Some(tx);
        // The codec: chitchat's in-memory transport serializes and parses each envelope.
        let codec = ChannelTransport::with_mtu(MTU);
        let from = codec.open(SocketAddr::from(([127, 0, 0, 1], 1))).await?;
        let to = codec.open(SocketAddr::from(([127, 0, 0, 1], 2))).await?;
        Ok(Box::new(SimSocket {
            addr: self.addr,
            net: Arc::clone(&self.net),
            inbox,
            codec: (from, to),
        }))
    }
}

struct SimSocket {
    addr: SocketAddr,
    net: Arc<SimNet>,
    inbox: mpsc::Receiver<RecvOutcome>,
    codec: (Box<dyn Socket>, Box<dyn Socket>),
}

#[async_trait]
impl Socket for SimSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.addr)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let codec_to = self.codec.1.local_addr()?;
        self.codec.0.send(codec_to, envelope).await?;
        let copy = self.codec.1.recv().await?;
        let num_bytes_sent = copy.num_bytes_received;
        let (fate, inbox) = {
            let mut switch = self.net.switch();
            let fate = switch.fate(self.addr, to);
            let traffic = switch.traffic.entry(self.addr).or_default();
            traffic.gossip_bytes += num_bytes_sent as u64;
            traffic.gossip_messages += 1;
            let inbox = switch.endpoints.get(&to).and_then(|e| e.inbox.clone());
            if fate.is_none() || inbox.is_none() {
                switch.traffic.entry(self.addr).or_default().gossip_lost += 1;
            }
            (fate, inbox)
        };
        if let (Some(delay), Some(inbox)) = (fate, inbox) {
            let outcome = RecvOutcome {
                from_addr: self.addr,
                envelope: copy.envelope,
                num_bytes_received: num_bytes_sent,
            };
            let (net, from) = (Arc::clone(&self.net), self.addr);
            let deliver = move |outcome| {
                // A full inbox drops it, as a full socket buffer would; a restarted node's inbox
                // is another one, and this one is closed.
                if inbox.try_send(outcome).is_err() {
                    net.switch().traffic.entry(from).or_default().gossip_lost += 1;
                }
            };
            if delay.is_zero() {
                deliver(outcome);
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    deliver(outcome);
                });
            }
        }
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inbox
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the simulated network stopped"))
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        if let Some(endpoint) = self.net.switch().endpoints.get_mut(&self.addr) {
            endpoint.inbox = None;
        }
    }
}
