//! Why the mesh could not start or answer: the typed error at the crate's boundary. (Inside, the
//! chitchat adapter speaks `anyhow`, because chitchat's `Transport` trait does.)

use std::net::SocketAddr;

use agent_identity::IdentityError;
use agent_store::StoreError;

use crate::tls::TlsError;
use crate::transport::NetError;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("no mesh.tls_dir: a node joins a mesh only with certificates from `mesh-agent certs`")]
    NoTlsDir,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    // The cause is in the message and not a `source`: the daemon prints the chain, and the old
    // (anyhow) messages showed it once.
    #[error("the certificate in {dir} for this node: {cause}")]
    OwnCertificate { dir: String, cause: IdentityError },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen for gossip on {addr}/UDP: {cause}")]
    Listen {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("cannot run the QUIC endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("cannot start gossip: {0}")]
    Gossip(String),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{node_id} {what}")]
    Peer { node_id: String, what: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a mesh task failed: {0}")]
    Task(String),
}

impl MeshError {
    /// A blocking task that panicked or was cancelled (the runtime shutting down).
    pub(crate) fn task(err: tokio::task::JoinError) -> MeshError {
        MeshError::Task(err.to_string())
    }
}
