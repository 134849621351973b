//! How the agent is installed: the static musl build starts and serves; the `.deb` that
//! `cargo deb` makes installs into a Debian root and its service boots under systemd, enabled,
//! active, answering `/health` as the package's own user; `deploy/install.sh` lays out the same
//! files on a host without dpkg.
//!
//! The static binary and the package are built by `.ci/run` (`cargo deb -p mesh-agent --target
//! x86_64-unknown-linux-musl`), not by this test (a cargo inside cargo test would wait on the
//! build lock); where they have not been built, the tests that need them say so and pass.

use std::path::{Path, PathBuf};
use std::process::Command;

use test_support::nix::sys::signal::{Signal, kill};
use test_support::nix::unistd::Pid;
use test_support::{PATIENCE, bin, container, free_addr, wait_until};

const MUSL: &str = "x86_64-unknown-linux-musl";

/// Cargo's target directory: `bin()` is `<target>/debug/mesh-agent`.
fn target_dir() -> PathBuf {
    Path::new(bin())
        .parent()
        .and_then(Path::parent)
        .expect("the binary sits in <target>/<profile>/")
        .to_path_buf()
}

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn static_binary() -> Option<PathBuf> {
    let path = target_dir().join(MUSL).join("release/mesh-agent");
    path.exists().then_some(path)
}

/// The package of this version, as `cargo deb` names it.
fn package() -> Option<PathBuf> {
    let name = format!("mesh-agent_{}-1_amd64.deb", env!("CARGO_PKG_VERSION"));
    let path = target_dir().join(MUSL).join("debian").join(name);
    path.exists().then_some(path)
}

#[test]
fn the_static_build_has_no_dynamic_dependencies_and_serves() {
    let Some(binary) = static_binary() else {
        eprintln!(
            "skipped: no static build (cargo build --release --target {MUSL} -p mesh-agent; .ci/run makes it)"
        );
        return;
    };
    // A static executable has no program interpreter (`PT_INTERP`): `file` says so.
    let file = Command::new("file").arg(&binary).output().unwrap();
    let described = String::from_utf8_lossy(&file.stdout);
    assert!(
        described.contains("statically linked") || described.contains("static-pie linked"),
        "{described}"
    );
    let data = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = test_support::KillOnDrop(
        Command::new(&binary)
            .args(["run", "--node-id", "static-node", "--http-listen"])
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data.path())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::blocking::Client::new();
    let health = wait_until(PATIENCE, || {
        http.get(format!("http://{addr}/health"))
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
            .map_err(|err| err.to_string())
    });
    assert_eq!(health["node_id"], "static-node", "{health}");
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    assert!(child.0.wait().unwrap().success());
}

