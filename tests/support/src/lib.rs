//! Starts real `mesh-agent` processes for end-to-end tests, as a user would: the built binary, a
//! data directory in a temp dir, a free port on loopback, and HTTP.
//!
//! One crate, compiled once, for every end-to-end test binary: [`mesh`] has a test CA, [`mqtt`] a
//! broker (in-process rumqttd, or Mosquitto in CI), proxies, consumers and a collector.

// `new` here makes things (a CA on disk, a topic space): not what a `Default` would suggest.
#![allow(clippy::new_without_default)]

pub mod bundles;
pub mod container;
pub mod mesh;
pub mod mqtt;

/// For tests that signal processes they started themselves.
pub use nix;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The agent binary Cargo built for the running test: `target/<profile>/mesh-agent`, beside the
/// `deps/` directory the test binary runs from (Cargo builds a package's binaries before its
/// integration tests). `MESH_AGENT_BIN` overrides it.
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(path) = std::env::var("MESH_AGENT_BIN") {
            return path;
        }
        let test = std::env::current_exe().expect("the test binary's path");
        let profile_dir = test
            .parent()
            .and_then(Path::parent)
            .expect("the test binary runs from target/<profile>/deps");
        let path = profile_dir.join("mesh-agent");
        assert!(
            path.exists(),
            "{} does not exist: run the tests with cargo test (which builds it), or set MESH_AGENT_BIN",
            path.display()
        );
        path.to_string_lossy().into_owned()
    })
}

/// How long an agent may take to start or stop before the test fails (generous: CI is 2 cores).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The repository's `policies/` directory.
pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies")
}

/// How to start an agent.
#[derive(Clone, Default)]
pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Variables taken out of the agent's environment (`RUST_LOG`, which the tests set).
    pub unset: Vec<String>,
    /// `--node-id` (default: `test-node`).
    pub node_id: Option<String>,
    /// No file the agent writes may grow past this many bytes (RLIMIT_FSIZE, with SIGXFSZ
    /// ignored): a write past it fails with EFBIG, as on a full disk.
    pub file_limit: Option<u64>,
}

