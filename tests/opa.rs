//! End to end over HTTP: the OPA-compatible API, `/v1/validate`, the decision cache, the time limit
//! with both fail modes, and incident rules written in Rego.

use test_support as common;

use common::{Agent, Options, event, policies_dir};
use serde_json::{Value, json};

const AUTHZ_V1: &str = "package example.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user in data.example.admins\n\nversion := 1\n";
const AUTHZ_V2: &str = "package example.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user in data.example.admins\n\nversion := 2\n";

fn put_text(agent: &Agent, path: &str, text: &str) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .put(agent.url(path))
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn decide(agent: &Agent, path: &str, input: Value) -> Value {
    let (status, body) = agent.post(
        &format!("/v1/data/{path}?metrics=true"),
        &json!({ "input": input }),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["decision_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    body
}

#[test]
fn opa_policy_and_data_api() {
    let mut agent = Agent::start(Options::default());

    let (status, body) = put_text(&agent, "/v1/policies/authz/example.rego", AUTHZ_V1);
    assert_eq!((status, body), (200, json!({})));
    let (status, list) = agent.get("/v1/policies");
    assert_eq!(status, 200);
    assert_eq!(list["result"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["result"][0]["id"], "authz/example.rego");
    assert_eq!(list["result"][0]["raw"], AUTHZ_V1);
    // The `ast` clients read: the package's path as terms, the rules' head names.
    assert_eq!(
        list["result"][0]["ast"]["package"]["path"][0],
        json!({"type": "var", "value": "data"}),
        "{list}"
    );
    assert!(
        list["result"][0]["ast"]["rules"]
            .as_array()
            .is_some_and(|rules| !rules.is_empty()),
        "{list}"
    );
    let (_, one) = agent.get("/v1/policies/authz/example.rego");
    assert_eq!(one["result"]["raw"], AUTHZ_V1);

    // Undefined data: no `result` key, a decision id all the same.
    let body = decide(&agent, "example/authz/nothing", json!({}));
    assert!(body.get("result").is_none(), "{body}");
    assert!(
        body["metrics"]["timer_rego_query_eval_ns"]
            .as_u64()
            .is_some(),
        "{body}"
    );

    // Data in, decisions change with it.
    let (status, _) = agent.put("/v1/data/example/admins", &json!(["alice"]));
    assert_eq!(status, 204);
    assert_eq!(
        decide(&agent, "example/authz/allow", json!({"user": "alice"}))["result"],
        true
    );
    assert_eq!(
        decide(&agent, "example/authz/allow", json!({"user": "bob"}))["result"],
        false
    );
    let (status, _) = agent.put("/v1/data/example/admins", &json!(["alice", "bob"]));
    assert_eq!(status, 204);
    assert_eq!(
        decide(&agent, "example/authz/allow", json!({"user": "bob"}))["result"],
        true
    );
    let (_, data) = agent.get("/v1/data/example/admins");
    assert_eq!(data["result"], json!(["alice", "bob"]));
    // A package reads as the object of its rules; the root holds data and rules.
    let (_, package) = agent.get("/v1/data/example/authz");
    assert_eq!(package["result"], json!({"allow": false, "version": 1}));
    let (_, root) = agent.get("/v1/data");
    assert_eq!(root["result"]["example"]["admins"], json!(["alice", "bob"]));
    // POST without `input` answers, with OPA's warning.
    let (_, body) = agent.post_raw("/v1/data/example/authz/allow", "{}");
    assert_eq!(body["result"], false);
    assert_eq!(body["warning"]["code"], "api_usage_warning");

    // A module that does not compile is refused with OPA's error shape; the old one stays.
    let broken = "package example.authz\n\nallow if {\n  input.user ==\n}\n";
    let (status, body) = put_text(&agent, "/v1/policies/authz/example.rego", broken);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_parameter");
    let error = &body["errors"][0];
    assert_eq!(error["code"], "rego_parse_error");
    assert_eq!(error["location"]["file"], "authz/example.rego");
    assert!(error["location"]["row"].as_u64().unwrap() >= 4, "{body}");
    assert!(error["location"]["col"].as_u64().unwrap() >= 1, "{body}");
    assert!(!error["message"].as_str().unwrap().is_empty());
    assert_eq!(
        agent.get("/v1/policies/authz/example.rego").1["result"]["raw"],
        AUTHZ_V1
    );
    assert_eq!(
        decide(&agent, "example/authz/allow", json!({"user": "alice"}))["result"],
        true
    );

    // Modules and data survive a restart.
    agent.terminate();
    agent.restart();
    assert_eq!(
        decide(&agent, "example/authz/allow", json!({"user": "bob"}))["result"],
        true
    );

    // Deletes.
    let (status, _) = agent.delete("/v1/data/example/admins");
    assert_eq!(status, 204);
    let (status, body) = agent.delete("/v1/data/example/admins");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("resource_not_found"))
    );
    assert_eq!(
        decide(&agent, "example/authz/allow", json!({"user": "alice"}))["result"],
        false
    );
    let (status, body) = agent.delete("/v1/policies/authz/example.rego");
    assert_eq!((status, body), (200, json!({})));
    let (status, body) = agent.get("/v1/policies/authz/example.rego");
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("resource_not_found"))
    );
    assert!(
        decide(&agent, "example/authz/allow", json!({"user": "alice"}))
            .get("result")
            .is_none()
    );
    let (status, _) = agent.put("/v1/data", &json!([1]));
    assert_eq!(status, 400, "the root of data must be an object");
}

