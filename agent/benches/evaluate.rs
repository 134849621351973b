//! `/evaluate` logic in-process with 100 active policies: the engine alone, and the whole decision
//! (evaluate + build the audit entry + queue it for the group-committing writer on a real redb file).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use agent_app::metrics::Metrics;
use agent_decision::Decider;
use agent_decision::audit::{AuditConfig, AuditLog};
use agent_engine::rego::{RegoEngine, RegoSettings};
use agent_engine::{Engine, Incident};
use agent_policy::{NewPolicy, PolicyService};
use agent_store::Store;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

/// 100 rules shaped like the seed's four, over 25 incident types.
fn policies() -> Vec<NewPolicy> {
    let shapes = [
        ("memory_leak", "incident.severity >= 8"),
        ("cpu_spike", "incident.context.load_avg > 10.0"),
        ("disk_full", "incident.context.usage_percent >= 95"),
        ("network_latency", "incident.context.latency_ms > 500"),
    ];
    (0..100)
        .map(|i| {
            let (kind, test) = shapes[i % shapes.len()];
            let body = json!({
                "name": format!("rule_{i:03}"),
                "definition": {
                    "condition": format!("incident.type == '{kind}_{}' and {test}", i % 25),
                    "action": "trigger_p0_3_recovery",
                    "modifiers": {"swap_increase": "2x", "threshold": 90},
                    "reversibility_sec": 300
                },
                "priority": i
            });
            serde_json::from_value(body).unwrap()
        })
        .collect()
}

fn incident() -> Incident {
    let serde_json::Value::Object(context) =
        json!({"service": "payment-api", "memory_usage_mb": 8192, "load_avg": 12.0})
    else {
        unreachable!()
    };
    Incident {
        id: "evt-1".into(),
        kind: "memory_leak_0".into(),
        severity: 9.0,
        timestamp: Some("2025-10-20T12:00:00".into()),
        context,
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("bench.redb"), "bench").unwrap());
    let metrics = Metrics::new();
    let rego = Arc::new(RegoEngine::new(RegoSettings {
        time_limit: Duration::from_millis(250),
    }));
    let engine = Arc::new(Engine::new(rego, metrics.engine.clone()));
    let service = PolicyService::new(Arc::clone(&store), Arc::clone(&engine)).unwrap();
    for policy in policies() {
        service.create(policy).unwrap();
    }
    assert_eq!(engine.current().len(), 100);
    let incident = incident();
    assert!(
        engine
            .evaluate(&incident, &agent_engine::NoFacts)
            .matched()
            .count()
            >= 1,
        "the bench incident must match a rule"
    );

    let settings = AuditConfig {
        capacity: 100_000,
        max_bytes: u64::MAX,
        commit_interval_ms: 200,
    };
    let (audit, writer) = runtime
        .block_on(async {
            AuditLog::start(
                store.database(),
                settings,
                metrics.audit.clone(),
                agent_base::Fatal::new(),
            )
        })
        .unwrap();
    let decider = Decider::new(
        Arc::clone(&engine),
        audit,
        "bench".into(),
        agent_decision::event::Dedup::new(std::time::Duration::from_secs(120)),
    );
    let input =
        serde_json::to_string(&json!({"event_type": "memory_leak_0", "severity": 9})).unwrap();

    let mut group = c.benchmark_group("evaluate");
    group.bench_function("engine_100_policies", |b| {
        b.iter(|| engine.evaluate(black_box(&incident), &agent_engine::NoFacts))
    });
    group.bench_function("decide_100_policies_audited", |b| {
        b.iter(|| {
            runtime.block_on(decider.decide(black_box(incident.clone()), input.clone(), false))
        })
    });
    group.finish();
    runtime.block_on(writer.close());
}

criterion_group!(benches, bench);
criterion_main!(benches);