impl Options {
    pub fn arg(mut self, arg: impl Into<String>) -> Options {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Options {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn unset_env(mut self, key: &str) -> Options {
        self.unset.push(key.into());
        self
    }

    pub fn file_limit(mut self, bytes: u64) -> Options {
        self.file_limit = Some(bytes);
        self
    }

    pub fn node_id(mut self, id: &str) -> Options {
        self.node_id = Some(id.into());
        self
    }

    /// Joins a mesh with the certificates in `dir` (`--tls-dir`).
    pub fn tls_dir(self, dir: &Path) -> Options {
        self.arg("--tls-dir").arg(dir.display().to_string())
    }

    pub fn gossip_listen(self, addr: SocketAddr) -> Options {
        self.arg("--gossip-listen").arg(addr.to_string())
    }

    pub fn seed(self, addr: SocketAddr) -> Options {
        self.arg("--seed").arg(addr.to_string())
    }

    pub fn cluster_id(self, id: &str) -> Options {
        self.arg("--cluster-id").arg(id)
    }
}

/// A process a test started itself, killed when the test ends (a failed assertion included).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running agent; killed when dropped.
pub struct Agent {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    options: Options,
    http: reqwest::blocking::Client,
    _tmp: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent on a fresh data directory.
    pub fn start(options: Options) -> Agent {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data_dir = tmp.path().join("data");
        let log = tmp.path().join("agent.log");
        let mut agent = Agent {
            child: None,
            addr: free_addr(),
            data_dir,
            log,
            options,
            http: reqwest::blocking::Client::builder()
                .timeout(PATIENCE)
                .build()
                .expect("http client"),
            _tmp: tmp,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = match self.options.file_limit {
            // Through a shell: it sets the limit (in 512-byte blocks) and ignores the signal,
            // then becomes the agent.
            Some(bytes) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!(
                        "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
                        bytes / 512
                    ))
                    .arg(bin());
                sh
            }
            None => Command::new(bin()),
        };
        cmd.arg("run")
            .arg("--node-id")
            .arg(self.options.node_id.as_deref().unwrap_or("test-node"))
            .arg("--http-listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.options.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        for (key, value) in &self.options.env {
            cmd.env(key, value);
        }
        for key in &self.options.unset {
            cmd.env_remove(key);
        }
        self.child = Some(cmd.spawn().expect("start mesh-agent"));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "mesh-agent exited during start ({status}):\n{}",
                    self.log_text()
                );
            }
            let health = self.http.get(self.url("/health")).send();
            if health.is_ok_and(|resp| resp.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mesh-agent not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("agent running").id() as i32)
    }

    /// Sends SIGHUP: the agent reloads its config.
    pub fn hangup(&self) {
        kill(self.pid(), Signal::SIGHUP).expect("SIGHUP");
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        self.wait_exit()
    }

    /// Sends SIGKILL: the agent gets no chance to flush anything.
    pub fn crash(&mut self) {
        kill(self.pid(), Signal::SIGKILL).expect("SIGKILL");
        self.wait_exit();
    }

    /// The exit status, once the agent has exited on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("wait")?;
        self.child = None;
        Some(status)
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mesh-agent did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the agent again on the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the agent before restarting it");
        self.spawn();
    }

    /// Starts the agent again on the same data directory and port, with other options.
    pub fn restart_with(&mut self, options: Options) {
        self.options = options;
        self.restart();
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        response(self.http.get(self.url(path)).send())
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        response(self.http.delete(self.url(path)).send())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        response(self.http.post(self.url(path)).json(body).send())
    }

    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        response(self.http.put(self.url(path)).json(body).send())
    }

    /// Sends a text body (a Rego module) with PUT.
    pub fn put_text(&self, path: &str, text: &str) -> (u16, Value) {
        response(
            self.http
                .put(self.url(path))
                .header("content-type", "text/plain")
                .body(text.to_owned())
                .send(),
        )
    }

    /// Sends a body as is (for malformed JSON and size limits).
    pub fn post_raw(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, Value) {
        response(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send(),
        )
    }

    pub fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .expect("metrics")
    }

    /// Polls `GET /audit` until its head reaches `seq` (entries become visible when committed).
    pub fn wait_audit_head(&self, seq: u64) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, page) = self.get("/audit?limit=1");
            assert_eq!(status, 200, "{page}");
            if page["head"].as_u64() >= Some(seq) {
                return page;
            }
            assert!(
                Instant::now() < deadline,
                "audit head stuck at {}",
                page["head"]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn response(result: reqwest::Result<reqwest::blocking::Response>) -> (u16, Value) {
    let resp = result.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A loopback UDP address with a port that was free a moment ago.
pub fn free_udp_addr() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr")
}

/// Polls `poll` until it returns `Ok`, every 50 ms for at most `patience`; then fails with the last
/// `Err`, which should say what was observed. The patience only bounds the wait: it is no timing
/// assertion, so make it generous.
pub fn wait_until<T>(patience: Duration, mut poll: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        match poll() {
            Ok(value) => return value,
            Err(last) => assert!(
                Instant::now() < deadline,
                "gave up after {patience:?}; last seen: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks `check` every 100 ms for `period`, failing at the first `Err` (what must never happen).
pub fn holds_for(period: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + period;
    loop {
        if let Err(seen) = check() {
            panic!("{seen}");
        }
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An event body for `/evaluate`.
pub fn event(event_type: &str, severity: f64, context: Value) -> Value {
    serde_json::json!({ "event_type": event_type, "severity": severity, "context": context })
}

/// A policy body for `POST /policies`. No cooldown: the tests that use it count one action per
/// matching incident (throttling is tested on its own, in `mesh_decisions.rs`).
pub fn policy(name: &str, condition: &str, priority: i64) -> Value {
    serde_json::json!({
        "name": name,
        "description": format!("{name} description"),
        "definition": {
            "condition": condition,
            "action": format!("act_{name}"),
            "modifiers": {"k": name},
            "reversibility_sec": 60,
            "cooldown_sec": 0
        },
        "active": true,
        "priority": priority
    })
}
