//! Condition evaluation and compilation speed: the memory-leak seed condition against a matching
//! incident (the hot path of every `/evaluate`), and compiling it (done once per policy save).

use std::hint::black_box;

use agent_condition::Condition;
use agent_condition::Incident;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

const MEMORY_LEAK: &str = "incident.type == 'memory_leak' and incident.severity >= 8";

fn bench(c: &mut Criterion) {
    let serde_json::Value::Object(context) =
        json!({"service": "api", "rss_mb": 3900, "growth_mb_per_min": 12.5})
    else {
        unreachable!("a json object literal")
    };
    let incident = Incident {
        id: "evt-0001".into(),
        kind: "memory_leak".into(),
        severity: 9.0,
        timestamp: Some("2024-05-01T10:00:00Z".into()),
        context,
    };
    let condition = Condition::compile(MEMORY_LEAK).unwrap();
    assert!(
        condition.eval(&incident).matched,
        "the bench incident must match"
    );

    let mut group = c.benchmark_group("condition");
    group.bench_function("memory_leak_seed", |b| {
        b.iter(|| black_box(&condition).eval(black_box(&incident)))
    });
    group.bench_function("compile_memory_leak", |b| {
        b.iter(|| Condition::compile(black_box(MEMORY_LEAK)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