#[test]
fn the_cache_never_answers_for_an_older_policy_version() {
    let agent = Agent::start(Options::default().env("MESH_AGENT_REGO_CACHE_TTL_SEC", "3600"));
    put_text(&agent, "/v1/policies/authz", AUTHZ_V1);
    let first = decide(&agent, "example/authz/version", json!({"user": "x"}));
    assert_eq!(
        (
            first["result"].clone(),
            first["metrics"]["counter_decision_cache_hit"].clone()
        ),
        (json!(1), json!(0))
    );
    let again = decide(&agent, "example/authz/version", json!({"user": "x"}));
    assert_eq!(
        (
            again["result"].clone(),
            again["metrics"]["counter_decision_cache_hit"].clone()
        ),
        (json!(1), json!(1))
    );

    // A new module version: the same question gets the new answer, never the cached one.
    put_text(&agent, "/v1/policies/authz", AUTHZ_V2);
    let after = decide(&agent, "example/authz/version", json!({"user": "x"}));
    assert_eq!(
        (
            after["result"].clone(),
            after["metrics"]["counter_decision_cache_hit"].clone()
        ),
        (json!(2), json!(0))
    );
    // A data change too.
    agent.put("/v1/data/example/admins", &json!(["x"]));
    assert_eq!(
        decide(&agent, "example/authz/allow", json!({"user": "x"}))["result"],
        true
    );
    agent.put("/v1/data/example/admins", &json!([]));
    assert_eq!(
        decide(&agent, "example/authz/allow", json!({"user": "x"}))["result"],
        false
    );

    let metrics = agent.metrics();
    assert!(metrics.contains("opa_cache_hits_total 1"), "{metrics}");
    assert!(metrics.contains("opa_cache_requests_total 5"), "{metrics}");
    assert!(
        metrics.contains(
            "opa_evaluations_total{policy=\"data.example.authz.version\",status=\"success\"} 2"
        ),
        "{metrics}"
    );
}

const SLOW: &str = "package slow\n\nimport rego.v1\n\nresult := {\"allow\": count([[x, y] | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000)]) > 0, \"violations\": [], \"warnings\": []}\n";

