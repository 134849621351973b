//! What a mesh node needs of the network, as one seam: a transport for chitchat's gossip and a
//! way to send the pull protocol's requests. The daemon's links are QUIC with mutual TLS
//! ([`QuicLinks`], over [`Net`]); a simulation gives its own (an in-memory network on a paused
//! clock), and the rest of the node (chitchat, the puller, the merge, the store) is the same code.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use chitchat::transport::Transport;
use mesh_proto::mesh::{Request, Response};

use crate::gossip::QuicTransport;
use crate::transport::{Net, NetError};

/// Answers requests of the pull protocol (the node's side, implemented by `sync::serve`).
pub type RequestHandler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

#[async_trait]
pub trait Links: Send + Sync + 'static {
    /// chitchat's transport over these links; chitchat opens one socket from it.
    fn gossip(&self) -> &dyn Transport;

    /// Sends one request to the node at `to` and waits for its response.
    async fn request(&self, to: SocketAddr, request: &Request) -> Result<Response, NetError>;

    /// Closes every link (the node is stopping).
    async fn close(&self);
}

/// QUIC with mutual TLS: the daemon's links.
pub struct QuicLinks {
    pub(crate) net: Arc<Net>,
    transport: QuicTransport,
}

impl QuicLinks {
    pub(crate) fn new(net: Arc<Net>, transport: QuicTransport) -> QuicLinks {
        QuicLinks { net, transport }
    }
}

#[async_trait]
impl Links for QuicLinks {
    fn gossip(&self) -> &dyn Transport {
        &self.transport
    }

    async fn request(&self, to: SocketAddr, request: &Request) -> Result<Response, NetError> {
        self.net.request(to, request).await
    }

    async fn close(&self) {
        self.net.close().await;
    }
}
