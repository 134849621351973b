//! A real MQTT broker for end-to-end tests, a cuttable TCP proxy in front of it, and a consumer.
//!
//! By default each test starts rumqttd in-process on a free port. With `MESH_TEST_MQTT_URL` set
//! (`.ci/run` points it at Mosquitto) the same tests use that broker instead; every test uses topics
//! and client ids of its own, so tests can share a broker.
//!
//! Broker outages are made with [`Proxy`]: the agent connects to the broker through it, and cutting
//! it closes every connection and refuses new ones until it is restored. From the agent's side that
//! is exactly a broker that went down and came back (connection reset, then refused), while the
//! broker itself (which rumqttd cannot be stopped and restarted in-process) keeps the consumer's
//! session, so what the consumer receives shows what the agent delivered.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;

use crate::{Agent, Options, bin, free_addr};

/// How long a test waits for a condition before it fails (generous: CI is 2 cores).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The broker the tests talk to: `host:port`.
pub fn broker() -> SocketAddr {
    static BROKER: OnceLock<SocketAddr> = OnceLock::new();
    *BROKER.get_or_init(|| match std::env::var("MESH_TEST_MQTT_URL") {
        Ok(url) => {
            let rest = url
                .strip_prefix("mqtt://")
                .expect("MESH_TEST_MQTT_URL must be mqtt://host:port");
            std::net::ToSocketAddrs::to_socket_addrs(rest)
                .expect("MESH_TEST_MQTT_URL address")
                .next()
                .expect("MESH_TEST_MQTT_URL resolves")
        }
        Err(_) => start_rumqttd(),
    })
}

/// Whether the broker processes a client's packets in order up to its DISCONNECT. Mosquitto
/// (what `MESH_TEST_MQTT_URL` names in CI) does; the in-process rumqttd 0.20 sometimes drops
/// acknowledgements it has read but not processed when a DISCONNECT follows them, and then
/// redelivers those messages (under the same ids) after the next connect.
pub fn broker_keeps_order_to_disconnect() -> bool {
    std::env::var("MESH_TEST_MQTT_URL").is_ok()
}

/// Starts rumqttd on a free port (it runs until the test process exits: it has no shutdown).
fn start_rumqttd() -> SocketAddr {
    let addr = free_addr();
    let config = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "{addr}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 500
    dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&config).expect("rumqttd config");
    thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(err) = broker.start() {
            eprintln!("rumqttd stopped: {err}");
        }
    });
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "rumqttd did not start");
        thread::sleep(Duration::from_millis(20));
    }
    addr
}

/// Topics and client ids of one test.
#[derive(Clone)]
pub struct Space {
    pub prefix: String,
}

impl Space {
    pub fn new() -> Space {
        Space {
            prefix: format!("t{}/", uuid::Uuid::new_v4().simple()),
        }
    }

    pub fn incident_topic(&self) -> String {
        format!("{}incident/detected", self.prefix)
    }

    pub fn actions_topic(&self) -> String {
        format!("{}p03/actions", self.prefix)
    }

    pub fn summaries_topic(&self) -> String {
        format!("{}collector/summaries", self.prefix)
    }

    pub fn client_id(&self, who: &str) -> String {
        format!("{}{who}", self.prefix.trim_end_matches('/'))
    }

    /// Agent options: connect to `broker` (through a proxy, usually), topics of this space.
    pub fn agent(&self, options: Options, broker: SocketAddr, node: &str) -> Options {
        self.agent_at(options, &format!("mqtt://{broker}"), node)
    }

    /// [`agent`](Self::agent), with the broker's url (`mqtts://...`).
    pub fn agent_at(&self, options: Options, url: &str, node: &str) -> Options {
        options
            .arg("--mqtt-url")
            .arg(url)
            .env("MESH_AGENT_MQTT_CLIENT_ID", self.client_id(node))
            .env("MESH_AGENT_MQTT_TOPIC_PREFIX", &self.prefix)
            .env("MESH_AGENT_MQTT_ACTIONS_TOPIC", self.actions_topic())
            .env("MESH_AGENT_MQTT_SUMMARIES_TOPIC", self.summaries_topic())
            .env("MESH_AGENT_UPSTREAM_RECONNECT_MIN_MS", "50")
            .env("MESH_AGENT_UPSTREAM_RECONNECT_MAX_MS", "500")
            // Outages in these tests open the breaker; its trial comes a second later.
            .env("MESH_AGENT_UPSTREAM_RESET_TIMEOUT_SEC", "1")
            // No summaries unless a test asks (a later `.env` wins): they would change the
            // outbox depths the tests check.
            .env("MESH_AGENT_SUMMARY_INTERVAL_SEC", "0")
    }
}