#[test]
fn an_evaluation_over_the_time_limit_fails_closed_by_default() {
    let agent = Agent::start(Options::default().env("MESH_AGENT_REGO_TIME_LIMIT_MS", "20"));
    put_text(&agent, "/v1/policies/slow", SLOW);
    let body = decide(&agent, "slow/result", json!({}));
    assert_eq!(body["error"]["code"], "evaluation_timeout", "{body}");
    assert_eq!(body["result"]["allow"], false);
    assert_eq!(
        body["result"]["violations"][0]["rule"],
        "evaluation_timeout"
    );
    assert!(
        body["result"]["violations"][0]["message"]
            .as_str()
            .unwrap()
            .contains("20 ms"),
        "{body}"
    );

    let (status, result) = agent.post("/v1/validate", &json!({"input": {}, "policies": ["slow"]}));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["valid"], false);
    assert_eq!(result["violations"][0]["policy_name"], "slow");
    assert_eq!(result["violations"][0]["rule_name"], "evaluation_timeout");
    assert_eq!(result["violations"][0]["severity"], "critical");

    let metrics = agent.metrics();
    assert!(
        metrics.contains("opa_errors_total{error_type=\"evaluation_timeout\"} 2"),
        "{metrics}"
    );
}

#[test]
fn an_evaluation_over_the_time_limit_fails_open_when_configured() {
    let agent = Agent::start(
        Options::default()
            .env("MESH_AGENT_REGO_TIME_LIMIT_MS", "20")
            .env("MESH_AGENT_REGO_FAIL_MODE", "fail_open"),
    );
    put_text(&agent, "/v1/policies/slow", SLOW);
    let body = decide(&agent, "slow/result", json!({}));
    assert_eq!(body["error"]["code"], "evaluation_timeout", "{body}");
    assert_eq!(body["result"]["allow"], true);
    assert_eq!(body["result"]["warnings"][0]["rule"], "evaluation_timeout");
    let (_, result) = agent.post("/v1/validate", &json!({"input": {}, "policies": ["slow"]}));
    assert_eq!(result["valid"], true, "{result}");
    assert_eq!(result["violations"], json!([]));
    assert_eq!(result["warnings"][0]["rule_name"], "evaluation_timeout");
}

fn seed_case(policy: &str, case: &str) -> (Value, Value) {
    let dir = policies_dir()
        .join("rego/neuralhive/orchestrator")
        .join(format!("{policy}.cases"));
    let read = |suffix: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{case}.{suffix}.json"))).unwrap(),
        )
        .unwrap()
    };
    (read("input"), read("output"))
}

#[test]
fn the_seed_validation_policies_answer_over_http() {
    let agent = Agent::start(
        Options::default()
            .arg("--policies")
            .arg(policies_dir().to_string_lossy()),
    );
    // Each seed example gives the seed's result at the seed's package path.
    for policy in ["resource_limits", "sla_enforcement", "feature_flags"] {
        let (input, expected) = seed_case(policy, "seed_example");
        let body = decide(
            &agent,
            &format!("neuralhive/orchestrator/{policy}/result"),
            input,
        );
        assert_eq!(body["result"], expected, "{policy}");
    }
    let (_, flags_expected) = seed_case("feature_flags", "seed_example");
    assert_eq!(
        flags_expected["enable_auto_scaling"], true,
        "the seed's own example"
    );

    // One call validates with all three; a ticket that breaks a rule is refused with the reason.
    let (input, _) = seed_case("resource_limits", "seed_example");
    let all = [
        "neuralhive/orchestrator/resource_limits",
        "neuralhive/orchestrator/feature_flags",
    ];
    let (status, result) = agent.post("/v1/validate", &json!({"input": input, "policies": all}));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["valid"], true, "{result}");
    assert!(result["policy_decisions"]["feature_flags"].is_object());
    assert!(
        result["policy_decisions"]["resource_limits"]["allow"]
            .as_bool()
            .unwrap()
    );

    let (mut broken, _) = seed_case("resource_limits", "seed_example");
    broken["resource"]["sla"]["timeout_ms"] = json!(999_999_999);
    let (_, result) = agent.post("/v1/validate", &json!({"input": broken, "policies": all}));
    assert_eq!(result["valid"], false, "{result}");
    let violation = &result["violations"][0];
    assert_eq!(violation["policy_name"], "resource_limits");
    assert_eq!(violation["rule_name"], "timeout_exceeds_maximum");
    assert_eq!(violation["severity"], "high");
    assert!(
        violation["message"].as_str().unwrap().contains("999999999"),
        "{violation}"
    );

    let (status, body) = agent.post(
        "/v1/validate",
        &json!({"input": {}, "policies": ["neuralhive/orchestrator/nope"]}),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("resource_not_found")),
        "{body}"
    );
    let (status, _) = agent.post("/v1/validate", &json!({"input": {}, "policies": []}));
    assert_eq!(status, 400);
}

