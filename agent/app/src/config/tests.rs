//! Config layering and its errors: file, environment, defaults, validation.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn defaults_need_nothing() {
    let config = Config::load(None, env(&[("PATH", "/bin")])).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(config.http_listen.to_string(), "127.0.0.1:8004");
    assert!(!config.resolved_node_id().is_empty());
}

#[test]
fn file_then_env_override() {
    let file =
        write("node_id = \"edge-1\"\nhttp_listen = \"0.0.0.0:9000\"\n[audit]\ncapacity = 10\n");
    let config = Config::load(
        Some(file.path()),
        env(&[
            ("MESH_AGENT_AUDIT_CAPACITY", "20"),
            ("MESH_AGENT_NODE_ID", "edge-2"),
        ]),
    )
    .unwrap();
    assert_eq!(config.node_id.as_deref(), Some("edge-2"));
    assert_eq!(config.audit.capacity, 20);
    assert_eq!(config.http_listen.port(), 9000);
    assert_eq!(config.audit.commit_interval_ms, 200);
}

#[test]
fn every_key_has_an_env_var_that_works() {
    let config = Config::load(
        None,
        env(&[
            ("MESH_AGENT_NODE_ID", "n1"),
            ("MESH_AGENT_DATA_DIR", "/tmp/x"),
            ("MESH_AGENT_HTTP_LISTEN", "127.0.0.1:1"),
            ("MESH_AGENT_POLICIES_DIR", "/p"),
            ("MESH_AGENT_LOG_FORMAT", "json"),
            ("MESH_AGENT_MAX_BODY_BYTES", "2048"),
            ("MESH_AGENT_DEDUP_WINDOW_SEC", "11"),
            ("MESH_AGENT_HTTP_MAX_CONNECTIONS", "12"),
            ("MESH_AGENT_HTTP_HEADER_READ_TIMEOUT_MS", "13"),
            ("MESH_AGENT_HTTP_IDLE_TIMEOUT_MS", "14"),
            ("MESH_AGENT_HTTP_REQUEST_TIMEOUT_MS", "15"),
            ("MESH_AGENT_HTTP_TLS_CERT_FILE", "/api.pem"),
            ("MESH_AGENT_HTTP_TLS_KEY_FILE", "/api.key"),
            ("MESH_AGENT_AUTH_READ_TOKEN_FILE", "/read.tokens"),
            ("MESH_AGENT_AUTH_ADMIN_TOKEN_FILE", "/admin.tokens"),
            ("MESH_AGENT_LOG_LEVEL", "warn,agent_mesh=debug"),
            ("MESH_AGENT_LIMITS_EVALUATE_PER_SECOND", "20"),
            ("MESH_AGENT_LIMITS_EVALUATE_BURST", "40"),
            ("MESH_AGENT_AUDIT_CAPACITY", "5"),
            ("MESH_AGENT_AUDIT_MAX_BYTES", "2000000"),
            ("MESH_AGENT_AUDIT_COMMIT_INTERVAL_MS", "7"),
            ("MESH_AGENT_REGO_TIME_LIMIT_MS", "9"),
            ("MESH_AGENT_REGO_FAIL_MODE", "fail_open"),
            ("MESH_AGENT_REGO_CACHE_TTL_SEC", "0"),
            ("MESH_AGENT_REGO_CACHE_ENTRIES", "3"),
            ("MESH_AGENT_BUNDLE_MAX_BYTES", "2048"),
            ("MESH_AGENT_BUNDLE_MAX_UNCOMPRESSED_BYTES", "4096"),
            ("MESH_AGENT_BUNDLE_MAX_FILES", "5"),
            ("MESH_AGENT_BUNDLE_KEYID", "k1"),
            ("MESH_AGENT_MESH_TLS_DIR", "/tls"),
            ("MESH_AGENT_MESH_CLUSTER_ID", "c"),
            ("MESH_AGENT_MESH_GOSSIP_LISTEN", "127.0.0.1:2"),
            ("MESH_AGENT_MESH_GOSSIP_ADVERTISE", "10.0.0.1:3"),
            ("MESH_AGENT_MESH_SEEDS", "a:1, b:2"),
            ("MESH_AGENT_MESH_GOSSIP_INTERVAL_MS", "100"),
            ("MESH_AGENT_MESH_PHI_THRESHOLD", "6.5"),
            ("MESH_AGENT_MESH_SUSPECT_AFTER_MS", "11"),
            ("MESH_AGENT_MESH_DEAD_NODE_GRACE_SEC", "12"),
            ("MESH_AGENT_MESH_TOMBSTONE_TTL_SEC", "3600"),
            ("MESH_AGENT_MQTT_URL", "mqtt://b:1884"),
            ("MESH_AGENT_MQTT_CLIENT_ID", "cid"),
            ("MESH_AGENT_MQTT_USERNAME", "u"),
            ("MESH_AGENT_MQTT_PASSWORD", "p"),
            ("MESH_AGENT_MQTT_KEEP_ALIVE_SEC", "15"),
            ("MESH_AGENT_MQTT_CA_FILE", "/ca.pem"),
            ("MESH_AGENT_MQTT_CLIENT_CERT_FILE", "/c.pem"),
            ("MESH_AGENT_MQTT_CLIENT_KEY_FILE", "/c.key"),
            ("MESH_AGENT_MQTT_INTAKE", "false"),
            ("MESH_AGENT_MQTT_TOPIC_PREFIX", "site/"),
            ("MESH_AGENT_MQTT_INCIDENT_TOPICS", "a/b, c/d"),
            ("MESH_AGENT_MQTT_ACTIONS_TOPIC", "acts"),
            ("MESH_AGENT_MQTT_SUMMARIES_TOPIC", "sums"),
            ("MESH_AGENT_MQTT_MAX_MESSAGE_BYTES", "4096"),
            ("MESH_AGENT_OUTBOX_CAPACITY", "9"),
            ("MESH_AGENT_OUTBOX_WHEN_FULL", "drop_oldest"),
            ("MESH_AGENT_UPSTREAM_MAX_INFLIGHT", "8"),
            ("MESH_AGENT_UPSTREAM_ACK_TIMEOUT_MS", "700"),
            ("MESH_AGENT_UPSTREAM_RECONNECT_MIN_MS", "10"),
            ("MESH_AGENT_UPSTREAM_RECONNECT_MAX_MS", "20"),
            ("MESH_AGENT_UPSTREAM_FAILURE_THRESHOLD", "2"),
            ("MESH_AGENT_UPSTREAM_RESET_TIMEOUT_SEC", "3"),
            ("MESH_AGENT_SUMMARY_INTERVAL_SEC", "4"),
            ("MESH_AGENT_SUMMARY_KEEP", "5"),
            ("MESH_AGENT_DECISIONS_WINDOW_SEC", "30"),
            ("MESH_AGENT_DECISIONS_GOSSIP_MAX_BYTES", "256"),
            ("MESH_AGENT_DECISIONS_PUBLISH_INTERVAL_MS", "500"),
            ("MESH_AGENT_DECISIONS_SHARE_INCIDENTS", "false"),
            ("MESH_AGENT_DECISION_LOGS_SINK", "mqtt"),
            ("MESH_AGENT_DECISION_LOGS_TOPIC", "logs"),
            ("MESH_AGENT_DECISION_LOGS_MASK", "/input/a, /input/b"),
            ("MESH_AGENT_DECISION_LOGS_KEEP", "7"),
        ]),
    )
    .unwrap();
    let mut expected = Config {
        node_id: Some("n1".into()),
        data_dir: "/tmp/x".into(),
        http_listen: "127.0.0.1:1".parse().unwrap(),
        policies_dir: Some("/p".into()),
        log_format: LogFormat::Json,
        max_body_bytes: 2048,
        dedup_window_sec: 11,
        http: agent_http::HttpConfig {
            max_connections: 12,
            header_read_timeout_ms: 13,
            idle_timeout_ms: 14,
            request_timeout_ms: 15,
            tls_cert_file: Some("/api.pem".into()),
            tls_key_file: Some("/api.key".into()),
        },
        auth: agent_http::AuthConfig {
            read_token_file: Some("/read.tokens".into()),
            admin_token_file: Some("/admin.tokens".into()),
        },
        log_level: "warn,agent_mesh=debug".into(),
        limits: agent_http::LimitsConfig {
            evaluate_per_second: 20,
            evaluate_burst: 40,
        },
        audit: AuditConfig {
            capacity: 5,
            max_bytes: 2_000_000,
            commit_interval_ms: 7,
        },
        rego: RegoConfig {
            time_limit_ms: 9,
            fail_mode: FailMode::FailOpen,
            cache_ttl_sec: 0,
            cache_entries: 3,
            max_data_bytes: 16 * 1024 * 1024,
            max_memory_bytes: 512 * 1024 * 1024,
        },
        bundle: BundlesConfig {
            max_bytes: 2048,
            max_uncompressed_bytes: 4096,
            max_files: 5,
            keyid: "k1".into(),
            ..BundlesConfig::default()
        },
        bundles: Vec::new(),
        mesh: MeshConfig {
            tls_dir: Some("/tls".into()),
            cluster_id: "c".into(),
            gossip_listen: "127.0.0.1:2".parse().unwrap(),
            gossip_advertise: Some("10.0.0.1:3".parse().unwrap()),
            seeds: vec!["a:1".into(), "b:2".into()],
            gossip_interval_ms: 100,
            phi_threshold: 6.5,
            suspect_after_ms: 11,
            dead_node_grace_sec: 12,
            tombstone_ttl_sec: 3600,
            sim_net_faults: None,
        },
        mqtt: MqttConfig {
            url: Some("mqtt://b:1884".into()),
            client_id: Some("cid".into()),
            username: Some("u".into()),
            password: Some("p".into()),
            keep_alive_sec: 15,
            ca_file: Some("/ca.pem".into()),
            client_cert_file: Some("/c.pem".into()),
            client_key_file: Some("/c.key".into()),
            intake: false,
            topic_prefix: "site/".into(),
            incident_topics: vec!["a/b".into(), "c/d".into()],
            actions_topic: "acts".into(),
            summaries_topic: "sums".into(),
            max_message_bytes: 4096,
        },
        outbox: OutboxConfig {
            capacity: 9,
            when_full: agent_decision::outbox::WhenFull::DropOldest,
        },
        upstream: UpstreamConfig {
            max_inflight: 8,
            ack_timeout_ms: 700,
            reconnect_min_ms: 10,
            reconnect_max_ms: 20,
            failure_threshold: 2,
            reset_timeout_sec: 3,
        },
        summary: SummaryConfig {
            interval_sec: 4,
            keep: 5,
        },
        decisions: agent_decision::DecisionsConfig {
            window_sec: 30,
            gossip_max_bytes: 256,
            publish_interval_ms: 500,
            share_incidents: false,
        },
        decision_logs: DecisionLogsConfig {
            sink: agent_decision::decision_log::Sink::Mqtt,
            topic: "logs".into(),
            mask: vec!["/input/a".into(), "/input/b".into()],
            keep: 7,
        },
    };
    assert_eq!(config, expected);
    // And the key list covers every field: a fully set config serializes to exactly KEYS.
    expected.node_id = Some("x".into());
    let table = toml::Table::try_from(&expected).unwrap();
    let mut found = Vec::new();
    for (k, v) in &table {
        match v.as_table() {
            Some(inner) => found.extend(inner.keys().map(|ik| format!("{k}.{ik}"))),
            None => found.push(k.clone()),
        }
    }
    found.sort();
    let mut listed: Vec<String> = KEYS.iter().map(|(k, _)| k.to_string()).collect();
    listed.extend(FILE_ONLY_KEYS.iter().map(|k| k.to_string()));
    listed.sort();
    assert_eq!(found, listed);
}

