//! The agent under systemd (`Type=notify`), without systemd: systemd is not PID 1 on these
//! machines, so the test plays the service manager's side of the notification protocol. It binds
//! the datagram socket named by `NOTIFY_SOCKET` and checks that the agent says READY only once its
//! API answers, pings the watchdog while it runs (`WATCHDOG_USEC`), and says STOPPING on SIGTERM
//! before it exits cleanly. The unit file itself is checked by `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::{PATIENCE, bin, free_addr};

/// Reads notifications until one holds `wanted` (every line of every message is kept).
fn wait_for(socket: &UnixDatagram, wanted: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(len) => {
                let message = String::from_utf8_lossy(&buf[..len]).into_owned();
                let found = message.lines().any(|line| line == wanted);
                seen.push(message);
                if found {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
            Err(err) => panic!("reading the notify socket: {err}"),
        }
    }
    panic!("no {wanted} from the agent; it sent {seen:?}");
}

#[test]
fn the_agent_says_ready_once_it_answers_pings_the_watchdog_and_says_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = free_addr();
    let mut child = Command::new(bin())
        .arg("run")
        .args([
            "--node-id",
            "notify-test",
            "--http-listen",
            &addr.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &socket_path)
        // 200 ms: systemd asks for a ping at least this often.
        .env("WATCHDOG_USEC", "200000")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::blocking::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let mut seen = Vec::new();
    wait_for(&socket, "READY=1", &mut seen);
    // At READY, and not a retry later, the API answers: systemd starts what depends on the agent
    // then.
    let health = http
        .get(format!("http://{addr}/health"))
        .send()
        .expect("the API answers when the agent says READY");
    assert_eq!(health.status(), 200);
    // Watchdog pings keep coming while it runs: two in a row, after READY.
    wait_for(&socket, "WATCHDOG=1", &mut seen);
    wait_for(&socket, "WATCHDOG=1", &mut seen);
    let pid = child.id() as i32;
    // Safety: kill has no memory-safety preconditions; pid is our child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_for(&socket, "STOPPING=1", &mut seen);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "stopped cleanly: {status}; it sent {seen:?}"
    );
    assert!(
        seen[0].lines().any(|l| l == "READY=1"),
        "READY is the first thing it says: {seen:?}"
    );
}

/// `systemd-analyze verify` accepts the shipped unit (with this build's binary in place of
/// /usr/local/bin/mesh-agent, which verify checks is executable), and `systemd-analyze security`
/// scores it at the exposure the README gives, or better.
#[test]
fn the_unit_verifies_and_keeps_its_exposure_score() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mesh-agent.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify"), "{unit}");
    assert!(unit.contains("ExecStartPre="), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh-agent.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/mesh-agent", bin())).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian: systemd)");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for mesh-agent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let stated: f64 = readme
        .split("exposure level of ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the README states the unit's exposure level (\"exposure level of N\")");
    assert!(
        score <= stated,
        "systemd-analyze security scores the unit {score}, the README says {stated}:\n{text}"
    );
}
