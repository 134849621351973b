//! End to end over HTTP: every route of the P0.4 API and every error status, on a real agent.

use test_support as common;

use common::{Agent, Options, event, policies_dir, policy};
use serde_json::{Value, json};

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect()
}

#[test]
fn policy_crud_follows_p04() {
    let agent = Agent::start(Options::default());

    let (status, created) = agent.post("/policies", &policy("low", "incident.severity >= 1", 1));
    assert_eq!(status, 201, "{created}");
    let low_id = created["id"].as_u64().unwrap();
    assert!(low_id < (1 << 53));
    assert_eq!(created["name"], "low");
    assert_eq!(created["description"], "low description");
    assert_eq!(created["definition"]["condition"], "incident.severity >= 1");
    assert_eq!(created["definition"]["modifiers"], json!({"k": "low"}));
    assert_eq!(created["definition"]["reversibility_sec"], 60);
    assert_eq!(
        (created["active"].clone(), created["priority"].clone()),
        (json!(true), json!(1))
    );
    assert_eq!(created["version"], 1);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["created_at"], created["updated_at"]);

    let (_, high) = agent.post("/policies", &policy("high", "incident.severity >= 9", 50));
    let mut idle = policy("idle", "incident.severity >= 0", 100);
    idle["active"] = json!(false);
    let (_, idle) = agent.post("/policies", &idle);

    // Highest priority first; inactive ones only without active_only.
    let (status, all) = agent.get("/policies");
    assert_eq!(status, 200);
    assert_eq!(names(&all), ["idle", "high", "low"]);
    let (_, active) = agent.get("/policies?active_only=true");
    assert_eq!(names(&active), ["high", "low"]);

    let (status, one) = agent.get(&format!("/policies/{low_id}"));
    assert_eq!(status, 200);
    assert_eq!(one, created);

    // Partial update: only the fields given change; a definition key keeps the others.
    let (status, updated) = agent.put(
        &format!("/policies/{low_id}"),
        &json!({"priority": 75, "definition": {"condition": "incident.severity >= 2"}}),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["priority"], 75);
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["definition"]["condition"], "incident.severity >= 2");
    assert_eq!(updated["definition"]["action"], "act_low");
    assert_eq!(updated["name"], "low");
    assert_eq!(updated["created_at"], created["created_at"]);
    let (_, renamed) = agent.put(
        &format!("/policies/{low_id}"),
        &json!({"name": "renamed", "active": false}),
    );
    assert_eq!(
        (renamed["name"].as_str(), renamed["active"].as_bool()),
        (Some("renamed"), Some(false))
    );

    // A policy read with GET can be sent back with PUT unchanged (read-only fields are ignored).
    let (status, echoed) = agent.put(&format!("/policies/{}", high["id"]), &high);
    assert_eq!(status, 200, "{echoed}");
    assert_eq!(echoed["version"], 2);

    let (status, body) = agent.delete(&format!("/policies/{}", idle["id"]));
    assert_eq!((status, body), (204, Value::Null));
    let (status, _) = agent.get(&format!("/policies/{}", idle["id"]));
    assert_eq!(status, 404);

    // Every change is kept.
    let (status, versions) = agent.get(&format!("/policies/{low_id}/versions"));
    assert_eq!(status, 200);
    let ops: Vec<(&str, u64)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["op"].as_str().unwrap(),
                v["policy"]["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ops, [("create", 1), ("update", 2), ("update", 3)]);
    let (_, idle_versions) = agent.get(&format!("/policies/{}/versions", idle["id"]));
    assert_eq!(
        idle_versions.as_array().unwrap().last().unwrap()["op"],
        "delete"
    );

    let (_, health) = agent.get("/health");
    assert_eq!(health["status"], "healthy");
    assert!(health["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(health["policy_revision"], 7);
    assert_eq!(health["active_policies"], 1);
}

#[test]
fn errors_have_the_documented_statuses_and_say_what_is_wrong() {
    let agent = Agent::start(Options::default().env("MESH_AGENT_MAX_BODY_BYTES", "4096"));
    let (_, first) = agent.post("/policies", &policy("first", "incident.severity > 1", 0));
    let (_, second) = agent.post("/policies", &policy("second", "incident.severity > 1", 0));

    // 404 for an unknown id, on every verb.
    for (status, body) in [
        agent.get("/policies/12345"),
        agent.put("/policies/12345", &json!({"priority": 1})),
        agent.delete("/policies/12345"),
        agent.get("/policies/12345/versions"),
    ] {
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        assert!(body["error"]["message"].as_str().unwrap().contains("12345"));
    }

    // 409 for a duplicate name, on create and on rename; nothing changes.
    let (status, body) = agent.post("/policies", &policy("first", "incident.severity > 1", 0));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "duplicate_name");
    assert_eq!(body["error"]["existing_id"], first["id"]);
    let (status, _) = agent.put(
        &format!("/policies/{}", second["id"]),
        &json!({"name": "first"}),
    );
    assert_eq!(status, 409);
    assert_eq!(
        agent.get(&format!("/policies/{}", second["id"])).1["name"],
        "second"
    );

    // 422 for an invalid definition: which field, and for a condition the column.
    let (status, body) = agent.post(
        "/policies",
        &policy("bad", "incident.type == 'x' and incident.severity >", 0),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_policy");
    assert_eq!(body["error"]["field"], "definition.condition");
    assert_eq!(
        body["error"]["column"], 45,
        "just past the end, where a value was expected"
    );
    let (status, body) = agent.post("/policies", &policy("bad", "incident.sevrity > 1", 0));
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sevrity"),
        "{body}"
    );
    let mut no_action = policy("bad", "incident.severity > 1", 0);
    no_action["definition"]["action"] = json!("");
    let (status, body) = agent.post("/policies", &no_action);
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("definition.action"))
    );
    let mut typo = policy("bad", "incident.severity > 1", 0);
    typo["definition"]["conditon"] = json!("x");
    let (status, body) = agent.post("/policies", &typo);
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("conditon"),
        "{body}"
    );
    let (status, body) = agent.post("/policies", &json!({"name": "bad"}));
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("definition"))
    );
    let mut negative = policy("bad", "incident.severity > 1", 0);
    negative["definition"]["reversibility_sec"] = json!(-5);
    let (status, body) = agent.post("/policies", &negative);
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("definition.reversibility_sec"))
    );
    let (status, _) = agent.put(
        &format!("/policies/{}", first["id"]),
        &json!({"definition": {"condition": "incident.severity >>> 1"}}),
    );
    assert_eq!(status, 422);
    let (status, body) = agent.get("/policies/not-a-number");
    assert_eq!(status, 422, "{body}");

    // 400 for malformed JSON, with where.
    let (status, body) = agent.post_raw("/policies", "{\"name\": \"x\",");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "malformed_json");
    assert_eq!(body["error"]["line"], 1);
    let (status, _) = agent.post_raw("/evaluate", "{\"event_type\": 'single quotes'}");
    assert_eq!(status, 400);

    // 413 over the configured limit.
    let big = json!({"event_type": "x", "severity": 1, "context": {"blob": "y".repeat(5000)}});
    let (status, body) = agent.post("/evaluate", &big);
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    // 422 for an event without a required field, naming it.
    let (status, body) = agent.post("/evaluate", &json!({"event_type": "x"}));
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("severity")),
        "{body}"
    );

    let (status, body) = agent.get("/no/such/route");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // None of the refused writes changed anything.
    let (_, list) = agent.get("/policies");
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(agent.get("/health").1["policy_revision"], 2);
    assert!(
        agent.metrics().contains("policy_evaluation_errors_total 2"),
        "{}",
        agent.metrics()
    );
}