#[test]
fn errors_say_where_and_what() {
    let file = write("node_id = \"edge-1\"\nhtp_listen = \"0.0.0.0:9000\"\n");
    let err = Config::load(Some(file.path()), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("htp_listen"),
        "{err}"
    );

    let file = write("[audit]\ncapacity = \"lots\"\n");
    let err = Config::load(Some(file.path()), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("capacity"), "{err}");

    let err = Config::load(None, env(&[("MESH_AGENT_AUDIT_CAPACITY", "x")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MESH_AGENT_AUDIT_CAPACITY") && err.contains("integer"),
        "{err}"
    );

    let err = Config::load(None, env(&[("MESH_AGENT_HTTP_LISTEN", "nowhere")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("MESH_AGENT_HTTP_LISTEN"), "{err}");

    let err = Config::load(None, env(&[("MESH_AGENT_HTTP_LISTN", "x")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MESH_AGENT_HTTP_LISTN") && err.contains("MESH_AGENT_HTTP_LISTEN"),
        "{err}"
    );

    let err = Config::load(None, env(&[("MESH_AGENT_AUDIT_CAPACITY", "0")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("audit.capacity"), "{err}");

    let err = Config::load(None, env(&[("MESH_AGENT_NODE_ID", "edge 1")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("node_id") && err.contains("` `"), "{err}");
}

#[test]
fn bundles_come_from_the_file_and_are_checked() {
    let file = write(
        "[bundle.keys.k1]\nalgorithm = \"ES256\"\nkey_file = \"/k.pem\"\n\
         [[bundles]]\nname = \"authz\"\nurl = \"http://127.0.0.1:9/b.tar.gz\"\n",
    );
    let config = Config::load(Some(file.path()), env(&[])).unwrap();
    assert_eq!(config.bundles[0].min_delay_sec, 60);
    assert_eq!(config.bundles[0].max_delay_sec, 120);
    assert_eq!(
        agent_policy::opa::bundle::configured_names(&config.bundles),
        ["authz"]
    );
    assert!(config.bundle.keys.contains_key("k1"));
    let https =
        write("[[bundles]]\nname = \"authz\"\nurl = \"https://bundles.example/b.tar.gz\"\n");
    let err = Config::load(Some(https.path()), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bundles.ca_file"), "{err}");
    let err = Config::load(None, env(&[("MESH_AGENT_BUNDLES", "x")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("set it in the config file"), "{err}");
}