#[test]
fn incident_rules_can_be_written_in_rego() {
    let agent = Agent::start(Options::default());
    put_text(
        &agent,
        "/v1/policies/mesh/incidents.rego",
        "package mesh.incidents.memory_leak\n\nimport rego.v1\n\nmatch if {\n  input.type == \"memory_leak\"\n  input.severity >= data.mesh.thresholds.memory_leak\n}\n",
    );
    agent.put("/v1/data/mesh/thresholds", &json!({"memory_leak": 8}));
    let rule = json!({
        "name": "memory_leak_rego",
        "definition": {
            "rego": "data.mesh.incidents.memory_leak.match",
            "action": "trigger_p0_3_recovery",
            "modifiers": {"swap": "2x"},
            "reversibility_sec": 300
        },
        "priority": 5
    });
    let (status, created) = agent.post("/policies", &rule);
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["definition"]["rego"],
        "data.mesh.incidents.memory_leak.match"
    );

    let (_, results) = agent.post("/evaluate", &event("memory_leak", 9.0, json!({})));
    assert_eq!(results[0]["matched"], true, "{results}");
    assert_eq!(results[0]["action"], "trigger_p0_3_recovery");
    let (_, results) = agent.post("/evaluate", &event("memory_leak", 7.0, json!({})));
    assert_eq!(results[0]["matched"], false);
    // The data is part of the rule: raising the threshold changes the answer.
    agent.put("/v1/data/mesh/thresholds", &json!({"memory_leak": 10}));
    let (_, results) = agent.post("/evaluate", &event("memory_leak", 9.0, json!({})));
    assert_eq!(results[0]["matched"], false);

    // Bad definitions are refused with the field.
    let mut both = rule.clone();
    both["name"] = json!("both");
    both["definition"]["condition"] = json!("incident.severity > 1");
    let (status, body) = agent.post("/policies", &both);
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("definition")),
        "{body}"
    );
    let mut bad_path = rule.clone();
    bad_path["name"] = json!("bad_path");
    bad_path["definition"]["rego"] = json!("mesh.incidents; drop");
    let (status, body) = agent.post("/policies", &bad_path);
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("definition.rego")),
        "{body}"
    );

    // A Rego rule that fails counts as an error and does not match; the event is still answered.
    let slow = "package mesh.slow\n\nimport rego.v1\n\nmatch if count([[x, y] | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000)]) > 0\n";
    drop(agent);
    let agent = Agent::start(Options::default().env("MESH_AGENT_REGO_TIME_LIMIT_MS", "20"));
    put_text(&agent, "/v1/policies/slow", slow);
    let mut rule = rule;
    rule["definition"]["rego"] = json!("data.mesh.slow.match");
    agent.post("/policies", &rule);
    let (status, results) = agent.post("/evaluate", &event("memory_leak", 9.0, json!({})));
    assert_eq!(status, 200);
    assert_eq!(results[0]["matched"], false);
    assert!(
        results[0]["error"].as_str().unwrap().contains("time limit"),
        "{results}"
    );
    assert!(agent.metrics().contains("policy_evaluation_errors_total 1"));
}