#[test]
fn evaluate_matches_the_seed_rules_and_audits() {
    // The P0.4 seed's four rules (policies/mesh holds the mesh-wide examples).
    let agent = Agent::start(
        Options::default()
            .arg("--policies")
            .arg(policies_dir().join("incidents").to_string_lossy()),
    );
    let (_, list) = agent.get("/policies?active_only=true");
    assert_eq!(
        names(&list),
        [
            "memory_leak_recovery",
            "disk_full_cleanup",
            "cpu_spike_scale_out",
            "network_latency_reroute"
        ]
    );

    let mut leak = event(
        "memory_leak",
        9.0,
        json!({"service": "payment-api", "memory_usage_mb": 8192}),
    );
    leak["timestamp"] = json!("2025-10-20T12:00:00");
    leak["event_id"] = json!("evt-1");
    let (status, results) = agent.post("/evaluate", &leak);
    assert_eq!(status, 200, "{results}");
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 4, "one entry per active policy");
    let first = &results[0];
    assert_eq!(first["policy_name"], "memory_leak_recovery");
    assert_eq!(first["matched"], true);
    assert_eq!(first["action"], "trigger_p0_3_recovery");
    assert_eq!(
        first["modifiers"],
        json!({"swap_increase": "2x", "threshold": 90})
    );
    assert_eq!(first["reversibility_sec"], 300);
    assert_eq!(first["event_id"], "evt-1");
    assert!(first["execution_time_ms"].as_f64().unwrap() >= 0.0);
    assert!(first["policy_id"].as_u64().is_some());
    for other in &results[1..] {
        assert_eq!(other["matched"], false);
        assert_eq!(other["action"], Value::Null);
    }

    // A missing field makes the comparison false and is reported.
    let (_, results) = agent.post("/evaluate", &event("cpu_spike", 5.0, json!({})));
    let cpu = results
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["policy_name"] == "cpu_spike_scale_out")
        .unwrap();
    assert_eq!(cpu["matched"], false);
    assert_eq!(cpu["missing_fields"], json!(["incident.context.load_avg"]));
    let assigned = cpu["event_id"].as_str().unwrap().to_owned();
    assert!(!assigned.is_empty(), "an event without id gets one");

    // Dry runs record nothing: after one dry run and one real evaluation, the newest entry is the real one.
    let (status, _) = agent.post(
        "/evaluate?dry_run=true",
        &event("disk_full", 5.0, json!({"usage_percent": 99})),
    );
    assert_eq!(status, 200);
    let (_, _) = agent.post(
        "/evaluate",
        &event("network_latency", 5.0, json!({"latency_ms": 900})),
    );
    agent.wait_audit_head(3);
    let (_, page) = agent.get("/audit?limit=10");
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{page}");
    assert_eq!(page["head"], 3);
    assert_eq!(page["capacity"], 100_000);
    let newest = &entries[0];
    assert_eq!(newest["seq"], 3);
    assert_eq!(newest["input"]["event_type"], "network_latency");
    assert_eq!(newest["node"], "test-node");
    // Every policy was evaluated; the entry keeps the verdicts that say something.
    assert_eq!(newest["policies_evaluated"], 4);
    // policies/incidents holds the 4 incident rules: 4 changes.
    assert_eq!(newest["policy_revision"], 4);
    let kept = newest["results"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{newest}");
    assert_eq!(kept[0]["matched"], true);
    assert_eq!(kept[0]["policy_name"], "network_latency_reroute");
    assert_eq!(kept[0]["policy_version"], 1);
    assert_eq!(entries[1]["event_id"], assigned.as_str());
    assert_eq!(
        entries[1]["results"],
        json!([{
            "policy_id": cpu["policy_id"],
            "policy_version": 1,
            "policy_name": "cpu_spike_scale_out",
            "matched": false,
            "execution_time_ms": entries[1]["results"][0]["execution_time_ms"],
            "missing_fields": ["incident.context.load_avg"]
        }]),
        "a policy that lacked a field is kept with what it lacked"
    );
    assert_eq!(entries[2]["event_id"], "evt-1");
    assert_eq!(entries[2]["input"], leak, "the input is kept as received");

    // Filters: by policy that matched, by time.
    let leak_id = list[0]["id"].as_u64().unwrap();
    let (_, page) = agent.get(&format!("/audit?policy_id={leak_id}&matched=true"));
    let seqs: Vec<u64> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1]);
    let (_, page) = agent.get(&format!("/audit?policy_id={}", cpu["policy_id"]));
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["seq"], 2);
    let (_, page) = agent.get("/audit?matched=true&limit=1");
    assert_eq!(page["entries"][0]["seq"], 3);
    let (_, page) = agent.get("/audit?since=2999-01-01T00:00:00Z");
    assert_eq!(page["entries"], json!([]));
    let (status, body) = agent.get("/audit?since=yesterday");
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("since"))
    );
    let (status, _) = agent.get("/audit?limit=0");
    assert_eq!(status, 422);

    // Metrics count what happened: 3 recorded + 1 dry run evaluations of each policy.
    let metrics = agent.metrics();
    assert!(
        metrics.contains("policy_evaluations_total{policy_name=\"memory_leak_recovery\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("policy_matches_total{policy_name=\"memory_leak_recovery\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("policy_matches_total{policy_name=\"disk_full_cleanup\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("policy_evaluation_duration_seconds_count 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("policy_evaluation_duration_seconds_bucket{le="),
        "{metrics}"
    );
    assert!(
        metrics.contains("policy_evaluation_errors_total 0"),
        "{metrics}"
    );
}

#[test]
fn batch_evaluates_each_event_or_none() {
    // The P0.4 seed's four rules (policies/mesh holds the mesh-wide examples).
    let agent = Agent::start(
        Options::default()
            .arg("--policies")
            .arg(policies_dir().join("incidents").to_string_lossy()),
    );
    let batch = json!([
        event("memory_leak", 9.0, json!({})),
        event("disk_full", 2.0, json!({"usage_percent": 97})),
        event("memory_leak", 1.0, json!({})),
    ]);
    let (status, results) = agent.post("/evaluate/batch", &batch);
    assert_eq!(status, 200, "{results}");
    let matched: Vec<Vec<&str>> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .filter(|p| p["matched"] == true)
                .map(|p| p["policy_name"].as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        matched,
        [
            vec!["memory_leak_recovery"],
            vec!["disk_full_cleanup"],
            vec![]
        ]
    );
    agent.wait_audit_head(3);

    // One bad event refuses the whole batch, says which, and records nothing.
    let bad =
        json!([event("memory_leak", 9.0, json!({})), {"event_type": "x", "severity": "high"}]);
    let (status, body) = agent.post("/evaluate/batch", &bad);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "[1].severity");
    let (status, _) = agent.post("/evaluate/batch?dry_run=true", &batch);
    assert_eq!(status, 200);
    let (_, _) = agent.post("/evaluate", &event("marker", 1.0, json!({})));
    let page = agent.wait_audit_head(4);
    assert_eq!(
        page["entries"][0]["input"]["event_type"], "marker",
        "nothing else was recorded"
    );
}

/// `[limits]`: past its burst a client's evaluations are answered 429 with `Retry-After` and the
/// API's error shape; other routes, and OPA's reads, are not limited; the refusals are counted.
#[test]
fn evaluations_past_a_clients_rate_are_refused_with_retry_after() {
    let agent = Agent::start(
        Options::default()
            .env("MESH_AGENT_LIMITS_EVALUATE_PER_SECOND", "1")
            .env("MESH_AGENT_LIMITS_EVALUATE_BURST", "3"),
    );
    let http = reqwest::blocking::Client::new();
    let evaluate = || {
        http.post(agent.url("/evaluate"))
            .json(&event("cpu_spike", 5.0, json!({})))
            .send()
            .unwrap()
    };
    for _ in 0..3 {
        assert_eq!(evaluate().status(), 200, "within the burst");
    }
    // One a second refills: of the next 50, sent back to back, most are refused.
    let refused: Vec<reqwest::blocking::Response> = (0..50)
        .map(|_| evaluate())
        .filter(|r| r.status() == 429)
        .collect();
    assert!(!refused.is_empty(), "nothing refused");
    let first = refused.into_iter().next().unwrap();
    let retry: u64 = first.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let body: Value = first.json().unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Not limited: the policy routes, OPA's data reads, health.
    for _ in 0..10 {
        assert_eq!(agent.get("/policies").0, 200);
        assert_eq!(agent.get("/v1/data").0, 200);
    }
    let (status, _) = agent.post("/v1/data/x", &json!({"input": {}}));
    assert_eq!(status, 429, "OPA's POST /v1/data is an evaluation route");
    let metrics = agent.metrics();
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("http_requests_rate_limited_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_default();
    assert!(counted >= 2.0, "{metrics}");
}
