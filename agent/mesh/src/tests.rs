//! The transport's handshake: who may connect, checked with real certificates on real QUIC
//! loopback sockets.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::mesh::{Hello, MESH_PROTOCOL, PullRequest, Request, Response};
use tempfile::TempDir;

use super::tls;
use super::transport::{Net, NetError};
use agent_identity::{TlsFiles, Verifier};

struct Side {
    net: Arc<Net>,
    addr: SocketAddr,
    inbound: std::sync::Mutex<Option<super::transport::Inbound>>,
}

impl Side {
    /// This side's links, as a mesh node holds them (once: they take the gossip received).
    fn links(&self) -> Arc<dyn super::links::Links> {
        let inbound = self.inbound.lock().unwrap().take().unwrap();
        let transport = super::gossip::QuicTransport::new(Arc::clone(&self.net), inbound);
        Arc::new(super::links::QuicLinks::new(
            Arc::clone(&self.net),
            transport,
        ))
    }
}

/// A node with `files` whose hello claims `claimed` in `cluster`; refuses every request.
fn node(files: &TlsFiles, ca: &TlsFiles, claimed: &str, cluster: &str) -> Side {
    node_with(
        files,
        ca,
        claimed,
        cluster,
        Arc::new(|_| Response::Refused("test node".into())),
    )
}

/// [`node`], answering requests with `handler`.
fn node_with(
    files: &TlsFiles,
    ca: &TlsFiles,
    claimed: &str,
    cluster: &str,
    handler: super::links::RequestHandler,
) -> Side {
    let verifier = Arc::new(Verifier::new(&ca.ca).unwrap());
    let hello = Hello {
        protocol: MESH_PROTOCOL,
        cluster_id: cluster.into(),
        node_id: claimed.into(),
        gossip_addr: "127.0.0.1:0".into(),
    };
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let (net, inbound) = Net::bind(
        socket,
        tls::server_config(files).unwrap(),
        tls::client_config(files).unwrap(),
        hello,
        verifier,
        handler,
        super::metrics::MeshMetrics::default(),
        None,
    )
    .unwrap();
    let addr = net.local_addr().unwrap();
    Side {
        net,
        addr,
        inbound: std::sync::Mutex::new(Some(inbound)),
    }
}

fn certs(dir: &TempDir, ids: &[&str]) -> Vec<TlsFiles> {
    agent_identity::certs::init(dir.path(), false).unwrap();
    ids.iter()
        .map(|id| {
            agent_identity::certs::issue(dir.path(), id, 30).unwrap();
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

/// The page `store` serves from the start of its log.
fn page_of(store: &agent_store::Store) -> mesh_proto::mesh::PullResponse {
    let stale = std::sync::atomic::AtomicBool::new(false);
    match super::sync::serve(
        store,
        &stale,
        Request::Pull(PullRequest {
            since: 0,
            limit: 100,
        }),
    ) {
        Response::Pull(page) => page,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn forged_replayed_and_reordered_pages_from_a_valid_peer_change_nothing_they_should_not() {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    use agent_identity::Signer;
    use agent_store::{PolicyFields, Store};

    let dir = TempDir::new().unwrap();
    let files = certs(&dir, &["evil", "victim"]);
    let fields = |priority| PolicyFields {
        name: "p".into(),
        description: String::new(),
        definition_json: r#"{"condition":"incident.severity > 1","action":"a"}"#.into(),
        active: true,
        priority,
    };
    // Real changes, signed by the evil node's own (valid) key.
    let signer = Arc::new(Signer::new("evil", &files[0]).unwrap());
    let evil_store = Store::open(&dir.path().join("evil.redb"), "evil").unwrap();
    evil_store.set_signer(Arc::clone(&signer));
    let p = evil_store.create(fields(1)).unwrap();
    let v1 = page_of(&evil_store);
    evil_store.update(p.id, p.version, fields(2)).unwrap();
    let v2 = page_of(&evil_store);
    let certs = vec![("evil".to_owned(), signer.cert_der().to_vec())];

    // What the evil node answers to the next pull.
    let serving: Arc<Mutex<mesh_proto::mesh::PullResponse>> = Arc::new(Mutex::new(v2.clone()));
    let evil = {
        let serving = Arc::clone(&serving);
        node_with(
            &files[0],
            &files[0],
            "evil",
            "c",
            Arc::new(move |_| Response::Pull(serving.lock().unwrap().clone())),
        )
    };
    let victim_side = node(&files[1], &files[1], "victim", "c");
    let victim_store = Arc::new(Store::open(&dir.path().join("victim.redb"), "victim").unwrap());
    let metrics = super::metrics::MeshMetrics::default();
    let puller = super::sync::Puller {
        links: victim_side.links(),
        store: Arc::clone(&victim_store),
        verifier: Arc::new(Verifier::new(&files[1].ca).unwrap()),
        stale: Arc::new(AtomicBool::new(false)),
        tombstone_ttl_ms: u64::MAX,
        metrics: metrics.clone(),
    };
    let revision = super::sync::PeerRevision {
        incarnation: v2.incarnation,
        head: v2.head,
        digest: "x".into(),
    };
    let pull = |page: mesh_proto::mesh::PullResponse| {
        *serving.lock().unwrap() = mesh_proto::mesh::PullResponse {
            certs: certs.clone(),
            more: false,
            ..page
        };
        puller.pull("evil", evil.addr, &revision)
    };

    // A forged change: the newest version with its signature altered.
    let mut forged = v2.clone();
    forged.changes[0].change.signature[10] ^= 0xff;
    let outcome = pull(forged).await.unwrap();
    assert_eq!((outcome.refused, outcome.merge.applied), (1, 0));
    assert_eq!(metrics.changes_refused.get(), 1);
    assert!(
        victim_store.get(p.id).unwrap().is_none(),
        "nothing forged merged"
    );

    // The two versions newest first (a reordered, replaying page): the newest wins.
    let mut reordered = v2.clone();
    reordered.changes.extend(v1.changes.clone());
    let outcome = pull(reordered).await.unwrap();
    assert_eq!((outcome.merge.applied, outcome.merge.stale), (1, 1));
    assert_eq!(victim_store.get(p.id).unwrap().unwrap().priority, 2);

    // The old version alone, replayed after the newer: stale, nothing changes.
    let outcome = pull(v1.clone()).await.unwrap();
    assert_eq!((outcome.merge.applied, outcome.merge.stale), (0, 1));
    assert_eq!(victim_store.get(p.id).unwrap().unwrap().priority, 2);
    assert_eq!(metrics.changes_refused.get(), 1);
    assert_eq!(metrics.changes_stale.get(), 2);
}
