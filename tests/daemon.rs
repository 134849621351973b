//! End to end: the daemon's life. Restarts, crashes, the audit ring's bound and durability, policy
//! file import, config checking and log formats.

use test_support as common;

use std::process::Command;
use std::time::Duration;

use common::{Agent, Options, bin, event, policies_dir, policy};
use serde_json::{Value, json};

fn entry_seqs(page: &Value) -> Vec<u64> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn policies_and_audit_survive_a_restart() {
    let mut agent = Agent::start(Options::default());
    let (_, created) = agent.post("/policies", &policy("kept", "incident.severity >= 5", 3));
    let (_, updated) = agent.put(
        &format!("/policies/{}", created["id"]),
        &json!({"priority": 4}),
    );
    agent.post("/evaluate", &event("x", 7.0, json!({})));
    agent.wait_audit_head(1);

    let status = agent.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    agent.restart();

    let (status, after) = agent.get(&format!("/policies/{}", created["id"]));
    assert_eq!(status, 200);
    assert_eq!(after, updated);
    let (_, versions) = agent.get(&format!("/policies/{}/versions", created["id"]));
    assert_eq!(versions.as_array().unwrap().len(), 2);
    // The restored policy is evaluated, and the audit continues where it was.
    let (_, results) = agent.post("/evaluate", &event("x", 7.0, json!({})));
    assert_eq!(results[0]["matched"], true);
    let page = agent.wait_audit_head(2);
    assert_eq!(entry_seqs(&page), [2]);
    let (_, created2) = agent.post("/policies", &policy("next", "incident.severity >= 5", 3));
    assert!(
        created2["id"].as_u64() > created["id"].as_u64(),
        "ids keep increasing after a restart"
    );
}

#[test]
fn the_audit_ring_keeps_the_newest_entries_up_to_its_capacity() {
    let mut agent = Agent::start(Options::default().env("MESH_AGENT_AUDIT_CAPACITY", "5"));
    agent.post("/policies", &policy("p", "incident.severity >= 5", 0));
    for i in 0..12 {
        agent.post("/evaluate", &event(&format!("e{i}"), i as f64, json!({})));
    }
    agent.wait_audit_head(12);
    let (_, page) = agent.get("/audit?limit=100");
    assert_eq!(entry_seqs(&page), [12, 11, 10, 9, 8]);
    assert_eq!(page["entries"][0]["input"]["event_type"], "e11");
    assert_eq!(page["capacity"], 5);

    // Restarted with a smaller capacity (from a config file this time), the ring is trimmed to it,
    // oldest first.
    agent.terminate();
    let config = agent.data_dir.parent().unwrap().join("agent.toml");
    std::fs::write(&config, "[audit]\ncapacity = 3\n").unwrap();
    agent.restart_with(
        Options::default()
            .arg("--config")
            .arg(config.to_string_lossy()),
    );
    let (_, page) = agent.get("/audit?limit=100");
    assert_eq!(entry_seqs(&page), [12, 11, 10]);
    assert_eq!(page["capacity"], 3);
}

#[test]
fn a_crash_loses_at_most_the_last_commit_interval() {
    let interval_ms = 100;
    let mut agent = Agent::start(Options::default().env(
        "MESH_AGENT_AUDIT_COMMIT_INTERVAL_MS",
        interval_ms.to_string(),
    ));
    for i in 0..30 {
        agent.post("/evaluate", &event(&format!("e{i}"), 1.0, json!({})));
    }
    // Everything accepted more than one commit interval ago is on disk, so SIGKILL cannot take it.
    std::thread::sleep(Duration::from_millis(interval_ms * 5));
    agent.crash();
    agent.restart();
    let (_, page) = agent.get("/audit?limit=100");
    assert_eq!(page["entries"].as_array().unwrap().len(), 30, "{page}");
    assert_eq!(page["head"], 30);
}

#[test]
fn a_clean_shutdown_flushes_the_audit_queue() {
    // With a one-minute interval nothing is committed on its own before SIGTERM: the flush must do it.
    let mut agent =
        Agent::start(Options::default().env("MESH_AGENT_AUDIT_COMMIT_INTERVAL_MS", "60000"));
    for i in 0..10 {
        agent.post("/evaluate", &event(&format!("e{i}"), 1.0, json!({})));
    }
    assert!(agent.terminate().success());
    agent.restart();
    let (_, page) = agent.get("/audit?limit=100");
    assert_eq!(page["head"], 10, "{page}");
    assert!(agent.log_text().contains("audit ring flushed"));
}

#[test]
fn importing_policy_files_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("recovery.rules.toml");
    std::fs::copy(policies_dir().join("incidents/recovery.rules.toml"), &rules).unwrap();
    let options = Options::default()
        .arg("--policies")
        .arg(tmp.path().to_string_lossy());
    let mut agent = Agent::start(options);
    let (_, first) = agent.get("/policies");
    assert_eq!(first.as_array().unwrap().len(), 4);

    agent.terminate();
    agent.restart();
    let (_, again) = agent.get("/policies");
    assert_eq!(again, first, "re-importing the same files changes nothing");
    assert_eq!(agent.get("/health").1["policy_revision"], 4);

    // A changed file updates the policy of that name (a new version), and only that one.
    let text = std::fs::read_to_string(&rules)
        .unwrap()
        .replace("severity >= 8", "severity >= 7");
    std::fs::write(&rules, text).unwrap();
    agent.terminate();
    agent.restart();
    let (_, list) = agent.get("/policies");
    let leak = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "memory_leak_recovery")
        .unwrap();
    assert_eq!(leak["version"], 2);
    assert_eq!(
        leak["definition"]["condition"],
        "incident.type == 'memory_leak' and incident.severity >= 7"
    );
    assert_eq!(agent.get("/health").1["policy_revision"], 5);
}

