//! The API's locks, end to end on a real agent: bearer tokens by scope on every route class,
//! rotation by SIGHUP, HTTPS with a certificate renewed by SIGHUP, and SIGHUP's other reloads
//! (log level, rate limits) with the keys that wait for a restart named in the log.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::nix::sys::signal::{Signal, kill};
use test_support::{Agent, Options, PATIENCE, event, policy, wait_until};

const READ: &str = "read-0123456789abcdef0123456789abcdef";
const ADMIN: &str = "admin-0123456789abcdef0123456789abcdef";
const WRONG: &str = "wrong-0123456789abcdef0123456789abcdef";

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// One request with an optional bearer token: the status.
fn call(agent: &Agent, method: &str, path: &str, body: Option<Value>, token: Option<&str>) -> u16 {
    let http = reqwest::blocking::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http.request(method, agent.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().unwrap().status().as_u16()
}

/// Waits for the `n`-th "config reloaded" line of the log.
fn wait_reloaded(agent: &Agent, n: usize) {
    wait_until(PATIENCE, || {
        let log = agent.log_text();
        let seen = log.matches("config reloaded").count();
        (seen >= n)
            .then_some(())
            .ok_or_else(|| format!("{seen} reloads logged, waiting for {n}:\n{log}"))
    });
}

#[test]
fn every_route_class_needs_its_scope_and_a_rotated_token_stops_working() {
    let dir = tempfile::tempdir().unwrap();
    let read_file = dir.path().join("read.tokens");
    let admin_file = dir.path().join("admin.tokens");
    write(&read_file, &format!("# services on this node\n{READ}\n"));
    write(&admin_file, ADMIN);
    let agent = Agent::start(
        Options::default()
            .env(
                "MESH_AGENT_AUTH_READ_TOKEN_FILE",
                read_file.display().to_string(),
            )
            .env(
                "MESH_AGENT_AUTH_ADMIN_TOKEN_FILE",
                admin_file.display().to_string(),
            ),
    );
    // (class, method, path, body)
    type Route = (
        &'static str,
        &'static str,
        &'static str,
        fn() -> Option<Value>,
    );
    let routes: Vec<Route> = vec![
        ("read", "GET", "/policies", || None),
        ("read", "GET", "/metrics", || None),
        ("read", "GET", "/audit", || None),
        ("read", "GET", "/v1/policies", || None),
        ("read", "GET", "/v1/data", || None),
        ("evaluate", "POST", "/evaluate", || {
            Some(event("cpu_spike", 5.0, json!({})))
        }),
        ("evaluate", "POST", "/v1/data/x", || {
            Some(json!({"input": {}}))
        }),
        ("admin", "POST", "/policies", || {
            Some(policy("p", "incident.severity >= 1", 1))
        }),
        ("admin", "PUT", "/v1/data/team", || Some(json!({"a": 1}))),
        ("admin", "DELETE", "/v1/data/team", || None),
    ];
    for (class, method, path, body) in &routes {
        let status = |token| call(&agent, method, path, body(), token);
        assert_eq!(status(None), 401, "{method} {path} without a token");
        assert_eq!(
            status(Some(WRONG)),
            401,
            "{method} {path} with a wrong token"
        );
        let with_read = status(Some(READ));
        let with_admin = status(Some(ADMIN));
        if *class == "admin" {
            assert_eq!(with_read, 403, "{method} {path} with a read token");
        } else {
            assert!(
                (200..300).contains(&with_read),
                "{method} {path} with a read token: {with_read}"
            );
        }
        assert!(
            (200..300).contains(&with_admin),
            "{method} {path} with an admin token: {with_admin}"
        );
    }
    // Health is for probes: no token.
    assert_eq!(call(&agent, "GET", "/health", None, None), 200);

    // The answers say what is wrong, in the API's error shape.
    let http = reqwest::blocking::Client::new();
    let refused = http.get(agent.url("/policies")).send().unwrap();
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Bearer realm=\"mesh-agent\""
    );
    let body: Value = refused.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let forbidden: Value = http
        .post(agent.url("/policies"))
        .bearer_auth(READ)
        .json(&policy("q", "incident.severity >= 1", 1))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(forbidden["error"]["code"], "forbidden", "{forbidden}");
    assert!(
        forbidden["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin"),
        "{forbidden}"
    );

    // Rotation: the read file gets a new token; after SIGHUP the old one is refused.
    let rotated = "read-rotated-0123456789abcdef0123456789ab";
    write(&read_file, rotated);
    agent.hangup();
    wait_reloaded(&agent, 1);
    assert_eq!(call(&agent, "GET", "/policies", None, Some(READ)), 401);
    assert_eq!(call(&agent, "GET", "/policies", None, Some(rotated)), 200);
    // A token file taken away: nobody gets in with what it held.
    std::fs::remove_file(&admin_file).unwrap();
    agent.hangup();
    wait_reloaded(&agent, 2);
    assert_eq!(call(&agent, "GET", "/policies", None, Some(ADMIN)), 401);
    assert_eq!(call(&agent, "GET", "/policies", None, Some(rotated)), 200);

    let metrics = http
        .get(agent.url("/metrics"))
        .bearer_auth(rotated)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("http_requests_unauthorized_total{outcome=\"forbidden\"}"),
        "{metrics}"
    );
    // No token, presented or configured, reaches the log.
    let log = agent.log_text();
    for token in [READ, ADMIN, WRONG, rotated] {
        assert!(!log.contains(token), "a token in the log:\n{log}");
    }
}

