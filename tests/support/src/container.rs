//! A Debian root booted with `systemd-nspawn -b`, for tests of the unit and the package under a
//! real systemd: made once by `debootstrap` and kept, then booted with a probe unit that waits
//! for the test's word, writes what systemd says of the service, and powers the container off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::PATIENCE;

/// Why containers cannot be booted here, if they cannot (not root, no `systemd-nspawn`).
pub fn unavailable() -> Option<String> {
    // Safety: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".into());
    }
    if Command::new("systemd-nspawn")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("needs systemd-nspawn (Debian: systemd-container)".into());
    }
    None
}

/// A Debian root with systemd, made once by `debootstrap` and kept (`MESH_TEST_DEBIAN_ROOT`, or
/// under /var/tmp). Tests that change it work on a copy ([`copy_of`]).
pub fn debian_root() -> Result<PathBuf, String> {
    let root = std::env::var_os("MESH_TEST_DEBIAN_ROOT")
        .map(PathBuf::from)
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

/// A fresh copy of `root` beside it (named `name`), removed first if a run left one.
pub fn copy_of(root: &Path, name: &str) -> Result<PathBuf, String> {
    let copy = root.with_file_name(name);
    let _ = std::fs::remove_dir_all(&copy);
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(root)
        .arg(&copy)
        .status()
        .map_err(|err| format!("cp: {err}"))?;
    if !status.success() {
        return Err(format!(
            "cp -a {} {} failed",
            root.display(),
            copy.display()
        ));
    }
    Ok(copy)
}

/// Runs `command` inside `root` without booting it (as `dpkg -i` is run), with `bind` (host
/// path, container path) mounted read-only. Its output, or why it failed.
pub fn run_in(
    root: &Path,
    bind: Option<(&Path, &str)>,
    command: &[&str],
) -> Result<String, String> {
    let mut nspawn = Command::new("systemd-nspawn");
    nspawn
        // `--pipe`: no terminal, so nothing inside can wait on a prompt.
        .args(["-q", "--pipe", "--register=no", "--keep-unit", "-D"])
        .arg(root);
    if let Some((host, inside)) = bind {
        nspawn.arg(format!("--bind-ro={}:{inside}", host.display()));
    }
    let output = nspawn
        .args(command)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| err.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{command:?} in {}: {text}", root.display()))
    }
}

/// What a boot showed.
pub struct Booted {
    /// `/health` of the agent inside, answered on the host's network.
    pub health_status: u16,
    pub health_body: String,
    /// What the probe unit wrote: `probe` shell commands' output.
    pub probe: String,
}

/// Boots `root` with a probe unit that waits for the agent's `/health` at `addr` to be read by the
/// test, then runs `probe` (shell, its output kept), and powers the container off. `probe` goes
/// into the unit inside single quotes: it may hold no `'`, and no `%` (a unit specifier).
pub fn boot(root: &Path, addr: SocketAddr, probe: &str) -> Booted {
    let units = root.join("etc/systemd/system");
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::fs::write(
        units.join("probe.service"),
        format!(
            "[Unit]\nAfter=mesh-agent.service\n[Service]\nType=oneshot\nExecStart=/bin/sh -c '\
             while [ ! -e /probe.go ]; do sleep 0.1; done; ( {probe} ) > /probe.txt 2>&1; \
             systemctl poweroff'\n"
        ),
    )
    .unwrap();
    let link = wants.join("probe.service");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc/systemd/system/probe.service", &link).unwrap();
    for stale in ["probe.go", "probe.txt"] {
        let _ = std::fs::remove_file(root.join(stale));
    }
    let mut container = Command::new("systemd-nspawn")
        .args(["-q", "-b", "--register=no", "--keep-unit", "-D"])
        .arg(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let health = crate::wait_until(PATIENCE, || {
        http.get(format!("http://{addr}/health"))
            .send()
            .map_err(|err| err.to_string())
            .and_then(|r| {
                let status = r.status();
                r.text()
                    .map_err(|err| err.to_string())
                    .map(|body| (status.as_u16(), body))
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
    assert!(status.success(), "systemd-nspawn: {status}");
    Booted {
        health_status: health.0,
        health_body: health.1,
        probe: std::fs::read_to_string(root.join("probe.txt")).unwrap_or_default(),
    }
}
