//! The transport's handshake: who may connect, checked with real certificates on real QUIC
//! loopback sockets.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::mesh::{Hello, MESH_PROTOCOL, PullRequest, Request, Response};
use tempfile::TempDir;

use super::tls;
use super::transport::{Net, NetError};
use crate::identity::{TlsFiles, Verifier};

struct Side {
    net: Arc<Net>,
    addr: SocketAddr,
}

/// A node with `files` whose hello claims `claimed` in `cluster`; answers pulls with an empty page.
fn node(files: &TlsFiles, ca: &TlsFiles, claimed: &str, cluster: &str) -> Side {
    let verifier = Arc::new(Verifier::new(&ca.ca).unwrap());
    let hello = Hello {
        protocol: MESH_PROTOCOL,
        cluster_id: cluster.into(),
        node_id: claimed.into(),
        gossip_addr: "127.0.0.1:0".into(),
    };
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let (net, _transport) = Net::bind(
        socket,
        tls::server_config(files).unwrap(),
        tls::client_config(files).unwrap(),
        hello,
        verifier,
        Arc::new(|_| Response::Refused("test node".into())),
        super::metrics::MeshMetrics::default(),
    )
    .unwrap();
    let addr = net.local_addr().unwrap();
    Side { net, addr }
}

fn certs(dir: &TempDir, ids: &[&str]) -> Vec<TlsFiles> {
    crate::certs::init(dir.path(), false).unwrap();
    ids.iter()
        .map(|id| {
            crate::certs::issue(dir.path(), id, 30).unwrap();
            TlsFiles::read(dir.path(), id).unwrap()
        })
        .collect()
}

fn pull() -> Request {
    Request::Pull(PullRequest { since: 0, limit: 1 })
}

#[tokio::test]
async fn nodes_of_one_ca_connect_and_answer_requests() {
    let dir = TempDir::new().unwrap();
    let files = certs(&dir, &["a", "b"]);
    let a = node(&files[0], &files[0], "a", "c");
    let b = node(&files[1], &files[1], "b", "c");
    let answer = b.net.request(a.addr, &pull()).await.unwrap();
    assert_eq!(answer, Response::Refused("test node".into()));
    assert_eq!(b.net.peer_node_id(a.addr).as_deref(), Some("a"));
}

#[tokio::test]
async fn a_node_claiming_another_nodes_id_is_refused() {
    let dir = TempDir::new().unwrap();
    let files = certs(&dir, &["a", "b"]);
    let a = node(&files[0], &files[0], "a", "c");
    // b's certificate, but it says it is "c".
    let liar = node(&files[1], &files[1], "c", "c");
    let err = liar.net.request(a.addr, &pull()).await.unwrap_err();
    assert!(
        matches!(&err, NetError::Refused { reason, .. } if reason.contains("not issued to that node id")),
        "{err}"
    );
    assert_eq!(a.net.stats.peers_refused.get(), 1);
    // And the other way round: a dialing the liar refuses it.
    let err = a.net.request(liar.addr, &pull()).await.unwrap_err();
    assert!(matches!(err, NetError::Refused { .. }), "{err}");
}

#[tokio::test]
async fn a_node_of_another_ca_cannot_connect() {
    let dir = TempDir::new().unwrap();
    let other_dir = TempDir::new().unwrap();
    let files = certs(&dir, &["a"]);
    let other = certs(&other_dir, &["b"]);
    let a = node(&files[0], &files[0], "a", "c");
    // The intruder trusts its own CA and dials a: a's TLS refuses its certificate.
    let intruder = node(&other[0], &other[0], "b", "c");
    let err = intruder.net.request(a.addr, &pull()).await.unwrap_err();
    assert!(
        matches!(err, NetError::Connect { .. } | NetError::Request { .. }),
        "{err}"
    );
    // a dialing the intruder refuses the intruder's certificate.
    let err = a.net.request(intruder.addr, &pull()).await.unwrap_err();
    assert!(matches!(err, NetError::Connect { .. }), "{err}");
    assert_eq!(a.net.peer_node_id(intruder.addr), None);
}

#[tokio::test]
async fn a_node_of_another_cluster_is_refused() {
    let dir = TempDir::new().unwrap();
    let files = certs(&dir, &["a", "b"]);
    let a = node(&files[0], &files[0], "a", "one");
    let b = node(&files[1], &files[1], "b", "two");
    let err = b.net.request(a.addr, &pull()).await.unwrap_err();
    assert!(
        matches!(&err, NetError::Refused { reason, .. } if reason.contains("cluster")),
        "{err}"
    );
}

#[tokio::test]
async fn blocked_links_carry_nothing() {
    let dir = TempDir::new().unwrap();
    let files = certs(&dir, &["a", "b"]);
    let a = node(&files[0], &files[0], "a", "c");
    let b = node(&files[1], &files[1], "b", "c");
    b.net.block(a.addr);
    let err = b.net.request(a.addr, &pull()).await.unwrap_err();
    assert!(matches!(err, NetError::Blocked(_)), "{err}");
    b.net.unblock(a.addr);
    assert!(b.net.request(a.addr, &pull()).await.is_ok());
}