#[test]
fn sighup_applies_log_level_and_limits_and_names_what_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    write(&config, "log_level = \"info\"\n");
    let agent = Agent::start(
        Options::default()
            .arg("--config")
            .arg(config.display().to_string())
            .unset_env("RUST_LOG"),
    );
    // A connection that sends garbage: the server logs its end at debug.
    let garbage = || {
        let mut stream = std::net::TcpStream::connect(agent.addr).unwrap();
        stream.write_all(b"NOT HTTP\r\n\r\n").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = std::io::Read::read(&mut stream, &mut [0u8; 512]);
    };
    garbage();
    for _ in 0..20 {
        assert_eq!(
            call(
                &agent,
                "POST",
                "/evaluate",
                Some(event("cpu_spike", 5.0, json!({}))),
                None
            ),
            200
        );
    }
    assert!(!agent.log_text().contains("DEBUG"), "{}", agent.log_text());

    write(
        &config,
        "log_level = \"info,agent_http=debug\"\n\
         [limits]\nevaluate_per_second = 1\nevaluate_burst = 2\n\
         [audit]\ncapacity = 5000\n",
    );
    agent.hangup();
    wait_reloaded(&agent, 1);
    garbage();
    wait_until(PATIENCE, || {
        let log = agent.log_text();
        log.contains("DEBUG")
            .then_some(())
            .ok_or_else(|| format!("no debug line after the reload:\n{log}"))
    });
    let statuses: Vec<u16> = (0..20)
        .map(|_| {
            call(
                &agent,
                "POST",
                "/evaluate",
                Some(event("cpu_spike", 5.0, json!({}))),
                None,
            )
        })
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    let log = agent.log_text();
    let restart_line = log
        .lines()
        .find(|line| line.contains("applied only at a restart"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(restart_line.contains("audit.capacity"), "{restart_line}");

    // A config that no longer loads changes nothing: the limit stays.
    write(&config, "log_level = \n");
    agent.hangup();
    wait_until(PATIENCE, || {
        let log = agent.log_text();
        log.contains("the config does not load")
            .then_some(())
            .ok_or(log)
    });
    let statuses: Vec<u16> = (0..10)
        .map(|_| {
            call(
                &agent,
                "POST",
                "/evaluate",
                Some(event("cpu_spike", 5.0, json!({}))),
                None,
            )
        })
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// curl over HTTPS, trusting `ca`: the status, or `None` when TLS failed.
fn curl(url: &str, ca: &Path) -> Option<u16> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl runs");
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && code != 0).then_some(code)
}

