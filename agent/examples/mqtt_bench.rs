//! Broker -> agent -> broker throughput, and outbox drain time, against a running agent.
//!
//! ```sh
//! cargo build --release -p mesh-agent --example mqtt_bench
//! target/release/examples/mqtt_bench --agent-bin target/release/mesh-agent \
//!     --broker 127.0.0.1:1883 --incidents 100000 --drain 10000
//! ```
//!
//! It starts the agent (release build, fresh data directory, MQTT through a TCP proxy it controls),
//! creates one policy that matches every incident, then:
//! 1. publishes `--incidents` incidents (QoS 1) to `incident/detected` with at most `--window`
//!    incidents whose action has not come back yet (so the broker's per-client queue never
//!    overflows), and counts distinct `action_id`s on `p03/actions`: incidents per second from the
//!    first publish to the last action;
//! 2. cuts the proxy (a broker outage for the agent), POSTs `--drain` incidents to `/evaluate`
//!    (each committed to the outbox), restores the proxy and times until the outbox is empty.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::{Value, json};

struct Args {
    agent_bin: String,
    broker: SocketAddr,
    incidents: usize,
    window: usize,
    drain: usize,
    /// The agent connects straight to the broker (no proxy; no drain phase).
    direct: bool,
}

fn args() -> Args {
    let mut a = Args {
        agent_bin: "target/release/mesh-agent".into(),
        broker: "127.0.0.1:1883".parse().expect("addr"),
        incidents: 100_000,
        window: 500,
        drain: 10_000,
        direct: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--direct" {
            a.direct = true;
            continue;
        }
        let value = it.next().expect("flag value");
        match flag.as_str() {
            "--agent-bin" => a.agent_bin = value,
            "--broker" => a.broker = value.parse().expect("--broker host:port"),
            "--incidents" => a.incidents = value.parse().expect("--incidents N"),
            "--window" => a.window = value.parse().expect("--window N"),
            "--drain" => a.drain = value.parse().expect("--drain N"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn main() {
    let args = args();
    let run = format!("b{}", std::process::id());
    let proxy = Proxy::start(args.broker);
    let tmp = std::env::temp_dir().join(format!("mqtt-bench-{run}"));
    let http = free_addr();
    let mut agent = Command::new(&args.agent_bin)
        .args([
            "run",
            "--node-id",
            "bench",
            "--http-listen",
            &http.to_string(),
        ])
        .arg("--data-dir")
        .arg(tmp.join("data"))
        .args([
            "--mqtt-url",
            &format!(
                "mqtt://{}",
                if args.direct { args.broker } else { proxy.addr }
            ),
        ])
        .env("MESH_AGENT_MQTT_CLIENT_ID", &run)
        .env("MESH_AGENT_MQTT_TOPIC_PREFIX", format!("{run}/"))
        .env(
            "MESH_AGENT_MQTT_ACTIONS_TOPIC",
            format!("{run}/p03/actions"),
        )
        .env("MESH_AGENT_SUMMARY_INTERVAL_SEC", "0")
        .env("MESH_AGENT_UPSTREAM_RESET_TIMEOUT_SEC", "1")
        .env("MESH_AGENT_OUTBOX_CAPACITY", "1000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start agent");
    let base = format!("http://{http}");
    let client = reqwest::blocking::Client::new();
    wait(|| client.get(format!("{base}/health")).send().is_ok());
    let created = client
        .post(format!("{base}/policies"))
        .json(&json!({"name": "all", "description": "every incident",
            "definition": {"condition": "incident.severity >= 0", "action": "trigger_p0_3_recovery",
                "modifiers": {"swap": "2x"}, "reversibility_sec": 300, "cooldown_sec": 0},
            "active": true, "priority": 1}))
        .send()
        .expect("create policy");
    assert!(created.status().is_success());
    wait(|| health(&client, &base)["upstream"]["connected"] == true);

    let actions = Arc::new(Mutex::new(HashSet::<String>::new()));
    let distinct = Arc::new(AtomicUsize::new(0));
    subscribe(
        args.broker,
        &format!("{run}-consumer"),
        &format!("{run}/p03/actions"),
        &actions,
        &distinct,
    );

    // 1. Throughput.
    let topic = format!("{run}/incident/detected");
    let mut options = MqttOptions::new(
        format!("{run}-monitor"),
        args.broker.ip().to_string(),
        args.broker.port(),
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    let (monitor, mut connection) = Client::new(options, 1000);
    thread::spawn(move || for _ in connection.iter() {});
    let started = Instant::now();
    for i in 0..args.incidents {
        // Sleep rather than spin: the load generator shares the two cores with the agent.
        while i >= distinct.load(Ordering::Relaxed) + args.window {
            thread::sleep(Duration::from_micros(200));
        }
        let payload = format!(
            r#"{{"event_type":"memory_leak","severity":9,"event_id":"t-{i}","context":{{"service":"payment-api"}}}}"#
        );
        monitor
            .publish(&topic, QoS::AtLeastOnce, false, payload)
            .expect("publish");
    }
    wait_long(|| distinct.load(Ordering::Relaxed) >= args.incidents);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "throughput: {} incidents in {:.2} s = {:.0} incidents/s (broker -> agent -> broker, outbox on)",
        args.incidents,
        secs,
        args.incidents as f64 / secs
    );

    if args.direct {
        let _ = agent.kill();
        let _ = agent.wait();
        return;
    }

    // 2. Drain after an outage.
    proxy.cut();
    wait(|| health(&client, &base)["upstream"]["connected"] == false);
    let batch: Vec<Value> = (0..args.drain)
        .map(|i| json!({"event_type": "memory_leak", "severity": 9, "event_id": format!("d-{i}")}))
        .collect();
    for chunk in batch.chunks(500) {
        let resp = client
            .post(format!("{base}/evaluate/batch"))
            .json(&chunk)
            .send()
            .expect("batch");
        assert!(resp.status().is_success());
    }
    let depth = health(&client, &base)["upstream"]["outbox_depth"].clone();
    println!("outbox depth during the outage: {depth}");
    let restored = Instant::now();
    proxy.restore();
    wait_long(|| health(&client, &base)["upstream"]["connected"] == true);
    let reconnected = Instant::now();
    wait_long(|| health(&client, &base)["upstream"]["outbox_depth"] == 0);
    println!(
        "drain: {} queued actions acknowledged by the broker {:.2} s after it came back \
         ({:.2} s reconnect backoff/breaker wait, {:.2} s sending)",
        args.drain,
        restored.elapsed().as_secs_f64(),
        (reconnected - restored).as_secs_f64(),
        reconnected.elapsed().as_secs_f64()
    );
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&tmp);
}

fn health(client: &reqwest::blocking::Client, base: &str) -> Value {
    client
        .get(format!("{base}/health"))
        .send()
        .and_then(|r| r.json())
        .unwrap_or(Value::Null)
}

fn subscribe(
    broker: SocketAddr,
    id: &str,
    topic: &str,
    seen: &Arc<Mutex<HashSet<String>>>,
    distinct: &Arc<AtomicUsize>,
) {
    let mut options = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(options, 1000);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .expect("subscribe");
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let seen = Arc::clone(seen);
    let distinct = Arc::clone(distinct);
    thread::spawn(move || {
        let _client = client;
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if let Ok(action) = serde_json::from_slice::<ActionId>(&p.payload) {
                        let mut seen = seen.lock().expect("seen");
                        if seen.insert(action.action_id.to_owned()) {
                            distinct.store(seen.len(), Ordering::Relaxed);
                        }
                    }
                }
                _ => {}
            }
        }
    });
    ready.recv_timeout(Duration::from_secs(30)).expect("suback");
}

/// The one field the consumer needs (the rest of the action is skipped, not built).
#[derive(serde::Deserialize)]
struct ActionId<'a> {
    action_id: &'a str,
}

fn wait(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        thread::sleep(Duration::from_millis(10));
    }
}

fn wait_long(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        thread::sleep(Duration::from_micros(500));
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A TCP proxy to the broker that can be cut and restored (the agent's broker outage).
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, conns2) = (Arc::clone(&up), Arc::clone(&conns));
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                conns2.lock().expect("conns").extend([
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ]);
                pipe(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(server, client);
            }
        });
        Proxy { addr, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
