//! Hostile and careless input against a real agent: each case is refused or bounded, and the
//! agent keeps serving. The rows of SECURITY.md's table point here.

use test_support as common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Agent, Options, event, policy};
use serde_json::{Value, json};

/// `/health` on a connection of its own: a kept-alive one from before may be the idle connection
/// a flood evicts, which is the server doing its job, not the check failing.
fn healthy(agent: &Agent) {
    let fresh = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(test_support::PATIENCE)
        .build()
        .unwrap();
    let response = fresh.get(agent.url("/health")).send().expect("/health");
    let status = response.status();
    let body = response.text().unwrap_or_default();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn recursive_rego_is_refused_and_never_evaluated() {
    let agent = Agent::start(Options::default());
    for (id, text) in [
        ("rec1", "package rec1\np := q\nq := p\n"),
        ("rec2", "package rec2\nf(x) := f(x)\np := f(1)\n"),
        ("rec3", "package rec3\ns contains x if { some x in s }\n"),
    ] {
        let (status, body) = agent.put_text(&format!("/v1/policies/{id}"), text);
        assert_eq!(status, 400, "{id}: {body}");
        assert_eq!(body["code"], "invalid_parameter", "{body}");
        assert_eq!(body["errors"][0]["code"], "rego_recursion_error", "{body}");
        assert_eq!(body["errors"][0]["location"]["file"], id, "{body}");
        // Nothing was stored: the query is undefined, and the agent is still here.
        let (status, body) = agent.post(&format!("/v1/data/{id}/p"), &json!({"input": {}}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.get("result"), None, "{body}");
        healthy(&agent);
    }
    // An incident rule naming it cannot be saved either: the path is not defined.
    let (status, _) = agent.get("/v1/policies/rec1");
    assert_eq!(status, 404);
}

#[test]
fn deeply_nested_rego_is_refused_at_once_and_stop_is_prompt() {
    let mut agent = Agent::start(Options::default());
    let text = format!(
        "package nest\np := {}1{}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let (status, body) = agent.put_text("/v1/policies/nest", &text);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["code"], "rego_parse_error", "{body}");
    assert_eq!(body["errors"][0]["location"]["row"], 2, "{body}");
    // Many moderately nested literals: refused by their total cost.
    let line = format!("{}1{}", "[".repeat(10), "]".repeat(10));
    let many: String = (0..200).map(|i| format!("q{i} := {line}\n")).collect();
    let (status, body) = agent.put_text("/v1/policies/many", &format!("package many\n{many}"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too long to parse"),
        "{body}"
    );
    // The write lock was not held: another module saves.
    let (status, body) = agent.put_text("/v1/policies/ok", "package ok\nallow := true\n");
    assert_eq!(status, 200, "{body}");
    assert!(agent.terminate().success());
}

#[test]
fn a_condition_with_hundreds_of_regexes_is_refused() {
    let agent = Agent::start(Options::default());
    let condition = (0..300)
        .map(|i| format!("incident.type.matches('\\\\w{{20}}N{i}')"))
        .collect::<Vec<_>>()
        .join(" or ");
    let (status, body) = agent.post("/policies", &policy("regexes", &condition, 1));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "definition.condition", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 16"),
        "{body}"
    );
    healthy(&agent);
}

#[test]
fn the_audit_ring_is_bounded_in_bytes_and_read_in_pages() {
    let agent = Agent::start(Options::default().env("MESH_AGENT_AUDIT_MAX_BYTES", "6000000"));
    let blob = "x".repeat(700_000);
    for i in 0..12 {
        let (status, body) = agent.post(
            "/evaluate",
            &json!({"event_type": "big", "severity": 1, "event_id": format!("big-{i}"),
                    "context": {"blob": blob}}),
        );
        assert_eq!(status, 200, "{body}");
    }
    agent.wait_audit_head(12);
    let (_, first) = agent.get("/audit?limit=10000");
    // 12 entries of 700 KB do not fit in 6 MB: the oldest went.
    let mut seen: Vec<String> = Vec::new();
    let mut page = first;
    loop {
        for entry in page["entries"].as_array().unwrap() {
            seen.push(entry["event_id"].as_str().unwrap().to_owned());
        }
        match page.get("next_before").and_then(Value::as_u64) {
            Some(before) => page = agent.get(&format!("/audit?limit=10000&before={before}")).1,
            None => break,
        }
    }
    assert!(seen.len() < 12 && seen.len() >= 6, "{seen:?}");
    assert_eq!(seen[0], "big-11", "newest first");
    let expected: Vec<String> = (12 - seen.len()..12)
        .rev()
        .map(|i| format!("big-{i}"))
        .collect();
    assert_eq!(seen, expected, "pages neither skip nor repeat");
    let (_, all) = agent.get("/audit?limit=10000");
    assert!(
        all.get("next_before").is_some(),
        "a 4 MB page cap splits 6 MB"
    );
    healthy(&agent);
}

#[test]
fn a_batch_with_too_many_results_is_refused_before_evaluation() {
    let agent = Agent::start(Options::default());
    for i in 0..100 {
        let (status, body) = agent.post(
            "/policies",
            &policy(&format!("p{i}"), "incident.severity >= 1", i),
        );
        assert_eq!(status, 201, "{body}");
    }
    let events: Vec<Value> = (0..5000)
        .map(|i| json!({"event_type": "t", "severity": 1, "event_id": format!("e{i}")}))
        .collect();
    let (status, body) = agent.post("/evaluate/batch", &Value::from(events));
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 500 events"),
        "{body}"
    );
    let (_, audit) = agent.get("/audit");
    assert_eq!(audit["head"], 0, "nothing was recorded");
    let events: Vec<Value> = (0..500)
        .map(|i| json!({"event_type": "t", "severity": 1, "event_id": format!("e{i}")}))
        .collect();
    let (status, body) = agent.post("/evaluate/batch", &Value::from(events));
    assert_eq!(status, 200, "{body}");
}

/// Reads until the peer closes; `true` if it did within `patience`.
fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    stream.set_read_timeout(Some(patience)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn idle_and_slow_connections_are_closed() {
    let agent = Agent::start(
        Options::default()
            .env("MESH_AGENT_HTTP_IDLE_TIMEOUT_MS", "500")
            .env("MESH_AGENT_HTTP_HEADER_READ_TIMEOUT_MS", "500"),
    );
    // An idle connection and one that trickles half a header are both closed.
    let mut idle = TcpStream::connect(agent.addr).unwrap();
    let mut slow = TcpStream::connect(agent.addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(10)));
    assert!(closed_within(&mut slow, Duration::from_secs(10)));
    healthy(&agent);
}

#[test]
fn a_connection_flood_does_not_lock_out_health() {
    // Timeouts far longer than the test: every connection closed here was evicted.
    let agent = Agent::start(
        Options::default()
            .env("MESH_AGENT_HTTP_MAX_CONNECTIONS", "40")
            .env("MESH_AGENT_HTTP_IDLE_TIMEOUT_MS", "600000")
            .env("MESH_AGENT_HTTP_HEADER_READ_TIMEOUT_MS", "600000"),
    );
    // 200 idle sockets, half of them with half a header, against a cap of 40: the longest idle
    // go, and a health check still gets through.
    let flood: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut stream = TcpStream::connect(agent.addr).unwrap();
            if i % 2 == 0 {
                stream.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
            }
            stream
        })
        .collect();
    for _ in 0..5 {
        healthy(&agent);
    }
    // On a fresh connection too (see `healthy`).
    let metrics = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
        .get(agent.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap()
            .parse()
            .unwrap()
    };
    // Every accept past the cap evicted one: at least 200 - 40.
    assert!(
        value("http_connections_evicted_total") >= 160.0,
        "{metrics}"
    );
    assert!(value("http_connections") <= 41.0, "{metrics}");
    drop(flood);
}