/// A TCP proxy to the broker that can be cut (every connection closed, new ones refused) and
/// restored.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    black: Arc<AtomicBool>,
    mute: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let black = Arc::new(AtomicBool::new(false));
        let mute = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        {
            let up = Arc::clone(&up);
            let black = Arc::clone(&black);
            let mute = Arc::clone(&mute);
            let conns = Arc::clone(&conns);
            thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if !up.load(Ordering::SeqCst) {
                        // Refused: closed before a byte is exchanged.
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(target) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    {
                        let mut held = conns.lock().expect("proxy conns");
                        held.push(client.try_clone().expect("clone"));
                        held.push(server.try_clone().expect("clone"));
                    }
                    pipe(
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                        Some((Arc::clone(&black), Arc::clone(&mute))),
                    );
                    pipe(server, client, None);
                }
            });
        }
        Proxy {
            addr,
            up,
            black,
            mute,
            conns,
        }
    }

    /// A broker that accepts connections and never acknowledges a publish: of what the agent
    /// sends on a connection, only the first write (its CONNECT) reaches the broker.
    pub fn mute(&self) {
        self.mute.store(true, Ordering::SeqCst);
    }

    /// Connections stay open, but what the agent sends never reaches the broker: it is written
    /// to the socket successfully and never acknowledged.
    pub fn blackhole(&self) {
        self.black.store(true, Ordering::SeqCst);
    }

    /// The broker goes away: open connections are reset, new ones refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for conn in self.conns.lock().expect("proxy conns").drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// The broker is back.
    pub fn restore(&self) {
        self.black.store(false, Ordering::SeqCst);
        self.mute.store(false, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`; `swallow` (black hole, mute) drops what should not arrive.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    swallow: Option<(Arc<AtomicBool>, Arc<AtomicBool>)>,
) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let mut first = true;
        loop {
            let read = from.read(&mut buf);
            let dropped = swallow.as_ref().is_some_and(|(black, mute)| {
                black.load(Ordering::SeqCst) || (!first && mute.load(Ordering::SeqCst))
            });
            first = false;
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) if dropped => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// Subscribes to a topic (QoS 1) and keeps every message received, in order.
pub struct Consumer {
    received: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Consumer {
    /// Connects directly to the broker and returns once the subscription is acknowledged.
    pub fn subscribe(client_id: &str, topic: &str) -> Consumer {
        let broker = broker();
        let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1024 * 1024, 1024 * 1024);
        let (client, mut connection) = Client::new(options, 1000);
        client
            .subscribe(topic, QoS::AtLeastOnce)
            .expect("subscribe");
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let raw: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        {
            let received = Arc::clone(&received);
            let raw = Arc::clone(&raw);
            thread::spawn(move || {
                let _client = client;
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Incoming::SubAck(_))) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(Event::Incoming(Incoming::Publish(p))) => {
                            raw.lock().expect("raw").push(p.payload.to_vec());
                            if let Ok(value) = serde_json::from_slice(&p.payload) {
                                received.lock().expect("received").push(value);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => thread::sleep(Duration::from_millis(100)),
                    }
                }
            });
        }
        ready
            .recv_timeout(PATIENCE)
            .expect("consumer subscription acknowledged");
        Consumer { received, raw }
    }

    pub fn messages(&self) -> Vec<Value> {
        self.received.lock().expect("received").clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("received").len()
    }

    /// Waits until `done` holds for the messages received so far; returns them.
    pub fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let messages = self.messages();
            if done(&messages) {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "consumer: {what} not reached; {} messages received",
                messages.len()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for `n` distinct values of `field`; returns each value with how often it came.
    pub fn wait_distinct(&self, field: &str, n: usize) -> BTreeMap<String, usize> {
        let messages = self.wait_until(&format!("{n} distinct {field}"), |m| {
            distinct(m, field).len() >= n
        });
        let mut counts = BTreeMap::new();
        for m in messages {
            if let Some(id) = m[field].as_str() {
                *counts.entry(id.to_owned()).or_insert(0) += 1;
            }
        }
        counts
    }
}

pub fn distinct(messages: &[Value], field: &str) -> BTreeSet<String> {
    messages
        .iter()
        .filter_map(|m| m[field].as_str().map(str::to_owned))
        .collect()
}

/// Publishes `payload` to `topic` with QoS 1 and waits for the broker's acknowledgement.
pub fn publish(client_id: &str, topic: &str, payloads: &[Vec<u8>]) {
    publish_with(client_id, topic, payloads, false);
}

/// [`publish`], as retained messages.
pub fn publish_retained(client_id: &str, topic: &str, payloads: &[Vec<u8>]) {
    publish_with(client_id, topic, payloads, true);
}

fn publish_with(client_id: &str, topic: &str, payloads: &[Vec<u8>], retain: bool) {
    let broker = broker();
    let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    let (client, mut connection) = Client::new(options, payloads.len() + 10);
    for payload in payloads {
        client
            .publish(topic, QoS::AtLeastOnce, retain, payload.clone())
            .expect("publish");
    }
    let mut acked = 0;
    let deadline = Instant::now() + PATIENCE;
    for event in connection.iter() {
        if let Ok(Event::Incoming(Incoming::PubAck(_))) = event {
            acked += 1;
            if acked == payloads.len() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "publishes not acknowledged");
    }
    let _ = client.disconnect();
}

/// Waits until `done` holds for the agent's `/health`; returns it.
pub fn wait_health(agent: &Agent, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, health) = agent.get("/health");
        if status == 200 && done(&health) {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "health: {what} not reached: {health}\n{}",
            agent.log_text()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The value of a metric sample (first line starting with `name`), or 0.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A running `mesh-agent collector`; killed when dropped.
pub struct Collector {
    child: std::process::Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

impl Collector {
    pub fn start(broker: SocketAddr, client_id: &str, summaries: &str, actions: &str) -> Collector {
        Collector::start_with(broker, client_id, summaries, actions, &[])
    }

    /// [`start`](Self::start), with more arguments (`--rate-per-second`, `--read-token-file`).
    pub fn start_with(
        broker: SocketAddr,
        client_id: &str,
        summaries: &str,
        actions: &str,
        extra: &[String],
    ) -> Collector {
        let tmp = tempfile::tempdir().expect("temp dir");
        let log = tmp.path().join("collector.log");
        let addr = free_addr();
        let out = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(bin())
            .args(["collector", "--mqtt-url", &format!("mqtt://{broker}")])
            .args(["--client-id", client_id, "--summaries-topic", summaries])
            .args([
                "--actions-topic",
                actions,
                "--http-listen",
                &addr.to_string(),
            ])
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start collector");
        let collector = Collector {
            child,
            addr,
            log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if reqwest::blocking::get(format!("http://{addr}/collector/nodes")).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "collector not ready:\n{}",
                collector.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        collector
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::blocking::get(format!("http://{}{path}", self.addr)).expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `mqtts://` listener in front of the broker: it terminates TLS with its own certificate,
/// requires a client certificate that chains to `client_ca`, and forwards the plain bytes.
pub struct TlsFront {
    pub addr: SocketAddr,
    /// Handshakes refused (no client certificate, or one of another CA).
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsFront {
    pub fn start(
        target: SocketAddr,
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: &std::path::Path,
    ) -> TlsFront {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("front certificate")
            .collect::<Result<_, _>>()
            .expect("front certificate");
        let key = PrivateKeyDer::from_pem_file(key).expect("front key");
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(client_ca).expect("client CA") {
            roots.add(ca.expect("client CA")).expect("client CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .expect("client verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("front TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").expect("front bind");
        let addr = listener.local_addr().expect("front addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&refused);
        thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("front runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("front listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let refused = Arc::clone(&counted);
                    tokio::spawn(async move {
                        let mut tls = match acceptor.accept(tcp).await {
                            Ok(tls) => tls,
                            Err(_) => {
                                refused.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        };
                        let Ok(mut broker) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                    });
                }
            });
        });
        TlsFront { addr, refused }
    }
}