#[test]
fn the_package_installs_and_its_service_boots_under_systemd() {
    let Some(deb) = package() else {
        eprintln!("skipped: no .deb (cargo deb -p mesh-agent --target {MUSL}; .ci/run makes it)");
        return;
    };
    if let Some(why) = container::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = match container::debian_root() {
        Ok(root) => root,
        Err(why) => {
            eprintln!("skipped: no Debian root ({why})");
            return;
        }
    };
    let root = container::copy_of(&root, "mesh-agent-debian-package-root").unwrap();
    // What the unit test leaves in the shared root is no package's: dpkg would ask about it.
    for stale in [
        "etc/mesh-agent",
        "usr/bin/mesh-agent",
        "etc/systemd/system/mesh-agent.service",
        "etc/systemd/system/multi-user.target.wants/mesh-agent.service",
    ] {
        let path = root.join(stale);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    let deb_dir = deb.parent().unwrap();
    let deb_name = deb.file_name().unwrap().to_str().unwrap();
    let installed = container::run_in(
        &root,
        Some((deb_dir, "/mnt/pkg")),
        &["dpkg", "-i", &format!("/mnt/pkg/{deb_name}")],
    )
    .unwrap_or_else(|err| panic!("dpkg -i: {err}"));
    // What the package put where.
    for path in [
        "usr/bin/mesh-agent",
        "usr/lib/systemd/system/mesh-agent.service",
        "etc/mesh-agent/agent.toml",
        "etc/mesh-agent/policies",
        "etc/mesh-agent/tokens",
        "usr/share/mesh-agent/policies/README.md",
        "usr/share/mesh-agent/grafana-dashboard.json",
        "usr/share/doc/mesh-agent/README.md",
        "usr/share/doc/mesh-agent/agent.example.toml",
        "usr/lib/sysctl.d/60-mesh-agent.conf",
    ] {
        assert!(
            root.join(path).exists(),
            "the package has no /{path}:\n{installed}"
        );
    }
    let conffiles = container::run_in(
        &root,
        None,
        &["dpkg-query", "-W", "-f=${Conffiles}", "mesh-agent"],
    )
    .unwrap();
    assert!(
        conffiles.contains("/etc/mesh-agent/agent.toml"),
        "{conffiles}"
    );
    // The config is the operator's: here, a port of the test's choosing.
    let addr = free_addr();
    let config = root.join("etc/mesh-agent/agent.toml");
    let shipped = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        shipped.replace(
            "http_listen = \"127.0.0.1:8004\"",
            &format!("http_listen = \"{addr}\""),
        ),
    )
    .unwrap();
    let booted = container::boot(
        &root,
        addr,
        "systemctl show -p ActiveState,UnitFileState,StatusText,NRestarts mesh-agent; \
         echo service-uid=$(grep ^Uid: /proc/$(systemctl show -p MainPID --value mesh-agent)/status | cut -f2); \
         echo user-uid=$(id -u mesh-agent); \
         systemctl reload mesh-agent; \
         for i in $(seq 100); do journalctl -u mesh-agent -o cat | grep -q \"config reloaded\" && break; sleep 0.1; done; \
         systemctl show -p ActiveState mesh-agent; \
         journalctl -u mesh-agent --no-pager -o cat | grep -c \"config reloaded\"; \
         systemctl stop mesh-agent; \
         systemctl show -p Result mesh-agent",
    );
    assert_eq!(booted.health_status, 200, "{}", booted.health_body);
    let lines: Vec<&str> = booted.probe.lines().collect();
    for line in [
        "ActiveState=active",
        "UnitFileState=enabled",
        "StatusText=serving, alone",
        "NRestarts=0",
        "Result=success",
    ] {
        assert!(lines.contains(&line), "no `{line}` in:\n{}", booted.probe);
    }
    // The service runs as the user the package made (DynamicUser= takes the static one).
    let uid = |key: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{}", booted.probe))
            .to_string()
    };
    assert_eq!(uid("service-uid="), uid("user-uid="), "{}", booted.probe);
    assert_ne!(uid("service-uid="), "0", "{}", booted.probe);
    assert!(
        lines.contains(&"1"),
        "the reload is not in the journal:\n{}",
        booted.probe
    );
}

#[test]
fn install_sh_lays_out_the_files_where_dpkg_is_not() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("deploy/install.sh"))
        .arg(bin())
        .env("DESTDIR", root.path())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    for path in [
        "usr/local/bin/mesh-agent",
        "etc/systemd/system/mesh-agent.service",
        "etc/mesh-agent/agent.toml",
        "etc/mesh-agent/policies",
        "etc/mesh-agent/tokens",
        "etc/sysctl.d/60-mesh-agent.conf",
        "usr/local/share/mesh-agent/policies/README.md",
        "usr/local/share/mesh-agent/grafana-dashboard.json",
    ] {
        assert!(root.path().join(path).exists(), "no /{path}:\n{said}");
    }
    let unit =
        std::fs::read_to_string(root.path().join("etc/systemd/system/mesh-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/mesh-agent run"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/bin/mesh-agent"), "{unit}");
    // A second run keeps the operator's config.
    std::fs::write(
        root.path().join("etc/mesh-agent/agent.toml"),
        "log_level = \"debug\"\n",
    )
    .unwrap();
    let again = Command::new(repo().join("deploy/install.sh"))
        .arg(bin())
        .env("DESTDIR", root.path())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/mesh-agent/agent.toml")).unwrap(),
        "log_level = \"debug\"\n"
    );
    // A binary that is not there: a clear error.
    let missing = Command::new(repo().join("deploy/install.sh"))
        .arg(root.path().join("nope"))
        .env("DESTDIR", root.path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no executable at"));
}
