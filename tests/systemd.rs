//! The agent under systemd (`Type=notify`), without systemd: systemd is not PID 1 on these
//! machines, so the test plays the service manager's side of the notification protocol. It binds
//! the datagram socket named by `NOTIFY_SOCKET` and checks that the agent says READY only once its
//! API answers, pings the watchdog while it runs (`WATCHDOG_USEC`), and says STOPPING on SIGTERM
//! before it exits cleanly. The unit file itself is checked by `systemd-analyze verify` and
//! `security`, and booted under a real systemd in a container.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::{PATIENCE, bin, free_addr};

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let mut command = Command::new(bin());
    command
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
        .stderr(Stdio::null());
    // Killed if the test fails part way, so no agent outlives it.
    let mut child = KillOnDrop(command.spawn().unwrap());
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
    let pid = child.0.id() as i32;
    // Safety: kill has no memory-safety preconditions; pid is our child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_for(&socket, "STOPPING=1", &mut seen);
    let status = child.0.wait().unwrap();
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
    // Only what it says of this unit: another host's units (what network-online.target wants)
    // may have warnings of their own.
    let own: Vec<&str> = std::str::from_utf8(&verify.stderr)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("mesh-agent.service"))
        .collect();
    assert!(
        verify.status.success() && own.is_empty(),
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

/// A Debian root with systemd, made once by `debootstrap` and kept (`MESH_TEST_DEBIAN_ROOT`, or
/// under /var/tmp): the boot test copies this build's binary and unit into it each run.
fn debian_root() -> Result<std::path::PathBuf, String> {
    let root = std::env::var_os("MESH_TEST_DEBIAN_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/mesh-agent-debian-root".into());
    if root.join("usr/lib/systemd/systemd").exists() {
        return Ok(root);
    }
    let partial = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let output = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus",
            "bookworm",
        ])
        .arg(&partial)
        .arg("http://deb.debian.org/debian")
        .output()
        .map_err(|err| format!("debootstrap: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "debootstrap failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::rename(&partial, &root).map_err(|err| err.to_string())?;
    Ok(root)
}

/// The shipped unit, hardening and all, boots under a real systemd (in `systemd-nspawn -b`): it
/// reaches `active` with the agent's status, answers `/health`, restarts nothing, and stops with
/// `Result=success`. Needs root, `systemd-nspawn` and a Debian root; where those cannot be had,
/// the test says why and passes on the notification test above.
#[test]
fn the_unit_boots_under_systemd_in_a_container() {
    // Safety: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0
        || Command::new("systemd-nspawn")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!(
            "skipped: needs root and systemd-nspawn (Debian: systemd-container); the NOTIFY_SOCKET test covers the protocol"
        );
        return;
    }
    let root = match debian_root() {
        Ok(root) => root,
        Err(why) => {
            eprintln!(
                "skipped: no Debian root ({why}); the NOTIFY_SOCKET test covers the protocol"
            );
            return;
        }
    };
    let addr = free_addr();
    let etc = root.join("etc");
    std::fs::create_dir_all(etc.join("mesh-agent")).unwrap();
    std::fs::write(
        etc.join("mesh-agent/agent.toml"),
        format!("http_listen = \"{addr}\"\n"),
    )
    .unwrap();
    std::fs::copy(bin(), root.join("usr/local/bin/mesh-agent")).unwrap();
    let units = etc.join("systemd/system");
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mesh-agent.service"),
        units.join("mesh-agent.service"),
    )
    .unwrap();
    // The probe waits for the test's word (a file it writes into the root), then stops the agent
    // and powers the container off, writing what systemd said at each step.
    std::fs::write(
        units.join("probe.service"),
        "[Unit]\nAfter=mesh-agent.service\n[Service]\nType=oneshot\nExecStart=/bin/sh -c '\
         while [ ! -e /probe.go ]; do sleep 0.1; done; \
         systemctl show -p ActiveState,StatusText,NRestarts mesh-agent > /probe.txt; \
         systemctl stop mesh-agent; \
         systemctl show -p ActiveState,Result mesh-agent >> /probe.txt; \
         systemctl poweroff'\n",
    )
    .unwrap();
    for unit in ["mesh-agent.service", "probe.service"] {
        let link = wants.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), &link).unwrap();
    }
    for stale in ["probe.go", "probe.txt"] {
        let _ = std::fs::remove_file(root.join(stale));
    }
    let mut container = Command::new("systemd-nspawn")
        .args(["-q", "-b", "--register=no", "--keep-unit", "-D"])
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let health = test_support::wait_until(PATIENCE, || {
        http.get(format!("http://{addr}/health"))
            .send()
            .map_err(|err| err.to_string())
            .and_then(|r| {
                let status = r.status();
                r.text()
                    .map_err(|err| err.to_string())
                    .map(|body| (status, body))
            })
    });
    std::fs::write(root.join("probe.go"), "").unwrap();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = container.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = container.kill();
            panic!("the container did not power off");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let probe = std::fs::read_to_string(root.join("probe.txt")).unwrap_or_default();
    assert_eq!(health.0, 200, "{}", health.1);
    assert!(status.success(), "systemd-nspawn: {status}");
    for line in [
        "ActiveState=active",
        "StatusText=serving, alone",
        "NRestarts=0",
        "ActiveState=inactive",
        "Result=success",
    ] {
        assert!(probe.lines().any(|l| l == line), "no `{line}` in:\n{probe}");
    }
}