#[test]
fn https_serves_the_configured_certificate_and_a_sighup_renews_it() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    for ca in [first.path(), second.path()] {
        let ok = |args: &[&str]| {
            let status = Command::new(test_support::bin())
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "{args:?}");
        };
        let dir = ca.display().to_string();
        ok(&["certs", "init", "--dir", &dir]);
        ok(&["certs", "issue", "--dir", &dir, "--node-id", "localhost"]);
    }
    let live = tempfile::tempdir().unwrap();
    let cert = live.path().join("api.pem");
    let key = live.path().join("api.key");
    let install = |from: &Path| {
        std::fs::copy(from.join("localhost.pem"), &cert).unwrap();
        std::fs::copy(from.join("localhost.key"), &key).unwrap();
    };
    install(first.path());

    let addr = test_support::free_addr();
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = test_support::KillOnDrop(
        Command::new(test_support::bin())
            .args(["run", "--node-id", "tls-node", "--http-listen"])
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .env("MESH_AGENT_HTTP_TLS_CERT_FILE", &cert)
            .env("MESH_AGENT_HTTP_TLS_KEY_FILE", &key)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = test_support::nix::unistd::Pid::from_raw(child.0.id() as i32);
    let url = format!("https://localhost:{}/health", addr.port());
    let first_ca = first.path().join("ca.pem");
    let second_ca = second.path().join("ca.pem");
    wait_until(PATIENCE, || {
        curl(&url, &first_ca)
            .filter(|code| *code == 200)
            .ok_or_else(|| std::fs::read_to_string(&log_path).unwrap_or_default())
    });
    assert_eq!(
        curl(&url, &second_ca),
        None,
        "served a certificate of the other CA"
    );
    // Plain HTTP gets no answer from an HTTPS port.
    let plain = reqwest::blocking::Client::new()
        .get(format!("http://{addr}/health"))
        .timeout(Duration::from_secs(10))
        .send();
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    install(second.path());
    kill(pid, Signal::SIGHUP).unwrap();
    wait_until(PATIENCE, || {
        curl(&url, &second_ca)
            .filter(|code| *code == 200)
            .ok_or_else(|| std::fs::read_to_string(&log_path).unwrap_or_default())
    });
    assert_eq!(
        curl(&url, &first_ca),
        None,
        "the old certificate is still served"
    );
    // The operator's view speaks HTTPS with the CA given.
    let shown = Command::new(test_support::bin())
        .args(["status", "--once", "--url"])
        .arg(format!("https://localhost:{}", addr.port()))
        .arg("--cacert")
        .arg(&second_ca)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.status.success() && text.contains("node tls-node"),
        "{text}{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    kill(pid, Signal::SIGTERM).unwrap();
    assert!(child.0.wait().unwrap().success());
}

/// `mesh-agent status --once`: what an operator sees, read with a read token; without one, a
/// clear refusal and a non-zero exit.
#[test]
fn status_shows_the_local_agent_with_a_read_token() {
    let dir = tempfile::tempdir().unwrap();
    let read_file = dir.path().join("read.tokens");
    write(&read_file, READ);
    let agent = Agent::start(Options::default().node_id("status-node").env(
        "MESH_AGENT_AUTH_READ_TOKEN_FILE",
        read_file.display().to_string(),
    ));
    let http = reqwest::blocking::Client::new();
    let evaluated = http
        .post(agent.url("/evaluate"))
        .bearer_auth(READ)
        .json(&event("disk_full", 6.0, json!({})))
        .send()
        .unwrap();
    assert_eq!(evaluated.status(), 200);
    let status = |token: Option<&Path>| {
        let mut cmd = Command::new(test_support::bin());
        cmd.args(["status", "--once", "--url"])
            .arg(format!("http://{}", agent.addr));
        if let Some(token) = token {
            cmd.arg("--token-file").arg(token);
        }
        cmd.output().unwrap()
    };
    let shown = wait_until(PATIENCE, || {
        let out = status(Some(&read_file));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("disk_full"))
            .then_some(text.clone())
            .ok_or(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    });
    assert!(shown.contains("node status-node"), "{shown}");
    assert!(shown.contains("members: 1 alive"), "{shown}");
    assert!(shown.contains("upstream: none"), "{shown}");
    let refused = status(None);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("401"), "{said}");
}

/// The collector takes the same locks: a read token, and a per-client rate.
#[test]
fn the_collector_needs_a_token_and_rate_limits_each_client() {
    let dir = tempfile::tempdir().unwrap();
    let read_file = dir.path().join("read.tokens");
    write(&read_file, READ);
    let space = test_support::mqtt::Space::new();
    let collector = test_support::mqtt::Collector::start_with(
        test_support::mqtt::broker(),
        &space.client_id("collector"),
        &space.summaries_topic(),
        &space.actions_topic(),
        &[
            "--rate-per-second".into(),
            "1".into(),
            "--rate-burst".into(),
            "3".into(),
            "--read-token-file".into(),
            read_file.display().to_string(),
        ],
    );
    let http = reqwest::blocking::Client::new();
    let get = |token: Option<&str>| {
        let mut request = http.get(collector.url("/collector/nodes"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().unwrap()
    };
    assert_eq!(get(None).status(), 401);
    assert_eq!(get(Some(WRONG)).status(), 401);
    let answers: Vec<reqwest::blocking::Response> = (0..20).map(|_| get(Some(READ))).collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses[0], 200, "{statuses:?}");
    let limited = answers
        .iter()
        .find(|r| r.status() == 429)
        .unwrap_or_else(|| panic!("nothing limited: {statuses:?}"));
    assert!(limited.headers().contains_key("retry-after"));
}