#[test]
fn errors_are_json_for_wrong_methods_and_events_must_be_objects_with_ids() {
    let agent = Agent::start(Options::default());
    let response = reqwest::blocking::Client::new()
        .delete(agent.url("/evaluate"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");

    let (status, body) = agent.post_raw("/evaluate", r#"["memory_leak", 9, {}, null, "a"]"#);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON object"),
        "{body}"
    );
    let (status, body) = agent.post(
        "/evaluate",
        &json!({"event_type": "x", "severity": 1, "event_id": ""}),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "event_id", "{body}");
    let (status, _) = agent.post_raw("/evaluate/batch", r#"[["x", 1]]"#);
    assert_eq!(status, 422);
    healthy(&agent);
}

#[test]
fn identical_events_without_id_are_one_incident_within_the_window_across_a_restart() {
    let mut agent = Agent::start(Options::default());
    let (_, created) = agent.post("/policies", &policy("any", "incident.severity >= 1", 1));
    assert!(created["id"].is_u64());
    let body = event("memory_leak", 9.0, json!({"service": "a"}));
    let id = |agent: &Agent| agent.post("/evaluate", &body).1[0]["event_id"].clone();
    let first = id(&agent);
    assert_eq!(first, id(&agent), "a retry within the window keeps its id");
    // A restart inside the window: the window is re-opened from the audit ring.
    agent.wait_audit_head(2);
    assert!(agent.terminate().success());
    agent.restart();
    assert_eq!(
        first,
        id(&agent),
        "a redelivery after a restart keeps its id"
    );
}

#[test]
fn identical_events_without_id_after_the_window_are_a_new_incident() {
    let agent = Agent::start(Options::default().env("MESH_AGENT_DEDUP_WINDOW_SEC", "1"));
    let (_, created) = agent.post("/policies", &policy("any", "incident.severity >= 1", 1));
    assert!(created["id"].is_u64());
    let body = event("memory_leak", 9.0, json!({"service": "a"}));
    let id = |agent: &Agent| agent.post("/evaluate", &body).1[0]["event_id"].clone();
    let first = id(&agent);
    std::thread::sleep(Duration::from_millis(1100));
    let later = id(&agent);
    assert_ne!(
        first, later,
        "a recurrence after the window is a new incident"
    );
}

#[test]
fn rego_data_is_bounded_in_bytes() {
    let agent = Agent::start(Options::default().env("MESH_AGENT_REGO_MAX_DATA_BYTES", "3000000"));
    let doc = json!({"blob": "d".repeat(900_000)});
    for i in 0..3 {
        let (status, body) = agent.put(&format!("/v1/data/docs/d{i}"), &doc);
        assert_eq!(status, 204, "{body}");
    }
    let (status, body) = agent.put("/v1/data/docs/d3", &doc);
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("rego.max_data_bytes"),
        "{body}"
    );
    let (status, _) = agent.get("/v1/data/docs/d3");
    assert_eq!(status, 200);
    let (_, body) = agent.get("/v1/data/docs/d3");
    assert_eq!(body.get("result"), None, "nothing was stored: {body}");
    // Shrinking is allowed.
    let (status, body) = agent.put("/v1/data/docs/d0", &json!({"small": true}));
    assert_eq!(status, 204, "{body}");
    healthy(&agent);
}

/// The most memory the agent's process has held (`VmHWM`), in bytes.
fn peak_rss(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn a_rego_evaluation_that_would_take_gigabytes_stops_at_the_memory_limit() {
    // A time limit far away: only the memory limit can stop it.
    let agent = Agent::start(
        Options::default()
            .env("MESH_AGENT_REGO_TIME_LIMIT_MS", "60000")
            .env("MESH_AGENT_REGO_MAX_MEMORY_BYTES", "268435456"),
    );
    let (status, body) = agent.put_text(
        "/v1/policies/r",
        "package r\n\nx := {i | some i in numbers.range(1, 100000000)}\n\nsmall := count(numbers.range(1, 10))\n",
    );
    assert_eq!(status, 200, "{body}");
    for _ in 0..2 {
        let (status, body) = agent.post("/v1/data/r/x", &json!({"input": {}}));
        assert_eq!(status, 200, "{body}");
        assert!(
            body.to_string().contains("rego.max_memory_bytes"),
            "answered by the fail mode, saying why: {body}"
        );
    }
    // 100,000,000 numbers would take gigabytes.
    assert!(
        peak_rss(&agent) < 1024 * 1024 * 1024,
        "{}",
        peak_rss(&agent)
    );
    let (status, body) = agent.post("/v1/data/r/small", &json!({"input": {}}));
    assert_eq!((status, body["result"].clone()), (200, json!(10)), "{body}");
    healthy(&agent);
}