#[test]
fn a_bad_policy_file_stops_the_start_and_says_where() {
    let start_with = |file: &str, text: &str| {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(file), text).unwrap();
        let out = Command::new(bin())
            .args(["run", "--http-listen", "127.0.0.1:0", "--policies"])
            .arg(tmp.path())
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = start_with(
        "broken.rules.toml",
        "[[policy]]\nname = \"b\"\n[policy.definition]\ncondition = \"incident.severity >\"\naction = \"a\"\n",
    );
    assert!(
        stderr.contains("broken.rules.toml") && stderr.contains("definition.condition"),
        "{stderr}"
    );
    let stderr = start_with(
        "broken.rego",
        "package broken\n\nallow if {\n  input.x ==\n}\n",
    );
    assert!(
        stderr.contains("broken.rego") && stderr.contains("rego_parse_error"),
        "{stderr}"
    );
}

/// Runs `mesh-agent check-config FILE`.
fn check_config(file: &std::path::Path) -> std::process::Output {
    Command::new(bin())
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn check_config_says_exactly_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        "node_id = \"edge-7\"\nhttp_listen = \"0.0.0.0:8004\"\n[audit]\ncapacity = 500\n",
    )
    .unwrap();
    let out = check_config(&good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok") && stdout.contains("capacity = 500"),
        "{stdout}"
    );
    // The unit runs it before every start, into the journal: the broker password is not shown.
    let secret = tmp.path().join("secret.toml");
    std::fs::write(
        &secret,
        "[mqtt]\nurl = \"mqtt://b:1883\"\nusername = \"u\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let out = check_config(&secret);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("(set, not shown)"), "{stdout}");

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "node_id = \"edge-7\"\n\n[audit]\ncapacty = 500\n").unwrap();
    let out = check_config(&bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 4") && stderr.contains("capacty"),
        "{stderr}"
    );

    let out = Command::new(bin())
        .arg("check-config")
        .arg(&good)
        .env("MESH_AGENT_HTTP_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MESH_AGENT_HTTP_LISTEN"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut agent = Agent::start(Options::default().arg("--log-format").arg("json"));
    agent.terminate();
    let log = agent.log_text();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            parsed["level"].is_string() && parsed["message"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn the_example_config_is_valid() {
    let example = policies_dir().join("../deploy/agent.example.toml");
    let out = check_config(&example);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("node_id = \"edge-01\""), "{stdout}");
}

#[test]
fn policy_test_runs_the_cases_and_fails_on_a_wrong_one() {
    let out = Command::new(bin())
        .args(["policy", "test"])
        .arg(policies_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(
        passed >= 75 && summary.ends_with(" passed, 0 failed"),
        "{summary}"
    );

    // A case that expects the wrong answer fails the run and says which case and why.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        policies_dir().join("incidents/recovery.rules.toml"),
        tmp.path().join("recovery.rules.toml"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("recovery.cases.toml"),
        "[[case]]\nname = \"leak must not match\"\nevent = { event_type = \"memory_leak\", severity = 9 }\nmatches = []\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["policy", "test"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL:") && stdout.contains("leak must not match"),
        "{stdout}"
    );
    assert!(
        stdout.contains("memory_leak_recovery") && stdout.ends_with("0 passed, 1 failed\n"),
        "{stdout}"
    );
}

#[test]
fn a_failed_commit_stops_the_agent_non_zero_and_a_restart_carries_on() {
    // The data file cannot grow past 4 MiB: a commit that needs more fails (EFBIG), as on a full
    // disk. redb refuses every later write on that handle, so the agent must not carry on: it
    // shuts down and exits non-zero, for systemd to start it again on a fresh handle.
    let mut agent = Agent::start(Options::default().file_limit(4 << 20));
    let (status, created) = agent.post("/policies", &policy("leak", "incident.type == 'leak'", 1));
    assert_eq!(status, 201, "{created}");
    let blob = "x".repeat(100_000);
    let http = reqwest::blocking::Client::new();
    let deadline = std::time::Instant::now() + common::PATIENCE;
    let exit = loop {
        if let Some(status) = agent.exited() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running:\n{}",
            agent.log_text()
        );
        // Answers do not matter here (the agent may be going away); the file grows.
        let _ = http
            .post(agent.url("/evaluate"))
            .json(&event("leak", 9.0, json!({"blob": blob})))
            .send();
    };
    assert_eq!(exit.code(), Some(1), "{}", agent.log_text());
    let log = agent.log_text();
    assert!(
        log.contains("fatal fault") && log.contains("File too large"),
        "{log}"
    );

    // Started again with room to grow, on the same file: what was committed is there.
    agent.restart_with(Options::default());
    let (status, listed) = agent.get("/policies");
    assert_eq!(status, 200);
    assert_eq!(listed[0]["name"], "leak", "{listed}");
    let (status, _) = agent.post("/evaluate", &event("leak", 9.0, json!({})));
    assert_eq!(status, 200);
}
